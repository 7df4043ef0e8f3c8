//! The scenario catalog: each scenario is an optional policy (rendered once the test pods have
//! their addresses) and a list of probes with the outcome they must have.

use std::fmt::Write as _;

use super::net::Proto;

/// The test pods. `client`, `client2` and `echo-same` live in the first namespace,
/// `echo-other` in the second. Every pod runs the echo servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The main client (`app: client`).
    Client,
    /// A second client in the same namespace (`app: client2`), the one policies single out.
    Client2,
    /// Echo server in the clients' namespace.
    EchoSame,
    /// Echo server in the other namespace.
    EchoOther,
}

impl Role {
    /// Every pod, in creation order.
    pub const ALL: [Role; 4] = [Role::Client, Role::Client2, Role::EchoSame, Role::EchoOther];

    /// Pod name (also its `app` label and the echo answer).
    pub fn name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Client2 => "client2",
            Self::EchoSame => "echo-same",
            Self::EchoOther => "echo-other",
        }
    }

    /// `client` or `echo` (the `role` label).
    pub fn kind(self) -> &'static str {
        match self {
            Self::Client | Self::Client2 => "client",
            Self::EchoSame | Self::EchoOther => "echo",
        }
    }

    /// 1 for the first namespace, 2 for the second.
    pub fn ns_index(self) -> u8 {
        match self {
            Self::EchoOther => 2,
            _ => 1,
        }
    }
}

/// The services the test applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Svc {
    /// `echo` (namespace 1): backends echo-same and echo-other.
    Echo,
    /// `echo-same` (namespace 1): echo-same is its only backend.
    EchoSame,
    /// `no-endpoints` (namespace 1): an empty EndpointSlice.
    NoEndpoints,
}

impl Svc {
    /// Every service, in apply order.
    pub const ALL: [Svc; 3] = [Svc::Echo, Svc::EchoSame, Svc::NoEndpoints];

    /// The pods behind the service.
    pub fn backends(self) -> &'static [Role] {
        match self {
            Self::Echo => &[Role::EchoSame, Role::EchoOther],
            Self::EchoSame => &[Role::EchoSame],
            Self::NoEndpoints => &[],
        }
    }

    /// Service name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::EchoSame => "echo-same",
            Self::NoEndpoints => "no-endpoints",
        }
    }
}

/// TCP port of every echo server.
pub const ECHO_TCP: u16 = 8080;
/// Second TCP port of every echo server (outside the port-range policies).
pub const ECHO_TCP_ALT: u16 = 9090;
/// UDP port of every echo server.
pub const ECHO_UDP: u16 = 8081;
/// A port no echo server listens on.
pub const CLOSED_PORT: u16 = 7777;
/// Service TCP port (targets [`ECHO_TCP`]).
pub const SVC_TCP: u16 = 80;
/// Service UDP port (targets [`ECHO_UDP`]).
pub const SVC_UDP: u16 = 53;

/// Where a probe starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Src {
    /// The host network namespace (this process).
    Host,
    /// Inside a test pod.
    Pod(Role),
}

/// What a probe connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// A pod's address and port.
    Pod(Role, u16),
    /// A service's cluster IP and port.
    Service(Svc, u16),
    /// The host's listener on the pods' gateway address (same port number for TCP and UDP
    /// is not assumed: the bound one of the protocol is used).
    Host,
}

/// The outcome a probe must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// An answer from the right server.
    Connected,
    /// Refused at once (`ECONNREFUSED`), not a timeout.
    Refused,
    /// No answer, and `monitor` reports a drop of the flow with this reason.
    Dropped(&'static str),
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connected => f.write_str("connected"),
            Self::Refused => f.write_str("refused"),
            Self::Dropped(r) => write!(f, "dropped ({r})"),
        }
    }
}

/// One probe of a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSpec {
    /// Source.
    pub from: Src,
    /// Destination.
    pub to: To,
    /// Protocol.
    pub proto: Proto,
    /// Required outcome.
    pub expect: Expect,
}

const fn p(from: Src, to: To, proto: Proto, expect: Expect) -> ProbeSpec {
    ProbeSpec {
        from,
        to,
        proto,
        expect,
    }
}

