//! Unit tests of the allocator, its persistence and its routes.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use statedb::Query;
use tower::ServiceExt;

use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        Self { _dir: dir, path }
    }

    fn ipam(&self, cidr: &str) -> Ipam {
        let db = Db::new();
        let table = new_table(&db).unwrap();
        Ipam::new(
            cidr.parse().unwrap(),
            StateFile::new(&self.path),
            db,
            table,
            None,
        )
        .unwrap()
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn allocates_lowest_free_after_the_gateway() {
    let f = Fixture::new();
    let ipam = f.ipam("10.1.0.0/24");
    assert_eq!(ipam.gateway(), ip("10.1.0.1"));
    assert_eq!(ipam.prefix_len(), 24);
    assert_eq!(ipam.capacity(), 253);
    let a = ipam.allocate("a", None).unwrap();
    let b = ipam.allocate("b", None).unwrap();
    assert_eq!((a.ip, b.ip), (ip("10.1.0.2"), ip("10.1.0.3")));
    assert_eq!(a.gateway, ip("10.1.0.1"));
    assert_eq!(a.cidr, "10.1.0.0/24");
    assert!(ipam.release(a.ip).unwrap());
    // The gap is filled first.
    assert_eq!(ipam.allocate("c", None).unwrap().ip, ip("10.1.0.2"));
    assert_eq!(ipam.allocate("d", None).unwrap().ip, ip("10.1.0.4"));
}

#[test]
fn a_slash_29_holds_five_pods_then_is_exhausted() {
    let f = Fixture::new();
    let ipam = f.ipam("10.9.0.0/29");
    let got: Vec<Ipv4Addr> = (0..5)
        .map(|i| ipam.allocate(&format!("o{i}"), None).unwrap().ip)
        .collect();
    assert_eq!(got.first(), Some(&ip("10.9.0.2")));
    assert_eq!(got.last(), Some(&ip("10.9.0.6")));
    let err = ipam.allocate("o5", None).unwrap_err();
    assert!(matches!(err, IpamError::Exhausted { .. }), "{err}");
    let api = cilium_api::ApiError::from(err);
    assert_eq!(api.0.code, cilium_api::ErrorCode::Exhausted);
    assert!(api.0.message.contains("10.9.0.0/29"), "{}", api.0.message);
}

#[test]
fn too_small_ranges_are_refused() {
    let db = Db::new();
    let table = new_table(&db).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = Ipam::new(
        "10.0.0.0/30".parse().unwrap(),
        StateFile::new(dir.path().join("x.json")),
        db,
        table,
        None,
    )
    .unwrap_err();
    assert!(matches!(err, IpamError::InvalidCidr { .. }), "{err}");
}

#[test]
fn requested_address_is_honoured_and_checked() {
    let f = Fixture::new();
    let ipam = f.ipam("10.2.0.0/24");
    assert_eq!(
        ipam.allocate("a", Some(ip("10.2.0.77"))).unwrap().ip,
        ip("10.2.0.77")
    );
    let code = |e: IpamError| cilium_api::ApiError::from(e).0.code;
    let e = ipam.allocate("b", Some(ip("10.3.0.5"))).unwrap_err();
    assert!(matches!(e, IpamError::OutOfRange { .. }), "{e}");
    assert_eq!(code(e), cilium_api::ErrorCode::Invalid);
    for (reserved, what) in [
        ("10.2.0.0", "network"),
        ("10.2.0.1", "gateway"),
        ("10.2.0.255", "broadcast"),
    ] {
        let e = ipam.allocate("b", Some(ip(reserved))).unwrap_err();
        assert!(e.to_string().contains(what), "{e}");
        assert_eq!(code(e), cilium_api::ErrorCode::Invalid);
    }
    let e = ipam.allocate("b", Some(ip("10.2.0.77"))).unwrap_err();
    assert!(e.to_string().contains("\"a\""), "{e}");
    assert_eq!(code(e), cilium_api::ErrorCode::Conflict);
    // The owner already holding .77 asking for another address is a conflict too.
    let e = ipam.allocate("a", Some(ip("10.2.0.78"))).unwrap_err();
    assert_eq!(code(e), cilium_api::ErrorCode::Conflict);
    let e = ipam.allocate("", None).unwrap_err();
    assert_eq!(code(e), cilium_api::ErrorCode::Invalid);
    // Lowest-free allocation skips the requested address.
    assert_eq!(ipam.allocate("c", None).unwrap().ip, ip("10.2.0.2"));
}

#[test]
fn allocation_is_idempotent_per_owner() {
    let f = Fixture::new();
    let ipam = f.ipam("10.4.0.0/24");
    let (a, created) = ipam.allocate_tracked("cni:x:eth0", None).unwrap();
    assert!(created);
    let (again, created) = ipam.allocate_tracked("cni:x:eth0", None).unwrap();
    assert!(!created);
    assert_eq!(a, again);
    let (same, created) = ipam.allocate_tracked("cni:x:eth0", Some(a.ip)).unwrap();
    assert!(!created);
    assert_eq!(same, a);
    assert_eq!(ipam.allocations().len(), 1);
    assert_eq!(ipam.lookup_owner("cni:x:eth0"), Some(a));
}

#[test]
fn release_and_release_owner() {
    let f = Fixture::new();
    let ipam = f.ipam("10.5.0.0/24");
    let a = ipam.allocate("a", None).unwrap();
    let b = ipam.allocate("b", None).unwrap();
    assert!(ipam.release(a.ip).unwrap());
    assert!(!ipam.release(a.ip).unwrap());
    assert_eq!(ipam.release_owner("b").unwrap(), Some(b.ip));
    assert_eq!(ipam.release_owner("b").unwrap(), None);
    assert!(ipam.allocations().is_empty());
    assert!(ipam.table.is_empty(&ipam.db.read_txn()));
}

#[test]
fn state_survives_a_new_instance_and_the_table_mirrors_it() {
    let f = Fixture::new();
    let (a, b) = {
        let ipam = f.ipam("10.6.0.0/24");
        let a = ipam.allocate("a", None).unwrap();
        let b = ipam.allocate("b", Some(ip("10.6.0.50"))).unwrap();
        ipam.allocate("c", None).unwrap();
        ipam.release_owner("c").unwrap();
        (a, b)
    };
    let ipam = f.ipam("10.6.0.0/24");
    assert_eq!(ipam.allocations(), vec![a.clone(), b.clone()]);
    // Idempotent across restarts: the owner gets its address back.
    assert_eq!(ipam.allocate("b", None).unwrap(), b);
    let r = ipam.db.read_txn();
    let row = ipam
        .table
        .get(&r, &Query::new("owner", key_from_str("a")))
        .unwrap();
    assert_eq!(row.ip, a.ip);
    assert_eq!(ipam.table.len(&r), 2);
    let dump = r.dump_table(TABLE_NAME).unwrap();
    assert_eq!(dump[0]["object"]["ip"], "10.6.0.2");
    assert!(dump[0]["object"]["allocated_at"].is_string());
}

#[test]
fn restore_drops_allocations_outside_a_changed_range() {
    let f = Fixture::new();
    {
        let ipam = f.ipam("10.7.0.0/24");
        ipam.allocate("low", Some(ip("10.7.0.10"))).unwrap();
        ipam.allocate("high", Some(ip("10.7.0.200"))).unwrap();
    }
    let ipam = f.ipam("10.7.0.0/25");
    let owners: Vec<String> = ipam.allocations().into_iter().map(|a| a.owner).collect();
    assert_eq!(owners, vec!["low".to_string()]);
}

#[test]
fn concurrent_allocations_never_duplicate() {
    let f = Fixture::new();
    let ipam = Arc::new(f.ipam("10.8.0.0/26"));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let ipam = ipam.clone();
            std::thread::spawn(move || {
                (0..20)
                    .filter_map(|i| ipam.allocate(&format!("t{t}-{i}"), None).ok())
                    .map(|a| a.ip)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<Ipv4Addr> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let unique: BTreeSet<Ipv4Addr> = all.iter().copied().collect();
    assert_eq!(all.len(), unique.len(), "duplicate addresses: {all:?}");
    // 80 requests on a /26 (61 usable): exactly the capacity is handed out.
    assert_eq!(all.len() as u64, ipam.capacity());
    assert_eq!(ipam.allocations().len(), all.len());
}

async fn call(
    router: &axum::Router,
    method: &str,
    uri: &str,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, json)
}

#[tokio::test]
async fn routes_answer_with_the_right_statuses() {
    let f = Fixture::new();
    let ipam = Arc::new(f.ipam("10.10.0.0/29"));
    let (router, doc) = api::router(ipam).split_for_parts();
    assert!(doc.paths.paths.contains_key("/v1/ipam/{ip}"));
    let (s, v) = call(&router, "POST", "/v1/ipam", r#"{"owner":"a"}"#).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["ip"], "10.10.0.2");
    let (s, _) = call(&router, "POST", "/v1/ipam", r#"{"owner":"a"}"#).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = call(
        &router,
        "POST",
        "/v1/ipam",
        r#"{"owner":"b","ip":"10.10.0.2"}"#,
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    let (s, _) = call(
        &router,
        "POST",
        "/v1/ipam",
        r#"{"owner":"b","ip":"10.99.0.2"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, v) = call(&router, "POST", "/v1/ipam", r#"{"ownr":"b"}"#).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    for i in 0..4 {
        call(
            &router,
            "POST",
            "/v1/ipam",
            &format!(r#"{{"owner":"x{i}"}}"#),
        )
        .await;
    }
    let (s, v) = call(&router, "POST", "/v1/ipam", r#"{"owner":"full"}"#).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::INSUFFICIENT_STORAGE, Some("exhausted"))
    );
    let (s, v) = call(&router, "GET", "/v1/ipam", "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["allocations"].as_array().unwrap().len(), 5);
    assert_eq!(v["capacity"], 5);
    assert_eq!(v["gateway"], "10.10.0.1");
    let (s, _) = call(&router, "DELETE", "/v1/ipam/10.10.0.2", "").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = call(&router, "DELETE", "/v1/ipam/10.10.0.2", "").await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (s, _) = call(&router, "DELETE", "/v1/ipam/not-an-ip", "").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}
