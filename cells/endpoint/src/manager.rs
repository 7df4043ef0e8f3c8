//! [`EndpointManager`]: create, delete, restore and relabel endpoints. Every mutation holds
//! one async lock, so the steps of two operations never interleave, and every change of the
//! table is persisted to `<state-dir>/endpoints.json` before the call returns.

use std::net::Ipv4Addr;
use std::sync::Arc;

use cilium_api::models::{Endpoint, EndpointChangeRequest};
use cilium_bpf::{Datapath, EndpointInfo};
use cilium_identity::{
    Identity, IdentityAllocator, Labels, namespace_security_labels, pod_security_labels,
    reserved_labels,
};
use cilium_ipam::Ipam;
use cilium_ipcache::IpcacheEntry;
use cilium_node::StateFile;
use cilium_resources::{Namespace, Pod};
use parking_lot::Mutex;
use statedb::reconciler::Status;
use statedb::{Db, Initializer, Query, Table, key_from_str, key_from_u64};
use tokio_util::sync::CancellationToken;

use crate::error::EndpointError;
use crate::netlink::{Netlink, POD_PREFIX_LEN, StepError, VerifySpec, VethSpec};
use crate::obj::{
    EndpointObj, EndpointState, INDEX_ID, INDEX_KEY, INDEX_POD, fmt_mac, host_ifname, parse_mac,
    validate,
};

/// Name of the host device (one end of a veth pair) holding the gateway address.
pub const HOST_DEVICE: &str = "cilium_host";
/// Name of the state file.
pub const STATE_FILE: &str = "endpoints.json";
/// `source` of the ipcache rows this cell writes.
pub const IPCACHE_SOURCE: &str = "endpoint";

/// Owns the endpoints: their table rows, veths, BPF entries, ipcache rows and addresses.
pub struct EndpointManager {
    db: Arc<Db>,
    table: Arc<Table<EndpointObj>>,
    ipcache: Arc<Table<IpcacheEntry>>,
    pods: Arc<Table<Pod>>,
    namespaces: Arc<Table<Namespace>>,
    identities: Arc<IdentityAllocator>,
    ipam: Arc<Ipam>,
    datapath: Arc<Datapath>,
    netlink: Netlink,
    state: StateFile,
    ops: tokio::sync::Mutex<()>,
    persist_lock: Mutex<()>,
    inits: Mutex<Vec<Initializer>>,
}

impl std::fmt::Debug for EndpointManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointManager")
            .field("state", &self.state.path())
            .finish_non_exhaustive()
    }
}

/// What a create did so far, for the undo path.
#[derive(Default)]
struct Done {
    ip: bool,
    veth: bool,
    map: bool,
    attached: bool,
}

fn step(
    obj: &EndpointObj,
    step: impl Into<String>,
    error: impl std::fmt::Display,
) -> EndpointError {
    EndpointError::Step {
        endpoint: obj.describe(),
        step: step.into(),
        error: error.to_string(),
    }
}

fn from_step(obj: &EndpointObj, e: StepError) -> EndpointError {
    step(obj, e.step, e.error)
}

/// The ipcache row of an endpoint: pod /32 → identity.
pub fn ipcache_row(ip: Ipv4Addr, identity: u32) -> IpcacheEntry {
    IpcacheEntry::new(
        ipnet::Ipv4Net::new(ip, 32).unwrap_or_default(),
        identity,
        IPCACHE_SOURCE,
    )
}

/// The security labels of an endpoint, its named ports and its service account, from its
/// Pod object and the Pod's Namespace object:
/// - Pod known: [`pod_security_labels`] (pod labels, namespace, namespace labels, service
///   account, cluster);
/// - no Pod object but K8S_POD_NAMESPACE given: [`namespace_security_labels`] (namespace,
///   namespace labels, cluster), no named ports, no service account;
/// - no namespace at all (a plain CNI attachment): the reserved `unmanaged` identity's label.
fn apply_sources(pod: Option<&Pod>, ns: Option<&Namespace>, obj: &mut EndpointObj) {
    match (pod, &obj.pod_namespace) {
        (Some(pod), _) => {
            obj.labels = pod_security_labels(pod, ns);
            obj.named_ports = pod
                .named_ports
                .iter()
                .map(|(name, p)| (name.clone(), format!("{}/{}", p.port, p.protocol.as_str())))
                .collect();
            obj.service_account = pod.service_account.clone();
        }
        (None, Some(namespace)) => {
            obj.labels = namespace_security_labels(namespace, ns);
            obj.named_ports.clear();
            obj.service_account.clear();
        }
        (None, None) => {
            obj.labels = unmanaged_labels();
            obj.named_ports.clear();
            obj.service_account.clear();
        }
    }
}

