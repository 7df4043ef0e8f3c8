//! The policy repository: owns the selector cache and cookies, resolves every endpoint's
//! policy into the `endpoint_policies` table, and answers `explain` from that table.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use cilium_endpoint::{EndpointObj, INDEX_POD};
use cilium_identity::{Identity, IdentityAllocator, IdentityObj};
use ipnet::Ipv4Net;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use statedb::{ChangeIterator, Db, Initializer, Query, ReadTxn, Table, WatchSet, key_from_str};

use crate::error::PolicyError;
use crate::lookup::{Decision, lookup_enforced};
use crate::model::{Direction, EndpointPolicy, Policy, PolicyKind, RuleRef, endpoint_policy_query};
use crate::resolve::{Cookies, EndpointInfo, Resolver, SelectorCache, policy_cidrs};

/// Prefix of the owner strings of CIDR identities the policy cell holds.
pub const CIDR_OWNER_PREFIX: &str = "policy:";

/// A pod's endpoint as `explain` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodEndpoint {
    /// `namespace/name`.
    pub pod: String,
    /// Endpoint id.
    pub endpoint_id: u16,
    /// Its identity.
    pub identity: u32,
    /// Its address.
    pub ipv4: Ipv4Addr,
}

/// The answer of [`Repository::explain`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// Source.
    pub from: PodEndpoint,
    /// Destination.
    pub to: PodEndpoint,
    /// IP protocol.
    pub protocol: u8,
    /// Destination port (ICMP: type).
    pub port: u16,
    /// Egress decision of the source.
    pub egress: Decision,
    /// Ingress decision of the destination.
    pub ingress: Decision,
    /// Both allow.
    pub allowed: bool,
    /// The rule behind the egress decision.
    pub egress_rule: Option<RuleRef>,
    /// The rule behind the ingress decision.
    pub ingress_rule: Option<RuleRef>,
}

/// What one resolution pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResolveStats {
    /// Policies considered.
    pub policies: usize,
    /// Endpoints resolved.
    pub endpoints: usize,
    /// Rows of `endpoint_policies` written (changed or new).
    pub written: usize,
    /// Rows deleted (endpoint gone).
    pub deleted: usize,
    /// CIDR identities that could not be allocated or released; the pass must be retried.
    pub cidr_failures: usize,
}

struct Metrics {
    duration: prometheus::Histogram,
    writes: prometheus::IntCounter,
}

struct State {
    cache: SelectorCache,
    changes: ChangeIterator<IdentityObj>,
}

/// The policy repository, injected as `Arc<Repository>`.
pub struct Repository {
    db: Db,
    policies: Vec<(PolicyKind, Table<Policy>)>,
    endpoints: Table<EndpointObj>,
    identities: Table<IdentityObj>,
    endpoint_policies: Table<EndpointPolicy>,
    allocator: Option<Arc<IdentityAllocator>>,
    state: Mutex<State>,
    cookies: Mutex<Cookies>,
    init: Mutex<Option<Initializer>>,
    metrics: Option<Metrics>,
    /// Input revisions the last successful resolution had seen (`apply --wait`).
    processed: tokio::sync::watch::Sender<Vec<u64>>,
    /// Test seam: runs once in the next [`Repository::resolve`], right after the CIDR sync.
    #[cfg(test)]
    after_cidr_sync: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository").finish_non_exhaustive()
    }
}

