//! Validation and conversion of the three policy kinds into the internal model
//! ([`Policy`]). Every problem is reported with the field path; unsupported fields (L7
//! rules, FQDNs, services, ...) are errors, never silently ignored.

use std::collections::BTreeSet;

use cilium_resources::{Document, FieldError, Fields, type_name, validate_port_name};
use ipnet::Ipv4Net;
use serde_json::{Map, Value};

use crate::model::{Direction, Entity, L4, Peer, Policy, PolicyKind, PolicySpec, PortSpec, Rule};
use crate::selector::{
    NAMESPACE_LABELS_PREFIX, Operator, POD_NAMESPACE_LABEL, Requirement, Selector, strip_source,
};

/// IP protocol numbers.
pub mod proto {
    /// Any protocol.
    pub const ANY: u8 = 0;
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP.
    pub const SCTP: u8 = 132;

    /// `TCP`, `UDP`, `SCTP`, `ICMP`, `ANY`, or the number.
    pub fn name(p: u8) -> String {
        match p {
            ANY => "ANY".into(),
            ICMP => "ICMP".into(),
            TCP => "TCP".into(),
            UDP => "UDP".into(),
            ICMPV6 => "ICMPv6".into(),
            SCTP => "SCTP".into(),
            n => n.to_string(),
        }
    }

    /// Parse a protocol name (case-insensitive) or number.
    pub fn parse(s: &str) -> Option<u8> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(TCP),
            "UDP" => Some(UDP),
            "SCTP" => Some(SCTP),
            "ICMP" => Some(ICMP),
            "ICMPV6" => Some(ICMPV6),
            "ANY" => Some(ANY),
            other => other.parse().ok(),
        }
    }
}

