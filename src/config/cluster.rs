//! `[cluster]`: this node's id, the inter-node listen address and the static
//! peer list (CLUSTER.md). Only checks the section's own consistency; whether
//! the listen address can be bound is checked when the cluster starts
//! (`cluster::start`). Never starts anything.

use serde::Deserialize;
use std::path::PathBuf;

use super::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// This node's id, 1..=255, unique in the cluster.
    pub node_id: u8,
    /// The inter-node link's listen address (Raft RPCs).
    pub listen: String,
    /// Every node of the cluster, this one included.
    pub peers: Vec<Peer>,
    /// A file holding the shared secret the links authenticate with.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// The node's name (`/api/overview` → `node`); `hopper@<node_id>` when unset.
    #[serde(default)]
    pub name: Option<String>,
    /// How long a publish to a quorum queue may wait for a majority of its
    /// group (a leader elected, the entry committed) before it is nacked, ms.
    #[serde(default = "default_confirm_timeout")]
    pub confirm_timeout_ms: u64,
}

fn default_confirm_timeout() -> u64 {
    30_000
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub id: u8,
    pub addr: String,
}

impl Cluster {
    /// The node's name: `name`, or `hopper@<node_id>`.
    pub fn node_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("hopper@{}", self.node_id))
    }

    /// The cluster's name (`/api/overview` → `cluster_name`): the lowest
    /// peer's default node name, so every node computes the same one.
    pub fn cluster_name(&self) -> String {
        let low = self
            .peers
            .iter()
            .map(|p| p.id)
            .min()
            .unwrap_or(self.node_id);
        format!("hopper@{low}")
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |text: String| Err(ConfigError::Invalid(text));
        if self.node_id == 0 {
            return invalid("cluster.node_id must be 1 to 255".into());
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.peers {
            if p.id == 0 {
                return invalid(format!("cluster.peers: id {} must be 1 to 255", p.id));
            }
            if !seen.insert(p.id) {
                return invalid(format!("cluster.peers: id {} is listed twice", p.id));
            }
            if p.addr.is_empty() {
                return invalid(format!("cluster.peers: id {} has an empty addr", p.id));
            }
        }
        if !seen.contains(&self.node_id) {
            return invalid(format!(
                "cluster.peers must list this node (node_id = {})",
                self.node_id
            ));
        }
        if self.confirm_timeout_ms == 0 {
            return invalid("cluster.confirm_timeout_ms must be above 0".into());
        }
        if let Some(name) = &self.name {
            if name.is_empty() || name.len() > 255 {
                return invalid("cluster.name must be 1 to 255 bytes".into());
            }
        }
        Ok(())
    }

    /// Read the shared secret, if one is configured (trailing newline trimmed).
    pub fn secret(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(path) = &self.secret_file else {
            return Ok(None);
        };
        let mut bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
            bytes.pop();
        }
        if bytes.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "cluster.secret_file {} is empty",
                path.display()
            )));
        }
        Ok(Some(bytes))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    fn with(section: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!("{}\n{section}", crate::config::DEFAULT_CONFIG))
    }

    const PEERS: &str = r#"peers = [ { id = 1, addr = "127.0.0.1:25672" },
          { id = 2, addr = "127.0.0.1:25673" }, { id = 3, addr = "127.0.0.1:25674" } ]"#;

    #[test]
    fn absent_section_is_a_single_node() {
        assert!(Config::default_config().unwrap().cluster.is_none());
    }

    #[test]
    fn the_documented_section_parses() {
        let c = with(&format!(
            "[cluster]\nnode_id = 2\nlisten = \"127.0.0.1:25673\"\n{PEERS}\n"
        ))
        .unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.node_name(), "hopper@2");
        assert_eq!(cluster.cluster_name(), "hopper@1");
        assert_eq!(cluster.peers.len(), 3);
    }

    #[test]
    fn bad_sections_are_refused_with_a_reason() {
        let cases = [
            (
                format!("[cluster]\nnode_id = 4\nlisten = \"127.0.0.1:1\"\n{PEERS}\n"),
                "must list this node",
            ),
            (
                "[cluster]\nnode_id = 1\nlisten = \"x\"\npeers = [ { id = 1, addr = \"a\" }, { id = 1, addr = \"b\" } ]\n".to_string(),
                "listed twice",
            ),
            (
                format!("[cluster]\nnode_id = 0\nlisten = \"127.0.0.1:1\"\n{PEERS}\n"),
                "1 to 255",
            ),
        ];
        for (text, want) in cases {
            match with(&text) {
                Err(ConfigError::Invalid(reason)) => assert!(reason.contains(want), "{reason}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        // 256 does not fit node_id's range at all.
        assert!(with(&format!(
            "[cluster]\nnode_id = 256\nlisten = \"a\"\n{PEERS}\n"
        ))
        .is_err());
    }
}