fn unmanaged_labels() -> Labels {
    reserved_labels("unmanaged")
}

impl EndpointManager {
    /// Builds the manager: starts the netlink thread, restores `endpoints.json` into the table
    /// and registers initializers on the `endpoints` and `ipcache` tables (done by
    /// [`EndpointManager::restore`]).
    #[expect(
        clippy::too_many_arguments,
        reason = "one parameter per injected dependency, as the hive provides them"
    )]
    pub fn new(
        db: Arc<Db>,
        table: Arc<Table<EndpointObj>>,
        ipcache: Arc<Table<IpcacheEntry>>,
        pods: Arc<Table<Pod>>,
        namespaces: Arc<Table<Namespace>>,
        identities: Arc<IdentityAllocator>,
        ipam: Arc<Ipam>,
        datapath: Arc<Datapath>,
        state: StateFile,
    ) -> anyhow::Result<Self> {
        let netlink = Netlink::start()
            .map_err(|e| anyhow::anyhow!("starting the netlink worker thread failed: {e}"))?;
        let restored: Vec<EndpointObj> = state.load()?.unwrap_or_default();
        let mut w = db.write_txn(&[&*table, &*ipcache])?;
        for obj in &restored {
            table.insert(&mut w, obj.clone())?;
        }
        let inits = vec![
            table.register_initializer(&mut w, "endpoint-restore")?,
            ipcache.register_initializer(&mut w, "endpoints")?,
        ];
        w.commit();
        tracing::info!(count = restored.len(), path = %state.path().display(), "endpoints restored from state");
        Ok(Self {
            db,
            table,
            ipcache,
            pods,
            namespaces,
            identities,
            ipam,
            datapath,
            netlink,
            state,
            ops: tokio::sync::Mutex::new(()),
            persist_lock: Mutex::new(()),
            inits: Mutex::new(inits),
        })
    }

    /// The `endpoints` table.
    pub fn table(&self) -> &Arc<Table<EndpointObj>> {
        &self.table
    }

    /// Looks an endpoint up by numeric id or by key.
    pub fn get(&self, id_or_key: &str) -> Option<EndpointObj> {
        let txn = self.db.read_txn();
        let q = match id_or_key.parse::<u16>() {
            Ok(id) => Query::new(INDEX_ID, key_from_u64(u64::from(id))),
            Err(_) => Query::new(INDEX_KEY, key_from_str(id_or_key)),
        };
        self.table.get(&txn, &q).map(|o| (*o).clone())
    }

    /// All endpoints, ordered by key.
    pub fn list(&self) -> Vec<EndpointObj> {
        let txn = self.db.read_txn();
        self.table.all(&txn).map(|o| (*o).clone()).collect()
    }

    fn persist(&self) -> Result<(), EndpointError> {
        let _g = self.persist_lock.lock();
        let all = self.list();
        self.state.store(&all)?;
        Ok(())
    }

    fn put_row(&self, obj: EndpointObj) -> Result<(), EndpointError> {
        let mut w = self.db.write_txn(&[&*self.table])?;
        self.table.insert(&mut w, obj)?;
        w.commit();
        self.persist()
    }

    fn lowest_free_id(&self) -> Option<u16> {
        let txn = self.db.read_txn();
        let used: std::collections::BTreeSet<u16> = self.table.all(&txn).map(|o| o.id).collect();
        (1..=u16::MAX).find(|id| !used.contains(id))
    }

    /// Creates the endpoint of one CNI attachment, or returns the existing one when the key
    /// is known with the same netns. `Ok((endpoint, true))` when it was created now.
    pub async fn create_tracked(
        &self,
        key: &str,
        req: &EndpointChangeRequest,
    ) -> Result<(Endpoint, bool), EndpointError> {
        let _g = self.ops.lock().await;
        if let Some(old) = self.get(key) {
            if old.netns != req.netns {
                return Err(EndpointError::Conflict {
                    key: key.to_string(),
                    reason: format!(
                        "already exists as endpoint {} in netns {}, not {}; delete it first",
                        old.id, old.netns, req.netns
                    ),
                });
            }
            if old.state == EndpointState::Ready {
                return Ok((old.to_api(), false));
            }
            // A leftover of an interrupted create or delete: finish removing it, start over.
            self.teardown(&old).await?;
        }
        let mtu = validate(key, req)?;
        let id = self
            .lowest_free_id()
            .ok_or_else(|| EndpointError::IdsExhausted(key.to_string()))?;
        let mut obj = EndpointObj {
            id,
            key: key.to_string(),
            container_id: req.container_id.clone(),
            netns: req.netns.clone(),
            ifname: req.ifname.clone(),
            host_ifname: host_ifname(key),
            host_ifindex: 0,
            mac: String::new(),
            host_mac: String::new(),
            ipv4: Ipv4Addr::UNSPECIFIED,
            gateway: self.ipam.gateway(),
            prefix_len: self.ipam.prefix_len(),
            mtu,
            pod_namespace: req.pod_namespace.clone().filter(|s| !s.is_empty()),
            pod_name: req.pod_name.clone().filter(|s| !s.is_empty()),
            infra_container_id: req.infra_container_id.clone(),
            identity: 0,
            labels: Default::default(),
            named_ports: Default::default(),
            service_account: String::new(),
            state: EndpointState::Creating,
            status: Status::pending(),
        };
        self.resolve_sources(&mut obj);
        obj.identity = self.allocate_identity(&obj, None)?.0;
        // The creating row reserves the id and is on disk, so a crash mid-way is cleaned up
        // at the next start.
        if let Err(e) = self.put_row(obj.clone()) {
            self.release_identity(&obj, obj.identity);
            return Err(e);
        }
        let mut done = Done::default();
        match self.plumb(&mut obj, req, &mut done).await {
            Ok(()) => {
                tracing::info!(endpoint = obj.id, key, ip = %obj.ipv4, host_ifname = %obj.host_ifname,
                    ifindex = obj.host_ifindex, "endpoint ready");
                Ok((obj.to_api(), true))
            }
            Err(e) => {
                tracing::warn!(endpoint = obj.id, key, error = %e, "endpoint creation failed; undoing");
                self.undo(&obj, &done).await;
                Err(e)
            }
        }
    }

    /// Creates (idempotently) the endpoint for `key`; see [`EndpointManager::create_tracked`].
    pub async fn create(
        &self,
        key: &str,
        req: &EndpointChangeRequest,
    ) -> Result<Endpoint, EndpointError> {
        self.create_tracked(key, req).await.map(|(e, _)| e)
    }

    async fn plumb(
        &self,
        obj: &mut EndpointObj,
        req: &EndpointChangeRequest,
        done: &mut Done,
    ) -> Result<(), EndpointError> {
        let alloc = self
            .ipam
            .allocate(&obj.key, req.requested_ipv4)
            .map_err(|source| EndpointError::Ipam {
                endpoint: obj.describe(),
                source,
            })?;
        done.ip = true;
        obj.ipv4 = alloc.ip;
        obj.gateway = alloc.gateway;

        done.veth = true;
        let info = self
            .netlink
            .create_veth(VethSpec {
                host_ifname: obj.host_ifname.clone(),
                netns: obj.netns.clone().into(),
                ifname: obj.ifname.clone(),
                mtu: obj.mtu,
                ip: obj.ipv4,
                gateway: obj.gateway,
            })
            .await
            .map_err(|e| from_step(obj, e))?;
        obj.host_ifindex = info.host_ifindex;
        obj.host_mac = fmt_mac(&info.host_mac);
        obj.mac = fmt_mac(&info.pod_mac);

        self.write_map_entry(obj)?;
        done.map = true;
        self.datapath
            .attach_endpoint(obj.host_ifindex, &obj.host_ifname)
            .map_err(|e| {
                step(
                    obj,
                    format!(
                        "attaching programs to {} (ifindex {})",
                        obj.host_ifname, obj.host_ifindex
                    ),
                    e,
                )
            })?;
        done.attached = true;

        obj.state = EndpointState::Ready;
        obj.status = Status::done();
        let mut w = self.db.write_txn(&[&*self.table, &*self.ipcache])?;
        self.table.insert(&mut w, obj.clone())?;
        self.ipcache
            .insert(&mut w, ipcache_row(obj.ipv4, obj.identity))?;
        w.commit();
        self.persist()
    }

    fn write_map_entry(&self, obj: &EndpointObj) -> Result<(), EndpointError> {
        let info = EndpointInfo {
            ifindex: obj.host_ifindex,
            ep_id: obj.id,
            flags: 0,
            mac: parse_mac(&obj.mac).unwrap_or_default(),
            node_mac: parse_mac(&obj.host_mac).unwrap_or_default(),
            sec_identity: obj.identity,
        };
        self.datapath
            .maps()
            .endpoints
            .upsert(obj.ipv4, &info)
            .map_err(|e| {
                step(
                    obj,
                    format!("writing the endpoint map entry for {}", obj.ipv4),
                    e,
                )
            })
    }

    /// Undo of a failed create: best effort, logged; the row goes away last.
    async fn undo(&self, obj: &EndpointObj, done: &Done) {
        if done.attached
            && let Err(e) = self
                .datapath
                .detach_endpoint(obj.host_ifindex, &obj.host_ifname)
        {
            tracing::warn!(endpoint = obj.id, error = %e, "undo: detaching failed");
        }
        if done.map && self.remove_map_entry(obj).is_err() {
            tracing::warn!(endpoint = obj.id, "undo: removing the map entry failed");
        }
        if done.veth
            && let Err(e) = self.netlink.delete_link(&obj.host_ifname).await
        {
            tracing::warn!(endpoint = obj.id, error = %e, "undo: deleting the veth failed");
        }
        if done.ip
            && let Err(e) = self.ipam.release_owner(&obj.key)
        {
            tracing::warn!(endpoint = obj.id, error = %e, "undo: releasing the address failed");
        }
        if let Err(e) = self.drop_rows(obj) {
            tracing::warn!(endpoint = obj.id, error = %e, "undo: removing the endpoint row failed");
        }
        self.release_identity(obj, obj.identity);
    }

    /// Fills labels, named ports and service account of `obj` from the current Pod and
    /// Namespace objects (see [`apply_sources`]).
    fn resolve_sources(&self, obj: &mut EndpointObj) {
        let txn = self.db.read_txn();
        let pod = obj.pod().and_then(|key| {
            self.pods
                .get(&txn, &self.pods.primary_index().query(key_from_str(&key)))
        });
        let ns = obj.pod_namespace.as_ref().and_then(|name| {
            self.namespaces.get(
                &txn,
                &self.namespaces.primary_index().query(key_from_str(name)),
            )
        });
        apply_sources(pod.as_deref(), ns.as_deref(), obj);
    }

    /// The identity of `obj.labels` with the endpoint key as owner.
    fn allocate_identity(
        &self,
        obj: &EndpointObj,
        preferred: Option<Identity>,
    ) -> Result<Identity, EndpointError> {
        self.identities
            .allocate_hinted(&obj.labels, &obj.key, preferred)
            .map_err(|e| step(obj, "allocating the security identity", e))
    }

    /// Drops the endpoint's reference to `identity`; logged, never fails the caller.
    fn release_identity(&self, obj: &EndpointObj, identity: u32) {
        if let Err(e) = self.identities.release(Identity(identity), &obj.key) {
            tracing::warn!(endpoint = obj.id, identity, error = %e, "releasing the security identity failed");
        }
    }

    /// Removes the map entry of `obj` if it still belongs to it.
    fn remove_map_entry(&self, obj: &EndpointObj) -> Result<(), EndpointError> {
        if obj.ipv4.is_unspecified() {
            return Ok(());
        }
        let map = &self.datapath.maps().endpoints;
        let what = || format!("removing the endpoint map entry for {}", obj.ipv4);
        match map.get(obj.ipv4).map_err(|e| step(obj, what(), e))? {
            Some(info) if info.ep_id == obj.id => {
                map.remove(obj.ipv4).map_err(|e| step(obj, what(), e))?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Deletes the endpoint row and its ipcache row in one transaction, then persists.
    fn drop_rows(&self, obj: &EndpointObj) -> Result<(), EndpointError> {
        let mut w = self.db.write_txn(&[&*self.table, &*self.ipcache])?;
        self.table.delete(&mut w, obj)?;
        if !obj.ipv4.is_unspecified() {
            let row = ipcache_row(obj.ipv4, obj.identity);
            let q = self
                .ipcache
                .primary_index()
                .query(self.ipcache.primary_key(&row));
            if let Some(cur) = self.ipcache.get(&w, &q)
                && cur.source == IPCACHE_SOURCE
            {
                self.ipcache.delete(&mut w, &row)?;
            }
        }
        w.commit();
        self.persist()
    }

    /// Tears an endpoint down: map entry, programs, veth, address, rows. Each step is
    /// idempotent, so a failed teardown can be retried; the row stays `disconnecting` until
    /// everything is gone.
    async fn teardown(&self, obj: &EndpointObj) -> Result<(), EndpointError> {
        if obj.state != EndpointState::Disconnecting {
            let mut d = obj.clone();
            d.state = EndpointState::Disconnecting;
            d.status = Status::pending();
            self.put_row(d)?;
        }
        self.remove_map_entry(obj)?;
        if obj.host_ifindex != 0 {
            self.datapath
                .detach_endpoint(obj.host_ifindex, &obj.host_ifname)
                .map_err(|e| {
                    step(
                        obj,
                        format!(
                            "detaching programs from {} (ifindex {})",
                            obj.host_ifname, obj.host_ifindex
                        ),
                        e,
                    )
                })?;
        }
        self.netlink
            .delete_link(&obj.host_ifname)
            .await
            .map_err(|e| from_step(obj, e))?;
        self.ipam
            .release_owner(&obj.key)
            .map_err(|e| step(obj, "releasing the address", e))?;
        self.drop_rows(obj)?;
        self.release_identity(obj, obj.identity);
        tracing::info!(endpoint = obj.id, key = %obj.key, ip = %obj.ipv4, "endpoint deleted");
        Ok(())
    }

    /// Deletes the endpoint with this id or key; `NotFound` when unknown (nothing to undo).
    pub async fn delete(&self, id_or_key: &str) -> Result<Endpoint, EndpointError> {
        let _g = self.ops.lock().await;
        let obj = self
            .get(id_or_key)
            .ok_or_else(|| EndpointError::NotFound(id_or_key.to_string()))?;
        self.teardown(&obj).await?;
        Ok(obj.to_api())
    }

    /// Checks the live state of the endpoint with this id or key against what was created:
    /// in the pod's namespace the interface (present, up, MAC), its address, the route to the
    /// gateway and the default route through it; on the host the veth (present, up, same
    /// ifindex) and the BPF endpoint map entry for the address (same ifindex and endpoint id).
    /// `NotFound` when unknown, `Mismatch` naming every difference, `Step` when the check
    /// itself could not run.
    pub async fn verify(&self, id_or_key: &str) -> Result<Endpoint, EndpointError> {
        // Serialized with create/delete, so a half-done operation is never reported.
        let _g = self.ops.lock().await;
        let obj = self
            .get(id_or_key)
            .ok_or_else(|| EndpointError::NotFound(id_or_key.to_string()))?;
        let mut problems = Vec::new();
        if obj.state == EndpointState::Ready {
            problems = self
                .netlink
                .verify(VerifySpec {
                    netns: obj.netns.clone().into(),
                    ifname: obj.ifname.clone(),
                    mac: parse_mac(&obj.mac),
                    ip: obj.ipv4,
                    prefix_len: POD_PREFIX_LEN,
                    gateway: obj.gateway,
                    host_ifname: obj.host_ifname.clone(),
                    host_ifindex: obj.host_ifindex,
                })
                .await
                .map_err(|e| from_step(&obj, e))?;
            problems.extend(self.verify_map_entry(&obj)?);
        } else {
            problems.push(format!("state is {}, not ready", obj.state.as_str()));
        }
        if problems.is_empty() {
            return Ok(obj.to_api());
        }
        tracing::info!(endpoint = obj.id, key = %obj.key, problems = ?problems, "endpoint verification found differences");
        Err(EndpointError::Mismatch {
            endpoint: obj.describe(),
            problems,
        })
    }

    /// The differences between the BPF endpoint map entry of `obj`'s address and `obj`.
    fn verify_map_entry(&self, obj: &EndpointObj) -> Result<Option<String>, EndpointError> {
        let ip = obj.ipv4;
        let entry = self
            .datapath
            .maps()
            .endpoints
            .get(ip)
            .map_err(|e| step(obj, format!("reading the endpoint map entry for {ip}"), e))?;
        Ok(match entry {
            None => Some(format!("the BPF endpoint map has no entry for {ip}")),
            Some(e) if e.ifindex != obj.host_ifindex || e.ep_id != obj.id => Some(format!(
                "the BPF endpoint map entry for {ip} has ifindex {} and endpoint id {}, \
                 expected ifindex {} and endpoint id {}",
                e.ifindex, e.ep_id, obj.host_ifindex, obj.id
            )),
            Some(_) => None,
        })
    }

    /// CNI GC: deletes every `cni:` endpoint whose key is not in `keep`; returns their keys.
    pub async fn gc(&self, keep: &[String]) -> Result<Vec<String>, EndpointError> {
        let _g = self.ops.lock().await;
        let keep: std::collections::BTreeSet<&str> = keep.iter().map(String::as_str).collect();
        let mut removed = Vec::new();
        for obj in self.list() {
            if obj.key.starts_with("cni:") && !keep.contains(obj.key.as_str()) {
                self.teardown(&obj).await?;
                removed.push(obj.key);
            }
        }
        Ok(removed)
    }

    /// Start: makes sure the host can route for pods (ip_forward, `cilium_host` with the
    /// gateway), then brings every restored endpoint back (map entry, programs updated in
    /// place, ipcache row) or removes it when its veth is gone, and marks the table
    /// initializers done. Flushes nothing: traffic keeps flowing throughout.
    pub async fn restore(&self) -> anyhow::Result<RestoreReport> {
        let _g = self.ops.lock().await;
        let mut report = RestoreReport::default();
        if let Err(e) = crate::netlink::set_ipv4_sysctl("ip_forward", "1") {
            report
                .errors
                .push(format!("setting net.ipv4.ip_forward=1 failed: {e}"));
        }
        if let Err(e) = self
            .netlink
            .ensure_host_device(HOST_DEVICE, self.ipam.gateway())
            .await
        {
            report.errors.push(format!(
                "creating {HOST_DEVICE} with the gateway {}: {e}",
                self.ipam.gateway()
            ));
        }
        for obj in self.list() {
            match self.restore_one(&obj).await {
                Ok(true) => report.restored += 1,
                Ok(false) => report.removed += 1,
                Err(e) => {
                    tracing::warn!(endpoint = obj.id, error = %e, "restoring endpoint failed");
                    let mut failed = obj.clone();
                    failed.status = Status::error(e.to_string());
                    let _ = self.put_row(failed);
                    report.errors.push(e.to_string());
                }
            }
        }
        // Identity references of endpoints that did not come back (deleted while the agent
        // was down, or a crash between allocating and writing the row).
        let dropped = self
            .identities
            .retain_owners("cni:", |key| self.get(key).is_some())?;
        if dropped > 0 {
            tracing::info!(
                dropped,
                "dropped identity references of endpoints that are gone"
            );
        }
        let mut w = self.db.write_txn(&[&*self.table, &*self.ipcache])?;
        for init in self.inits.lock().drain(..) {
            init.done(&mut w)?;
        }
        w.commit();
        self.persist()?;
        tracing::info!(
            restored = report.restored,
            removed = report.removed,
            errors = report.errors.len(),
            "endpoint restore done"
        );
        Ok(report)
    }

    /// `Ok(true)` restored, `Ok(false)` removed because it was incomplete or its veth is gone.
    async fn restore_one(&self, obj: &EndpointObj) -> Result<bool, EndpointError> {
        if obj.state != EndpointState::Ready {
            tracing::info!(
                endpoint = obj.id,
                state = obj.state.as_str(),
                "removing an endpoint left half-created or half-deleted"
            );
            self.teardown(obj).await?;
            return Ok(false);
        }
        let link = self
            .netlink
            .link_by_name(&obj.host_ifname)
            .await
            .map_err(|e| from_step(obj, e))?;
        let Some(link) = link else {
            tracing::info!(endpoint = obj.id, host_ifname = %obj.host_ifname,
                "veth vanished while the agent was down; removing the endpoint");
            let mut gone = obj.clone();
            // The old index may already belong to another device: do not detach by it.
            gone.host_ifindex = 0;
            self.teardown(&gone).await?;
            if obj.host_ifindex != 0 {
                for dir in [
                    cilium_bpf::Direction::Ingress,
                    cilium_bpf::Direction::Egress,
                ] {
                    let pin = self.datapath.link_pin_path(obj.host_ifindex, dir);
                    let _ = std::fs::remove_file(pin);
                }
            }
            return Ok(false);
        };
        let mut cur = obj.clone();
        if link.ifindex != obj.host_ifindex {
            cur.host_ifindex = link.ifindex;
        }
        cur.host_mac = fmt_mac(&link.mac);
        if let Err(e) = self.ipam.allocate(&obj.key, Some(obj.ipv4)) {
            tracing::warn!(endpoint = obj.id, error = %e, "re-registering the endpoint address with IPAM failed");
        }
        // Same labels give the same identity (restored from identities.json); if that file
        // lost it, the endpoint keeps its old id when free.
        self.resolve_sources(&mut cur);
        cur.identity = self
            .allocate_identity(&cur, Some(Identity(obj.identity)))?
            .0;
        if let Err(e) = self.write_map_entry(&cur) {
            if cur.identity != obj.identity {
                self.release_identity(&cur, cur.identity);
            }
            return Err(e);
        }
        self.datapath
            .attach_endpoint(cur.host_ifindex, &cur.host_ifname)
            .map_err(|e| {
                step(
                    &cur,
                    format!(
                        "re-attaching programs to {} (ifindex {})",
                        cur.host_ifname, cur.host_ifindex
                    ),
                    e,
                )
            })?;
        cur.status = Status::done();
        let mut w = self.db.write_txn(&[&*self.table, &*self.ipcache])?;
        self.table.insert(&mut w, cur.clone())?;
        self.ipcache
            .insert(&mut w, ipcache_row(cur.ipv4, cur.identity))?;
        w.commit();
        if cur.identity != obj.identity {
            self.release_identity(obj, obj.identity);
        }
        Ok(true)
    }

    /// Re-evaluates the endpoints of the pod `ns/name` against the current Pod and Namespace
    /// objects; returns how many changed.
    pub async fn relabel_pod(&self, pod_key: &str) -> Result<usize, EndpointError> {
        let _g = self.ops.lock().await;
        let txn = self.db.read_txn();
        let eps: Vec<EndpointObj> = self
            .table
            .list(&txn, &Query::new(INDEX_POD, key_from_str(pod_key)))
            .map(|o| (*o).clone())
            .collect();
        self.reevaluate(eps)
    }

    /// Re-evaluates every endpoint in namespace `ns` (its labels are part of theirs).
    pub async fn relabel_namespace(&self, ns: &str) -> Result<usize, EndpointError> {
        let _g = self.ops.lock().await;
        let txn = self.db.read_txn();
        let eps: Vec<EndpointObj> = self
            .table
            .all(&txn)
            .filter(|o| o.pod_namespace.as_deref() == Some(ns))
            .map(|o| (*o).clone())
            .collect();
        self.reevaluate(eps)
    }

    /// Recomputes labels, named ports, service account and identity of ready endpoints; for
    /// each that changed: allocate the new identity, rewrite the BPF endpoint entry, then the
    /// row and its ipcache /32 in one transaction, persist, and only then release the old
    /// identity, so the endpoint never runs without one. Caller holds `ops`.
    fn reevaluate(&self, eps: Vec<EndpointObj>) -> Result<usize, EndpointError> {
        let mut changed = 0;
        let mut first_err = None;
        for ep in eps {
            if ep.state != EndpointState::Ready {
                continue;
            }
            let mut new = ep.clone();
            self.resolve_sources(&mut new);
            if new.labels == ep.labels
                && new.named_ports == ep.named_ports
                && new.service_account == ep.service_account
                && ep.identity != 0
            {
                continue;
            }
            match self.relabel_one(&ep, new) {
                Ok(()) => changed += 1,
                Err(e) => {
                    tracing::warn!(endpoint = ep.id, error = %e, "re-evaluating the endpoint's identity failed");
                    first_err.get_or_insert(e);
                }
            }
        }
        if changed > 0 {
            self.persist()?;
        }
        match first_err {
            Some(e) if changed == 0 => Err(e),
            _ => Ok(changed),
        }
    }

    fn relabel_one(&self, old: &EndpointObj, mut new: EndpointObj) -> Result<(), EndpointError> {
        new.identity = self.allocate_identity(&new, None)?.0;
        let undo = |e: EndpointError| {
            if new.identity != old.identity {
                self.release_identity(&new, new.identity);
            }
            e
        };
        if new.identity != old.identity {
            self.write_map_entry(&new).map_err(undo)?;
        }
        let commit = || -> Result<(), EndpointError> {
            let mut w = self.db.write_txn(&[&*self.table, &*self.ipcache])?;
            self.table.insert(&mut w, new.clone())?;
            if !new.ipv4.is_unspecified() {
                self.ipcache
                    .insert(&mut w, ipcache_row(new.ipv4, new.identity))?;
            }
            w.commit();
            Ok(())
        };
        if let Err(e) = commit() {
            // Put the old identity back into the map entry before giving up.
            if new.identity != old.identity {
                let _ = self.write_map_entry(old);
            }
            return Err(undo(e));
        }
        tracing::info!(endpoint = new.id, identity = new.identity, old_identity = old.identity,
            labels = %cilium_identity::format_labels(&new.labels), "endpoint relabeled");
        if new.identity != old.identity {
            self.release_identity(old, old.identity);
        }
        Ok(())
    }

    /// Follows the pods and namespaces tables until cancelled, re-evaluating the endpoints of
    /// every changed Pod or Namespace.
    pub async fn watch_labels(&self, cancel: CancellationToken) -> anyhow::Result<()> {
        let (mut pods, mut namespaces) = {
            let mut w = self.db.write_txn(&[&*self.pods, &*self.namespaces])?;
            let p = self.pods.changes(&mut w)?;
            let n = self.namespaces.changes(&mut w)?;
            w.commit();
            (p, n)
        };
        loop {
            let txn = self.db.read_txn();
            let (pod_batch, pod_watch) = pods.next(&txn);
            let (ns_batch, ns_watch) = namespaces.next(&txn);
            let ns_names: std::collections::BTreeSet<String> = ns_batch
                .into_iter()
                .map(|c| c.object.name.clone())
                .collect();
            for name in &ns_names {
                if let Err(e) = self.relabel_namespace(name).await {
                    tracing::warn!(namespace = %name, error = %e, "relabelling endpoints failed");
                }
            }
            for ch in pod_batch {
                if ns_names.contains(&ch.object.namespace) {
                    continue;
                }
                let key = format!("{}/{}", ch.object.namespace, ch.object.name);
                if let Err(e) = self.relabel_pod(&key).await {
                    tracing::warn!(pod = %key, error = %e, "relabelling endpoints failed");
                }
            }
            tokio::select! {
                () = pod_watch.changed() => {}
                () = ns_watch.changed() => {}
                () = cancel.cancelled() => return Ok(()),
            }
        }
    }
}

/// What [`EndpointManager::restore`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// Endpoints brought back.
    pub restored: usize,
    /// Endpoints removed (veth gone, or left half-done).
    pub removed: usize,
    /// Errors (the endpoints concerned keep an error status).
    pub errors: Vec<String>,
}
