//! In-process hive (no kernel): resources + identity + policy cells with a fake endpoints
//! table; applying and deleting policies must show up in `endpoint_policies` and `explain`.

#![allow(clippy::unwrap_used, reason = "test helpers panic on setup failure")]

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use cilium_endpoint::EndpointObj;
use cilium_identity::{IdentityKind, IdentityObj};
use cilium_policy::{Direction, EndpointPolicy, Reason, Repository, proto};
use cilium_resources::Resources;
use statedb::{Db, Table};

use common::{Fixture, add_endpoint, start};

const SETUP: &str = r"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {ns: y}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {containers: [{name: c, ports: [{name: serve-80-tcp, containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: y, labels: {pod: c}}
spec: {containers: [{name: c}]}
";

const POLICY: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: serve-80-tcp}]
  - from: [{ipBlock: {cidr: 192.168.0.0/16, except: [192.168.1.0/24]}}]
";

/// Waits (bounded, to not hang) until `cond` holds for the endpoint_policies table.
async fn wait_for(f: &Fixture, what: &str, cond: impl Fn(&[Arc<EndpointPolicy>]) -> bool) {
    let db = f.get::<Db>();
    let table = f.get::<Table<EndpointPolicy>>();
    for _ in 0..500 {
        let txn = db.read_txn();
        let (rows, watch) = table.all_watch(&txn);
        let rows: Vec<Arc<EndpointPolicy>> = rows.map(|r| r.object()).collect();
        if cond(&rows) {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), watch.changed()).await;
    }
    let txn = db.read_txn();
    panic!(
        "timed out waiting for {what}; endpoint_policies = {:?}",
        table.all(&txn).map(|r| r.object()).collect::<Vec<_>>()
    );
}

fn row(rows: &[Arc<EndpointPolicy>], id: u16) -> Option<&EndpointPolicy> {
    rows.iter().find(|r| r.endpoint_id == id).map(|r| &**r)
}

#[tokio::test]
async fn apply_resolve_explain_delete() {
    let f = start().await;
    let resources = f.get::<Resources>();
    resources.apply(SETUP).unwrap();
    add_endpoint(&f, 1, "x", "a", Ipv4Addr::new(10, 200, 0, 10));
    add_endpoint(&f, 2, "x", "b", Ipv4Addr::new(10, 200, 0, 11));
    add_endpoint(&f, 3, "y", "c", Ipv4Addr::new(10, 200, 0, 12));
    wait_for(&f, "three unenforced rows", |rows| {
        rows.len() == 3
            && rows
                .iter()
                .all(|r| !r.ingress_enforced && !r.egress_enforced)
    })
    .await;

    resources.apply(POLICY).unwrap();
    wait_for(&f, "x/a enforced", |rows| {
        row(rows, 1).is_some_and(|r| r.ingress_enforced && !r.entries.is_empty())
    })
    .await;
    let repo = f.get::<Repository>();
    let db = f.get::<Db>();
    let table = f.get::<Table<EndpointPolicy>>();
    {
        let txn = db.read_txn();
        let a = table
            .get(&txn, &cilium_policy::endpoint_policy_query(1))
            .unwrap();
        assert!(a.status.is_pending());
        assert!(!a.egress_enforced);
        let b = table
            .get(&txn, &cilium_policy::endpoint_policy_query(2))
            .unwrap();
        assert!(!b.ingress_enforced && b.entries.is_empty());
    }

    // x/b → x/a on 80 is allowed by rule 0; 81 and y/c are denied by default.
    let e = repo
        .explain(("x", "b"), ("x", "a"), 80, proto::TCP)
        .unwrap();
    assert!(e.allowed, "{e:?}");
    assert_eq!(e.egress.reason, Reason::NotEnforced);
    let rule = e.ingress_rule.unwrap();
    assert_eq!((rule.name.as_str(), rule.rule_index), ("allow-b", 0));
    assert_eq!(rule.direction, Direction::Ingress);
    let e = repo
        .explain(("x", "b"), ("x", "a"), 81, proto::TCP)
        .unwrap();
    assert!(!e.allowed);
    assert_eq!(e.ingress.reason, Reason::PolicyDenied);
    let e = repo
        .explain(("y", "c"), ("x", "a"), 80, proto::TCP)
        .unwrap();
    assert!(!e.allowed);
    assert!(
        repo.explain(("y", "zz"), ("x", "a"), 80, proto::TCP)
            .is_err()
    );

    // The ipBlock allocated CIDR identities (block and except) owned by the policy.
    let idents = f.get::<Table<IdentityObj>>();
    let cidr_owned = || {
        let txn = db.read_txn();
        idents
            .all(&txn)
            .filter(|o| o.kind == IdentityKind::Cidr)
            .filter(|o| o.owners.iter().any(|w| w.starts_with("policy:")))
            .count()
    };
    assert_eq!(cidr_owned(), 2);

    // Relabel pod c as pod=b: it gets a new identity, and the policy follows.
    resources
        .apply(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: x, labels: {pod: b}}\nspec: {containers: [{name: c}]}\n",
        )
        .unwrap();
    add_endpoint(&f, 4, "x", "c", Ipv4Addr::new(10, 200, 0, 13));
    wait_for(&f, "x/c row", |rows| row(rows, 4).is_some()).await;
    let e = repo
        .explain(("x", "c"), ("x", "a"), 80, proto::TCP)
        .unwrap();
    assert!(e.allowed, "{e:?}");

    // Delete: everything open again, CIDR identities released.
    resources.delete(POLICY).unwrap();
    wait_for(&f, "x/a unenforced", |rows| {
        row(rows, 1).is_some_and(|r| !r.ingress_enforced && r.entries.is_empty())
    })
    .await;
    assert_eq!(cidr_owned(), 0);
    let e = repo
        .explain(("y", "c"), ("x", "a"), 80, proto::TCP)
        .unwrap();
    assert!(e.allowed);

    // Endpoint removal deletes its row.
    let eps = f.get::<Table<EndpointObj>>();
    let mut w = db.write_txn(&[&*eps]).unwrap();
    eps.delete_key(&mut w, statedb::key_from_str("cni:x-b:eth0"))
        .unwrap();
    w.commit();
    wait_for(&f, "row 2 deleted", |rows| row(rows, 2).is_none()).await;
    f.hive.stop().await.unwrap();
}
