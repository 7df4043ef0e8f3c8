//! The one writer of the `services`, `frontends` and `backends` tables.
//!
//! It follows the changes of the Service and EndpointSlice tables (and of pods for named
//! ports, and of the IPAM table for traffic policy Local), recomputes only the affected
//! services, and writes all of them in one write transaction. Ids and allocations are kept
//! in `<state-dir>/lb.json`, written before that transaction commits.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cilium_ipam::{IpamEntry, ip_key};
use cilium_node::StateFile;
use cilium_resources::{Pod, pod_query};
use hive::Health;
use ipnet::Ipv4Net;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use statedb::reconciler::Status;
use statedb::{ChangeIterator, Db, Initializer, ReadTxn, Table, WatchSet, WriteTxn};

use crate::claims::Claims;
use crate::error::LbError;
use crate::kinds::{
    ClusterIpSpec, EndpointSlice, NODE_PORT_RANGE, ServiceObj, service_object_query, slices_of,
};
use crate::model::{
    Backend, BackendInstance, Frontend, FrontendBackend, FrontendKind, L3n4Addr, L4Proto,
    ResolvedPort, Service, ServiceName, ServiceType, backend_query, frontends_of, service_query,
};
use crate::plan::{NodeInfo, PlannedBackend, plan_service};

/// Everything the writer reads and writes.
#[derive(Clone)]
pub struct WriterParams {
    /// The database.
    pub db: Db,
    /// This node (name and NodePort addresses).
    pub node: NodeInfo,
    /// Where cluster IPs are allocated from (`--service-cidr`).
    pub service_cidr: Ipv4Net,
    /// `--k8s-service-proxy-name` (which services this agent handles, see
    /// [`ServiceObj::ignored`]).
    pub proxy_name: String,
    /// `<state-dir>/lb.json`.
    pub state: StateFile,
    /// Applied Service objects.
    pub service_objects: Table<ServiceObj>,
    /// Applied EndpointSlice objects.
    pub slices: Table<EndpointSlice>,
    /// Pods, for named target ports not listed in a slice.
    pub pods: Option<Table<Pod>>,
    /// Local pod addresses (traffic policy Local).
    pub ipam: Option<Table<IpamEntry>>,
    /// Output: services.
    pub services: Table<Service>,
    /// Output: frontends.
    pub frontends: Table<Frontend>,
    /// Output: backends.
    pub backends: Table<Backend>,
    /// Ownership shared with the Service kind.
    pub claims: Arc<Claims>,
    /// Health of the writer.
    pub health: Option<Health>,
}

/// Layout of `lb.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    /// Frontend (`address:port/PROTO`) → service id (reverse-NAT index).
    #[serde(default)]
    frontend_ids: BTreeMap<String, u32>,
    /// Backend (`address:port/PROTO`) → backend id.
    #[serde(default)]
    backend_ids: BTreeMap<String, u32>,
    /// Service (`namespace/name`) → allocated cluster IP.
    #[serde(default)]
    cluster_ips: BTreeMap<String, Ipv4Addr>,
    /// `namespace/name#port-key` → allocated node port.
    #[serde(default)]
    node_ports: BTreeMap<String, u16>,
}

/// Stable ids per `address:port/protocol`, in `1..=max`, handed out round-robin so a
/// released id is not reused at once.
#[derive(Debug)]
struct IdAlloc {
    by_key: HashMap<L3n4Addr, u32>,
    used: HashSet<u32>,
    next: u32,
    max: u32,
}

impl IdAlloc {
    fn new(max: u32) -> Self {
        Self {
            by_key: HashMap::new(),
            used: HashSet::new(),
            next: 1,
            max,
        }
    }

    fn restore(&mut self, key: L3n4Addr, id: u32) -> bool {
        if id == 0 || id > self.max || self.used.contains(&id) || self.by_key.contains_key(&key) {
            return false;
        }
        self.used.insert(id);
        self.by_key.insert(key, id);
        self.next = self.next.max(id % self.max + 1);
        true
    }

    fn get_or_alloc(&mut self, key: L3n4Addr) -> Option<(u32, bool)> {
        if let Some(id) = self.by_key.get(&key) {
            return Some((*id, false));
        }
        if self.used.len() as u64 >= u64::from(self.max) {
            return None;
        }
        loop {
            let id = self.next;
            self.next = if self.next >= self.max {
                1
            } else {
                self.next + 1
            };
            if self.used.insert(id) {
                self.by_key.insert(key, id);
                return Some((id, true));
            }
        }
    }

    fn release(&mut self, key: &L3n4Addr) -> bool {
        match self.by_key.remove(key) {
            Some(id) => {
                self.used.remove(&id);
                true
            }
            None => false,
        }
    }

    fn retain(&mut self, keep: impl Fn(&L3n4Addr) -> bool) -> bool {
        let drop: Vec<L3n4Addr> = self.by_key.keys().filter(|k| !keep(k)).copied().collect();
        for k in &drop {
            self.release(k);
        }
        !drop.is_empty()
    }
}

