//! Unit tests: parsing and validation, frontend computation per service type, traffic
//! policies, backend states, named ports, affinity, ids and allocations across restarts,
//! conflicts, and a 10,000-service apply.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use cilium_ipam::IpamEntry;
use cilium_node::StateFile;
use cilium_resources::{
    NamespaceKind, PodKind, Resources, ResourcesError, new_namespaces_table, new_pods_table,
};
use statedb::{Db, Table};

use super::*;

const NODE: &str = "node-a";

struct Fixture {
    dir: tempfile::TempDir,
    addresses: Vec<Ipv4Addr>,
    /// `--k8s-service-proxy-name`.
    proxy_name: String,
}

struct Agent {
    db: Db,
    res: Arc<Resources>,
    ipam: Table<IpamEntry>,
    writer: Arc<Writer>,
}

impl Fixture {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            addresses: vec![Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)],
            proxy_name: String::new(),
        }
    }

    /// A fresh database, registry and writer over the same state directory (a restart).
    fn agent(&self) -> Agent {
        let db = Db::new();
        let res = Resources::new(
            db.clone(),
            StateFile::new(self.dir.path().join("resources.json")),
            None,
        )
        .unwrap();
        let namespaces = new_namespaces_table(&db).unwrap();
        res.register(NamespaceKind { table: namespaces }).unwrap();
        let pods = new_pods_table(&db).unwrap();
        res.register(PodKind {
            table: pods.clone(),
        })
        .unwrap();
        let claims = Arc::new(Claims::default());
        let service_objects = new_service_objects_table(&db).unwrap();
        res.register(ServiceKind {
            table: service_objects.clone(),
            claims: claims.clone(),
            proxy_name: self.proxy_name.clone(),
        })
        .unwrap();
        let slices = new_endpoint_slices_table(&db).unwrap();
        res.register(EndpointSliceKind {
            table: slices.clone(),
        })
        .unwrap();
        let ipam = cilium_ipam::new_table(&db).unwrap();
        let writer = Writer::new(WriterParams {
            db: db.clone(),
            node: NodeInfo {
                name: NODE.into(),
                addresses: self.addresses.clone(),
            },
            service_cidr: "10.96.0.0/16".parse().unwrap(),
            proxy_name: self.proxy_name.clone(),
            state: StateFile::new(self.dir.path().join(STATE_FILE)),
            service_objects,
            slices,
            pods: Some(pods),
            ipam: Some(ipam.clone()),
            services: new_services_table(&db).unwrap(),
            frontends: new_frontends_table(&db).unwrap(),
            backends: new_backends_table(&db).unwrap(),
            claims,
            health: None,
        })
        .unwrap();
        let a = Agent {
            db,
            res: Arc::new(res),
            ipam,
            writer: Arc::new(writer),
        };
        a.sync();
        a
    }
}

impl Agent {
    fn sync(&self) -> SyncStats {
        self.writer.sync().unwrap().0
    }

    fn apply(&self, yaml: &str) {
        self.res.apply(yaml).unwrap();
        self.sync();
    }

