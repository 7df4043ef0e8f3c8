//! Conversion and resolution tests against hand-checked expectations, on the upstream
//! conformance model: namespaces x, y, z (labels `ns=<name>`), pods a, b, c in each
//! (label `pod=<name>`), each with named ports serve-80-tcp, serve-80-udp, serve-81-tcp,
//! serve-81-udp.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use cilium_identity::{IdentityKind, IdentityObj};
use cilium_resources::parse_documents;
use ipnet::Ipv4Net;

use crate::parse::proto::{ICMP, SCTP, TCP, UDP};
use crate::*;

const NS: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

struct World {
    cache: SelectorCache,
    cookies: Cookies,
    endpoints: Vec<EndpointInfo>,
}

fn pod_labels(ns: &str, pod: &str) -> Labels {
    let mut l = Labels::new();
    l.insert("pod".into(), pod.into());
    l.insert(POD_NAMESPACE_LABEL.into(), ns.into());
    l.insert(format!("{NAMESPACE_LABELS_PREFIX}ns"), ns.into());
    l.insert(
        format!("{NAMESPACE_LABELS_PREFIX}kubernetes.io/metadata.name"),
        ns.into(),
    );
    l.insert(
        "io.cilium.k8s.policy.serviceaccount".into(),
        "default".into(),
    );
    l.insert("io.cilium.k8s.policy.cluster".into(), "default".into());
    l
}

fn ip_of(ns: usize, pod: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, u8::try_from(10 + ns * 3 + pod).unwrap())
}

fn id_of(ns: usize, pod: usize) -> u32 {
    256 + u32::try_from(ns * 3 + pod).unwrap()
}

fn pod_index(name: &str) -> (usize, usize) {
    let (ns, pod) = name.split_once('/').unwrap();
    (
        NS.iter().position(|n| *n == ns).unwrap(),
        PODS.iter().position(|p| *p == pod).unwrap(),
    )
}

impl World {
    fn new() -> Self {
        let mut cache = SelectorCache::new();
        for (id, name) in [
            (1, "host"),
            (2, "world"),
            (3, "unmanaged"),
            (4, "health"),
            (5, "init"),
            (6, "remote-node"),
            (7, "kube-apiserver"),
        ] {
            cache.upsert_identity(Arc::new(IdentityObj {
                id,
                labels: [(format!("reserved:{name}"), String::new())].into(),
                kind: IdentityKind::Reserved,
                cidr: None,
                owners: BTreeSet::new(),
            }));
        }
        let mut endpoints = Vec::new();
        for (ni, ns) in NS.iter().enumerate() {
            for (pi, pod) in PODS.iter().enumerate() {
                let labels = pod_labels(ns, pod);
                cache.upsert_identity(Arc::new(IdentityObj {
                    id: id_of(ni, pi),
                    labels: labels.clone(),
                    kind: IdentityKind::Endpoint,
                    cidr: None,
                    owners: BTreeSet::new(),
                }));
                let named_ports = [
                    ("serve-80-tcp", (80, TCP)),
                    ("serve-80-udp", (80, UDP)),
                    ("serve-81-tcp", (81, TCP)),
                    ("serve-81-udp", (81, UDP)),
                ]
                .into_iter()
                .map(|(n, p)| (n.to_string(), p))
                .collect();
                endpoints.push(EndpointInfo {
                    id: u16::try_from(1 + ni * 3 + pi).unwrap(),
                    identity: id_of(ni, pi),
                    labels,
                    ipv4: ip_of(ni, pi),
                    named_ports,
                    pod: Some(format!("{ns}/{pod}")),
                });
            }
        }
        Self {
            cache,
            cookies: Cookies::default(),
            endpoints,
        }
    }

    fn add_cidr_identity(&mut self, id: u32, cidr: &str) {
        let c: Ipv4Net = cidr.parse().unwrap();
        self.cache.upsert_identity(Arc::new(IdentityObj {
            id,
            labels: [("cidr".to_string(), c.to_string())].into(),
            kind: IdentityKind::Cidr,
            cidr: Some(c),
            owners: BTreeSet::new(),
        }));
    }

    fn resolve(&mut self, policies: &[Arc<Policy>]) -> BTreeMap<String, EndpointPolicy> {
        let eps = self.endpoints.clone();
        let mut r = Resolver::new(&mut self.cache, &mut self.cookies, &eps);
        eps.iter()
            .map(|e| (e.pod.clone().unwrap(), r.resolve(e, policies)))
            .collect()
    }
}

