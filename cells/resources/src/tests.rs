//! Unit tests: parsing and validation errors, all-or-nothing apply, actions, delete,
//! persistence, and the HTTP shapes of the routes.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cilium_api::models::ResourceAction;
use cilium_node::StateFile;
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;

struct Fixture {
    dir: tempfile::TempDir,
}

struct Agent {
    db: Db,
    res: Arc<Resources>,
    pods: Table<Pod>,
    namespaces: Table<Namespace>,
}

impl Fixture {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join(STATE_FILE)
    }

    /// A fresh database and registry over the same state file, like an agent restart.
    fn agent(&self) -> Agent {
        let db = Db::new();
        let res = Resources::new(db.clone(), StateFile::new(self.path()), None).unwrap();
        let namespaces = new_namespaces_table(&db).unwrap();
        let pods = new_pods_table(&db).unwrap();
        res.register(NamespaceKind {
            table: namespaces.clone(),
        })
        .unwrap();
        res.register(PodKind {
            table: pods.clone(),
        })
        .unwrap();
        Agent {
            db,
            res: Arc::new(res),
            pods,
            namespaces,
        }
    }
}

impl Agent {
    fn pod(&self, ns: &str, name: &str) -> Option<Pod> {
        self.pods
            .get(&self.db.read_txn(), &pod_query(ns, name))
            .map(|p| (*p).clone())
    }
}

const FILE: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    team: web
---
apiVersion: v1
kind: Pod
metadata:
  name: frontend
  namespace: shop
  labels:
    app: frontend
spec:
  serviceAccountName: web
  containers:
  - name: nginx
    ports:
    - name: http
      containerPort: 80
    - containerPort: 9090
  - name: dns
    ports:
    - name: dns
      containerPort: 53
      protocol: UDP
---
apiVersion: v1
kind: Pod
metadata:
  name: backend
  namespace: shop
  labels: {app: backend}
"#;

fn actions(
    changes: &[cilium_api::models::ResourceChange],
) -> Vec<(String, String, ResourceAction)> {
    changes
        .iter()
        .map(|c| {
            (
                c.kind.clone(),
                format!("{}/{}", c.namespace, c.name),
                c.action,
            )
        })
        .collect()
}

fn invalid(e: ResourcesError) -> Vec<DocumentError> {
    match e {
        ResourcesError::Invalid(errs) => errs,
        other => panic!("expected validation errors, got {other}"),
    }
}

#[test]
fn apply_stores_namespaces_and_pods() {
    let f = Fixture::new();
    let a = f.agent();
    let changes = a.res.apply(FILE).unwrap();
    assert_eq!(
        actions(&changes),
        vec![
            ("Namespace".into(), "/shop".into(), ResourceAction::Created),
            (
                "Pod".into(),
                "shop/frontend".into(),
                ResourceAction::Created
            ),
            ("Pod".into(), "shop/backend".into(), ResourceAction::Created),
        ]
    );
    let p = a.pod("shop", "frontend").unwrap();
    assert_eq!(p.service_account, "web");
    assert_eq!(p.labels.get("app").map(String::as_str), Some("frontend"));
    assert_eq!(p.named_ports.len(), 2, "unnamed ports are not kept");
    assert_eq!(
        p.named_ports["dns"],
        NamedPort {
            port: 53,
            protocol: Protocol::Udp
        }
    );
    assert_eq!(p.named_ports["http"].protocol, Protocol::Tcp);
    assert_eq!(
        format!(
            "{}/{}",
            p.named_ports["http"].port, p.named_ports["http"].protocol
        ),
        "80/TCP"
    );
    assert_eq!(p.uid.len(), 36);
    assert_eq!(a.pod("shop", "backend").unwrap().service_account, "default");
    let r = a.db.read_txn();
    let ns = a
        .namespaces
        .get(&r, &a.namespaces.primary_index().query("shop"))
        .unwrap();
    assert_eq!(
        ns.labels.get(NAMESPACE_NAME_LABEL).map(String::as_str),
        Some("shop")
    );
    assert_eq!(a.pods.list(&r, &pods_in_namespace("shop")).count(), 2);
    assert!(a.pods.initialized(&r).0 && a.namespaces.initialized(&r).0);
}