/// Rejects keys of `obj` not in `allowed`; `unsupported` keys get their own reason.
fn check_keys(
    f: &mut Fields,
    obj: &Map<String, Value>,
    path: &str,
    allowed: &[&str],
    unsupported: &[(&str, &str)],
) {
    for k in obj.keys() {
        if allowed.contains(&k.as_str()) {
            continue;
        }
        let p = join(path, k);
        match unsupported.iter().find(|(u, _)| *u == k) {
            Some((_, why)) => f.error(p, format!("not supported: {why}")),
            None => f.error(
                p,
                format!("unknown field; expected one of: {}", allowed.join(", ")),
            ),
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// An object field that must be an object when present.
fn obj<'a>(f: &mut Fields, v: Option<&'a Value>, path: &str) -> Option<&'a Map<String, Value>> {
    f.object(v, path)
}

/// A label selector (`matchLabels`, `matchExpressions`) into requirements.
fn label_selector(f: &mut Fields, v: &Value, path: &str) -> Option<Vec<Requirement>> {
    let before = f.errors.len();
    let Some(m) = obj(f, Some(v), path) else {
        if v.is_null() {
            return Some(Vec::new());
        }
        return None;
    };
    check_keys(f, m, path, &["matchLabels", "matchExpressions"], &[]);
    let mut reqs = Vec::new();
    let ml_path = join(path, "matchLabels");
    if let Some(ml) = obj(f, m.get("matchLabels").filter(|v| !v.is_null()), &ml_path) {
        for (k, v) in ml {
            let p = format!("{ml_path}[{k}]");
            if strip_source(k).is_empty() {
                f.error(&p, "label key must not be empty");
                continue;
            }
            match v {
                Value::String(s) => reqs.push(Requirement::equals(k, s)),
                Value::Null => reqs.push(Requirement::equals(k, "")),
                other => f.error(
                    &p,
                    format!("must be a string, got {} (quote it)", type_name(other)),
                ),
            }
        }
    }
    let me_path = join(path, "matchExpressions");
    let exprs = f.list(m.get("matchExpressions"), &me_path);
    for (i, e) in exprs.iter().enumerate() {
        let p = format!("{me_path}[{i}]");
        let Some(e) = obj(f, Some(e), &p) else {
            continue;
        };
        check_keys(f, e, &p, &["key", "operator", "values"], &[]);
        let key = f.string(e.get("key"), &join(&p, "key"));
        let op = f.string(e.get("operator"), &join(&p, "operator"));
        let values = f.list(e.get("values"), &join(&p, "values"));
        let mut vals = BTreeSet::new();
        for (j, v) in values.iter().enumerate() {
            match v {
                Value::String(s) => {
                    vals.insert(s.clone());
                }
                other => f.error(
                    format!("{p}.values[{j}]"),
                    format!("must be a string, got {}", type_name(other)),
                ),
            }
        }
        let Some(key) = key.filter(|k| !strip_source(k).is_empty()) else {
            f.error(join(&p, "key"), "required");
            continue;
        };
        let op = match op.as_deref() {
            Some("In") => Operator::In,
            Some("NotIn") => Operator::NotIn,
            Some("Exists") => Operator::Exists,
            Some("DoesNotExist") => Operator::DoesNotExist,
            Some(other) => {
                f.error(
                    join(&p, "operator"),
                    format!("must be In, NotIn, Exists or DoesNotExist, got {other:?}"),
                );
                continue;
            }
            None => {
                f.error(join(&p, "operator"), "required");
                continue;
            }
        };
        match op {
            Operator::In | Operator::NotIn if vals.is_empty() => {
                f.error(join(&p, "values"), "must not be empty for In and NotIn");
                continue;
            }
            Operator::Exists | Operator::DoesNotExist if !vals.is_empty() => {
                f.error(
                    join(&p, "values"),
                    "must be empty for Exists and DoesNotExist",
                );
                continue;
            }
            _ => {}
        }
        reqs.push(Requirement {
            key: strip_source(&key).to_string(),
            op,
            values: vals,
        });
    }
    (f.errors.len() == before).then_some(reqs)
}

/// Requirements on namespace labels become requirements on the pod's
/// `io.cilium.k8s.namespace.labels.<key>` labels.
fn namespace_requirements(reqs: Vec<Requirement>) -> Vec<Requirement> {
    reqs.into_iter()
        .map(|r| Requirement {
            key: format!("{NAMESPACE_LABELS_PREFIX}{}", r.key),
            ..r
        })
        .collect()
}

fn ns_scope(namespace: &str) -> Requirement {
    Requirement::equals(POD_NAMESPACE_LABEL, namespace)
}

fn parse_cidr(f: &mut Fields, v: Option<&Value>, path: &str) -> Option<Ipv4Net> {
    let s = match v {
        None => {
            f.error(path, "required");
            return None;
        }
        v => f.string(v, path)?,
    };
    if s.contains(':') {
        f.error(
            path,
            format!("{s:?}: IPv6 is not supported (the datapath is IPv4-only)"),
        );
        return None;
    }
    let net = s
        .parse::<Ipv4Net>()
        .or_else(|_| s.parse::<std::net::Ipv4Addr>().map(Ipv4Net::from));
    match net {
        Ok(n) => Some(n.trunc()),
        Err(_) => {
            f.error(path, format!("{s:?} is not an IPv4 CIDR like 10.0.0.0/8"));
            None
        }
    }
}

fn cidr_set(f: &mut Fields, v: &Value, path: &str) -> Option<Peer> {
    let m = obj(f, Some(v), path)?;
    check_keys(
        f,
        m,
        path,
        &["cidr", "except"],
        &[(
            "cidrGroupRef",
            "CiliumCIDRGroup objects are not supported; write the CIDRs",
        )],
    );
    let cidr = parse_cidr(
        f,
        m.get("cidr").filter(|v| !v.is_null()),
        &join(path, "cidr"),
    )?;
    let mut except = Vec::new();
    for (i, e) in f
        .list(m.get("except"), &join(path, "except"))
        .iter()
        .enumerate()
    {
        let p = format!("{path}.except[{i}]");
        if let Some(n) = parse_cidr(f, Some(e), &p) {
            if !cidr.contains(&n) || n.prefix_len() <= cidr.prefix_len() {
                f.error(&p, format!("{n} must be strictly inside {cidr}"));
                continue;
            }
            except.push(n);
        }
    }
    Some(Peer::Cidr { cidr, except })
}

/// Incrementing rule indexes per (direction, deny), across specs.
#[derive(Default)]
struct Counters([usize; 4]);

impl Counters {
    fn next(&mut self, d: Direction, deny: bool) -> usize {
        let i = usize::from(d == Direction::Egress) * 2 + usize::from(deny);
        let n = self.0[i];
        self.0[i] += 1;
        n
    }
}

// ---------------------------------------------------------------------------------------
// NetworkPolicy
// ---------------------------------------------------------------------------------------

fn np_port(f: &mut Fields, v: &Value, path: &str) -> Option<L4> {
    let m = obj(f, Some(v), path)?;
    check_keys(f, m, path, &["protocol", "port", "endPort"], &[]);
    let before = f.errors.len();
    let protocol = match f
        .string(m.get("protocol"), &join(path, "protocol"))
        .as_deref()
    {
        None | Some("TCP") => proto::TCP,
        Some("UDP") => proto::UDP,
        Some("SCTP") => proto::SCTP,
        Some(other) => {
            f.error(
                join(path, "protocol"),
                format!("must be TCP, UDP or SCTP, got {other:?}"),
            );
            return None;
        }
    };
    let end_path = join(path, "endPort");
    let end = f.int(m.get("endPort"), &end_path, 1, 65535);
    let port = match m.get("port").filter(|v| !v.is_null()) {
        None => {
            if end.is_some() {
                f.error(&end_path, "requires a numeric port");
            }
            PortSpec::Any
        }
        Some(Value::String(s)) => match s.parse::<u16>() {
            Ok(p) if p > 0 => PortSpec::Range { first: p, last: p },
            _ => {
                if let Err(r) = validate_port_name(s) {
                    f.error(join(path, "port"), r);
                }
                if end.is_some() {
                    f.error(&end_path, "requires a numeric port, not a named one");
                }
                PortSpec::Named(s.clone())
            }
        },
        Some(v) => {
            let p = f.int(Some(v), &join(path, "port"), 1, 65535)?;
            let first = u16::try_from(p).ok()?;
            let last = match end {
                Some(e) if e < p => {
                    f.error(&end_path, format!("must be >= port {p}, got {e}"));
                    first
                }
                Some(e) => u16::try_from(e).ok()?,
                None => first,
            };
            PortSpec::Range { first, last }
        }
    };
    (f.errors.len() == before).then_some(L4 { protocol, port })
}

fn np_peer(f: &mut Fields, v: &Value, path: &str, namespace: &str) -> Option<Peer> {
    let m = obj(f, Some(v), path)?;
    check_keys(
        f,
        m,
        path,
        &["podSelector", "namespaceSelector", "ipBlock"],
        &[],
    );
    let pod = m.get("podSelector").filter(|v| !v.is_null());
    let ns = m.get("namespaceSelector").filter(|v| !v.is_null());
    let ip = m.get("ipBlock").filter(|v| !v.is_null());
    if let Some(ip) = ip {
        if pod.is_some() || ns.is_some() {
            f.error(
                path,
                "ipBlock cannot be combined with podSelector or namespaceSelector in one peer",
            );
            return None;
        }
        return cidr_set(f, ip, &join(path, "ipBlock"));
    }
    let pod_reqs = match pod {
        Some(p) => Some(label_selector(f, p, &join(path, "podSelector"))?),
        None => None,
    };
    let ns_reqs = match ns {
        Some(n) => Some(label_selector(f, n, &join(path, "namespaceSelector"))?),
        None => None,
    };
    let sel = match (pod_reqs, ns_reqs) {
        (None, None) => {
            f.error(
                path,
                "must set one of podSelector, namespaceSelector or ipBlock",
            );
            return None;
        }
        (Some(p), None) => Selector::new(p).and([ns_scope(namespace)]),
        (p, Some(n)) => {
            let mut r = p.unwrap_or_default();
            r.extend(namespace_requirements(n));
            r.push(Requirement::exists(POD_NAMESPACE_LABEL));
            Selector::new(r)
        }
    };
    Some(Peer::Endpoints(sel))
}

fn np_rules(
    f: &mut Fields,
    list: &[Value],
    path: &str,
    direction: Direction,
    namespace: &str,
) -> Vec<Rule> {
    let peers_key = match direction {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    };
    let mut rules = Vec::new();
    for (i, r) in list.iter().enumerate() {
        let rpath = format!("{path}[{i}]");
        let Some(m) = obj(f, Some(r), &rpath) else {
            continue;
        };
        check_keys(f, m, &rpath, &[peers_key, "ports"], &[]);
        let peer_list = f.list(m.get(peers_key), &join(&rpath, peers_key));
        let mut peers = Vec::new();
        for (j, p) in peer_list.iter().enumerate() {
            if let Some(p) = np_peer(f, p, &format!("{rpath}.{peers_key}[{j}]"), namespace) {
                peers.push(p);
            }
        }
        if peer_list.is_empty() {
            // No `from`/`to`: every peer, inside and outside the cluster.
            peers.push(Peer::Any);
        }
        let mut ports = Vec::new();
        for (j, p) in f
            .list(m.get("ports"), &join(&rpath, "ports"))
            .iter()
            .enumerate()
        {
            if let Some(p) = np_port(f, p, &format!("{rpath}.ports[{j}]")) {
                ports.push(p);
            }
        }
        rules.push(Rule {
            direction,
            deny: false,
            index: i,
            path: rpath,
            peers,
            ports,
        });
    }
    rules
}

/// Convert a `networking.k8s.io/v1` NetworkPolicy document.
pub fn parse_network_policy(doc: &Document) -> Result<Policy, Vec<FieldError>> {
    let mut f = Fields::default();
    let namespace = doc.namespace.clone().unwrap_or_default();
    if let Some(top) = doc.value.as_object() {
        check_keys(
            &mut f,
            top,
            "",
            &["apiVersion", "kind", "metadata", "spec", "status"],
            &[],
        );
    }
    let spec_v = Fields::get(&doc.value, "spec");
    let Some(spec) = obj(&mut f, spec_v, "spec") else {
        if spec_v.is_none() {
            f.error("spec", "required");
        }
        return Err(f.errors);
    };
    check_keys(
        &mut f,
        spec,
        "spec",
        &["podSelector", "policyTypes", "ingress", "egress"],
        &[],
    );
    let subject = match spec.get("podSelector") {
        None => {
            f.error(
                "spec.podSelector",
                "required (use {} to select every pod of the namespace)",
            );
            None
        }
        Some(v) => label_selector(&mut f, v, "spec.podSelector"),
    }
    .map(|r| Selector::new(r).and([ns_scope(&namespace)]));
    let ingress = f.list(spec.get("ingress"), "spec.ingress");
    let egress = f.list(spec.get("egress"), "spec.egress");
    let types = f.list(spec.get("policyTypes"), "spec.policyTypes");
    let (mut enforce_ingress, mut enforce_egress) = (false, false);
    for (i, t) in types.iter().enumerate() {
        match t.as_str() {
            Some("Ingress") => enforce_ingress = true,
            Some("Egress") => enforce_egress = true,
            _ => f.error(
                format!("spec.policyTypes[{i}]"),
                format!("must be Ingress or Egress, got {t}"),
            ),
        }
    }
    if types.is_empty() {
        enforce_ingress = true;
        enforce_egress = !egress.is_empty();
    }
    let mut rules = Vec::new();
    // Rules of a direction the policy does not apply to are ignored, as Kubernetes does.
    let ing = np_rules(
        &mut f,
        ingress,
        "spec.ingress",
        Direction::Ingress,
        &namespace,
    );
    let eg = np_rules(&mut f, egress, "spec.egress", Direction::Egress, &namespace);
    if enforce_ingress {
        rules.extend(ing);
    }
    if enforce_egress {
        rules.extend(eg);
    }
    match subject {
        Some(subject) if f.errors.is_empty() => Ok(Policy {
            kind: PolicyKind::NetworkPolicy,
            namespace,
            name: doc.name.clone(),
            specs: vec![PolicySpec {
                subject,
                enforce_ingress,
                enforce_egress,
                rules,
            }],
            source: Value::Object(spec.clone()),
        }),
        _ => Err(f.errors),
    }
}

// ---------------------------------------------------------------------------------------
// CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy
// ---------------------------------------------------------------------------------------

const L7_UNSUPPORTED: &str = "L7 rules are not supported; only L3/L4 policy is enforced";

fn icmp_type(v: &Value, family: u8) -> Option<u16> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .filter(|n| *n <= 255)
            .and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => {
            if let Ok(n) = s.parse::<u16>() {
                return (n <= 255).then_some(n);
            }
            let v4 = [
                ("EchoReply", 0),
                ("DestinationUnreachable", 3),
                ("Redirect", 5),
                ("EchoRequest", 8),
                ("RouterAdvertisement", 9),
                ("RouterSelection", 10),
                ("TimeExceeded", 11),
                ("ParameterProblem", 12),
                ("Timestamp", 13),
                ("TimestampReply", 14),
            ];
            let v6 = [
                ("DestinationUnreachable", 1),
                ("PacketTooBig", 2),
                ("TimeExceeded", 3),
                ("ParameterProblem", 4),
                ("EchoRequest", 128),
                ("EchoReply", 129),
                ("RouterSolicitation", 133),
                ("RouterAdvertisement", 134),
                ("NeighborSolicitation", 135),
                ("NeighborAdvertisement", 136),
            ];
            let table: &[(&str, u16)] = if family == proto::ICMP { &v4 } else { &v6 };
            table.iter().find(|(n, _)| *n == s).map(|(_, t)| *t)
        }
        _ => None,
    }
}

