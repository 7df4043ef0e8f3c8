//! The selector cache and the resolution of policies into per-endpoint entries. Pure code:
//! the cell feeds it snapshots of the tables.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use cilium_endpoint::EndpointObj;
use cilium_identity::{IdentityKind, IdentityObj};
use ipnet::Ipv4Net;
use statedb::reconciler::Status;

use crate::model::{
    Direction, EndpointPolicy, Entity, Peer, Policy, PolicyEntry, PortSpec, RuleRef,
    split_port_range,
};
use crate::parse::proto;
use crate::selector::{Labels, POD_NAMESPACE_LABEL, Selector};

/// Reserved identity numbers.
pub mod reserved {
    /// Host.
    pub const HOST: u32 = 1;
    /// World (outside the cluster, ipcache miss).
    pub const WORLD: u32 = 2;
    /// Unmanaged endpoints.
    pub const UNMANAGED: u32 = 3;
    /// Health endpoints.
    pub const HEALTH: u32 = 4;
    /// Initializing endpoints.
    pub const INIT: u32 = 5;
    /// Remote nodes.
    pub const REMOTE_NODE: u32 = 6;
    /// The API server.
    pub const KUBE_APISERVER: u32 = 7;
}

/// True if `sel` selects the identity `obj`: endpoint identities by their labels; reserved
/// identities only when the selector names a `reserved:` label; CIDR identities never.
pub fn selects(sel: &Selector, obj: &IdentityObj) -> bool {
    match obj.kind {
        IdentityKind::Cidr => false,
        IdentityKind::Reserved => sel.mentions_reserved() && sel.matches(&obj.labels),
        IdentityKind::Endpoint => sel.matches(&obj.labels),
    }
}

/// Selector → identities, kept up to date incrementally as identities come and go.
#[derive(Debug, Default)]
pub struct SelectorCache {
    identities: BTreeMap<u32, Arc<IdentityObj>>,
    selections: HashMap<Selector, BTreeSet<u32>>,
    /// CIDR identities by (network address, prefix length), so the identities inside a
    /// block are a range query, not a scan of every identity.
    cidrs: BTreeMap<(u32, u8), u32>,
}

impl SelectorCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// An identity was added or changed: update every cached selection.
    pub fn upsert_identity(&mut self, obj: Arc<IdentityObj>) {
        let id = obj.id;
        self.forget_cidr(id);
        if obj.kind == IdentityKind::Cidr
            && let Some(c) = obj.cidr
        {
            self.cidrs.insert(cidr_key(&c), id);
        }
        for (sel, set) in &mut self.selections {
            if selects(sel, &obj) {
                set.insert(id);
            } else {
                set.remove(&id);
            }
        }
        self.identities.insert(id, obj);
    }

    /// An identity was deleted.
    pub fn remove_identity(&mut self, id: u32) {
        self.forget_cidr(id);
        for set in self.selections.values_mut() {
            set.remove(&id);
        }
        self.identities.remove(&id);
    }

    /// Removes the CIDR index row of identity `id`, if it has one.
    fn forget_cidr(&mut self, id: u32) {
        if let Some(old) = self.identities.get(&id)
            && let Some(c) = old.cidr
            && self.cidrs.get(&cidr_key(&c)) == Some(&id)
        {
            self.cidrs.remove(&cidr_key(&c));
        }
    }

    /// The CIDR identities whose prefix lies inside `block` (equal included).
    pub fn cidr_identities_in(&self, block: &Ipv4Net) -> impl Iterator<Item = (Ipv4Net, u32)> {
        let block = block.trunc();
        let (first, last) = (u32::from(block.network()), u32::from(block.broadcast()));
        let min_len = block.prefix_len();
        self.cidrs
            .range((first, 0)..=(last, 32))
            .filter(move |((_, len), _)| *len >= min_len)
            .filter_map(|((addr, len), id)| {
                Ipv4Net::new(Ipv4Addr::from(*addr), *len)
                    .ok()
                    .map(|n| (n, *id))
            })
    }

    /// Every CIDR identity.
    pub fn cidr_identities(&self) -> impl Iterator<Item = u32> + '_ {
        self.cidrs.values().copied()
    }

    /// The identities `sel` selects (computed once, then maintained).
    pub fn select(&mut self, sel: &Selector) -> &BTreeSet<u32> {
        let identities = &self.identities;
        self.selections.entry(sel.clone()).or_insert_with(|| {
            identities
                .values()
                .filter(|o| selects(sel, o))
                .map(|o| o.id)
                .collect()
        })
    }

    /// Forget selections `keep` rejects (selectors no policy uses any more).
    pub fn retain_selectors(&mut self, keep: impl Fn(&Selector) -> bool) {
        self.selections.retain(|s, _| keep(s));
    }

    /// Number of cached selectors.
    pub fn selector_count(&self) -> usize {
        self.selections.len()
    }

    /// A known identity.
    pub fn identity(&self, id: u32) -> Option<&Arc<IdentityObj>> {
        self.identities.get(&id)
    }

    /// Every known identity.
    pub fn identities(&self) -> impl Iterator<Item = &Arc<IdentityObj>> {
        self.identities.values()
    }
}

