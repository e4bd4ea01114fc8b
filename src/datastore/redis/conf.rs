//! redis.conf reading and writing: Redis's own argument syntax, aliases, and layered rendering.

/// One directive: the lowercase key and its arguments, unquoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub key: String,
    pub args: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("redis.conf line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// Old and new spellings of the same directive (Redis 5 renamed slave → replica).
const ALIASES: &[(&str, &str)] = &[
    ("slaveof", "replicaof"),
    ("slave-read-only", "replica-read-only"),
    ("slave-serve-stale-data", "replica-serve-stale-data"),
    ("slave-priority", "replica-priority"),
    ("slave-lazy-flush", "replica-lazy-flush"),
    ("slave-announce-ip", "replica-announce-ip"),
    ("slave-announce-port", "replica-announce-port"),
    ("min-slaves-to-write", "min-replicas-to-write"),
    ("min-slaves-max-lag", "min-replicas-max-lag"),
    ("repl-ping-slave-period", "repl-ping-replica-period"),
];

/// Names only Valkey accepts for a Redis directive (never written: Redis refuses them).
const VALKEY_ALIASES: &[(&str, &str)] = &[("primaryauth", "masterauth"), ("primaryuser", "masteruser")];

/// The Redis ≥5 name of a directive.
pub fn canonical(key: &str) -> String {
    let key = key.to_ascii_lowercase();
    ALIASES.iter().chain(VALKEY_ALIASES).find(|(old, _)| *old == key).map(|(_, new)| new.to_string()).unwrap_or(key)
}

/// The name a Redis of `major` version understands.
pub fn spelled_for(key: &str, major: u32) -> String {
    let key = canonical(key);
    if major >= 5 {
        return key;
    }
    ALIASES.iter().find(|(_, new)| *new == key).map(|(old, _)| old.to_string()).unwrap_or(key)
}

/// Splits one line the way Redis does (`sdssplitargs`): bare words, "double" and 'single' quotes.
pub fn split_args(line: &str) -> Result<Vec<String>, String> {
    let bytes = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= bytes.len() {
            return Ok(out);
        }
        let mut cur = Vec::new();
        match bytes[i] {
            b'"' => {
                i += 1;
                loop {
                    let Some(&c) = bytes.get(i) else { return Err("unbalanced double quotes".into()) };
                    match c {
                        b'\\' if i + 3 < bytes.len() && bytes[i + 1] == b'x' && is_hex(bytes.get(i + 2)) && is_hex(bytes.get(i + 3)) => {
                            cur.push(u8::from_str_radix(&line[i + 2..i + 4], 16).unwrap_or(0));
                            i += 4;
                        }
                        b'\\' if i + 1 < bytes.len() => {
                            cur.push(match bytes[i + 1] {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'b' => 8,
                                b'a' => 7,
                                other => other,
                            });
                            i += 2;
                        }
                        b'"' => {
                            i += 1;
                            if bytes.get(i).is_some_and(|c| !c.is_ascii_whitespace()) {
                                return Err("closing quote must be followed by a space".into());
                            }
                            break;
                        }
                        _ => {
                            cur.push(c);
                            i += 1;
                        }
                    }
                }
            }
            b'\'' => {
                i += 1;
                loop {
                    let Some(&c) = bytes.get(i) else { return Err("unbalanced single quotes".into()) };
                    if c == b'\\' && bytes.get(i + 1) == Some(&b'\'') {
                        cur.push(b'\'');
                        i += 2;
                    } else if c == b'\'' {
                        i += 1;
                        if bytes.get(i).is_some_and(|c| !c.is_ascii_whitespace()) {
                            return Err("closing quote must be followed by a space".into());
                        }
                        break;
                    } else {
                        cur.push(c);
                        i += 1;
                    }
                }
            }
            _ => {
                while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                    cur.push(bytes[i]);
                    i += 1;
                }
            }
        }
        out.push(String::from_utf8(cur).map_err(|_| "argument is not valid UTF-8".to_string())?);
    }
}

fn is_hex(b: Option<&u8>) -> bool {
    b.is_some_and(|b| b.is_ascii_hexdigit())
}

/// Quotes an argument so `split_args` reads it back exactly; plain words stay bare.
pub fn quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/@+=,*?!$%^&()[]{}<>~|".contains(&b));
    if plain {
        return arg.to_owned();
    }
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('"');
    for c in arg.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Parses a whole file into directives (comments and blank lines dropped).
pub fn parse(text: &str) -> Result<Vec<Directive>, ParseError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut args = split_args(trimmed).map_err(|reason| ParseError { line: n + 1, reason })?;
        if args.is_empty() {
            continue;
        }
        let key = args.remove(0).to_ascii_lowercase();
        out.push(Directive { key, args });
    }
    Ok(out)
}

/// The last value of `key` (any spelling), joined by spaces.
pub fn lookup(directives: &[Directive], key: &str) -> Option<String> {
    let key = canonical(key);
    directives.iter().rev().find(|d| canonical(&d.key) == key).map(|d| d.args.join(" "))
}

/// One layer entry: the directive lines that replace every line of that key (none = remove it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub key: String,
    pub lines: Vec<Vec<String>>,
}

impl Override {
    pub fn set(key: &str, args: &[&str]) -> Self {
        Override { key: key.to_owned(), lines: vec![args.iter().map(|a| a.to_string()).collect()] }
    }
    pub fn remove(key: &str) -> Self {
        Override { key: key.to_owned(), lines: vec![] }
    }
}

pub const MANAGED_MARKER: &str = "# ---- managed by trove-guestagent: settings below override the ones above ----";

