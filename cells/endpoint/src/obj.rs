//! The `endpoints` table: one object per CNI attachment, its naming and validation rules,
//! and its API form.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use cilium_api::models::{Endpoint, EndpointChangeRequest, PolicyEnforcement};
use serde::{Deserialize, Serialize};
use statedb::reconciler::{Reconcilable, Status};
use statedb::{Db, Index, Table, TableDef, key_from_str, key_from_u64};

use crate::error::EndpointError;

/// Name of the statedb table.
pub const TABLE_NAME: &str = "endpoints";
/// Primary index (by key `cni:<cid>:<ifname>`).
pub const INDEX_KEY: &str = "key";
/// Unique index by endpoint id.
pub const INDEX_ID: &str = "id";
/// Non-unique index by `namespace/name` of the pod.
pub const INDEX_POD: &str = "pod";
/// Longest Linux interface name.
pub const MAX_IFNAME_LEN: usize = 15;
/// Default MTU when the request has none.
pub const DEFAULT_MTU: u32 = 1500;

/// Lifecycle state of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointState {
    /// Being plumbed; not usable yet.
    Creating,
    /// Veth, map entry, programs and ipcache row in place.
    Ready,
    /// Being torn down.
    Disconnecting,
}

impl EndpointState {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Ready => "ready",
            Self::Disconnecting => "disconnecting",
        }
    }
}

/// One endpoint (a pod's interface) as the agent holds and persists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointObj {
    /// Endpoint id, allocated at creation, stable across restarts.
    pub id: u16,
    /// `cni:<container-id>:<ifname>`.
    pub key: String,
    /// CNI container id.
    pub container_id: String,
    /// Pod network namespace path.
    pub netns: String,
    /// Interface name inside the pod.
    pub ifname: String,
    /// Host-side veth name (`lxc` + hash of the key).
    pub host_ifname: String,
    /// Host-side ifindex (0 until created).
    pub host_ifindex: u32,
    /// Pod-side MAC (`aa:bb:cc:dd:ee:ff`).
    pub mac: String,
    /// Host-side MAC.
    pub host_mac: String,
    /// Pod address (0.0.0.0 until allocated).
    pub ipv4: Ipv4Addr,
    /// Gateway.
    pub gateway: Ipv4Addr,
    /// Prefix length of the pod range.
    pub prefix_len: u8,
    /// MTU of the veth.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// Pod namespace (K8S_POD_NAMESPACE).
    #[serde(default)]
    pub pod_namespace: Option<String>,
    /// Pod name (K8S_POD_NAME).
    #[serde(default)]
    pub pod_name: Option<String>,
    /// K8S_POD_INFRA_CONTAINER_ID.
    #[serde(default)]
    pub infra_container_id: Option<String>,
    /// Security identity (0 until the identity cell assigns one).
    #[serde(default)]
    pub identity: u32,
    /// Labels of the Pod object.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Named container ports of the Pod object (name -> `port/PROTO`).
    #[serde(default)]
    pub named_ports: BTreeMap<String, String>,
    /// Service account of the Pod object.
    #[serde(default)]
    pub service_account: String,
    /// Lifecycle state.
    pub state: EndpointState,
    /// Status of the kernel objects (veth, map entry, programs).
    #[serde(default)]
    pub status: Status,
}

fn default_mtu() -> u32 {
    DEFAULT_MTU
}

impl Reconcilable for EndpointObj {
    fn status(&self) -> &Status {
        &self.status
    }
    fn set_status(&mut self, status: Status) {
        self.status = status;
    }
}

impl EndpointObj {
    /// `namespace/name` when both are known.
    pub fn pod(&self) -> Option<String> {
        match (&self.pod_namespace, &self.pod_name) {
            (Some(ns), Some(n)) if !ns.is_empty() && !n.is_empty() => Some(format!("{ns}/{n}")),
            _ => None,
        }
    }

    /// How errors and logs name this endpoint: `endpoint 412 (cni:abc:eth0)` without the
    /// leading word.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.id, self.key)
    }

    /// The API form.
    pub fn to_api(&self) -> Endpoint {
        Endpoint {
            id: self.id,
            key: self.key.clone(),
            container_id: self.container_id.clone(),
            netns: self.netns.clone(),
            ifname: self.ifname.clone(),
            host_ifname: self.host_ifname.clone(),
            host_ifindex: self.host_ifindex,
            mac: self.mac.clone(),
            host_mac: self.host_mac.clone(),
            ipv4: self.ipv4,
            gateway: self.gateway,
            prefix_len: self.prefix_len,
            pod: self.pod(),
            identity: self.identity,
            labels: self.labels.clone(),
            named_ports: self.named_ports.clone(),
            state: self.state.as_str().to_string(),
            policy_enforcement: PolicyEnforcement::default(),
        }
    }
}

