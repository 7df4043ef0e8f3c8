//! The agent's REST API served by a real hive (infra cells only, no privileges needed): error
//! shapes, the read-only TCP listener, the OpenAPI document, status and tables.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::path::PathBuf;

use cilium_agent::api::ApiConfig;
use cilium_agent::logging::LogControl;
use cilium_agent::metrics_server::MetricsConfig;
use cilium_api::models::HealthLevel;
use cilium_api::{Client, ErrorCode};
use hive::{Hive, Module};
use http::Method;

struct Agent {
    hive: Hive,
    socket: PathBuf,
    tcp: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start(token: &str) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api/cilium.sock");
    let tcp = format!("127.0.0.1:{}", free_port());
    let state = dir.path().join("state");
    let (s, t, tok) = (socket.clone(), tcp.clone(), token.to_string());
    let hive = Hive::new(vec![Module::new(
        "agent",
        "test agent",
        vec![
            cilium_agent::infra_cell(LogControl::detached()),
            cilium_node::cell(),
        ],
    )])
    .with_config_override::<ApiConfig>(move |c| {
        c.socket_path = s.clone();
        c.api_listen = t.clone();
        c.api_token = tok.clone();
    })
    .with_config_override::<MetricsConfig>(|c| c.prometheus_listen = String::new())
    .with_config_override::<cilium_node::NodeConfig>(move |c| c.state_dir = state.clone());
    hive.populate_with_args(["cilium-agent"]).unwrap();
    hive.start().await.unwrap();
    Agent {
        hive,
        socket,
        tcp,
        _dir: dir,
    }
}