/// Parse a YAML file of policies; documents without a namespace land in `x`.
fn policies(yaml: &str) -> Vec<Arc<Policy>> {
    parse_documents(yaml)
        .unwrap()
        .into_iter()
        .map(|mut d| {
            let p = match d.kind.as_str() {
                "NetworkPolicy" => {
                    d.namespace.get_or_insert_with(|| "x".into());
                    parse_network_policy(&d)
                }
                "CiliumNetworkPolicy" => {
                    d.namespace.get_or_insert_with(|| "x".into());
                    parse_cilium_policy(&d, PolicyKind::CiliumNetworkPolicy)
                }
                "CiliumClusterwideNetworkPolicy" => {
                    parse_cilium_policy(&d, PolicyKind::CiliumClusterwideNetworkPolicy)
                }
                k => panic!("unexpected kind {k}"),
            };
            Arc::new(p.unwrap_or_else(|e| panic!("{}: {e:?}", d.label)))
        })
        .collect()
}

fn errors(yaml: &str) -> Vec<String> {
    let mut d = parse_documents(yaml).unwrap().remove(0);
    d.namespace.get_or_insert_with(|| "x".into());
    let r = match d.kind.as_str() {
        "NetworkPolicy" => parse_network_policy(&d),
        k => parse_cilium_policy(
            &d,
            if k == "CiliumNetworkPolicy" {
                PolicyKind::CiliumNetworkPolicy
            } else {
                PolicyKind::CiliumClusterwideNetworkPolicy
            },
        ),
    };
    r.expect_err("expected errors")
        .into_iter()
        .map(|e| format!("{}: {}", e.field, e.reason))
        .collect()
}

/// Verdict for a connection between two pods (`ns/pod`).
fn allowed(
    res: &BTreeMap<String, EndpointPolicy>,
    from: &str,
    to: &str,
    proto: u8,
    port: u16,
) -> bool {
    let (fi, fp) = pod_index(from);
    let (ti, tp) = pod_index(to);
    let s = &res[from];
    let d = &res[to];
    let e = lookup_enforced(
        s.egress_enforced,
        &s.entries,
        Direction::Egress,
        id_of(ti, tp),
        proto,
        port,
    );
    let i = lookup_enforced(
        d.ingress_enforced,
        &d.entries,
        Direction::Ingress,
        id_of(fi, fp),
        proto,
        port,
    );
    e.allowed && i.allowed
}

fn all_pods() -> Vec<String> {
    NS.iter()
        .flat_map(|n| PODS.iter().map(move |p| format!("{n}/{p}")))
        .collect()
}

/// Compare the full 9x9 matrix with `expect(from, to)`.
fn check_matrix(
    res: &BTreeMap<String, EndpointPolicy>,
    proto: u8,
    port: u16,
    expect: impl Fn(&str, &str) -> bool,
) {
    let mut wrong = Vec::new();
    for f in all_pods() {
        for t in all_pods() {
            let got = allowed(res, &f, &t, proto, port);
            if got != expect(&f, &t) {
                wrong.push(format!("{f} -> {t}: got {got}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{proto}/{port} mismatches:\n{}",
        wrong.join("\n")
    );
}

fn ns(p: &str) -> &str {
    p.split_once('/').unwrap().0
}

#[test]
fn no_policy_allows_everything() {
    let mut w = World::new();
    let res = w.resolve(&[]);
    check_matrix(&res, TCP, 80, |_, _| true);
    assert!(
        res.values()
            .all(|p| !p.ingress_enforced && !p.egress_enforced)
    );
}

#[test]
fn deny_all_ingress_in_namespace() {
    let mut w = World::new();
    let res = w.resolve(&policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n",
    ));
    check_matrix(&res, TCP, 80, |_, t| ns(t) != "x");
    assert!(res["x/a"].ingress_enforced && !res["x/a"].egress_enforced);
    assert!(res["x/a"].entries.is_empty());
    assert!(!res["y/a"].ingress_enforced);
}

#[test]
fn policy_types_inferred_and_listed() {
    let mut w = World::new();
    // No policyTypes, egress rules present → Ingress and Egress; ingress empty → deny all in.
    let res = w.resolve(&policies(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress:
  - to: [{podSelector: {matchLabels: {pod: b}}}]
",
    ));
    assert!(res["x/a"].ingress_enforced && res["x/a"].egress_enforced);
    check_matrix(&res, TCP, 80, |f, t| {
        if t == "x/a" {
            return false;
        }
        f != "x/a" || t == "x/b"
    });
    // policyTypes: [Egress] with ingress rules listed: ingress rules are ignored, ingress open.
    let res = w.resolve(&policies(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {pod: c}}}]
",
    ));
    assert!(!res["x/a"].ingress_enforced && res["x/a"].egress_enforced);
    check_matrix(&res, TCP, 80, |f, _| f != "x/a");
}