/// Renders `base` with `overrides` applied in order (later wins); `major` picks the spellings.
/// Base lines for an overridden key are dropped; base comments and other lines are kept.
pub fn render(base: &str, overrides: &[Override], major: u32) -> String {
    let mut last: Vec<&Override> = Vec::new();
    for o in overrides {
        // A name is written bare: one that is not a plain directive name could inject lines.
        if !is_valid_key(&o.key) {
            continue;
        }
        let key = canonical(&o.key);
        last.retain(|x| canonical(&x.key) != key);
        last.push(o);
    }
    let overridden: std::collections::HashSet<String> = last.iter().map(|o| canonical(&o.key)).collect();
    let mut out = String::new();
    for line in base.lines() {
        if line.trim() == MANAGED_MARKER {
            break;
        }
        // The key as Redis reads it (it may be quoted); unparsable lines by their first word.
        let key = match split_args(line) {
            Ok(args) => args.into_iter().next().map(|k| canonical(&k)),
            Err(_) => line.split_whitespace().next().map(canonical),
        };
        let is_directive = !line.trim_start().starts_with('#');
        if is_directive && key.as_ref().is_some_and(|k| overridden.contains(k)) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(MANAGED_MARKER);
    out.push('\n');
    for o in last {
        let name = spelled_for(&o.key, major);
        for args in &o.lines {
            out.push_str(&name);
            for a in args {
                out.push(' ');
                out.push_str(&quote(a));
            }
            out.push('\n');
        }
    }
    out
}

/// A directive name that is safe to write into redis.conf bare: letters, digits, '-', '_' and '.'
/// (module settings are `module.name`), starting with a letter or digit.
pub fn is_valid_key(key: &str) -> bool {
    key.len() <= 128
        && key.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// A host name or IP address that is safe to write into redis.conf and hand to REPLICAOF.
pub fn is_valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && !host.starts_with('-')
        && !host.starts_with('.')
        && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_args_table() {
        let cases: &[(&str, Result<&[&str], ()>)] = &[
            ("port 6379", Ok(&["port", "6379"])),
            ("  save 900 1   300 10 ", Ok(&["save", "900", "1", "300", "10"])),
            (r#"requirepass "a b\"c\\d\n""#, Ok(&["requirepass", "a b\"c\\d\n"])),
            (r#"masterauth "\x41\x7a""#, Ok(&["masterauth", "Az"])),
            ("masterauth 'it\\'s'", Ok(&["masterauth", "it's"])),
            (r#"masterauth """#, Ok(&["masterauth", ""])),
            (r#"x "unterminated"#, Err(())),
            (r#"x "a"b"#, Err(())),
        ];
        for (line, want) in cases {
            let got = split_args(line);
            match want {
                Ok(w) => assert_eq!(got.unwrap(), w.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "{line}"),
                Err(()) => assert!(got.is_err(), "{line}"),
            }
        }
    }

    #[test]
    fn quote_round_trips() {
        for s in ["plain", "", "with space", "quo\"te", "new\nline", "back\\slash", "#hash", "ünïcödé", "tab\tcr\r", "\u{1}ctl", "12345"] {
            let line = format!("k {}", quote(s));
            assert_eq!(split_args(&line).unwrap(), vec!["k".to_string(), s.to_string()], "{s:?}");
        }
    }

    #[test]
    fn render_layers() {
        let base = "# comment\nport 6379\nslaveof 1.2.3.4 6379\nsave 900 1\nsave 300 10\nappendonly no\n";
        let out = render(
            base,
            &[
                Override::set("save", &["60", "1"]),
                Override::set("replicaof", &["10.0.0.1", "7000"]),
                Override::set("masterauth", &["p w\n"]),
                Override::set("slave-read-only", &["yes"]),
            ],
            7,
        );
        let d = parse(&out).unwrap();
        assert_eq!(lookup(&d, "replicaof").as_deref(), Some("10.0.0.1 7000"));
        assert_eq!(lookup(&d, "masterauth").as_deref(), Some("p w\n"));
        assert_eq!(d.iter().filter(|d| d.key == "save").count(), 1);
        assert_eq!(d.iter().filter(|d| canonical(&d.key) == "replicaof").count(), 1);
        assert!(out.contains("# comment"));
        assert!(out.contains("replica-read-only yes"));
        // Rendering again from the rendered text is stable.
        assert_eq!(render(&out, &[], 7).lines().filter(|l| l.starts_with("replicaof")).count(), 0);
        let old = render(base, &[Override::set("replicaof", &["h", "1"])], 4);
        assert!(old.contains("\nslaveof h 1\n"));
        let removed = render(base, &[Override::remove("slaveof")], 7);
        assert_eq!(lookup(&parse(&removed).unwrap(), "replicaof"), None);
    }

    #[test]
    fn hosts() {
        for (h, ok) in [("10.0.0.1", true), ("redis-1.example", true), ("::1", true), ("", false), ("a b", false), ("a\nb", false), ("#x", false), ("\"x\"", false), ("-x", false)] {
            assert_eq!(is_valid_host(h), ok, "{h:?}");
        }
    }

    #[test]
    fn valkey_spellings_are_the_same_directive() {
        assert_eq!(canonical("primaryauth"), "masterauth");
        assert_eq!(canonical("PrimaryUser"), "masteruser");
        assert_eq!(spelled_for("masterauth", 4), "masterauth");
        assert_eq!(spelled_for("primaryauth", 7), "masterauth");
        let out = render("primaryauth old\nprimaryuser u\n", &[Override::set("masterauth", &["new"])], 7);
        assert!(!out.contains("primaryauth") && out.contains("masterauth new") && out.contains("primaryuser u"), "{out}");
    }
}
