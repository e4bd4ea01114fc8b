//! Trove's backup stream format: `openssl enc -aes-256-cbc -md sha512 -pbkdf2 -iter 10000 -salt`
//! as streaming writers, and the Swift object and segment names and checksums Trove records.

use std::io::{self, Write};

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use md5::{Digest, Md5};

type Enc = cbc::Encryptor<aes::Aes256>;
type Dec = cbc::Decryptor<aes::Aes256>;

/// The PBKDF2 iterations of Trove's `decrypt_cmd` (`-iter 10000`).
pub const PBKDF2_ITERATIONS: u32 = 10_000;
const MAGIC: &[u8; 8] = b"Salted__";
const BLOCK: usize = 16;

/// Key and IV as `openssl enc -md sha512 -pbkdf2` derives them: 48 bytes of PBKDF2-HMAC-SHA512.
fn derive(pass: &[u8], salt: &[u8; 8]) -> ([u8; 32], [u8; 16]) {
    let mut out = [0u8; 48];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(pass, salt, PBKDF2_ITERATIONS, &mut out);
    let (mut key, mut iv) = ([0u8; 32], [0u8; 16]);
    key.copy_from_slice(&out[..32]);
    iv.copy_from_slice(&out[32..]);
    (key, iv)
}

/// Encrypts what is written to it into `inner`: `Salted__`, the salt, AES-256-CBC, PKCS#7 padding.
pub struct Encryptor<W: Write> {
    inner: W,
    cipher: Enc,
    pending: Vec<u8>,
}

impl<W: Write> Encryptor<W> {
    /// Writes the header at once; `salt` is random unless given (tests).
    pub fn new(mut inner: W, pass: &[u8], salt: Option<[u8; 8]>) -> io::Result<Self> {
        let salt = salt.unwrap_or_else(rand::random);
        let (key, iv) = derive(pass, &salt);
        inner.write_all(MAGIC)?;
        inner.write_all(&salt)?;
        Ok(Encryptor { inner, cipher: Enc::new(&key.into(), &iv.into()), pending: Vec::with_capacity(64 * 1024) })
    }

