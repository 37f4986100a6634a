//! The broker's configuration: one TOML file (`conf/broker.toml`), whose text is
//! also embedded in the binary as the default, so the defaults a user reads in that
//! file are exactly the ones in force. Command-line flags override the file.

use serde::Deserialize;
use std::path::{Path, PathBuf};

use crate::auth::hashing::{HashingAlgorithm, PasswordHash};
use crate::auth::permissions::VhostPermissions;

mod cluster;
pub use cluster::{Cluster, Peer};

/// The default configuration file, embedded at build time.
pub const DEFAULT_CONFIG: &str = include_str!("../conf/broker.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    #[serde(default)]
    pub log_level: Option<String>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default = "default_vhosts")]
    pub vhosts: Vec<String>,
    #[serde(default)]
    pub users: Vec<User>,
    /// Users who may only connect from a loopback address.
    #[serde(default = "default_loopback_users")]
    pub loopback_users: Vec<String>,
    /// The `amqps` listener; none when the section is absent.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// The management HTTP API.
    #[serde(default)]
    pub management: Management,
    /// The Prometheus metrics endpoint.
    #[serde(default)]
    pub prometheus: Prometheus,
    /// A RabbitMQ definitions file (JSON) imported at boot, as RabbitMQ's
    /// `load_definitions`.
    #[serde(default)]
    pub load_definitions: Option<PathBuf>,
    /// `[cluster]`: none means a single node with no Raft in the path.
    #[serde(default)]
    pub cluster: Option<Cluster>,
}

/// `[management]`: the HTTP API RabbitMQ's tools use.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Management {
    /// Listen address, or "off".
    pub listen: String,
    /// How often message rates are sampled (RabbitMQ: 5 s); rates are the
    /// change over the last interval.
    pub sample_interval_ms: u64,
}

impl Default for Management {
    fn default() -> Self {
        Management {
            listen: "127.0.0.1:15672".to_string(),
            sample_interval_ms: 5000,
        }
    }
}

/// `[prometheus]`: metrics in Prometheus' text format, RabbitMQ's names.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Prometheus {
    /// Listen address, or "off".
    pub listen: String,
}

impl Default for Prometheus {
    fn default() -> Self {
        Prometheus {
            listen: "127.0.0.1:15692".to_string(),
        }
    }
}

impl Prometheus {
    /// The address to listen on; None when metrics are off.
    pub fn address(&self) -> Option<&str> {
        (self.listen != "off").then_some(self.listen.as_str())
    }
}

impl Management {
    /// The address to listen on; None when the API is off.
    pub fn address(&self) -> Option<&str> {
        (self.listen != "off").then_some(self.listen.as_str())
    }
}

/// `[tls]`: an AMQP-over-TLS listener beside the plain one (RabbitMQ's
/// `listeners.ssl` and `ssl_options`). Relative paths are relative to the
/// working directory, like `data_dir`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    #[serde(default = "default_tls_listen")]
    pub listen: String,
    /// PEM: the server certificate first, then any intermediates.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, RSA or EC), unencrypted.
    pub key_file: PathBuf,
    /// PEM CA certificates that client certificates must chain to.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Ask clients for a certificate and verify it against `ca_file`.
    #[serde(default)]
    pub verify_peer: bool,
    /// With `verify_peer`: refuse clients that send no certificate.
    #[serde(default)]
    pub fail_if_no_peer_cert: bool,
}

fn default_tls_listen() -> String {
    "127.0.0.1:5671".to_string()
}

fn default_loopback_users() -> Vec<String> {
    vec!["guest".to_string()]
}

