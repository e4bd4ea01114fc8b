//! oslo.config's INI dialect (Trove's `guest_info.conf`, `trove-guestagent.conf`): parser and file discovery.
//!
//! The rules follow oslo.config's `iniparser`: `#` and `;` start a comment line; `[section]`
//! opens a section (`DEFAULT` as written, any other name lower-cased); `key = value` or
//! `key: value` (whichever separator comes first); keys are case-sensitive; surrounding
//! whitespace is trimmed and one pair of matching quotes around a value is removed; an indented
//! line continues the previous value (joined with a newline) and a blank line ends it; a key
//! repeated (in one file or across files) keeps every value in order, the last one winning for a
//! single-valued option.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A parse error, with the 1-based line number; it never quotes a value (values may be secrets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {what}")]
pub struct ParseError {
    pub line: usize,
    pub what: &'static str,
}

/// One value of a key, and the file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub value: String,
    pub file: PathBuf,
}

/// Parsed option files: section → key → every value, in file and line order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsloConf {
    pub sections: BTreeMap<String, BTreeMap<String, Vec<Value>>>,
}

impl OsloConf {
    /// Parses `text` (from `file`) and appends its values after those already held.
    pub fn add(&mut self, text: &str, file: &Path) -> Result<(), ParseError> {
        for (section, key, value) in parse(text)? {
            self.sections.entry(section).or_default().entry(key).or_default().push(Value { value, file: file.to_owned() });
        }
        Ok(())
    }

    /// The last value of `section.key`, as oslo gives a single-valued option.
    pub fn get(&self, section: &str, key: &str) -> Option<&Value> {
        self.sections.get(section)?.get(key)?.last()
    }

    /// Every `section.key` held, for reporting what was not used.
    pub fn keys(&self) -> impl Iterator<Item = (&str, &str)> {
        self.sections.iter().flat_map(|(s, keys)| keys.keys().map(move |k| (s.as_str(), k.as_str())))
    }
}

/// oslo's group-name normalisation: `DEFAULT` stays, anything else is lower-cased.
pub fn normalize_section(name: &str) -> String {
    if name == "DEFAULT" {
        name.to_owned()
    } else {
        name.to_lowercase()
    }
}

/// Parses one file's text into `(section, key, value)` assignments in order.
pub fn parse(text: &str) -> Result<Vec<(String, String, String)>, ParseError> {
    let mut out = Vec::new();
    let mut section: Option<String> = None;
    // The assignment being read: its line, key and value lines (continuations append).
    let mut pending: Option<(usize, String, Vec<String>)> = None;
    let flush = |pending: &mut Option<(usize, String, Vec<String>)>, section: &Option<String>, out: &mut Vec<_>| {
        if let Some((line, key, lines)) = pending.take() {
            let Some(section) = section else {
                return Err(ParseError { line, what: "an option before any [section]" });
            };
            out.push((section.clone(), key, lines.join("\n")));
        }
        Ok(())
    };
    let mut lineno = 0;
    for raw in text.split('\n') {
        lineno += 1;
        let line = raw.trim_end();
        if line.is_empty() {
            flush(&mut pending, &section, &mut out)?;
            continue;
        }
        if line.starts_with([' ', '\t']) {
            match &mut pending {
                Some((_, _, lines)) => lines.push(line.trim_start().to_owned()),
                None => return Err(ParseError { line: lineno, what: "an indented line that continues no option" }),
            }
            continue;
        }
        flush(&mut pending, &section, &mut out)?;
        if let Some(rest) = line.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                return Err(ParseError { line: lineno, what: "a section header without its closing ']'" });
            };
            if name.is_empty() {
                return Err(ParseError { line: lineno, what: "an empty section name" });
            }
            section = Some(normalize_section(name));
        } else if line.starts_with(['#', ';']) {
            continue;
        } else {
            let colon = line.find(':');
            let equal = line.find('=');
            let at = match (equal, colon) {
                (Some(e), Some(c)) => e.min(c),
                (Some(e), None) => e,
                (None, Some(c)) => c,
                (None, None) => return Err(ParseError { line: lineno, what: "a line that is neither a section, a comment nor key = value" }),
            };
            let key = line[..at].trim();
            if key.is_empty() {
                return Err(ParseError { line: lineno, what: "an option with an empty name" });
            }
            pending = Some((lineno, key.to_owned(), vec![unquote(line[at + 1..].trim()).to_owned()]));
        }
    }
    flush(&mut pending, &section, &mut out)?;
    Ok(out)
}

