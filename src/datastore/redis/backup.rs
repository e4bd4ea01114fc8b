//! Backup and restore of Redis to Swift, laid out as Trove's backup tool does: a consistent RDB
//! (BGSAVE), gzip, optional openssl-compatible AES, segments plus a manifest, Trove's checksum.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use md5::{Digest, Md5};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::mpsc;

use super::manager::RedisManager;
use crate::datastore::archive::{self, Decryptor, Encryptor};
use crate::datastore::swift::{self, Swift};
use crate::datastore::{Error, Result};

const CHUNK: usize = 256 * 1024;

/// What a `create_backup` asks for (Trove's `backup_info`, checked), and the agent's settings.
pub struct BackupSpec {
    pub id: String,
    pub container: String,
    pub swift_url: String,
    pub token: SecretString,
    /// Object metadata (`X-Object-Meta-<key>`), e.g. datastore and datastore_version.
    pub metadata: Vec<(String, String)>,
    pub key: Option<SecretString>,
    pub segment_max_size: u64,
    pub insecure: bool,
    pub snapshot_timeout: Duration,
}

/// What Trove records for a finished backup.
#[derive(Debug, Clone)]
pub struct BackupDone {
    pub checksum: String,
    pub location: String,
    /// Bytes stored (compressed and encrypted).
    pub size: u64,
    pub segments: usize,
}

/// What a `prepare` restores (Trove's `backup_info`, checked): a backup in Swift, or a snapshot
/// backup (`storage_driver` cinder), whose data Cinder already put on the new instance's volume.
pub enum Restore {
    Swift(RestoreSpec),
    Snapshot { id: String },
}

impl Restore {
    pub fn id(&self) -> &str {
        match self {
            Restore::Swift(spec) => &spec.id,
            Restore::Snapshot { id } => id,
        }
    }
}

/// A backup in Swift to restore.
pub struct RestoreSpec {
    pub id: String,
    pub location: String,
    pub checksum: Option<String>,
    pub swift_url: String,
    pub token: SecretString,
    pub key: Option<SecretString>,
    pub insecure: bool,
}

/// Trove's backup ids are UUIDs; anything that would escape an object name is refused.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Takes a backup of the local Redis into Swift. On failure nothing Trove would restore is left:
/// the segments written are deleted, and the object Trove restores is written last.
pub async fn create(manager: &RedisManager, spec: &BackupSpec) -> Result<BackupDone> {
    if !valid_id(&spec.id) {
        return Err(Error::Refused(format!("backup id '{}' is not a Trove backup id", spec.id)));
    }
    let swift = Swift::new(&spec.swift_url, SecretString::from(spec.token.expose_secret().to_owned()), spec.insecure)?;
    swift.put_container(&spec.container).await?;
    let rdb = snapshot(manager, spec.snapshot_timeout).await?;
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let key = spec.key.as_ref().map(|k| k.expose_secret().as_bytes().to_vec());
    let encode = tokio::task::spawn_blocking(move || encode(rdb, key.as_deref(), tx));
    let uploaded = upload(&swift, spec, rx).await;
    // The encoder ends once the uploader stops taking (its channel closes).
    let encoded = encode.await.map_err(|e| Error::Storage(format!("backup encoder: {e}")))?;
    let segments = match (uploaded, encoded) {
        (Ok(s), Ok(())) => s,
        (Ok(s), Err(e)) => {
            remove_segments(&swift, &spec.container, &s.iter().map(|s| s.name.clone()).collect::<Vec<_>>()).await;
            return Err(e);
        }
        // The upload's own error says more than the encoder's "the upload stopped".
        (Err((e, written)), _) => {
            remove_segments(&swift, &spec.container, &written).await;
            return Err(e);
        }
    };
    let object = archive::object_name(&spec.id, spec.key.is_some());
    match finish(&swift, spec, &object, &segments).await {
        Ok(checksum) => Ok(BackupDone {
            checksum,
            location: format!("{}/{}/{}", swift.url(), spec.container, object),
            size: segments.iter().map(|s| s.size).sum(),
            segments: segments.len(),
        }),
        Err(e) => {
            let _ = swift.delete_object(&spec.container, &object, false).await;
            remove_segments(&swift, &spec.container, &segments.iter().map(|s| s.name.clone()).collect::<Vec<_>>()).await;
            Err(e)
        }
    }
}