fn cidr_key(c: &Ipv4Net) -> (u32, u8) {
    let c = c.trunc();
    (u32::from(c.network()), c.prefix_len())
}

/// What resolution needs to know about an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Endpoint id.
    pub id: u16,
    /// Its identity (0 = not assigned yet).
    pub identity: u32,
    /// Its security labels.
    pub labels: Labels,
    /// Its address.
    pub ipv4: Ipv4Addr,
    /// Named container ports: name → (port, IP protocol).
    pub named_ports: BTreeMap<String, (u16, u8)>,
    /// `namespace/name` of the pod.
    pub pod: Option<String>,
}

impl EndpointInfo {
    /// From an endpoint row; labels are the identity's labels when the identity is known,
    /// else the endpoint's labels plus its namespace label.
    pub fn from_obj(ep: &EndpointObj, identity: Option<&IdentityObj>) -> Self {
        let labels = match identity {
            Some(i) if i.kind == IdentityKind::Endpoint => i.labels.clone(),
            _ => {
                let mut l = ep.labels.clone();
                if let Some(ns) = &ep.pod_namespace {
                    l.entry(POD_NAMESPACE_LABEL.to_string())
                        .or_insert_with(|| ns.clone());
                }
                l
            }
        };
        let named_ports = ep
            .named_ports
            .iter()
            .filter_map(|(name, spec)| {
                let (port, p) = spec.split_once('/').unwrap_or((spec.as_str(), "TCP"));
                Some((name.clone(), (port.parse().ok()?, proto::parse(p)?)))
            })
            .collect();
        Self {
            id: ep.id,
            identity: ep.identity,
            labels,
            ipv4: ep.ipv4,
            named_ports,
            pod: ep.pod(),
        }
    }
}

/// Cookies: one per (policy, direction, rule index, deny), stable within an agent run.
#[derive(Debug, Default)]
pub struct Cookies {
    by_rule: HashMap<RuleRef, u32>,
    by_cookie: HashMap<u32, RuleRef>,
    next: u32,
}

impl Cookies {
    /// The cookie of `rule`, assigned on first use (from 1).
    pub fn cookie(&mut self, rule: &RuleRef) -> u32 {
        if let Some(c) = self.by_rule.get(rule) {
            return *c;
        }
        self.next += 1;
        let c = self.next;
        self.by_rule.insert(rule.clone(), c);
        self.by_cookie.insert(c, rule.clone());
        c
    }

    /// The rule a cookie names.
    pub fn rule(&self, cookie: u32) -> Option<&RuleRef> {
        self.by_cookie.get(&cookie)
    }
}

type EntryKey = (Direction, u32, u8, u16, u8);

/// One resolution pass over a snapshot: memoizes peer resolution across endpoints.
pub struct Resolver<'a> {
    cache: &'a mut SelectorCache,
    cookies: &'a mut Cookies,
    endpoints: &'a [EndpointInfo],
    by_identity: HashMap<u32, Vec<usize>>,
    peers: HashMap<Peer, Arc<BTreeSet<u32>>>,
}

