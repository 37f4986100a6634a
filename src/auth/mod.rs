//! Access control: who may log in (salted password hashes, never clear text),
//! which vhosts each user may open, and what they may configure, write and
//! read there (RabbitMQ's permission model). Built once from the config; the
//! handshake asks `authenticate` and `may_open_vhost`, channel methods ask
//! `check` before they touch a resource. Nothing here logs or keeps a password.

pub mod hashing;
pub mod permissions;

use std::collections::HashMap;

use crate::config::Config;
use crate::error::{AmqpError, AmqpResult};
use hashing::{HashingAlgorithm, PasswordHash};
use permissions::VhostPermissions;

/// The three kinds of operation RabbitMQ tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Create, delete or change a resource.
    Configure,
    /// Put messages into it.
    Write,
    /// Take messages out of it.
    Read,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Exchange,
    Queue,
}

impl Resource {
    fn as_str(self) -> &'static str {
        match self {
            Resource::Exchange => "exchange",
            Resource::Queue => "queue",
        }
    }
}

/// Why a login failed (for the log; the client only ever hears 403).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    UnknownUser,
    InvalidCredentials,
}

impl LoginFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            LoginFailure::UnknownUser => "no such user",
            LoginFailure::InvalidCredentials => "invalid credentials",
        }
    }
}

#[derive(Debug)]
struct UserAccess {
    hash: PasswordHash,
    vhosts: Grants,
}

#[derive(Debug)]
enum Grants {
    /// No `permissions` and no `vhosts` in the config: full access everywhere.
    Everywhere(VhostPermissions),
    PerVhost(HashMap<String, VhostPermissions>),
}

/// The users of the config file, ready to answer access questions.
#[derive(Debug)]
pub struct Access {
    users: HashMap<String, UserAccess>,
    /// Hashed against when the user is unknown, so that an unknown name takes
    /// as long to refuse as a wrong password.
    decoy: PasswordHash,
}

impl Access {
    pub fn new(config: &Config) -> Access {
        let mut users = HashMap::new();
        for u in &config.users {
            // Config::validate refuses users without a hash.
            let Some(hash) = u.password_hash.clone() else {
                continue;
            };
            let vhosts = match (&u.permissions, &u.vhosts) {
                (Some(perms), _) => {
                    Grants::PerVhost(perms.iter().map(|p| (p.vhost.clone(), p.clone())).collect())
                }
                (None, Some(names)) => Grants::PerVhost(
                    names
                        .iter()
                        .map(|v| (v.clone(), VhostPermissions::full(v)))
                        .collect(),
                ),
                (None, None) => Grants::Everywhere(VhostPermissions::full("")),
            };
            users.insert(u.name.clone(), UserAccess { hash, vhosts });
        }
        Access {
            users,
            decoy: PasswordHash::new(b"", HashingAlgorithm::Sha256),
        }
    }

    /// Check a user's password.
    pub fn authenticate(&self, user: &str, password: &[u8]) -> Result<(), LoginFailure> {
        match self.users.get(user) {
            Some(u) if u.hash.verify(password) => Ok(()),
            Some(_) => Err(LoginFailure::InvalidCredentials),
            None => {
                let _ = self.decoy.verify(password);
                Err(LoginFailure::UnknownUser)
            }
        }
    }

    fn permissions(&self, user: &str, vhost: &str) -> Option<&VhostPermissions> {
        match &self.users.get(user)?.vhosts {
            Grants::Everywhere(p) => Some(p),
            Grants::PerVhost(map) => map.get(vhost),
        }
    }

    /// RabbitMQ lets a user open a vhost when they have any permissions entry
    /// for it (even one of three empty patterns).
    pub fn may_open_vhost(&self, user: &str, vhost: &str) -> bool {
        self.permissions(user, vhost).is_some()
    }

    /// Whether `user` may do `perm` on the resource `name` in `vhost`; a refusal
    /// is RabbitMQ's 403 channel error. The default exchange ("") is checked
    /// under the name `amq.default`, as RabbitMQ does.
    pub fn check(
        &self,
        user: &str,
        vhost: &str,
        perm: Permission,
        kind: Resource,
        name: &str,
    ) -> AmqpResult<()> {
        let name = if kind == Resource::Exchange && name.is_empty() {
            "amq.default"
        } else {
            name
        };
        let allowed = self.permissions(user, vhost).is_some_and(|p| {
            match perm {
                Permission::Configure => &p.configure,
                Permission::Write => &p.write,
                Permission::Read => &p.read,
            }
            .matches(name)
        });
        if allowed {
            Ok(())
        } else {
            Err(AmqpError::access_refused(format!(
                "access to {} '{name}' in vhost '{vhost}' refused for user '{user}'",
                kind.as_str()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(users: &str) -> Access {
        let text = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"d\"\nvhosts = [\"/\", \"v2\"]\n{users}"
        );
        Access::new(&Config::parse(&text).unwrap())
    }

    const GUEST: &str = "X61uQL1rreIVFAWcRqdY08qYZYDAc4Cl+9atXrDEM0zB/9Yz";

    #[test]
    fn login() {
        let a = access(&format!(
            "[[users]]\nname = \"guest\"\npassword_hash = \"{GUEST}\"\n"
        ));
        assert_eq!(a.authenticate("guest", b"guest"), Ok(()));
        assert_eq!(
            a.authenticate("guest", b"nope"),
            Err(LoginFailure::InvalidCredentials)
        );
        assert_eq!(
            a.authenticate("other", b"guest"),
            Err(LoginFailure::UnknownUser)
        );
    }

    #[test]
    fn vhosts_and_checks() {
        let a = access(&format!(
            "[[users]]\nname = \"all\"\npassword_hash = \"{GUEST}\"\n\
             [[users]]\nname = \"listed\"\npassword_hash = \"{GUEST}\"\nvhosts = [\"v2\"]\n\
             [[users]]\nname = \"fine\"\npassword_hash = \"{GUEST}\"\n\
             permissions = [{{ vhost = \"/\", configure = \"^app-\", write = \"amq.default\", read = \"\" }}]\n"
        ));
        assert!(a.may_open_vhost("all", "/") && a.may_open_vhost("all", "v2"));
        assert!(a.may_open_vhost("all", "recovered-from-store"));
        assert!(!a.may_open_vhost("listed", "/") && a.may_open_vhost("listed", "v2"));
        assert!(a.may_open_vhost("fine", "/") && !a.may_open_vhost("fine", "v2"));
        assert!(!a.may_open_vhost("nobody", "/"));

        let c = |perm, kind, name: &str| a.check("fine", "/", perm, kind, name);
        assert!(c(Permission::Configure, Resource::Queue, "app-1").is_ok());
        assert!(c(Permission::Configure, Resource::Exchange, "app-x").is_ok());
        let e = c(Permission::Configure, Resource::Queue, "q").unwrap_err();
        assert_eq!(e.code(), 403);
        assert!(e
            .to_string()
            .contains("ACCESS_REFUSED - access to queue 'q' in vhost '/' refused for user 'fine'"));
        assert!(c(Permission::Write, Resource::Exchange, "").is_ok());
        let e = c(Permission::Write, Resource::Exchange, "amq.direct").unwrap_err();
        assert!(e.to_string().contains("access to exchange 'amq.direct'"));
        assert!(c(Permission::Read, Resource::Queue, "app-1").is_err());
        assert!(a
            .check("fine", "v2", Permission::Read, Resource::Queue, "x")
            .is_err());
    }
}