/// Counts of one [`Writer::sync`] pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Services recomputed.
    pub services: usize,
    /// Frontends inserted or changed.
    pub frontends_written: usize,
    /// Frontends deleted.
    pub frontends_deleted: usize,
    /// Services left in conflict.
    pub conflicts: usize,
    /// Time spent in total.
    pub duration: Duration,
    /// Of which writing `lb.json` (only when ids or allocations changed).
    pub persist: Duration,
}

/// What one service holds: frontend addresses and node ports.
type Held = (Vec<L3n4Addr>, Vec<(u16, L4Proto)>);

struct State {
    svc_changes: ChangeIterator<ServiceObj>,
    slice_changes: ChangeIterator<EndpointSlice>,
    pod_changes: Option<ChangeIterator<Pod>>,
    ipam_changes: Option<ChangeIterator<IpamEntry>>,
    fe_ids: IdAlloc,
    be_ids: IdAlloc,
    /// Allocated cluster IPs.
    cluster_ips: HashMap<ServiceName, Ipv4Addr>,
    cip_used: HashSet<Ipv4Addr>,
    cip_next: u32,
    /// Allocated node ports by (service, port key).
    node_ports: HashMap<(ServiceName, String), u16>,
    np_used: HashSet<u16>,
    np_next: u16,
    /// What each service holds in [`Claims`].
    svc_claims: HashMap<ServiceName, Held>,
    /// Backends each service uses.
    svc_backends: HashMap<ServiceName, Vec<L3n4Addr>>,
    /// Service of each slice (`namespace/name`), to notice relabelled slices.
    slice_service: HashMap<String, ServiceName>,
    /// Services whose named ports came from a pod (`namespace/name`).
    pod_deps: HashMap<String, HashSet<ServiceName>>,
    /// Services with a traffic policy Local.
    local_services: HashSet<ServiceName>,
    /// Services in conflict.
    errored: BTreeSet<ServiceName>,
    /// Cluster IPs given explicitly by the services of the current pass (never allocated).
    explicit_ips: HashSet<Ipv4Addr>,
    inits: Vec<Initializer>,
    /// Backends changed by the current pass, written once at its end (see `backend_row`).
    backend_rows: HashMap<L3n4Addr, Option<Backend>>,
    dirty: bool,
    full_resync: bool,
}

/// The writer of `services`, `frontends` and `backends`, injected as `Arc<Writer>`.
pub struct Writer {
    p: WriterParams,
    /// Revisions of the input tables the last successful pass had seen (`apply --wait`).
    processed: tokio::sync::watch::Sender<Vec<u64>>,
    cidr_first: u32,
    cidr_last: u32,
    state: Mutex<State>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("node", &self.p.node)
            .field("service_cidr", &self.p.service_cidr)
            .finish()
    }
}

/// Node-port allocation key of a service's healthCheckNodePort (port names are lower case,
/// other keys are `port/PROTO`: no clash).
const HEALTH_CHECK_KEY: &str = "healthCheckNodePort";

fn node_port_key(svc: &ServiceName, port_key: &str) -> String {
    format!("{svc}#{port_key}")
}

fn parse_service_name(s: &str) -> Option<ServiceName> {
    let (ns, name) = s.split_once('/')?;
    Some(ServiceName::new(ns, name))
}

impl Writer {
    /// A writer over `p`: registers change trackers and table initializers (done after the
    /// first [`Writer::sync`]) and loads `lb.json`.
    pub fn new(p: WriterParams) -> Result<Self, LbError> {
        let cidr = p.service_cidr.trunc();
        if cidr.prefix_len() > 30 {
            return Err(LbError::Config {
                flag: "--service-cidr",
                reason: format!("{cidr} is too small; give a /30 or larger range"),
            });
        }
        let cidr_first = u32::from(cidr.network()) + 1;
        let cidr_last = u32::from(cidr.broadcast()) - 1;
        let mut w = p.db.write_txn(&[
            &p.service_objects,
            &p.slices,
            &p.services,
            &p.frontends,
            &p.backends,
        ])?;
        let svc_changes = p.service_objects.changes(&mut w)?;
        let slice_changes = p.slices.changes(&mut w)?;
        let inits = vec![
            p.services.register_initializer(&mut w, "lb-writer")?,
            p.frontends.register_initializer(&mut w, "lb-writer")?,
            p.backends.register_initializer(&mut w, "lb-writer")?,
        ];
        w.commit();
        let pod_changes = match &p.pods {
            Some(t) => {
                let mut w = p.db.write_txn(&[t])?;
                let c = t.changes(&mut w)?;
                w.commit();
                Some(c)
            }
            None => None,
        };
        let ipam_changes = match &p.ipam {
            Some(t) => {
                let mut w = p.db.write_txn(&[t])?;
                let c = t.changes(&mut w)?;
                w.commit();
                Some(c)
            }
            None => None,
        };
        let mut st = State {
            svc_changes,
            slice_changes,
            pod_changes,
            ipam_changes,
            fe_ids: IdAlloc::new(u32::from(u16::MAX)),
            be_ids: IdAlloc::new(u32::MAX - 1),
            cluster_ips: HashMap::new(),
            cip_used: HashSet::new(),
            cip_next: cidr_first,
            node_ports: HashMap::new(),
            np_used: HashSet::new(),
            np_next: NODE_PORT_RANGE.0,
            svc_claims: HashMap::new(),
            svc_backends: HashMap::new(),
            slice_service: HashMap::new(),
            pod_deps: HashMap::new(),
            local_services: HashSet::new(),
            errored: BTreeSet::new(),
            explicit_ips: HashSet::new(),
            inits,
            backend_rows: HashMap::new(),
            dirty: false,
            full_resync: true,
        };
        Self::load(&p.state, &mut st)?;
        Ok(Self {
            p,
            processed: tokio::sync::watch::Sender::new(Vec::new()),
            cidr_first,
            cidr_last,
            state: Mutex::new(st),
        })
    }