    fn errors(&self, yaml: &str) -> Vec<String> {
        match self.res.apply(yaml) {
            Err(ResourcesError::Invalid(errs)) => errs.iter().map(|e| e.to_string()).collect(),
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    fn delete(&self, yaml: &str) {
        self.res.delete(yaml).unwrap();
        self.sync();
    }

    fn frontend(&self, addr: &str) -> Option<Frontend> {
        let a: L3n4Addr = addr.parse().unwrap();
        self.writer
            .frontends()
            .get(&self.db.read_txn(), &frontend_query(&a))
            .map(|f| (*f).clone())
    }

    fn frontends(&self, ns: &str, name: &str) -> Vec<Frontend> {
        self.writer
            .frontends()
            .list(
                &self.db.read_txn(),
                &frontends_of(&ServiceName::new(ns, name)),
            )
            .map(|f| (*f).clone())
            .collect()
    }

    fn service(&self, ns: &str, name: &str) -> Option<Service> {
        self.writer
            .services()
            .get(
                &self.db.read_txn(),
                &service_query(&ServiceName::new(ns, name)),
            )
            .map(|s| (*s).clone())
    }

    fn backend_list(&self, addr: &str) -> Vec<(String, BackendState)> {
        self.frontend(addr)
            .unwrap_or_else(|| panic!("no frontend {addr}"))
            .backends
            .iter()
            .map(|b| (format!("{}:{}", b.address, b.port), b.state))
            .collect()
    }
}

fn svc(name: &str, spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n{spec}\n")
}

/// An EndpointSlice: `endpoints` lines are `ip,ready,serving,terminating,node`.
fn slice(name: &str, service: &str, ports: &str, endpoints: &[&str]) -> String {
    let mut eps = String::new();
    for e in endpoints {
        let f: Vec<&str> = e.split(',').collect();
        eps.push_str(&format!(
            "- addresses: [\"{}\"]\n  conditions: {{ready: {}, serving: {}, terminating: {}}}\n  nodeName: {}\n",
            f[0], f[1], f[2], f[3], f[4]
        ));
    }
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nports:\n{ports}\nendpoints:\n{eps}"
    )
}

const HTTP_PORT: &str = "- name: http\n  port: 8080\n  protocol: TCP";

fn active(ip: &str) -> String {
    format!("{ip},true,true,false,{NODE}")
}

#[test]
fn service_errors_name_document_field_and_reason() {
    let fx = Fixture::new();
    let a = fx.agent();
    let bad = format!(
        "{}---\n{}",
        svc(
            "web",
            "  type: Weird\n  clusterIP: 10.96.0.300\n  ports:\n  - name: http\n    port: 70000\n    targetPort: -x-\n  - port: 81\n    nodePort: 30001\n  sessionAffinity: Sometimes\n  externalTrafficPolicy: Nearby"
        ),
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s\naddressType: IPv6\nendpoints:\n- addresses: [\"fe80::1\"]\nports:\n- name: http\n"
    );
    let errs = a.errors(&bad);
    let all = errs.join("\n");
    for want in [
        "document 1 (Service default/web): spec.type: must be ClusterIP, NodePort, LoadBalancer or ExternalName",
        "spec.clusterIP: must be an IPv4 address",
        "spec.ports[0].port: must be 1-65535, got 70000",
        "spec.ports[0].targetPort: must be a port number or a port name",
        "spec.ports[1].name: required when the service has more than one port",
        "spec.ports[1].nodePort: only allowed for type NodePort or LoadBalancer",
        "spec.sessionAffinity: must be None or ClientIP",
        "spec.externalTrafficPolicy: must be Cluster or Local",
        "document 2 (EndpointSlice default/s): metadata.labels[kubernetes.io/service-name]: required",
        "addressType: only IPv4 is supported",
        "endpoints[0].addresses[0]: must be an IPv4 address",
        "ports[0].port: required",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
    // Nothing was applied.
    assert!(a.res.list("service", None, None).unwrap().is_empty());
    assert!(a.res.list("endpointslices", None, None).unwrap().is_empty());

    let errs = a.errors(&svc("x", "  type: ExternalName\n  ports:\n  - port: 80"));
    assert!(
        errs[0].contains("spec.externalName: required for type ExternalName"),
        "{errs:?}"
    );
    let errs = a.errors(&svc(
        "x",
        "  type: ExternalName\n  externalName: db_1.example.com\n  clusterIP: 10.96.0.9",
    ));
    let all = errs.join("\n");
    assert!(all.contains("spec.externalName: "), "{all}");
    assert!(
        all.contains("spec.clusterIP: must be empty for type ExternalName"),
        "{all}"
    );
    let errs = a.errors(&svc("x", "  clusterIP: None\n  type: NodePort"));
    assert!(
        errs[0].contains("None (headless) needs type ClusterIP"),
        "{errs:?}"
    );
    let errs = a.errors(&svc("x", "  type: ClusterIP"));
    assert!(errs[0].contains("spec.ports: required"), "{errs:?}");
    let errs = a.errors(&svc(
        "x",
        "  ports:\n  - name: a\n    port: 80\n  - name: b\n    port: 80",
    ));
    assert!(
        errs[0].contains("spec.ports[1].port: port 80/TCP is already used by spec.ports[0]"),
        "{errs:?}"
    );
    let errs = a.errors(&svc(
        "x",
        "  type: NodePort\n  ports:\n  - port: 80\n    nodePort: 80",
    ));
    assert!(errs[0].contains("must be 30000-32767"), "{errs:?}");
    let errs = a.errors(&svc(
        "x",
        "  ports:\n  - port: 80\n  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 0",
    ));
    assert!(
        errs[0].contains("spec.sessionAffinityConfig.clientIP.timeoutSeconds: must be 1-86400"),
        "{errs:?}"
    );
}

#[test]
fn all_or_nothing_with_a_bad_slice() {
    let fx = Fixture::new();
    let a = fx.agent();
    let file = format!(
        "{}---\n{}",
        svc("web", "  ports:\n  - port: 80"),
        slice("web-1", "web", "- port: 99999", &[&active("10.200.0.5")])
    );
    let errs = a.errors(&file);
    assert!(
        errs[0].contains("ports[0].port: must be 1-65535"),
        "{errs:?}"
    );
    a.sync();
    assert!(a.service("default", "web").is_none());
}

#[test]
fn cluster_ip_states_and_terminating_fallback() {
    let fx = Fixture::new();
    let a = fx.agent();
    a.apply(&format!(
        "{}---\n{}",
        svc(
            "web",
            "  clusterIP: 10.96.0.10\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080"
        ),
        slice(
            "web-1",
            "web",
            HTTP_PORT,
            &[
                &active("10.200.0.5"),
                &active("10.200.0.6"),
                &format!("10.200.0.7,false,true,true,{NODE}"),
                &format!("10.200.0.8,false,false,false,{NODE}"),
            ]
        )
    ));
    let f = a.frontend("10.96.0.10:80/TCP").unwrap();
    assert_eq!(f.kind, FrontendKind::ClusterIp);
    assert!(f.service_id > 0);
    assert_eq!(f.affinity_timeout_secs, 0);
    assert_eq!(
        a.backend_list("10.96.0.10:80/TCP"),
        vec![
            ("10.200.0.5:8080".into(), BackendState::Active),
            ("10.200.0.6:8080".into(), BackendState::Active)
        ]
    );
    assert!(f.backends.iter().all(|b| b.id > 0));
    // Every backend is in the backends table with its condition, selected or not.
    let infos = api::list(&a.writer);
    let conds: Vec<(String, String)> = infos[0]
        .backends
        .iter()
        .map(|b| (b.address.clone(), b.condition.clone()))
        .collect();
    assert_eq!(
        conds,
        vec![
            ("10.200.0.5".into(), "active".into()),
            ("10.200.0.6".into(), "active".into()),
            ("10.200.0.7".into(), "terminating".into()),
            ("10.200.0.8".into(), "not-ready".into()),
        ]
    );

    // No active backend left: the terminating (serving) one takes over.
    a.apply(&slice(
        "web-1",
        "web",
        HTTP_PORT,
        &[
            &format!("10.200.0.5,false,false,false,{NODE}"),
            &format!("10.200.0.7,false,true,true,{NODE}"),
            &format!("10.200.0.9,false,false,true,{NODE}"),
        ],
    ));
    assert_eq!(
        a.backend_list("10.96.0.10:80/TCP"),
        vec![("10.200.0.7:8080".into(), BackendState::Terminating)]
    );
    // Nothing serving: an empty selection (the service refuses connections).
    a.apply(&slice(
        "web-1",
        "web",
        HTTP_PORT,
        &[&format!("10.200.0.5,false,false,false,{NODE}")],
    ));
    assert!(a.backend_list("10.96.0.10:80/TCP").is_empty());
    // Deleting the slice keeps the frontend with no backends; the backend rows go away.
    a.delete(&slice("web-1", "web", HTTP_PORT, &[]));
    assert!(a.frontend("10.96.0.10:80/TCP").unwrap().backends.is_empty());
    assert_eq!(a.writer.backends().len(&a.db.read_txn()), 0);
}

#[test]
fn publish_not_ready_addresses_uses_every_endpoint() {
    let fx = Fixture::new();
    let a = fx.agent();
    a.apply(&format!(
        "{}---\n{}",
        svc(
            "db",
            "  clusterIP: 10.96.0.11\n  publishNotReadyAddresses: true\n  ports:\n  - name: http\n    port: 80"
        ),
        slice(
            "db-1",
            "db",
            HTTP_PORT,
            &[
                &format!("10.200.0.5,false,false,false,{NODE}"),
                &format!("10.200.0.6,false,true,true,{NODE}"),
            ]
        )
    ));
    assert_eq!(
        a.backend_list("10.96.0.11:80/TCP"),
        vec![
            ("10.200.0.5:8080".into(), BackendState::Active),
            ("10.200.0.6:8080".into(), BackendState::Active)
        ]
    );
}

#[test]
fn nodeport_loadbalancer_and_external_ips() {
    let fx = Fixture::new();
    let a = fx.agent();
    a.apply(&format!(
        "{}---\n{}",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: lb\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.12\n  externalIPs: [\"198.51.100.7\"]\n  ports:\n  - name: http\n    port: 80\n    nodePort: 30080\n  - name: dns\n    port: 53\n    protocol: UDP\nstatus:\n  loadBalancer:\n    ingress:\n    - ip: 203.0.113.9\n    - hostname: lb.example\n",
        slice(
            "lb-1",
            "lb",
            "- name: http\n  port: 8080\n- name: dns\n  port: 5353\n  protocol: UDP",
            &[&active("10.200.0.5")]
        )
    ));
    let mut got: Vec<(String, FrontendKind)> = a
        .frontends("default", "lb")
        .iter()
        .map(|f| (f.addr().to_string(), f.kind))
        .collect();
    got.sort();
    let row = a.service("default", "lb").unwrap();
    let dns_np = row.ports[1].node_port;
    assert!(
        (NODE_PORT_RANGE.0..=NODE_PORT_RANGE.1).contains(&dns_np),
        "{dns_np}"
    );
    let mut want = vec![
        ("10.96.0.12:80/TCP".to_string(), FrontendKind::ClusterIp),
        ("10.96.0.12:53/UDP".to_string(), FrontendKind::ClusterIp),
        ("198.51.100.7:80/TCP".to_string(), FrontendKind::ExternalIp),
        ("198.51.100.7:53/UDP".to_string(), FrontendKind::ExternalIp),
        ("203.0.113.9:80/TCP".to_string(), FrontendKind::LoadBalancer),
        ("203.0.113.9:53/UDP".to_string(), FrontendKind::LoadBalancer),
        ("192.0.2.1:30080/TCP".to_string(), FrontendKind::NodePort),
        ("192.0.2.2:30080/TCP".to_string(), FrontendKind::NodePort),
        (format!("192.0.2.1:{dns_np}/UDP"), FrontendKind::NodePort),
        (format!("192.0.2.2:{dns_np}/UDP"), FrontendKind::NodePort),
    ];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        a.backend_list(&format!("192.0.2.2:{dns_np}/UDP")),
        vec![("10.200.0.5:5353".into(), BackendState::Active)]
    );
    // Distinct frontends get distinct service ids.
    let mut ids: Vec<u16> = a
        .frontends("default", "lb")
        .iter()
        .map(|f| f.service_id)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10);

    // Turning it into a ClusterIP service drops node ports and LB ingress frontends.
    a.apply(&svc(
        "lb",
        "  clusterIP: 10.96.0.12\n  ports:\n  - name: http\n    port: 80\n  - name: dns\n    port: 53\n    protocol: UDP",
    ));
    assert_eq!(a.frontends("default", "lb").len(), 2);
    assert!(a.frontend("192.0.2.1:30080/TCP").is_none());
}

/// `allocateLoadBalancerNodePorts: false`: only the node ports given get NodePort frontends;
/// an ingress with `ipMode: Proxy` is not a frontend (the load balancer proxies itself).
#[test]
fn load_balancer_without_node_ports_and_proxy_ingress() {
    let fx = Fixture::new();
    let a = fx.agent();
    let spec = |alloc: &str, mode: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: lb\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.14\n{alloc}  ports:\n  - name: http\n    port: 80\n    nodePort: 30085\n  - name: dns\n    port: 53\n    protocol: UDP\nstatus:\n  loadBalancer:\n    ingress:\n    - ip: 203.0.113.9\n    - ip: 203.0.113.10\n{mode}"
        )
    };
    a.apply(&spec(
        "  allocateLoadBalancerNodePorts: false\n",
        "      ipMode: Proxy\n",
    ));
    let row = a.service("default", "lb").unwrap();
    assert_eq!(
        row.ports.iter().map(|p| p.node_port).collect::<Vec<_>>(),
        [30085, 0]
    );
    let mut got: Vec<String> = a
        .frontends("default", "lb")
        .iter()
        .map(|f| f.addr().to_string())
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "10.96.0.14:53/UDP",
            "10.96.0.14:80/TCP",
            "192.0.2.1:30085/TCP",
            "192.0.2.2:30085/TCP",
            "203.0.113.9:53/UDP",
            "203.0.113.9:80/TCP",
        ]
    );
    // Allocation back on (the default), ipMode VIP: the UDP port gets a node port, the
    // second ingress its frontends.
    a.apply(&spec("", "      ipMode: VIP\n"));
    let row = a.service("default", "lb").unwrap();
    assert_ne!(row.ports[1].node_port, 0);
    assert_eq!(a.frontends("default", "lb").len(), 10);
    let errs = a.errors(&spec("", "      ipMode: Direct\n"));
    assert!(
        errs[0].contains("status.loadBalancer.ingress[1].ipMode: must be VIP or Proxy"),
        "{errs:?}"
    );
    let errs = a.errors(&svc(
        "c",
        "  allocateLoadBalancerNodePorts: false\n  ports:\n  - port: 80",
    ));
    assert!(
        errs[0].contains(
            "spec.allocateLoadBalancerNodePorts: may only be given when spec.type is LoadBalancer"
        ),
        "{errs:?}"
    );
}

