//! The network configuration on stdin: spec version, `name`, this plugin's keys
//! (`socketPath`, `mtu`), `prevResult` and the GC attachment list. Unknown keys are kept.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::env::Command;
use crate::error::{CniError, Code};
use crate::result::CniResult;

/// A CNI spec version this plugin speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    /// 0.3.1: `ips[].version`, no CHECK.
    V0_3_1,
    /// 0.4.0: adds CHECK.
    V0_4_0,
    /// 1.0.0: drops `ips[].version`.
    V1_0_0,
    /// 1.1.0: adds STATUS, GC, interface `mtu`/`socketPath`/`pciID`, route attributes.
    V1_1_0,
}

/// Every version VERSION reports, oldest first.
pub const SUPPORTED_VERSIONS: [CniVersion; 4] = [
    CniVersion::V0_3_1,
    CniVersion::V0_4_0,
    CniVersion::V1_0_0,
    CniVersion::V1_1_0,
];

impl CniVersion {
    /// The newest version, used when the input names none we can trust.
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    /// The version string.
    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Parse a version string: code 1 for a well-formed version we do not support, code 6 for
    /// something that is not a version at all.
    pub fn parse(s: &str) -> Result<Self, CniError> {
        if let Some(v) = SUPPORTED_VERSIONS.iter().find(|v| v.as_str() == s) {
            return Ok(*v);
        }
        let parts: Vec<&str> = s.split('.').collect();
        let well_formed = parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
        if well_formed {
            Err(CniError::new(
                Code::IncompatibleVersion,
                format!(
                    "cniVersion {s} is not supported by cilium-cni; supported: {}",
                    supported_list()
                ),
            ))
        } else {
            Err(CniError::new(
                Code::Decode,
                format!("cniVersion {s:?} is not a version string like \"1.1.0\""),
            ))
        }
    }

    /// Whether a config of this version may be used with `command` (CHECK from 0.4.0, STATUS
    /// and GC from 1.1.0).
    pub fn allows(self, command: Command) -> bool {
        match command {
            Command::Check => self >= CniVersion::V0_4_0,
            Command::Status | Command::Gc => self >= CniVersion::V1_1_0,
            Command::Add | Command::Del | Command::Version => true,
        }
    }

    /// `ips[].version` is part of results up to 0.4.0.
    pub fn has_ip_version(self) -> bool {
        self < CniVersion::V1_0_0
    }

    /// Interface `mtu`/`socketPath`/`pciID` and route `mtu`/`advmss`/`priority`/`table`/`scope`
    /// exist from 1.1.0.
    pub fn has_1_1_fields(self) -> bool {
        self >= CniVersion::V1_1_0
    }
}

fn supported_list() -> String {
    SUPPORTED_VERSIONS
        .iter()
        .map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One entry of the GC valid-attachments list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    /// The attachment's container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The attachment's interface name.
    pub ifname: String,
}

/// The GC list key of the 1.1.0 spec text.
pub const GC_KEY_SPEC_1_1: &str = "cni.dev/attachments";
/// The GC list key of the corrected spec (libcni sends both).
pub const GC_KEY_VALID: &str = "cni.dev/valid-attachments";

/// Smallest MTU an IPv4 interface may have.
const MIN_MTU: u64 = 68;

/// The parsed plugin configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion`: results and errors are written in this version.
    pub cni_version: CniVersion,
    /// `name` of the network.
    pub name: String,
    /// `socketPath` of the agent, when configured.
    pub socket_path: Option<PathBuf>,
    /// `mtu` for the pod interface, when configured.
    pub mtu: Option<u32>,
    /// `prevResult` from an earlier plugin in the chain (or from ADD, for CHECK/DEL).
    pub prev_result: Option<CniResult>,
    /// The whole object, unknown keys included.
    pub raw: Map<String, Value>,
}

/// Best effort: the supported `cniVersion` of a config, for writing an error in it.
pub fn peek_version(stdin: &[u8]) -> CniVersion {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .and_then(|s| CniVersion::parse(s).ok())
        })
        .unwrap_or(CniVersion::LATEST)
}

