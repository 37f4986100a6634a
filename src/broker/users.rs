//! Users, vhosts and permissions changed at run time (by the management API):
//! each change is written to the store (a synced write) before it takes
//! effect, and everything stored is applied again at boot, after the config
//! file's users and vhosts, so changes survive restarts. The store holds them
//! as opaque objects; their JSON encoding is owned here.

use serde_json::{json, Value};
use std::sync::Arc;

use super::{Broker, VHost};
use crate::auth::hashing::PasswordHash;
use crate::auth::permissions::{Pattern, VhostPermissions};
use crate::store::{blocking, StoreError, StoredObject};

const USER: &str = "user";
const VHOST: &str = "vhost";
const PERMISSION: &str = "permission";

/// A permission's store key: vhost and user, with a separator neither
/// contains as text (names are UTF-8 without NUL in practice; a NUL in either
/// is refused by `set_permissions`).
fn permission_key(vhost: &str, user: &str) -> String {
    format!("{vhost}\u{0}{user}")
}

impl Broker {
    /// Create or change a user (hash and tags); true when created.
    pub fn put_user(
        &self,
        name: &str,
        hash: PasswordHash,
        tags: Vec<String>,
    ) -> Result<bool, StoreError> {
        let value = json!({"password_hash": hash.encode(), "tags": tags});
        self.put_object(USER, name, &value)?;
        Ok(self.access.put_user(name, hash, tags))
    }

    /// Delete a user and their permissions; false when unknown.
    pub fn delete_user(&self, name: &str) -> Result<bool, StoreError> {
        let vhosts = self.vhost_names();
        for (user, p) in self.access.permissions(&vhosts) {
            if user == name {
                self.delete_object(PERMISSION, &permission_key(&p.vhost, name))?;
            }
        }
        self.delete_object(USER, name)?;
        Ok(self.access.delete_user(name))
    }

    /// The names of all vhosts, sorted.
    pub fn vhost_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.vhosts.iter().map(|v| v.name.clone()).collect();
        v.sort();
        v
    }

    /// Create a vhost; true when created (false: it existed).
    pub fn add_vhost(&self, name: &str) -> Result<bool, StoreError> {
        if self.vhosts.contains_key(name) {
            return Ok(false);
        }
        self.put_object(VHOST, name, &json!({}))?;
        self.vhosts
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(VHost::new(name.to_string(), self.store.clone())));
        Ok(true)
    }

    /// Delete a vhost with its queues, exchanges and permissions; None when
    /// unknown. Returns what the deleted queues held, whose consumers the
    /// caller tells (basic.cancel).
    pub fn delete_vhost(
        &self,
        name: &str,
    ) -> Result<Option<Vec<crate::queue::Deleted>>, crate::error::AmqpError> {
        let Some(v) = self.vhost(name) else {
            return Ok(None);
        };
        let queues: Vec<_> = v.queues.iter().map(|q| q.clone()).collect();
        let mut deleted = Vec::new();
        for q in queues {
            deleted.push(v.remove_queue(&q)?);
        }
        let exchanges: Vec<String> = v
            .exchanges
            .iter()
            .map(|x| x.name.clone())
            .filter(|n| !n.is_empty() && !n.starts_with("amq."))
            .collect();
        for x in exchanges {
            v.delete_exchange(&x, false)?;
        }
        let store_err = |e: StoreError| {
            crate::error::AmqpError::connection(
                crate::protocol::codes::INTERNAL_ERROR,
                e.to_string(),
            )
        };
        for (user, p) in self.access.permissions(&[name.to_string()]) {
            if p.vhost == name {
                self.delete_object(PERMISSION, &permission_key(name, &user))
                    .map_err(store_err)?;
            }
        }
        self.delete_vhost_policies(&v).map_err(store_err)?;
        self.delete_object(VHOST, name).map_err(store_err)?;
        self.access.vhost_deleted(name);
        self.vhosts.remove(name);
        Ok(Some(deleted))
    }

    /// Set a user's permissions in a vhost; false when the user is unknown.
    pub fn set_permissions(&self, user: &str, p: VhostPermissions) -> Result<bool, StoreError> {
        if self.access.user(user).is_none() {
            return Ok(false);
        }
        let value = json!({
            "configure": p.configure.as_str(),
            "write": p.write.as_str(),
            "read": p.read.as_str(),
        });
        self.put_object(PERMISSION, &permission_key(&p.vhost, user), &value)?;
        Ok(self.access.set_permissions(user, p, &self.vhost_names()))
    }

    /// Clear a user's permissions in a vhost; false when there were none.
    pub fn clear_permissions(&self, user: &str, vhost: &str) -> Result<bool, StoreError> {
        self.delete_object(PERMISSION, &permission_key(vhost, user))?;
        Ok(self
            .access
            .clear_permissions(user, vhost, &self.vhost_names()))
    }

    fn put_object(&self, kind: &str, key: &str, value: &Value) -> Result<(), StoreError> {
        let obj = StoredObject {
            kind: kind.to_string(),
            key: key.to_string(),
            value: serde_json::to_vec(value).unwrap_or_default(),
        };
        blocking(|| self.store.put_object(&obj))
    }

    fn delete_object(&self, kind: &str, key: &str) -> Result<(), StoreError> {
        blocking(|| self.store.delete_object(kind, key))
    }

    /// Apply what the store kept (at boot, after the config). Records that
    /// do not decode are skipped with a warning: a user or permission lost
    /// is better than a broker that will not start.
    pub(super) fn restore_objects(self: &Arc<Self>, objects: Vec<StoredObject>) {
        let mut permissions = Vec::new();
        let mut policies = Vec::new();
        for o in objects {
            let value: Value = match serde_json::from_slice(&o.value) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(kind = %o.kind, key = %o.key, error = %e, "skipping undecodable stored definition");
                    continue;
                }
            };
            match o.kind.as_str() {
                VHOST => {
                    self.vhosts
                        .entry(o.key.clone())
                        .or_insert_with(|| Arc::new(VHost::new(o.key.clone(), self.store.clone())));
                }
                USER => {
                    let hash = value["password_hash"]
                        .as_str()
                        .and_then(|h| PasswordHash::parse(h).ok());
                    let tags = value["tags"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|t| t.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    match hash {
                        Some(h) => {
                            self.access.put_user(&o.key, h, tags);
                        }
                        None => {
                            tracing::warn!(user = %o.key, "skipping stored user without a valid hash")
                        }
                    }
                }
                PERMISSION => permissions.push((o.key, value)),
                "policy" | "operator_policy" => policies.push((o.kind, o.key, value)),
                other => tracing::warn!(kind = other, "skipping stored definition of unknown kind"),
            }
        }
        // After the vhosts (stored under a later key) exist.
        for (kind, key, value) in policies {
            self.restore_policy(&kind, &key, &value);
        }
        let vhosts = self.vhost_names();
        for (key, value) in permissions {
            let Some((vhost, user)) = key.split_once('\u{0}') else {
                continue;
            };
            let pattern = |k: &str| Pattern::new(value[k].as_str().unwrap_or(""));
            let (Ok(configure), Ok(write), Ok(read)) =
                (pattern("configure"), pattern("write"), pattern("read"))
            else {
                tracing::warn!(
                    user,
                    vhost,
                    "skipping stored permissions with an invalid pattern"
                );
                continue;
            };
            self.access.set_permissions(
                user,
                VhostPermissions {
                    vhost: vhost.to_string(),
                    configure,
                    write,
                    read,
                },
                &vhosts,
            );
        }
    }
}
