//! What must be unique across objects: an IP belongs to one pod or one
//! Service, a UID to one pod. Agents refuse a config that breaks this, so
//! the controller checks it per object as each one changes: the object that
//! claims what another already holds is refused alone (its last good
//! version stays), instead of the whole mesh's config being held back.
//! It waits, and goes into force once the holder lets go.

use std::collections::HashMap;
use std::net::IpAddr;

use mesh::config::{Service, Workload};

use crate::resources::ObjectKey;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Claim {
    Ip(IpAddr),
    Uid(String),
}

impl Claim {
    pub fn of_workload(w: &Workload) -> Vec<Claim> {
        let ips = w.ips.iter().map(|ip| Claim::Ip(*ip));
        ips.chain(std::iter::once(Claim::Uid(w.uid.clone()))).collect()
    }

    pub fn of_service(s: &Service) -> Vec<Claim> {
        s.vips.iter().map(|ip| Claim::Ip(*ip)).collect()
    }
}

/// Who holds each claim, and each holder's claims.
#[derive(Debug, Default)]
pub struct Claims {
    owners: HashMap<Claim, ObjectKey>,
    held: HashMap<ObjectKey, Vec<Claim>>,
}

impl Claims {
    /// Whether `key` may hold all of `wanted`; the error names the first
    /// clash and its holder.
    pub fn check(&self, key: &ObjectKey, wanted: &[Claim]) -> Result<(), String> {
        for claim in wanted {
            match self.owners.get(claim) {
                Some(owner) if owner != key => {
                    let what = match claim {
                        Claim::Ip(ip) => format!("IP {ip}"),
                        Claim::Uid(uid) => format!("uid {uid:?}"),
                    };
                    return Err(format!("{what} is already used by {owner}; waiting until it is free"));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Makes `wanted` the claims of `key` (after [`Self::check`]).
    pub fn set(&mut self, key: &ObjectKey, wanted: Vec<Claim>) {
        self.release(key);
        for claim in &wanted {
            self.owners.insert(claim.clone(), key.clone());
        }
        self.held.insert(key.clone(), wanted);
    }

    pub fn release(&mut self, key: &ObjectKey) {
        for claim in self.held.remove(key).unwrap_or_default() {
            if self.owners.get(&claim) == Some(key) {
                self.owners.remove(&claim);
            }
        }
    }
}
