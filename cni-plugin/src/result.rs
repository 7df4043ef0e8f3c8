//! The CNI success result (interfaces, ips, routes, dns), its per-version wire form, the
//! result built from an agent endpoint, and chaining onto a `prevResult`.

use std::net::IpAddr;

use cilium_api::models::Endpoint;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::CniVersion;

/// A success result. Unknown keys are carried through unchanged (`extra`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    /// `cniVersion` of the result.
    #[serde(
        rename = "cniVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub cni_version: String,
    /// Interfaces created (or passed through from a previous plugin).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    /// Routes installed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS settings.
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
    /// Keys this plugin does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `interfaces`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Netns path for an interface inside the container; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// vhost-user or similar socket (1.1.0).
    #[serde(
        rename = "socketPath",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    /// PCI id of a passed-through device (1.1.0).
    #[serde(rename = "pciID", default, skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
    /// Keys this plugin does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `ips`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// `"4"` or `"6"`; only in results up to 0.4.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Address in CIDR form.
    pub address: String,
    /// Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    /// Keys this plugin does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl IpConfig {
    /// The address without its prefix length, when it parses.
    pub fn ip(&self) -> Option<IpAddr> {
        let addr = self
            .address
            .split_once('/')
            .map_or(&*self.address, |(a, _)| a);
        addr.parse().ok()
    }
}

/// One entry of `routes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// Destination CIDR.
    pub dst: String,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    /// Route MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Advertised MSS (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// Priority (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Routing table (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// Scope (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
    /// Keys this plugin does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `dns` object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// True when nothing is set (then `dns` is left out of the result).
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

impl CniResult {
    /// The result of one agent endpoint: the host veth, the pod interface in its netns, the
    /// pod's /32 (the address the agent puts on the interface) and the default route.
    pub fn from_endpoint(ep: &Endpoint, mtu: Option<u32>) -> Self {
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let gateway = ep.gateway.to_string();
        CniResult {
            interfaces: vec![
                Interface {
                    name: ep.host_ifname.clone(),
                    mac: non_empty(&ep.host_mac),
                    mtu,
                    ..Interface::default()
                },
                Interface {
                    name: ep.ifname.clone(),
                    mac: non_empty(&ep.mac),
                    mtu,
                    sandbox: Some(ep.netns.clone()),
                    ..Interface::default()
                },
            ],
            ips: vec![IpConfig {
                address: format!("{}/32", ep.ipv4),
                gateway: Some(gateway.clone()),
                interface: Some(1),
                ..IpConfig::default()
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".to_string(),
                gw: Some(gateway),
                ..Route::default()
            }],
            ..CniResult::default()
        }
    }