fn cnp_icmps(f: &mut Fields, list: &[Value], path: &str, out: &mut Vec<L4>) {
    for (i, v) in list.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some(m) = obj(f, Some(v), &p) else {
            continue;
        };
        check_keys(f, m, &p, &["fields"], &[]);
        for (j, fv) in f
            .list(m.get("fields"), &join(&p, "fields"))
            .iter()
            .enumerate()
        {
            let fp = format!("{p}.fields[{j}]");
            let Some(fm) = obj(f, Some(fv), &fp) else {
                continue;
            };
            check_keys(f, fm, &fp, &["type", "family"], &[]);
            let family = match f.string(fm.get("family"), &join(&fp, "family")).as_deref() {
                None | Some("IPv4") => proto::ICMP,
                Some("IPv6") => proto::ICMPV6,
                Some(other) => {
                    f.error(
                        join(&fp, "family"),
                        format!("must be IPv4 or IPv6, got {other:?}"),
                    );
                    continue;
                }
            };
            let Some(t) = fm.get("type").filter(|v| !v.is_null()) else {
                f.error(join(&fp, "type"), "required");
                continue;
            };
            match icmp_type(t, family) {
                Some(t) => out.push(L4 {
                    protocol: family,
                    port: PortSpec::Range { first: t, last: t },
                }),
                None => f.error(
                    join(&fp, "type"),
                    format!("must be an ICMP type 0-255 or a name like EchoRequest, got {t}"),
                ),
            }
        }
    }
}

