//! Scale in an in-process hive (no kernel): the policy benchmark's control-plane scenarios
//! through `Resources::apply`, checked for completeness (and timed, printed only):
//! - one endpoint selected by `SCALE_RULES` rules (default 2,000; the benchmark uses
//!   10,000), all but one allowing a distinct /32, i.e. as many CIDR identities, persisted;
//! - deleting them releases every CIDR identity; a denying policy applied next resolves;
//! - 1,000 NetworkPolicies over 100 endpoints (10 identities allowed per policy).
//!
//! `SCALE_RULES=10000 cargo test --release -p cilium-policy --test scale -- --nocapture`
//! prints the figures.

#![allow(clippy::unwrap_used, reason = "test helpers panic on setup failure")]

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cilium_identity::{IdentityKind, IdentityObj};
use cilium_policy::{Direction, EndpointPolicy};
use cilium_resources::Resources;
use statedb::{Db, Table};

use common::{Fixture, add_endpoint, start};

fn namespace(ns: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels: {{ns: {ns}}}\n"
    )
}

fn pod(ns: &str, name: &str, labels: &[(&str, &str)]) -> String {
    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: '{v}'")).collect();
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{}}}}}\nspec: {{containers: [{{name: c}}]}}\n",
        l.join(", ")
    )
}

/// Waits (bounded) until `cond` holds for the endpoint_policies table; returns when.
async fn wait_for(
    f: &Fixture,
    what: &str,
    cond: impl Fn(&[Arc<EndpointPolicy>]) -> bool,
) -> Duration {
    let db = f.get::<Db>();
    let table = f.get::<Table<EndpointPolicy>>();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(600) {
        let txn = db.read_txn();
        let (rows, watch) = table.all_watch(&txn);
        let rows: Vec<Arc<EndpointPolicy>> = rows.map(|r| r.object()).collect();
        if cond(&rows) {
            return start.elapsed();
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), watch.changed()).await;
    }
    panic!("timed out waiting for {what}");
}

fn cidr_identities(f: &Fixture) -> usize {
    let db = f.get::<Db>();
    let idents = f.get::<Table<IdentityObj>>();
    let txn = db.read_txn();
    idents
        .all(&txn)
        .filter(|o| o.kind == IdentityKind::Cidr)
        .count()
}

/// `rules` ingress rules selecting app=server: one allows app=client, the others a /32 each.
fn rules_yaml(rules: usize) -> String {
    let mut s = String::new();
    let mut i = 0usize;
    let mut doc = 0;
    while i < rules {
        write!(
            s,
            "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: bench-{doc}, namespace: bench}}\nspec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n"
        )
        .unwrap();
        let end = (i + 100).min(rules);
        while i < end {
            if i == 0 {
                s.push_str("  - fromEndpoints: [{matchLabels: {app: client}}]\n");
            } else {
                let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + i as u32);
                writeln!(s, "  - fromCIDR: ['{ip}/32']").unwrap();
            }
            i += 1;
        }
        doc += 1;
    }
    s
}

const DENY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bench-deny, namespace: bench}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  policyTypes: [Ingress]\n";