/// What a policy template needs from the running test: namespaces and pod addresses.
pub struct PolicyEnv {
    /// Run id (hex), for the names of cluster-scoped objects.
    pub id: String,
    /// Namespace 1 (clients and echo-same).
    pub ns1: String,
    /// Namespace 2 (echo-other).
    pub ns2: String,
    /// Pod addresses in [`Role::ALL`] order.
    pub ips: [std::net::Ipv4Addr; 4],
}

impl PolicyEnv {
    /// Address of `role`.
    pub fn ip_of(&self, role: Role) -> std::net::Ipv4Addr {
        let i = Role::ALL.iter().position(|r| *r == role).unwrap_or(0);
        self.ips
            .get(i)
            .copied()
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)
    }
}

/// A scenario: a name (`group/case`), an optional policy and the probes.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// `pod-to-pod/same-namespace`, `policy/np-ingress-deny`, ...
    pub name: &'static str,
    /// One line saying what is checked.
    pub about: &'static str,
    /// The policy to apply first (YAML), rendered from the test's namespaces and addresses.
    pub policy: Option<fn(&PolicyEnv) -> String>,
    /// The probes, all of which must have their outcome.
    pub probes: Vec<ProbeSpec>,
    /// Needs socket load balancing for this process (host clients of services).
    pub host_socket_lb: bool,
}

use Expect::{Connected, Dropped, Refused};
use Proto::{Tcp, Udp};
use Role::{Client, Client2, EchoOther, EchoSame};
use Src::{Host, Pod};

/// Drop reason of default deny (no allow rule matched).
pub const DENIED: &str = "policy-denied";
/// Drop reason of an explicit deny rule.
pub const DENY: &str = "policy-deny";

fn meta(kind: &str, api: &str, ns: &str, name: &str) -> String {
    format!("---\napiVersion: {api}\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: {ns}\n")
}

fn np(ns: &str, name: &str) -> String {
    meta("NetworkPolicy", "networking.k8s.io/v1", ns, name)
}

fn cnp(ns: &str, name: &str) -> String {
    meta("CiliumNetworkPolicy", "cilium.io/v2", ns, name)
}

fn np_ingress_default_deny(e: &PolicyEnv) -> String {
    let mut s = np(&e.ns1, "ingress-default-deny");
    s.push_str(
        "spec:\n  podSelector:\n    matchLabels:\n      app: echo-same\n  policyTypes: [Ingress]\n",
    );
    s
}

fn np_ingress_allow(e: &PolicyEnv) -> String {
    let mut s = np(&e.ns1, "ingress-allow-client");
    let _ = write!(
        s,
        "spec:\n  podSelector:\n    matchLabels:\n      app: echo-same\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          app: client\n    ports:\n    - protocol: TCP\n      port: {ECHO_TCP}\n    - protocol: UDP\n      port: {ECHO_UDP}\n"
    );
    s
}

fn np_ingress_cross_ns(e: &PolicyEnv) -> String {
    let mut s = np(&e.ns2, "ingress-from-other-namespace");
    let _ = write!(
        s,
        "spec:\n  podSelector:\n    matchLabels:\n      app: echo-other\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          kubernetes.io/metadata.name: {}\n      podSelector:\n        matchLabels:\n          app: client\n",
        e.ns1
    );
    s
}

fn np_egress_allow(e: &PolicyEnv) -> String {
    let mut s = np(&e.ns1, "egress-allow-echo-same");
    s.push_str("spec:\n  podSelector:\n    matchLabels:\n      app: client2\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - podSelector:\n        matchLabels:\n          app: echo-same\n");
    s
}

fn np_port_range(e: &PolicyEnv) -> String {
    let mut s = np(&e.ns1, "ingress-port-range");
    let (lo, hi) = (ECHO_TCP - 80, ECHO_TCP + 20);
    let _ = write!(
        s,
        "spec:\n  podSelector:\n    matchLabels:\n      app: echo-same\n  policyTypes: [Ingress]\n  ingress:\n  - ports:\n    - protocol: TCP\n      port: {lo}\n      endPort: {hi}\n"
    );
    s
}