#[test]
fn reapply_reports_unchanged_and_configured_and_keeps_the_uid() {
    let f = Fixture::new();
    let a = f.agent();
    a.res.apply(FILE).unwrap();
    let uid = a.pod("shop", "frontend").unwrap().uid;
    let again = a.res.apply(FILE).unwrap();
    assert!(
        again.iter().all(|c| c.action == ResourceAction::Unchanged),
        "{again:?}"
    );
    let changed = FILE.replace("app: frontend", "app: frontend-v2");
    let changes = a.res.apply(&changed).unwrap();
    assert_eq!(changes[1].action, ResourceAction::Configured);
    assert_eq!(changes[2].action, ResourceAction::Unchanged);
    let p = a.pod("shop", "frontend").unwrap();
    assert_eq!(p.labels["app"], "frontend-v2");
    assert_eq!(p.uid, uid);
}

#[test]
fn errors_name_the_document_the_field_and_the_reason() {
    let f = Fixture::new();
    let a = f.agent();
    let file = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec:
  containers:
  - name: c
    ports:
    - {containerPort: 80}
    - {containerPort: 70000}
"#;
    let errs = invalid(a.res.apply(file).unwrap_err());
    assert_eq!(errs.len(), 1);
    assert_eq!(
        errs[0].to_string(),
        "document 2 (Pod x/a): spec.containers[0].ports[1].containerPort: must be 1-65535, got 70000"
    );
    let cases: &[(&str, &str, &str)] = &[
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}",
            "metadata.name",
            "lowercase",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {}",
            "metadata.name",
            "required",
        ),
        ("apiVersion: v1\nmetadata: {name: a}", "kind", "required"),
        (
            "apiVersion: v1\nkind: Gadget\nmetadata: {name: a}",
            "kind",
            "known kinds: Namespace, Pod",
        ),
        (
            "apiVersion: apps/v1\nkind: Pod\nmetadata: {name: a}",
            "apiVersion",
            "needs apiVersion v1",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, labels: {app: 3}}",
            "metadata.labels[app]",
            "must be a string",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, labels: {\"-x\": y}}",
            "metadata.labels[-x]",
            "key",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: {}}",
            "spec.containers",
            "must be a list",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{ports: [{name: p}]}]}",
            "spec.containers[0].ports[0].containerPort",
            "required",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{ports: [{containerPort: 1, protocol: ICMP}]}]}",
            "spec.containers[0].ports[0].protocol",
            "TCP, UDP or SCTP",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{ports: [{containerPort: 1, name: HTTP}]}]}",
            "spec.containers[0].ports[0].name",
            "lowercase",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{ports: [{containerPort: 1, name: p}]}, {ports: [{containerPort: 2, name: p}]}]}",
            "spec.containers[1].ports[0].name",
            "already used by spec.containers[0].ports[0]",
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a.b}",
            "metadata.name",
            "lowercase letters, digits and '-'",
        ),
    ];
    for (doc, field, reason) in cases {
        let errs = invalid(a.res.apply(doc).unwrap_err());
        assert_eq!(errs[0].field, *field, "{doc}: {errs:?}");
        assert!(errs[0].reason.contains(reason), "{doc}: {}", errs[0]);
        assert!(errs[0].to_string().starts_with("document 1"), "{}", errs[0]);
    }
    // Every error of every document is reported at once.
    let two = "apiVersion: v1\nkind: Pod\nmetadata: {name: A}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b}\nspec: {serviceAccountName: 5}";
    let errs = invalid(a.res.apply(two).unwrap_err());
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_eq!(
        errs[1].to_string(),
        "document 2 (Pod default/b): spec.serviceAccountName: must be a string, got a number"
    );
    // The same object twice in one file.
    let dup = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: default}";
    let errs = invalid(a.res.apply(dup).unwrap_err());
    assert!(
        errs[0].to_string().contains("already in document 1"),
        "{}",
        errs[0]
    );
}

