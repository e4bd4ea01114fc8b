//! What a rendered redis.conf needs at start (runtime directories) and why a start failed (its log, redacted).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::conf;

/// Directives whose arguments are secrets.
const SECRET_KEYS: &[&str] = &["requirepass", "masterauth", "tls-key-file-pass", "tls-client-key-file-pass"];

/// The directories a configuration names for files Redis creates at start: the pidfile's, the
/// unix socket's and the log file's. Redis does not create them, and a missing socket or log
/// directory makes it exit at once.
pub fn runtime_dirs(rendered: &str) -> Vec<PathBuf> {
    let Ok(directives) = conf::parse(rendered) else { return Vec::new() };
    let mut dirs: Vec<PathBuf> = Vec::new();
    for key in ["pidfile", "unixsocket", "logfile"] {
        let Some(path) = conf::lookup(&directives, key).filter(|p| !p.is_empty()) else { continue };
        if let Some(parent) = Path::new(&path).parent().filter(|p| !p.as_os_str().is_empty()) {
            if !dirs.iter().any(|d| d == parent) {
                dirs.push(parent.to_owned());
            }
        }
    }
    dirs
}

/// Creates the missing `dirs` (mode 0755). When the agent runs as root they are given to `owner`
/// (the user Redis runs as), when that user exists. Returns the directories created.
pub fn ensure_dirs(dirs: &[PathBuf], owner: &str) -> std::io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::DirBuilderExt;
    let mut created = Vec::new();
    for dir in dirs {
        if dir.is_dir() {
            continue;
        }
        // Record each missing ancestor so that all of them get the owner.
        let mut missing: Vec<PathBuf> = dir.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()).map(Path::to_path_buf).collect();
        std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
        missing.reverse();
        created.extend(missing);
    }
    if nix::unistd::geteuid().is_root() && !created.is_empty() {
        if let Ok(Some(user)) = nix::unistd::User::from_name(owner) {
            for dir in &created {
                std::os::unix::fs::chown(dir, Some(user.uid.as_raw()), Some(user.gid.as_raw()))?;
            }
        }
    }
    Ok(created)
}

/// Gives `path` to `owner` (the user Redis runs as) when the agent runs as root and that user exists.
pub fn give_to(path: &Path, owner: &str) -> std::io::Result<()> {
    if nix::unistd::geteuid().is_root() {
        if let Ok(Some(user)) = nix::unistd::User::from_name(owner) {
            std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))?;
        }
    }
    Ok(())
}

/// The log files a start writes to (the supervisor's capture and the configured `logfile`), with
/// their sizes before the start, so that a failure shows only that start's lines.
pub struct StartLog {
    files: Vec<(PathBuf, u64)>,
    secrets: Vec<String>,
}

impl StartLog {
    /// Marks the current end of `files` (missing files start at 0); `rendered` gives the secrets to redact.
    pub fn mark(files: impl IntoIterator<Item = PathBuf>, rendered: &str) -> StartLog {
        let mut out: Vec<(PathBuf, u64)> = Vec::new();
        for f in files {
            if !out.iter().any(|(p, _)| *p == f) {
                let len = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
                out.push((f, len));
            }
        }
        StartLog { files: out, secrets: secrets(rendered) }
    }

    /// The configured `logfile` of `rendered`, if it names one.
    pub fn logfile(rendered: &str) -> Option<PathBuf> {
        let directives = conf::parse(rendered).ok()?;
        conf::lookup(&directives, "logfile").filter(|p| !p.is_empty()).map(PathBuf::from)
    }

    /// The last `n` lines written since `mark`, secrets redacted, joined with " | ".
    pub fn tail(&self, n: usize) -> String {
        let mut lines: Vec<String> = Vec::new();
        for (path, from) in &self.files {
            let Ok(mut f) = std::fs::File::open(path) else { continue };
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            // A rotated or truncated file: read what is there. At most 64 KiB.
            let start = if len < *from { 0 } else { *from }.max(len.saturating_sub(64 * 1024));
            let mut text = String::new();
            if f.seek(SeekFrom::Start(start)).is_ok() {
                let _ = f.take(64 * 1024).read_to_string(&mut text);
            }
            lines.extend(text.lines().map(str::trim).filter(|l| !l.is_empty() && !is_boilerplate(l)).map(|l| redact(strip_prefix(l), &self.secrets)));
        }
        let skip = lines.len().saturating_sub(n);
        lines[skip..].join(" | ")
    }
}