fn cnp_port(f: &mut Fields, v: &Value, path: &str) -> Option<L4> {
    let m = obj(f, Some(v), path)?;
    check_keys(f, m, path, &["port", "endPort", "protocol"], &[]);
    let before = f.errors.len();
    let protocol = match f
        .string(m.get("protocol"), &join(path, "protocol"))
        .as_deref()
    {
        None | Some("ANY") | Some("") => proto::ANY,
        Some("TCP") => proto::TCP,
        Some("UDP") => proto::UDP,
        Some("SCTP") => proto::SCTP,
        Some(other) => {
            f.error(
                join(path, "protocol"),
                format!("must be TCP, UDP, SCTP or ANY, got {other:?}"),
            );
            return None;
        }
    };
    let end_path = join(path, "endPort");
    let end = f.int(m.get("endPort"), &end_path, 0, 65535);
    let port_path = join(path, "port");
    let number = match m.get("port").filter(|v| !v.is_null()) {
        None => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => match s.parse::<i64>() {
            Ok(n) if (0..=65535).contains(&n) => Some(n),
            Ok(n) => {
                f.error(&port_path, format!("must be 0-65535, got {n}"));
                return None;
            }
            Err(_) => {
                if let Err(r) = validate_port_name(s) {
                    f.error(&port_path, r);
                    return None;
                }
                if end.is_some_and(|e| e != 0) {
                    f.error(&end_path, "requires a numeric port, not a named one");
                    return None;
                }
                return Some(L4 {
                    protocol,
                    port: PortSpec::Named(s.clone()),
                });
            }
        },
        Some(v) => f.int(Some(v), &port_path, 0, 65535),
    };
    let port = match number {
        None | Some(0) => {
            if end.is_some_and(|e| e != 0) {
                f.error(&end_path, "requires a non-zero port");
            }
            PortSpec::Any
        }
        Some(p) => {
            let first = u16::try_from(p).ok()?;
            let last = match end {
                None | Some(0) => first,
                Some(e) if e < p => {
                    f.error(&end_path, format!("must be >= port {p}, got {e}"));
                    first
                }
                Some(e) => u16::try_from(e).ok()?,
            };
            PortSpec::Range { first, last }
        }
    };
    (f.errors.len() == before).then_some(L4 { protocol, port })
}