#[test]
fn traffic_policies_local() {
    let fx = Fixture::new();
    let a = fx.agent();
    // 10.200.0.9 has no node name but is a local endpoint address (IPAM).
    {
        let mut w = a.db.write_txn(&[&a.ipam]).unwrap();
        a.ipam
            .insert(
                &mut w,
                IpamEntry {
                    ip: Ipv4Addr::new(10, 200, 0, 9),
                    owner: "cni:x:eth0".into(),
                    allocated_at: String::new(),
                },
            )
            .unwrap();
        w.commit();
    }
    let eps = [
        active("10.200.0.5"),
        "10.201.0.5,true,true,false,node-b".to_string(),
        "10.200.0.9,true,true,false,".to_string(),
    ];
    let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
    a.apply(&format!(
        "{}---\n{}",
        svc(
            "np",
            "  type: NodePort\n  clusterIP: 10.96.0.13\n  externalTrafficPolicy: Local\n  ports:\n  - name: http\n    port: 80\n    nodePort: 30081"
        ),
        slice("np-1", "np", HTTP_PORT, &eps)
    ));
    let all = vec![
        ("10.200.0.5:8080".to_string(), BackendState::Active),
        ("10.200.0.9:8080".to_string(), BackendState::Active),
        ("10.201.0.5:8080".to_string(), BackendState::Active),
    ];
    let local = vec![all[0].clone(), all[1].clone()];
    assert_eq!(a.backend_list("10.96.0.13:80/TCP"), all);
    assert_eq!(a.backend_list("192.0.2.1:30081/TCP"), local);
    let f = a.frontend("192.0.2.1:30081/TCP").unwrap();
    assert!(f.ext_traffic_local && !f.int_traffic_local);
    // Clients on this node reach the NodePort frontend's every backend (kube-proxy's
    // cluster chain for pods and local processes); the ClusterIP frontend has one set.
    let internal = |addr: &str| {
        a.frontend(addr)
            .and_then(|f| f.internal_backends)
            .map(|set| {
                set.iter()
                    .map(|b| (format!("{}:{}", b.address, b.port), b.state))
                    .collect::<Vec<_>>()
            })
    };
    assert_eq!(internal("192.0.2.1:30081/TCP"), Some(all.clone()));
    assert_eq!(internal("10.96.0.13:80/TCP"), None);
    // Every backend local: one set serves both.
    a.apply(&slice("np-1", "np", HTTP_PORT, &eps[..1]));
    assert_eq!(a.backend_list("192.0.2.1:30081/TCP"), all[..1]);
    assert_eq!(internal("192.0.2.1:30081/TCP"), None);
    // No backend here: outside clients are refused, the node's own clients are not.
    a.apply(&slice("np-1", "np", HTTP_PORT, &eps[1..2]));
    assert!(a.backend_list("192.0.2.1:30081/TCP").is_empty());
    assert_eq!(internal("192.0.2.1:30081/TCP"), Some(all[2..].to_vec()));
    a.apply(&slice("np-1", "np", HTTP_PORT, &eps));

    a.apply(&svc(
        "np",
        "  type: NodePort\n  clusterIP: 10.96.0.13\n  internalTrafficPolicy: Local\n  ports:\n  - name: http\n    port: 80\n    nodePort: 30081",
    ));
    assert_eq!(a.backend_list("10.96.0.13:80/TCP"), local);
    assert_eq!(a.backend_list("192.0.2.1:30081/TCP"), all);
    assert_eq!(internal("192.0.2.1:30081/TCP"), None);

    // Only remote backends, with Local: the frontend refuses; the active-only fallback does
    // not reach across nodes.
    a.apply(&slice(
        "np-1",
        "np",
        HTTP_PORT,
        &["10.201.0.5,true,true,false,node-b"],
    ));
    assert!(a.backend_list("10.96.0.13:80/TCP").is_empty());
    // The local endpoint address going away is noticed (IPAM table change).
    a.apply(&slice(
        "np-1",
        "np",
        HTTP_PORT,
        &["10.200.0.9,true,true,false,"],
    ));
    assert_eq!(a.backend_list("10.96.0.13:80/TCP").len(), 1);
    {
        let mut w = a.db.write_txn(&[&a.ipam]).unwrap();
        a.ipam.delete_all(&mut w).unwrap();
        w.commit();
    }
    a.sync();
    assert!(a.backend_list("10.96.0.13:80/TCP").is_empty());
}