#[test]
fn syntax_errors_and_empty_files() {
    let f = Fixture::new();
    let a = f.agent();
    let e = a
        .res
        .apply("apiVersion: v1\nkind: Pod\n---\nkey: [unclosed\n")
        .unwrap_err();
    assert!(
        matches!(e, ResourcesError::Syntax { document: 2, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("line"), "{e}");
    let e = a.res.apply("{\"kind\": ").unwrap_err();
    assert!(matches!(e, ResourcesError::Syntax { .. }), "{e}");
    assert!(matches!(
        a.res.apply("").unwrap_err(),
        ResourcesError::Empty
    ));
    assert!(matches!(
        a.res.apply("---\n---\n").unwrap_err(),
        ResourcesError::Empty
    ));
    let errs = invalid(a.res.apply("- a\n- b\n").unwrap_err());
    assert!(errs[0].reason.contains("must be an object"), "{}", errs[0]);
}

#[test]
fn a_bad_third_document_changes_nothing() {
    let f = Fixture::new();
    let a = f.agent();
    a.res
        .apply("apiVersion: v1\nkind: Pod\nmetadata: {name: keep, labels: {v: \"1\"}}")
        .unwrap();
    let before = std::fs::read(f.path()).unwrap();
    let rev = a.pods.revision(&a.db.read_txn());
    let file = "apiVersion: v1\nkind: Namespace\nmetadata: {name: n1}\n---\n\
                apiVersion: v1\nkind: Pod\nmetadata: {name: keep, labels: {v: \"2\"}}\n---\n\
                apiVersion: v1\nkind: Pod\nmetadata: {name: broken}\nspec: {containers: [{ports: [{containerPort: 0}]}]}";
    let errs = invalid(a.res.apply(file).unwrap_err());
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0]
            .to_string()
            .starts_with("document 3 (Pod default/broken)"),
        "{}",
        errs[0]
    );
    let r = a.db.read_txn();
    assert_eq!(a.pods.revision(&r), rev);
    assert!(a.namespaces.is_empty(&r));
    assert_eq!(a.pod("default", "keep").unwrap().labels["v"], "1");
    assert_eq!(std::fs::read(f.path()).unwrap(), before);
}

#[test]
fn json_objects_arrays_and_lists() {
    let f = Fixture::new();
    let a = f.agent();
    let one = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"j1"}}"#;
    assert_eq!(a.res.apply(one).unwrap()[0].action, ResourceAction::Created);
    let list = r#"{"apiVersion":"v1","kind":"List","items":[
        {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"jl"}},
        {"apiVersion":"v1","kind":"Pod","metadata":{"name":"j2","namespace":"jl"},
         "spec":{"containers":[{"ports":[{"containerPort":"80"}]}]}}]}"#;
    let errs = invalid(a.res.apply(list).unwrap_err());
    assert_eq!(
        errs[0].to_string(),
        "document 1 items[1] (Pod jl/j2): spec.containers[0].ports[0].containerPort: must be an integer, got a string"
    );
    let list = list.replace("\"80\"", "80");
    assert_eq!(a.res.apply(&list).unwrap().len(), 2);
    let yaml_list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: y1}\n";
    assert_eq!(a.res.apply(yaml_list).unwrap()[0].name, "y1");
}

#[test]
fn delete_reports_deleted_and_not_found() {
    let f = Fixture::new();
    let a = f.agent();
    a.res.apply(FILE).unwrap();
    let del = "apiVersion: v1\nkind: Pod\nmetadata: {name: frontend, namespace: shop}\n---\n\
               apiVersion: v1\nkind: Pod\nmetadata: {name: ghost, namespace: shop}";
    let changes = a.res.delete(del).unwrap();
    assert_eq!(
        actions(&changes),
        vec![
            (
                "Pod".into(),
                "shop/frontend".into(),
                ResourceAction::Deleted
            ),
            ("Pod".into(), "shop/ghost".into(), ResourceAction::NotFound),
        ]
    );
    assert!(a.pod("shop", "frontend").is_none());
    assert!(a.pod("shop", "backend").is_some());
    // Deleting with the whole apply file works too, namespace included.
    let changes = a.res.delete(FILE).unwrap();
    assert_eq!(changes[0].action, ResourceAction::Deleted);
    assert_eq!(changes[1].action, ResourceAction::NotFound);
    assert!(a.pods.is_empty(&a.db.read_txn()));
    let errs = invalid(
        a.res
            .delete("apiVersion: v1\nkind: Gadget\nmetadata: {name: a}")
            .unwrap_err(),
    );
    assert_eq!(errs[0].field, "kind");
}

