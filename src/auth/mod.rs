//! Access control: who may log in (salted password hashes, never clear text),
//! which vhosts each user may open, and what they may configure, write and
//! read there (RabbitMQ's permission model), and each user's management tags.
//! Built from the config at boot; the management API changes users and
//! permissions later. The handshake asks `authenticate` and `may_open_vhost`,
//! channel methods ask `check` before they touch a resource. Nothing here logs
//! or keeps a password.

pub mod hashing;
pub mod permissions;

use parking_lot::RwLock;
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

#[derive(Debug, Clone)]
struct UserAccess {
    hash: PasswordHash,
    /// Management tags (`administrator`, `monitoring`, `policymaker`,
    /// `management`, or anything else, kept as given).
    tags: Vec<String>,
    vhosts: Grants,
}

#[derive(Debug, Clone)]
enum Grants {
    /// No `permissions` and no `vhosts` in the config: full access everywhere.
    Everywhere(VhostPermissions),
    PerVhost(HashMap<String, VhostPermissions>),
}

/// A user as the management API shows it.
#[derive(Debug, Clone)]
pub struct UserInfo {
    pub name: String,
    pub hash: PasswordHash,
    pub tags: Vec<String>,
}

/// The users, ready to answer access questions. Built from the config at boot;
/// the management API adds, changes and removes users and permissions later
/// (the caller persists them), so the map sits behind a lock that the hot path
/// (`check` on every publish) only reads.
#[derive(Debug)]
pub struct Access {
    users: RwLock<HashMap<String, UserAccess>>,
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
            let tags = u.tags.clone().unwrap_or_default();
            users.insert(u.name.clone(), UserAccess { hash, tags, vhosts });
        }
        Access {
            users: RwLock::new(users),
            decoy: PasswordHash::new(b"", HashingAlgorithm::Sha256),
        }
    }

    /// Check a user's password.
    pub fn authenticate(&self, user: &str, password: &[u8]) -> Result<(), LoginFailure> {
        let hash = self.users.read().get(user).map(|u| u.hash.clone());
        match hash {
            Some(h) if h.verify(password) => Ok(()),
            Some(_) => Err(LoginFailure::InvalidCredentials),
            None => {
                let _ = self.decoy.verify(password);
                Err(LoginFailure::UnknownUser)
            }
        }
    }

    fn with_permissions<T>(
        &self,
        user: &str,
        vhost: &str,
        f: impl FnOnce(Option<&VhostPermissions>) -> T,
    ) -> T {
        let users = self.users.read();
        let p = users.get(user).and_then(|u| match &u.vhosts {
            Grants::Everywhere(p) => Some(p),
            Grants::PerVhost(map) => map.get(vhost),
        });
        f(p)
    }

    /// RabbitMQ lets a user open a vhost when they have any permissions entry
    /// for it (even one of three empty patterns).
    pub fn may_open_vhost(&self, user: &str, vhost: &str) -> bool {
        self.with_permissions(user, vhost, |p| p.is_some())
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
        let allowed = self.with_permissions(user, vhost, |p| {
            p.is_some_and(|p| {
                match perm {
                    Permission::Configure => &p.configure,
                    Permission::Write => &p.write,
                    Permission::Read => &p.read,
                }
                .matches(name)
            })
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

    // ---- what the management API reads and changes ----

    /// A user's tags (None for an unknown user).
    pub fn tags(&self, user: &str) -> Option<Vec<String>> {
        self.users.read().get(user).map(|u| u.tags.clone())
    }

    pub fn user(&self, name: &str) -> Option<UserInfo> {
        self.users.read().get(name).map(|u| UserInfo {
            name: name.to_string(),
            hash: u.hash.clone(),
            tags: u.tags.clone(),
        })
    }

    /// Every user, sorted by name.
    pub fn users(&self) -> Vec<UserInfo> {
        let mut v: Vec<UserInfo> = self
            .users
            .read()
            .iter()
            .map(|(n, u)| UserInfo {
                name: n.clone(),
                hash: u.hash.clone(),
                tags: u.tags.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Create a user or change its hash and tags (keeping its permissions);
    /// true when it was created. A new user has no permissions.
    pub fn put_user(&self, name: &str, hash: PasswordHash, tags: Vec<String>) -> bool {
        let mut users = self.users.write();
        match users.get_mut(name) {
            Some(u) => {
                u.hash = hash;
                u.tags = tags;
                false
            }
            None => {
                users.insert(
                    name.to_string(),
                    UserAccess {
                        hash,
                        tags,
                        vhosts: Grants::PerVhost(HashMap::new()),
                    },
                );
                true
            }
        }
    }

    pub fn delete_user(&self, name: &str) -> bool {
        self.users.write().remove(name).is_some()
    }

    /// Every (user, permissions) pair; a user with full access everywhere is
    /// listed once per vhost in `vhosts`.
    pub fn permissions(&self, vhosts: &[String]) -> Vec<(String, VhostPermissions)> {
        let users = self.users.read();
        let mut out = Vec::new();
        for (name, u) in users.iter() {
            match &u.vhosts {
                Grants::Everywhere(p) => {
                    for v in vhosts {
                        let mut p = p.clone();
                        p.vhost = v.clone();
                        out.push((name.clone(), p));
                    }
                }
                Grants::PerVhost(map) => {
                    for p in map.values() {
                        out.push((name.clone(), p.clone()));
                    }
                }
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1.vhost).cmp(&(&b.0, &b.1.vhost)));
        out
    }

    /// Set a user's permissions in one vhost; false when the user is unknown.
    /// A user with full access everywhere keeps full access to the other
    /// vhosts in `vhosts`.
    pub fn set_permissions(&self, user: &str, p: VhostPermissions, vhosts: &[String]) -> bool {
        let mut users = self.users.write();
        let Some(u) = users.get_mut(user) else {
            return false;
        };
        if let Grants::Everywhere(all) = &u.vhosts {
            let map = vhosts
                .iter()
                .map(|v| {
                    let mut g = all.clone();
                    g.vhost = v.clone();
                    (v.clone(), g)
                })
                .collect();
            u.vhosts = Grants::PerVhost(map);
        }
        if let Grants::PerVhost(map) = &mut u.vhosts {
            map.insert(p.vhost.clone(), p);
        }
        true
    }

    /// Remove a user's permissions in a vhost; false when there were none.
    pub fn clear_permissions(&self, user: &str, vhost: &str, vhosts: &[String]) -> bool {
        let mut users = self.users.write();
        let Some(u) = users.get_mut(user) else {
            return false;
        };
        if let Grants::Everywhere(all) = &u.vhosts {
            let map = vhosts
                .iter()
                .filter(|v| v.as_str() != vhost)
                .map(|v| {
                    let mut g = all.clone();
                    g.vhost = v.clone();
                    (v.clone(), g)
                })
                .collect();
            u.vhosts = Grants::PerVhost(map);
            return true;
        }
        match &mut u.vhosts {
            Grants::PerVhost(map) => map.remove(vhost).is_some(),
            Grants::Everywhere(_) => false,
        }
    }

    /// Forget every permission in a deleted vhost.
    pub fn vhost_deleted(&self, vhost: &str) {
        for u in self.users.write().values_mut() {
            if let Grants::PerVhost(map) = &mut u.vhosts {
                map.remove(vhost);
            }
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
    fn users_and_permissions_change_at_run_time() {
        let a = access(&format!(
            "[[users]]\nname = \"all\"\npassword_hash = \"{GUEST}\"\ntags = [\"administrator\"]\n"
        ));
        assert_eq!(a.tags("all"), Some(vec!["administrator".to_string()]));
        // A new user: can log in, has no vhost until granted one.
        let h = PasswordHash::new(b"pw", HashingAlgorithm::Sha256);
        assert!(a.put_user("new", h.clone(), vec!["management".into()]));
        assert_eq!(a.authenticate("new", b"pw"), Ok(()));
        assert!(!a.may_open_vhost("new", "/"));
        let vhosts = ["/".to_string(), "v2".to_string()];
        assert!(a.set_permissions("new", VhostPermissions::full("v2"), &vhosts));
        assert!(a.may_open_vhost("new", "v2") && !a.may_open_vhost("new", "/"));
        // Changing the password keeps the permissions.
        assert!(!a.put_user(
            "new",
            PasswordHash::new(b"pw2", HashingAlgorithm::Sha256),
            vec![]
        ));
        assert_eq!(
            a.authenticate("new", b"pw"),
            Err(LoginFailure::InvalidCredentials)
        );
        assert!(a.may_open_vhost("new", "v2"));
        // A user with access everywhere keeps the other vhosts when one changes.
        let none = VhostPermissions {
            vhost: "v2".into(),
            configure: permissions::Pattern::new("").unwrap(),
            write: permissions::Pattern::new("").unwrap(),
            read: permissions::Pattern::new("^r$").unwrap(),
        };
        assert!(a.set_permissions("all", none, &vhosts));
        assert!(a
            .check("all", "/", Permission::Configure, Resource::Queue, "q")
            .is_ok());
        assert!(a
            .check("all", "v2", Permission::Configure, Resource::Queue, "q")
            .is_err());
        assert!(a
            .check("all", "v2", Permission::Read, Resource::Queue, "r")
            .is_ok());
        assert_eq!(a.permissions(&vhosts).len(), 3);
        assert!(a.clear_permissions("all", "v2", &vhosts));
        assert!(!a.may_open_vhost("all", "v2"));
        a.vhost_deleted("v2");
        assert!(!a.may_open_vhost("new", "v2"));
        assert!(a.delete_user("new"));
        assert_eq!(
            a.authenticate("new", b"pw2"),
            Err(LoginFailure::UnknownUser)
        );
        assert!(!a.set_permissions("new", VhostPermissions::full("/"), &vhosts));
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