#[test]
fn named_target_ports_resolve_per_slice_and_per_pod() {
    let fx = Fixture::new();
    let a = fx.agent();
    a.apply(&format!(
        "{}---\n{}---\n{}",
        svc(
            "web",
            "  clusterIP: 10.96.0.14\n  ports:\n  - name: web\n    port: 80\n    targetPort: http"
        ),
        // Slice ports named after the target port, with different numbers per slice.
        slice(
            "web-a",
            "web",
            "- name: http\n  port: 8080",
            &[&active("10.200.0.5")]
        ),
        slice(
            "web-b",
            "web",
            "- name: http\n  port: 9090",
            &[&active("10.200.0.6")]
        )
    ));
    assert_eq!(
        a.backend_list("10.96.0.14:80/TCP"),
        vec![
            ("10.200.0.5:8080".into(), BackendState::Active),
            ("10.200.0.6:9090".into(), BackendState::Active)
        ]
    );
    // A slice without the port: the target pod's named container port is used, and the
    // pod changing its port is followed.
    let pod = |port: u16| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p1\nspec:\n  containers:\n  - name: c\n    ports:\n    - name: http\n      containerPort: {port}\n"
        )
    };
    a.apply(&pod(7070));
    a.apply(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-b\n  labels:\n    kubernetes.io/service-name: web\nendpoints:\n- addresses: [\"10.200.0.6\"]\n  targetRef: {kind: Pod, name: p1}\n",
    );
    assert_eq!(
        a.backend_list("10.96.0.14:80/TCP"),
        vec![
            ("10.200.0.5:8080".into(), BackendState::Active),
            ("10.200.0.6:7070".into(), BackendState::Active)
        ]
    );
    a.apply(&pod(7171));
    assert_eq!(a.backend_list("10.96.0.14:80/TCP")[1].0, "10.200.0.6:7171");
    // A slice port named like the service port wins (what Kubernetes writes).
    a.apply(&slice(
        "web-a",
        "web",
        "- name: web\n  port: 8443",
        &[&active("10.200.0.5")],
    ));
    assert_eq!(a.backend_list("10.96.0.14:80/TCP")[0].0, "10.200.0.5:8443");
}

#[test]
fn session_affinity_and_headless() {
    let fx = Fixture::new();
    let a = fx.agent();
    a.apply(&svc(
        "s1",
        "  clusterIP: 10.96.0.15\n  sessionAffinity: ClientIP\n  ports:\n  - port: 80",
    ));
    assert_eq!(
        a.frontend("10.96.0.15:80/TCP")
            .unwrap()
            .affinity_timeout_secs,
        DEFAULT_AFFINITY_TIMEOUT_SECS
    );
    a.apply(&svc(
        "s1",
        "  clusterIP: 10.96.0.15\n  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 5\n  ports:\n  - port: 80",
    ));
    assert_eq!(
        a.frontend("10.96.0.15:80/TCP")
            .unwrap()
            .affinity_timeout_secs,
        5
    );
    a.apply(&svc("h", "  clusterIP: None\n  ports:\n  - port: 80"));
    assert!(a.frontends("default", "h").is_empty());
    let h = a.service("default", "h").unwrap();
    assert_eq!(h.cluster_ip, None);
    assert!(h.error.is_none());
}