fn ingress_entries(r: &EndpointPolicy) -> usize {
    r.entries
        .iter()
        .filter(|e| e.direction == Direction::Ingress)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_cidr_rules_then_deny_then_many_policies() {
    let rules: usize = std::env::var("SCALE_RULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let f = start().await;
    let resources = f.get::<Resources>();
    let setup = format!(
        "{}{}{}",
        namespace("bench"),
        pod("bench", "client", &[("app", "client")]),
        pod("bench", "server", &[("app", "server")])
    );
    resources.apply(&setup).unwrap();
    add_endpoint(&f, 1, "bench", "client", Ipv4Addr::new(10, 200, 0, 10));
    add_endpoint(&f, 2, "bench", "server", Ipv4Addr::new(10, 200, 0, 11));
    wait_for(&f, "two rows", |rows| rows.len() == 2).await;

    // 1. Many CIDR rules selecting the server.
    let yaml = rules_yaml(rules);
    let t0 = Instant::now();
    resources.apply(&yaml).unwrap();
    let applied = t0.elapsed();
    wait_for(&f, "server row with every rule", |rows| {
        rows.iter()
            .any(|r| r.endpoint_id == 2 && r.ingress_enforced && ingress_entries(r) >= rules)
    })
    .await;
    let resolved = t0.elapsed();
    assert_eq!(cidr_identities(&f), rules - 1);
    // Persisted: the state file holds every CIDR identity.
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(f.dir.path().join(cilium_identity::STATE_FILE)).unwrap(),
    )
    .unwrap();
    let persisted = state["identities"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["kind"] == "Cidr" || o["kind"] == "cidr")
        .count();
    assert_eq!(persisted, rules - 1, "identities.json");
    eprintln!("{rules} rules: apply {:?}, resolved {resolved:?}", applied);

    // 2. Delete them: every CIDR identity released; then a denying policy.
    let t0 = Instant::now();
    resources.delete(&yaml).unwrap();
    wait_for(&f, "server row unenforced", |rows| {
        rows.iter()
            .any(|r| r.endpoint_id == 2 && !r.ingress_enforced && r.entries.is_empty())
    })
    .await;
    let unenforced = t0.elapsed();
    let start = Instant::now();
    while cidr_identities(&f) > 0 && start.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(cidr_identities(&f), 0);
    let released = t0.elapsed();
    let t0 = Instant::now();
    resources.apply(DENY).unwrap();
    wait_for(&f, "server denies", |rows| {
        rows.iter()
            .any(|r| r.endpoint_id == 2 && r.ingress_enforced && r.entries.is_empty())
    })
    .await;
    let deny = t0.elapsed();
    resources.delete(DENY).unwrap();
    eprintln!(
        "delete: unenforced {unenforced:?}, identities released {released:?}; deny applied {deny:?}"
    );

    // 3. 1,000 NetworkPolicies over 100 endpoints.
    let mut objects = namespace("scale");
    for i in 0..100 {
        objects.push_str(&pod(
            "scale",
            &format!("p{i}"),
            &[("app", &format!("s{}", i % 10)), ("idx", &i.to_string())],
        ));
    }
    resources.apply(&objects).unwrap();
    let t0 = Instant::now();
    for i in 0..100u16 {
        add_endpoint(
            &f,
            10 + i,
            "scale",
            &format!("p{i}"),
            Ipv4Addr::new(10, 200, 1, u8::try_from(i).unwrap()),
        );
    }
    wait_for(&f, "102 rows", |rows| rows.len() == 102).await;
    let endpoints = t0.elapsed();
    let mut pol = String::new();
    for k in 0..1000 {
        write!(
            pol,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{k}, namespace: scale}}\nspec:\n  podSelector: {{matchLabels: {{idx: '{}'}}}}\n  ingress:\n  - from:\n    - podSelector: {{matchLabels: {{app: s{}}}}}\n    ports:\n    - {{port: {}, protocol: TCP}}\n",
            k % 100,
            k % 10,
            1000 + k
        )
        .unwrap();
    }
    let t0 = Instant::now();
    resources.apply(&pol).unwrap();
    let applied = t0.elapsed();
    wait_for(&f, "10,000 entries over 100 rows", |rows| {
        rows.iter().map(|r| r.entries.len()).sum::<usize>() >= 10_000
    })
    .await;
    let resolved = t0.elapsed();
    let db = f.get::<Db>();
    let table = f.get::<Table<EndpointPolicy>>();
    {
        let txn = db.read_txn();
        let rows: Vec<Arc<EndpointPolicy>> = table.all(&txn).map(|r| r.object()).collect();
        let peers: BTreeSet<u32> = rows
            .iter()
            .flat_map(|r| r.entries.iter().map(|e| e.identity))
            .collect();
        assert_eq!(peers.len(), 100, "each of the 100 identities is a peer");
        assert_eq!(
            rows.iter().filter(|r| r.ingress_enforced).count(),
            100,
            "every scale endpoint is enforced"
        );
    }
    eprintln!(
        "100 endpoints in {endpoints:?}; 1,000 policies: apply {applied:?}, resolved {resolved:?}"
    );
    f.hive.stop().await.unwrap();
}
