//! The IPAM cell: hands out IPv4 pod addresses from this node's pod range (`--ipv4-pod-cidr`).
//!
//! It owns [`Ipam`] (injected as `Arc<Ipam>`), the statedb table `ipam` (one row per
//! allocation, for `ciliumctl db ipam`), the persisted state `<state-dir>/ipam.json` (written
//! before any allocation or release returns, restored at construction) and the routes
//! `POST /v1/ipam`, `GET /v1/ipam` and `DELETE /v1/ipam/{ip}`.
//!
//! Addresses: the network address, the gateway (the first host address) and the broadcast
//! address are never allocated. Without a requested address the lowest free one is taken.
//! Allocation is idempotent per owner: an owner that already holds an address gets it back.

mod api;
mod error;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::SystemTime;

use cilium_api::models::IpamAllocation;
use cilium_api::routes::ApiRoutes;
use cilium_node::{Node, StateFile};
use hive::{BoxCell, Config, Health, Invoke, Module, Provide};
use ipnet::Ipv4Net;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use statedb::{Db, Index, Table, TableDef, key_from_str};

pub use error::IpamError;

/// Default pod range of a node.
pub const DEFAULT_POD_CIDR: &str = "10.200.0.0/16";

/// Name of the state file inside `--state-dir`.
pub const STATE_FILE: &str = "ipam.json";

/// Name of the statedb table of allocations.
pub const TABLE_NAME: &str = "ipam";

/// Longest accepted owner string.
const MAX_OWNER_LEN: usize = 512;

/// Flags of the IPAM cell.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct IpamConfig {
    /// This node's IPv4 pod range; the first host address is the pods' gateway.
    #[arg(long = "ipv4-pod-cidr", default_value = DEFAULT_POD_CIDR)]
    pub ipv4_pod_cidr: Ipv4Net,
}

/// One allocation: a row of the `ipam` table and an entry of `ipam.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamEntry {
    /// The allocated address.
    pub ip: Ipv4Addr,
    /// Who holds it (e.g. `cni:<container-id>:<ifname>`).
    pub owner: String,
    /// When it was allocated (RFC 3339).
    pub allocated_at: String,
}

/// Layout of `ipam.json`.
#[derive(Debug, Serialize, Deserialize)]
struct PersistedState {
    cidr: String,
    allocations: Vec<IpamEntry>,
}

/// The `ipam` table: primary key = address (octets, so rows sort numerically), unique
/// secondary index `owner`.
pub fn new_table(db: &Db) -> Result<Table<IpamEntry>, statedb::Error> {
    db.register_table(
        TableDef::new(
            TABLE_NAME,
            Index::primary("ip", |e: &IpamEntry| ip_key(e.ip)),
        )
        .with_index(Index::unique("owner", |e: &IpamEntry| {
            std::iter::once(key_from_str(&e.owner)).collect()
        })),
    )
}

/// Primary key of an address in the `ipam` table.
pub fn ip_key(ip: Ipv4Addr) -> statedb::Key {
    statedb::Key::from_slice(&ip.octets())
}

/// The in-memory allocation state, guarded by one mutex so allocations never race.
#[derive(Debug, Default)]
struct State {
    by_ip: BTreeMap<Ipv4Addr, IpamEntry>,
    by_owner: BTreeMap<String, Ipv4Addr>,
}

/// The node's pod address allocator, injected as `Arc<Ipam>`.
pub struct Ipam {
    cidr: Ipv4Net,
    gateway: Ipv4Addr,
    first: u32,
    last: u32,
    file: StateFile,
    db: Db,
    table: Table<IpamEntry>,
    health: Option<Health>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Ipam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ipam")
            .field("cidr", &self.cidr)
            .field("allocated", &self.state.lock().by_ip.len())
            .finish()
    }
}

impl Ipam {
    /// An allocator for `cidr` persisting to `file` and mirroring into `table`. Restores the
    /// allocations found in `file`; those outside `cidr` or on a reserved address are dropped
    /// with a warning (the range was changed between runs).
    pub fn new(
        cidr: Ipv4Net,
        file: StateFile,
        db: Db,
        table: Table<IpamEntry>,
        health: Option<Health>,
    ) -> Result<Self, IpamError> {
        let cidr = cidr.trunc();
        if cidr.prefix_len() > 29 {
            return Err(IpamError::InvalidCidr {
                cidr: cidr.to_string(),
                reason: "the range must be /29 or larger to hold a gateway and pods".into(),
            });
        }
        let net = u32::from(cidr.network());
        let bcast = u32::from(cidr.broadcast());
        let ipam = Self {
            cidr,
            gateway: Ipv4Addr::from(net + 1),
            first: net + 2,
            last: bcast - 1,
            file,
            db,
            table,
            health,
            state: Mutex::new(State::default()),
        };
        ipam.restore()?;
        Ok(ipam)
    }

