//! Typed client of the agent API over its unix socket (or the read-only TCP listener).
//!
//! Each request opens its own connection: the CLI and the CNI plugin make a handful of calls
//! per process, and a fresh connection makes agent restarts invisible to them.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ErrorBody;
use crate::models::{
    Endpoint, EndpointChangeRequest, EndpointGcRequest, EndpointGcResult, Healthz,
    IpamAllocateRequest, IpamAllocation, IpamStatus, Status, TableDump,
};

/// What went wrong talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be connected to.
    #[error("cannot reach cilium-agent at {target}: is it running? ({cause})")]
    Unreachable {
        /// Socket path or address.
        target: String,
        /// Underlying I/O error (kept out of the error chain: it is in the message).
        cause: std::io::Error,
    },
    /// The agent answered with an error body.
    #[error("{} (HTTP {status})", .body.message)]
    Api {
        /// HTTP status.
        status: u16,
        /// Decoded error body.
        body: ErrorBody,
    },
    /// The HTTP exchange failed after connecting.
    #[error("request {method} {path} to cilium-agent failed: {message}")]
    Http {
        /// Method.
        method: String,
        /// Path.
        path: String,
        /// What failed.
        message: String,
    },
    /// The answer could not be decoded.
    #[error("cannot decode the answer to {path}: {source}")]
    Decode {
        /// Path requested.
        path: String,
        /// Decoder error.
        source: serde_json::Error,
    },
}