#[test]
fn single_port_numeric_target_port() {
    let fx = Fixture::new();
    let a = fx.agent();
    // Slice with no ports: the numeric targetPort; an unnamed single slice port: that one.
    a.apply(&format!(
        "{}---\n{}---\n{}",
        svc("n", "  clusterIP: 10.96.0.16\n  ports:\n  - port: 80\n    targetPort: 8000"),
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: n-1\n  labels:\n    kubernetes.io/service-name: n\nendpoints:\n- addresses: [\"10.200.0.5\"]\n",
        slice("n-2", "n", "- port: 8001", &[&active("10.200.0.6")])
    ));
    assert_eq!(
        a.backend_list("10.96.0.16:80/TCP"),
        vec![
            ("10.200.0.5:8000".into(), BackendState::Active),
            ("10.200.0.6:8001".into(), BackendState::Active)
        ]
    );
}

#[test]
fn ids_and_allocations_survive_a_restart_and_are_released() {
    let fx = Fixture::new();
    let (ids, bids, cip, np) = {
        let a = fx.agent();
        a.apply(&format!(
            "{}---\n{}---\n{}",
            svc("other", "  ports:\n  - port: 80"),
            svc(
                "web",
                "  type: NodePort\n  ports:\n  - name: http\n    port: 80"
            ),
            slice(
                "web-1",
                "web",
                HTTP_PORT,
                &[&active("10.200.0.5"), &active("10.200.0.6")]
            )
        ));
        let s = a.service("default", "web").unwrap();
        let cip = s.cluster_ip.unwrap();
        assert!(s.cluster_ip_allocated);
        assert!(
            "10.96.0.0/16"
                .parse::<ipnet::Ipv4Net>()
                .unwrap()
                .contains(&cip)
        );
        assert_ne!(a.service("default", "other").unwrap().cluster_ip, Some(cip));
        let np = s.ports[0].node_port;
        assert!((NODE_PORT_RANGE.0..=NODE_PORT_RANGE.1).contains(&np));
        let mut fronts = a.frontends("default", "web");
        fronts.sort_by_key(|f| f.addr());
        let ids: Vec<(L3n4Addr, u16)> = fronts.iter().map(|f| (f.addr(), f.service_id)).collect();
        let bids: Vec<u32> = fronts[0].backends.iter().map(|b| b.id).collect();
        (ids, bids, cip, np)
    };
    // A new instance over the same state directory.
    let b = fx.agent();
    let s = b.service("default", "web").unwrap();
    assert_eq!(s.cluster_ip, Some(cip));
    assert_eq!(s.ports[0].node_port, np);
    let mut fronts = b.frontends("default", "web");
    fronts.sort_by_key(|f| f.addr());
    let ids2: Vec<(L3n4Addr, u16)> = fronts.iter().map(|f| (f.addr(), f.service_id)).collect();
    assert_eq!(ids, ids2);
    let bids2: Vec<u32> = fronts[0].backends.iter().map(|b| b.id).collect();
    assert_eq!(bids, bids2);
    let (done, _) = b.writer.frontends().initialized(&b.db.read_txn());
    assert!(done);

    // Deleting releases the ids and allocations from lb.json.
    b.delete(&svc("web", "  ports:\n  - port: 80"));
    b.delete(&slice("web-1", "web", HTTP_PORT, &[]));
    let text = std::fs::read_to_string(fx.dir.path().join(STATE_FILE)).unwrap();
    assert!(!text.contains(&cip.to_string()), "{text}");
    assert!(!text.contains("10.200.0.5"), "{text}");
    assert!(!text.contains("default/web"), "{text}");
    assert!(text.contains("default/other"), "{text}");
}

#[test]
fn conflicts_are_rejected_naming_the_holder() {
    let fx = Fixture::new();
    let a = fx.agent();
    a.apply(&svc(
        "a",
        "  type: NodePort\n  clusterIP: 10.96.0.20\n  ports:\n  - port: 80\n    nodePort: 30100",
    ));
    // Committed holder: apply rejects at once.
    let errs = a.errors(&svc("b", "  clusterIP: 10.96.0.20\n  ports:\n  - port: 80"));
    assert!(
        errs[0].contains("spec.clusterIP: 10.96.0.20:80/TCP is already used by service default/a"),
        "{errs:?}"
    );
    let errs = a.errors(&svc(
        "b",
        "  type: NodePort\n  ports:\n  - port: 81\n    nodePort: 30100",
    ));
    assert!(
        errs[0].contains(
            "spec.ports[0].nodePort: nodePort 30100/TCP is already used by service default/a"
        ),
        "{errs:?}"
    );
    // Same IP, other port: fine. Same node port, other protocol: fine.
    a.apply(&svc(
        "c",
        "  type: NodePort\n  clusterIP: 10.96.0.20\n  ports:\n  - port: 81\n    protocol: UDP\n    nodePort: 30100",
    ));
    assert_eq!(a.frontends("default", "c").len(), 3);

    // Both in one file: the first one wins, the second is left without frontends and
    // names the first.
    a.apply(&format!(
        "{}---\n{}",
        svc("d", "  clusterIP: 10.96.0.30\n  ports:\n  - port: 80"),
        svc("e", "  clusterIP: 10.96.0.30\n  ports:\n  - port: 80"),
    ));
    assert_eq!(a.frontends("default", "d").len(), 1);
    assert!(a.frontends("default", "e").is_empty());
    let e = a.service("default", "e").unwrap();
    assert!(
        e.error
            .as_deref()
            .unwrap()
            .contains("10.96.0.30:80/TCP is already used by service default/d"),
        "{e:?}"
    );
    let info = api::list(&a.writer);
    assert!(info.iter().any(|s| s.name == "e" && s.error.is_some()));
    // The holder goes away: the waiting one gets the frontend.
    a.delete(&svc("d", "  ports:\n  - port: 80"));
    assert_eq!(a.frontends("default", "e").len(), 1);
    assert!(a.service("default", "e").unwrap().error.is_none());
    // Allocation never hands out an explicitly used address.
    a.apply(&svc("f", "  ports:\n  - port: 80"));
    let ip = a.service("default", "f").unwrap().cluster_ip.unwrap();
    assert!(ip != Ipv4Addr::new(10, 96, 0, 20) && ip != Ipv4Addr::new(10, 96, 0, 30));
}

#[test]
fn relabelled_slice_moves_backends() {
    let fx = Fixture::new();
    let a = fx.agent();
    a.apply(&format!(
        "{}---\n{}---\n{}",
        svc(
            "a",
            "  clusterIP: 10.96.0.40\n  ports:\n  - name: http\n    port: 80"
        ),
        svc(
            "b",
            "  clusterIP: 10.96.0.41\n  ports:\n  - name: http\n    port: 80"
        ),
        slice("s", "a", HTTP_PORT, &[&active("10.200.0.5")])
    ));
    assert_eq!(a.backend_list("10.96.0.40:80/TCP").len(), 1);
    a.apply(&slice("s", "b", HTTP_PORT, &[&active("10.200.0.5")]));
    assert!(a.backend_list("10.96.0.40:80/TCP").is_empty());
    assert_eq!(a.backend_list("10.96.0.41:80/TCP").len(), 1);
    // The shared backend row lists only b now.
    let r = a.db.read_txn();
    let rows: Vec<Arc<Backend>> = a.writer.backends().all(&r).map(|b| b.object()).collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].instances.len(), 1);
    assert_eq!(
        rows[0].instances[0].service,
        ServiceName::new("default", "b")
    );
}