    fn restore(&self) -> Result<(), IpamError> {
        let persisted: Option<PersistedState> = self.file.load()?;
        let mut st = self.state.lock();
        let mut dropped = Vec::new();
        if let Some(p) = persisted {
            for e in p.allocations {
                if self.check_in_range(e.ip).is_err()
                    || st.by_ip.contains_key(&e.ip)
                    || st.by_owner.contains_key(&e.owner)
                {
                    dropped.push(e);
                    continue;
                }
                st.by_owner.insert(e.owner.clone(), e.ip);
                st.by_ip.insert(e.ip, e);
            }
            if p.cidr != self.cidr.to_string() {
                tracing::warn!(old = %p.cidr, new = %self.cidr, "pod range changed since the last run");
            }
        }
        for e in &dropped {
            tracing::warn!(ip = %e.ip, owner = %e.owner, cidr = %self.cidr,
                "dropping a restored allocation outside the pod range or duplicated");
        }
        if !dropped.is_empty() {
            self.persist(&st)?;
        }
        let mut w = self.db.write_txn(&[&self.table])?;
        self.table.delete_all(&mut w)?;
        for e in st.by_ip.values() {
            self.table.insert(&mut w, e.clone())?;
        }
        w.commit();
        tracing::info!(cidr = %self.cidr, restored = st.by_ip.len(), "IPAM state restored");
        self.report(&st);
        Ok(())
    }

    /// The pod range.
    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// The gateway (router) address pods route through: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// Prefix length of the pod range.
    pub fn prefix_len(&self) -> u8 {
        self.cidr.prefix_len()
    }

    /// Number of allocatable addresses (the range minus network, gateway, broadcast).
    pub fn capacity(&self) -> u64 {
        u64::from(self.last - self.first) + 1
    }

    /// All allocations, ordered by address.
    pub fn allocations(&self) -> Vec<IpamAllocation> {
        let st = self.state.lock();
        st.by_ip.values().map(|e| self.model(e)).collect()
    }

    /// The allocation of `owner`, if any.
    pub fn lookup_owner(&self, owner: &str) -> Option<IpamAllocation> {
        let st = self.state.lock();
        let ip = st.by_owner.get(owner)?;
        st.by_ip.get(ip).map(|e| self.model(e))
    }