#[test]
fn empty_and_missing_selectors() {
    let mut w = World::new();
    // A rule without `from` admits every source.
    let res = w.resolve(&policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {}\n  ingress: [{}]\n",
    ));
    check_matrix(&res, TCP, 80, |_, _| true);
    let e = &res["x/a"].entries;
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].identity, e[0].protocol, e[0].port_prefix_len),
        (0, 0, 0)
    );
    // podSelector: {} alone = every pod of the policy's namespace.
    let res = w.resolve(&policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]\n",
    ));
    check_matrix(&res, TCP, 80, |f, t| ns(t) != "x" || ns(f) == "x");
    // World is not a pod of the namespace.
    assert!(!lookup(&res["x/a"].entries, Direction::Ingress, 2, TCP, 80).allowed);
    // namespaceSelector: {} = every pod of every namespace, not the world.
    let res = w.resolve(&policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}}]}]\n",
    ));
    check_matrix(&res, TCP, 80, |_, _| true);
    assert!(!lookup(&res["x/a"].entries, Direction::Ingress, 2, TCP, 80).allowed);
    assert!(!lookup(&res["x/a"].entries, Direction::Ingress, 1, TCP, 80).allowed);
}

#[test]
fn namespace_selector_alone_and_with_pod_selector() {
    let mut w = World::new();
    let res = w.resolve(&policies(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
",
    ));
    check_matrix(&res, TCP, 80, |f, t| t != "x/a" || ns(f) == "y");
    // Both in one peer: AND.
    let res = w.resolve(&policies(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: b}}
",
    ));
    check_matrix(&res, TCP, 80, |f, t| t != "x/a" || f == "y/b");
    // Two peers: OR (pods b of x, or anything in y).
    let res = w.resolve(&policies(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
    - podSelector: {matchLabels: {pod: b}}
",
    ));
    check_matrix(&res, TCP, 80, |f, t| {
        t != "x/a" || f == "x/b" || ns(f) == "y"
    });
    // Namespace by the kubernetes.io/metadata.name label.
    let res = w.resolve(&policies(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}}]
",
    ));
    check_matrix(&res, TCP, 80, |f, t| ns(t) != "x" || ns(f) == "z");
}

#[test]
fn match_expressions() {
    let mut w = World::new();
    let case = |op: &str, values: &str| {
        format!(
            r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: p}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{{key: ns, operator: {op}{values}}}]
      podSelector:
        matchExpressions: [{{key: pod, operator: In, values: [b, c]}}]
"
        )
    };
    let res = w.resolve(&policies(&case("In", ", values: [y, z]")));
    check_matrix(&res, TCP, 80, |f, t| {
        t != "x/a" || (ns(f) != "x" && !f.ends_with("/a"))
    });
    let res = w.resolve(&policies(&case("NotIn", ", values: [y]")));
    check_matrix(&res, TCP, 80, |f, t| {
        t != "x/a" || (ns(f) != "y" && !f.ends_with("/a"))
    });
    let res = w.resolve(&policies(&case("Exists", "")));
    check_matrix(&res, TCP, 80, |f, t| t != "x/a" || !f.ends_with("/a"));
    let res = w.resolve(&policies(&case("DoesNotExist", "")));
    check_matrix(&res, TCP, 80, |_, t| t != "x/a");
}