#[test]
fn objects_survive_a_restart() {
    let f = Fixture::new();
    let uid = {
        let a = f.agent();
        a.res.apply(FILE).unwrap();
        a.res
            .delete("apiVersion: v1\nkind: Pod\nmetadata: {name: backend, namespace: shop}")
            .unwrap();
        a.pod("shop", "frontend").unwrap().uid
    };
    let a = f.agent();
    let p = a.pod("shop", "frontend").unwrap();
    assert_eq!(p.uid, uid);
    assert_eq!(p.named_ports["http"].port, 80);
    assert!(a.pod("shop", "backend").is_none());
    assert_eq!(a.namespaces.len(&a.db.read_txn()), 1);
    // Re-applying after the restart is unchanged (the uid was restored).
    let changes = a.res.apply(FILE).unwrap();
    assert_eq!(changes[1].action, ResourceAction::Unchanged);
    assert_eq!(changes[2].action, ResourceAction::Created);
}

#[test]
fn objects_of_kinds_not_registered_are_kept_in_the_state_file() {
    let f = Fixture::new();
    {
        let a = f.agent();
        a.res.apply(FILE).unwrap();
    }
    // An agent that only knows Namespaces (say a kind moved to a later cell) saves its changes
    // without dropping the pods.
    let db = Db::new();
    let res = Resources::new(db.clone(), StateFile::new(f.path()), None).unwrap();
    res.register(NamespaceKind {
        table: new_namespaces_table(&db).unwrap(),
    })
    .unwrap();
    res.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: other}")
        .unwrap();
    let a = f.agent();
    assert_eq!(a.pods.len(&a.db.read_txn()), 2);
    assert_eq!(a.namespaces.len(&a.db.read_txn()), 2);
}

#[test]
fn list_by_kind_name_namespace_and_name() {
    let f = Fixture::new();
    let a = f.agent();
    a.res.apply(FILE).unwrap();
    a.res
        .apply("apiVersion: v1\nkind: Pod\nmetadata: {name: frontend}")
        .unwrap();
    for kind in ["pods", "Pod", "POD", "po", "pod"] {
        assert_eq!(a.res.list(kind, None, None).unwrap().len(), 3, "{kind}");
    }
    assert_eq!(a.res.list("ns", None, None).unwrap().len(), 1);
    assert_eq!(a.res.list("Namespaces", None, None).unwrap().len(), 1);
    assert_eq!(a.res.list("pods", Some("shop"), None).unwrap().len(), 2);
    let named = a.res.list("pods", None, Some("frontend")).unwrap();
    assert_eq!(named.len(), 2);
    let one = a.res.list("pods", Some("shop"), Some("frontend")).unwrap();
    assert_eq!(one[0]["service_account"], "web");
    assert_eq!(one[0]["named_ports"]["dns"]["protocol"], "UDP");
    let e = a.res.list("services", None, None).unwrap_err();
    assert!(
        e.to_string()
            .contains("Namespace (namespace, namespaces, ns)"),
        "{e}"
    );
    assert_eq!(a.res.canonical_kind("ns").unwrap(), "Namespace");
}

#[test]
fn kinds_register_once() {
    let f = Fixture::new();
    let a = f.agent();
    let e = a
        .res
        .register(PodKind {
            table: a.pods.clone(),
        })
        .unwrap_err();
    assert!(matches!(e, ResourcesError::DuplicateKind { .. }), "{e}");
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
        .header("content-type", "text/yaml")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn routes_answer_with_the_documented_shapes() {
    let f = Fixture::new();
    let a = f.agent();
    let (router, doc) = api::router(a.res.clone()).split_for_parts();
    for p in ["/v1/apply", "/v1/delete", "/v1/resources/{kind}"] {
        assert!(
            doc.paths.paths.contains_key(p),
            "{p} missing from the OpenAPI document"
        );
    }
    let (s, v) = call(&router, "POST", "/v1/apply", FILE).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v[1]["action"], "created");
    assert_eq!(v[1]["namespace"], "shop");

    let (s, v) = call(&router, "POST", "/v1/apply", "kind: [").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["code"], "bad_request");
    assert!(
        v["message"].as_str().unwrap().contains("invalid YAML"),
        "{v}"
    );

    let bad = FILE.replace("containerPort: 53", "containerPort: 70000");
    let (s, v) = call(&router, "POST", "/v1/apply", &bad).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["code"], "invalid");
    let e = &v["details"]["errors"][0];
    assert_eq!(e["document"], 2);
    assert_eq!(e["kind"], "Pod");
    assert_eq!(e["namespace"], "shop");
    assert_eq!(e["name"], "frontend");
    assert_eq!(e["field"], "spec.containers[1].ports[0].containerPort");
    assert_eq!(e["reason"], "must be 1-65535, got 70000");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("nothing was changed"),
        "{v}"
    );

    let (s, v) = call(
        &router,
        "GET",
        "/v1/resources/pods?namespace=shop&name=backend",
        "",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["labels"]["app"], "backend");

    let (s, v) = call(&router, "GET", "/v1/resources/widgets", "").await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("Pod (pod, pods, po)"),
        "{v}"
    );

    let (s, v) = call(
        &router,
        "POST",
        "/v1/delete",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: nope}",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v[0]["action"], "not-found");
}