#[test]
fn unchanged_apply_writes_nothing() {
    let fx = Fixture::new();
    let a = fx.agent();
    let file = format!(
        "{}---\n{}",
        svc("a", "  ports:\n  - name: http\n    port: 80"),
        slice("s", "a", HTTP_PORT, &[&active("10.200.0.5")])
    );
    a.apply(&file);
    let rev = a.writer.frontends().revision(&a.db.read_txn());
    a.res.apply(&file).unwrap();
    let stats = a.sync();
    assert_eq!(stats.frontends_written, 0);
    assert_eq!(a.writer.frontends().revision(&a.db.read_txn()), rev);
}

/// 10,000 services × 10 backends, applied as one JSON file: parse + table write time.
#[test]
fn ten_thousand_services_apply_fast() {
    let fx = Fixture::new();
    let a = fx.agent();
    let n = 10_000usize;
    let mut items = Vec::with_capacity(2 * n);
    for i in 0..n {
        let name = format!("svc-{i}");
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 10 + i as u32);
        items.push(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"clusterIP": ip.to_string(), "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }));
        let eps: Vec<serde_json::Value> = (0..10)
            .map(|j| {
                let b = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + (i * 10 + j) as u32 % 65000 + 2);
                serde_json::json!({"addresses": [b.to_string()], "conditions": {"ready": true}, "nodeName": NODE})
            })
            .collect();
        items.push(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-1"), "namespace": "bench",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080 + (i % 10) as u16}],
            "endpoints": eps,
        }));
    }
    let text = serde_json::to_string(
        &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}),
    )
    .unwrap();
    let t0 = Instant::now();
    a.res.apply(&text).unwrap();
    let t_apply = t0.elapsed();
    let t1 = Instant::now();
    let stats = a.sync();
    let t_write = t1.elapsed();
    let r = a.db.read_txn();
    assert_eq!(stats.services, n);
    assert_eq!(a.writer.frontends().len(&r), n);
    assert_eq!(a.writer.services().len(&r), n);
    assert!(a.writer.backends().len(&r) >= 65000);
    assert!(a.writer.frontends().all(&r).all(|f| f.backends.len() == 10));
    // Re-syncing after one more slice change touches one service only.
    let in_bench = |svc: &str, ip: &str| {
        slice(&format!("{svc}-1"), svc, HTTP_PORT, &[&active(ip)])
            .replace("metadata:\n", "metadata:\n  namespace: bench\n")
    };
    a.apply(&in_bench("svc-1", "10.250.0.1"));
    let t2 = Instant::now();
    a.res.apply(&in_bench("svc-2", "10.250.0.2")).unwrap();
    let t_one_apply = t2.elapsed();
    let t3 = Instant::now();
    let one = a.sync();
    let t_one = t3.elapsed();
    assert_eq!(one.services, 1);
    let text = std::fs::read_to_string(fx.dir.path().join(STATE_FILE)).unwrap();
    assert!(
        text.contains("10.250.0.2:8080/TCP"),
        "new backend id not persisted"
    );
    assert_eq!(
        a.backend_list("10.96.0.12:80/TCP"),
        vec![("10.250.0.2:8080".into(), BackendState::Active)]
    );
    let mut counts = BTreeMap::new();
    counts.insert("apply (parse, validate, persist resources.json)", t_apply);
    counts.insert("writer (tables + lb.json)", t_write);
    counts.insert("writer: of which lb.json", stats.persist);
    counts.insert("one-slice change: apply", t_one_apply);
    counts.insert("one-slice change: writer", t_one);
    counts.insert("one-slice change: writer lb.json", one.persist);
    eprintln!("10k services x 10 backends: {counts:?}");
}

#[tokio::test]
async fn services_route_shows_frontends_and_backends() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let fx = Fixture::new();
    let a = fx.agent();
    a.apply(&format!(
        "{}---\n{}",
        svc(
            "web",
            "  clusterIP: 10.96.0.10\n  sessionAffinity: ClientIP\n  ports:\n  - name: http\n    port: 80"
        ),
        slice(
            "web-1",
            "web",
            HTTP_PORT,
            &[&active("10.200.0.5"), &format!("10.200.0.6,false,false,false,{NODE}")]
        )
    ));
    let (router, doc) = api::router(a.writer.clone()).split_for_parts();
    assert!(doc.paths.paths.contains_key("/v1/services"));
    let req = axum::http::Request::builder()
        .uri("/v1/services")
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = router.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), axum::http::StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let s = &v[0];
    assert_eq!(s["name"], "web");
    assert_eq!(s["type"], "ClusterIP");
    assert_eq!(s["session_affinity"], "ClientIP");
    assert_eq!(s["affinity_timeout_secs"], 10800);
    assert_eq!(s["frontends"][0]["address"], "10.96.0.10");
    assert_eq!(s["frontends"][0]["kind"], "ClusterIP");
    assert_eq!(s["frontends"][0]["status"], "pending");
    assert_eq!(s["frontends"][0]["backends"][0]["address"], "10.200.0.5");
    assert_eq!(s["frontends"][0]["backends"][0]["state"], "active");
    assert_eq!(s["frontends"][0]["backends"].as_array().unwrap().len(), 1);
    assert_eq!(s["backends"].as_array().unwrap().len(), 2);
    assert_eq!(s["backends"][1]["condition"], "not-ready");
}

