//! The backup marker, `<state file>.backup`: the backups started and not yet reported finished, so the next agent reports them FAILED.
//!
//! One line per backup, `<backup id> <start, Unix seconds>`; normally one line (backups run one at
//! a time), two when a backup starts before the boot report of an interrupted one was sent. No
//! secret: ids only. Written as the state file is (temporary file, fsync, rename, mode 0600),
//! then the directory is fsync'd so the rename survives a host crash.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::backup::valid_id;
use super::state::{sync_dir, write_private};
use crate::datastore::{Error, Result};

/// A backup the marker names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub id: String,
    /// When it started, Unix seconds.
    pub at: u64,
}

/// The marker file; its changes run one at a time.
pub struct BackupMarker {
    path: PathBuf,
    lock: Mutex<()>,
}

impl BackupMarker {
    pub fn new(path: PathBuf) -> Self {
        BackupMarker { path, lock: Mutex::new(()) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The backups the marker names; none without a marker, `Err` for one that cannot be read or parsed.
    pub fn read(&self) -> Result<Vec<Started>> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.load()
    }

    /// Records backup `id` as started, durably, before anything of it is reported. Backups the
    /// marker already names stay (a corrupt marker is replaced).
    pub fn begin(&self, id: &str) -> Result<()> {
        if !valid_id(id) {
            return Err(Error::Refused(format!("backup id '{id}' is not a Trove backup id")));
        }
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut list = self.load().unwrap_or_else(|error| {
            tracing::warn!(path = %self.path.display(), %error, "replacing an unreadable backup marker");
            Vec::new()
        });
        list.retain(|s| s.id != id);
        let at = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        list.push(Started { id: id.to_owned(), at });
        self.store(&list)
    }

    /// Takes backup `id` off the marker (removing the file when none is left); other backups stay.
    pub fn finish(&self, id: &str) -> Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        match self.load() {
            Ok(mut list) => {
                let before = list.len();
                list.retain(|s| s.id != id);
                if list.len() == before {
                    return Ok(());
                }
                self.store(&list)
            }
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "removing an unreadable backup marker");
                self.remove()
            }
        }
    }

    /// Removes the marker whatever it holds (an unreadable one).
    pub fn discard(&self) -> Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.remove()
    }

    fn load(&self) -> Result<Vec<Started>> {
        let text = match std::fs::read(&self.path) {
            Ok(bytes) => String::from_utf8(bytes).map_err(|_| Error::io(&self.path, "not UTF-8"))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&self.path, e)),
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| parse_line(l).ok_or_else(|| Error::io(&self.path, "not a backup marker line (<id> <start>)")))
            .collect()
    }

    fn store(&self, list: &[Started]) -> Result<()> {
        if list.is_empty() {
            return self.remove();
        }
        let text: String = list.iter().map(|s| format!("{} {}\n", s.id, s.at)).collect();
        write_private(&self.path, text.as_bytes())?;
        sync_dir(&self.path);
        Ok(())
    }

    fn remove(&self) -> Result<()> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                sync_dir(&self.path);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&self.path, e)),
        }
    }
}

fn parse_line(line: &str) -> Option<Started> {
    let mut words = line.split_whitespace();
    let id = words.next().filter(|id| valid_id(id))?;
    let at = words.next()?.parse().ok()?;
    words.next().is_none().then(|| Started { id: id.to_owned(), at })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn marker() -> (tempfile::TempDir, BackupMarker) {
        let dir = tempfile::tempdir().unwrap();
        let m = BackupMarker::new(dir.path().join("redis.conf.agent.json.backup"));
        (dir, m)
    }

    fn ids(m: &BackupMarker) -> Vec<String> {
        m.read().unwrap().into_iter().map(|s| s.id).collect()
    }

    #[test]
    fn begin_writes_the_id_0600_and_finish_removes_the_file() {
        let (dir, m) = marker();
        assert!(m.read().unwrap().is_empty(), "no marker reads as no backup");
        m.begin("b-1").unwrap();
        let meta = std::fs::metadata(m.path()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(m.path()).unwrap();
        let (id, at) = text.trim_end().split_once(' ').unwrap();
        assert_eq!(id, "b-1");
        assert!(at.parse::<u64>().unwrap() > 1_600_000_000, "{text}");
        assert_eq!(ids(&m), ["b-1"]);
        m.finish("b-1").unwrap();
        assert!(!m.path().exists());
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "no temporary file left: {left:?}");
    }

    #[test]
    fn finish_keeps_the_other_backups_and_ignores_an_unknown_id() {
        let (_dir, m) = marker();
        m.begin("old").unwrap();
        m.begin("new").unwrap();
        m.begin("new").unwrap();
        assert_eq!(ids(&m), ["old", "new"]);
        m.finish("other").unwrap();
        assert_eq!(ids(&m), ["old", "new"]);
        m.finish("old").unwrap();
        assert_eq!(ids(&m), ["new"]);
        m.finish("new").unwrap();
        assert!(!m.path().exists());
        m.finish("new").unwrap();
    }

    #[test]
    fn a_corrupt_marker_is_an_error_to_read_and_is_replaced_or_removed() {
        let (_dir, m) = marker();
        for bad in [&b"../x 1\n"[..], b"id notatime\n", b"id 1 extra\n", b"\xff\xfe\n"] {
            std::fs::write(m.path(), bad).unwrap();
            assert!(m.read().is_err(), "{bad:?}");
        }
        m.begin("b-2").unwrap();
        assert_eq!(ids(&m), ["b-2"]);
        std::fs::write(m.path(), b"garbage").unwrap();
        m.finish("b-2").unwrap();
        assert!(!m.path().exists());
        std::fs::write(m.path(), b"garbage").unwrap();
        m.discard().unwrap();
        assert!(!m.path().exists());
        m.discard().unwrap();
    }

    #[test]
    fn begin_refuses_an_id_that_is_not_a_backup_id() {
        let (_dir, m) = marker();
        assert!(m.begin("a b").is_err());
        assert!(m.begin("").is_err());
        assert!(!m.path().exists());
    }
}
