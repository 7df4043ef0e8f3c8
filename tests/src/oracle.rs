//! An independent reference model of network policy, used by the e2e tests to compute the
//! expected connectivity matrix the way the cyclonus generator does.
//!
//! It is written from the Kubernetes `networking.k8s.io/v1` NetworkPolicy API reference and
//! Cilium's documented `cilium.io/v2` CiliumNetworkPolicy semantics, over a small set of pods
//! and namespaces held in memory, and shares no code with `cells/policy` on purpose: a bug in
//! the engine must not be a bug in the expectation.
//!
//! Semantics implemented:
//! - NetworkPolicy: `podSelector` (empty = every pod of the policy's namespace), `policyTypes`
//!   (missing = Ingress, plus Egress when the policy has egress rules), ingress `from` / egress
//!   `to` peers (missing or empty = every peer; `podSelector` alone = pods of the policy's
//!   namespace; `namespaceSelector` alone = every pod of the matching namespaces; both = the
//!   matching pods of the matching namespaces; `ipBlock` = addresses in `cidr` and in no
//!   `except`, pod addresses included), `ports` (missing or empty = every port; `protocol`
//!   defaults to TCP; no `port` = every port of the protocol; `endPort` = inclusive range; a
//!   name = the destination pod's container port of that name and protocol). A pod is isolated
//!   in a direction when any policy selecting it has that type; then a flow is allowed when any
//!   rule allows it. A flow needs the source's egress and the destination's ingress.
//! - CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy: `spec`/`specs`, `endpointSelector`
//!   over security labels (pod labels, `io.kubernetes.pod.namespace`,
//!   `io.cilium.k8s.namespace.labels.*`, service account, cluster), keys with a `k8s:`/`any:`
//!   source prefix; `fromEndpoints`/`toEndpoints` scoped to the policy's namespace unless the
//!   selector names `io.kubernetes.pod.namespace`; `fromCIDR`/`toCIDR`, `fromCIDRSet`/
//!   `toCIDRSet` with `except` (matching pod addresses too); `fromEntities`/`toEntities`
//!   (`all` and `cluster` cover every pod, the others none); a rule with no peer field allows
//!   every peer when it has `toPorts` and none otherwise; `toPorts` with `port` (`"0"` or missing
//!   = any), `endPort`, `protocol` (TCP/UDP/SCTP/ANY, default ANY) or a port name;
//!   `ingressDeny`/`egressDeny` beat every allow; a direction is enforced once a selecting rule
//!   has a non-empty section for it (allow or deny) unless `enableDefaultDeny` turns that off.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde_json::Value;

/// Labels of a pod or a namespace.
pub type Labels = BTreeMap<String, String>;

/// A transport protocol a probe uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP (never probed; policies may name it).
    Sctp,
}

impl Proto {
    /// Parse a Kubernetes/Cilium protocol name (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// Upper-case name (`TCP`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A namespace of the model.
#[derive(Debug, Clone)]
pub struct ModelNamespace {
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: Labels,
}

/// A pod of the model.
#[derive(Debug, Clone)]
pub struct ModelPod {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: Labels,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Named container ports: name → (port, protocol).
    pub named_ports: BTreeMap<String, (u16, Proto)>,
    /// Its service account.
    pub service_account: String,
}

impl ModelPod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A connectivity matrix for one port and protocol: `cells[src][dst]` is true when allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    /// Port probed.
    pub port: u16,
    /// Protocol probed.
    pub proto: Proto,
    /// Pod keys, in row/column order.
    pub names: Vec<String>,
    /// `cells[src][dst]`.
    pub cells: Vec<Vec<bool>>,
}

