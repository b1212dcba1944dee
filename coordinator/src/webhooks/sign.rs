//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "<webhook-id>.<webhook-timestamp>.<body>">` keyed by the secret's bytes (the base64 after
//! `whsec_`). With several active secrets (a rotation's overlap) the header lists one
//! signature per secret, space-separated; a receiver accepts any that it can verify.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::error::{Error, Result};

const PREFIX: &str = "whsec_";

/// A new secret: 24 random bytes, `whsec_<base64>`.
pub fn new_secret() -> String {
    let mut key = [0u8; 24];
    rand::rng().fill_bytes(&mut key);
    format!("{PREFIX}{}", B64.encode(key))
}

fn key_of(secret: &str) -> Result<Vec<u8>> {
    let b64 = secret.strip_prefix(PREFIX).unwrap_or(secret);
    B64.decode(b64)
        .map_err(|e| Error::Internal(format!("stored webhook secret: {e}")))
}

/// One `v1,<signature>` for `secret`.
pub fn signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(&key_of(secret)?)
        .map_err(|e| Error::Internal(format!("webhook key: {e}")))?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!("v1,{}", B64.encode(mac.finalize().into_bytes())))
}

/// The `webhook-signature` header: one signature per active secret.
pub fn header(secrets: &[String], id: &str, timestamp: i64, body: &[u8]) -> Result<String> {
    let sigs = secrets
        .iter()
        .map(|s| signature(s, id, timestamp, body))
        .collect::<Result<Vec<_>>>()?;
    Ok(sigs.join(" "))
}

/// What a receiver does: true when one of the header's signatures is `secret`'s.
pub fn verify(secret: &str, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let Ok(expected) = signature(secret, id, timestamp, body) else {
        return false;
    };
    // Equal lengths and a constant-time compare through the MAC's own check would be the
    // production form; receivers use their Standard Webhooks library.
    header.split(' ').any(|s| s == expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's example.
    #[test]
    fn signs_like_the_specification() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let sig = signature(
            secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        )
        .expect("sign");
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn every_active_secret_signs() {
        let (old, new) = (new_secret(), new_secret());
        assert!(new.starts_with("whsec_"));
        let h = header(&[old.clone(), new.clone()], "id", 5, b"{}").expect("header");
        assert!(verify(&old, "id", 5, b"{}", &h));
        assert!(verify(&new, "id", 5, b"{}", &h));
        assert!(!verify(&new_secret(), "id", 5, b"{}", &h));
        assert!(!verify(&new, "id", 6, b"{}", &h));
    }
}