    /// Chain `self` after `prev`: keep every entry of `prev` and append ours, shifting our
    /// interface indexes past `prev`'s interfaces. `prev`'s DNS wins when it has one.
    pub fn chained_after(self, prev: CniResult) -> CniResult {
        let offset = prev.interfaces.len();
        let mut out = prev;
        out.interfaces.extend(self.interfaces);
        out.ips.extend(self.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        out.routes.extend(self.routes);
        if out.dns.is_empty() {
            out.dns = self.dns;
        }
        out
    }

    /// The result as version `v` writes it: `ips[].version` up to 0.4.0, the 1.1.0-only
    /// interface and route attributes dropped before 1.1.0.
    pub fn for_version(mut self, v: CniVersion) -> CniResult {
        self.cni_version = v.as_str().to_string();
        for ip in &mut self.ips {
            ip.version = if v.has_ip_version() {
                Some(match ip.ip() {
                    Some(IpAddr::V6(_)) => "6".to_string(),
                    _ => "4".to_string(),
                })
            } else {
                None
            };
        }
        if !v.has_1_1_fields() {
            for i in &mut self.interfaces {
                i.mtu = None;
                i.socket_path = None;
                i.pci_id = None;
            }
            for r in &mut self.routes {
                r.mtu = None;
                r.advmss = None;
                r.priority = None;
                r.table = None;
                r.scope = None;
            }
        }
        self
    }

    /// The JSON written to stdout.
    pub fn to_json(&self) -> String {
        // Only strings, numbers and maps: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::net::Ipv4Addr;

    /// The ADD example of the 1.1.0 spec.
    fn spec_1_1_example() -> Value {
        json!({
          "cniVersion": "1.1.0",
          "interfaces": [
              {"name": "cni0", "mac": "00:11:22:33:44:55"},
              {"name": "veth3243", "mac": "55:44:33:22:11:11"},
              {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"}
          ],
          "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2}],
          "routes": [{"dst": "0.0.0.0/0"}],
          "dns": {"nameservers": ["10.1.0.1"]}
        })
    }

    fn endpoint() -> Endpoint {
        Endpoint {
            id: 7,
            key: "cni:c1:eth0".into(),
            container_id: "c1".into(),
            netns: "/var/run/netns/x-a".into(),
            ifname: "eth0".into(),
            host_ifname: "lxc1a2b3c".into(),
            host_ifindex: 17,
            mac: "aa:bb:cc:dd:ee:02".into(),
            host_mac: "aa:bb:cc:dd:ee:01".into(),
            ipv4: Ipv4Addr::new(10, 244, 0, 11),
            gateway: Ipv4Addr::new(10, 244, 0, 1),
            prefix_len: 24,
            pod: None,
            identity: 1000,
            labels: Default::default(),
            named_ports: Default::default(),
            state: "ready".into(),
            policy_enforcement: Default::default(),
        }
    }

    #[test]
    fn spec_examples_round_trip() {
        let v = spec_1_1_example();
        let r: CniResult = serde_json::from_value(v.clone()).unwrap();
        let back = serde_json::to_value(r.clone().for_version(CniVersion::V1_1_0)).unwrap();
        assert_eq!(back, v);
        // The same result in 0.4.0 / 0.3.1 form gains ips[].version (the 0.4.0 spec example).
        let mut old = v.clone();
        old["cniVersion"] = json!("0.4.0");
        old["ips"][0]["version"] = json!("4");
        let r040 = serde_json::to_value(r.clone().for_version(CniVersion::V0_4_0)).unwrap();
        assert_eq!(r040, old);
        // ... and parsing the 0.4.0 form and writing 1.0.0 drops it again.
        let again: CniResult = serde_json::from_value(old).unwrap();
        let mut v100 = v;
        v100["cniVersion"] = json!("1.0.0");
        assert_eq!(
            serde_json::to_value(again.for_version(CniVersion::V1_0_0)).unwrap(),
            v100
        );
    }

    #[test]
    fn endpoint_result_per_version() {
        let r = CniResult::from_endpoint(&endpoint(), Some(1500));
        let v110 = serde_json::to_value(r.clone().for_version(CniVersion::V1_1_0)).unwrap();
        assert_eq!(
            v110,
            json!({
              "cniVersion": "1.1.0",
              "interfaces": [
                {"name": "lxc1a2b3c", "mac": "aa:bb:cc:dd:ee:01", "mtu": 1500},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "mtu": 1500,
                 "sandbox": "/var/run/netns/x-a"}
              ],
              "ips": [{"address": "10.244.0.11/32", "gateway": "10.244.0.1", "interface": 1}],
              "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.0.1"}]
            })
        );
        let v031 = serde_json::to_value(r.for_version(CniVersion::V0_3_1)).unwrap();
        assert_eq!(
            v031,
            json!({
              "cniVersion": "0.3.1",
              "interfaces": [
                {"name": "lxc1a2b3c", "mac": "aa:bb:cc:dd:ee:01"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/var/run/netns/x-a"}
              ],
              "ips": [{"version": "4", "address": "10.244.0.11/32", "gateway": "10.244.0.1",
                       "interface": 1}],
              "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.0.1"}]
            })
        );
    }

    #[test]
    fn chaining_keeps_prev_and_shifts_indexes() {
        let prev: CniResult = serde_json::from_value(spec_1_1_example()).unwrap();
        let ours = CniResult::from_endpoint(&endpoint(), None);
        let out = ours.chained_after(prev.clone());
        assert_eq!(out.interfaces.len(), 5);
        assert_eq!(out.interfaces[..3], prev.interfaces[..]);
        assert_eq!(out.ips[0], prev.ips[0]);
        assert_eq!(out.ips[1].interface, Some(4));
        assert_eq!(out.interfaces[4].name, "eth0");
        assert_eq!(out.routes.len(), 2);
        assert_eq!(out.dns, prev.dns);
    }

    #[test]
    fn unknown_keys_pass_through() {
        let v = json!({"cniVersion": "1.0.0", "foo": [1],
                       "interfaces": [{"name": "a", "bar": true}],
                       "ips": [{"address": "fd00::1/64", "baz": 1}]});
        let r: CniResult = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&r).unwrap(), v);
        let old = serde_json::to_value(r.for_version(CniVersion::V0_4_0)).unwrap();
        assert_eq!(old["ips"][0]["version"], "6");
    }
}