impl Matrix {
    /// The (src, dst) pairs where `self` and `other` differ.
    pub fn diff(&self, other: &Matrix) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (i, row) in self.cells.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                if other.cells.get(i).and_then(|r| r.get(j)) != Some(v) {
                    out.push((i, j));
                }
            }
        }
        out
    }

    /// Render the matrix like cyclonus: `.` allowed, `X` blocked; with `other`, cells that
    /// differ are shown as `!` (expected allowed, observed blocked) or `?` (the reverse).
    pub fn render(&self, other: Option<&Matrix>) -> String {
        let mut s = format!(
            "{}/{} (rows: from, columns: to)\n      ",
            self.port, self.proto
        );
        for n in &self.names {
            s.push_str(&format!("{n:>5}"));
        }
        s.push('\n');
        for (i, row) in self.cells.iter().enumerate() {
            s.push_str(&format!(
                "{:>5} ",
                self.names.get(i).map_or("?", String::as_str)
            ));
            for (j, v) in row.iter().enumerate() {
                let o = other.and_then(|m| m.cells.get(i).and_then(|r| r.get(j)).copied());
                let c = match (v, o) {
                    (true, Some(false)) => "!",
                    (false, Some(true)) => "?",
                    (true, _) => ".",
                    (false, _) => "X",
                };
                s.push_str(&format!("{c:>5}"));
            }
            s.push('\n');
        }
        s
    }
}

/// Direction of a policy check, seen from the pod the policy selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Ingress,
    Egress,
}

/// A stored policy document.
#[derive(Debug, Clone)]
struct Policy {
    kind: String,
    namespace: String,
    doc: Value,
}

/// The reference model: namespaces, pods and the policies applied so far.
#[derive(Debug, Clone)]
pub struct Oracle {
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, ModelNamespace>,
    /// Pods, in matrix order.
    pub pods: Vec<ModelPod>,
    policies: BTreeMap<(String, String, String), Policy>,
}

const NP: &str = "NetworkPolicy";
const CNP: &str = "CiliumNetworkPolicy";
const CCNP: &str = "CiliumClusterwideNetworkPolicy";

/// Parse a multi-document YAML (or JSON) text into documents, skipping empty ones.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    for d in serde_yaml::Deserializer::from_str(text) {
        let v = Value::deserialize(d).map_err(|e| format!("bad YAML: {e}"))?;
        if v.is_null() {
            continue;
        }
        if v.get("kind").and_then(Value::as_str) == Some("List") {
            out.extend(v["items"].as_array().cloned().unwrap_or_default());
        } else {
            out.push(v);
        }
    }
    Ok(out)
}

fn str_of<'v>(v: &'v Value, key: &str) -> &'v str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn labels_of(v: &Value) -> Labels {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let s = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), s)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Strip a Cilium label source prefix (`k8s:`, `any:`, ...) from a selector key.
fn strip_source(key: &str) -> &str {
    for p in ["k8s:", "any:", "container:", "reserved:", "unspec:"] {
        if let Some(rest) = key.strip_prefix(p) {
            return rest;
        }
    }
    key
}

/// Whether a label selector (`matchLabels` + `matchExpressions`) matches `labels`. An empty
/// selector matches everything.
fn selector_matches(sel: &Value, labels: &Labels, strip: bool) -> bool {
    let key = |k: &str| -> String {
        if strip {
            strip_source(k).to_string()
        } else {
            k.to_string()
        }
    };
    if let Some(ml) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in ml {
            let want = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if labels.get(&key(k)) != Some(&want) {
                return false;
            }
        }
    }
    if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
        for e in exprs {
            let k = key(str_of(e, "key"));
            let values: Vec<String> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let have = labels.get(&k);
            let ok = match str_of(e, "operator") {
                "In" => have.is_some_and(|h| values.contains(h)),
                "NotIn" => have.is_none_or(|h| !values.contains(h)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                _ => false,
            };
            if !ok {
                return false;
            }
        }
    }
    true
}

/// Whether a selector names the pod-namespace label (which lifts a CNP's namespace scoping).
fn names_namespace(sel: &Value) -> bool {
    let ns_key = |k: &str| strip_source(k) == "io.kubernetes.pod.namespace";
    sel.get("matchLabels")
        .and_then(Value::as_object)
        .is_some_and(|m| m.keys().any(|k| ns_key(k)))
        || sel
            .get("matchExpressions")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|e| ns_key(str_of(e, "key"))))
}

/// Parse `a.b.c.d/len` (or a bare address = /32) into (network, prefix length).
fn parse_cidr(s: &str) -> Option<(u32, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, l.parse::<u8>().ok()?),
        None => (s, 32),
    };
    let ip: Ipv4Addr = addr.parse().ok()?;
    if len > 32 {
        return None;
    }
    Some((u32::from(ip), len))
}