#[test]
fn ports_protocols_ranges_and_named_ports() {
    let mut w = World::new();
    let target = |yaml_ports: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - ports: {yaml_ports}\n"
        )
    };
    let only_xa = |allowed_here: bool| move |_: &str, t: &str| t != "x/a" || allowed_here;
    // Port without protocol = TCP.
    let res = w.resolve(&policies(&target("[{port: 80}]")));
    check_matrix(&res, TCP, 80, only_xa(true));
    check_matrix(&res, TCP, 81, only_xa(false));
    check_matrix(&res, UDP, 80, only_xa(false));
    // Protocol without port = every port of that protocol.
    let res = w.resolve(&policies(&target("[{protocol: UDP}]")));
    check_matrix(&res, UDP, 80, only_xa(true));
    check_matrix(&res, UDP, 81, only_xa(true));
    check_matrix(&res, TCP, 80, only_xa(false));
    // endPort.
    let res = w.resolve(&policies(&target("[{port: 80, endPort: 81}]")));
    check_matrix(&res, TCP, 80, only_xa(true));
    check_matrix(&res, TCP, 81, only_xa(true));
    check_matrix(&res, TCP, 82, only_xa(false));
    check_matrix(&res, TCP, 79, only_xa(false));
    assert_eq!(res["x/a"].entries.len(), 1);
    assert_eq!(res["x/a"].entries[0].port_prefix_len, 15);
    // Named port with its protocol.
    let res = w.resolve(&policies(&target("[{port: serve-81-udp, protocol: UDP}]")));
    check_matrix(&res, UDP, 81, only_xa(true));
    check_matrix(&res, UDP, 80, only_xa(false));
    check_matrix(&res, TCP, 81, only_xa(false));
    // Named port whose protocol does not match the rule's: nothing.
    let res = w.resolve(&policies(&target("[{port: serve-81-udp}]")));
    check_matrix(&res, UDP, 81, only_xa(false));
    check_matrix(&res, TCP, 81, only_xa(false));
    // SCTP.
    let res = w.resolve(&policies(&target("[{port: 80, protocol: SCTP}]")));
    check_matrix(&res, SCTP, 80, only_xa(true));
    check_matrix(&res, TCP, 80, only_xa(false));
}

#[test]
fn egress_named_ports_resolve_on_the_destination() {
    let mut w = World::new();
    // Make y/b serve "serve-80-tcp" on 8080 instead.
    let yb = w
        .endpoints
        .iter_mut()
        .find(|e| e.pod.as_deref() == Some("y/b"))
        .unwrap();
    yb.named_ports.insert("serve-80-tcp".into(), (8080, TCP));
    let res = w.resolve(&policies(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: serve-80-tcp}]
",
    ));
    check_matrix(&res, TCP, 80, |f, t| f != "x/a" || t != "y/b");
    check_matrix(&res, TCP, 8080, |f, t| f != "x/a" || t == "y/b");
    // One entry per peer identity.
    let ids: BTreeSet<u32> = res["x/a"].entries.iter().map(|e| e.identity).collect();
    assert_eq!(ids.len(), 9);
}

#[test]
fn ip_block_with_except_matches_pod_ips() {
    let mut w = World::new();
    let yb = ip_of(1, 1);
    let res = w.resolve(&policies(&format!(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: p}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock:
        cidr: 10.200.0.0/24
        except: [{yb}/32]
"
    )));
    check_matrix(&res, TCP, 80, |f, t| f != "x/a" || t != "y/b");
    // A CIDR identity inside the block is allowed, the world is not.
    w.add_cidr_identity(0x0100_0001, "10.200.0.0/24");
    w.add_cidr_identity(0x0100_0002, &format!("{yb}/32"));
    w.add_cidr_identity(0x0100_0003, "192.168.0.0/16");
    let res = w.resolve(&policies(&format!(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: p}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock:
        cidr: 10.200.0.0/24
        except: [{yb}/32]
"
    )));
    let e = &res["x/a"].entries;
    let eg = |id| lookup(e, Direction::Egress, id, TCP, 80).allowed;
    assert!(eg(0x0100_0001));
    assert!(!eg(0x0100_0002));
    assert!(!eg(0x0100_0003));
    assert!(!eg(2));
    // 0.0.0.0/0 covers the world, every CIDR identity and every pod.
    let res = w.resolve(&policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0}}]}]\n",
    ));
    check_matrix(&res, TCP, 80, |_, _| true);
    let e = &res["x/a"].entries;
    for id in [2, 0x0100_0001, 0x0100_0003] {
        assert!(lookup(e, Direction::Egress, id, TCP, 80).allowed, "{id}");
    }
    assert!(!lookup(e, Direction::Egress, 1, TCP, 80).allowed);
}

#[test]
fn policies_add_up_and_both_directions_are_required() {
    let mut w = World::new();
    let res = w.resolve(&policies(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-b}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-c-81}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}], ports: [{port: 81}]}]
",
    ));
    check_matrix(&res, TCP, 80, |f, t| t != "x/a" || f == "x/b");
    check_matrix(&res, TCP, 81, |f, t| t != "x/a" || f == "x/b" || f == "x/c");
    // Egress of x/b denied towards x/a: ingress allows, egress does not.
    let res = w.resolve(&policies(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-b}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-egress}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {pod: c}}}]}]