fn cnp_to_ports(f: &mut Fields, list: &[Value], path: &str, deny: bool, out: &mut Vec<L4>) {
    for (i, v) in list.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some(m) = obj(f, Some(v), &p) else {
            continue;
        };
        check_keys(
            f,
            m,
            &p,
            &["ports"],
            &[
                ("rules", L7_UNSUPPORTED),
                ("listener", L7_UNSUPPORTED),
                ("terminatingTLS", L7_UNSUPPORTED),
                ("originatingTLS", L7_UNSUPPORTED),
                ("serverNames", L7_UNSUPPORTED),
            ],
        );
        let ports = f.list(m.get("ports"), &join(&p, "ports"));
        if ports.is_empty() {
            out.push(L4 {
                protocol: proto::ANY,
                port: PortSpec::Any,
            });
        }
        for (j, pv) in ports.iter().enumerate() {
            if let Some(l4) = cnp_port(f, pv, &format!("{p}.ports[{j}]")) {
                if deny && matches!(l4.port, PortSpec::Named(_)) {
                    f.error(
                        format!("{p}.ports[{j}].port"),
                        "named ports are not supported in deny rules; use the port number",
                    );
                    continue;
                }
                out.push(l4);
            }
        }
    }
}

struct CnpCtx<'a> {
    kind: PolicyKind,
    namespace: &'a str,
}

