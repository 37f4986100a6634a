//! Per-vhost permissions: three regular expressions (configure, write, read)
//! matched against resource names with RabbitMQ's semantics: an unanchored
//! search (`"a"` matches `"xay"`; anchor with `^...$` for exact names), and the
//! empty pattern meaning `^$`, which matches no resource. Patterns are compiled
//! once, when the config is read; a pattern that does not compile is a config
//! error. Rust's `regex` syntax is PCRE's minus look-around and back-references.

use regex::Regex;
use serde::Deserialize;

/// One permission pattern.
#[derive(Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct Pattern {
    source: String,
    matcher: Matcher,
}

#[derive(Clone)]
enum Matcher {
    /// `.*` (and the like): no need to run a regex on every publish.
    Everything,
    Regex(Regex),
}

impl std::fmt::Debug for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl TryFrom<String> for Pattern {
    type Error = String;

    fn try_from(source: String) -> Result<Self, String> {
        Pattern::new(&source)
    }
}

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, String> {
        let matcher = match source {
            // Both match at the start of any name (`.` stopping at a newline
            // does not matter: `*` accepts zero characters).
            ".*" | "^.*" => Matcher::Everything,
            // RabbitMQ maps "" to "^$": resource names are never empty.
            "" => Matcher::Regex(Regex::new("^$").map_err(|e| e.to_string())?),
            s => Matcher::Regex(
                Regex::new(s).map_err(|e| format!("invalid permission pattern {s:?}: {e}"))?,
            ),
        };
        Ok(Pattern {
            source: source.to_string(),
            matcher,
        })
    }

    /// Grants every name.
    pub fn everything() -> Pattern {
        Pattern {
            source: ".*".to_string(),
            matcher: Matcher::Everything,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn matches(&self, name: &str) -> bool {
        match &self.matcher {
            Matcher::Everything => true,
            Matcher::Regex(r) => r.is_match(name),
        }
    }
}

/// A `permissions` entry of a user in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostPermissions {
    pub vhost: String,
    pub configure: Pattern,
    pub write: Pattern,
    pub read: Pattern,
}

impl VhostPermissions {
    /// Full access, as RabbitMQ grants its default user.
    pub fn full(vhost: &str) -> VhostPermissions {
        VhostPermissions {
            vhost: vhost.to_string(),
            configure: Pattern::everything(),
            write: Pattern::everything(),
            read: Pattern::everything(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, name: &str) -> bool {
        Pattern::new(p).unwrap().matches(name)
    }

    #[test]
    fn unanchored_search_as_rabbitmq() {
        // Checked against RabbitMQ 3.10.8: configure "a" allowed declaring "xay".
        assert!(m("a", "xay"));
        assert!(m("a", "amq.gen-Wxc"));
        assert!(!m("a", "b"));
        assert!(m("^w$", "w"));
        assert!(!m("^w$", "ww"));
        assert!(m("^app\\.", "app.orders"));
        assert!(!m("^app\\.", "myapp.orders"));
        assert!(m("amq.default|^(q1)$", "amq.default"));
        assert!(m("amq.default|^(q1)$", "q1"));
        assert!(!m("amq.default|^(q1)$", "q10"));
    }

    #[test]
    fn empty_pattern_matches_nothing() {
        for name in ["a", "amq.default", "amq.gen-x", " "] {
            assert!(!m("", name), "{name}");
        }
    }

    #[test]
    fn everything_patterns() {
        for p in [".*", "^.*", "^.*$"] {
            assert!(m(p, "anything"));
            assert!(m(p, "amq.default"));
        }
        // Not shortcut but same meaning: still a regex.
        assert!(m(".+", "x"));
    }

    #[test]
    fn invalid_patterns_are_refused() {
        assert!(Pattern::new("(").is_err());
        assert!(Pattern::new("[a-").is_err());
        // Look-around is PCRE-only: refused rather than silently different.
        assert!(Pattern::new("(?!amq\\.)").is_err());
    }
}