",
    ));
    check_matrix(&res, TCP, 80, |f, t| {
        let ing = t != "x/a" || f == "x/b";
        let eg = f != "x/b" || t == "x/c";
        ing && eg
    });
}

#[test]
fn cnp_scoping_deny_entities_and_default_deny() {
    let mut w = World::new();
    // CNP selectors are scoped to the policy namespace unless they name one.
    let res = w.resolve(&policies(
        r"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress:
  - fromEndpoints:
    - matchLabels: {pod: b}
    - matchLabels: {k8s:io.kubernetes.pod.namespace: y, pod: c}
",
    ));
    check_matrix(&res, TCP, 80, |f, t| t != "x/a" || f == "x/b" || f == "y/c");
    // CCNP: not scoped, subject not scoped.
    let res = w.resolve(&policies(
        r"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {pod: b}}]
",
    ));
    check_matrix(&res, TCP, 80, |f, t| {
        !t.ends_with("/a") || f.ends_with("/b")
    });
    // Deny beats allow, across policies.
    let res = w.resolve(&policies(
        r"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-all}
spec:
  endpointSelector: {}
  ingress: [{fromEntities: [all]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-b}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {pod: b}}]
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
",
    ));
    check_matrix(&res, TCP, 80, |f, t| !(t == "x/a" && f == "x/b"));
    check_matrix(&res, TCP, 81, |_, _| true);
    let d = lookup(
        &res["x/a"].entries,
        Direction::Ingress,
        id_of(0, 1),
        TCP,
        80,
    );
    assert!(d.deny);
    assert_eq!(d.reason, Reason::PolicyDeny);
    assert!(lookup(&res["x/a"].entries, Direction::Ingress, 2, TCP, 80).allowed);
    // Entities: cluster (pods, host, remote-node) but not world; host.
    w.add_cidr_identity(0x0100_0009, "8.8.8.0/24");
    let res = w.resolve(&policies(
        r"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  egress: [{toEntities: [cluster]}]
  ingress: [{fromEntities: [host]}]
",
    ));
    let e = &res["x/a"].entries;
    check_matrix(&res, TCP, 80, |_, t| t != "x/a");
    assert!(lookup(e, Direction::Egress, 1, TCP, 80).allowed);
    assert!(lookup(e, Direction::Egress, 6, TCP, 80).allowed);
    assert!(!lookup(e, Direction::Egress, 2, TCP, 80).allowed);
    assert!(!lookup(e, Direction::Egress, 0x0100_0009, TCP, 80).allowed);
    assert!(lookup(e, Direction::Ingress, 1, UDP, 53).allowed);
    // world = identity 2 plus every CIDR identity.
    let res = w.resolve(&policies(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {}\n  egress: [{toEntities: [world]}]\n",
    ));
    let e = &res["x/a"].entries;
    assert!(lookup(e, Direction::Egress, 2, TCP, 80).allowed);
    assert!(lookup(e, Direction::Egress, 0x0100_0009, TCP, 80).allowed);
    assert!(!lookup(e, Direction::Egress, id_of(1, 1), TCP, 80).allowed);
    // `ingress: [{}]`: default deny, nothing allowed.
    let res = w.resolve(&policies(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {}\n  ingress: [{}]\n",
    ));
    check_matrix(&res, TCP, 80, |_, t| ns(t) != "x");
    assert!(res["x/a"].entries.is_empty());
    // L4-only rule: every peer on that port.
    let res = w.resolve(&policies(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: '80'}]}]}]\n",
    ));
    check_matrix(&res, TCP, 80, |_, _| true);
    check_matrix(&res, UDP, 80, |_, _| true);
    check_matrix(&res, TCP, 81, |_, t| ns(t) != "x");
}