impl CnpCtx<'_> {
    /// Scope a peer selector to the policy namespace unless it names one (CNP only).
    fn scope(&self, reqs: Vec<Requirement>) -> Selector {
        let sel = Selector::new(reqs);
        if self.kind == PolicyKind::CiliumNetworkPolicy && !sel.mentions(POD_NAMESPACE_LABEL) {
            sel.and([ns_scope(self.namespace)])
        } else {
            sel
        }
    }
}

fn cnp_rules(
    f: &mut Fields,
    ctx: &CnpCtx<'_>,
    list: &[Value],
    path: &str,
    direction: Direction,
    deny: bool,
    counters: &mut Counters,
) -> Vec<Rule> {
    let (pfx, unsupported): (&str, &[(&str, &str)]) = match direction {
        Direction::Ingress => (
            "from",
            &[
                (
                    "fromRequires",
                    "fromRequires is deprecated and not supported",
                ),
                ("fromGroups", "cloud provider groups are not supported"),
                ("fromNodes", "node selectors are not supported"),
                ("authentication", "mutual authentication is not supported"),
            ],
        ),
        Direction::Egress => (
            "to",
            &[
                ("toRequires", "toRequires is deprecated and not supported"),
                ("toGroups", "cloud provider groups are not supported"),
                ("toNodes", "node selectors are not supported"),
                ("toServices", "service selectors are not supported"),
                ("toFQDNs", "DNS-based policy is not supported"),
                ("authentication", "mutual authentication is not supported"),
            ],
        ),
    };
    let k_ep = format!("{pfx}Endpoints");
    let k_cidr = format!("{pfx}CIDR");
    let k_set = format!("{pfx}CIDRSet");
    let k_ent = format!("{pfx}Entities");
    let allowed = [
        k_ep.as_str(),
        k_cidr.as_str(),
        k_set.as_str(),
        k_ent.as_str(),
        "toPorts",
        "icmps",
    ];
    let mut rules = Vec::new();
    for (i, r) in list.iter().enumerate() {
        let rpath = format!("{path}[{i}]");
        let Some(m) = obj(f, Some(r), &rpath) else {
            continue;
        };
        check_keys(f, m, &rpath, &allowed, unsupported);
        let mut peers = Vec::new();
        for (j, s) in f
            .list(m.get(&k_ep), &join(&rpath, &k_ep))
            .iter()
            .enumerate()
        {
            if let Some(reqs) = label_selector(f, s, &format!("{rpath}.{k_ep}[{j}]")) {
                peers.push(Peer::Endpoints(ctx.scope(reqs)));
            }
        }
        for (j, c) in f
            .list(m.get(&k_cidr), &join(&rpath, &k_cidr))
            .iter()
            .enumerate()
        {
            if let Some(cidr) = parse_cidr(f, Some(c), &format!("{rpath}.{k_cidr}[{j}]")) {
                peers.push(Peer::Cidr {
                    cidr,
                    except: Vec::new(),
                });
            }
        }
        for (j, c) in f
            .list(m.get(&k_set), &join(&rpath, &k_set))
            .iter()
            .enumerate()
        {
            if let Some(p) = cidr_set(f, c, &format!("{rpath}.{k_set}[{j}]")) {
                peers.push(p);
            }
        }
        for (j, e) in f
            .list(m.get(&k_ent), &join(&rpath, &k_ent))
            .iter()
            .enumerate()
        {
            let ep = format!("{rpath}.{k_ent}[{j}]");
            match e.as_str().and_then(Entity::parse) {
                Some(ent) => peers.push(Peer::Entity(ent)),
                None => f.error(
                    ep,
                    format!(
                        "unknown or unsupported entity {e}; expected one of all, world, cluster, host, remote-node, kube-apiserver, health, init, unmanaged"
                    ),
                ),
            }
        }
        let mut ports = Vec::new();
        cnp_to_ports(
            f,
            f_list_owned(m.get("toPorts")).as_slice(),
            &join(&rpath, "toPorts"),
            deny,
            &mut ports,
        );
        let icmps = f_list_owned(m.get("icmps"));
        cnp_icmps(f, &icmps, &join(&rpath, "icmps"), &mut ports);
        if let Some(v) = m.get("toPorts").filter(|v| !v.is_null() && !v.is_array()) {
            f.error(
                join(&rpath, "toPorts"),
                format!("must be a list, got {}", type_name(v)),
            );
        }
        if let Some(v) = m.get("icmps").filter(|v| !v.is_null() && !v.is_array()) {
            f.error(
                join(&rpath, "icmps"),
                format!("must be a list, got {}", type_name(v)),
            );
        }
        let has_l3 = [&k_ep, &k_cidr, &k_set, &k_ent].iter().any(|k| {
            m.get(k.as_str())
                .is_some_and(|v| v.as_array().is_some_and(|a| !a.is_empty()))
        });
        if !has_l3 && !ports.is_empty() {
            // An L4-only rule applies to every peer.
            peers.push(Peer::Any);
        }
        rules.push(Rule {
            direction,
            deny,
            index: counters.next(direction, deny),
            path: rpath,
            peers,
            ports,
        });
    }
    rules
}

