//! oslo transport URLs (`rabbit://user:pass@host:port,.../vhost`) turned into AMQP URIs.

use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransportError {
    #[error("transport_url must start with rabbit://, amqp:// or amqps://")]
    Scheme,
    #[error("transport_url names no host")]
    NoHost,
    #[error("transport_url has an invalid port in host {0}")]
    Port(String),
}

/// Parses an oslo transport URL into one AMQP URI per host, in failover order.
/// Error messages never include the password.
pub fn parse_transport_url(url: &str) -> Result<Vec<AMQPUri>, TransportError> {
    let (scheme, rest) = url.split_once("://").ok_or(TransportError::Scheme)?;
    let mut tls = match scheme {
        "rabbit" | "amqp" | "kombu+rabbit" => false,
        "amqps" | "rabbits" => true,
        _ => return Err(TransportError::Scheme),
    };
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "ssl" && matches!(v, "1" | "true" | "True" | "yes") {
            tls = true;
        }
    }
    let (hosts, vhost) = rest.split_once('/').unwrap_or((rest, ""));
    let vhost = percent_decode(vhost);
    let vhost = if vhost.is_empty() { "/".to_owned() } else { vhost };
    let mut out = Vec::new();
    for host in hosts.split(',').filter(|h| !h.is_empty()) {
        let (userinfo, hostport) = match host.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, host),
        };
        let (username, password) = match userinfo {
            Some(u) => {
                let (n, p) = u.split_once(':').unwrap_or((u, ""));
                (percent_decode(n), percent_decode(p))
            }
            None => ("guest".to_owned(), "guest".to_owned()),
        };
        let (name, port) = split_host_port(hostport).ok_or_else(|| TransportError::Port(hostport.to_owned()))?;
        if name.is_empty() {
            return Err(TransportError::NoHost);
        }
        let port = port.unwrap_or(if tls { 5671 } else { 5672 });
        out.push(AMQPUri {
            scheme: if tls { AMQPScheme::AMQPS } else { AMQPScheme::AMQP },
            authority: AMQPAuthority { userinfo: AMQPUserInfo { username, password }, host: name, port },
            vhost: vhost.clone(),
            query: AMQPQueryString::default(),
        });
    }
    if out.is_empty() {
        return Err(TransportError::NoHost);
    }
    Ok(out)
}

fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((h.to_owned(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Some((h.to_owned(), Some(p.parse().ok().filter(|p| *p != 0)?))),
        None => Some((s.to_owned(), None)),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_oslo_urls() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str, &'a str, u16, bool)], &'a str);
        let cases: &[Case] = &[
            ("rabbit://guest:guest@127.0.0.1:5672/", &[("guest", "guest", "127.0.0.1", 5672, false)], "/"),
            ("rabbit://u:p%40ss@h1:5673,u2:p2@h2/trove", &[("u", "p@ss", "h1", 5673, false), ("u2", "p2", "h2", 5672, false)], "trove"),
            ("rabbit://u:p@h?ssl=1", &[("u", "p", "h", 5671, true)], "/"),
            ("amqps://u:p@[::1]:5671/%2f", &[("u", "p", "::1", 5671, true)], "/"),
        ];
        for (url, hosts, vhost) in cases {
            let uris = parse_transport_url(url).unwrap();
            assert_eq!(uris.len(), hosts.len(), "{url}");
            for (uri, (user, pass, host, port, tls)) in uris.iter().zip(hosts.iter()) {
                assert_eq!(uri.authority.userinfo.username, *user);
                assert_eq!(uri.authority.userinfo.password, *pass);
                assert_eq!(uri.authority.host, *host);
                assert_eq!(uri.authority.port, *port);
                assert_eq!(uri.scheme == AMQPScheme::AMQPS, *tls);
                assert_eq!(uri.vhost, *vhost);
            }
        }
    }

    #[test]
    fn refuses_bad_urls_without_echoing_secrets() {
        for url in ["http://u:secret@h", "rabbit://u:secret@h:notaport/", "rabbit:///", "nourl"] {
            let err = parse_transport_url(url).unwrap_err().to_string();
            assert!(!err.contains("secret"), "{err}");
        }
    }
}