/// A fresh RDB of the current dataset, opened: `BGSAVE SCHEDULE` (a fork; writes go on), the wait
/// for a save newer than the request, and the file it wrote. A later save renames a new file over
/// it; the open file keeps this one.
async fn snapshot(manager: &RedisManager, timeout: Duration) -> Result<std::fs::File> {
    let path = save(manager, timeout).await?;
    std::fs::File::open(&path).map_err(|e| Error::io(&path, e))
}

/// `BGSAVE SCHEDULE` and the wait for a save newer than the request; the RDB's path.
pub async fn save(manager: &RedisManager, timeout: Duration) -> Result<PathBuf> {
    let mut admin = manager.admin().await?;
    let dir = admin.config_get("dir").await?.unwrap_or_else(|| manager.settings.data_dir.display().to_string());
    let file = admin.config_get("dbfilename").await?.filter(|f| !f.is_empty()).unwrap_or_else(|| "dump.rdb".into());
    let deadline = tokio::time::Instant::now() + timeout;
    // A save already running (a save point, another tool) forked before this request: wait for it
    // to end, then start one of our own. Redis refuses `BGSAVE SCHEDULE` while an RDB save runs
    // (it queues only behind an AOF rewrite), so a save point firing in between means waiting again.
    let before = loop {
        while admin.info("persistence").await?.get("rdb_bgsave_in_progress").map(str::trim) == Some("1") {
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Timeout(format!("a background save already running did not finish within {timeout:?}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let before = admin.lastsave().await?;
        // LASTSAVE counts seconds: a save in this same second would not be told apart.
        while admin.time().await? <= before {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match admin.bgsave_schedule().await {
            Ok(()) => break before,
            Err(e) if e.to_string().contains("in progress") && tokio::time::Instant::now() < deadline => continue,
            Err(e) => return Err(e.into()),
        }
    };
    loop {
        let p = admin.info("persistence").await?;
        let on = |k: &str| p.get(k).map(str::trim) == Some("1");
        // A scheduled save waits for a running AOF rewrite.
        if !on("rdb_bgsave_in_progress") && !on("aof_rewrite_in_progress") {
            if admin.lastsave().await? > before {
                break;
            }
            if p.get("rdb_last_bgsave_status").map(str::trim) == Some("err") {
                return Err(Error::Storage("redis's background save (BGSAVE) failed: see the redis-server log (disk space, permissions)".into()));
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Timeout(format!("redis's background save did not finish within {timeout:?}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Path::new(&dir).join(&file))
}

/// Sends the encoded stream to the uploader in chunks.
struct ChunkSink {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

impl ChunkSink {
    fn push(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(chunk).map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.push()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.push()
    }
}

/// RDB → gzip → (AES) → chunks. Runs on a blocking thread.
fn encode(mut rdb: std::fs::File, key: Option<&[u8]>, tx: mpsc::Sender<Bytes>) -> Result<()> {
    let sink = ChunkSink { tx, buf: Vec::with_capacity(CHUNK) };
    let failed = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::BrokenPipe => Error::Storage("the upload stopped".into()),
        _ => Error::Storage(format!("reading and compressing the RDB: {e}")),
    };
    let copy = |w: &mut dyn Write, r: &mut std::fs::File| -> std::io::Result<()> {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            w.write_all(&buf[..n])?;
        }
    };
    let level = flate2::Compression::fast();
    let mut sink = match key {
        Some(key) => {
            let mut gz = flate2::write::GzEncoder::new(Encryptor::new(sink, key, None).map_err(failed)?, level);
            copy(&mut gz, &mut rdb).map_err(failed)?;
            gz.finish().map_err(failed)?.finish().map_err(failed)?
        }
        None => {
            let mut gz = flate2::write::GzEncoder::new(sink, level);
            copy(&mut gz, &mut rdb).map_err(failed)?;
            gz.finish().map_err(failed)?
        }
    };
    sink.flush().map_err(failed)
}

struct Segment {
    name: String,
    md5: String,
    size: u64,
}

/// Uploads the stream as segments of at most `segment_max_size` bytes, each checked against
/// Swift's ETag. On error: the error and the segments that may have been written.
async fn upload(swift: &Swift, spec: &BackupSpec, mut rx: mpsc::Receiver<Bytes>) -> Result<Vec<Segment>, (Error, Vec<String>)> {
    let mut done: Vec<Segment> = Vec::new();
    let mut carry: Option<Bytes> = None;
    loop {
        let first = match carry.take() {
            Some(c) => c,
            None => match rx.recv().await {
                Some(c) => c,
                None => break,
            },
        };
        let name = archive::segment_name(&spec.id, done.len());
        let written = || done.iter().map(|s| s.name.clone()).chain([name.clone()]).collect::<Vec<_>>();
        let (body_tx, body_rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
        let stream = futures_util::stream::unfold(body_rx, |mut r| async move { r.recv().await.map(|c| (c, r)) });
        let put = swift.put_object(&spec.container, &name, reqwest::Body::wrap_stream(stream), HeaderMap::new());
        let feed = async {
            let mut md5 = Md5::new();
            let mut size = 0u64;
            let mut next = Some(first);
            while let Some(mut chunk) = next.take() {
                let room = spec.segment_max_size - size;
                if chunk.len() as u64 > room {
                    carry = Some(chunk.split_off(room as usize));
                }
                md5.update(&chunk);
                size += chunk.len() as u64;
                if body_tx.send(Ok(chunk)).await.is_err() {
                    break; // the request failed; its error is reported
                }
                if size >= spec.segment_max_size {
                    break;
                }
                next = rx.recv().await;
            }
            drop(body_tx);
            (archive::hex(&md5.finalize()), size)
        };
        let (etag, (md5, size)) = tokio::join!(put, feed);
        let etag = etag.map_err(|e| (e, written()))?;
        if etag != md5 {
            return Err((Error::Storage(format!("swift stored segment {name} with ETag {etag}, not its MD5 {md5}")), written()));
        }
        done.push(Segment { name, md5, size });
    }
    if done.is_empty() {
        return Err((Error::Storage("the backup stream was empty".into()), Vec::new()));
    }
    Ok(done)
}

/// Writes the object Trove restores (copy of the one segment, or the SLO manifest), checks its
/// ETag, and returns the checksum.
async fn finish(swift: &Swift, spec: &BackupSpec, object: &str, segments: &[Segment]) -> Result<String> {
    let mut headers = HeaderMap::new();
    for (k, v) in &spec.metadata {
        let name = HeaderName::from_bytes(format!("x-object-meta-{}", k.replace('_', "-")).as_bytes());
        let value = HeaderValue::from_str(v);
        if let (Ok(name), Ok(value)) = (name, value) {
            headers.insert(name, value);
        }
    }
    let md5s: Vec<String> = segments.iter().map(|s| s.md5.clone()).collect();
    let checksum = archive::backup_checksum(&md5s);
    if let [one] = segments {
        swift.copy_object(&spec.container, &one.name, object, headers).await?;
        swift.delete_object(&spec.container, &one.name, false).await?;
    } else {
        let manifest: Vec<serde_json::Value> = segments
            .iter()
            .map(|s| serde_json::json!({"path": format!("{}/{}", spec.container, s.name), "etag": s.md5, "size_bytes": s.size}))
            .collect();
        swift.put_manifest(&spec.container, object, serde_json::Value::Array(manifest).to_string(), headers).await?;
    }
    let head = swift.head_object(&spec.container, object).await?.ok_or_else(|| Error::Storage(format!("swift lost {object} right after writing it")))?;
    if head.etag() != checksum {
        return Err(Error::Storage(format!("swift's ETag of {object} is {}, not the backup's checksum {checksum}", head.etag())));
    }
    Ok(checksum)
}

async fn remove_segments(swift: &Swift, container: &str, names: &[String]) {
    for name in names {
        if let Err(error) = swift.delete_object(container, name, false).await {
            tracing::warn!(%error, segment = %name, "a segment of a failed backup was not removed");
        }
    }
}

/// Downloads, checks and unpacks a backup into `rdb` (atomically: a temporary file beside it,
/// renamed over it only when every check passed). Nothing is left behind on failure.
pub async fn restore(spec: &RestoreSpec, rdb: PathBuf) -> Result<u64> {
    let (container, object) = swift::explode_location(&spec.location)
        .ok_or_else(|| Error::Refused(format!("backup location '{}' is not <swift url>/<container>/<object>", spec.location)))?;
    let encrypted = object.ends_with(".enc");
    if !object.trim_end_matches(".enc").ends_with(".gz") {
        return Err(Error::Refused(format!("backup object '{object}' is not a gzip stream (<id>.gz or <id>.gz.enc) as this agent and Trove write them")));
    }
    let key = match (encrypted, &spec.key) {
        (true, None) => return Err(Error::Refused("the backup is encrypted (.enc) and backup.aes_cbc_key (Trove's backup_aes_cbc_key) is not set".into())),
        (true, Some(k)) => Some(k.expose_secret().as_bytes().to_vec()),
        (false, _) => None,
    };
    let swift = Swift::new(&spec.swift_url, SecretString::from(spec.token.expose_secret().to_owned()), spec.insecure)?;
    let resp = swift.get_object(&container, &object).await?;
    let head = swift::Head { headers: resp.headers().clone() };
    let etag = head.etag();
    // A static large object's ETag is over its segments' MD5s (Swift checks each segment as it
    // serves it); a plain object's is the MD5 of its bytes, checked here.
    let large = head.headers.get("x-static-large-object").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if let Some(want) = &spec.checksum {
        if &etag != want {
            return Err(Error::Storage(format!("backup {} fails its checksum: Swift's ETag is {etag}, Trove recorded {want}", spec.id)));
        }
    }
    let dir = rdb.parent().map(Path::to_path_buf).unwrap_or_default();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let tmp = dir.join(format!(".restore-{}.rdb.tmp", spec.id));
    let result = unpack(resp, key, &tmp).await.and_then(|(md5, size)| {
        if !large && md5 != etag {
            return Err(Error::Storage(format!("backup {} is corrupt: its bytes hash to {md5}, not {etag}", spec.id)));
        }
        Ok(size)
    });
    let size = match result {
        Ok(size) => size,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    // Redis (under systemd, the redis user) must read it: it gets the data directory's owner.
    if let Ok(meta) = std::fs::metadata(&dir) {
        use std::os::unix::fs::MetadataExt;
        if let Err(e) = std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid())) {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(&tmp, e));
        }
    }
    std::fs::rename(&tmp, &rdb).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(&rdb, e)
    })?;
    Ok(size)
}

/// Streams the response through MD5, (decryption,) gunzip and an RDB check into `tmp`.
async fn unpack(mut resp: reqwest::Response, key: Option<Vec<u8>>, tmp: &Path) -> Result<(String, u64)> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(8);
    let path = tmp.to_path_buf();
    let writer = tokio::task::spawn_blocking(move || -> Result<()> {
        let file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode_0600().open(&path).map_err(|e| Error::io(&path, e))?;
        let corrupt = |e: std::io::Error| Error::Storage(format!("the backup does not unpack: {e}"));
        let mut rdb = RdbCheck::new(std::io::BufWriter::new(file));
        match key {
            Some(key) => {
                let mut dec = Decryptor::new(flate2::write::GzDecoder::new(&mut rdb), &key);
                while let Some(chunk) = rx.blocking_recv() {
                    dec.write_all(&chunk).map_err(|e| Error::Storage(format!("the backup does not decrypt with backup.aes_cbc_key, or is corrupt: {e}")))?;
                }
                let gz = dec.finish().map_err(|e| Error::Storage(e.to_string()))?;
                gz.finish().map_err(corrupt)?;
            }
            None => {
                let mut gz = flate2::write::GzDecoder::new(&mut rdb);
                while let Some(chunk) = rx.blocking_recv() {
                    gz.write_all(&chunk).map_err(corrupt)?;
                }
                gz.finish().map_err(corrupt)?;
            }
        }
        let file = rdb.finish()?;
        let file = file.into_inner().map_err(|e| Error::io(&path, e.error()))?;
        file.sync_all().map_err(|e| Error::io(&path, e))
    });
    let mut md5 = Md5::new();
    let mut size = 0u64;
    let mut download: Result<()> = Ok(());
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                md5.update(&chunk);
                size += chunk.len() as u64;
                if tx.send(chunk).await.is_err() {
                    break; // the writer failed; its error says why
                }
            }
            Ok(None) => break,
            Err(e) => {
                download = Err(Error::Storage(format!("downloading the backup failed: {}", e.without_url())));
                break;
            }
        }
    }
    drop(tx);
    let written = writer.await.map_err(|e| Error::Storage(format!("backup decoder: {e}")))?;
    download?;
    written?;
    Ok((archive::hex(&md5.finalize()), size))
}

/// A snapshot backup's dataset: the RDB that `pre_create_backup` saved before the snapshot, on the
/// volume Trove made from it. Its size, or an error when the volume holds no RDB.
pub async fn check_snapshot_rdb(rdb: &std::path::Path) -> Result<u64> {
    let path = rdb.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut head = Vec::with_capacity(9);
        let file = std::fs::File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Storage(format!("the volume made from the snapshot holds no Redis dataset ({} is missing)", path.display()))
            } else {
                Error::io(&path, e)
            }
        })?;
        let size = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        std::io::Read::take(file, 9).read_to_end(&mut head).map_err(|e| Error::io(&path, e))?;
        let mut check = RdbCheck::new(std::io::sink());
        check.write_all(&head).map_err(|e| Error::io(&path, e))?;
        check.finish().map_err(|_| Error::Storage(format!("{} on the volume made from the snapshot is not a Redis RDB file", path.display())))?;
        Ok(size)
    })
    .await
    .map_err(|e| Error::Storage(format!("snapshot check: {e}")))?
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