/// Start-up lines every Redis prints, which say nothing about a failure.
fn is_boilerplate(line: &str) -> bool {
    ["oO0OoO0OoO0Oo", "Redis version=", "Configuration loaded", "monotonic clock", "Running mode=", "Server initialized", "WARNING Memory overcommit", "WARNING overcommit_memory", "WARNING supervised by systemd"]
        .iter()
        .any(|b| line.contains(b))
}

/// A Redis log line without its `pid:role date time` prefix (the level mark stays).
fn strip_prefix(line: &str) -> &str {
    for mark in [" # ", " * ", " . ", " - "] {
        if let Some(i) = line.find(mark) {
            if line[..i].split_once(':').is_some_and(|(pid, _)| pid.chars().all(|c| c.is_ascii_digit())) {
                return &line[i + 1..];
            }
        }
    }
    line
}

/// Secret values a configuration holds: passwords of the secret directives and of ACL `user` lines.
fn secrets(rendered: &str) -> Vec<String> {
    let Ok(directives) = conf::parse(rendered) else { return Vec::new() };
    let mut out: Vec<String> = Vec::new();
    for d in &directives {
        if SECRET_KEYS.contains(&d.key.as_str()) {
            out.extend(d.args.iter().cloned());
        } else if d.key == "user" {
            out.extend(d.args.iter().filter_map(|a| a.strip_prefix('>').or_else(|| a.strip_prefix('#'))).map(str::to_owned));
        }
    }
    out.retain(|s| !s.is_empty());
    // Longest first, so that a secret containing another is replaced whole.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

/// One log line without secrets: Redis's `>>> 'directive args'` echo keeps only the directive,
/// and every known secret value is masked.
fn redact(line: &str, secrets: &[String]) -> String {
    if let Some(i) = line.find(">>> '") {
        let key = line[i + 5..].split_whitespace().next().unwrap_or("").trim_end_matches('\'');
        return format!("{}>>> '{key} ...'", &line[..i]);
    }
    let mut line = line.to_owned();
    for s in secrets {
        line = line.replace(s.as_str(), "***");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trove_template_names_its_runtime_dirs() {
        let text = "daemonize yes\npidfile /var/run/redis/redis-server.pid\nlogfile \"\"\nunixsocket /var/run/redis/redis.sock\nunixsocketperm 777\n";
        assert_eq!(runtime_dirs(text), vec![PathBuf::from("/var/run/redis")]);
        assert_eq!(runtime_dirs("logfile /var/log/redis/r.log\nunixsocket /tmp/r.sock\n"), vec![PathBuf::from("/tmp"), PathBuf::from("/var/log/redis")]);
        assert!(runtime_dirs("port 6379\npidfile \"\"\n").is_empty());
        assert!(runtime_dirs("pidfile r.pid\n").is_empty(), "a relative name lives in dir");
    }

    #[test]
    fn ensure_dirs_creates_missing_ancestors() {
        let tmp = tempfile::tempdir().unwrap();
        let want = tmp.path().join("run/redis");
        let created = ensure_dirs(&[want.clone(), tmp.path().to_owned()], "redis").unwrap();
        assert!(want.is_dir());
        assert_eq!(created, vec![tmp.path().join("run"), want.clone()]);
        assert!(ensure_dirs(&[want], "redis").unwrap().is_empty());
    }

    #[test]
    fn tail_is_this_start_only_and_redacted() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("redis-server.log");
        std::fs::write(&log, "old line\n").unwrap();
        let rendered = "requirepass \"s3cret-pw\"\nmasterauth other-pw\nuser repl on >repl-pw +psync\n";
        let mark = StartLog::mark([log.clone(), tmp.path().join("absent.log")], rendered);
        let new = "*** FATAL CONFIG FILE ERROR (Redis 7.0.15) ***\nReading the configuration file, at line 3\n>>> 'requirepass \"s3cret-pw\" \"x\"'\nwrong number of arguments\n1:M # auth with other-pw and repl-pw failed\n";
        std::fs::write(&log, format!("old line\n{new}")).unwrap();
        let tail = mark.tail(10);
        assert!(!tail.contains("old line"), "{tail}");
        assert!(tail.contains(">>> 'requirepass ...'") && tail.contains("wrong number of arguments"), "{tail}");
        for secret in ["s3cret-pw", "other-pw", "repl-pw"] {
            assert!(!tail.contains(secret), "{secret} in {tail}");
        }
        assert_eq!(mark.tail(1), "# auth with *** and *** failed");
        std::fs::write(&log, "old line\n7438:C 30 Nov 2026 17:06:12.649 # Redis version=7.0.15, bits=64\n7438:M 30 Nov 2026 17:06:12.660 # Can't load module from /x.so: server aborting\n").unwrap();
        assert_eq!(mark.tail(5), "# Can't load module from /x.so: server aborting");
    }
}