fn api_err(e: cilium_api::ClientError) -> (u16, cilium_api::ErrorBody) {
    match e {
        cilium_api::ClientError::Api { status, body } => (status, body),
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn status_health_config_and_tables() {
    let a = start("").await;
    let c = Client::unix(&a.socket);
    assert_eq!(c.healthz().await.unwrap().status, "ok");
    let st = c.status().await.unwrap();
    let ids: Vec<&str> = st.cells.iter().map(|h| h.id.as_str()).collect();
    for want in ["agent.infra.api", "agent.infra.logging", "agent.node"] {
        assert!(ids.contains(&want), "{want} missing from {ids:?}");
    }
    assert!(
        st.cells.iter().all(|h| h.level == HealthLevel::Ok),
        "{:?}",
        st.cells
    );
    assert!(st.tables.iter().any(|t| t.name == "health"));

    let cfg = c.config().await.unwrap();
    assert_eq!(
        cfg["agent.infra.api"]["socket-path"].as_str(),
        Some(a.socket.to_str().unwrap()),
        "{cfg}"
    );
    // The token is a secret: never served.
    assert!(!cfg.to_string().contains("api-token"), "{cfg}");

    let dump = c.db_table("health").await.unwrap();
    assert!(
        dump.objects
            .iter()
            .any(|o| o["object"]["id"] == "agent.infra.api"),
        "{dump:?}"
    );

    let doc: serde_json::Value = c.get("/v1/openapi.json").await.unwrap();
    for p in ["/v1/healthz", "/v1/status", "/v1/config", "/v1/db/{table}"] {
        assert!(
            doc["paths"].get(p).is_some(),
            "{p} missing from the OpenAPI document"
        );
    }
    a.hive.stop().await.unwrap();
    assert!(!a.socket.exists(), "the socket is removed on stop");
    assert!(c.status().await.unwrap_err().is_unreachable());
}

#[tokio::test]
async fn socket_mode_is_0660() {
    use std::os::unix::fs::PermissionsExt as _;
    let a = start("").await;
    let mode = std::fs::metadata(&a.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    a.hive.stop().await.unwrap();
}

#[tokio::test]
async fn error_shapes() {
    let a = start("").await;
    let c = Client::unix(&a.socket);

    let (status, body) = api_err(c.db_table("no-such-table").await.unwrap_err());
    assert_eq!((status, body.code), (404, ErrorCode::NotFound));
    assert!(
        body.message.contains("no-such-table") && body.message.contains("health"),
        "{}",
        body.message
    );

    let (status, body) = api_err(
        c.call_raw(Method::PATCH, "/v1/config", Some(b"{not json".to_vec()))
            .await
            .unwrap_err(),
    );
    assert_eq!((status, body.code), (400, ErrorCode::BadRequest));

    let (status, body) = api_err(
        c.send_json::<_, serde_json::Value>(
            Method::PATCH,
            "/v1/config",
            &serde_json::json!({"socket-path": "/x"}),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(status, 400);
    assert!(body.message.contains("socket-path"), "{}", body.message);

    let (status, _) = api_err(
        c.send_json::<_, serde_json::Value>(
            Method::PATCH,
            "/v1/config",
            &serde_json::json!({"log-level": "no=such=level"}),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(status, 400);

    let ok: serde_json::Value = c
        .send_json(
            Method::PATCH,
            "/v1/config",
            &serde_json::json!({"log-level": "debug"}),
        )
        .await
        .unwrap();
    assert_eq!(ok["log-level"], "debug");

    let (status, body) = api_err(
        c.get::<serde_json::Value>("/v1/nothing-here")
            .await
            .unwrap_err(),
    );
    assert_eq!((status, body.code), (404, ErrorCode::NotFound));
    a.hive.stop().await.unwrap();
}

#[tokio::test]
async fn tcp_listener_is_read_only_without_token() {
    let a = start("").await;
    let c = Client::tcp(&a.tcp);
    assert_eq!(c.healthz().await.unwrap().status, "ok");
    let (status, body) = api_err(
        c.send_json::<_, serde_json::Value>(
            Method::PATCH,
            "/v1/config",
            &serde_json::json!({"log-level": "debug"}),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((status, body.code), (403, ErrorCode::Forbidden));
    assert!(body.message.contains("--api-token"), "{}", body.message);
    // A wrong token is still refused.
    let (status, _) = api_err(
        c.clone()
            .with_token("guess")
            .send_json::<_, serde_json::Value>(
                Method::PATCH,
                "/v1/config",
                &serde_json::json!({"log-level": "debug"}),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 403);
    a.hive.stop().await.unwrap();
}

#[tokio::test]
async fn tcp_listener_allows_mutations_with_the_token() {
    let a = start("s3cret").await;
    let c = Client::tcp(&a.tcp).with_token("s3cret");
    let ok: serde_json::Value = c
        .send_json(
            Method::PATCH,
            "/v1/config",
            &serde_json::json!({"log-level": "warn"}),
        )
        .await
        .unwrap();
    assert_eq!(ok["log-level"], "warn");
    a.hive.stop().await.unwrap();
}

#[tokio::test]
async fn second_agent_on_the_same_socket_fails_clearly() {
    let a = start("").await;
    let dir = tempfile::tempdir().unwrap();
    let s = a.socket.clone();
    let state = dir.path().to_path_buf();
    let second = Hive::new(vec![Module::new(
        "agent",
        "second",
        vec![
            cilium_agent::infra_cell(LogControl::detached()),
            cilium_node::cell(),
        ],
    )])
    .with_config_override::<ApiConfig>(move |c| c.socket_path = s.clone())
    .with_config_override::<MetricsConfig>(|c| c.prometheus_listen = String::new())
    .with_config_override::<cilium_node::NodeConfig>(move |c| c.state_dir = state.clone());
    second.populate_with_args(["cilium-agent"]).unwrap();
    let err = second.start().await.unwrap_err().to_string();
    assert!(err.contains("already serving"), "{err}");
    // The first agent is untouched.
    assert_eq!(
        Client::unix(&a.socket).healthz().await.unwrap().status,
        "ok"
    );
    a.hive.stop().await.unwrap();
}

#[tokio::test]
async fn large_bodies_are_read_not_refused() {
    // 3 MB is over axum's default limit; the API must read it and judge its content.
    let a = start("").await;
    let c = Client::unix(&a.socket);
    let padding = "x".repeat(3 << 20);
    let res = c
        .send_json::<_, serde_json::Value>(
            Method::PATCH,
            "/v1/config",
            &serde_json::json!({ "padding": padding }),
        )
        .await;
    let Err(e) = res else {
        panic!("an unknown key was accepted")
    };
    let (status, body) = api_err(e);
    // 400 naming the unknown key, not 413: the whole body was read.
    assert_eq!((status, body.code), (400, ErrorCode::BadRequest));
    assert!(
        body.message.starts_with("\"padding\""),
        "{:.200}",
        body.message
    );
    a.hive.stop().await.unwrap();
}