#[tokio::test]
async fn writer_job_follows_applies() {
    let fx = Fixture::new();
    let a = fx.agent();
    let cancel = hive::CancellationToken::new();
    let job = tokio::spawn(a.writer.clone().run(cancel.clone()));
    a.res
        .apply(&svc("w", "  clusterIP: 10.96.0.50\n  ports:\n  - port: 80"))
        .unwrap();
    let mut found = false;
    for _ in 0..500 {
        if a.frontend("10.96.0.50:80/TCP").is_some() {
            found = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(found, "the writer job did not write the frontend");
    cancel.cancel();
    job.await.unwrap().unwrap();
}

#[test]
fn load_balancer_source_ranges_apply_to_load_balancer_frontends_only() {
    let fx = Fixture::new();
    let a = fx.agent();
    let lb = "  type: LoadBalancer\n  clusterIP: 10.96.0.40\n  ports:\n  - port: 80\n    nodePort: 30040\n";
    let status = "status:\n  loadBalancer:\n    ingress:\n    - ip: 198.51.100.40\n";
    a.apply(&format!(
        "{}{status}",
        svc(
            "open",
            &format!("{lb}  loadBalancerSourceRanges: [\" 203.0.113.9/24 \", 192.0.2.7/32, 203.0.113.0/24]")
        )
    ));
    let want: Vec<Ipv4Net> = vec![
        "192.0.2.7/32".parse().unwrap(),
        "203.0.113.0/24".parse().unwrap(),
    ];
    assert_eq!(
        a.frontend("198.51.100.40:80/TCP").unwrap().source_ranges,
        want,
        "trimmed, host bits cleared, sorted, deduplicated"
    );
    assert!(
        a.frontend("10.96.0.40:80/TCP")
            .unwrap()
            .source_ranges
            .is_empty()
    );
    assert!(
        a.frontend("192.0.2.1:30040/TCP")
            .unwrap()
            .source_ranges
            .is_empty()
    );
    assert_eq!(a.service("default", "open").unwrap().source_ranges, want);

    // The annotation, when the field is empty.
    let annotated = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: ann\n  annotations:\n    {SOURCE_RANGES_ANNOTATION}: \"10.1.0.0/16, 10.2.0.0/16\"\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.41\n  ports:\n  - port: 80\n    nodePort: 30041\nstatus:\n  loadBalancer:\n    ingress:\n    - ip: 198.51.100.41\n"
    );
    a.apply(&annotated);
    assert_eq!(
        a.frontend("198.51.100.41:80/TCP").unwrap().source_ranges,
        vec![
            "10.1.0.0/16".parse::<Ipv4Net>().unwrap(),
            "10.2.0.0/16".parse().unwrap()
        ]
    );

    // Removing them clears the frontend.
    a.apply(&format!("{}{status}", svc("open", lb)));
    assert!(
        a.frontend("198.51.100.40:80/TCP")
            .unwrap()
            .source_ranges
            .is_empty()
    );

    for (spec, want) in [
        (
            format!("{lb}  loadBalancerSourceRanges: [10.0.0.0/33]"),
            "spec.loadBalancerSourceRanges[0]: must be an IPv4 CIDR like 192.0.2.0/24, got \"10.0.0.0/33\"",
        ),
        (
            format!("{lb}  loadBalancerSourceRanges: [\"2001:db8::/32\"]"),
            "IPv6 ranges are not supported",
        ),
        (
            format!("{lb}  loadBalancerSourceRanges: [7]"),
            "spec.loadBalancerSourceRanges[0]: must be a CIDR string, got a number",
        ),
        (
            "  type: NodePort\n  ports:\n  - port: 80\n  loadBalancerSourceRanges: [10.0.0.0/8]"
                .to_string(),
            "spec.loadBalancerSourceRanges[0]: source ranges may only be given when spec.type is LoadBalancer",
        ),
    ] {
        let errs = a.errors(&svc("bad", &spec));
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "missing {want:?} in {errs:?}"
        );
    }
}

#[test]
fn source_ranges_policy_deny_turns_the_ranges_into_the_clients_refused() {
    let fx = Fixture::new();
    let a = fx.agent();
    let doc = |policy: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: deny\n  annotations:\n    {SOURCE_RANGES_POLICY_ANNOTATION}: {policy}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.42\n  loadBalancerSourceRanges: [10.9.0.0/16]\n  ports:\n  - port: 80\n    nodePort: 30042\nstatus:\n  loadBalancer:\n    ingress:\n    - ip: 198.51.100.42\n"
        )
    };
    a.apply(&doc("\" Deny \""));
    let f = a.frontend("198.51.100.42:80/TCP").unwrap();
    assert!(f.source_ranges_deny, "{f:?}");
    assert_eq!(
        f.source_ranges,
        vec!["10.9.0.0/16".parse::<Ipv4Net>().unwrap()]
    );
    assert!(a.service("default", "deny").unwrap().source_ranges_deny);
    assert!(
        !a.frontend("10.96.0.42:80/TCP").unwrap().source_ranges_deny,
        "the policy goes only where the ranges go (LoadBalancer frontends)"
    );
    let info = crate::api::frontend_info(&f);
    assert_eq!(info.source_ranges_policy, "deny");
    // Back to allow: the frontend is rewritten.
    a.apply(&doc("allow"));
    let f = a.frontend("198.51.100.42:80/TCP").unwrap();
    assert!(!f.source_ranges_deny, "{f:?}");
    assert_eq!(crate::api::frontend_info(&f).source_ranges_policy, "allow");
    // Without ranges the policy has nothing to act on and is not shown.
    assert_eq!(
        crate::api::frontend_info(&a.frontend("10.96.0.42:80/TCP").unwrap()).source_ranges_policy,
        ""
    );
    for (value, want) in [
        ("block", "must be \"allow\" or \"deny\", got \"block\""),
        (
            "[deny]",
            "must be the string \"allow\" or \"deny\", got a list",
        ),
    ] {
        let errs = a.errors(&doc(value));
        let field = format!("metadata.annotations[{SOURCE_RANGES_POLICY_ANNOTATION}]");
        assert!(
            errs.iter().any(|e| e.contains(&field) && e.contains(want)),
            "missing {field}: {want:?} in {errs:?}"
        );
    }
}

#[test]
fn health_check_node_port_is_allocated_kept_and_counts_local_ready_endpoints() {
    let fx = Fixture::new();
    let a = fx.agent();
    let spec = "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  clusterIP: 10.96.0.50\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n    nodePort: 30050";
    let eps = |lines: &[&str]| slice("hc-1", "hc", HTTP_PORT, lines);
    let local_terminating = format!("10.200.0.9,false,true,true,{NODE}");
    a.apply(&format!(
        "{}---\n{}",
        svc("hc", spec),
        eps(&[
            &active("10.200.0.5"),
            &active("10.200.0.6"),
            &local_terminating,
            "10.200.9.9,true,true,false,other-node"
        ])
    ));
    let port = a.service("default", "hc").unwrap().health_check_node_port;
    assert!(
        (NODE_PORT_RANGE.0..=NODE_PORT_RANGE.1).contains(&port) && port != 30050,
        "allocated health check port {port}"
    );
    let want = |n: usize| healthcheck::HealthCheck {
        service: ServiceName::new("default", "hc"),
        local_endpoints: n,
    };
    let got = healthcheck::desired(&a.writer, &a.writer.read_txn());
    assert_eq!(
        got.get(&port),
        Some(&want(2)),
        "two local ready endpoints: {got:?}"
    );
    assert_eq!(healthcheck::answer(&want(2)).0, 200);
    // Only the terminating local endpoint left: not healthy (the node is drained).
    a.apply(&eps(&[
        &local_terminating,
        "10.200.9.9,true,true,false,other-node",
    ]));
    let got = healthcheck::desired(&a.writer, &a.writer.read_txn());
    assert_eq!(got.get(&port), Some(&want(0)));
    let (status, body) = healthcheck::answer(&want(0));
    assert_eq!(status, 503);
    assert_eq!(
        body,
        r#"{"localEndpoints":0,"service":{"name":"hc","namespace":"default"},"serviceProxyHealthy":true}"#
    );

    // Kept across a restart and a re-apply; released with externalTrafficPolicy Cluster.
    drop(a);
    let a = fx.agent();
    a.apply(&svc("hc", spec));
    assert_eq!(
        a.service("default", "hc").unwrap().health_check_node_port,
        port
    );
    a.apply(&svc("hc", &spec.replace("Local", "Cluster")));
    assert_eq!(
        a.service("default", "hc").unwrap().health_check_node_port,
        0
    );
    assert!(healthcheck::desired(&a.writer, &a.writer.read_txn()).is_empty());
    // Given explicitly.
    a.apply(&svc("hc", &format!("{spec}\n  healthCheckNodePort: 30051")));
    assert_eq!(
        a.service("default", "hc").unwrap().health_check_node_port,
        30051
    );

    for (spec, want) in [
        (
            "  type: NodePort\n  ports:\n  - port: 80\n  healthCheckNodePort: 30052".to_string(),
            "spec.healthCheckNodePort: only allowed for type LoadBalancer with externalTrafficPolicy: Local",
        ),
        (
            format!("{spec}\n  healthCheckNodePort: 30050"),
            "spec.healthCheckNodePort: 30050 is already used by spec.ports[0].nodePort",
        ),
        (
            format!("{spec}\n  healthCheckNodePort: 80"),
            "spec.healthCheckNodePort: must be 30000-32767",
        ),
    ] {
        let errs = a.errors(&svc("bad", &spec));
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "missing {want:?} in {errs:?}"
        );
    }
    // Another service holding that port as a node port: refused at apply.
    let errs = a.errors(&svc(
        "other",
        "  type: NodePort\n  ports:\n  - port: 80\n    nodePort: 30051",
    ));
    assert!(
        errs.iter()
            .any(|e| e.contains("30051/TCP is already used by service default/hc")),
        "{errs:?}"
    );
}