/// RabbitMQ refuses a `max_message_size` above 512 MiB; so do we.
pub const MAX_MESSAGE_SIZE_CAP: u64 = 512 * 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: u16,
    pub max_message_size: u64,
    pub handshake_timeout: u64,
    /// Seconds a write to a client may make no progress (it does not read its
    /// socket) before the connection is closed; 0 waits forever.
    pub write_timeout: u64,
    /// 0 means unlimited for the limits below.
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub max_queues: usize,
    pub max_consumers_per_channel: usize,
    /// Memory alarm: bytes of message bodies held in queue memory above which
    /// publishing connections are blocked (0: off).
    pub memory_high_watermark: usize,
    /// Disk alarm: free bytes on the data directory's filesystem below which
    /// publishing connections are blocked (0: off).
    pub disk_free_limit: u64,
    /// Milliseconds a delivery may stay unacknowledged before its channel is
    /// closed with 406 (RabbitMQ's `consumer_timeout`; 0: never).
    pub consumer_timeout: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat: 60,
            // RabbitMQ 3.x's default (3.8 to 3.13): 128 MiB.
            max_message_size: 128 * 1024 * 1024,
            handshake_timeout: 10,
            write_timeout: 15,
            max_connections: 0,
            max_connections_per_user: 0,
            max_queues: 0,
            max_consumers_per_channel: 0,
            memory_high_watermark: 1024 * 1024 * 1024,
            disk_free_limit: 50_000_000,
            // RabbitMQ 3.13's default: 30 minutes.
            consumer_timeout: 1_800_000,
        }
    }
}

/// A user who may log in. See `crate::auth` for what the fields mean.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// RabbitMQ-format salted hash (`hopper hash-password` prints one).
    #[serde(default)]
    pub password_hash: Option<PasswordHash>,
    /// Optional, as in RabbitMQ's definitions: must agree with the hash's length.
    #[serde(default)]
    pub hashing_algorithm: Option<HashingAlgorithm>,
    /// A clear-text password is refused; the field exists to say so clearly
    /// (its value is never read).
    #[serde(default)]
    pub password: Option<serde::de::IgnoredAny>,
    /// Shorthand: full access to these vhosts. With neither this nor
    /// `permissions`, full access to every vhost.
    #[serde(default)]
    pub vhosts: Option<Vec<String>>,
    /// Per-vhost configure / write / read patterns (RabbitMQ's permissions).
    #[serde(default)]
    pub permissions: Option<Vec<VhostPermissions>>,
    /// Management tags: `administrator`, `monitoring`, `policymaker`,
    /// `management` (none: no access to the management API).
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

fn default_vhosts() -> Vec<String> {
    vec!["/".to_string()]
}

impl Config {
    /// Parse a configuration from TOML text and check it.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// The embedded default configuration.
    pub fn default_config() -> Result<Config, ConfigError> {
        Config::parse(DEFAULT_CONFIG)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.limits.frame_max < 4096 {
            return Err(ConfigError::Invalid(
                "limits.frame_max must be at least 4096".into(),
            ));
        }
        if self.limits.max_message_size > MAX_MESSAGE_SIZE_CAP {
            return Err(ConfigError::Invalid(format!(
                "limits.max_message_size must be at most {MAX_MESSAGE_SIZE_CAP} (512 MiB, RabbitMQ's cap)"
            )));
        }
        if self.limits.channel_max == 0 {
            return Err(ConfigError::Invalid(
                "limits.channel_max must be at least 1".into(),
            ));
        }
        for v in &self.vhosts {
            if v.is_empty() || v.len() > 255 {
                return Err(ConfigError::Invalid(format!(
                    "vhost name {v:?} must be 1 to 255 bytes"
                )));
            }
        }
        let mut names = std::collections::HashSet::new();
        for u in &self.users {
            if u.name.is_empty() || u.name.len() > 255 {
                return Err(ConfigError::Invalid(format!(
                    "user name {:?} must be 1 to 255 bytes",
                    u.name
                )));
            }
            if !names.insert(u.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "user '{}' is defined twice",
                    u.name
                )));
            }
            u.validate(&self.vhosts)?;
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        if let Some(tls) = &self.tls {
            if tls.verify_peer && tls.ca_file.is_none() {
                return Err(ConfigError::Invalid(
                    "tls.verify_peer = true needs tls.ca_file".into(),
                ));
            }
            if tls.fail_if_no_peer_cert && !tls.verify_peer {
                return Err(ConfigError::Invalid(
                    "tls.fail_if_no_peer_cert = true needs tls.verify_peer = true".into(),
                ));
            }
        }
        Ok(())
    }
}