    /// Revisions of the input tables in `r`, in a fixed order.
    pub fn input_revisions(&self, r: &ReadTxn) -> Vec<u64> {
        let mut v = vec![
            self.p.service_objects.revision(r),
            self.p.slices.revision(r),
        ];
        if let Some(t) = &self.p.pods {
            v.push(t.revision(r));
        }
        if let Some(t) = &self.p.ipam {
            v.push(t.revision(r));
        }
        v
    }

    /// The `apply --wait` stage of this writer: done once a pass has handled every input
    /// change committed before the call.
    pub fn sync_waiter(self: &Arc<Self>) -> cilium_resources::SyncWaiter {
        let me = self.clone();
        cilium_resources::revisions_waiter(
            self.processed.subscribe(),
            move || me.input_revisions(&me.p.db.read_txn()),
            "the load-balancer writer stopped",
        )
    }

    fn load(file: &StateFile, st: &mut State) -> Result<(), LbError> {
        let persisted: Persisted = file.load()?.unwrap_or_default();
        let path = file.path().display().to_string();
        let corrupt = |entry: &str, reason: &str| LbError::CorruptState {
            path: path.clone(),
            entry: entry.to_string(),
            reason: reason.to_string(),
        };
        for (k, id) in &persisted.frontend_ids {
            let a: L3n4Addr = k.parse().map_err(|e: String| corrupt(k, &e))?;
            if !st.fe_ids.restore(a, *id) {
                return Err(corrupt(k, "id out of range or duplicated"));
            }
        }
        for (k, id) in &persisted.backend_ids {
            let a: L3n4Addr = k.parse().map_err(|e: String| corrupt(k, &e))?;
            if !st.be_ids.restore(a, *id) {
                return Err(corrupt(k, "id out of range or duplicated"));
            }
        }
        for (k, ip) in &persisted.cluster_ips {
            let name = parse_service_name(k).ok_or_else(|| corrupt(k, "not namespace/name"))?;
            st.cip_used.insert(*ip);
            st.cluster_ips.insert(name, *ip);
        }
        for (k, port) in &persisted.node_ports {
            let (svc, pk) = k
                .split_once('#')
                .ok_or_else(|| corrupt(k, "not namespace/name#port"))?;
            let name = parse_service_name(svc).ok_or_else(|| corrupt(k, "not namespace/name"))?;
            st.np_used.insert(*port);
            st.node_ports.insert((name, pk.to_string()), *port);
        }
        Ok(())
    }

    fn persist(&self, st: &State) -> Result<(), LbError> {
        let p = Persisted {
            frontend_ids: st
                .fe_ids
                .by_key
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            backend_ids: st
                .be_ids
                .by_key
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            cluster_ips: st
                .cluster_ips
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            node_ports: st
                .node_ports
                .iter()
                .map(|((s, pk), v)| (node_port_key(s, pk), *v))
                .collect(),
        };
        self.p.state.store(&p)?;
        Ok(())
    }

    /// The node the writer computes for.
    pub fn node(&self) -> &NodeInfo {
        &self.p.node
    }

    /// The services table.
    pub fn services(&self) -> &Table<Service> {
        &self.p.services
    }

    /// The frontends table.
    pub fn frontends(&self) -> &Table<Frontend> {
        &self.p.frontends
    }

    /// The backends table.
    pub fn backends(&self) -> &Table<Backend> {
        &self.p.backends
    }

    /// The backend rows `name` uses, as seen by `r`.
    pub fn backends_of(&self, r: &ReadTxn, name: &ServiceName) -> Vec<Arc<Backend>> {
        let addrs = self
            .state
            .lock()
            .svc_backends
            .get(name)
            .cloned()
            .unwrap_or_default();
        addrs
            .iter()
            .filter_map(|a| self.p.backends.get(r, &backend_query(a)))
            .map(|b| b.object())
            .collect()
    }

    /// A read transaction of the database.
    pub fn read_txn(&self) -> ReadTxn {
        self.p.db.read_txn()
    }

