//! The in-process hive of the policy integration tests (tests/hive.rs, tests/scale.rs):
//! resources, identity and policy cells over a fake endpoints table, and endpoints added as the
//! endpoint cell would add them.
#![allow(
    dead_code,
    reason = "each test binary includes this module and uses only part of it"
)]

use std::net::Ipv4Addr;
use std::sync::Arc;

use cilium_api::routes::ApiRoutes;
use cilium_endpoint::{EndpointObj, EndpointState};
use cilium_identity::{IdentityAllocator, pod_security_labels};
use cilium_node::Node;
use cilium_resources::{Namespace, Pod, pod_query};
use hive::{Hive, Provide};
use statedb::reconciler::Status;
use statedb::{Db, Table};

/// A started hive and its state directory.
pub struct Fixture {
    /// The hive.
    pub hive: Hive,
    /// Its `--state-dir`.
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// An object the hive provides.
    pub fn get<T: Send + Sync + 'static>(&self) -> Arc<T> {
        self.hive.get::<T>().unwrap().unwrap()
    }
}

/// Start the hive.
pub async fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let node = Node {
        name: "test".into(),
        ip: None,
        state_dir: dir.path().to_path_buf(),
        devices: Vec::new(),
    };
    let hive = Hive::new(vec![
        Provide::value(node),
        Provide::value(ApiRoutes::default()),
        Provide::new(|db: Arc<Db>| Ok(cilium_ipcache::new_table(&db)?)),
        Provide::new(|db: Arc<Db>| Ok(cilium_endpoint::new_table(&db)?)),
        cilium_resources::cell(),
        cilium_identity::cell(),
        cilium_policy::cell(),
    ]);
    hive.populate().unwrap();
    hive.start().await.unwrap();
    Fixture { hive, dir }
}

/// Adds an endpoint for pod `ns/name` with its identity, as the endpoint cell would.
pub fn add_endpoint(f: &Fixture, id: u16, ns: &str, name: &str, ip: Ipv4Addr) {
    let db = f.get::<Db>();
    let pods = f.get::<Table<Pod>>();
    let nss = f.get::<Table<Namespace>>();
    let alloc = f.get::<IdentityAllocator>();
    let eps = f.get::<Table<EndpointObj>>();
    let txn = db.read_txn();
    let pod = pods.get(&txn, &pod_query(ns, name)).unwrap();
    let namespace = nss
        .get(
            &txn,
            &statedb::Query::new("name", statedb::key_from_str(ns)),
        )
        .map(|n| n.object());
    let labels = pod_security_labels(&pod, namespace.as_deref());
    let key = format!("cni:{ns}-{name}:eth0");
    let identity = alloc.allocate(&labels, &key).unwrap();
    let obj = EndpointObj {
        id,
        key: key.clone(),
        container_id: name.into(),
        netns: "/var/run/netns/test".into(),
        ifname: "eth0".into(),
        host_ifname: cilium_endpoint::host_ifname(&key),
        host_ifindex: 0,
        mac: String::new(),
        host_mac: String::new(),
        ipv4: ip,
        gateway: Ipv4Addr::new(10, 200, 0, 1),
        prefix_len: 16,
        mtu: 1500,
        pod_namespace: Some(ns.into()),
        pod_name: Some(name.into()),
        infra_container_id: None,
        identity: identity.0,
        labels,
        named_ports: pod
            .named_ports
            .iter()
            .map(|(k, v)| (k.clone(), format!("{}/{}", v.port, v.protocol)))
            .collect(),
        service_account: pod.service_account.clone(),
        state: EndpointState::Ready,
        status: Status::done(),
    };
    let mut w = db.write_txn(&[&*eps]).unwrap();
    eps.insert(&mut w, obj).unwrap();
    w.commit();
}