#[test]
fn enable_default_deny_false_and_icmp_and_ranges() {
    let mut w = World::new();
    // An allow with enableDefaultDeny false does not restrict anything.
    let res = w.resolve(&policies(
        r"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  enableDefaultDeny: {ingress: false}
  ingress: [{fromEndpoints: [{matchLabels: {pod: b}}]}]
",
    ));
    check_matrix(&res, TCP, 80, |_, _| true);
    assert!(!res["x/a"].ingress_enforced);
    // A deny with enableDefaultDeny false denies only what it names.
    let res = w.resolve(&policies(
        r"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  enableDefaultDeny: {ingress: false}
  ingressDeny: [{fromEndpoints: [{matchLabels: {pod: b}}]}]
",
    ));
    check_matrix(&res, TCP, 80, |f, t| !(t == "x/a" && f == "x/b"));
    assert!(res["x/a"].ingress_enforced);
    // ICMP type and a port range with protocol ANY.
    let res = w.resolve(&policies(
        r"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress:
  - icmps: [{fields: [{type: EchoRequest, family: IPv4}]}]
  - toPorts: [{ports: [{port: '1000', endPort: 2000, protocol: ANY}]}]
",
    ));
    let e = &res["x/a"].entries;
    let ing = |p, port| lookup(e, Direction::Ingress, id_of(1, 1), p, port).allowed;
    assert!(ing(ICMP, 8));
    assert!(!ing(ICMP, 0));
    for p in [TCP, UDP, SCTP] {
        assert!(ing(p, 1000) && ing(p, 1500) && ing(p, 2000));
        assert!(!ing(p, 999) && !ing(p, 2001));
    }
}

#[test]
fn cookies_are_stable_and_name_the_rule() {
    let mut w = World::new();
    let pols = policies(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
  - from: [{podSelector: {matchLabels: {pod: c}}}]
",
    );
    let r1 = w.resolve(&pols);
    let r2 = w.resolve(&pols);
    assert_eq!(r1["x/a"].entries, r2["x/a"].entries);
    let d = lookup(&r1["x/a"].entries, Direction::Ingress, id_of(0, 2), TCP, 80);
    let rule = w.cookies.rule(d.cookie.unwrap()).unwrap();
    assert_eq!(rule.name, "p");
    assert_eq!(rule.rule_index, 1);
    assert_eq!(rule.direction, Direction::Ingress);
    assert_eq!(rule.describe(), "NetworkPolicy x/p ingress[1]");
}

#[test]
fn selector_cache_follows_identities() {
    let mut w = World::new();
    let sel = Selector::new(vec![Requirement::equals("pod", "a")]);
    assert_eq!(w.cache.select(&sel).len(), 3);
    w.cache.remove_identity(id_of(0, 0));
    assert_eq!(w.cache.select(&sel).len(), 2);
    let mut labels = pod_labels("x", "a");
    labels.insert("extra".into(), "1".into());
    w.cache.upsert_identity(Arc::new(IdentityObj {
        id: 999,
        labels,
        kind: IdentityKind::Endpoint,
        cidr: None,
        owners: BTreeSet::new(),
    }));
    assert!(w.cache.select(&sel).contains(&999));
    // Relabel: identity 999 no longer pod=a.
    w.cache.upsert_identity(Arc::new(IdentityObj {
        id: 999,
        labels: pod_labels("x", "b"),
        kind: IdentityKind::Endpoint,
        cidr: None,
        owners: BTreeSet::new(),
    }));
    assert!(!w.cache.select(&sel).contains(&999));
    w.cache.retain_selectors(|_| false);
    assert_eq!(w.cache.selector_count(), 0);
}

#[test]
fn validation_errors_name_the_field() {
    let e = errors(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: '80'}], rules: {http: [{}]}}]}]\n",
    );
    assert!(
        e.iter()
            .any(|e| e.starts_with("spec.ingress[0].toPorts[0].rules: not supported: L7")),
        "{e:?}"
    );
    let e = errors(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {}\n  egress: [{toFQDNs: [{matchName: a.com}]}]\n",
    );
    assert!(
        e.iter()
            .any(|e| e.starts_with("spec.egress[0].toFQDNs: not supported")),
        "{e:?}"
    );
    let e = errors(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {matchExpressions: [{key: a, operator: Foo}]}\n  ingress: [{from: [{podSelector: {}, ipBlock: {cidr: 10.0.0.0/8}}], ports: [{endPort: 90}, {port: 90, endPort: 80}, {protocol: ICMP}]}]\n  bogus: 1\n",
    );
    for want in [
        "spec.podSelector.matchExpressions[0].operator: must be In",
        "spec.ingress[0].from[0]: ipBlock cannot be combined",
        "spec.ingress[0].ports[0].endPort: requires a numeric port",
        "spec.ingress[0].ports[1].endPort: must be >= port 90",
        "spec.ingress[0].ports[2].protocol: must be TCP, UDP or SCTP",
        "spec.bogus: unknown field",
    ] {
        assert!(
            e.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in {e:?}"
        );
    }
    let e = errors(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}}]}]\n",
    );
    assert!(
        e.iter()
            .any(|e| e.contains("except[0]") && e.contains("strictly inside")),
        "{e:?}"
    );
    let e = errors(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  ingress: [{fromEntities: [martians]}]\n",
    );
    assert!(
        e.iter()
            .any(|e| e.starts_with("spec.endpointSelector: required")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|e| e.starts_with("spec.ingress[0].fromEntities[0]: unknown")),
        "{e:?}"
    );
}

