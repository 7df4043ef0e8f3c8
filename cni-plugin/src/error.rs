//! CNI error results: the spec's error codes, how agent answers map onto them, and the JSON
//! written to stdout when a command fails.

use cilium_api::ClientError;
use serde::Serialize;

/// Error codes from the CNI spec's table (0-99 reserved) plus this plugin's own (100+).
///
/// Which code an agent failure becomes is decided in [`CniError::from_agent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 1: the config's `cniVersion` is not supported, or does not allow this command.
    IncompatibleVersion,
    /// 4: a necessary environment variable is missing or invalid (the message names it).
    InvalidEnv,
    /// 5: reading stdin failed.
    Io,
    /// 6: stdin (or a version string) could not be decoded.
    Decode,
    /// 7: the network configuration is invalid (the message names the field).
    InvalidConfig,
    /// 11: transient failure (agent unreachable, not ready, out of addresses): retry later.
    TryAgainLater,
    /// 50: STATUS: the plugin cannot service ADD (agent unreachable or not ready).
    NotAvailable,
    /// 100: ADD for an attachment (container id + ifname) the agent already has.
    AttachmentExists,
    /// 101: CHECK found the attachment missing, its live state (interface, address, routes,
    /// host veth, BPF entry) different from the agent's endpoint (the agent answered 409 to
    /// `?verify=true`; `msg` is the agent's message), or the endpoint different from
    /// `prevResult`.
    CheckFailed,
    /// 999: an unexpected agent answer or a bug (libcni's `ErrInternal`).
    Internal,
}

impl Code {
    /// The numeric code written into the error result.
    pub fn value(self) -> u32 {
        match self {
            Code::IncompatibleVersion => 1,
            Code::InvalidEnv => 4,
            Code::Io => 5,
            Code::Decode => 6,
            Code::InvalidConfig => 7,
            Code::TryAgainLater => 11,
            Code::NotAvailable => 50,
            Code::AttachmentExists => 100,
            Code::CheckFailed => 101,
            Code::Internal => 999,
        }
    }

    /// The short `msg` of the error result; the specifics go into `details`.
    pub fn summary(self) -> &'static str {
        match self {
            Code::IncompatibleVersion => "Incompatible CNI version",
            Code::InvalidEnv => "Invalid necessary environment variables",
            Code::Io => "I/O failure",
            Code::Decode => "Failed to decode content",
            Code::InvalidConfig => "Invalid network config",
            Code::TryAgainLater => "Try again later",
            Code::NotAvailable => "Plugin not available",
            Code::AttachmentExists => "Attachment already exists",
            Code::CheckFailed => "Attachment check failed",
            Code::Internal => "Internal error",
        }
    }
}

/// A failed CNI command: the code and what went wrong.
///
/// `msg` in the JSON is the specific message (what failed, on which object, what to do), so the
/// runtime's one-line error report is useful; `details` repeats the code's generic meaning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (CNI error {})", .code.value())]
pub struct CniError {
    /// The spec code.
    pub code: Code,
    /// What failed, on which object, and what to do.
    pub message: String,
}

/// The wire form of an error result.
#[derive(Debug, Serialize)]
struct ErrorResult<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'a str,
    code: u32,
    msg: &'a str,
    details: &'a str,
}

/// Which command met an agent failure; the same transport failure means different things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentOp {
    /// ADD, CHECK, DEL, GC: retrying later is the cure for a missing agent.
    Mutate,
    /// STATUS: a missing agent means "cannot service ADD" (code 50).
    Status,
}

impl CniError {
    /// An error of `code` with a specific message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Code 4 naming the variable.
    pub fn env(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidEnv, message)
    }

    /// Code 7 naming the field.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidConfig, message)
    }

    /// Map a failed agent call made while doing `what` to a CNI error.
    ///
    /// Choices (the runtimes do not branch on codes, so the aim is an honest hint to the
    /// operator and to retry logic):
    /// - unreachable socket, broken HTTP exchange, 503 (agent starting): 11 "try again later"
    ///   for ADD/CHECK/DEL/GC, 50 for STATUS, as the spec's STATUS section describes.
    /// - 409 (e.g. the `IP=` address is held by another attachment) and 507 (pod range or a
    ///   BPF map full): 11, because the request is fine and succeeds once other attachments are
    ///   released; kubelet and podman retry anyway.
    /// - 400 and 422 (e.g. `IP=` outside the node's pod range, an interface name the agent
    ///   refuses): 7, because the request as configured can never succeed; retrying is useless.
    /// - anything else (500, 403, an undecodable answer): 999, an agent bug or version skew.
    pub fn from_agent(op: AgentOp, what: &str, err: &ClientError) -> Self {
        let unavailable = match op {
            AgentOp::Mutate => Code::TryAgainLater,
            AgentOp::Status => Code::NotAvailable,
        };
        let code = match err {
            ClientError::Unreachable { .. } | ClientError::Http { .. } => unavailable,
            ClientError::Api { status, .. } => match status {
                503 => unavailable,
                409 | 507 => Code::TryAgainLater,
                400 | 422 => Code::InvalidConfig,
                _ => Code::Internal,
            },
            ClientError::Decode { .. } => Code::Internal,
        };
        Self::new(code, format!("{what}: {err}"))
    }

    /// The error result JSON for `cni_version` (the config's version, or the newest supported).
    pub fn to_json(&self, cni_version: &str) -> String {
        let body = ErrorResult {
            cni_version,
            code: self.code.value(),
            msg: &self.message,
            details: self.code.summary(),
        };
        // A struct of strings and an integer always serializes.
        serde_json::to_string(&body).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cilium_api::{ErrorBody, ErrorCode};

    fn api(status: u16) -> ClientError {
        ClientError::Api {
            status,
            body: ErrorBody {
                code: ErrorCode::Conflict,
                message: "x".into(),
                details: serde_json::Value::Null,
            },
        }
    }

    #[test]
    fn error_json_has_the_spec_fields() {
        let e = CniError::env("CNI_NETNS is required for ADD");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.1.0")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "cniVersion": "1.1.0",
                "code": 4,
                "msg": "CNI_NETNS is required for ADD",
                "details": "Invalid necessary environment variables"
            })
        );
    }

    #[test]
    fn agent_failures_map_to_codes() {
        // A real unreachable error, from a socket nobody listens on.
        let unreachable = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(cilium_api::Client::unix("/nonexistent/x.sock").healthz())
            .unwrap_err();
        assert!(unreachable.is_unreachable());
        let m = |op, e: &ClientError| CniError::from_agent(op, "adding", e).code;
        assert_eq!(m(AgentOp::Mutate, &unreachable), Code::TryAgainLater);
        assert_eq!(m(AgentOp::Status, &unreachable), Code::NotAvailable);
        assert_eq!(m(AgentOp::Status, &api(503)), Code::NotAvailable);
        assert_eq!(m(AgentOp::Mutate, &api(503)), Code::TryAgainLater);
        assert_eq!(m(AgentOp::Mutate, &api(409)), Code::TryAgainLater);
        assert_eq!(m(AgentOp::Mutate, &api(507)), Code::TryAgainLater);
        assert_eq!(m(AgentOp::Mutate, &api(422)), Code::InvalidConfig);
        assert_eq!(m(AgentOp::Mutate, &api(400)), Code::InvalidConfig);
        assert_eq!(m(AgentOp::Mutate, &api(500)), Code::Internal);
        let msg = CniError::from_agent(AgentOp::Mutate, "adding", &unreachable).message;
        assert!(
            msg.starts_with("adding: cannot reach cilium-agent at /nonexistent/x.sock"),
            "{msg}"
        );
    }
}