impl User {
    fn validate(&self, vhosts: &[String]) -> Result<(), ConfigError> {
        let name = &self.name;
        let invalid = |text: String| Err(ConfigError::Invalid(text));
        if self.password.is_some() {
            return invalid(format!(
                "user '{name}': clear-text `password` is not accepted. Store a hash instead: \
                 run `hopper hash-password` (it reads the password from stdin, e.g. \
                 `echo -n 'PASSWORD' | hopper hash-password`) and replace the line with \
                 `password_hash = \"<its output>\"`"
            ));
        }
        let Some(hash) = &self.password_hash else {
            return invalid(format!(
                "user '{name}' has no `password_hash`: run `hopper hash-password` to make one"
            ));
        };
        if let Some(alg) = self.hashing_algorithm {
            if alg != hash.algorithm() {
                return invalid(format!(
                    "user '{name}': password_hash is a {} hash but hashing_algorithm says {}",
                    hash.algorithm().name(),
                    alg.name()
                ));
            }
        }
        if let Some(perms) = &self.permissions {
            if self.vhosts.is_some() {
                return invalid(format!(
                    "user '{name}': give either `vhosts` (full access) or `permissions`, not both"
                ));
            }
            let mut seen = std::collections::HashSet::new();
            for p in perms {
                if !vhosts.contains(&p.vhost) {
                    return invalid(format!(
                        "user '{name}' has permissions for vhost '{}', which is not in `vhosts`",
                        p.vhost
                    ));
                }
                if !seen.insert(p.vhost.as_str()) {
                    return invalid(format!(
                        "user '{name}' has two permissions entries for vhost '{}'",
                        p.vhost
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses() {
        let c = Config::default_config().expect("default config");
        assert_eq!(c.limits.frame_max, 131_072);
        assert_eq!(c.limits.channel_max, 2047);
        assert_eq!(c.limits.heartbeat, 60);
        // RabbitMQ 3.x's default, in the file and without it.
        assert_eq!(c.limits.max_message_size, 134_217_728);
        assert_eq!(Limits::default().max_message_size, 134_217_728);
        let big = DEFAULT_CONFIG.replace(
            "max_message_size = 134217728",
            "max_message_size = 536870913",
        );
        assert!(matches!(Config::parse(&big), Err(ConfigError::Invalid(_))));
        assert_eq!(c.vhosts, vec!["/".to_string()]);
        assert_eq!(c.users[0].name, "guest");
        assert!(c.tls.is_none(), "amqps is off by default");
    }

    #[test]
    fn tls_section_defaults_and_checks() {
        let tls = "\n[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n";
        let c = Config::parse(&format!("{DEFAULT_CONFIG}{tls}")).expect("tls config");
        let t = c.tls.expect("tls section");
        assert_eq!(t.listen, "127.0.0.1:5671");
        assert!(!t.verify_peer);
        let bad = format!("{DEFAULT_CONFIG}{tls}verify_peer = true\n");
        assert!(matches!(Config::parse(&bad), Err(ConfigError::Invalid(_))));
        let bad = format!("{DEFAULT_CONFIG}{tls}fail_if_no_peer_cert = true\n");
        assert!(matches!(Config::parse(&bad), Err(ConfigError::Invalid(_))));
        let bad = format!("{DEFAULT_CONFIG}\n[tls]\ncert_file = \"c.pem\"\n");
        assert!(Config::parse(&bad).is_err(), "key_file is required");
    }

    #[test]
    fn management_listener_defaults_and_off() {
        let c = Config::default_config().expect("default config");
        assert_eq!(c.management.address(), Some("127.0.0.1:15672"));
        assert!(c.load_definitions.is_none());
        assert_eq!(
            c.users[0].tags.as_deref(),
            Some(&["administrator".to_string()][..])
        );
        let off = DEFAULT_CONFIG.replace(
            "[management]\nlisten = \"127.0.0.1:15672\"",
            "[management]\nlisten = \"off\"",
        );
        assert_ne!(off, DEFAULT_CONFIG);
        assert_eq!(Config::parse(&off).expect("off").management.address(), None);
    }

    #[test]
    fn prometheus_listener_defaults_and_off() {
        let c = Config::default_config().expect("default config");
        assert_eq!(c.prometheus.address(), Some("127.0.0.1:15692"));
        assert_eq!(c.management.sample_interval_ms, 5000);
        let off = DEFAULT_CONFIG.replace(
            "[prometheus]\nlisten = \"127.0.0.1:15692\"",
            "[prometheus]\nlisten = \"off\"",
        );
        assert_ne!(off, DEFAULT_CONFIG);
        assert_eq!(Config::parse(&off).expect("off").prometheus.address(), None);
    }

    #[test]
    fn unknown_key_is_an_error() {
        let text = format!("{DEFAULT_CONFIG}\nbogus = 1\n");
        assert!(Config::parse(&text).is_err());
    }

    fn with_users(users: &str) -> Result<Config, ConfigError> {
        let start = DEFAULT_CONFIG
            .find("[[users]]")
            .expect("users in default config");
        Config::parse(&format!("{}{users}", &DEFAULT_CONFIG[..start]))
    }

    const HASH: &str = "X61uQL1rreIVFAWcRqdY08qYZYDAc4Cl+9atXrDEM0zB/9Yz";

    #[test]
    fn default_guest_has_a_hash_and_full_access_to_slash() {
        let c = Config::default_config().expect("default config");
        let guest = &c.users[0];
        assert!(guest
            .password_hash
            .as_ref()
            .is_some_and(|h| h.verify(b"guest")));
        let perms = guest.permissions.as_ref().expect("permissions");
        assert_eq!(perms.len(), 1);
        assert_eq!(perms[0].vhost, "/");
        for p in [&perms[0].configure, &perms[0].write, &perms[0].read] {
            assert_eq!(p.as_str(), ".*");
        }
    }

    #[test]
    fn clear_password_is_refused_with_a_hint_and_not_echoed() {
        let err = with_users("[[users]]\nname = \"u\"\npassword = \"s3cr3t-value\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("hopper hash-password"), "{err}");
        assert!(err.contains("user 'u'"), "{err}");
        assert!(!err.contains("s3cr3t-value"), "{err}");
    }

    #[test]
    fn user_checks() {
        let ok = |u: &str| with_users(u).map(|_| ());
        assert!(ok(&format!(
            "[[users]]\nname = \"u\"\npassword_hash = \"{HASH}\"\n"
        ))
        .is_ok());
        // No hash at all.
        assert!(ok("[[users]]\nname = \"u\"\n").is_err());
        // Not a RabbitMQ hash.
        assert!(ok("[[users]]\nname = \"u\"\npassword_hash = \"guest\"\n").is_err());
        // Algorithm disagreeing with the hash's length.
        assert!(ok(&format!(
            "[[users]]\nname = \"u\"\npassword_hash = \"{HASH}\"\nhashing_algorithm = \"rabbit_password_hashing_sha512\"\n"
        ))
        .is_err());
        assert!(ok(&format!(
            "[[users]]\nname = \"u\"\npassword_hash = \"{HASH}\"\nhashing_algorithm = \"rabbit_password_hashing_sha256\"\n"
        ))
        .is_ok());
        let perm = |vhost: &str, configure: &str| {
            format!(
                "{{ vhost = \"{vhost}\", configure = \"{configure}\", write = \"\", read = \"\" }}"
            )
        };
        let user = |perms: &str| {
            format!(
                "[[users]]\nname = \"u\"\npassword_hash = \"{HASH}\"\npermissions = [{perms}]\n"
            )
        };
        assert!(ok(&user(&perm("/", "^a"))).is_ok());
        // Invalid regex, unknown vhost, the same vhost twice.
        assert!(ok(&user(&perm("/", "("))).is_err());
        assert!(ok(&user(&perm("nope", ".*"))).is_err());
        assert!(ok(&user(&format!("{}, {}", perm("/", ".*"), perm("/", ".*")))).is_err());
        // Both styles at once.
        assert!(ok(&format!(
            "[[users]]\nname = \"u\"\npassword_hash = \"{HASH}\"\nvhosts = [\"/\"]\npermissions = [{}]\n",
            perm("/", ".*")
        ))
        .is_err());
        // The same user twice.
        let one = format!("[[users]]\nname = \"u\"\npassword_hash = \"{HASH}\"\n");
        assert!(ok(&format!("{one}{one}")).is_err());
    }

    #[test]
    fn small_frame_max_is_refused() {
        let text = DEFAULT_CONFIG.replace("frame_max = 131072", "frame_max = 100");
        assert!(matches!(Config::parse(&text), Err(ConfigError::Invalid(_))));
    }
}
