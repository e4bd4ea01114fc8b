//! Trove's secure-RPC cipher: AES-256-CBC keyed by the md5 hex of the instance key, base64 text.

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::{engine::general_purpose::STANDARD, Engine};
use md5::{Digest, Md5};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};

type Encryptor = cbc::Encryptor<aes::Aes256>;
type Decryptor = cbc::Decryptor<aes::Aes256>;

/// Why a value could not be decrypted. Never carries key material or plaintext.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("value is not a string")]
    NotString,
    #[error("value is not valid base64")]
    Base64,
    #[error("ciphertext has a bad length")]
    Length,
    #[error("padding does not check (wrong key or corrupted data)")]
    Padding,
    #[error("plaintext is not valid JSON (wrong key or corrupted data)")]
    Json,
}

/// The per-instance cipher. Cloning shares nothing secret beyond the derived key.
#[derive(Clone)]
pub struct Cipher {
    key: [u8; 32],
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(<redacted>)")
    }
}

impl Cipher {
    /// Derives the AES key the way Trove does: the 32 ASCII hex chars of md5(instance key).
    pub fn new(instance_key: &SecretString) -> Self {
        let digest = Md5::digest(instance_key.expose_secret().as_bytes());
        let mut key = [0u8; 32];
        let hex = hex_lower(&digest);
        key.copy_from_slice(hex.as_bytes());
        Cipher { key }
    }

    /// base64(IV ‖ AES-CBC(plaintext)) with a random IV.
    pub fn encrypt_bytes(&self, plaintext: &[u8]) -> String {
        let mut iv = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut iv);
        let ciphertext =
            Encryptor::new(&self.key.into(), &iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plaintext);
        let mut out = Vec::with_capacity(16 + ciphertext.len());
        out.extend_from_slice(&iv);
        out.extend_from_slice(&ciphertext);
        STANDARD.encode(out)
    }

    /// Inverse of `encrypt_bytes`; checks the padding.
    pub fn decrypt_bytes(&self, text: &str) -> Result<Vec<u8>, CryptoError> {
        let raw = STANDARD.decode(text.trim()).map_err(|_| CryptoError::Base64)?;
        if raw.len() < 32 || raw.len() % 16 != 0 {
            return Err(CryptoError::Length);
        }
        let (iv, body) = raw.split_at(16);
        let iv: [u8; 16] = iv.try_into().map_err(|_| CryptoError::Length)?;
        Decryptor::new(&self.key.into(), &iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(body)
            .map_err(|_| CryptoError::Padding)
    }

    /// Encrypts `json(value)`, as Trove's serializers do for every entity.
    pub fn encrypt_value(&self, value: &serde_json::Value) -> String {
        self.encrypt_bytes(value.to_string().as_bytes())
    }

    /// Decrypts a string value and parses the JSON inside.
    pub fn decrypt_value(&self, value: &serde_json::Value) -> Result<serde_json::Value, CryptoError> {
        let text = value.as_str().ok_or(CryptoError::NotString)?;
        let plain = self.decrypt_bytes(text)?;
        serde_json::from_slice(&plain).map_err(|_| CryptoError::Json)
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cipher(key: &str) -> Cipher {
        Cipher::new(&SecretString::from(key.to_owned()))
    }

    #[test]
    fn round_trips_values() {
        let c = cipher("abcdefghijklmnopqrstuvwxyz012345");
        for v in [json!(null), json!(true), json!({"a": [1, 2, "x"]}), json!("p@ss word\n")] {
            let enc = c.encrypt_value(&v);
            assert_eq!(c.decrypt_value(&json!(enc)).unwrap(), v);
        }
    }

    #[test]
    fn wrong_key_is_detected() {
        let enc = cipher("key-one").encrypt_value(&json!({"x": 1}));
        let err = cipher("key-two").decrypt_value(&json!(enc)).unwrap_err();
        assert!(matches!(err, CryptoError::Padding | CryptoError::Json), "{err:?}");
    }

    #[test]
    fn rejects_malformed_input() {
        let c = cipher("k");
        let cases = [
            (json!(5), CryptoError::NotString),
            (json!("%%%not base64"), CryptoError::Base64),
            (json!("AAAA"), CryptoError::Length),
            (json!(STANDARD.encode([0u8; 33])), CryptoError::Length),
        ];
        for (input, want) in cases {
            assert_eq!(c.decrypt_value(&input).unwrap_err(), want, "{input}");
        }
    }
}
