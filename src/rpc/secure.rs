//! Secure RPC on the guest side: decrypts request context and arguments, encrypts results.

use serde_json::{Map, Value};

use super::crypto::{Cipher, CryptoError};
use super::envelope::Request;
use super::failure::RemoteFailure;

/// Decrypts `_context_context` and every argument value in place.
///
/// The context must decrypt under our key: that is how a message from someone without the
/// key (or with another instance's key) is told apart. Argument values that are not
/// ciphertext at all are kept as they are, as Trove's serializer tolerates plaintext.
pub fn open_request(cipher: &Cipher, req: &mut Request) -> Result<(), RemoteFailure> {
    let Some(sealed) = req.context.remove("context") else {
        return Err(RemoteFailure::guest_error(
            "the message is not encrypted, but this guest requires secure RPC (instance key configured)",
        ));
    };
    match cipher.decrypt_value(&sealed) {
        Ok(Value::Object(ctx)) => req.context = ctx,
        Ok(_) | Err(_) => {
            return Err(RemoteFailure::guest_error(
                "the message context could not be decrypted: it was encrypted under a different instance key",
            ))
        }
    }
    let args = std::mem::take(&mut req.args);
    let mut opened = Map::with_capacity(args.len());
    for (name, value) in args {
        let value = match cipher.decrypt_value(&value) {
            Ok(plain) => plain,
            Err(CryptoError::NotString | CryptoError::Base64 | CryptoError::Length) => value,
            Err(e) => {
                return Err(RemoteFailure::guest_error(&format!("argument '{name}' could not be decrypted: {e}")))
            }
        };
        opened.insert(name, value);
    }
    req.args = opened;
    Ok(())
}

/// Encrypts a call's result (null too, as Trove does).
pub fn seal_result(cipher: &Cipher, result: &Value) -> Value {
    Value::String(cipher.encrypt_value(result))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::envelope::{decode, tests::wire_file, DEFAULT_MAX_BODY};
    use secrecy::SecretString;

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz012345";

    fn cipher(key: &str) -> Cipher {
        Cipher::new(&SecretString::from(key.to_owned()))
    }

    fn request(name: &str) -> Request {
        decode(wire_file(name)["body_text"].as_str().unwrap().as_bytes(), DEFAULT_MAX_BODY).unwrap()
    }

    /// The captured encrypted requests open to exactly the recorded plaintext.
    #[test]
    fn opens_captured_requests() {
        for name in [
            "enc-01-rpc_ping-call-request.json",
            "enc-02-get_replication_snapshot-call-request.json",
            "enc-03-get_user-call-request.json",
            "enc-04-create_user-cast-request.json",
            "enc-05-get_replication_snapshot-call-request.json",
        ] {
            let mut req = request(name);
            open_request(&cipher(KEY), &mut req).unwrap_or_else(|e| panic!("{name}: {e}"));
            let decrypted = &wire_file(name)["decrypted"];
            if let Some(args) = decrypted.get("args") {
                assert_eq!(&Value::Object(req.args.clone()), args, "{name}");
            }
            assert_eq!(&Value::Object(req.context.clone()), &decrypted["context"], "{name}");
        }
    }

    /// The captured encrypted replies decrypt to the recorded results with the same key.
    #[test]
    fn captured_results_decrypt() {
        for name in ["enc-01-rpc_ping-call-reply.json", "enc-02-get_replication_snapshot-call-reply.json"] {
            let file = wire_file(name);
            let got = cipher(KEY).decrypt_value(&file["oslo_message"]["result"]).unwrap();
            assert_eq!(got, file["decrypted"]["result"], "{name}");
            let ours = seal_result(&cipher(KEY), &got);
            assert_eq!(cipher(KEY).decrypt_value(&ours).unwrap(), got);
        }
    }

    #[test]
    fn wrong_key_and_plaintext_fail_clearly() {
        let mut req = request("enc-06-get_user-call-request.json");
        let err = open_request(&cipher(KEY), &mut req).unwrap_err();
        assert!(err.message.contains("different instance key"), "{}", err.message);
        let mut req = request("enc-07-get_user-call-request.json");
        let err = open_request(&cipher(KEY), &mut req).unwrap_err();
        assert!(err.message.contains("not encrypted"), "{}", err.message);
    }
}
