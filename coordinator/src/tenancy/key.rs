//! API keys: `tt_<id>_<secret>`, where `<id>` (12 hex digits) names the key in logs and in
//! `tutti key revoke`, and `<secret>` is 256 random bits. Only the SHA-256 of the whole key
//! is stored, and the key is shown once, at creation.
//!
//! Why a plain SHA-256 and not a password hash (argon2, bcrypt): those are slow on purpose so
//! that guessing a low-entropy password from its hash is expensive. A 256-bit random secret
//! cannot be guessed at any speed, so a fast hash loses nothing and keeps the check on every
//! request cheap.

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const SCHEME: &str = "tt_";
const ID_HEX: usize = 12;
const SECRET_HEX: usize = 64;

/// A key as a client presents it. `Debug` shows only the non-secret prefix.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    full: String,
    id: String,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({}_***)", self.prefix())
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl ApiKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut id = [0u8; ID_HEX / 2];
        let mut secret = [0u8; SECRET_HEX / 2];
        // ThreadRng is a CSPRNG seeded from the OS.
        let mut rng = rand::rng();
        rng.fill_bytes(&mut id);
        rng.fill_bytes(&mut secret);
        let id = hex::encode(id);
        Self {
            full: format!("{SCHEME}{id}_{}", hex::encode(secret)),
            id,
        }
    }

    /// Parses a presented key; the error never echoes the key.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::Unauthenticated("malformed API key (expected tt_<id>_<secret>)".into());
        let rest = s.strip_prefix(SCHEME).ok_or_else(bad)?;
        let (id, secret) = rest.split_once('_').ok_or_else(bad)?;
        if !is_hex(id, ID_HEX) || !is_hex(secret, SECRET_HEX) {
            return Err(bad());
        }
        Ok(Self {
            full: s.to_string(),
            id: id.to_string(),
        })
    }

    /// The stored id (the non-secret part).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `tt_<id>`: how logs and operators name the key.
    pub fn prefix(&self) -> String {
        format!("{SCHEME}{}", self.id)
    }

    /// What is stored: hex SHA-256 of the whole key.
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.full.as_bytes()))
    }

    /// The key itself, to show once.
    pub fn expose(&self) -> &str {
        &self.full
    }
}

/// The id in a prefix as operators pass it (`tt_<id>` or the whole key).
pub fn id_from_prefix(s: &str) -> Result<String> {
    let rest = s.strip_prefix(SCHEME).unwrap_or(s);
    let id = rest.split('_').next().unwrap_or_default();
    if is_hex(id, ID_HEX) {
        Ok(id.to_string())
    } else {
        Err(Error::invalid(
            "prefix",
            "must be a key prefix such as tt_0123456789ab",
        ))
    }
}

/// Compares stored and presented hashes without an early exit.
pub(crate) fn hashes_match(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_hide_their_secret() {
        let k = ApiKey::generate();
        let parsed = ApiKey::parse(k.expose()).expect("parse");
        assert_eq!(parsed, k);
        assert_eq!(parsed.sha256(), k.sha256());
        assert!(k.prefix().starts_with("tt_") && k.prefix().len() == 15);
        let shown = format!("{k:?}");
        assert!(!shown.contains(&k.expose()[16..]), "{shown}");
        assert_eq!(id_from_prefix(&k.prefix()).expect("prefix"), k.id());
        assert_eq!(id_from_prefix(k.expose()).expect("whole key"), k.id());
        assert_ne!(ApiKey::generate(), k);
    }

    #[test]
    fn malformed_keys_are_unauthenticated() {
        for bad in [
            "",
            "Bearer x",
            "tt_",
            "tt_0123456789ab",
            "tt_0123456789ab_abc",
            "xx_0123456789ab_",
        ] {
            let err = ApiKey::parse(bad).expect_err(bad);
            assert_eq!(err.grpc_code(), tonic::Code::Unauthenticated);
        }
        assert!(id_from_prefix("tt_xyz").is_err());
        assert!(hashes_match("ab", "ab") && !hashes_match("ab", "ac") && !hashes_match("a", "ab"));
    }
}
