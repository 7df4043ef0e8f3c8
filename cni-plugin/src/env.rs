//! The CNI environment: `CNI_COMMAND` and the variables each command needs, and `CNI_ARGS`.

use std::net::{IpAddr, Ipv4Addr};

use crate::error::CniError;

/// The CNI verbs this plugin answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Create the attachment.
    Add,
    /// Remove the attachment (idempotent).
    Del,
    /// Verify the attachment against `prevResult` (0.4.0+).
    Check,
    /// Is the plugin able to service ADD (1.1.0+)?
    Status,
    /// Remove attachments not in the valid list (1.1.0+).
    Gc,
    /// Report the supported spec versions.
    Version,
}

impl Command {
    /// Parse the value of `CNI_COMMAND`.
    pub fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::env(format!(
                    "CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"
                )));
            }
        })
    }

    /// The verb as the spec spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

/// The well-known keys of `CNI_ARGS` (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub pod_name: Option<String>,
    /// `K8S_POD_INFRA_CONTAINER_ID`.
    pub infra_container_id: Option<String>,
    /// `IP=` (with an optional `/prefix`, which is ignored: the pod range decides).
    pub ip: Option<Ipv4Addr>,
}

/// Keys a runtime may send that carry nothing this plugin uses; accepted without
/// `IgnoreUnknown` because containerd sends them unconditionally.
const KNOWN_UNUSED: &[&str] = &["K8S_POD_UID"];

impl CniArgs {
    /// Parse `K1=V1;K2=V2`. Unknown keys are an error unless `IgnoreUnknown` is `1`/`true`.
    pub fn parse(s: &str) -> Result<Self, CniError> {
        let mut args = CniArgs::default();
        let mut ignore_unknown = false;
        let mut unknown = Vec::new();
        for pair in s.split(';').filter(|p| !p.trim().is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(CniError::env(format!(
                    "CNI_ARGS: {pair:?} is not KEY=VALUE; separate pairs with ';'"
                )));
            };
            let key = key.trim();
            let value = value.trim();
            let some = || (!value.is_empty()).then(|| value.to_string());
            match key {
                "K8S_POD_NAMESPACE" => args.pod_namespace = some(),
                "K8S_POD_NAME" => args.pod_name = some(),
                "K8S_POD_INFRA_CONTAINER_ID" => args.infra_container_id = some(),
                "IP" => args.ip = parse_ip(value)?,
                "IgnoreUnknown" => ignore_unknown = parse_bool(value)?,
                k if KNOWN_UNUSED.contains(&k) => {}
                k => unknown.push(k.to_string()),
            }
        }
        if !unknown.is_empty() && !ignore_unknown {
            return Err(CniError::env(format!(
                "CNI_ARGS: unknown key(s) {}; add IgnoreUnknown=1 to ignore them",
                unknown.join(", ")
            )));
        }
        Ok(args)
    }
}

fn parse_bool(value: &str) -> Result<bool, CniError> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" => Ok(true),
        "0" | "false" | "" => Ok(false),
        _ => Err(CniError::env(format!(
            "CNI_ARGS: IgnoreUnknown={value:?} is not 1, true, 0 or false"
        ))),
    }
}

fn parse_ip(value: &str) -> Result<Option<Ipv4Addr>, CniError> {
    if value.is_empty() {
        return Ok(None);
    }
    let addr = value.split_once('/').map_or(value, |(a, _)| a);
    match addr.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Ok(Some(ip)),
        Ok(IpAddr::V6(_)) => Err(CniError::env(format!(
            "CNI_ARGS: IP={value} is IPv6; this plugin assigns IPv4 pod addresses only"
        ))),
        Err(_) => Err(CniError::env(format!(
            "CNI_ARGS: IP={value:?} is not an IPv4 address"
        ))),
    }
}

/// The CNI variables after validation for one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for STATUS/GC/VERSION).
    pub container_id: String,
    /// `CNI_NETNS` (may be empty for DEL).
    pub netns: String,
    /// `CNI_IFNAME` (empty for STATUS/GC/VERSION).
    pub ifname: String,
    /// Parsed `CNI_ARGS`.
    pub args: CniArgs,
    /// `CNI_PATH` (unused: the plugin delegates to nobody).
    pub path: String,
}