/// Removes one pair of matching quotes around a value, as oslo does.
fn unquote(value: &str) -> &str {
    for q in ['"', '\''] {
        if value.len() >= 2 && value.starts_with(q) && value.ends_with(q) {
            return &value[1..value.len() - 1];
        }
    }
    // oslo compares first and last characters, so a lone quote character is emptied.
    if value == "\"" || value == "'" {
        return "";
    }
    value
}

/// The files of `--config-dir DIR`: every `*.conf` in it, sorted by name (oslo's order).
pub fn dir_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conf") && p.file_stem().is_some_and(|s| !s.is_empty()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// oslo's boolean spellings (`BoolOpt`): true/false, yes/no, on/off, 1/0, any case.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Vec<(String, String, String)> {
        parse(text).unwrap()
    }

    fn t(s: &str, k: &str, v: &str) -> (String, String, String) {
        (s.into(), k.into(), v.into())
    }

    #[test]
    fn trove_guest_info_parses() {
        let text = "[DEFAULT]\nguest_id=0c3f\ndatastore_manager=redis\nreplication_strategy=trove.guestagent.strategies.replication.experimental.redis_sync.RedisSyncReplication\nssl_mode=None\n";
        let got = p(text);
        assert_eq!(got[0], t("DEFAULT", "guest_id", "0c3f"));
        assert_eq!(got[2].2, "trove.guestagent.strategies.replication.experimental.redis_sync.RedisSyncReplication");
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn comments_separators_quotes_and_sections() {
        let text = "# c\n; c\n[DEFAULT]\na = 1\nb: 2\nc = x:y\nd: x=y\ne = \"q\"\nf = 'q'\ng = \"q'\nh =\n[Oslo_Messaging_Rabbit]\nssl = True\n[default]\nz = 1\n";
        assert_eq!(
            p(text),
            vec![
                t("DEFAULT", "a", "1"),
                t("DEFAULT", "b", "2"),
                t("DEFAULT", "c", "x:y"),
                t("DEFAULT", "d", "x=y"),
                t("DEFAULT", "e", "q"),
                t("DEFAULT", "f", "q"),
                t("DEFAULT", "g", "\"q'"),
                t("DEFAULT", "h", ""),
                t("oslo_messaging_rabbit", "ssl", "True"),
                t("default", "z", "1"),
            ]
        );
    }

    #[test]
    fn continuation_lines_join_and_blank_lines_end_them() {
        let text = "[DEFAULT]\nmsg = first\n  second\n\tthird\n\nnext = 1\n";
        assert_eq!(p(text), vec![t("DEFAULT", "msg", "first\nsecond\nthird"), t("DEFAULT", "next", "1")]);
    }

    #[test]
    fn keys_are_case_sensitive_and_repeats_are_kept() {
        let mut conf = OsloConf::default();
        conf.add("[DEFAULT]\nKey = 1\nkey = 2\nkey = 3\n", Path::new("a.conf")).unwrap();
        conf.add("[DEFAULT]\nkey = 4\n", Path::new("b.conf")).unwrap();
        assert_eq!(conf.get("DEFAULT", "Key").unwrap().value, "1");
        let v = conf.get("DEFAULT", "key").unwrap();
        assert_eq!((v.value.as_str(), v.file.as_path()), ("4", Path::new("b.conf")));
        assert_eq!(conf.sections["DEFAULT"]["key"].len(), 3);
    }

    #[test]
    fn malformed_input_is_refused_with_its_line() {
        for (text, line) in [
            ("key = 1\n", 1),
            ("[DEFAULT]\n  indented\n", 2),
            ("[DEFAULT\n", 1),
            ("[]\n", 1),
            ("[DEFAULT]\njust words\n", 2),
            ("[DEFAULT]\n = 1\n", 2),
        ] {
            assert_eq!(parse(text).unwrap_err().line, line, "{text:?}");
        }
    }

    #[test]
    fn errors_never_quote_values() {
        let err = parse("secret_here\n").unwrap_err().to_string();
        assert!(!err.contains("secret_here"), "{err}");
    }

    #[test]
    fn bools_like_oslo() {
        for v in ["True", "yes", "ON", "1"] {
            assert_eq!(parse_bool(v), Some(true));
        }
        for v in ["False", "no", "off", "0"] {
            assert_eq!(parse_bool(v), Some(false));
        }
        assert_eq!(parse_bool("maybe"), None);
    }

    #[test]
    fn dir_files_are_sorted_conf_files_only() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["trove-guestagent.conf", "guest_info.conf", "notes.txt", "a.conf.bak", ".conf"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        std::fs::create_dir(dir.path().join("sub.conf")).unwrap();
        let names: Vec<_> = dir_files(dir.path()).unwrap().into_iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["guest_info.conf", "trove-guestagent.conf"]);
    }
}