impl<'a> Resolver<'a> {
    /// A pass over `endpoints` (all endpoints of the node).
    pub fn new(
        cache: &'a mut SelectorCache,
        cookies: &'a mut Cookies,
        endpoints: &'a [EndpointInfo],
    ) -> Self {
        let mut by_identity: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, ep) in endpoints.iter().enumerate() {
            if ep.identity != 0 {
                by_identity.entry(ep.identity).or_default().push(i);
            }
        }
        Self {
            cache,
            cookies,
            endpoints,
            by_identity,
            peers: HashMap::new(),
        }
    }

    /// The identities a peer stands for (0 = any).
    pub fn peer_identities(&mut self, peer: &Peer) -> Arc<BTreeSet<u32>> {
        if let Some(s) = self.peers.get(peer) {
            return s.clone();
        }
        let set: BTreeSet<u32> = match peer {
            Peer::Any | Peer::Entity(Entity::All) => [0].into(),
            Peer::Endpoints(sel) => self.cache.select(sel).clone(),
            Peer::Cidr { cidr, except } => {
                let outside = |n: &Ipv4Net| !except.iter().any(|e| e.contains(n));
                let mut s: BTreeSet<u32> = self
                    .cache
                    .cidr_identities_in(cidr)
                    .filter(|(c, _)| outside(c))
                    .map(|(_, id)| id)
                    .collect();
                for ep in self.endpoints {
                    if ep.identity != 0
                        && cidr.contains(&ep.ipv4)
                        && !except.iter().any(|e| e.contains(&ep.ipv4))
                    {
                        s.insert(ep.identity);
                    }
                }
                if cidr.prefix_len() == 0 {
                    s.insert(reserved::WORLD);
                }
                s
            }
            Peer::Entity(Entity::World) => {
                let mut s: BTreeSet<u32> = self.cache.cidr_identities().collect();
                s.insert(reserved::WORLD);
                s
            }
            Peer::Entity(Entity::Cluster) => {
                let mut s: BTreeSet<u32> = self
                    .cache
                    .identities()
                    .filter(|o| o.kind == IdentityKind::Endpoint)
                    .map(|o| o.id)
                    .collect();
                s.extend(self.by_identity.keys().copied());
                s.extend([
                    reserved::HOST,
                    reserved::UNMANAGED,
                    reserved::HEALTH,
                    reserved::INIT,
                    reserved::REMOTE_NODE,
                    reserved::KUBE_APISERVER,
                ]);
                s
            }
            Peer::Entity(Entity::Host) => [reserved::HOST].into(),
            Peer::Entity(Entity::RemoteNode) => [reserved::REMOTE_NODE].into(),
            Peer::Entity(Entity::KubeApiserver) => [reserved::KUBE_APISERVER].into(),
            Peer::Entity(Entity::Health) => [reserved::HEALTH].into(),
            Peer::Entity(Entity::Init) => [reserved::INIT].into(),
            Peer::Entity(Entity::Unmanaged) => [reserved::UNMANAGED].into(),
        };
        let set = Arc::new(set);
        self.peers.insert(peer.clone(), set.clone());
        set
    }

    /// Resolve the policy of one endpoint.
    pub fn resolve(&mut self, ep: &EndpointInfo, policies: &[Arc<Policy>]) -> EndpointPolicy {
        let mut enforced = [false, false];
        let mut entries: BTreeMap<EntryKey, (bool, u32)> = BTreeMap::new();
        let idx = |d: Direction| usize::from(d == Direction::Egress);
        for policy in policies {
            for spec in &policy.specs {
                if !spec.subject.matches(&ep.labels) {
                    continue;
                }
                enforced[0] |= spec.enforce_ingress;
                enforced[1] |= spec.enforce_egress;
                for rule in &spec.rules {
                    let cookie = self.cookies.cookie(&RuleRef {
                        kind: policy.kind,
                        namespace: policy.namespace.clone(),
                        name: policy.name.clone(),
                        direction: rule.direction,
                        rule_index: rule.index,
                        deny: rule.deny,
                    });
                    let mut ids = BTreeSet::new();
                    for p in &rule.peers {
                        ids.extend(self.peer_identities(p).iter().copied());
                    }
                    if ids.contains(&0) {
                        ids = [0].into();
                    }
                    let mut add = |identity: u32, protocol: u8, port: u16, len: u8| {
                        let key = (rule.direction, identity, protocol, port, len);
                        let new = (rule.deny, cookie);
                        entries
                            .entry(key)
                            .and_modify(|old| {
                                // Deny wins; among equals the lowest cookie.
                                if (new.0 && !old.0) || (new.0 == old.0 && new.1 < old.1) {
                                    *old = new;
                                }
                            })
                            .or_insert(new);
                    };
                    if rule.ports.is_empty() {
                        for &id in &ids {
                            add(id, proto::ANY, 0, 0);
                        }
                        continue;
                    }
                    for l4 in &rule.ports {
                        match &l4.port {
                            PortSpec::Any => {
                                for &id in &ids {
                                    add(id, l4.protocol, 0, 0);
                                }
                            }
                            PortSpec::Range { first, last } => {
                                for (port, len) in split_port_range(*first, *last) {
                                    for &id in &ids {
                                        add(id, l4.protocol, port, len);
                                    }
                                }
                            }
                            PortSpec::Named(name) => {
                                let proto_ok =
                                    |p: u8| l4.protocol == proto::ANY || l4.protocol == p;
                                match rule.direction {
                                    // Named ports of the endpoint itself (the destination).
                                    Direction::Ingress => {
                                        if let Some(&(port, p)) = ep.named_ports.get(name)
                                            && proto_ok(p)
                                        {
                                            for &id in &ids {
                                                add(id, p, port, 16);
                                            }
                                        }
                                    }
                                    // Named ports of the selected peers' endpoints.
                                    Direction::Egress => {
                                        for &id in &ids {
                                            let candidates: Vec<usize> = if id == 0 {
                                                (0..self.endpoints.len()).collect()
                                            } else {
                                                self.by_identity
                                                    .get(&id)
                                                    .cloned()
                                                    .unwrap_or_default()
                                            };
                                            for i in candidates {
                                                let peer = &self.endpoints[i];
                                                if peer.identity == 0 {
                                                    continue;
                                                }
                                                if let Some(&(port, p)) = peer.named_ports.get(name)
                                                    && proto_ok(p)
                                                {
                                                    add(peer.identity, p, port, 16);
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        // A direction with deny entries but no enforcing policy (enableDefaultDeny: false
        // everywhere) is enforced with an implicit allow-all (cookie 0), so the denies bite.
        for d in [Direction::Ingress, Direction::Egress] {
            let has_deny = entries.iter().any(|(k, v)| k.0 == d && v.0);
            if !enforced[idx(d)] && has_deny {
                enforced[idx(d)] = true;
                entries.entry((d, 0, 0, 0, 0)).or_insert((false, 0));
            }
        }
        let entries = entries
            .into_iter()
            .filter(|(k, _)| enforced[idx(k.0)])
            .map(
                |((direction, identity, protocol, port, port_prefix_len), (deny, cookie))| {
                    PolicyEntry {
                        direction,
                        identity,
                        protocol,
                        port,
                        port_prefix_len,
                        deny,
                        cookie,
                    }
                },
            )
            .collect();
        EndpointPolicy {
            endpoint_id: ep.id,
            identity: ep.identity,
            ingress_enforced: enforced[0],
            egress_enforced: enforced[1],
            entries,
            status: Status::pending(),
        }
    }
}

/// The CIDR prefixes (blocks and excepts) a policy needs node-local identities for.
pub fn policy_cidrs(policy: &Policy) -> BTreeSet<Ipv4Net> {
    let mut out = BTreeSet::new();
    for spec in &policy.specs {
        for rule in &spec.rules {
            for p in &rule.peers {
                if let Peer::Cidr { cidr, except } = p {
                    out.insert(*cidr);
                    out.extend(except.iter().copied());
                }
            }
        }
    }
    out
}
