//! The CNI verbs: from environment and stdin to what the process prints and its exit code.
//!
//! The plugin keeps no state of its own: every verb is one or two calls to the agent, which
//! serializes work per attachment, so parallel invocations are safe.

use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cilium_api::models::{EndpointChangeRequest, EndpointGcRequest, attachment_key};
use cilium_api::{Client, ClientError};
use serde_json::json;
use tracing::debug;

use crate::config::{CniVersion, GC_KEY_VALID, NetConf, SUPPORTED_VERSIONS, peek_version};
use crate::env::{CniEnv, Command};
use crate::error::{AgentOp, CniError, Code};
use crate::result::CniResult;

/// How long one invocation may wait for the agent before giving up with code 11 (50 for
/// STATUS). Runtimes have their own, longer, deadlines; a hung agent must not hang the pod.
const AGENT_TIMEOUT: Duration = Duration::from_secs(110);

/// What the process prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Text for stdout (a result, VERSION info or an error result).
    pub stdout: Option<String>,
    /// Text for stderr (only the "about" text when CNI_COMMAND is unset).
    pub stderr: Option<String>,
    /// Process exit code.
    pub exit_code: i32,
}

impl Outcome {
    fn success(stdout: Option<String>) -> Self {
        Self {
            stdout,
            stderr: None,
            exit_code: 0,
        }
    }

    fn failure(err: &CniError, version: CniVersion) -> Self {
        debug!(code = err.code.value(), error = %err.message, "command failed");
        Self {
            stdout: Some(err.to_json(version.as_str())),
            stderr: None,
            exit_code: 1,
        }
    }
}

/// Run one invocation: `var` looks up environment variables, `stdin` holds the config.
pub fn run(var: impl Fn(&str) -> Option<String>, stdin: &mut dyn Read) -> Outcome {
    let Some(command) = var("CNI_COMMAND").filter(|c| !c.is_empty()) else {
        // Like libcni's skel: a bare invocation describes the plugin and succeeds, without
        // waiting on a stdin nobody will write.
        return Outcome {
            stdout: None,
            stderr: Some(format!(
                "cilium-cni {}: CNI plugin for cilium-agent, CNI spec {}\n\
                 set CNI_COMMAND (ADD, DEL, CHECK, STATUS, GC, VERSION) to use it\n",
                env!("CARGO_PKG_VERSION"),
                versions_json().join(", ")
            )),
            exit_code: 0,
        };
    };
    let mut input = Vec::new();
    if let Err(e) = stdin.read_to_end(&mut input) {
        let err = CniError::new(
            Code::Io,
            format!("reading the network configuration from stdin failed: {e}"),
        );
        return Outcome::failure(&err, CniVersion::LATEST);
    }
    let version = peek_version(&input);
    match run_parsed(&command, &var, &input) {
        Ok(stdout) => Outcome::success(stdout),
        Err(err) => Outcome::failure(&err, version),
    }
}

fn versions_json() -> Vec<&'static str> {
    SUPPORTED_VERSIONS.iter().map(|v| v.as_str()).collect()
}

fn run_parsed(
    command: &str,
    var: &dyn Fn(&str) -> Option<String>,
    input: &[u8],
) -> Result<Option<String>, CniError> {
    let command = Command::parse(command)?;
    if command == Command::Version {
        let out = json!({
            "cniVersion": crate::config::version_request(input),
            "supportedVersions": versions_json(),
        });
        return Ok(Some(out.to_string()));
    }
    let env = CniEnv::from_lookup(command, var)?;
    let conf = NetConf::parse(input)?;
    if !conf.cni_version.allows(command) {
        let needs = if command == Command::Check {
            "0.4.0"
        } else {
            "1.1.0"
        };
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!(
                "config version {} does not allow {}; it needs cniVersion {needs} or later",
                conf.cni_version.as_str(),
                command.as_str()
            ),
        ));
    }
    let socket = socket_path(&conf, var);
    debug!(command = command.as_str(), container = %env.container_id, ifname = %env.ifname,
           netns = %env.netns, socket = %socket.display(), "cilium-cni invoked");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CniError::new(
                Code::Internal,
                format!("starting the async runtime failed: {e}"),
            )
        })?;
    let cmd = Cmd {
        env: &env,
        conf: &conf,
        client: Client::unix(&socket),
        socket: &socket,
    };
    runtime.block_on(async {
        match tokio::time::timeout(AGENT_TIMEOUT, cmd.run()).await {
            Ok(r) => r,
            Err(_) => {
                let code = if command == Command::Status {
                    Code::NotAvailable
                } else {
                    Code::TryAgainLater
                };
                Err(CniError::new(
                    code,
                    format!(
                        "{} timed out after {}s waiting for cilium-agent at {}; is it overloaded \
                         or stuck?",
                        command.as_str(),
                        AGENT_TIMEOUT.as_secs(),
                        socket.display()
                    ),
                ))
            }
        }
    })
}