    /// Recompute every service affected by changes since the last call, in one write
    /// transaction (the first call computes all and marks the tables initialized).
    /// Returns what was done and a watch set that fires when there is more to do. On
    /// failure nothing is written and the next call recomputes everything.
    pub fn sync(&self) -> Result<(SyncStats, WatchSet), LbError> {
        let start = Instant::now();
        let mut st = self.state.lock();
        let r = self.p.db.read_txn();
        let mut ws = WatchSet::new();
        let mut affected: HashSet<ServiceName> = HashSet::new();
        let (changes, w) = st.svc_changes.next(&r);
        ws.add(w);
        for c in changes {
            affected.insert(c.object.service_name());
        }
        let (changes, w) = st.slice_changes.next(&r);
        ws.add(w);
        for c in changes {
            let key = c.object.key();
            let svc = c.object.service_name();
            if let Some(old) = st.slice_service.remove(&key)
                && old != svc
            {
                affected.insert(old);
            }
            if !c.deleted {
                st.slice_service.insert(key, svc.clone());
            }
            affected.insert(svc);
        }
        if let Some(it) = st.pod_changes.as_mut() {
            let (changes, w) = it.next(&r);
            ws.add(w);
            let mut keys = Vec::new();
            for c in changes {
                keys.push(c.object.key());
            }
            for k in keys {
                if let Some(deps) = st.pod_deps.get(&k) {
                    affected.extend(deps.iter().cloned());
                }
            }
        }
        if let Some(it) = st.ipam_changes.as_mut() {
            let (changes, w) = it.next(&r);
            ws.add(w);
            if !changes.is_empty() {
                let local: Vec<ServiceName> = st.local_services.iter().cloned().collect();
                affected.extend(local);
            }
        }
        let first = !st.inits.is_empty();
        if st.full_resync {
            affected.extend(st.svc_claims.keys().cloned());
            affected.extend(st.errored.iter().cloned());
            affected.extend(self.p.service_objects.all(&r).map(|s| s.service_name()));
            affected.extend(self.p.services.all(&r).map(|s| s.name.clone()));
        }
        if affected.is_empty() && !first {
            self.processed.send_replace(self.input_revisions(&r));
            return Ok((SyncStats::default(), ws));
        }
        match self.write(&mut st, &r, affected, first) {
            Ok(mut stats) => {
                stats.duration = start.elapsed();
                st.full_resync = false;
                self.report(&st, &stats);
                self.processed.send_replace(self.input_revisions(&r));
                Ok((stats, ws))
            }
            Err(e) => {
                // Nothing was committed: rebuild the bookkeeping from the file and the
                // tables on the next call.
                tracing::warn!(error = %e, "load-balancer tables not written; recomputing everything next");
                self.reset(&mut st)?;
                if let Some(h) = &self.p.health {
                    h.degraded("load-balancer tables not written", &e);
                }
                Err(e)
            }
        }
    }

    fn reset(&self, st: &mut State) -> Result<(), LbError> {
        st.fe_ids = IdAlloc::new(u32::from(u16::MAX));
        st.be_ids = IdAlloc::new(u32::MAX - 1);
        st.cluster_ips.clear();
        st.cip_used.clear();
        st.node_ports.clear();
        st.np_used.clear();
        st.svc_claims.clear();
        st.svc_backends.clear();
        st.errored.clear();
        self.p.claims.clear();
        st.full_resync = true;
        st.dirty = false;
        Self::load(&self.p.state, st)?;
        // Recover the backends each service used from the (unchanged) backends table.
        let r = self.p.db.read_txn();
        for b in self.p.backends.all(&r) {
            for i in &b.instances {
                st.svc_backends
                    .entry(i.service.clone())
                    .or_default()
                    .push(b.addr());
            }
        }
        Ok(())
    }

    fn report(&self, st: &State, stats: &SyncStats) {
        if let Some(h) = &self.p.health {
            let r = self.p.db.read_txn();
            let msg = format!(
                "{} services, {} frontends, {} backends",
                self.p.services.len(&r),
                self.p.frontends.len(&r),
                self.p.backends.len(&r)
            );
            if st.errored.is_empty() {
                h.ok(msg);
            } else {
                h.ok(format!("{msg}; {} in conflict", st.errored.len()));
            }
        }
        // Large passes (a big apply, a restore) are worth an info line with their cost.
        if stats.services >= 100 || stats.duration >= Duration::from_millis(100) {
            tracing::info!(
                services = stats.services,
                frontends_written = stats.frontends_written,
                frontends_deleted = stats.frontends_deleted,
                conflicts = stats.conflicts,
                took_ms = stats.duration.as_millis(),
                persist_ms = stats.persist.as_millis(),
                "load-balancer tables written"
            );
        } else if stats.services > 0 {
            tracing::debug!(
                services = stats.services,
                frontends_written = stats.frontends_written,
                frontends_deleted = stats.frontends_deleted,
                conflicts = stats.conflicts,
                "load-balancer tables written"
            );
        }
    }