fn cidr_contains(cidr: &str, ip: Ipv4Addr) -> bool {
    let Some((net, len)) = parse_cidr(cidr) else {
        return false;
    };
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    (u32::from(ip) & mask) == (net & mask)
}

fn cidr_set_matches(set: &Value, ip: Ipv4Addr) -> bool {
    let cidr = str_of(set, "cidr");
    if !cidr_contains(cidr, ip) {
        return false;
    }
    !set.get("except")
        .and_then(Value::as_array)
        .is_some_and(|ex| {
            ex.iter()
                .filter_map(Value::as_str)
                .any(|e| cidr_contains(e, ip))
        })
}

fn non_empty_array(v: Option<&Value>) -> Option<&Vec<Value>> {
    v.and_then(Value::as_array).filter(|a| !a.is_empty())
}

impl Oracle {
    /// A model with these namespaces and pods and no policy.
    pub fn new(namespaces: Vec<ModelNamespace>, pods: Vec<ModelPod>) -> Self {
        Self {
            namespaces: namespaces
                .into_iter()
                .map(|n| (n.name.clone(), n))
                .collect(),
            pods,
            policies: BTreeMap::new(),
        }
    }

    /// Number of policies held.
    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    /// Apply the documents of a YAML text: policies are created or replaced, Namespace and Pod
    /// documents replace the labels of the model's namespace or pod of that name.
    pub fn apply_yaml(&mut self, text: &str) -> Result<(), String> {
        for doc in parse_documents(text)? {
            self.apply_doc(doc)?;
        }
        Ok(())
    }

    /// Delete the policies a YAML text names (other kinds are ignored).
    pub fn delete_yaml(&mut self, text: &str) -> Result<(), String> {
        for doc in parse_documents(text)? {
            let kind = str_of(&doc, "kind").to_string();
            let meta = doc.get("metadata").cloned().unwrap_or(Value::Null);
            let ns = if kind == CCNP {
                String::new()
            } else {
                str_of(&meta, "namespace").to_string()
            };
            self.policies
                .remove(&(kind, ns, str_of(&meta, "name").to_string()));
        }
        Ok(())
    }

    /// Forget every policy.
    pub fn clear_policies(&mut self) {
        self.policies.clear();
    }

    fn apply_doc(&mut self, doc: Value) -> Result<(), String> {
        let kind = str_of(&doc, "kind").to_string();
        let meta = doc.get("metadata").cloned().unwrap_or(Value::Null);
        let name = str_of(&meta, "name").to_string();
        let labels = labels_of(meta.get("labels").unwrap_or(&Value::Null));
        match kind.as_str() {
            "Namespace" => {
                self.namespaces
                    .insert(name.clone(), ModelNamespace { name, labels });
            }
            "Pod" => {
                let ns = str_of(&meta, "namespace").to_string();
                let ns = if ns.is_empty() { "default".into() } else { ns };
                if let Some(p) = self
                    .pods
                    .iter_mut()
                    .find(|p| p.namespace == ns && p.name == name)
                {
                    p.labels = labels;
                }
            }
            NP | CNP | CCNP => {
                let ns = if kind == CCNP {
                    String::new()
                } else {
                    let ns = str_of(&meta, "namespace");
                    if ns.is_empty() { "default" } else { ns }.to_string()
                };
                self.policies.insert(
                    (kind.clone(), ns.clone(), name),
                    Policy {
                        kind,
                        namespace: ns,
                        doc,
                    },
                );
            }
            other => return Err(format!("the oracle does not know kind {other:?}")),
        }
        Ok(())
    }

    /// Security labels of a pod, as Cilium derives them.
    pub fn security_labels(&self, pod: &ModelPod) -> Labels {
        let mut l = pod.labels.clone();
        l.insert("io.kubernetes.pod.namespace".into(), pod.namespace.clone());
        if let Some(ns) = self.namespaces.get(&pod.namespace) {
            for (k, v) in &ns.labels {
                l.insert(format!("io.cilium.k8s.namespace.labels.{k}"), v.clone());
            }
        }
        l.insert(
            "io.cilium.k8s.policy.serviceaccount".into(),
            pod.service_account.clone(),
        );
        l.insert("io.cilium.k8s.policy.cluster".into(), "default".into());
        l
    }