#[test]
fn specs_list_numbers_rules_across_specs() {
    let p = policies(
        r"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
specs:
- endpointSelector: {matchLabels: {pod: a}}
  ingress: [{fromEntities: [host]}]
- endpointSelector: {matchLabels: {pod: b}}
  ingress: [{fromEntities: [world]}]
  egressDeny: [{toEntities: [world]}]
",
    );
    let idx: Vec<(usize, bool)> = p[0]
        .specs
        .iter()
        .flat_map(|s| s.rules.iter().map(|r| (r.index, r.deny)))
        .collect();
    assert_eq!(idx, vec![(0, false), (1, false), (0, true)]);
    assert_eq!(p[0].rule_count(), 3);
}

/// A repository over real tables with a real identity allocator, endpoints x/a (1),
/// x/b (2) and y/a (3) with identities from the allocator (as the endpoint cell does).
struct RepoWorld {
    _dir: tempfile::TempDir,
    db: statedb::Db,
    np: statedb::Table<Policy>,
    alloc: Arc<cilium_identity::IdentityAllocator>,
    repo: Repository,
}

impl RepoWorld {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = statedb::Db::new();
        let ipcache = cilium_ipcache::new_table(&db).unwrap();
        let idents = cilium_identity::new_table(&db).unwrap();
        let eps = cilium_endpoint::new_table(&db).unwrap();
        let rows = new_endpoint_policies_table(&db).unwrap();
        let np = new_policy_table(&db, NETWORK_POLICIES_TABLE).unwrap();
        let alloc = Arc::new(
            cilium_identity::IdentityAllocator::new(
                Arc::new(db.clone()),
                Arc::new(idents.clone()),
                Arc::new(ipcache),
                cilium_node::StateFile::new(dir.path().join(cilium_identity::STATE_FILE)),
                None,
            )
            .unwrap(),
        );
        let repo = Repository::new(
            db.clone(),
            vec![(PolicyKind::NetworkPolicy, np.clone())],
            eps.clone(),
            idents,
            rows,
            Some(alloc.clone()),
            None,
        )
        .unwrap();
        for (id, (ni, pi)) in [(0, 0), (0, 1), (1, 0)].into_iter().enumerate() {
            let (ns, pod) = (NS[ni], PODS[pi]);
            let key = format!("cni:{ns}-{pod}:eth0");
            let labels = pod_labels(ns, pod);
            let identity = alloc.allocate(&labels, &key).unwrap();
            let obj = cilium_endpoint::EndpointObj {
                id: u16::try_from(id + 1).unwrap(),
                key: key.clone(),
                container_id: format!("{ns}-{pod}"),
                netns: "/var/run/netns/test".into(),
                ifname: "eth0".into(),
                host_ifname: cilium_endpoint::host_ifname(&key),
                host_ifindex: 0,
                mac: String::new(),
                host_mac: String::new(),
                ipv4: ip_of(ni, pi),
                gateway: Ipv4Addr::new(10, 200, 0, 1),
                prefix_len: 24,
                mtu: 1500,
                pod_namespace: Some(ns.into()),
                pod_name: Some(pod.into()),
                infra_container_id: None,
                identity: identity.0,
                labels,
                named_ports: BTreeMap::new(),
                service_account: "default".into(),
                state: cilium_endpoint::EndpointState::Ready,
                status: statedb::reconciler::Status::done(),
            };
            let mut w = db.write_txn(&[&eps]).unwrap();
            eps.insert(&mut w, obj).unwrap();
            w.commit();
        }
        Self {
            _dir: dir,
            db,
            np,
            alloc,
            repo,
        }
    }

    fn apply(db: &statedb::Db, np: &statedb::Table<Policy>, yaml: &str) {
        let mut w = db.write_txn(&[np]).unwrap();
        for p in policies(yaml) {
            np.insert(&mut w, (*p).clone()).unwrap();
        }
        w.commit();
    }

    fn delete(&self, yaml: &str) {
        let mut w = self.db.write_txn(&[&self.np]).unwrap();
        for p in policies(yaml) {
            self.np.delete(&mut w, &p).unwrap();
        }
        w.commit();
    }

    /// What `run_resolver` does: resolve again as long as the returned watches fired.
    async fn resolve_until_settled(&self) {
        for _ in 0..10 {
            let (_, mut ws) = self.repo.resolve().unwrap();
            // A zero timeout polls the wait once: Ok only if a watch is already closed.
            let fired = tokio::time::timeout(std::time::Duration::ZERO, ws.wait())
                .await
                .is_ok();
            if !fired {
                return;
            }
        }
        panic!("resolution did not settle");
    }
}