fn f_list_owned(v: Option<&Value>) -> Vec<Value> {
    v.and_then(Value::as_array).cloned().unwrap_or_default()
}

fn cnp_spec(
    f: &mut Fields,
    ctx: &CnpCtx<'_>,
    v: &Value,
    path: &str,
    counters: &mut Counters,
) -> Option<PolicySpec> {
    let m = obj(f, Some(v), path)?;
    check_keys(
        f,
        m,
        path,
        &[
            "endpointSelector",
            "ingress",
            "ingressDeny",
            "egress",
            "egressDeny",
            "enableDefaultDeny",
            "description",
            "labels",
            "log",
        ],
        &[(
            "nodeSelector",
            "host policies (nodeSelector) are not supported",
        )],
    );
    let before = f.errors.len();
    let subject = match m.get("endpointSelector").filter(|v| !v.is_null()) {
        None => {
            f.error(
                join(path, "endpointSelector"),
                "required (use {} to select every endpoint)",
            );
            None
        }
        Some(s) => label_selector(f, s, &join(path, "endpointSelector")),
    };
    let subject = subject.map(|reqs| {
        let sel = Selector::new(reqs);
        if ctx.kind == PolicyKind::CiliumNetworkPolicy {
            sel.and([ns_scope(ctx.namespace)])
        } else {
            sel
        }
    });
    let (mut dd_ingress, mut dd_egress) = (true, true);
    if let Some(dd) = obj(
        f,
        m.get("enableDefaultDeny").filter(|v| !v.is_null()),
        &join(path, "enableDefaultDeny"),
    ) {
        check_keys(
            f,
            dd,
            &join(path, "enableDefaultDeny"),
            &["ingress", "egress"],
            &[],
        );
        for (k, slot) in [("ingress", &mut dd_ingress), ("egress", &mut dd_egress)] {
            match dd.get(k) {
                None | Some(Value::Null) => {}
                Some(Value::Bool(b)) => *slot = *b,
                Some(other) => f.error(
                    format!("{path}.enableDefaultDeny.{k}"),
                    format!("must be a boolean, got {}", type_name(other)),
                ),
            }
        }
    }
    let mut rules = Vec::new();
    let mut has = [false, false];
    for (key, dir, deny) in [
        ("ingress", Direction::Ingress, false),
        ("ingressDeny", Direction::Ingress, true),
        ("egress", Direction::Egress, false),
        ("egressDeny", Direction::Egress, true),
    ] {
        let list = f.list(m.get(key), &join(path, key));
        if !list.is_empty() {
            has[usize::from(dir == Direction::Egress)] = true;
        }
        rules.extend(cnp_rules(
            f,
            ctx,
            list,
            &join(path, key),
            dir,
            deny,
            counters,
        ));
    }
    if f.errors.len() != before {
        return None;
    }
    Some(PolicySpec {
        subject: subject?,
        enforce_ingress: has[0] && dd_ingress,
        enforce_egress: has[1] && dd_egress,
        rules,
    })
}