    /// Allocate an address for `owner`: `requested` when given (it must be inside the range,
    /// not reserved and free), otherwise the lowest free one. Idempotent per owner: an owner
    /// holding an address gets the same allocation back. Persisted before returning.
    pub fn allocate(
        &self,
        owner: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<IpamAllocation, IpamError> {
        self.allocate_tracked(owner, requested).map(|(a, _)| a)
    }

    /// Like [`Ipam::allocate`], also saying whether the allocation is new (`true`) or the
    /// owner's existing one (`false`).
    pub fn allocate_tracked(
        &self,
        owner: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<(IpamAllocation, bool), IpamError> {
        if owner.trim().is_empty() {
            return Err(IpamError::InvalidOwner {
                owner: owner.into(),
                reason: "must not be empty",
            });
        }
        if owner.len() > MAX_OWNER_LEN {
            return Err(IpamError::InvalidOwner {
                owner: owner.chars().take(64).collect(),
                reason: "must be at most 512 bytes",
            });
        }
        if let Some(ip) = requested {
            self.check_in_range(ip)?;
        }
        let mut st = self.state.lock();
        if let Some(&held) = st.by_owner.get(owner) {
            if let Some(req) = requested
                && req != held
            {
                return Err(IpamError::OwnerHoldsOther {
                    owner: owner.into(),
                    held,
                    requested: req,
                });
            }
            if let Some(e) = st.by_ip.get(&held) {
                return Ok((self.model(e), false));
            }
        }
        let ip = match requested {
            Some(ip) => {
                if let Some(e) = st.by_ip.get(&ip) {
                    return Err(IpamError::InUse {
                        ip,
                        owner: e.owner.clone(),
                    });
                }
                ip
            }
            None => self.lowest_free(&st)?,
        };
        let entry = IpamEntry {
            ip,
            owner: owner.to_string(),
            allocated_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        };
        st.by_ip.insert(ip, entry.clone());
        st.by_owner.insert(owner.to_string(), ip);
        if let Err(e) = self.commit(&st, Some(&entry), None) {
            st.by_ip.remove(&ip);
            st.by_owner.remove(owner);
            return Err(e);
        }
        tracing::info!(%ip, owner, "address allocated");
        self.report(&st);
        Ok((self.model(&entry), true))
    }

    /// Release `ip`; `Ok(false)` when it was not allocated. Persisted before returning.
    pub fn release(&self, ip: Ipv4Addr) -> Result<bool, IpamError> {
        let mut st = self.state.lock();
        let Some(entry) = st.by_ip.remove(&ip) else {
            return Ok(false);
        };
        st.by_owner.remove(&entry.owner);
        if let Err(e) = self.commit(&st, None, Some(&entry)) {
            st.by_owner.insert(entry.owner.clone(), ip);
            st.by_ip.insert(ip, entry);
            return Err(e);
        }
        tracing::info!(%ip, owner = %entry.owner, "address released");
        self.report(&st);
        Ok(true)
    }

    /// Release whatever `owner` holds; returns the released address.
    pub fn release_owner(&self, owner: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        // Look up and release under one lock so a concurrent allocate cannot interleave.
        let mut st = self.state.lock();
        let Some(ip) = st.by_owner.remove(owner) else {
            return Ok(None);
        };
        let entry = st.by_ip.remove(&ip);
        if let Err(e) = self.commit(&st, None, entry.as_ref()) {
            st.by_owner.insert(owner.to_string(), ip);
            if let Some(entry) = entry {
                st.by_ip.insert(ip, entry);
            }
            return Err(e);
        }
        tracing::info!(%ip, owner, "address released");
        self.report(&st);
        Ok(Some(ip))
    }

    fn check_in_range(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let cidr = self.cidr.to_string();
        if !self.cidr.contains(&ip) {
            return Err(IpamError::OutOfRange { ip, cidr });
        }
        let what = if ip == self.cidr.network() {
            "network"
        } else if ip == self.gateway {
            "gateway"
        } else if ip == self.cidr.broadcast() {
            "broadcast"
        } else {
            return Ok(());
        };
        Err(IpamError::Reserved { ip, what, cidr })
    }

    fn lowest_free(&self, st: &State) -> Result<Ipv4Addr, IpamError> {
        // Walk the allocated addresses in order; the first gap is the lowest free address.
        let mut candidate = self.first;
        for ip in st.by_ip.keys() {
            let n = u32::from(*ip);
            if n > candidate {
                break;
            }
            if n == candidate {
                candidate += 1;
            }
        }
        if candidate > self.last {
            return Err(IpamError::Exhausted {
                cidr: self.cidr.to_string(),
                capacity: self.capacity(),
            });
        }
        Ok(Ipv4Addr::from(candidate))
    }

    /// Persist `st` (already updated) and mirror the change into the table. The file is
    /// written first: a crash after it leaves the file ahead, which a restart restores.
    fn commit(
        &self,
        st: &State,
        inserted: Option<&IpamEntry>,
        removed: Option<&IpamEntry>,
    ) -> Result<(), IpamError> {
        let mut w = self.db.write_txn(&[&self.table])?;
        if let Some(e) = inserted {
            self.table.insert(&mut w, e.clone())?;
        }
        if let Some(e) = removed {
            self.table.delete(&mut w, e)?;
        }
        self.persist(st)?;
        w.commit();
        Ok(())
    }

    fn persist(&self, st: &State) -> Result<(), IpamError> {
        let p = PersistedState {
            cidr: self.cidr.to_string(),
            allocations: st.by_ip.values().cloned().collect(),
        };
        self.file.store(&p)?;
        Ok(())
    }

    fn report(&self, st: &State) {
        if let Some(h) = &self.health {
            h.ok(format!(
                "{}/{} addresses allocated in {}",
                st.by_ip.len(),
                self.capacity(),
                self.cidr
            ));
        }
    }

    fn model(&self, e: &IpamEntry) -> IpamAllocation {
        IpamAllocation {
            ip: e.ip,
            owner: e.owner.clone(),
            cidr: self.cidr.to_string(),
            gateway: self.gateway,
        }
    }
}

/// The IPAM cell: `--ipv4-pod-cidr`, `Arc<Ipam>`, `Arc<Table<IpamEntry>>` and the IPAM routes.
pub fn cell() -> BoxCell {
    Module::new(
        "ipam",
        "pod IPv4 address management",
        vec![
            Config::<IpamConfig>::new(),
            Provide::new(|db: Arc<Db>| Ok(new_table(&db)?)),
            Provide::new(
                |cfg: Arc<IpamConfig>,
                 node: Arc<Node>,
                 db: Arc<Db>,
                 table: Arc<Table<IpamEntry>>,
                 health: Health| {
                    Ok(Ipam::new(
                        cfg.ipv4_pod_cidr,
                        node.state_file(STATE_FILE),
                        (*db).clone(),
                        (*table).clone(),
                        Some(health),
                    )?)
                },
            ),
            Invoke::new(|routes: Arc<ApiRoutes>, ipam: Arc<Ipam>| {
                routes.add(api::router(ipam));
                Ok(())
            }),
        ],
    )
}

#[cfg(test)]
mod tests;