/// `socketPath` from the config, else env `CILIUM_SOCKET`, else the default path.
fn socket_path(conf: &NetConf, var: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    conf.socket_path
        .clone()
        .or_else(|| {
            var(cilium_api::SOCKET_ENV)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(cilium_api::DEFAULT_SOCKET_PATH))
}

/// One validated invocation.
struct Cmd<'a> {
    env: &'a CniEnv,
    conf: &'a NetConf,
    client: Client,
    socket: &'a Path,
}

impl Cmd<'_> {
    async fn run(&self) -> Result<Option<String>, CniError> {
        match self.env.command {
            Command::Add => self.add().await.map(Some),
            Command::Del => self.del().await.map(|()| None),
            Command::Check => self.check().await.map(|()| None),
            Command::Status => self.status().await.map(|()| None),
            Command::Gc => self.gc().await.map(|()| None),
            // Answered before the environment is even read.
            Command::Version => Ok(None),
        }
    }

    fn key(&self) -> String {
        attachment_key(&self.env.container_id, &self.env.ifname)
    }

    /// ADD: refuse an attachment the agent already has (the spec requires an error when the
    /// interface exists; the agent's PUT is idempotent, so the plugin asks first), then PUT.
    async fn add(&self) -> Result<String, CniError> {
        let key = self.key();
        match self.client.endpoint_get(&key).await {
            Ok(ep) => {
                return Err(CniError::new(
                    Code::AttachmentExists,
                    format!(
                        "attachment {key} already exists (endpoint {}, {} in {}); run DEL for \
                         it before adding it again",
                        ep.id, ep.ifname, ep.netns
                    ),
                ));
            }
            Err(e) if e.status() == Some(404) => {}
            Err(e) => {
                return Err(CniError::from_agent(
                    AgentOp::Mutate,
                    &format!("looking up endpoint {key}"),
                    &e,
                ));
            }
        }
        let args = &self.env.args;
        let req = EndpointChangeRequest {
            container_id: self.env.container_id.clone(),
            netns: self.env.netns.clone(),
            ifname: self.env.ifname.clone(),
            pod_namespace: args.pod_namespace.clone(),
            pod_name: args.pod_name.clone(),
            infra_container_id: args.infra_container_id.clone(),
            requested_ipv4: args.ip,
            mtu: self.conf.mtu,
        };
        let ep = self.client.endpoint_put(&key, &req).await.map_err(|e| {
            CniError::from_agent(
                AgentOp::Mutate,
                &format!("creating endpoint {key} in netns {}", self.env.netns),
                &e,
            )
        })?;
        debug!(endpoint = ep.id, ip = %ep.ipv4, host_ifname = %ep.host_ifname, "endpoint created");
        let ours = CniResult::from_endpoint(&ep, self.conf.mtu);
        let result = match self.conf.prev_result.clone() {
            Some(prev) => ours.chained_after(prev),
            None => ours,
        };
        Ok(result.for_version(self.conf.cni_version).to_json())
    }

    /// DEL: idempotent. A 404 means nothing is left to undo. An unreachable agent is an error
    /// (11: the runtime retries DEL, and the IP, BPF entries and veth stay until then), except
    /// when the socket's directory does not exist: the agent creates it on start under
    /// /var/run (tmpfs), so no agent has run there since boot and its state (IPAM, bpffs pins,
    /// veths of dead netns) did not survive the reboot — provably nothing to undo.
    async fn del(&self) -> Result<(), CniError> {
        let key = self.key();
        match self.client.endpoint_delete(&key).await {
            Ok(()) => Ok(()),
            Err(e) if e.status() == Some(404) => {
                debug!(key = %key, "endpoint unknown to the agent: nothing to undo");
                Ok(())
            }
            Err(e) if e.is_unreachable() && !socket_dir_exists(self.socket) => {
                debug!(key = %key, socket = %self.socket.display(),
                       "no agent socket directory: nothing to undo");
                Ok(())
            }
            Err(e) => Err(CniError::from_agent(
                AgentOp::Mutate,
                &format!("deleting endpoint {key}"),
                &e,
            )),
        }
    }

    /// CHECK: the agent verifies the live state of its endpoint (pod interface up with its
    /// address, gateway and default routes, host veth, BPF entry), then the endpoint must
    /// match what `prevResult` says we created. A difference the agent finds (409) is code
    /// 101 with the agent's message, which names it.
    async fn check(&self) -> Result<(), CniError> {
        let prev = self
            .conf
            .prev_result
            .as_ref()
            .ok_or_else(|| CniError::config("prevResult is required for CHECK"))?;
        let key = self.key();
        let ep = match self.client.endpoint_verify(&key).await {
            Ok(ep) => ep,
            Err(e) if e.status() == Some(404) => {
                return Err(CniError::new(
                    Code::CheckFailed,
                    format!(
                        "cilium-agent has no endpoint {key}: the attachment is gone; \
                         DEL and ADD it again"
                    ),
                ));
            }
            Err(ClientError::Api { status: 409, body }) => {
                return Err(CniError::new(Code::CheckFailed, body.message));
            }
            Err(e) => {
                return Err(CniError::from_agent(
                    AgentOp::Mutate,
                    &format!("looking up endpoint {key}"),
                    &e,
                ));
            }
        };
        let env = self.env;
        let fail = |what: String| {
            Err(CniError::new(
                Code::CheckFailed,
                format!("CHECK of {key} failed: {what}"),
            ))
        };
        if ep.netns != env.netns {
            return fail(format!(
                "netns mismatch: CNI_NETNS is {}, the agent has {}",
                env.netns, ep.netns
            ));
        }
        if !matches!(ep.state.as_str(), "ready" | "creating") {
            return fail(format!("endpoint {} is in state {}", ep.id, ep.state));
        }
        let Some(idx) = prev
            .interfaces
            .iter()
            .position(|i| i.name == env.ifname && i.sandbox.as_deref() == Some(env.netns.as_str()))
        else {
            return fail(format!(
                "interface mismatch: prevResult has no interface {} in sandbox {}",
                env.ifname, env.netns
            ));
        };
        if let Some(mac) = &prev.interfaces[idx].mac
            && !ep.mac.is_empty()
            && !mac.eq_ignore_ascii_case(&ep.mac)
        {
            return fail(format!(
                "MAC mismatch on {}: prevResult has {mac}, the agent has {}",
                env.ifname, ep.mac
            ));
        }
        if !ep.host_ifname.is_empty() && !prev.interfaces.iter().any(|i| i.name == ep.host_ifname) {
            return fail(format!(
                "interface mismatch: the agent's host interface {} is not in prevResult",
                ep.host_ifname
            ));
        }
        let ips: Vec<_> = prev
            .ips
            .iter()
            .filter(|ip| ip.interface == Some(idx))
            .collect();
        let Some(ip) = ips.iter().find(|ip| ip.ip() == Some(IpAddr::V4(ep.ipv4))) else {
            let listed: Vec<&str> = ips.iter().map(|ip| ip.address.as_str()).collect();
            return fail(format!(
                "IP mismatch on {}: prevResult has [{}], the agent has {}",
                env.ifname,
                listed.join(", "),
                ep.ipv4
            ));
        };
        if let Some(gw) = &ip.gateway
            && gw.parse::<IpAddr>().ok() != Some(IpAddr::V4(ep.gateway))
        {
            return fail(format!(
                "gateway mismatch on {}: prevResult has {gw}, the agent has {}",
                env.ifname, ep.gateway
            ));
        }
        Ok(())
    }

    /// STATUS: ready when the agent answers its health check.
    async fn status(&self) -> Result<(), CniError> {
        let h = self.client.healthz().await.map_err(|e| {
            CniError::from_agent(AgentOp::Status, "asking cilium-agent for its health", &e)
        })?;
        debug!(status = %h.status, "agent health");
        if matches!(h.status.as_str(), "ok" | "degraded") {
            Ok(())
        } else {
            Err(CniError::new(
                Code::NotAvailable,
                format!(
                    "cilium-agent at {} reports status {:?}; wait until it is ok",
                    self.socket.display(),
                    h.status
                ),
            ))
        }
    }

    /// GC: the agent removes every CNI endpoint whose key is not in the valid list. A missing
    /// list is refused rather than read as "keep nothing".
    async fn gc(&self) -> Result<(), CniError> {
        let list = self.conf.gc_attachments()?.ok_or_else(|| {
            CniError::config(format!(
                "{GC_KEY_VALID} is required for GC (an empty list removes every attachment)"
            ))
        })?;
        let keep = list
            .iter()
            .map(|a| attachment_key(&a.container_id, &a.ifname))
            .collect();
        let res = self
            .client
            .endpoint_gc(&EndpointGcRequest { keep })
            .await
            .map_err(|e| {
                CniError::from_agent(AgentOp::Mutate, "garbage-collecting endpoints", &e)
            })?;
        debug!(removed = ?res.removed, "gc done");
        Ok(())
    }
}