/// Registers the `endpoints` table (primary: key; unique: id; non-unique: pod).
pub fn new_table(db: &Db) -> Result<Table<EndpointObj>, statedb::Error> {
    db.register_table(
        TableDef::new(
            TABLE_NAME,
            Index::primary(INDEX_KEY, |e: &EndpointObj| key_from_str(&e.key)),
        )
        .with_index(Index::unique(INDEX_ID, |e: &EndpointObj| {
            std::iter::once(key_from_u64(u64::from(e.id))).collect()
        }))
        .with_index(Index::non_unique(INDEX_POD, |e: &EndpointObj| {
            e.pod().map(|p| key_from_str(&p)).into_iter().collect()
        })),
    )
}

/// Host-side veth name: `lxc` + 11 hex digits of an FNV-1a hash of the key (14 chars), so the
/// same attachment always gets the same name and a retried ADD finds its leftovers.
pub fn host_ifname(key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("lxc{:011x}", h >> 20)
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for o in &mut out {
        *o = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn valid_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(format!(
            "{name:?} is longer than {MAX_IFNAME_LEN} characters"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || *c == '/' || *c == ':' || !c.is_ascii_graphic())
    {
        return Err(format!("{name:?} contains the invalid character {c:?}"));
    }
    Ok(())
}

/// Checks a create request against its key; returns the MTU to use.
pub fn validate(key: &str, req: &EndpointChangeRequest) -> Result<u32, EndpointError> {
    let bad = |reason: String| EndpointError::BadRequest {
        key: key.to_string(),
        reason,
    };
    let invalid = |reason: String| EndpointError::Invalid {
        key: key.to_string(),
        reason,
    };
    let Some(rest) = key.strip_prefix("cni:") else {
        return Err(bad(
            "the key must look like cni:<container-id>:<ifname>".into()
        ));
    };
    if req.container_id.is_empty() {
        return Err(bad("container_id must not be empty".into()));
    }
    if req.ifname.is_empty() {
        return Err(bad("ifname must not be empty".into()));
    }
    if rest != format!("{}:{}", req.container_id, req.ifname) {
        return Err(bad(format!(
            "the key does not match container_id {:?} and ifname {:?}; expected cni:{}:{}",
            req.container_id, req.ifname, req.container_id, req.ifname
        )));
    }
    valid_ifname(&req.ifname).map_err(|r| invalid(format!("ifname {r}")))?;
    if req.netns.is_empty() {
        return Err(bad("netns must not be empty".into()));
    }
    let netns = Path::new(&req.netns);
    if !netns.is_absolute() {
        return Err(invalid(format!(
            "netns {:?} must be an absolute path",
            req.netns
        )));
    }
    if !netns.exists() {
        return Err(invalid(format!(
            "netns {} does not exist; was the sandbox deleted?",
            req.netns
        )));
    }
    let mtu = req.mtu.unwrap_or(DEFAULT_MTU);
    if !(68..=65535).contains(&mtu) {
        return Err(invalid(format!("mtu {mtu} is outside 68..=65535")));
    }
    Ok(mtu)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(netns: &str) -> EndpointChangeRequest {
        EndpointChangeRequest {
            container_id: "abc".into(),
            netns: netns.into(),
            ifname: "eth0".into(),
            ..Default::default()
        }
    }

    fn sample() -> EndpointObj {
        EndpointObj {
            id: 412,
            key: "cni:abc:eth0".into(),
            container_id: "abc".into(),
            netns: "/var/run/netns/x".into(),
            ifname: "eth0".into(),
            host_ifname: host_ifname("cni:abc:eth0"),
            host_ifindex: 17,
            mac: "02:00:00:00:00:01".into(),
            host_mac: "02:00:00:00:00:02".into(),
            ipv4: Ipv4Addr::new(10, 200, 0, 2),
            gateway: Ipv4Addr::new(10, 200, 0, 1),
            prefix_len: 16,
            mtu: 1500,
            pod_namespace: Some("default".into()),
            pod_name: Some("web".into()),
            infra_container_id: None,
            identity: 0,
            labels: [("app".to_string(), "web".to_string())].into(),
            named_ports: [("http".to_string(), "80/TCP".to_string())].into(),
            service_account: "default".into(),
            state: EndpointState::Ready,
            status: Status::done(),
        }
    }

    #[test]
    fn host_ifname_is_short_stable_and_distinct() {
        let a = host_ifname("cni:abc:eth0");
        assert_eq!(a, host_ifname("cni:abc:eth0"));
        assert!(a.starts_with("lxc"));
        assert!(a.len() <= MAX_IFNAME_LEN, "{a}");
        assert_ne!(a, host_ifname("cni:abc:eth1"));
        assert_ne!(a, host_ifname("cni:abd:eth0"));
        assert!(valid_ifname(&a).is_ok());
    }

    #[test]
    fn mac_round_trip() {
        let m = [0x02, 0xab, 0, 1, 0xff, 0x10];
        assert_eq!(fmt_mac(&m), "02:ab:00:01:ff:10");
        assert_eq!(parse_mac("02:ab:00:01:ff:10"), Some(m));
        assert_eq!(parse_mac("02:ab:00:01:ff"), None);
        assert_eq!(parse_mac("02:ab:00:01:ff:10:11"), None);
        assert_eq!(parse_mac("zz:ab:00:01:ff:10"), None);
    }

    #[test]
    fn validation_names_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let ns = dir.path().to_str().unwrap().to_string();
        assert_eq!(validate("cni:abc:eth0", &req(&ns)).unwrap(), DEFAULT_MTU);

        let e = validate("abc:eth0", &req(&ns)).unwrap_err();
        assert!(matches!(e, EndpointError::BadRequest { .. }), "{e}");
        let e = validate("cni:other:eth0", &req(&ns)).unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");

        let e = validate("cni:abc:eth0", &req("/nonexistent/netns/x")).unwrap_err();
        assert!(matches!(e, EndpointError::Invalid { .. }));
        assert!(e.to_string().contains("/nonexistent/netns/x"), "{e}");
        assert_eq!(e.code(), cilium_api::ErrorCode::Invalid);

        let mut long = req(&ns);
        long.ifname = "a-very-long-ifname0".into();
        let e = validate("cni:abc:a-very-long-ifname0", &long).unwrap_err();
        assert!(e.to_string().contains("longer than 15"), "{e}");

        let mut bad = req(&ns);
        bad.ifname = "et h0".into();
        assert!(validate("cni:abc:et h0", &bad).is_err());

        let mut mtu = req(&ns);
        mtu.mtu = Some(10);
        assert!(
            validate("cni:abc:eth0", &mtu)
                .unwrap_err()
                .to_string()
                .contains("mtu 10")
        );
        mtu.mtu = Some(9000);
        assert_eq!(validate("cni:abc:eth0", &mtu).unwrap(), 9000);

        let e = validate("cni:abc:eth0", &req("relative/path")).unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
    }

    #[test]
    fn state_round_trip_and_api_form() {
        let dir = tempfile::tempdir().unwrap();
        let f = cilium_node::StateFile::new(dir.path().join("endpoints.json"));
        let objs = vec![sample()];
        f.store(&objs).unwrap();
        let back: Vec<EndpointObj> = f.load().unwrap().unwrap();
        assert_eq!(back[0].status.kind, objs[0].status.kind);
        let mut a = back[0].clone();
        a.status = objs[0].status.clone();
        assert_eq!(a, objs[0]);

        let api = back[0].to_api();
        assert_eq!(api.id, 412);
        assert_eq!(api.state, "ready");
        assert_eq!(api.pod.as_deref(), Some("default/web"));
        assert_eq!(api.named_ports["http"], "80/TCP");
        // Older state files without the optional fields still load.
        let v = serde_json::json!([{
            "id": 1, "key": "cni:a:eth0", "container_id": "a", "netns": "/n", "ifname": "eth0",
            "host_ifname": "lxc1", "host_ifindex": 3, "mac": "", "host_mac": "",
            "ipv4": "10.0.0.2", "gateway": "10.0.0.1", "prefix_len": 24, "state": "creating"
        }]);
        let old: Vec<EndpointObj> = serde_json::from_value(v).unwrap();
        assert_eq!(old[0].mtu, DEFAULT_MTU);
        assert_eq!(old[0].state, EndpointState::Creating);
        assert!(old[0].pod().is_none());
    }

    #[test]
    fn table_indexes_by_id_and_pod() {
        let db = Db::new();
        let t = new_table(&db).unwrap();
        let mut w = db.write_txn(&[&t]).unwrap();
        t.insert(&mut w, sample()).unwrap();
        let r = w.commit();
        let by_id = t
            .get(&r, &statedb::Query::new(INDEX_ID, key_from_u64(412)))
            .unwrap();
        assert_eq!(by_id.key, "cni:abc:eth0");
        assert_eq!(
            t.list(
                &r,
                &statedb::Query::new(INDEX_POD, key_from_str("default/web"))
            )
            .count(),
            1
        );
    }
}