/// The conformance e2e sequence np-ipblock-except-pod-ips → np-ipblock-egress-single-pod:
/// the old policy (owning CIDR identities of pod /32s) is deleted and the new one applied
/// while the resolver is releasing those identities. The new policy must still be resolved
/// (egress of x/a enforced) and get its CIDR identity.
#[tokio::test]
async fn policy_applied_during_cidr_sync_is_resolved() {
    let w = RepoWorld::new();
    let ya = ip_of(1, 0);
    let old = format!(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: ipblock}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress:
  - from:
    - ipBlock: {{cidr: 10.200.0.0/24, except: ['{ya}/32']}}
"
    );
    let new = format!(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: ipblock-egress}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {{cidr: '{ya}/32'}}
    ports:
    - {{port: 80, protocol: TCP}}
    - {{port: 81, protocol: UDP}}
"
    );
    RepoWorld::apply(&w.db, &w.np, &old);
    w.resolve_until_settled().await;
    let ya_net: Ipv4Net = format!("{ya}/32").parse().unwrap();
    let old_id = w.alloc.lookup_cidr(ya_net).unwrap();
    let from_xa = |to: &str, port, proto| {
        let (ns, pod) = to.split_once('/').unwrap();
        w.repo.explain(("x", "a"), (ns, pod), port, proto).unwrap()
    };
    assert!(from_xa("x/b", 80, TCP).allowed);

    // Delete the old policy; the new one lands while the pass syncs CIDR identities.
    w.delete(&old);
    let (db, np) = (w.db.clone(), w.np.clone());
    let apply_new = new.clone();
    w.repo
        .set_after_cidr_sync(move || RepoWorld::apply(&db, &np, &apply_new));
    w.resolve_until_settled().await;

    let e = from_xa("x/b", 80, TCP);
    assert!(!e.allowed, "x/a -> x/b must be denied by egress: {e:?}");
    assert!(from_xa("y/a", 80, TCP).allowed);
    assert!(from_xa("y/a", 81, UDP).allowed);
    assert!(!from_xa("y/a", 81, TCP).allowed);
    let id = w.alloc.lookup_cidr(ya_net).unwrap();
    let obj = w.alloc.get(id).unwrap();
    assert_eq!(
        obj.owners,
        BTreeSet::from(["policy:NetworkPolicy/x/ipblock-egress".to_string()]),
        "old identity {old_id:?}"
    );
}

#[test]
fn selector_cache_indexes_cidr_identities_by_block() {
    let mut w = World::new();
    for (id, c) in [
        (0x0100_0001, "10.0.0.0/8"),
        (0x0100_0002, "10.1.0.0/16"),
        (0x0100_0003, "10.1.2.3/32"),
        (0x0100_0004, "11.0.0.0/8"),
    ] {
        w.add_cidr_identity(id, c);
    }
    let inside = |w: &World, block: &str| -> Vec<u32> {
        let mut v: Vec<u32> = w
            .cache
            .cidr_identities_in(&block.parse().unwrap())
            .map(|(_, id)| id)
            .collect();
        v.sort_unstable();
        v
    };
    assert_eq!(
        inside(&w, "10.0.0.0/8"),
        vec![0x0100_0001, 0x0100_0002, 0x0100_0003]
    );
    assert_eq!(inside(&w, "10.1.0.0/16"), vec![0x0100_0002, 0x0100_0003]);
    assert_eq!(inside(&w, "10.1.2.3/32"), vec![0x0100_0003]);
    assert_eq!(inside(&w, "0.0.0.0/0").len(), 4);
    assert!(inside(&w, "10.2.0.0/16").is_empty());
    w.cache.remove_identity(0x0100_0003);
    assert_eq!(inside(&w, "10.1.0.0/16"), vec![0x0100_0002]);
    // An identity whose prefix changes moves in the index.
    w.add_cidr_identity(0x0100_0002, "12.0.0.0/16");
    assert_eq!(inside(&w, "10.0.0.0/8"), vec![0x0100_0001]);
    assert_eq!(inside(&w, "12.0.0.0/8"), vec![0x0100_0002]);
    assert_eq!(w.cache.cidr_identities().count(), 3);
}