    fn ns_labels(&self, ns: &str) -> Labels {
        self.namespaces
            .get(ns)
            .map(|n| n.labels.clone())
            .unwrap_or_default()
    }

    /// Whether a flow from pod `src` to pod `dst` (indices into `pods`) on `port`/`proto` is
    /// allowed: the source's egress and the destination's ingress must both allow it.
    pub fn allowed(&self, src: usize, dst: usize, port: u16, proto: Proto) -> bool {
        let (Some(s), Some(d)) = (self.pods.get(src), self.pods.get(dst)) else {
            return false;
        };
        // A pod reaching its own address stays on its loopback device: no network policy
        // implementation sees that traffic, so it is always allowed.
        if src == dst {
            return true;
        }
        self.direction_allows(Dir::Egress, s, s, d, d, port, proto)
            && self.direction_allows(Dir::Ingress, d, s, d, d, port, proto)
    }

    /// The expected matrix for one port and protocol.
    pub fn matrix(&self, port: u16, proto: Proto) -> Matrix {
        let n = self.pods.len();
        Matrix {
            port,
            proto,
            names: self.pods.iter().map(ModelPod::key).collect(),
            cells: (0..n)
                .map(|i| (0..n).map(|j| self.allowed(i, j, port, proto)).collect())
                .collect(),
        }
    }