fn np_ipblock_except(e: &PolicyEnv) -> String {
    let mut s = np(&e.ns1, "egress-ipblock-except");
    let o = e.ip_of(EchoSame).octets();
    let _ = write!(
        s,
        "spec:\n  podSelector:\n    matchLabels:\n      app: client\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock:\n        cidr: {}.{}.0.0/16\n        except: [\"{}/32\"]\n",
        o[0],
        o[1],
        e.ip_of(EchoOther)
    );
    s
}

fn cnp_ingress_deny(e: &PolicyEnv) -> String {
    let mut s = cnp(&e.ns1, "ingress-deny-client2");
    s.push_str("spec:\n  endpointSelector:\n    matchLabels:\n      app: echo-same\n  enableDefaultDeny:\n    ingress: false\n  ingressDeny:\n  - fromEndpoints:\n    - matchLabels:\n        app: client2\n");
    s
}

fn cnp_egress_deny(e: &PolicyEnv) -> String {
    let mut s = cnp(&e.ns1, "egress-deny-other-namespace");
    let _ = write!(
        s,
        "spec:\n  endpointSelector:\n    matchLabels:\n      app: client\n  enableDefaultDeny:\n    egress: false\n  egressDeny:\n  - toEndpoints:\n    - matchLabels:\n        k8s:io.kubernetes.pod.namespace: {}\n",
        e.ns2
    );
    s
}

fn cnp_from_entities_host(e: &PolicyEnv) -> String {
    let mut s = cnp(&e.ns1, "ingress-from-host");
    s.push_str("spec:\n  endpointSelector:\n    matchLabels:\n      app: echo-same\n  ingress:\n  - fromEntities: [host]\n");
    s
}

fn cnp_to_entities_host(e: &PolicyEnv) -> String {
    let mut s = cnp(&e.ns1, "egress-to-host");
    s.push_str("spec:\n  endpointSelector:\n    matchLabels:\n      app: client2\n  egress:\n  - toEntities: [host]\n");
    s
}

fn cnp_to_cluster(e: &PolicyEnv) -> String {
    let mut s = cnp(&e.ns1, "egress-to-cluster-tcp");
    let _ = write!(
        s,
        "spec:\n  endpointSelector:\n    matchLabels:\n      app: client2\n  egress:\n  - toEntities: [cluster]\n    toPorts:\n    - ports:\n      - port: \"{ECHO_TCP}\"\n        protocol: TCP\n"
    );
    s
}

fn cnp_to_cidr(e: &PolicyEnv) -> String {
    let mut s = cnp(&e.ns1, "egress-to-cidr");
    let _ = write!(
        s,
        "spec:\n  endpointSelector:\n    matchLabels:\n      app: client\n  egress:\n  - toCIDR: [\"{}/32\"]\n",
        e.ip_of(EchoSame)
    );
    s
}

fn cnp_port_range(e: &PolicyEnv) -> String {
    let mut s = cnp(&e.ns2, "ingress-port-range");
    let _ = write!(
        s,
        "spec:\n  endpointSelector:\n    matchLabels:\n      app: echo-other\n  ingress:\n  - fromEntities: [cluster]\n    toPorts:\n    - ports:\n      - port: \"{}\"\n        endPort: {}\n        protocol: TCP\n",
        ECHO_TCP_ALT - 10,
        ECHO_TCP_ALT + 10
    );
    s
}

fn np_named_port(e: &PolicyEnv) -> String {
    let mut s = np(&e.ns1, "ingress-named-port");
    s.push_str("spec:\n  podSelector:\n    matchLabels:\n      app: echo-same\n  policyTypes: [Ingress]\n  ingress:\n  - ports:\n    - protocol: TCP\n      port: tcp-alt\n");
    s
}

fn np_service_backend(e: &PolicyEnv) -> String {
    let mut s = np(&e.ns1, "service-backend-deny");
    s.push_str("spec:\n  podSelector:\n    matchLabels:\n      app: echo-same\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          app: client\n");
    s
}