fn decode_object(stdin: &[u8]) -> Result<Map<String, Value>, CniError> {
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            Code::Decode,
            format!("network configuration on stdin is not valid JSON: {e}"),
        )
    })?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(CniError::config(format!(
            "network configuration must be a JSON object, got {}",
            type_name(&other)
        ))),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_version_field(map: &Map<String, Value>) -> Result<CniVersion, CniError> {
    match map.get("cniVersion") {
        None | Some(Value::Null) => Err(CniError::config("cniVersion is required")),
        Some(Value::String(s)) if s.is_empty() => Err(CniError::config("cniVersion is required")),
        Some(Value::String(s)) => CniVersion::parse(s),
        Some(other) => Err(CniError::config(format!(
            "cniVersion must be a string like \"1.1.0\", got {}",
            type_name(other)
        ))),
    }
}

/// The `cniVersion` a VERSION request carries: its own string when present, else the newest.
/// VERSION must answer even for versions we do not support (that is how a runtime finds out).
pub fn version_request(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| CniVersion::LATEST.as_str().to_string())
}

impl NetConf {
    /// Parse and validate the config from stdin.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let map = decode_object(stdin)?;
        let cni_version = parse_version_field(&map)?;
        let name = match map.get("name") {
            None | Some(Value::Null) => return Err(CniError::config("name is required")),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(CniError::config(format!(
                    "name must be a string, got {}",
                    type_name(other)
                )));
            }
        };
        validate_name(&name)?;
        let socket_path = match map.get("socketPath") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(PathBuf::from(s)),
            Some(other) => {
                return Err(CniError::config(format!(
                    "socketPath must be a string (path of the cilium-agent socket), got {}",
                    type_name(other)
                )));
            }
        };
        let mtu = match map.get("mtu") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) if (MIN_MTU..=u64::from(u16::MAX)).contains(&n) => u32::try_from(n).ok(),
                _ => {
                    return Err(CniError::config(format!(
                        "mtu must be a number between {MIN_MTU} and 65535, got {v}"
                    )));
                }
            },
        };
        let prev_result = match map.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(Value::Object(o)) if o.is_empty() => None,
            Some(v) => Some(CniResult::deserialize(v).map_err(|e| {
                CniError::config(format!("prevResult is not a valid CNI result: {e}"))
            })?),
        };
        Ok(NetConf {
            cni_version,
            name,
            socket_path,
            mtu,
            prev_result,
            raw: map,
        })
    }

    /// The GC valid-attachment list, from either spelling of the key (union of both).
    /// `None` when neither key is present.
    pub fn gc_attachments(&self) -> Result<Option<Vec<Attachment>>, CniError> {
        let mut found = None::<Vec<Attachment>>;
        for key in [GC_KEY_VALID, GC_KEY_SPEC_1_1] {
            let Some(v) = self.raw.get(key) else { continue };
            let list: Vec<Attachment> = Vec::<Attachment>::deserialize(v).map_err(|e| {
                CniError::config(format!(
                    "{key} must be a list of {{\"containerID\", \"ifname\"}} objects: {e}"
                ))
            })?;
            let all = found.get_or_insert_with(Vec::new);
            for a in list {
                if !all.contains(&a) {
                    all.push(a);
                }
            }
        }
        Ok(found)
    }
}