impl ClientError {
    /// True when the agent could not be reached at all.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }

    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Target {
    Unix(PathBuf),
    Tcp(String),
}

/// A client of one agent.
#[derive(Debug, Clone)]
pub struct Client {
    target: Target,
    token: Option<String>,
}

/// A stream of newline-delimited records (e.g. `GET /v1/monitor`).
pub struct LineStream {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
    path: String,
}

impl LineStream {
    /// The next line without its newline; `None` at the end of the stream.
    pub async fn next_line(&mut self) -> Result<Option<String>, ClientError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                return Ok(Some(text));
            }
            match self.body.frame().await {
                None => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    let text = String::from_utf8_lossy(&self.buf).into_owned();
                    self.buf.clear();
                    return Ok(Some(text));
                }
                Some(Err(e)) => {
                    return Err(ClientError::Http {
                        method: "GET".into(),
                        path: self.path.clone(),
                        message: e.to_string(),
                    });
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

impl Client {
    /// A client for the agent listening on the unix socket `path`.
    pub fn unix(path: impl AsRef<Path>) -> Self {
        Self {
            target: Target::Unix(path.as_ref().to_path_buf()),
            token: None,
        }
    }

    /// A client for the agent's TCP listener at `addr` (`host:port`).
    pub fn tcp(addr: impl Into<String>) -> Self {
        Self {
            target: Target::Tcp(addr.into()),
            token: None,
        }
    }

    /// The socket from `explicit`, else env `CILIUM_SOCKET`, else the default path.
    pub fn from_env(explicit: Option<&Path>) -> Self {
        match explicit {
            Some(p) => Self::unix(p),
            None => match std::env::var_os(crate::SOCKET_ENV) {
                Some(p) if !p.is_empty() => Self::unix(PathBuf::from(p)),
                _ => Self::unix(crate::DEFAULT_SOCKET_PATH),
            },
        }
    }

    /// Send `token` with every request (needed for mutations on the TCP listener).
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Where this client connects, for messages.
    pub fn target(&self) -> String {
        match &self.target {
            Target::Unix(p) => p.display().to_string(),
            Target::Tcp(a) => a.clone(),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        let http_err = |message: String| ClientError::Http {
            method: method.to_string(),
            path: path.to_string(),
            message,
        };
        let unreachable = |cause| ClientError::Unreachable {
            target: self.target(),
            cause,
        };
        let (mut sender, conn) = match &self.target {
            Target::Unix(p) => {
                let stream = tokio::net::UnixStream::connect(p)
                    .await
                    .map_err(unreachable)?;
                let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| http_err(e.to_string()))?;
                (s, tokio::spawn(c))
            }
            Target::Tcp(a) => {
                let stream = tokio::net::TcpStream::connect(a.as_str())
                    .await
                    .map_err(unreachable)?;
                let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| http_err(e.to_string()))?;
                (s, tokio::spawn(c))
            }
        };
        // The connection task ends with the response body; nothing to join.
        drop(conn);
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(http::header::HOST, "cilium-agent")
            .header(http::header::ACCEPT, "application/json");
        if let Some(t) = &self.token {
            req = req.header(crate::TOKEN_HEADER, t);
        }
        let req = match body {
            Some(b) => req
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(b))),
            None => req.body(Full::new(Bytes::new())),
        }
        .map_err(|e| http_err(e.to_string()))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| http_err(e.to_string()))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let bytes = self.call_raw(method, path, body).await?;
        let bytes = if bytes.is_empty() {
            Bytes::from_static(b"null")
        } else {
            bytes
        };
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            path: path.to_string(),
            source,
        })
    }

    /// Send a request and return the raw body of a successful answer.
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let resp = self.send(method.clone(), path, body).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http {
                method: method.to_string(),
                path: path.to_string(),
                message: e.to_string(),
            })?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        Err(api_error(status, &bytes))
    }

    /// GET `path` and decode JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None).await
    }

    /// Send `body` as JSON with `method` and decode the JSON answer.
    pub async fn send_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|source| ClientError::Decode {
            path: path.to_string(),
            source,
        })?;
        self.call(method, path, Some(bytes)).await
    }

    /// DELETE `path`, ignoring the body of a successful answer.
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.call_raw(Method::DELETE, path, None).await.map(|_| ())
    }

    /// GET `path` as a stream of lines (for long-lived endpoints such as the monitor).
    pub async fn stream_lines(&self, path: &str) -> Result<LineStream, ClientError> {
        let resp = self.send(Method::GET, path, None).await?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(api_error(status, &bytes));
        }
        Ok(LineStream {
            body: resp.into_body(),
            buf: Vec::new(),
            path: path.to_string(),
        })
    }

    /// `GET /v1/healthz`.
    pub async fn healthz(&self) -> Result<Healthz, ClientError> {
        self.get("/v1/healthz").await
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.get("/v1/status").await
    }

    /// `GET /v1/config`.
    pub async fn config(&self) -> Result<serde_json::Value, ClientError> {
        self.get("/v1/config").await
    }

    /// `GET /v1/db/{table}`.
    pub async fn db_table(&self, table: &str) -> Result<TableDump, ClientError> {
        self.get(&format!("/v1/db/{}", encode_segment(table))).await
    }

    /// `PUT /v1/endpoint/{key}`: create or return the endpoint of one CNI attachment.
    pub async fn endpoint_put(
        &self,
        key: &str,
        req: &EndpointChangeRequest,
    ) -> Result<Endpoint, ClientError> {
        let path = format!("/v1/endpoint/{}", encode_segment(key));
        self.send_json(Method::PUT, &path, req).await
    }

    /// `GET /v1/endpoint/{id-or-key}`.
    pub async fn endpoint_get(&self, id: &str) -> Result<Endpoint, ClientError> {
        self.get(&format!("/v1/endpoint/{}", encode_segment(id)))
            .await
    }

    /// `GET /v1/endpoint/{id-or-key}?verify=true`: the endpoint, after the agent checked that
    /// its live state (pod interface, address, routes, host veth, BPF entry) still matches;
    /// a difference is a 409 whose message names it, an unknown endpoint a 404.
    pub async fn endpoint_verify(&self, id: &str) -> Result<Endpoint, ClientError> {
        self.get(&format!("/v1/endpoint/{}?verify=true", encode_segment(id)))
            .await
    }

    /// `DELETE /v1/endpoint/{id-or-key}`.
    pub async fn endpoint_delete(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/endpoint/{}", encode_segment(id)))
            .await
    }

    /// `GET /v1/endpoints`.
    pub async fn endpoint_list(&self) -> Result<Vec<Endpoint>, ClientError> {
        self.get("/v1/endpoints").await
    }

    /// `POST /v1/endpoints/gc`.
    pub async fn endpoint_gc(
        &self,
        req: &EndpointGcRequest,
    ) -> Result<EndpointGcResult, ClientError> {
        self.send_json(Method::POST, "/v1/endpoints/gc", req).await
    }

    /// `POST /v1/ipam`.
    pub async fn ipam_allocate(
        &self,
        req: &IpamAllocateRequest,
    ) -> Result<IpamAllocation, ClientError> {
        self.send_json(Method::POST, "/v1/ipam", req).await
    }

    /// `DELETE /v1/ipam/{ip}`.
    pub async fn ipam_release(&self, ip: std::net::Ipv4Addr) -> Result<(), ClientError> {
        self.delete(&format!("/v1/ipam/{ip}")).await
    }

    /// `GET /v1/ipam`.
    pub async fn ipam_status(&self) -> Result<IpamStatus, ClientError> {
        self.get("/v1/ipam").await
    }
}

fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    let body = serde_json::from_slice::<ErrorBody>(bytes).unwrap_or_else(|_| ErrorBody {
        code: crate::ErrorCode::Internal,
        message: format!("HTTP {status}: {}", String::from_utf8_lossy(bytes).trim()),
        details: serde_json::Value::Null,
    });
    ClientError::Api {
        status: status.as_u16(),
        body,
    }
}

/// Percent-encode the characters that cannot appear in one path segment.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unreachable_socket_says_is_it_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nothing.sock");
        let err = Client::unix(&path).status().await.unwrap_err();
        assert!(err.is_unreachable());
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "cannot reach cilium-agent at {}: is it running?",
                path.display()
            )),
            "{msg}"
        );
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("cni:abc:eth0"), "cni:abc:eth0");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }
}
