//! Password hashes in RabbitMQ's format, so users can be copied from a
//! RabbitMQ definitions export: base64(salt ++ H(salt ++ password)) with a
//! 4-byte random salt and H = SHA-256 (`rabbit_password_hashing_sha256`, the
//! default) or SHA-512 (`rabbit_password_hashing_sha512`). Clear-text
//! passwords are never kept: only this module sees one, to hash or verify it.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256, Sha512};

const SALT_LEN: usize = 4;

/// The hash function, named as in RabbitMQ's `hashing_algorithm` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum HashingAlgorithm {
    #[serde(rename = "rabbit_password_hashing_sha256")]
    Sha256,
    #[serde(rename = "rabbit_password_hashing_sha512")]
    Sha512,
}

impl HashingAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            HashingAlgorithm::Sha256 => "rabbit_password_hashing_sha256",
            HashingAlgorithm::Sha512 => "rabbit_password_hashing_sha512",
        }
    }

    fn digest_len(self) -> usize {
        match self {
            HashingAlgorithm::Sha256 => 32,
            HashingAlgorithm::Sha512 => 64,
        }
    }

    fn digest(self, salt: &[u8], password: &[u8]) -> Vec<u8> {
        match self {
            HashingAlgorithm::Sha256 => {
                let mut h = Sha256::new();
                h.update(salt);
                h.update(password);
                h.finalize().to_vec()
            }
            HashingAlgorithm::Sha512 => {
                let mut h = Sha512::new();
                h.update(salt);
                h.update(password);
                h.finalize().to_vec()
            }
        }
    }
}

/// A salted password hash. Deserialised from its base64 text; the algorithm
/// follows from the length (the two digests differ in size).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PasswordHash {
    algorithm: HashingAlgorithm,
    salt: [u8; SALT_LEN],
    digest: Vec<u8>,
}

impl std::fmt::Debug for PasswordHash {
    // Not secret, but there is no reason to spread it through logs either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PasswordHash({}, ..)", self.algorithm.name())
    }
}

impl TryFrom<String> for PasswordHash {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        PasswordHash::parse(&text)
    }
}

impl PasswordHash {
    /// Hash `password` with a fresh random salt.
    pub fn new(password: &[u8], algorithm: HashingAlgorithm) -> PasswordHash {
        let salt: [u8; SALT_LEN] = rand::random();
        PasswordHash::with_salt(password, salt, algorithm)
    }

    fn with_salt(password: &[u8], salt: [u8; SALT_LEN], algorithm: HashingAlgorithm) -> Self {
        PasswordHash {
            algorithm,
            salt,
            digest: algorithm.digest(&salt, password),
        }
    }

    /// Parse the base64 text of a RabbitMQ password hash.
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        let raw = BASE64
            .decode(text.trim())
            .map_err(|e| format!("password_hash is not valid base64 ({e})"))?;
        let algorithm = [HashingAlgorithm::Sha256, HashingAlgorithm::Sha512]
            .into_iter()
            .find(|a| raw.len() == SALT_LEN + a.digest_len())
            .ok_or_else(|| {
                format!(
                    "password_hash decodes to {} bytes; expected {} (rabbit_password_hashing_sha256) or {} (rabbit_password_hashing_sha512): make one with `hopper hash-password`",
                    raw.len(),
                    SALT_LEN + 32,
                    SALT_LEN + 64
                )
            })?;
        let (salt, digest) = raw.split_at(SALT_LEN);
        let mut s = [0u8; SALT_LEN];
        s.copy_from_slice(salt);
        Ok(PasswordHash {
            algorithm,
            salt: s,
            digest: digest.to_vec(),
        })
    }

    pub fn algorithm(&self) -> HashingAlgorithm {
        self.algorithm
    }

    /// The base64 text, as in RabbitMQ's definitions and in our config file.
    pub fn encode(&self) -> String {
        let mut raw = Vec::with_capacity(SALT_LEN + self.digest.len());
        raw.extend_from_slice(&self.salt);
        raw.extend_from_slice(&self.digest);
        BASE64.encode(raw)
    }

    /// Whether `password` hashes to this; the comparison takes the same time
    /// wherever the digests differ.
    pub fn verify(&self, password: &[u8]) -> bool {
        constant_time_eq(&self.algorithm.digest(&self.salt, password), &self.digest)
    }
}

/// Compare without an early exit, so response time says nothing about how
/// many leading bytes of a guess were right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| std::hint::black_box(acc | (x ^ y)));
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hashes taken from a RabbitMQ 3.10.8 definitions export
    /// (`rabbitmqctl add_user`, then `rabbitmqctl export_definitions`).
    const RABBITMQ_SECRET: &str = "8IOEQFuDLyeFN56e3XpEo+uN0Q/OYRjYm9wZXPx4GjQY1INn";
    const RABBITMQ_GUEST: &str = "X61uQL1rreIVFAWcRqdY08qYZYDAc4Cl+9atXrDEM0zB/9Yz";

    #[test]
    fn verifies_hashes_made_by_rabbitmq() {
        let h = PasswordHash::parse(RABBITMQ_SECRET).unwrap();
        assert_eq!(h.algorithm(), HashingAlgorithm::Sha256);
        assert!(h.verify(b"secret"));
        assert!(!h.verify(b"Secret"));
        assert!(!h.verify(b"secret "));
        assert!(!h.verify(b""));
        let g = PasswordHash::parse(RABBITMQ_GUEST).unwrap();
        assert!(g.verify(b"guest"));
        assert!(!g.verify(b"secret"));
        assert_eq!(g.encode(), RABBITMQ_GUEST);
    }

    #[test]
    fn sha512_round_trip_and_layout() {
        let h = PasswordHash::with_salt(b"pw", [1, 2, 3, 4], HashingAlgorithm::Sha512);
        let text = h.encode();
        let raw = BASE64.decode(&text).unwrap();
        assert_eq!(raw.len(), 68);
        assert_eq!(&raw[..4], &[1, 2, 3, 4]);
        let mut expect = Sha512::new();
        expect.update([1u8, 2, 3, 4]);
        expect.update(b"pw");
        assert_eq!(&raw[4..], expect.finalize().as_slice());
        let back = PasswordHash::parse(&text).unwrap();
        assert_eq!(back.algorithm(), HashingAlgorithm::Sha512);
        assert!(back.verify(b"pw"));
        assert!(!back.verify(b"pw2"));
    }

    #[test]
    fn fresh_hashes_are_salted() {
        let a = PasswordHash::new(b"same", HashingAlgorithm::Sha256);
        let b = PasswordHash::new(b"same", HashingAlgorithm::Sha256);
        assert!(a.verify(b"same") && b.verify(b"same"));
        // 2^-32 chance of the same salt; a collision would only make this flaky, not wrong.
        assert_ne!(a.encode(), b.encode());
        assert_eq!(BASE64.decode(a.encode()).unwrap().len(), 36);
    }

    #[test]
    fn malformed_hashes_are_refused() {
        assert!(PasswordHash::parse("guest").is_err());
        assert!(PasswordHash::parse("not base64 !!").is_err());
        assert!(PasswordHash::parse(&BASE64.encode([0u8; 20])).is_err()); // MD5 size
    }

    #[test]
    fn constant_time_eq_cases() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
