//! RESP2 and RESP3 for the discovery endpoint: reading commands (arrays of bulk strings or inline) and
//! encoding replies. Bounded: hostile clients get an error, never unbounded buffers.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// Most arguments one command may have.
pub const MAX_ARGS: usize = 64;
/// Largest argument, and longest inline line.
pub const MAX_ARG_BYTES: usize = 64 * 1024;

/// A reply value.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(String),
    Nil,
    Array(Vec<Reply>),
    /// A map: RESP3 `%`, a flat array in RESP2.
    Map(Vec<(String, Reply)>),
    /// An out-of-band message: RESP3 `>`, an array in RESP2.
    Push(Vec<Reply>),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    pub fn err(text: impl Into<String>) -> Reply {
        Reply::Error(text.into())
    }

    /// Sentinel's states: a map in RESP3, a flat `[k1, v1, k2, v2, ...]` array in RESP2.
    pub fn pairs(kv: &[(&str, String)]) -> Reply {
        Reply::Map(kv.iter().map(|(k, v)| ((*k).to_owned(), Reply::Bulk(v.clone()))).collect())
    }

    /// Encodes in RESP2 (`resp3` false) or RESP3.
    pub fn encode(&self, out: &mut Vec<u8>, resp3: bool) {
        match self {
            Reply::Simple(s) => out.extend_from_slice(format!("+{s}\r\n").as_bytes()),
            Reply::Error(s) => out.extend_from_slice(format!("-{}\r\n", s.replace(['\r', '\n'], " ")).as_bytes()),
            Reply::Int(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
            Reply::Bulk(s) => {
                out.extend_from_slice(format!("${}\r\n", s.len()).as_bytes());
                out.extend_from_slice(s.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Nil if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::Array(items) | Reply::Push(items) => {
                let kind = if resp3 && matches!(self, Reply::Push(_)) { '>' } else { '*' };
                out.extend_from_slice(format!("{kind}{}\r\n", items.len()).as_bytes());
                for i in items {
                    i.encode(out, resp3);
                }
            }
            Reply::Map(kv) => {
                if resp3 {
                    out.extend_from_slice(format!("%{}\r\n", kv.len()).as_bytes());
                } else {
                    out.extend_from_slice(format!("*{}\r\n", kv.len() * 2).as_bytes());
                }
                for (k, v) in kv {
                    Reply::Bulk(k.clone()).encode(out, resp3);
                    v.encode(out, resp3);
                }
            }
        }
    }
}

/// Why a command could not be read.
#[derive(Debug, PartialEq)]
pub enum ReadError {
    /// The client closed the connection.
    Closed,
    /// A protocol error: reply with it and close.
    Protocol(String),
}

async fn line<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<String, ReadError> {
    let mut buf = Vec::new();
    let n = (&mut *r).take(MAX_ARG_BYTES as u64 + 2).read_until(b'\n', &mut buf).await.map_err(|_| ReadError::Closed)?;
    if n == 0 {
        return Err(ReadError::Closed);
    }
    if !buf.ends_with(b"\n") {
        return Err(ReadError::Protocol("Protocol error: too big inline request".into()));
    }
    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        buf.pop();
    }
    String::from_utf8(buf).map_err(|_| ReadError::Protocol("Protocol error: invalid UTF-8".into()))
}

fn count(text: &str, what: &str, max: usize) -> Result<usize, ReadError> {
    text.parse::<usize>().ok().filter(|n| *n <= max).ok_or_else(|| ReadError::Protocol(format!("Protocol error: invalid {what} length")))
}

/// Reads one command; empty inline lines are skipped.
pub async fn read_command<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Vec<String>, ReadError> {
    loop {
        let first = line(r).await?;
        let Some(rest) = first.strip_prefix('*') else {
            let args: Vec<String> = first.split_whitespace().map(str::to_owned).collect();
            if args.is_empty() {
                continue;
            }
            if args.len() > MAX_ARGS {
                return Err(ReadError::Protocol("Protocol error: too many arguments".into()));
            }
            return Ok(args);
        };
        let n = count(rest, "multibulk", MAX_ARGS)?;
        let mut args = Vec::with_capacity(n);
        for _ in 0..n {
            let header = line(r).await?;
            let len = header.strip_prefix('$').ok_or_else(|| ReadError::Protocol(format!("Protocol error: expected '$', got '{}'", header.chars().next().unwrap_or(' '))))?;
            let len = count(len, "bulk", MAX_ARG_BYTES)?;
            let mut data = vec![0u8; len + 2];
            r.read_exact(&mut data).await.map_err(|_| ReadError::Closed)?;
            if !data.ends_with(b"\r\n") {
                return Err(ReadError::Protocol("Protocol error: bulk not terminated".into()));
            }
            data.truncate(len);
            args.push(String::from_utf8(data).map_err(|_| ReadError::Protocol("Protocol error: invalid UTF-8".into()))?);
        }
        if !args.is_empty() {
            return Ok(args);
        }
    }
}

/// Redis's glob for PSUBSCRIBE patterns: `*`, `?`, `[...]` and `\` escapes.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    fn m(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('*') => (0..=t.len()).any(|i| m(&p[1..], &t[i..])),
            Some('?') => !t.is_empty() && m(&p[1..], &t[1..]),
            Some('[') => {
                let Some(end) = p.iter().position(|c| *c == ']') else { return !t.is_empty() && t[0] == '[' && m(&p[1..], &t[1..]) };
                let set = &p[1..end];
                let (neg, set) = if set.first() == Some(&'^') { (true, &set[1..]) } else { (false, set) };
                let Some(c) = t.first() else { return false };
                let mut hit = false;
                let mut i = 0;
                while i < set.len() {
                    if i + 2 < set.len() && set[i + 1] == '-' {
                        hit |= set[i] <= *c && *c <= set[i + 2];
                        i += 3;
                    } else {
                        hit |= set[i] == *c;
                        i += 1;
                    }
                }
                hit != neg && m(&p[end + 1..], &t[1..])
            }
            Some('\\') if p.len() > 1 => !t.is_empty() && t[0] == p[1] && m(&p[2..], &t[1..]),
            Some(c) => !t.is_empty() && t[0] == *c && m(&p[1..], &t[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    m(&p, &t)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> Result<Vec<String>, ReadError> {
        let mut r = tokio::io::BufReader::new(bytes);
        read_command(&mut r).await
    }

    #[tokio::test]
    async fn commands() {
        assert_eq!(read(b"*2\r\n$4\r\nPING\r\n$2\r\nhi\r\n").await.unwrap(), vec!["PING", "hi"]);
        assert_eq!(read(b"\r\nSENTINEL masters\r\n").await.unwrap(), vec!["SENTINEL", "masters"]);
        assert_eq!(read(b"").await, Err(ReadError::Closed));
        assert!(matches!(read(b"*99999\r\n").await, Err(ReadError::Protocol(_))));
        assert!(matches!(read(b"*1\r\n$99999999\r\n").await, Err(ReadError::Protocol(_))));
        assert!(matches!(read(b"*1\r\n:1\r\n").await, Err(ReadError::Protocol(_))));
        assert!(matches!(read(b"*1\r\n$2\r\nabcd\r\n").await, Err(ReadError::Protocol(_))));
        assert!(matches!(read(&vec![b'a'; MAX_ARG_BYTES + 10]).await, Err(ReadError::Protocol(_))));
    }

    #[test]
    fn encoding() {
        let mut out = Vec::new();
        Reply::Array(vec![Reply::Bulk("a".into()), Reply::Int(2), Reply::Nil, Reply::err("ERR x\r\ny"), Reply::ok()]).encode(&mut out, false);
        assert_eq!(out, b"*5\r\n$1\r\na\r\n:2\r\n$-1\r\n-ERR x  y\r\n+OK\r\n");
        let state = Reply::pairs(&[("ip", "h".into())]);
        let mut two = Vec::new();
        state.encode(&mut two, false);
        assert_eq!(two, b"*2\r\n$2\r\nip\r\n$1\r\nh\r\n");
        let mut three = Vec::new();
        Reply::Array(vec![state, Reply::Nil]).encode(&mut three, true);
        assert_eq!(three, b"*2\r\n%1\r\n$2\r\nip\r\n$1\r\nh\r\n_\r\n");
        let mut push = Vec::new();
        Reply::Push(vec![Reply::Bulk("message".into())]).encode(&mut push, true);
        assert_eq!(push, b">1\r\n$7\r\nmessage\r\n");
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "+switch-master"));
        assert!(glob_match("+s*", "+sdown"));
        assert!(glob_match("?sdown", "-sdown"));
        assert!(glob_match("[+-]sdown", "+sdown"));
        assert!(!glob_match("[^+-]sdown", "+sdown"));
        assert!(!glob_match("+odown", "+sdown"));
    }
}