/// Convert a `cilium.io/v2` CiliumNetworkPolicy (`kind` = [`PolicyKind::CiliumNetworkPolicy`])
/// or CiliumClusterwideNetworkPolicy document.
pub fn parse_cilium_policy(doc: &Document, kind: PolicyKind) -> Result<Policy, Vec<FieldError>> {
    let mut f = Fields::default();
    let namespace = match kind {
        PolicyKind::CiliumNetworkPolicy => doc.namespace.clone().unwrap_or_default(),
        _ => String::new(),
    };
    let ctx = CnpCtx {
        kind,
        namespace: &namespace,
    };
    if let Some(top) = doc.value.as_object() {
        check_keys(
            &mut f,
            top,
            "",
            &["apiVersion", "kind", "metadata", "spec", "specs", "status"],
            &[],
        );
    }
    let mut counters = Counters::default();
    let mut specs = Vec::new();
    let spec = Fields::get(&doc.value, "spec");
    let list = Fields::get(&doc.value, "specs");
    if spec.is_none() && list.is_none() {
        f.error("spec", "required (or specs)");
    }
    if let Some(s) = spec
        && let Some(s) = cnp_spec(&mut f, &ctx, s, "spec", &mut counters)
    {
        specs.push(s);
    }
    for (i, s) in f.list(list, "specs").iter().enumerate() {
        if let Some(s) = cnp_spec(&mut f, &ctx, s, &format!("specs[{i}]"), &mut counters) {
            specs.push(s);
        }
    }
    if !f.errors.is_empty() {
        return Err(f.errors);
    }
    let mut source = serde_json::Map::new();
    if let Some(s) = spec {
        source.insert("spec".into(), s.clone());
    }
    if let Some(s) = list {
        source.insert("specs".into(), s.clone());
    }
    Ok(Policy {
        kind,
        namespace,
        name: doc.name.clone(),
        specs,
        source: Value::Object(source),
    })
}