impl CniEnv {
    /// Read and validate the variables `command` needs, looking them up with `var`
    /// (`std::env::var` in the binary; a map in tests).
    pub fn from_lookup(
        command: Command,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, CniError> {
        let get = |name: &str| var(name).unwrap_or_default();
        let needs_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let needs_netns = matches!(command, Command::Add | Command::Check);
        let mut missing = Vec::new();
        for (name, needed) in [
            ("CNI_CONTAINERID", needs_attachment),
            ("CNI_NETNS", needs_netns),
            ("CNI_IFNAME", needs_attachment),
        ] {
            if needed && get(name).is_empty() {
                missing.push(name);
            }
        }
        if !missing.is_empty() {
            let verb = if missing.len() == 1 { "is" } else { "are" };
            return Err(CniError::env(format!(
                "{} {verb} required for {}",
                missing.join(", "),
                command.as_str()
            )));
        }
        let env = CniEnv {
            command,
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: CniArgs::parse(&get("CNI_ARGS"))?,
            path: get("CNI_PATH"),
        };
        if needs_attachment {
            validate_container_id(&env.container_id)?;
            validate_ifname(&env.ifname)?;
        }
        Ok(env)
    }
}

/// Same rule as libcni: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(CniError::env(format!(
            "CNI_CONTAINERID {id:?} is invalid: use letters, digits, '_', '.', '-', starting \
             with a letter or digit"
        )))
    }
}

/// Same rule as libcni: at most 15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
fn validate_ifname(name: &str) -> Result<(), CniError> {
    let bad = name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if bad {
        Err(CniError::env(format!(
            "CNI_IFNAME {name:?} is invalid: at most 15 characters, no '/', ':' or spaces"
        )))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;
    use std::collections::HashMap;

    fn env(command: Command, vars: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_lookup(command, |k| map.get(k).cloned())
    }

    #[test]
    fn commands_parse() {
        assert_eq!(Command::parse("ADD").unwrap(), Command::Add);
        assert_eq!(Command::parse("GC").unwrap(), Command::Gc);
        let e = Command::parse("add").unwrap_err();
        assert_eq!(e.code, Code::InvalidEnv);
        assert!(e.message.contains("CNI_COMMAND"));
    }

    #[test]
    fn args_parse_known_keys_and_ip() {
        let a = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a;\
             K8S_POD_INFRA_CONTAINER_ID=abc;IP=10.200.0.7/16;FOO=bar",
        )
        .unwrap();
        assert_eq!(a.pod_namespace.as_deref(), Some("x"));
        assert_eq!(a.pod_name.as_deref(), Some("a"));
        assert_eq!(a.infra_container_id.as_deref(), Some("abc"));
        assert_eq!(a.ip, Some(Ipv4Addr::new(10, 200, 0, 7)));
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
        assert_eq!(CniArgs::parse("K8S_POD_UID=u").unwrap(), CniArgs::default());
    }

    #[test]
    fn unknown_args_need_ignore_unknown() {
        let e = CniArgs::parse("FOO=bar;K8S_POD_NAME=a").unwrap_err();
        assert_eq!(e.code, Code::InvalidEnv);
        assert!(e.message.contains("FOO"), "{}", e.message);
        assert!(CniArgs::parse("FOO=bar;IgnoreUnknown=true").is_ok());
        assert!(CniArgs::parse("FOO=bar;IgnoreUnknown=0").is_err());
        assert!(CniArgs::parse("IgnoreUnknown=maybe").is_err());
    }

    #[test]
    fn bad_args_are_code_4() {
        for bad in ["IP=10.0.0", "IP=fd00::1", "novalue"] {
            let e = CniArgs::parse(bad).unwrap_err();
            assert_eq!(e.code, Code::InvalidEnv, "{bad}");
            assert!(e.message.starts_with("CNI_ARGS"), "{}", e.message);
        }
    }

    #[test]
    fn required_variables_per_command() {
        let e = env(
            Command::Add,
            &[("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")],
        );
        assert_eq!(e.unwrap_err().message, "CNI_NETNS is required for ADD");
        let e = env(Command::Check, &[("CNI_NETNS", "/n")]).unwrap_err();
        assert_eq!(
            e.message,
            "CNI_CONTAINERID, CNI_IFNAME are required for CHECK"
        );
        // DEL needs no netns.
        let d = env(
            Command::Del,
            &[("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")],
        )
        .unwrap();
        assert_eq!(d.netns, "");
        // STATUS, GC and VERSION need nothing.
        for c in [Command::Status, Command::Gc, Command::Version] {
            assert!(env(c, &[]).is_ok());
        }
    }

    #[test]
    fn container_id_and_ifname_are_validated() {
        let base = [("CNI_NETNS", "/n")];
        let e = env(
            Command::Add,
            &[base[0], ("CNI_CONTAINERID", "-bad"), ("CNI_IFNAME", "eth0")],
        )
        .unwrap_err();
        assert!(e.message.starts_with("CNI_CONTAINERID"), "{}", e.message);
        let e = env(
            Command::Add,
            &[
                base[0],
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "a-very-long-interface"),
            ],
        )
        .unwrap_err();
        assert!(e.message.starts_with("CNI_IFNAME"), "{}", e.message);
    }
}