    fn order<'a>(
        &self,
        r: &ReadTxn,
        names: impl IntoIterator<Item = &'a ServiceName>,
    ) -> Vec<ServiceName> {
        let mut gone = Vec::new();
        let mut live = Vec::new();
        for n in names.into_iter().cloned() {
            match self.p.service_objects.get(r, &service_object_query(&n)) {
                Some(o) => live.push((o.created, n)),
                None => gone.push(n),
            }
        }
        gone.sort();
        live.sort();
        gone.into_iter()
            .chain(live.into_iter().map(|(_, n)| n))
            .collect()
    }

    fn write(
        &self,
        st: &mut State,
        r: &ReadTxn,
        affected: HashSet<ServiceName>,
        first: bool,
    ) -> Result<SyncStats, LbError> {
        let mut w =
            self.p
                .db
                .write_txn(&[&self.p.services, &self.p.frontends, &self.p.backends])?;
        let mut stats = SyncStats::default();
        let mut released = false;
        st.backend_rows.clear();
        let order = self.order(r, &affected);
        st.explicit_ips = order
            .iter()
            .filter_map(|n| self.p.service_objects.get(r, &service_object_query(n)))
            .filter_map(|o| match o.cluster_ip {
                ClusterIpSpec::Address(ip) => Some(ip),
                _ => None,
            })
            .collect();
        for name in order {
            released |= self.process(st, &mut w, r, &name, &mut stats)?;
        }
        // A service in conflict may fit now that another let go of what it wanted.
        let mut rounds = 0;
        while released && !st.errored.is_empty() && rounds < 8 {
            released = false;
            rounds += 1;
            let retry: Vec<ServiceName> = st.errored.iter().cloned().collect();
            for name in self.order(r, &retry) {
                released |= self.process(st, &mut w, r, &name, &mut stats)?;
            }
        }
        self.flush_backends(st, &mut w)?;
        if first {
            // Drop restored ids and allocations nothing uses any more.
            let fronts: HashSet<L3n4Addr> = self.p.frontends.all(&w).map(|f| f.addr()).collect();
            let backs: HashSet<L3n4Addr> = self.p.backends.all(&w).map(|b| b.addr()).collect();
            st.dirty |= st.fe_ids.retain(|k| fronts.contains(k));
            st.dirty |= st.be_ids.retain(|k| backs.contains(k));
            let live: HashSet<ServiceName> = self
                .p
                .service_objects
                .all(r)
                .map(|s| s.service_name())
                .collect();
            let stale: Vec<ServiceName> = st
                .cluster_ips
                .keys()
                .filter(|n| !live.contains(*n))
                .cloned()
                .collect();
            for n in stale {
                if let Some(ip) = st.cluster_ips.remove(&n) {
                    st.cip_used.remove(&ip);
                    st.dirty = true;
                }
            }
            let stale: Vec<(ServiceName, String)> = st
                .node_ports
                .keys()
                .filter(|(n, _)| !live.contains(n))
                .cloned()
                .collect();
            for k in stale {
                if let Some(p) = st.node_ports.remove(&k) {
                    st.np_used.remove(&p);
                    st.dirty = true;
                }
            }
            for init in std::mem::take(&mut st.inits) {
                init.done(&mut w)?;
            }
        }
        if st.dirty {
            let t = Instant::now();
            self.persist(st)?;
            stats.persist = t.elapsed();
            st.dirty = false;
        }
        w.commit();
        stats.conflicts = st.errored.len();
        Ok(stats)
    }

    fn alloc_cluster_ip(&self, st: &mut State, name: &ServiceName) -> Option<Ipv4Addr> {
        if let Some(ip) = st.cluster_ips.get(name) {
            return Some(*ip);
        }
        let size = self.cidr_last - self.cidr_first + 1;
        let mut cand = st.cip_next.clamp(self.cidr_first, self.cidr_last);
        for _ in 0..size {
            let ip = Ipv4Addr::from(cand);
            let in_use = st.cip_used.contains(&ip)
                || st.explicit_ips.contains(&ip)
                || self.p.claims.ip_used(ip);
            cand = if cand >= self.cidr_last {
                self.cidr_first
            } else {
                cand + 1
            };
            if !in_use {
                st.cip_next = cand;
                st.cip_used.insert(ip);
                st.cluster_ips.insert(name.clone(), ip);
                st.dirty = true;
                return Some(ip);
            }
        }
        None
    }

    fn release_cluster_ip(st: &mut State, name: &ServiceName) {
        if let Some(ip) = st.cluster_ips.remove(name) {
            st.cip_used.remove(&ip);
            st.dirty = true;
        }
    }

    /// A node port for `key` of service `name`: the one it has, else a free one that is
    /// not in `avoid` (the node ports the service gives itself).
    fn alloc_node_port(
        &self,
        st: &mut State,
        name: &ServiceName,
        key: &str,
        avoid: &HashSet<u16>,
    ) -> Option<u16> {
        let k = (name.clone(), key.to_string());
        if let Some(p) = st.node_ports.get(&k).copied() {
            if !avoid.contains(&p) {
                return Some(p);
            }
            // The service now gives this port to one of its own ports: allocate another.
            st.node_ports.remove(&k);
            st.np_used.remove(&p);
            st.dirty = true;
        }
        let (lo, hi) = NODE_PORT_RANGE;
        let mut cand = st.np_next.clamp(lo, hi);
        for _ in lo..=hi {
            let port = cand;
            cand = if cand >= hi { lo } else { cand + 1 };
            let taken = st.np_used.contains(&port)
                || avoid.contains(&port)
                || [L4Proto::Tcp, L4Proto::Udp, L4Proto::Sctp]
                    .iter()
                    .any(|p| !self.p.claims.node_port_free(port, *p));
            if !taken {
                st.np_next = cand;
                st.np_used.insert(port);
                st.node_ports.insert(k, port);
                st.dirty = true;
                return Some(port);
            }
        }
        None
    }

    /// Recompute one service. Returns true when it let go of a frontend or node port.
    fn process(
        &self,
        st: &mut State,
        w: &mut WriteTxn,
        r: &ReadTxn,
        name: &ServiceName,
        stats: &mut SyncStats,
    ) -> Result<bool, LbError> {
        stats.services += 1;
        let mut released = false;
        if let Some((f, np)) = st.svc_claims.remove(name) {
            released |= self.p.claims.release(name, &f, &np);
        }
        let Some(obj) = self.p.service_objects.get(r, &service_object_query(name)) else {
            self.p.services.delete_key(w, name.key())?;
            self.remove_frontends(st, w, name, &HashSet::new(), stats)?;
            self.update_backends(st, w, name, &[])?;
            Self::release_cluster_ip(st, name);
            let stale: Vec<(ServiceName, String)> = st
                .node_ports
                .keys()
                .filter(|(n, _)| n == name)
                .cloned()
                .collect();
            for k in stale {
                if let Some(p) = st.node_ports.remove(&k) {
                    st.np_used.remove(&p);
                    st.dirty = true;
                }
            }
            st.errored.remove(name);
            st.local_services.remove(name);
            return Ok(released);
        };
        let mut error: Option<String> = None;
        // Left alone (ExternalName, another proxy's): like headless, nothing is held.
        let ignored = obj.ignored(&self.p.proxy_name);
        let headless = obj.cluster_ip == ClusterIpSpec::Headless || ignored.is_some();
        let cluster_ip = match obj.cluster_ip {
            _ if ignored.is_some() => {
                Self::release_cluster_ip(st, name);
                None
            }
            ClusterIpSpec::Headless => {
                Self::release_cluster_ip(st, name);
                None
            }
            ClusterIpSpec::Address(ip) => {
                Self::release_cluster_ip(st, name);
                Some(ip)
            }
            ClusterIpSpec::Auto => {
                let ip = self.alloc_cluster_ip(st, name);
                if ip.is_none() {
                    error = Some(format!(
                        "no free cluster IP in --service-cidr {}; delete unused services or widen the range",
                        self.p.service_cidr
                    ));
                }
                ip
            }
        };
        // Node ports: given, kept, or allocated; allocations of ports that are gone or now
        // given explicitly are released.
        let mut ports = Vec::with_capacity(obj.ports.len());
        let mut keep_keys = HashSet::new();
        let given: HashSet<u16> = obj
            .ports
            .iter()
            .filter_map(|p| p.node_port)
            .chain(obj.health_check_node_port)
            .collect();
        for sp in &obj.ports {
            let node_port = if !obj.service_type.has_node_ports() || headless {
                0
            } else if let Some(np) = sp.node_port {
                np
            } else if !obj.allocate_lb_node_ports {
                0
            } else {
                keep_keys.insert(sp.alloc_key());
                match self.alloc_node_port(st, name, &sp.alloc_key(), &given) {
                    Some(np) => np,
                    None => {
                        error.get_or_insert_with(|| {
                            format!(
                                "no free node port in {}-{}; delete unused NodePort services",
                                NODE_PORT_RANGE.0, NODE_PORT_RANGE.1
                            )
                        });
                        0
                    }
                }
            };
            ports.push(ResolvedPort {
                name: sp.name.clone(),
                port: sp.port,
                target_port: sp.target_port.clone(),
                node_port,
                protocol: sp.protocol,
            });
        }
        // healthCheckNodePort: type LoadBalancer with externalTrafficPolicy Local only.
        let mut health_check_node_port = 0;
        if obj.service_type == ServiceType::LoadBalancer && obj.ext_traffic_local && !headless {
            health_check_node_port = match obj.health_check_node_port {
                Some(p) => p,
                None => {
                    keep_keys.insert(HEALTH_CHECK_KEY.to_string());
                    self.alloc_node_port(st, name, HEALTH_CHECK_KEY, &given)
                        .unwrap_or_else(|| {
                            error.get_or_insert_with(|| {
                                format!(
                                    "no free node port in {}-{} for healthCheckNodePort; delete unused NodePort services",
                                    NODE_PORT_RANGE.0, NODE_PORT_RANGE.1
                                )
                            });
                            0
                        })
                }
            };
        }
        let stale: Vec<(ServiceName, String)> = st
            .node_ports
            .keys()
            .filter(|(n, k)| n == name && !keep_keys.contains(k))
            .cloned()
            .collect();
        for k in stale {
            if let Some(p) = st.node_ports.remove(&k) {
                st.np_used.remove(&p);
                st.dirty = true;
            }
        }
        let slices: Vec<Arc<EndpointSlice>> = self
            .p
            .slices
            .list(r, &slices_of(name))
            .map(|s| s.object())
            .collect();
        let mut pod_refs: Vec<String> = Vec::new();
        let pods = self.p.pods.clone();
        let mut named_port = |tr: &crate::kinds::TargetRef, port: &str, proto: L4Proto| {
            pod_refs.push(format!("{}/{}", tr.namespace, tr.name));
            let pods = pods.as_ref()?;
            let pod = pods.get(r, &pod_query(&tr.namespace, &tr.name))?;
            pod.named_ports
                .get(port)
                .filter(|np| np.protocol.ip_proto() == proto.number())
                .map(|np| np.port)
        };
        let ipam = self.p.ipam.clone();
        let is_local = |ip: Ipv4Addr| {
            ipam.as_ref()
                .is_some_and(|t| t.get(r, &t.primary_index().query(ip_key(ip))).is_some())
        };
        let plan = if ignored.is_some() {
            crate::plan::Plan::default()
        } else {
            plan_service(
                &obj,
                cluster_ip,
                &ports,
                &slices,
                &self.p.node,
                &mut named_port,
                &is_local,
            )
        };
        for k in pod_refs {
            st.pod_deps.entry(k).or_default().insert(name.clone());
        }
        if obj.ext_traffic_local || obj.int_traffic_local {
            st.local_services.insert(name.clone());
        } else {
            st.local_services.remove(name);
        }
        let addrs: Vec<L3n4Addr> = plan.frontends.iter().map(|f| f.addr).collect();
        let node_ports: Vec<(u16, L4Proto)> = ports
            .iter()
            .filter(|p| p.node_port != 0)
            .map(|p| (p.node_port, p.protocol))
            .chain((health_check_node_port != 0).then_some((health_check_node_port, L4Proto::Tcp)))
            .collect();
        if error.is_none() {
            error = self.conflict(name, &plan.frontends, &node_ports);
        }
        let mut frontends: Vec<Frontend> = Vec::new();
        if error.is_none() {
            self.update_backends(st, w, name, &plan.backends)?;
            for pf in &plan.frontends {
                let Some((id, fresh)) = st.fe_ids.get_or_alloc(pf.addr) else {
                    error = Some(
                        "all 65535 service ids are in use; delete unused services".to_string(),
                    );
                    break;
                };
                st.dirty |= fresh;
                let with_ids =
                    |set: &[(L3n4Addr, crate::model::BackendState)]| -> Vec<FrontendBackend> {
                        set.iter()
                            .filter_map(|(a, state)| {
                                st.be_ids.by_key.get(a).map(|id| FrontendBackend {
                                    id: *id,
                                    address: a.address,
                                    port: a.port,
                                    state: *state,
                                })
                            })
                            .collect()
                    };
                let backends = with_ids(&pf.backends);
                let internal_backends = pf.internal_backends.as_deref().map(with_ids);
                frontends.push(Frontend {
                    address: pf.addr.address,
                    port: pf.addr.port,
                    protocol: pf.addr.protocol,
                    kind: pf.kind,
                    service: name.clone(),
                    service_id: id as u16,
                    port_name: pf.port_name.clone(),
                    backends,
                    internal_backends,
                    affinity_timeout_secs: obj.affinity_timeout_secs,
                    source_ranges: if pf.kind == FrontendKind::LoadBalancer {
                        obj.source_ranges.clone()
                    } else {
                        Vec::new()
                    },
                    // Only where there are ranges: the policy alone changes nothing.
                    source_ranges_deny: pf.kind == FrontendKind::LoadBalancer
                        && obj.source_ranges_deny,
                    ext_traffic_local: obj.ext_traffic_local,
                    int_traffic_local: obj.int_traffic_local,
                    status: Status::pending(),
                });
            }
        }
        if let Some(e) = &error {
            tracing::warn!(service = %name, reason = %e, "service has no frontends");
            frontends.clear();
            self.update_backends(st, w, name, &[])?;
            self.remove_frontends(st, w, name, &HashSet::new(), stats)?;
            st.errored.insert(name.clone());
        } else {
            st.errored.remove(name);
            self.p.claims.claim(name, &addrs, &node_ports);
            st.svc_claims
                .insert(name.clone(), (addrs.clone(), node_ports));
            let keep: HashSet<L3n4Addr> = addrs.iter().copied().collect();
            self.remove_frontends(st, w, name, &keep, stats)?;
            for f in frontends {
                let old = self
                    .p
                    .frontends
                    .get(&*w, &crate::model::frontend_query(&f.addr()));
                if old.as_deref().is_some_and(|o| o.same_desired(&f)) {
                    continue;
                }
                stats.frontends_written += 1;
                self.p.frontends.insert(w, f)?;
            }
        }
        let mut fronts = if error.is_some() { Vec::new() } else { addrs };
        fronts.sort();
        let row = Service {
            name: name.clone(),
            service_type: obj.service_type,
            cluster_ip,
            cluster_ip_allocated: obj.cluster_ip == ClusterIpSpec::Auto && cluster_ip.is_some(),
            ports,
            external_ips: obj.external_ips.clone(),
            lb_ingress_ips: obj.lb_ingress_ips.clone(),
            affinity_timeout_secs: obj.affinity_timeout_secs,
            source_ranges: obj.source_ranges.clone(),
            source_ranges_deny: obj.source_ranges_deny,
            ext_traffic_local: obj.ext_traffic_local,
            health_check_node_port,
            int_traffic_local: obj.int_traffic_local,
            publish_not_ready: obj.publish_not_ready,
            frontends: fronts,
            error,
            ignored,
            external_name: obj.external_name.clone(),
        };
        let old = self.p.services.get(&*w, &service_query(name));
        if old.as_deref() != Some(&row) {
            self.p.services.insert(w, row)?;
        }
        Ok(released)
    }

    /// The first conflict of a plan with what other services hold.
    fn conflict(
        &self,
        name: &ServiceName,
        frontends: &[crate::plan::PlannedFrontend],
        node_ports: &[(u16, L4Proto)],
    ) -> Option<String> {
        for (np, proto) in node_ports {
            if let Some(owner) = self
                .p
                .claims
                .node_port_owner(*np, *proto)
                .filter(|o| o != name)
            {
                return Some(format!(
                    "nodePort {np}/{proto} is already used by service {owner}"
                ));
            }
        }
        for f in frontends {
            if let Some(owner) = self.p.claims.frontend_owner(&f.addr).filter(|o| o != name) {
                return Some(format!(
                    "{} frontend {} is already used by service {owner}",
                    f.kind.as_str(),
                    f.addr
                ));
            }
        }
        None
    }

    /// Delete the frontends of `name` not in `keep`, releasing their ids.
    fn remove_frontends(
        &self,
        st: &mut State,
        w: &mut WriteTxn,
        name: &ServiceName,
        keep: &HashSet<L3n4Addr>,
        stats: &mut SyncStats,
    ) -> Result<(), LbError> {
        let stale: Vec<Arc<Frontend>> = self
            .p
            .frontends
            .list(&*w, &frontends_of(name))
            .map(|f| f.object())
            .filter(|f| !keep.contains(&f.addr()))
            .collect();
        for f in stale {
            self.p.frontends.delete(w, &f)?;
            st.dirty |= st.fe_ids.release(&f.addr());
            stats.frontends_deleted += 1;
        }
        Ok(())
    }

    /// Make the backends table hold exactly `new` as the instances of `name`; backends no
    /// service uses are deleted and their ids released.
    fn update_backends(
        &self,
        st: &mut State,
        w: &mut WriteTxn,
        name: &ServiceName,
        new: &[PlannedBackend],
    ) -> Result<(), LbError> {
        let old = st.svc_backends.remove(name).unwrap_or_default();
        let mut grouped: BTreeMap<L3n4Addr, Vec<&PlannedBackend>> = BTreeMap::new();
        for b in new {
            grouped.entry(b.addr).or_default().push(b);
        }
        for a in old.iter().filter(|a| !grouped.contains_key(a)) {
            let slot = self.backend_row(&mut st.backend_rows, w, a);
            let Some(row) = slot.as_mut() else {
                continue;
            };
            row.instances.retain(|i| i.service != *name);
            if row.instances.is_empty() {
                *slot = None;
                st.dirty |= st.be_ids.release(a);
            }
        }
        for (a, bs) in &grouped {
            let slot = self.backend_row(&mut st.backend_rows, w, a);
            let (id, fresh) = match slot.as_ref() {
                Some(b) => (b.id, false),
                None => match st.be_ids.get_or_alloc(*a) {
                    Some(x) => x,
                    None => continue,
                },
            };
            st.dirty |= fresh;
            let mut instances = slot.take().map(|b| b.instances).unwrap_or_default();
            instances.retain(|i| i.service != *name);
            for b in bs {
                instances.push(BackendInstance {
                    service: name.clone(),
                    port_name: b.port_name.clone(),
                    condition: b.condition,
                });
            }
            instances.sort();
            instances.dedup();
            let first = bs[0];
            *slot = Some(Backend {
                id,
                address: a.address,
                port: a.port,
                protocol: a.protocol,
                node_name: first.node_name.clone(),
                pod: first.pod.clone(),
                instances,
            });
        }
        st.svc_backends
            .insert(name.clone(), grouped.keys().copied().collect());
        Ok(())
    }

    /// The pass-local copy of backend `a` (`None`: absent or to be deleted), read from the
    /// table the first time the pass touches it. A backend shared by many services is
    /// changed once per service in memory and written once per pass.
    fn backend_row<'a>(
        &self,
        rows: &'a mut HashMap<L3n4Addr, Option<Backend>>,
        w: &WriteTxn,
        a: &L3n4Addr,
    ) -> &'a mut Option<Backend> {
        rows.entry(*a).or_insert_with(|| {
            self.p
                .backends
                .get(w, &backend_query(a))
                .map(|b| (*b).clone())
        })
    }

    /// Write the backends the pass changed into the table (only those that differ).
    fn flush_backends(&self, st: &mut State, w: &mut WriteTxn) -> Result<(), LbError> {
        for (a, row) in std::mem::take(&mut st.backend_rows) {
            let current = self.p.backends.get(&*w, &backend_query(&a));
            match row {
                Some(row) => {
                    if current.as_deref() != Some(&row) {
                        self.p.backends.insert(w, row)?;
                    }
                }
                None => {
                    if let Some(cur) = current {
                        self.p.backends.delete(w, &cur)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Follow the input tables until `cancel`: sync whenever they change. Failed passes are
    /// retried after a second.
    pub async fn run(self: Arc<Self>, cancel: hive::CancellationToken) -> hive::anyhow::Result<()> {
        loop {
            let me = self.clone();
            let res = tokio::task::spawn_blocking(move || me.sync()).await?;
            match res {
                Ok((_, mut ws)) => {
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = ws.wait() => {}
                    }
                }
                Err(_) => {
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
}
