//! Typed client calls of the datapath routes: monitor stream, metrics, BPF map dumps.

use http::Method;

use crate::client::{Client, ClientError, LineStream};
use crate::models::{BpfCtEntry, BpfEndpoint, BpfIpcacheEntry, BpfMetric, CtGcResult};

impl Client {
    /// `GET /v1/monitor[?type=..]`: newline-delimited JSON `MonitorEvent`s until the agent
    /// closes the stream. `kind` is `drop`, `trace` or `policy-verdict`.
    pub async fn monitor(&self, kind: Option<&str>) -> Result<LineStream, ClientError> {
        let path = match kind {
            Some(k) => format!("/v1/monitor?type={k}"),
            None => "/v1/monitor".to_string(),
        };
        self.stream_lines(&path).await
    }

    /// `GET /v1/metrics`: the agent's metrics in Prometheus text format.
    pub async fn metrics_text(&self) -> Result<String, ClientError> {
        let bytes = self.call_raw(Method::GET, "/v1/metrics", None).await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// `GET /v1/bpf/lxc`.
    pub async fn bpf_lxc(&self) -> Result<Vec<BpfEndpoint>, ClientError> {
        self.get("/v1/bpf/lxc").await
    }

    /// `GET /v1/bpf/ipcache`.
    pub async fn bpf_ipcache(&self) -> Result<Vec<BpfIpcacheEntry>, ClientError> {
        self.get("/v1/bpf/ipcache").await
    }

    /// `GET /v1/bpf/ct`.
    pub async fn bpf_ct(&self) -> Result<Vec<BpfCtEntry>, ClientError> {
        self.get("/v1/bpf/ct").await
    }

    /// `GET /v1/bpf/metrics`.
    pub async fn bpf_metrics(&self) -> Result<Vec<BpfMetric>, ClientError> {
        self.get("/v1/bpf/metrics").await
    }

    /// `POST /v1/bpf/ct/gc`: run one conntrack GC pass now.
    pub async fn bpf_ct_gc(&self) -> Result<CtGcResult, ClientError> {
        self.send_json(Method::POST, "/v1/bpf/ct/gc", &serde_json::json!({}))
            .await
    }
}