#[test]
fn allocated_node_ports_avoid_the_ones_the_service_gives_itself() {
    let fx = Fixture::new();
    let a = fx.agent();
    let first = NODE_PORT_RANGE.0;
    // The allocator would hand out the first port of the range next; the service gives it
    // to its port `a`, so port `b` and the health check port must get others.
    a.apply(&svc(
        "np",
        &format!(
            "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  ports:\n  - name: a\n    port: 80\n    nodePort: {first}\n  - name: b\n    port: 81"
        ),
    ));
    let s = a.service("default", "np").unwrap();
    let b = s.ports.iter().find(|p| p.name == "b").unwrap().node_port;
    let hc = s.health_check_node_port;
    assert!(
        b != first && hc != first && b != hc && b != 0 && hc != 0,
        "a={first} b={b} health check={hc}"
    );
    // Later the service gives `b`'s allocated port to `a`: `b` moves.
    a.apply(&svc(
        "np",
        &format!(
            "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  ports:\n  - name: a\n    port: 80\n    nodePort: {b}\n  - name: b\n    port: 81"
        ),
    ));
    let s = a.service("default", "np").unwrap();
    let b2 = s.ports.iter().find(|p| p.name == "b").unwrap().node_port;
    assert!(
        b2 != b && b2 != 0 && b2 != s.health_check_node_port,
        "b moved to {b2}"
    );
    assert!(s.error.is_none(), "{:?}", s.error);
}

/// What kube-proxy leaves alone, this agent leaves alone: ExternalName services (DNS
/// aliases), services labelled `service.kubernetes.io/headless`, and services labelled
/// `service.kubernetes.io/service-proxy-name` for another proxy. They hold no cluster IP,
/// node port or frontend, so another service may take what they name.
#[test]
fn services_for_dns_or_other_proxies_are_left_alone() {
    let fx = Fixture::new();
    let a = fx.agent();
    let ports = "  ports:\n  - name: http\n    port: 80\n    nodePort: 30090";
    a.apply(&svc(
        "alias",
        "  type: ExternalName\n  externalName: db.example.com.\n  ports:\n  - port: 5432",
    ));
    let s = a.service("default", "alias").unwrap();
    assert_eq!(s.service_type, ServiceType::ExternalName);
    assert_eq!((s.cluster_ip, s.frontends.len()), (None, 0));
    assert_eq!(s.external_name, "db.example.com.");
    assert!(
        s.ignored.as_deref().unwrap().contains("ExternalName"),
        "{s:?}"
    );
    // ExternalName -> ClusterIP: a cluster IP and frontends; and back: both released.
    a.apply(&svc("alias", "  ports:\n  - port: 5432"));
    let s = a.service("default", "alias").unwrap();
    assert!(s.cluster_ip.is_some() && s.ignored.is_none(), "{s:?}");
    assert_eq!(a.frontends("default", "alias").len(), 1);
    a.apply(&svc(
        "alias",
        "  type: ExternalName\n  externalName: db.example.com",
    ));
    let s = a.service("default", "alias").unwrap();
    assert_eq!((s.cluster_ip, s.frontends.len()), (None, 0));
    assert!(a.frontends("default", "alias").is_empty());

    // Another proxy's service: nothing held, so an unlabelled one may take its address and
    // node port.
    let other = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: theirs\n  namespace: default\n  labels:\n    service.kubernetes.io/service-proxy-name: other\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.90\n{ports}\n"
    );
    a.apply(&other);
    let s = a.service("default", "theirs").unwrap();
    assert!(
        s.ignored
            .as_deref()
            .unwrap()
            .contains("service-proxy-name=other"),
        "{s:?}"
    );
    assert!(s.frontends.is_empty() && s.ports.iter().all(|p| p.node_port == 0));
    a.apply(&svc(
        "ours",
        &format!("  type: NodePort\n  clusterIP: 10.96.0.90\n{ports}"),
    ));
    assert_eq!(a.frontends("default", "ours").len(), 3);
    let headless = "apiVersion: v1\nkind: Service\nmetadata:\n  name: hl\n  namespace: default\n  labels:\n    service.kubernetes.io/headless: \"\"\nspec:\n  ports:\n  - port: 80\n";
    a.apply(headless);
    let s = a.service("default", "hl").unwrap();
    assert!(s.ignored.is_some() && s.cluster_ip.is_none(), "{s:?}");

    // An agent named "other" handles only the labelled service; the unlabelled ones are
    // left to kube-proxy.
    let named = Fixture {
        proxy_name: "other".into(),
        ..Fixture::new()
    };
    let b = named.agent();
    b.apply(&other);
    let s = b.service("default", "theirs").unwrap();
    assert!(s.ignored.is_none(), "{s:?}");
    assert_eq!(b.frontends("default", "theirs").len(), 3);
    b.apply(&svc("plain", "  ports:\n  - port: 80"));
    let s = b.service("default", "plain").unwrap();
    assert!(
        s.ignored
            .as_deref()
            .unwrap()
            .contains("--k8s-service-proxy-name"),
        "{s:?}"
    );
    assert!(b.frontends("default", "plain").is_empty());
}