impl Repository {
    /// Builds the repository over the tables; registers an initializer on
    /// `endpoint_policies` that the first full resolution completes. Without an allocator
    /// CIDR peers select only endpoints inside the block (tests).
    pub fn new(
        db: Db,
        policies: Vec<(PolicyKind, Table<Policy>)>,
        endpoints: Table<EndpointObj>,
        identities: Table<IdentityObj>,
        endpoint_policies: Table<EndpointPolicy>,
        allocator: Option<Arc<IdentityAllocator>>,
        registry: Option<&prometheus::Registry>,
    ) -> Result<Self, PolicyError> {
        let mut w = db.write_txn(&[&endpoint_policies, &identities])?;
        let changes = identities.changes(&mut w)?;
        let init = endpoint_policies.register_initializer(&mut w, "policy-resolve")?;
        w.commit();
        let metrics = registry.map(|r| {
            let duration = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new(
                "cilium_policy_resolve_duration_seconds",
                "Time to resolve every endpoint's policy once",
            ));
            let writes = prometheus::IntCounter::new(
                "cilium_policy_endpoint_updates_total",
                "Rows of endpoint_policies written because an endpoint's resolved policy changed",
            );
            match (duration, writes) {
                (Ok(d), Ok(w)) => {
                    // A second repository in the same registry (tests) shares the first's.
                    let _ = r.register(Box::new(d.clone()));
                    let _ = r.register(Box::new(w.clone()));
                    Some(Metrics {
                        duration: d,
                        writes: w,
                    })
                }
                _ => None,
            }
        });
        Ok(Self {
            db,
            policies,
            endpoints,
            identities,
            endpoint_policies,
            allocator,
            state: Mutex::new(State {
                cache: SelectorCache::new(),
                changes,
            }),
            cookies: Mutex::new(Cookies::default()),
            init: Mutex::new(Some(init)),
            metrics: metrics.flatten(),
            processed: tokio::sync::watch::Sender::new(Vec::new()),
            #[cfg(test)]
            after_cidr_sync: Mutex::new(None),
        })
    }

    /// Revisions of the resolution's input tables (policies, endpoints, identities) in `r`.
    pub fn input_revisions(&self, r: &ReadTxn) -> Vec<u64> {
        let mut v: Vec<u64> = self.policies.iter().map(|(_, t)| t.revision(r)).collect();
        v.push(self.endpoints.revision(r));
        v.push(self.identities.revision(r));
        v
    }

    /// Record that a resolution which started after `revisions` were committed succeeded.
    pub fn mark_processed(&self, revisions: Vec<u64>) {
        self.processed.send_replace(revisions);
    }

    /// The `apply --wait` stage of policy resolution.
    pub fn sync_waiter(self: &Arc<Self>) -> cilium_resources::SyncWaiter {
        let me = self.clone();
        cilium_resources::revisions_waiter(
            self.processed.subscribe(),
            move || me.input_revisions(&me.read_txn()),
            "policy resolution stopped",
        )
    }

    /// A read transaction on the database.
    pub fn read_txn(&self) -> ReadTxn {
        self.db.read_txn()
    }

    /// The `endpoint_policies` table.
    pub fn endpoint_policies(&self) -> &Table<EndpointPolicy> {
        &self.endpoint_policies
    }

    /// Every stored policy (all kinds).
    pub fn policies(&self, txn: &ReadTxn) -> Vec<Arc<Policy>> {
        let mut out = Vec::new();
        for (_, t) in &self.policies {
            out.extend(t.all(txn).map(|o| o.object()));
        }
        out
    }

    /// The rule a cookie names (cookies are stable within an agent run).
    pub fn rule_by_cookie(&self, cookie: u32) -> Option<RuleRef> {
        self.cookies.lock().rule(cookie).cloned()
    }

    /// True when every input table is initialized (restored).
    pub fn inputs_initialized(&self, txn: &ReadTxn, ws: &mut WatchSet) -> bool {
        let mut all = true;
        let mut check = |(done, w): (bool, statedb::Watch)| {
            if !done {
                all = false;
                ws.add(w);
            }
        };
        for (_, t) in &self.policies {
            check(t.initialized(txn));
        }
        check(self.endpoints.initialized(txn));
        check(self.identities.initialized(txn));
        all
    }

    /// Test seam: `f` runs once inside the next [`Repository::resolve`], after the CIDR
    /// identities were synced and before the endpoints and identities are read.
    #[cfg(test)]
    pub(crate) fn set_after_cidr_sync(&self, f: impl FnOnce() + Send + 'static) {
        *self.after_cidr_sync.lock() = Some(Box::new(f));
    }

    /// Make the policy cell's CIDR identities match the stored policies: allocate missing
    /// prefixes, release prefixes and owners no policy wants any more, in one allocator
    /// batch (one transaction, one state-file write; none when nothing differs, so the
    /// pass does not re-trigger itself). Returns how many prefixes failed (all of them when
    /// the batch failed; logged; the caller retries the pass).
    fn sync_cidrs(&self, policies: &[Arc<Policy>]) -> usize {
        let Some(alloc) = &self.allocator else {
            return 0;
        };
        let mut desired: BTreeMap<String, BTreeSet<Ipv4Net>> = BTreeMap::new();
        for p in policies {
            let cidrs: BTreeSet<Ipv4Net> = policy_cidrs(p)
                .into_iter()
                .filter(|c| c.prefix_len() > 0)
                .collect();
            if !cidrs.is_empty() {
                desired.insert(p.owner(), cidrs);
            }
        }
        // One transaction and one state-file write for the whole change; nothing is
        // written when the identities already match.
        match alloc.sync_cidr_owners(CIDR_OWNER_PREFIX, &desired) {
            Ok(sync) => sync.failed,
            Err(e) => {
                let prefixes: usize = desired.values().map(BTreeSet::len).sum();
                tracing::warn!(owners = desired.len(), prefixes, error = %e,
                    "syncing the policies' CIDR identities failed");
                prefixes.max(1)
            }
        }
    }

    /// One full resolution: CIDR identities, selector cache update, every endpoint's policy;
    /// writes only rows that changed. Returns the watches to wait on for the next pass.
    ///
    /// The policy watches come from the same snapshot as the policies the pass resolves:
    /// a policy applied or deleted while the pass runs (e.g. during the CIDR sync, which
    /// writes the identity state file) closes them, so the next pass picks it up.
    pub fn resolve(&self) -> Result<(ResolveStats, WatchSet), PolicyError> {
        let start = Instant::now();
        let mut ws = WatchSet::new();
        let txn = self.db.read_txn();
        let policies = self.policies(&txn);
        for (_, t) in &self.policies {
            ws.add(t.all_watch(&txn).1);
        }
        let cidr_failures = self.sync_cidrs(&policies);
        #[cfg(test)]
        if let Some(f) = self.after_cidr_sync.lock().take() {
            f();
        }
        let txn = self.db.read_txn();
        let (eps, w) = self.endpoints.all_watch(&txn);
        ws.add(w);
        let eps: Vec<Arc<EndpointObj>> = eps.map(|e| e.object()).collect();

        let mut state = self.state.lock();
        let State { cache, changes } = &mut *state;
        let (batch, w) = changes.next(&txn);
        ws.add(w);
        for c in batch {
            if c.deleted {
                cache.remove_identity(c.object.id);
            } else {
                cache.upsert_identity(c.object);
            }
        }
        let infos: Vec<EndpointInfo> = eps
            .iter()
            .map(|e| EndpointInfo::from_obj(e, cache.identity(e.identity).map(|o| &**o)))
            .collect();
        let mut cookies = self.cookies.lock();
        let mut resolved = Vec::with_capacity(infos.len());
        {
            let mut r = Resolver::new(cache, &mut cookies, &infos);
            for ep in &infos {
                resolved.push(r.resolve(ep, &policies));
            }
        }
        drop(cookies);
        let used: std::collections::HashSet<&crate::selector::Selector> = policies
            .iter()
            .flat_map(|p| p.specs.iter())
            .flat_map(|s| s.rules.iter())
            .flat_map(|r| r.peers.iter())
            .filter_map(|p| match p {
                crate::model::Peer::Endpoints(s) => Some(s),
                _ => None,
            })
            .collect();
        cache.retain_selectors(|s| used.contains(s));
        drop(state);

        let mut stats = ResolveStats {
            policies: policies.len(),
            endpoints: infos.len(),
            cidr_failures,
            ..Default::default()
        };
        let mut w = self.db.write_txn(&[&self.endpoint_policies])?;
        let keep: BTreeSet<u16> = resolved.iter().map(|r| r.endpoint_id).collect();
        for ep in resolved {
            let old = self
                .endpoint_policies
                .get(&w, &endpoint_policy_query(ep.endpoint_id));
            if old.as_ref().is_some_and(|o| o.same_content(&ep)) {
                continue;
            }
            self.endpoint_policies.insert(&mut w, ep)?;
            stats.written += 1;
        }
        let stale: Vec<Arc<EndpointPolicy>> = self
            .endpoint_policies
            .all(&w)
            .filter(|o| !keep.contains(&o.endpoint_id))
            .map(|o| o.object())
            .collect();
        for s in stale {
            self.endpoint_policies.delete(&mut w, &s)?;
            stats.deleted += 1;
        }
        if let Some(init) = self.init.lock().take() {
            init.done(&mut w)?;
        }
        w.commit();
        if let Some(m) = &self.metrics {
            m.duration.observe(start.elapsed().as_secs_f64());
            m.writes
                .inc_by(u64::try_from(stats.written).unwrap_or(u64::MAX));
        }
        if stats.written > 0 || stats.deleted > 0 {
            tracing::debug!(
                policies = stats.policies,
                endpoints = stats.endpoints,
                written = stats.written,
                deleted = stats.deleted,
                elapsed_ms = start.elapsed().as_millis() as u64,
                "endpoint policies resolved"
            );
        }
        Ok((stats, ws))
    }

    fn pod_endpoint(
        &self,
        txn: &ReadTxn,
        ns: &str,
        pod: &str,
    ) -> Result<Arc<EndpointObj>, PolicyError> {
        let key = format!("{ns}/{pod}");
        self.endpoints
            .list(txn, &Query::new(INDEX_POD, key_from_str(&key)))
            .map(|e| e.object())
            .next()
            .ok_or(PolicyError::UnknownPod { pod: key })
    }

    /// The resolved policy row of an endpoint (an empty, unenforced one if none yet).
    pub fn endpoint_policy(&self, txn: &ReadTxn, ep: &EndpointObj) -> EndpointPolicy {
        self.endpoint_policies
            .get(txn, &endpoint_policy_query(ep.id))
            .map(|o| (*o.object()).clone())
            .unwrap_or(EndpointPolicy {
                endpoint_id: ep.id,
                identity: ep.identity,
                ingress_enforced: false,
                egress_enforced: false,
                entries: Vec::new(),
                status: Default::default(),
            })
    }

    /// The verdict for `from` → `to` on `proto`/`port`: the source's egress decision and the
    /// destination's ingress decision, computed with [`crate::lookup`] over the same
    /// `endpoint_policies` rows the BPF maps are written from.
    pub fn explain(
        &self,
        from: (&str, &str),
        to: (&str, &str),
        port: u16,
        proto: u8,
    ) -> Result<Explanation, PolicyError> {
        let txn = self.db.read_txn();
        let src = self.pod_endpoint(&txn, from.0, from.1)?;
        let dst = self.pod_endpoint(&txn, to.0, to.1)?;
        let sp = self.endpoint_policy(&txn, &src);
        let dp = self.endpoint_policy(&txn, &dst);
        let egress = lookup_enforced(
            sp.egress_enforced,
            &sp.entries,
            Direction::Egress,
            dst.identity,
            proto,
            port,
        );
        let ingress = lookup_enforced(
            dp.ingress_enforced,
            &dp.entries,
            Direction::Ingress,
            src.identity,
            proto,
            port,
        );
        let pe = |e: &EndpointObj| PodEndpoint {
            pod: e.pod().unwrap_or_default(),
            endpoint_id: e.id,
            identity: e.identity,
            ipv4: e.ipv4,
        };
        Ok(Explanation {
            from: pe(&src),
            to: pe(&dst),
            protocol: proto,
            port,
            allowed: egress.allowed && ingress.allowed,
            egress_rule: egress.cookie.and_then(|c| self.rule_by_cookie(c)),
            ingress_rule: ingress.cookie.and_then(|c| self.rule_by_cookie(c)),
            egress,
            ingress,
        })
    }

    /// Every stored policy with the endpoints its specs select.
    pub fn policy_selections(&self) -> Vec<(Arc<Policy>, Vec<Arc<EndpointObj>>)> {
        let txn = self.db.read_txn();
        let policies = self.policies(&txn);
        let state = self.state.lock();
        let eps: Vec<(Arc<EndpointObj>, EndpointInfo)> = self
            .endpoints
            .all(&txn)
            .map(|e| {
                let e = e.object();
                let info =
                    EndpointInfo::from_obj(&e, state.cache.identity(e.identity).map(|o| &**o));
                (e, info)
            })
            .collect();
        drop(state);
        policies
            .into_iter()
            .map(|p| {
                let sel = eps
                    .iter()
                    .filter(|(_, i)| p.specs.iter().any(|s| s.subject.matches(&i.labels)))
                    .map(|(e, _)| e.clone())
                    .collect();
                (p, sel)
            })
            .collect()
    }

    /// An endpoint by numeric id or key, with its resolved policy.
    pub fn endpoint_with_policy(
        &self,
        id: &str,
    ) -> Result<(Arc<EndpointObj>, EndpointPolicy), PolicyError> {
        let txn = self.db.read_txn();
        let ep = match id.parse::<u16>() {
            Ok(n) => self
                .endpoints
                .get(
                    &txn,
                    &Query::new(
                        cilium_endpoint::INDEX_ID,
                        statedb::key_from_u64(u64::from(n)),
                    ),
                )
                .map(|o| o.object()),
            Err(_) => self
                .endpoints
                .get(
                    &txn,
                    &Query::new(cilium_endpoint::INDEX_KEY, key_from_str(id)),
                )
                .map(|o| o.object()),
        }
        .ok_or_else(|| PolicyError::UnknownEndpoint { id: id.to_string() })?;
        let p = self.endpoint_policy(&txn, &ep);
        Ok((ep, p))
    }

    /// The labels of an identity, if known.
    pub fn identity_labels(&self, id: u32) -> Option<cilium_identity::Labels> {
        let txn = self.db.read_txn();
        self.identities
            .get(&txn, &cilium_identity::id_query(Identity(id)))
            .map(|o| o.labels.clone())
    }

    /// `(ingress_enforced, egress_enforced)` of an endpoint, from `endpoint_policies`.
    pub fn enforcement(&self, endpoint_id: u16) -> Option<(bool, bool)> {
        let txn = self.db.read_txn();
        self.endpoint_policies
            .get(&txn, &endpoint_policy_query(endpoint_id))
            .map(|o| (o.ingress_enforced, o.egress_enforced))
    }
}