    /// `subject` is the pod whose policy is checked; `src`/`dst` the flow's ends (the peer is
    /// the other end); named ports resolve on `dst`.
    #[expect(clippy::too_many_arguments, reason = "a flow has this many parts")]
    fn direction_allows(
        &self,
        dir: Dir,
        subject: &ModelPod,
        src: &ModelPod,
        dst: &ModelPod,
        port_owner: &ModelPod,
        port: u16,
        proto: Proto,
    ) -> bool {
        let peer = if dir == Dir::Ingress { src } else { dst };
        let subject_sec = self.security_labels(subject);
        let mut enforced = false;
        let mut allowed = false;
        let mut denied = false;
        for p in self.policies.values() {
            match p.kind.as_str() {
                NP => {
                    let spec = p.doc.get("spec").cloned().unwrap_or(Value::Null);
                    if p.namespace != subject.namespace
                        || !selector_matches(
                            spec.get("podSelector").unwrap_or(&Value::Null),
                            &subject.labels,
                            false,
                        )
                    {
                        continue;
                    }
                    let (types_has, rules_key, peers_key) = match dir {
                        Dir::Ingress => (self.np_has_type(&spec, "Ingress"), "ingress", "from"),
                        Dir::Egress => (self.np_has_type(&spec, "Egress"), "egress", "to"),
                    };
                    if !types_has {
                        continue;
                    }
                    enforced = true;
                    for rule in spec
                        .get(rules_key)
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default()
                    {
                        if self.np_rule_allows(
                            &rule,
                            peers_key,
                            &p.namespace,
                            peer,
                            port_owner,
                            port,
                            proto,
                        ) {
                            allowed = true;
                        }
                    }
                }
                CNP | CCNP => {
                    let specs: Vec<Value> = match p.doc.get("specs").and_then(Value::as_array) {
                        Some(a) => a.clone(),
                        None => p.doc.get("spec").cloned().into_iter().collect(),
                    };
                    let scoped_ns = (p.kind == CNP).then_some(p.namespace.as_str());
                    for spec in specs {
                        if scoped_ns.is_some_and(|ns| ns != subject.namespace) {
                            continue;
                        }
                        let Some(sel) = spec.get("endpointSelector") else {
                            continue;
                        };
                        if !selector_matches(sel, &subject_sec, true) {
                            continue;
                        }
                        let (allow_key, deny_key, dd_key) = match dir {
                            Dir::Ingress => ("ingress", "ingressDeny", "ingress"),
                            Dir::Egress => ("egress", "egressDeny", "egress"),
                        };
                        let allows = non_empty_array(spec.get(allow_key));
                        let denies = non_empty_array(spec.get(deny_key));
                        let default_deny = spec
                            .get("enableDefaultDeny")
                            .and_then(|d| d.get(dd_key))
                            .and_then(Value::as_bool)
                            .unwrap_or(true);
                        if (allows.is_some() || denies.is_some()) && default_deny {
                            enforced = true;
                        }
                        for r in allows.into_iter().flatten() {
                            if self
                                .cnp_rule_matches(r, dir, scoped_ns, peer, port_owner, port, proto)
                            {
                                allowed = true;
                            }
                        }
                        for r in denies.into_iter().flatten() {
                            if self
                                .cnp_rule_matches(r, dir, scoped_ns, peer, port_owner, port, proto)
                            {
                                denied = true;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        !denied && (!enforced || allowed)
    }

    fn np_has_type(&self, spec: &Value, ty: &str) -> bool {
        match spec.get("policyTypes").and_then(Value::as_array) {
            Some(types) => types.iter().any(|t| t.as_str() == Some(ty)),
            None => match ty {
                "Ingress" => true,
                _ => non_empty_array(spec.get("egress")).is_some(),
            },
        }
    }

    #[expect(clippy::too_many_arguments, reason = "a flow has this many parts")]
    fn np_rule_allows(
        &self,
        rule: &Value,
        peers_key: &str,
        policy_ns: &str,
        peer: &ModelPod,
        port_owner: &ModelPod,
        port: u16,
        proto: Proto,
    ) -> bool {
        let peer_ok = match non_empty_array(rule.get(peers_key)) {
            None => true,
            Some(peers) => peers
                .iter()
                .any(|p| self.np_peer_matches(p, policy_ns, peer)),
        };
        if !peer_ok {
            return false;
        }
        match non_empty_array(rule.get("ports")) {
            None => true,
            Some(ports) => ports.iter().any(|p| {
                let pp = p
                    .get("protocol")
                    .and_then(Value::as_str)
                    .map_or(Some(Proto::Tcp), Proto::parse);
                if pp != Some(proto) {
                    return false;
                }
                match p.get("port") {
                    None | Some(Value::Null) => true,
                    Some(Value::Number(n)) => {
                        let start = n.as_u64().unwrap_or(0);
                        let end = p.get("endPort").and_then(Value::as_u64).unwrap_or(start);
                        (start..=end).contains(&u64::from(port))
                    }
                    Some(Value::String(name)) => match name.parse::<u64>() {
                        Ok(n) => n == u64::from(port),
                        Err(_) => port_owner.named_ports.get(name) == Some(&(port, proto)),
                    },
                    Some(_) => false,
                }
            }),
        }
    }

    fn np_peer_matches(&self, p: &Value, policy_ns: &str, peer: &ModelPod) -> bool {
        if let Some(block) = p.get("ipBlock") {
            return cidr_set_matches(block, peer.ip);
        }
        let pod_sel = p.get("podSelector");
        let ns_sel = p.get("namespaceSelector");
        let ns_ok = match ns_sel {
            Some(s) => selector_matches(s, &self.ns_labels(&peer.namespace), false),
            None => peer.namespace == policy_ns,
        };
        let pod_ok = pod_sel.is_none_or(|s| selector_matches(s, &peer.labels, false));
        (pod_sel.is_some() || ns_sel.is_some()) && ns_ok && pod_ok
    }

    #[expect(clippy::too_many_arguments, reason = "a flow has this many parts")]
    fn cnp_rule_matches(
        &self,
        rule: &Value,
        dir: Dir,
        scoped_ns: Option<&str>,
        peer: &ModelPod,
        port_owner: &ModelPod,
        port: u16,
        proto: Proto,
    ) -> bool {
        let (eps, cidr, cidrset, ents) = match dir {
            Dir::Ingress => ("fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities"),
            Dir::Egress => ("toEndpoints", "toCIDR", "toCIDRSet", "toEntities"),
        };
        let has_peer_field = [eps, cidr, cidrset, ents]
            .iter()
            .any(|k| rule.get(*k).is_some());
        let has_ports = non_empty_array(rule.get("toPorts")).is_some();
        let peer_ok = if !has_peer_field {
            has_ports
        } else {
            let sec = self.security_labels(peer);
            let by_ep = rule.get(eps).and_then(Value::as_array).is_some_and(|sels| {
                sels.iter().any(|s| {
                    let in_scope =
                        names_namespace(s) || scoped_ns.is_none_or(|ns| ns == peer.namespace);
                    in_scope && selector_matches(s, &sec, true)
                })
            });
            let by_cidr = rule.get(cidr).and_then(Value::as_array).is_some_and(|c| {
                c.iter()
                    .filter_map(Value::as_str)
                    .any(|c| cidr_contains(c, peer.ip))
            });
            let by_set = rule
                .get(cidrset)
                .and_then(Value::as_array)
                .is_some_and(|c| c.iter().any(|s| cidr_set_matches(s, peer.ip)));
            let by_ent = rule.get(ents).and_then(Value::as_array).is_some_and(|e| {
                e.iter()
                    .filter_map(Value::as_str)
                    .any(|e| matches!(e, "all" | "cluster"))
            });
            by_ep || by_cidr || by_set || by_ent
        };
        if !peer_ok {
            return false;
        }
        match non_empty_array(rule.get("toPorts")) {
            None => true,
            Some(tp) => tp.iter().any(|t| match non_empty_array(t.get("ports")) {
                None => true,
                Some(ports) => ports
                    .iter()
                    .any(|p| cnp_port_matches(p, port_owner, port, proto)),
            }),
        }
    }
}

fn cnp_port_matches(p: &Value, port_owner: &ModelPod, port: u16, proto: Proto) -> bool {
    let pp = p.get("protocol").and_then(Value::as_str).unwrap_or("ANY");
    let proto_ok = pp.eq_ignore_ascii_case("ANY") || Proto::parse(pp) == Some(proto);
    if !proto_ok {
        return false;
    }
    let start = match p.get("port") {
        None | Some(Value::Null) => return true,
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::String(s)) => match s.parse::<u64>() {
            Ok(n) => n,
            Err(_) => {
                return port_owner.named_ports.get(s).is_some_and(|(np, npr)| {
                    *np == port && (pp.eq_ignore_ascii_case("ANY") || *npr == proto)
                });
            }
        },
        Some(_) => return false,
    };
    if start == 0 {
        return true;
    }
    let end = p.get("endPort").and_then(Value::as_u64).unwrap_or(start);
    (start..=end.max(start)).contains(&u64::from(port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The conformance model with fixed addresses 10.0.0.1.. in order x/a, x/b, ..., z/c.
    pub(crate) fn model() -> Oracle {
        let mut nss = Vec::new();
        let mut pods = Vec::new();
        let mut n = 1u8;
        for ns in ["x", "y", "z"] {
            nss.push(ModelNamespace {
                name: ns.into(),
                labels: [
                    ("ns".to_string(), ns.to_string()),
                    ("kubernetes.io/metadata.name".to_string(), ns.to_string()),
                ]
                .into_iter()
                .collect(),
            });
            for pod in ["a", "b", "c"] {
                pods.push(ModelPod {
                    namespace: ns.into(),
                    name: pod.into(),
                    labels: [("pod".to_string(), pod.to_string())].into_iter().collect(),
                    ip: Ipv4Addr::new(10, 0, 0, n),
                    named_ports: [
                        ("serve-80-tcp".to_string(), (80, Proto::Tcp)),
                        ("serve-80-udp".to_string(), (80, Proto::Udp)),
                        ("serve-81-tcp".to_string(), (81, Proto::Tcp)),
                        ("serve-81-udp".to_string(), (81, Proto::Udp)),
                    ]
                    .into_iter()
                    .collect(),
                    service_account: "default".into(),
                });
                n += 1;
            }
        }
        Oracle::new(nss, pods)
    }

    fn count(m: &Matrix) -> usize {
        m.cells.iter().flatten().filter(|v| **v).count()
    }

    const XA: usize = 0;
    const XB: usize = 1;
    const YB: usize = 4;
    const ZC: usize = 8;

    #[test]
    fn no_policy_allows_everything() {
        let o = model();
        assert_eq!(count(&o.matrix(80, Proto::Tcp)), 81);
    }

    #[test]
    fn deny_all_ingress_in_x_blocks_only_traffic_into_x() {
        let mut o = model();
        o.apply_yaml(
            "kind: NetworkPolicy\nmetadata: {name: d, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}",
        )
        .unwrap();
        let m = o.matrix(80, Proto::Tcp);
        // 27 flows into x are blocked, except each x pod reaching itself (loopback).
        assert_eq!(count(&m), 81 - 27 + 3);
        assert!(!m.cells[YB][XA] && m.cells[XA][YB] && m.cells[XA][XA]);
    }

    #[test]
    fn namespace_and_pod_selector_in_one_peer_is_an_and() {
        let mut o = model();
        o.apply_yaml(
            "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n      podSelector: {matchLabels: {pod: b}}",
        )
        .unwrap();
        let m = o.matrix(80, Proto::Tcp);
        let into_xa: Vec<usize> = (0..9).filter(|s| m.cells[*s][XA]).collect();
        assert_eq!(into_xa, vec![XA, YB], "y/b, and x/a itself over loopback");
    }

    #[test]
    fn named_ports_resolve_on_the_destination_and_default_to_tcp() {
        let mut o = model();
        o.apply_yaml(
            "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: serve-81-tcp}]",
        )
        .unwrap();
        assert!(!o.allowed(YB, XA, 80, Proto::Tcp));
        assert!(o.allowed(YB, XA, 81, Proto::Tcp));
        assert!(!o.allowed(YB, XA, 81, Proto::Udp));
    }

    #[test]
    fn policy_types_egress_only_ignores_ingress_rules() {
        let mut o = model();
        o.apply_yaml(
            "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]",
        )
        .unwrap();
        assert!(o.allowed(ZC, XA, 80, Proto::Tcp));
        assert!(!o.allowed(XA, XB, 80, Proto::Tcp));
    }

    #[test]
    fn ip_block_except_covers_pod_addresses() {
        let mut o = model();
        o.apply_yaml(
            "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/24, except: [10.0.0.5/32]}}]}]",
        )
        .unwrap();
        assert!(!o.allowed(YB, XA, 80, Proto::Tcp));
        assert!(o.allowed(ZC, XA, 80, Proto::Tcp));
    }

    #[test]
    fn cnp_endpoints_are_namespace_scoped_and_deny_wins() {
        let mut o = model();
        o.apply_yaml(
            "kind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  endpointSelector: {matchLabels: {pod: a}}\n  ingress: [{fromEndpoints: [{matchLabels: {'k8s:pod': b}}]}]",
        )
        .unwrap();
        assert!(o.allowed(XB, XA, 80, Proto::Tcp));
        assert!(!o.allowed(YB, XA, 80, Proto::Tcp));
        o.apply_yaml(
            "kind: CiliumNetworkPolicy\nmetadata: {name: q, namespace: x}\nspec:\n  endpointSelector: {}\n  ingressDeny: [{fromEndpoints: [{matchLabels: {pod: b}}]}]\n  ingress: [{fromEntities: [all]}]",
        )
        .unwrap();
        assert!(!o.allowed(XB, XA, 80, Proto::Tcp));
        assert!(o.allowed(YB, XA, 80, Proto::Tcp));
        o.delete_yaml("kind: CiliumNetworkPolicy\nmetadata: {name: q, namespace: x}")
            .unwrap();
        assert!(o.allowed(XB, XA, 80, Proto::Tcp));
    }

    #[test]
    fn cnp_without_default_deny_does_not_isolate() {
        let mut o = model();
        o.apply_yaml(
            "kind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  endpointSelector: {}\n  enableDefaultDeny: {ingress: false}\n  ingress: [{fromEndpoints: [{matchLabels: {pod: b}}]}]",
        )
        .unwrap();
        assert_eq!(count(&o.matrix(80, Proto::Tcp)), 81);
    }

    #[test]
    fn namespace_relabel_changes_the_answer() {
        let mut o = model();
        o.apply_yaml(
            "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]",
        )
        .unwrap();
        assert!(!o.allowed(YB, XA, 80, Proto::Tcp));
        o.apply_yaml("kind: Namespace\nmetadata: {name: y, labels: {ns: y, team: blue}}")
            .unwrap();
        assert!(o.allowed(YB, XA, 80, Proto::Tcp));
    }
}