    /// Pads and writes the last block; returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        let n = self.pending.len();
        let mut last = [0u8; BLOCK];
        last[..n].copy_from_slice(&self.pending);
        let block = self.cipher.encrypt_padded_mut::<Pkcs7>(&mut last, n).map_err(|_| io::Error::other("padding"))?;
        self.inner.write_all(block)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Encryptor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        let whole = self.pending.len() / BLOCK * BLOCK;
        if whole > 0 {
            for block in self.pending[..whole].chunks_exact_mut(BLOCK) {
                self.cipher.encrypt_block_mut(block.into());
            }
            self.inner.write_all(&self.pending[..whole])?;
            self.pending.drain(..whole);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Why a stream could not be decrypted. Never carries the key.
#[derive(Debug, thiserror::Error)]
pub enum DecryptError {
    #[error("the backup is not encrypted the way Trove encrypts (no 'Salted__' header)")]
    NotSalted,
    #[error("the backup does not decrypt with the configured backup_aes_cbc_key (bad padding: wrong key or corrupt data)")]
    BadDecrypt,
    #[error("the encrypted backup is truncated (its length is not a whole number of AES blocks)")]
    Truncated,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Decrypts what is written to it into `inner`; the last block is held back until `finish`
/// checks its padding.
pub struct Decryptor<W: Write> {
    inner: W,
    pass: Vec<u8>,
    cipher: Option<Dec>,
    pending: Vec<u8>,
}

impl<W: Write> Decryptor<W> {
    pub fn new(inner: W, pass: &[u8]) -> Self {
        Decryptor { inner, pass: pass.to_vec(), cipher: None, pending: Vec::with_capacity(64 * 1024) }
    }

    fn feed(&mut self, buf: &[u8]) -> Result<(), DecryptError> {
        self.pending.extend_from_slice(buf);
        if self.cipher.is_none() {
            if self.pending.len() < 16 {
                return Ok(());
            }
            if &self.pending[..8] != MAGIC {
                return Err(DecryptError::NotSalted);
            }
            let mut salt = [0u8; 8];
            salt.copy_from_slice(&self.pending[8..16]);
            let (key, iv) = derive(&self.pass, &salt);
            self.cipher = Some(Dec::new(&key.into(), &iv.into()));
            self.pending.drain(..16);
        }
        // Keep at least one whole block back: it may be the padded last one.
        let whole = self.pending.len() / BLOCK * BLOCK;
        let ready = if whole == self.pending.len() { whole.saturating_sub(BLOCK) } else { whole };
        if ready > 0 {
            let cipher = self.cipher.as_mut().expect("set above");
            for block in self.pending[..ready].chunks_exact_mut(BLOCK) {
                cipher.decrypt_block_mut(block.into());
            }
            self.inner.write_all(&self.pending[..ready])?;
            self.pending.drain(..ready);
        }
        Ok(())
    }

    /// Checks and strips the padding of the last block; returns the inner writer.
    pub fn finish(mut self) -> Result<W, DecryptError> {
        let Some(cipher) = self.cipher.take() else {
            return Err(if self.pending.len() >= 8 && &self.pending[..8] != MAGIC { DecryptError::NotSalted } else { DecryptError::Truncated });
        };
        if self.pending.len() != BLOCK {
            return Err(DecryptError::Truncated);
        }
        let plain = cipher.decrypt_padded_mut::<Pkcs7>(&mut self.pending).map_err(|_| DecryptError::BadDecrypt)?;
        self.inner.write_all(plain)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Decryptor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.feed(buf).map_err(|e| match e {
            DecryptError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
        })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The object Trove restores: `<id>.gz`, or `<id>.gz.enc` when encrypted (as its backup tool
/// and the old Redis guest named them).
pub fn object_name(backup_id: &str, encrypted: bool) -> String {
    format!("{backup_id}.gz{}", if encrypted { ".enc" } else { "" })
}

/// Segment `n` of a backup: `<id>_00000000`, ... (Trove's `StreamReader.segment`).
pub fn segment_name(backup_id: &str, n: usize) -> String {
    let base = backup_id.split('.').next().unwrap_or(backup_id);
    format!("{base}_{n:08}")
}

/// The checksum Trove records for a backup of several segments: the MD5 of the concatenated hex
/// MD5s of the segments (the static large object's ETag). One segment: its own MD5.
pub fn backup_checksum(segment_md5s: &[String]) -> String {
    match segment_md5s {
        [one] => one.clone(),
        many => {
            let mut h = Md5::new();
            for s in many {
                h.update(s.as_bytes());
            }
            hex(&h.finalize())
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn encrypt(data: &[u8], pass: &str) -> Vec<u8> {
        let mut e = Encryptor::new(Vec::new(), pass.as_bytes(), None).unwrap();
        for chunk in data.chunks(7) {
            e.write_all(chunk).unwrap();
        }
        e.finish().unwrap()
    }

    fn decrypt(data: &[u8], pass: &str, chunk: usize) -> Result<Vec<u8>, DecryptError> {
        let mut d = Decryptor::new(Vec::new(), pass.as_bytes());
        for c in data.chunks(chunk) {
            d.feed(c)?;
        }
        d.finish()
    }

    /// Trove's `decrypt_cmd`, run for real. The password goes through a file, not argv.
    fn openssl(args: &[&str], pass: &str, input: &[u8]) -> std::process::Output {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, pass).unwrap();
        let mut child = Command::new("openssl")
            .args(args)
            .args(["-aes-256-cbc", "-md", "sha512", "-pbkdf2", "-iter", "10000", "-salt", "-pass"])
            .arg(format!("file:{}", pw.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl must be installed for this test");
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    }

    #[test]
    fn openssl_decrypts_what_we_encrypt() {
        for len in [0usize, 1, 15, 16, 17, 100_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let out = openssl(&["enc", "-d"], "s3cret key", &encrypt(&data, "s3cret key"));
            assert!(out.status.success(), "len {len}: {}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(out.stdout, data, "len {len}");
        }
    }

    #[test]
    fn we_decrypt_what_openssl_encrypts() {
        let data: Vec<u8> = (0..70_001).map(|i| (i % 256) as u8).collect();
        let out = openssl(&["enc", "-e"], "k", &data);
        assert!(out.status.success());
        assert_eq!(&out.stdout[..8], b"Salted__");
        for chunk in [1, 13, 16, 4096] {
            assert_eq!(decrypt(&out.stdout, "k", chunk).unwrap(), data, "chunk {chunk}");
        }
    }

    #[test]
    fn a_wrong_key_or_damage_is_refused() {
        let data = vec![7u8; 1000];
        let sealed = encrypt(&data, "k3y-A");
        // A wrong key: the padding check fails (or, 1 in 256, the data is garbage; gunzip catches that).
        match decrypt(&sealed, "k3y-B", 64) {
            Err(DecryptError::BadDecrypt) => {}
            Ok(garbage) => assert_ne!(garbage, data),
            Err(e) => panic!("{e}"),
        }
        assert!(matches!(decrypt(&sealed[..sealed.len() - 3], "k3y-A", 64), Err(DecryptError::Truncated)));
        assert!(matches!(decrypt(b"not an openssl stream at all", "k3y-A", 64), Err(DecryptError::NotSalted)));
        assert!(matches!(decrypt(b"", "k3y-A", 64), Err(DecryptError::Truncated)));
        let msg = decrypt(&sealed, "k3y-B", 64).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(!msg.contains("k3y"), "{msg}");
    }

    #[test]
    fn names_and_checksums_follow_trove() {
        let id = "6a5c0f4e-9d1b-4c57-9f0e-0c1f2b3a4d5e";
        assert_eq!(object_name(id, false), format!("{id}.gz"));
        assert_eq!(object_name(id, true), format!("{id}.gz.enc"));
        assert_eq!(segment_name(id, 0), format!("{id}_00000000"));
        assert_eq!(segment_name(id, 12), format!("{id}_00000012"));
        let md5 = |b: &[u8]| hex(&Md5::digest(b));
        assert_eq!(backup_checksum(&[md5(b"abc")]), md5(b"abc"));
        // Swift's SLO ETag of the segments "abc" and "def" (checked against a real Swift).
        assert_eq!(backup_checksum(&[md5(b"abc"), md5(b"def")]), "93b0859d4cd626c28d2a4ff21683dd96");
    }
}