/// The spec's network name rule: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
fn validate_name(name: &str) -> Result<(), CniError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(CniError::config(format!(
            "name {name:?} is invalid: use letters, digits, '_', '.', '-', starting with a \
             letter or digit"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConf, CniError> {
        NetConf::parse(s.as_bytes())
    }

    #[test]
    fn minimal_config_with_passthrough() {
        let c = parse(r#"{"cniVersion":"1.1.0","name":"cilium","type":"cilium-cni","x":{"y":1}}"#)
            .unwrap();
        assert_eq!(c.cni_version, CniVersion::V1_1_0);
        assert_eq!(c.name, "cilium");
        assert_eq!(c.socket_path, None);
        assert_eq!(c.mtu, None);
        assert_eq!(c.raw["x"]["y"], 1);
    }

    #[test]
    fn plugin_keys() {
        let c = parse(r#"{"cniVersion":"0.4.0","name":"n","socketPath":"/tmp/a.sock","mtu":1450}"#)
            .unwrap();
        assert_eq!(c.socket_path, Some(PathBuf::from("/tmp/a.sock")));
        assert_eq!(c.mtu, Some(1450));
    }

    #[test]
    fn versions_parse_and_gate_commands() {
        assert_eq!(CniVersion::parse("0.3.1").unwrap(), CniVersion::V0_3_1);
        assert_eq!(
            CniVersion::parse("9.9.9").unwrap_err().code,
            Code::IncompatibleVersion
        );
        assert_eq!(
            CniVersion::parse("0.2.0").unwrap_err().code,
            Code::IncompatibleVersion
        );
        assert_eq!(CniVersion::parse("banana").unwrap_err().code, Code::Decode);
        assert!(!CniVersion::V0_3_1.allows(Command::Check));
        assert!(CniVersion::V0_4_0.allows(Command::Check));
        assert!(!CniVersion::V1_0_0.allows(Command::Gc));
        assert!(!CniVersion::V1_0_0.allows(Command::Status));
        assert!(CniVersion::V1_1_0.allows(Command::Status));
        assert!(CniVersion::V0_3_1.allows(Command::Del));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                "{\"name\":\"n\"}",
                Code::InvalidConfig,
                "cniVersion is required",
            ),
            (
                "{\"cniVersion\":\"1.1.0\"}",
                Code::InvalidConfig,
                "name is required",
            ),
            (
                "{\"cniVersion\":1,\"name\":\"n\"}",
                Code::InvalidConfig,
                "cniVersion must",
            ),
            (
                "{\"cniVersion\":\"1.1.0\",\"name\":\"a/b\"}",
                Code::InvalidConfig,
                "name \"a/b\"",
            ),
            (
                "{\"cniVersion\":\"1.1.0\",\"name\":\"n\",\"mtu\":\"big\"}",
                Code::InvalidConfig,
                "mtu must be a number",
            ),
            (
                "{\"cniVersion\":\"1.1.0\",\"name\":\"n\",\"mtu\":10}",
                Code::InvalidConfig,
                "mtu must be a number",
            ),
            (
                "{\"cniVersion\":\"1.1.0\",\"name\":\"n\",\"socketPath\":3}",
                Code::InvalidConfig,
                "socketPath must",
            ),
            (
                "{\"cniVersion\":\"1.1.0\",\"name\":\"n\",\"prevResult\":{\"ips\":3}}",
                Code::InvalidConfig,
                "prevResult is not",
            ),
            ("{\"cniVersion\":", Code::Decode, "not valid JSON"),
            ("[1]", Code::InvalidConfig, "must be a JSON object"),
            (
                "{\"cniVersion\":\"9.9.9\",\"name\":\"n\"}",
                Code::IncompatibleVersion,
                "9.9.9",
            ),
        ];
        for (input, code, needle) in cases {
            let e = parse(input).unwrap_err();
            assert_eq!(e.code, code, "{input}: {e}");
            assert!(e.message.contains(needle), "{input}: {}", e.message);
        }
    }

    #[test]
    fn gc_attachments_from_either_key() {
        let c = parse(
            r#"{"cniVersion":"1.1.0","name":"n",
                "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],
                "cni.dev/attachments":[{"containerID":"a","ifname":"eth0"},
                                       {"containerID":"b","ifname":"eth0"}]}"#,
        )
        .unwrap();
        let list = c.gc_attachments().unwrap().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].container_id, "b");
        let c = parse(r#"{"cniVersion":"1.1.0","name":"n"}"#).unwrap();
        assert_eq!(c.gc_attachments().unwrap(), None);
        let c = parse(r#"{"cniVersion":"1.1.0","name":"n","cni.dev/attachments":[1]}"#).unwrap();
        assert_eq!(c.gc_attachments().unwrap_err().code, Code::InvalidConfig);
    }

    #[test]
    fn peek_and_version_request() {
        assert_eq!(
            peek_version(b"{\"cniVersion\":\"0.4.0\"}"),
            CniVersion::V0_4_0
        );
        assert_eq!(peek_version(b"garbage"), CniVersion::LATEST);
        assert_eq!(version_request(b"{\"cniVersion\":\"0.9.0\"}"), "0.9.0");
        assert_eq!(version_request(b""), "1.1.0");
    }
}