fn cnp_deny_beats_allow(e: &PolicyEnv) -> String {
    let mut s = cnp(&e.ns1, "deny-beats-allow");
    s.push_str("spec:\n  endpointSelector:\n    matchLabels:\n      app: echo-same\n  ingress:\n  - fromEntities: [all]\n  ingressDeny:\n  - fromEndpoints:\n    - matchLabels:\n        app: client\n    toPorts:\n    - ports:\n      - port: \"0\"\n        protocol: TCP\n");
    s
}

fn ccnp_ingress_deny(e: &PolicyEnv) -> String {
    format!(
        "---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: cilium-test-{}-deny-client2\nspec:\n  endpointSelector:\n    matchLabels:\n      k8s:io.kubernetes.pod.namespace: {}\n      app: echo-other\n  enableDefaultDeny:\n    ingress: false\n  ingressDeny:\n  - fromEndpoints:\n    - matchLabels:\n        k8s:io.kubernetes.pod.namespace: {}\n        app: client2\n",
        e.id, e.ns2, e.ns1
    )
}

/// Every scenario, in the order they run.
pub fn catalog() -> Vec<Scenario> {
    let plain = |name, about, probes: Vec<ProbeSpec>| Scenario {
        name,
        about,
        policy: None,
        probes,
        host_socket_lb: false,
    };
    let pol = |name, about, policy: fn(&PolicyEnv) -> String, probes: Vec<ProbeSpec>| Scenario {
        name,
        about,
        policy: Some(policy),
        probes,
        host_socket_lb: false,
    };
    vec![
        plain(
            "pod-to-pod/same-namespace",
            "pods of one namespace reach each other both ways, TCP and UDP",
            vec![
                p(Pod(Client), To::Pod(EchoSame, ECHO_TCP), Tcp, Connected),
                p(Pod(Client), To::Pod(EchoSame, ECHO_UDP), Udp, Connected),
                p(Pod(EchoSame), To::Pod(Client, ECHO_TCP), Tcp, Connected),
                p(Pod(EchoSame), To::Pod(Client, ECHO_UDP), Udp, Connected),
            ],
        ),
        plain(
            "pod-to-pod/cross-namespace",
            "pods of different namespaces reach each other both ways, TCP and UDP",
            vec![
                p(Pod(Client), To::Pod(EchoOther, ECHO_TCP), Tcp, Connected),
                p(Pod(Client), To::Pod(EchoOther, ECHO_UDP), Udp, Connected),
                p(Pod(EchoOther), To::Pod(Client, ECHO_TCP), Tcp, Connected),
                p(Pod(EchoOther), To::Pod(Client, ECHO_UDP), Udp, Connected),
            ],
        ),
        plain(
            "pod-to-pod/closed-port-refused",
            "a port nothing listens on is refused at once (TCP RST, ICMP port unreachable)",
            vec![
                p(Pod(Client), To::Pod(EchoSame, CLOSED_PORT), Tcp, Refused),
                p(Pod(Client), To::Pod(EchoOther, CLOSED_PORT), Udp, Refused),
            ],
        ),
        plain(
            "pod-to-host/gateway",
            "pods reach a listener of the host on the gateway address",
            vec![
                p(Pod(Client), To::Host, Tcp, Connected),
                p(Pod(Client), To::Host, Udp, Connected),
                p(Pod(EchoOther), To::Host, Tcp, Connected),
            ],
        ),
        plain(
            "host-to-pod/direct",
            "the host reaches pods of both namespaces",
            vec![
                p(Host, To::Pod(EchoSame, ECHO_TCP), Tcp, Connected),
                p(Host, To::Pod(EchoSame, ECHO_UDP), Udp, Connected),
                p(Host, To::Pod(EchoOther, ECHO_TCP), Tcp, Connected),
            ],
        ),
        plain(
            "pod-to-service/cluster-ip",
            "pods reach a ClusterIP service backed by pods of both namespaces, TCP and UDP",
            vec![
                p(Pod(Client), To::Service(Svc::Echo, SVC_TCP), Tcp, Connected),
                p(Pod(Client), To::Service(Svc::Echo, SVC_UDP), Udp, Connected),
                p(
                    Pod(EchoOther),
                    To::Service(Svc::Echo, SVC_TCP),
                    Tcp,
                    Connected,
                ),
            ],
        ),
        Scenario {
            host_socket_lb: true,
            ..plain(
                "host-to-service/cluster-ip",
                "the host reaches a ClusterIP service (socket load balancing), TCP and UDP",
                vec![
                    p(Host, To::Service(Svc::Echo, SVC_TCP), Tcp, Connected),
                    p(Host, To::Service(Svc::Echo, SVC_UDP), Udp, Connected),
                ],
            )
        },
        plain(
            "service/no-endpoints-pod",
            "a service without endpoints refuses pods at once (not a timeout)",
            vec![
                p(
                    Pod(Client),
                    To::Service(Svc::NoEndpoints, SVC_TCP),
                    Tcp,
                    Refused,
                ),
                p(
                    Pod(Client),
                    To::Service(Svc::NoEndpoints, SVC_UDP),
                    Udp,
                    Refused,
                ),
            ],
        ),
        Scenario {
            host_socket_lb: true,
            ..plain(
                "service/no-endpoints-host",
                "a service without endpoints refuses the host at once (not a timeout)",
                vec![p(
                    Host,
                    To::Service(Svc::NoEndpoints, SVC_TCP),
                    Tcp,
                    Refused,
                )],
            )
        },
        pol(
            "policy/np-ingress-default-deny",
            "NetworkPolicy with no ingress rule isolates echo-same; echo-other stays open",
            np_ingress_default_deny,
            vec![
                p(
                    Pod(Client),
                    To::Pod(EchoSame, ECHO_TCP),
                    Tcp,
                    Dropped(DENIED),
                ),
                p(
                    Pod(Client),
                    To::Pod(EchoSame, ECHO_UDP),
                    Udp,
                    Dropped(DENIED),
                ),
                p(Pod(Client), To::Pod(EchoOther, ECHO_TCP), Tcp, Connected),
            ],
        ),
        pol(
            "policy/np-ingress-allow",
            "NetworkPolicy ingress allows client (podSelector, TCP+UDP ports), drops client2",
            np_ingress_allow,
            vec![
                p(Pod(Client), To::Pod(EchoSame, ECHO_TCP), Tcp, Connected),
                p(Pod(Client), To::Pod(EchoSame, ECHO_UDP), Udp, Connected),
                p(
                    Pod(Client),
                    To::Pod(EchoSame, ECHO_TCP_ALT),
                    Tcp,
                    Dropped(DENIED),
                ),
                p(
                    Pod(Client2),
                    To::Pod(EchoSame, ECHO_TCP),
                    Tcp,
                    Dropped(DENIED),
                ),
            ],
        ),
        pol(
            "policy/np-ingress-cross-namespace",
            "NetworkPolicy ingress from namespaceSelector AND podSelector of the other namespace",
            np_ingress_cross_ns,
            vec![
                p(Pod(Client), To::Pod(EchoOther, ECHO_TCP), Tcp, Connected),
                p(
                    Pod(Client2),
                    To::Pod(EchoOther, ECHO_TCP),
                    Tcp,
                    Dropped(DENIED),
                ),
            ],
        ),
        pol(
            "policy/np-egress-allow",
            "NetworkPolicy egress lets client2 reach echo-same only",
            np_egress_allow,
            vec![
                p(Pod(Client2), To::Pod(EchoSame, ECHO_TCP), Tcp, Connected),
                p(Pod(Client2), To::Pod(EchoSame, ECHO_UDP), Udp, Connected),
                p(
                    Pod(Client2),
                    To::Pod(EchoOther, ECHO_TCP),
                    Tcp,
                    Dropped(DENIED),
                ),
                p(Pod(Client), To::Pod(EchoOther, ECHO_TCP), Tcp, Connected),
            ],
        ),
        pol(
            "policy/np-port-range",
            "NetworkPolicy ingress port range (port + endPort) admits ports inside it only",
            np_port_range,
            vec![
                p(Pod(Client), To::Pod(EchoSame, ECHO_TCP), Tcp, Connected),
                p(
                    Pod(Client),
                    To::Pod(EchoSame, ECHO_TCP_ALT),
                    Tcp,
                    Dropped(DENIED),
                ),
            ],
        ),
        pol(
            "policy/np-named-port",
            "NetworkPolicy ingress on a named port (tcp-alt) of the pod",
            np_named_port,
            vec![
                p(Pod(Client), To::Pod(EchoSame, ECHO_TCP_ALT), Tcp, Connected),
                p(
                    Pod(Client),
                    To::Pod(EchoSame, ECHO_TCP),
                    Tcp,
                    Dropped(DENIED),
                ),
            ],
        ),
        pol(
            "policy/np-service-backend",
            "service traffic is policy-checked at the backend with the client's identity",
            np_service_backend,
            vec![
                p(
                    Pod(Client),
                    To::Service(Svc::EchoSame, SVC_TCP),
                    Tcp,
                    Connected,
                ),
                p(
                    Pod(Client2),
                    To::Service(Svc::EchoSame, SVC_TCP),
                    Tcp,
                    Dropped(DENIED),
                ),
            ],
        ),
        pol(
            "policy/np-ipblock-except",
            "NetworkPolicy egress ipBlock of the pod range with one pod /32 excepted",
            np_ipblock_except,
            vec![
                p(Pod(Client), To::Pod(EchoSame, ECHO_TCP), Tcp, Connected),
                p(
                    Pod(Client),
                    To::Pod(EchoOther, ECHO_TCP),
                    Tcp,
                    Dropped(DENIED),
                ),
            ],
        ),
        pol(
            "policy/cnp-ingress-deny",
            "CiliumNetworkPolicy ingressDeny drops client2 only (default deny disabled)",
            cnp_ingress_deny,
            vec![
                p(Pod(Client), To::Pod(EchoSame, ECHO_TCP), Tcp, Connected),
                p(
                    Pod(Client2),
                    To::Pod(EchoSame, ECHO_TCP),
                    Tcp,
                    Dropped(DENY),
                ),
                p(
                    Pod(Client2),
                    To::Pod(EchoSame, ECHO_UDP),
                    Udp,
                    Dropped(DENY),
                ),
            ],
        ),
        pol(
            "policy/cnp-deny-beats-allow",
            "CiliumNetworkPolicy ingressDeny on TCP wins over an allow-all rule; UDP stays allowed",
            cnp_deny_beats_allow,
            vec![
                p(Pod(Client), To::Pod(EchoSame, ECHO_TCP), Tcp, Dropped(DENY)),
                p(Pod(Client), To::Pod(EchoSame, ECHO_UDP), Udp, Connected),
                p(Pod(Client2), To::Pod(EchoSame, ECHO_TCP), Tcp, Connected),
            ],
        ),
        pol(
            "policy/ccnp-ingress-deny",
            "CiliumClusterwideNetworkPolicy ingressDeny across namespaces",
            ccnp_ingress_deny,
            vec![
                p(Pod(Client), To::Pod(EchoOther, ECHO_TCP), Tcp, Connected),
                p(
                    Pod(Client2),
                    To::Pod(EchoOther, ECHO_TCP),
                    Tcp,
                    Dropped(DENY),
                ),
            ],
        ),
        pol(
            "policy/cnp-egress-deny",
            "CiliumNetworkPolicy egressDeny to the other namespace (default deny disabled)",
            cnp_egress_deny,
            vec![
                p(Pod(Client), To::Pod(EchoSame, ECHO_TCP), Tcp, Connected),
                p(
                    Pod(Client),
                    To::Pod(EchoOther, ECHO_TCP),
                    Tcp,
                    Dropped(DENY),
                ),
            ],
        ),
        pol(
            "policy/cnp-from-entities-host",
            "CiliumNetworkPolicy fromEntities host: the host gets in, pods do not",
            cnp_from_entities_host,
            vec![
                p(Host, To::Pod(EchoSame, ECHO_TCP), Tcp, Connected),
                p(
                    Pod(Client),
                    To::Pod(EchoSame, ECHO_TCP),
                    Tcp,
                    Dropped(DENIED),
                ),
            ],
        ),
        pol(
            "policy/cnp-to-entities-host",
            "CiliumNetworkPolicy toEntities host: client2 reaches the host, not pods",
            cnp_to_entities_host,
            vec![
                p(Pod(Client2), To::Host, Tcp, Connected),
                p(
                    Pod(Client2),
                    To::Pod(EchoSame, ECHO_TCP),
                    Tcp,
                    Dropped(DENIED),
                ),
            ],
        ),
        pol(
            "policy/cnp-to-entities-cluster-port",
            "CiliumNetworkPolicy toEntities cluster on one TCP port: other ports and UDP drop",
            cnp_to_cluster,
            vec![
                p(Pod(Client2), To::Pod(EchoOther, ECHO_TCP), Tcp, Connected),
                p(
                    Pod(Client2),
                    To::Pod(EchoOther, ECHO_TCP_ALT),
                    Tcp,
                    Dropped(DENIED),
                ),
                p(
                    Pod(Client2),
                    To::Pod(EchoSame, ECHO_UDP),
                    Udp,
                    Dropped(DENIED),
                ),
            ],
        ),
        pol(
            "policy/cnp-to-cidr",
            "CiliumNetworkPolicy toCIDR of one pod's /32: only that pod is reachable",
            cnp_to_cidr,
            vec![
                p(Pod(Client), To::Pod(EchoSame, ECHO_TCP), Tcp, Connected),
                p(
                    Pod(Client),
                    To::Pod(EchoOther, ECHO_TCP),
                    Tcp,
                    Dropped(DENIED),
                ),
            ],
        ),
        pol(
            "policy/cnp-port-range",
            "CiliumNetworkPolicy ingress toPorts with endPort: inside the range only",
            cnp_port_range,
            vec![
                p(
                    Pod(Client),
                    To::Pod(EchoOther, ECHO_TCP_ALT),
                    Tcp,
                    Connected,
                ),
                p(
                    Pod(Client),
                    To::Pod(EchoOther, ECHO_TCP),
                    Tcp,
                    Dropped(DENIED),
                ),
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> PolicyEnv {
        PolicyEnv {
            id: "1f".into(),
            ns1: "cilium-test-1f-1".into(),
            ns2: "cilium-test-1f-2".into(),
            ips: [
                "10.200.0.10".parse().unwrap(),
                "10.200.0.11".parse().unwrap(),
                "10.200.0.12".parse().unwrap(),
                "10.200.0.13".parse().unwrap(),
            ],
        }
    }

    #[test]
    fn names_are_unique_grouped_and_policies_parse() {
        let all = catalog();
        let mut names = std::collections::BTreeSet::new();
        for s in &all {
            assert!(names.insert(s.name), "{} twice", s.name);
            assert!(s.name.contains('/'), "{} has no group", s.name);
            assert!(!s.probes.is_empty(), "{} has no probes", s.name);
            if let Some(policy) = s.policy {
                let yaml = policy(&env());
                let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
                assert!(v["kind"].as_str().unwrap().contains("NetworkPolicy"));
                // Cluster-scoped objects carry the run id so cleanup can find them.
                if v["metadata"]["namespace"].is_null() {
                    assert!(
                        v["metadata"]["name"]
                            .as_str()
                            .unwrap()
                            .starts_with("cilium-test-1f-"),
                        "{yaml}"
                    );
                }
                // A policy scenario must be able to fail: it drops something.
                assert!(
                    s.probes
                        .iter()
                        .any(|p| matches!(p.expect, Expect::Dropped(_))),
                    "{} checks no drop",
                    s.name
                );
            }
        }
        assert!(all.len() >= 25, "only {} scenarios", all.len());
    }

    #[test]
    fn ipblock_except_names_the_excepted_pod() {
        let y = np_ipblock_except(&env());
        assert!(y.contains("cidr: 10.200.0.0/16"), "{y}");
        assert!(y.contains("except: [\"10.200.0.13/32\"]"), "{y}");
    }
}