fn socket_dir_exists(socket: &Path) -> bool {
    match socket.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.exists(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run_with(vars: &[(&str, &str)], stdin: &str) -> Outcome {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        run(|k| map.get(k).cloned(), &mut stdin.as_bytes())
    }

    fn code(o: &Outcome) -> u64 {
        let v: serde_json::Value = serde_json::from_str(o.stdout.as_deref().unwrap()).unwrap();
        v["code"].as_u64().unwrap()
    }

    #[test]
    fn no_command_prints_about_and_succeeds() {
        let o = run_with(&[], "");
        assert_eq!(o.exit_code, 0);
        assert!(o.stdout.is_none());
        assert!(o.stderr.unwrap().contains("1.1.0"));
    }

    #[test]
    fn version_echoes_input_version() {
        let o = run_with(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(o.exit_code, 0);
        let v: serde_json::Value = serde_json::from_str(&o.stdout.unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"cniVersion": "0.4.0",
                   "supportedVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
        );
    }

    #[test]
    fn version_gating_is_code_1() {
        let o = run_with(
            &[("CNI_COMMAND", "STATUS")],
            r#"{"cniVersion":"1.0.0","name":"n"}"#,
        );
        assert_eq!(o.exit_code, 1);
        assert_eq!(code(&o), 1);
        let o = run_with(
            &[
                ("CNI_COMMAND", "CHECK"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/n"),
            ],
            r#"{"cniVersion":"0.3.1","name":"n"}"#,
        );
        assert_eq!(code(&o), 1);
    }

    #[test]
    fn errors_use_the_config_version() {
        let o = run_with(
            &[("CNI_COMMAND", "ADD")],
            r#"{"cniVersion":"0.4.0","name":"n"}"#,
        );
        let v: serde_json::Value = serde_json::from_str(&o.stdout.unwrap()).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["code"], 4);
    }

    #[test]
    fn socket_path_precedence() {
        let conf = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n"}"#).unwrap();
        assert_eq!(
            socket_path(&conf, &|_| None),
            PathBuf::from(cilium_api::DEFAULT_SOCKET_PATH)
        );
        assert_eq!(
            socket_path(&conf, &|k| (k == "CILIUM_SOCKET")
                .then(|| "/e.sock".to_string())),
            PathBuf::from("/e.sock")
        );
        let conf =
            NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n","socketPath":"/c.sock"}"#).unwrap();
        assert_eq!(
            socket_path(&conf, &|_| Some("/e.sock".to_string())),
            PathBuf::from("/c.sock")
        );
    }
}