/// Files large enough to be parsed on several threads keep file order in results and errors,
/// stay all-or-nothing, and survive a restart.
#[test]
fn a_large_file_is_parsed_in_parallel_in_file_order() {
    let f = Fixture::new();
    let a = f.agent();
    let n = 2 * super::store::PARALLEL_PARSE_MIN + 1;
    let doc = |i: usize, port: u32| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}}}\nspec: {{containers: [{{ports: [{{containerPort: {port}}}]}}]}}\n"
        )
    };
    // Bad ports in the first, a middle and the last document: three errors in file order.
    let bad = [0, n / 2, n - 1];
    let file: String = (0..n)
        .map(|i| doc(i, if bad.contains(&i) { 0 } else { 80 }))
        .collect();
    let errs = invalid(a.res.apply(&file).unwrap_err());
    let docs: Vec<usize> = errs.iter().map(|e| e.document).collect();
    assert_eq!(docs, bad.iter().map(|i| i + 1).collect::<Vec<_>>());
    assert!(a.pods.is_empty(&a.db.read_txn()));

    let file: String = (0..n).map(|i| doc(i, 80)).collect();
    let changes = a.res.apply(&file).unwrap();
    assert_eq!(changes.len(), n);
    assert!(
        changes
            .iter()
            .enumerate()
            .all(|(i, c)| c.name == format!("p{i}"))
    );
    assert_eq!(a.pods.len(&a.db.read_txn()), n);
    let b = f.agent();
    assert_eq!(b.pods.len(&b.db.read_txn()), n);
}

/// A large JSON `kind: List` (items parsed on every CPU) gives the same documents, in the
/// same order and with the same labels, as the one-thread path; a syntax error in it is still
/// reported by the one-thread path with its position.
#[test]
fn a_large_json_list_splits_into_the_same_documents() {
    let n = super::store::PARALLEL_PARSE_MIN + 7;
    let item = |i: usize| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"p{i}","namespace":"ns{}"}},"spec":{{"x":[{i},{{"y":null}}]}}}}"#,
            i % 3
        )
    };
    let items: Vec<String> = (0..n).map(item).collect();
    let file = format!(
        r#"{{"apiVersion":"v1","kind":"List","items":[{}]}}"#,
        items.join(",")
    );
    let docs = crate::parse_documents(&file).unwrap();
    assert_eq!(docs.len(), n);
    for (j, (d, text)) in docs.iter().zip(&items).enumerate() {
        assert_eq!(d.label, format!("document 1 items[{j}]"));
        assert_eq!(d.index, 1);
        assert_eq!(d.name, format!("p{j}"));
        assert_eq!(
            d.namespace.as_deref(),
            Some(format!("ns{}", j % 3).as_str())
        );
        assert_eq!(
            d.value,
            serde_json::from_str::<serde_json::Value>(text).unwrap()
        );
    }
    let broken = file.replacen(r#""name":"p5","#, r#""name":"p5""#, 1);
    match crate::parse_documents(&broken) {
        Err(ResourcesError::Syntax { document, reason }) => {
            assert_eq!(document, 1);
            assert!(reason.starts_with("invalid JSON:"), "{reason}");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}