/// Passes an RDB through and checks that it is one: the `REDIS` magic and a version.
struct RdbCheck<W: Write> {
    inner: W,
    head: Vec<u8>,
    total: u64,
}

impl<W: Write> RdbCheck<W> {
    fn new(inner: W) -> Self {
        RdbCheck { inner, head: Vec::new(), total: 0 }
    }

    fn finish(self) -> Result<W> {
        if self.head.len() < 9 || &self.head[..5] != b"REDIS" || !self.head[5..9].iter().all(u8::is_ascii_digit) {
            return Err(Error::Storage("the backup does not hold a Redis RDB file".into()));
        }
        Ok(self.inner)
    }
}

impl<W: Write> Write for RdbCheck<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.head.len() < 9 {
            let take = (9 - self.head.len()).min(buf.len());
            self.head.extend_from_slice(&buf[..take]);
        }
        self.inner.write_all(buf)?;
        self.total += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_would_escape_an_object_name_are_refused() {
        assert!(valid_id("6a5c0f4e-9d1b-4c57-9f0e-0c1f2b3a4d5e"));
        for bad in ["", "../x", "a/b", "a b", "a.gz", &"x".repeat(129)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn rdb_check_wants_the_magic() {
        let mut ok = RdbCheck::new(Vec::new());
        ok.write_all(b"REDIS0011rest").unwrap();
        assert_eq!(ok.finish().unwrap(), b"REDIS0011rest");
        let mut bad = RdbCheck::new(Vec::new());
        bad.write_all(b"hello world").unwrap();
        assert!(bad.finish().is_err());
    }
}
