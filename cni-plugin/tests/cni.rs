//! Black-box tests of the built `cilium-cni` binary: env + stdin in, stdout + exit code out,
//! against the in-test agent stand-in. Items refer to cni_spec.md §12.

// Helpers outside #[test] functions (process spawning, the stand-in's setup) should panic on
// failure like the tests themselves.
#![expect(
    clippy::unwrap_used,
    reason = "test harness: a failed setup must fail the test"
)]

mod standin;

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use cilium_api::ApiError;
use serde_json::{Value, json};
use standin::{GATEWAY, StandIn};

const ALL_VERSIONS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// One finished plugin run.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Assert failure with CNI error `code`; returns the error's `msg`.
    fn error(&self, code: u64) -> String {
        assert_ne!(self.code, 0, "expected failure: {self:?}");
        let v = self.json();
        assert_eq!(v["code"], code, "{self:?}");
        for k in ["cniVersion", "msg", "details"] {
            assert!(v[k].is_string(), "{k} missing: {self:?}");
        }
        v["msg"].as_str().unwrap().to_string()
    }

    fn ok_silent(&self) {
        assert_eq!(self.code, 0, "{self:?}");
        assert_eq!(self.stdout, "", "{self:?}");
    }
}

/// Run the plugin with exactly `vars` in its environment and `stdin`.
fn cni(vars: &[(&str, &str)], stdin: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cilium-cni"))
        .env_clear()
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn conf(version: &str, socket: &std::path::Path) -> Value {
    json!({"cniVersion": version, "name": "cilium", "type": "cilium-cni",
           "socketPath": socket.to_str().unwrap()})
}

/// Attachment env for `command`.
fn attach<'a>(command: &'a str, id: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a;K8S_POD_INFRA_CONTAINER_ID=c1",
        ),
    ]
}

fn add(agent: &StandIn, version: &str, id: &str) -> Value {
    let r = cni(
        &attach("ADD", id, "/var/run/netns/x-a"),
        &conf(version, agent.socket()).to_string(),
    );
    assert_eq!(r.code, 0, "{r:?}");
    r.json()
}

fn with_prev(mut c: Value, prev: &Value) -> String {
    c["prevResult"] = prev.clone();
    c.to_string()
}

// §12.1
#[test]
fn version_reports_supported_versions() {
    for v in ["1.1.0", "0.3.1", "0.2.0"] {
        let r = cni(
            &[("CNI_COMMAND", "VERSION")],
            &json!({"cniVersion": v}).to_string(),
        );
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(
            r.json(),
            json!({"cniVersion": v, "supportedVersions": ALL_VERSIONS})
        );
    }
}

// §12.2
#[test]
fn no_command_describes_the_plugin() {
    let r = cni(&[], "");
    assert_eq!(r.code, 0);
    assert_eq!(r.stdout, "");
    assert!(r.stderr.contains("CNI_COMMAND"), "{r:?}");
    let r = cni(&[("CNI_COMMAND", "FROB")], "{}");
    assert!(r.error(4).contains("CNI_COMMAND"));
}

// §12.3
#[test]
fn add_without_required_variables_is_code_4() {
    let agent = StandIn::start();
    let c = conf("1.1.0", agent.socket()).to_string();
    for missing in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
        let vars: Vec<_> = attach("ADD", "c1", "/n")
            .into_iter()
            .filter(|(k, _)| *k != missing)
            .collect();
        let msg = cni(&vars, &c).error(4);
        assert_eq!(msg, format!("{missing} is required for ADD"));
    }
    let vars: Vec<_> = attach("CHECK", "c1", "/n")
        .into_iter()
        .filter(|(k, _)| *k != "CNI_NETNS")
        .collect();
    assert_eq!(cni(&vars, &c).error(4), "CNI_NETNS is required for CHECK");
    assert!(agent.state().puts.is_empty());
}

// §12.4
#[test]
fn bad_input_codes() {
    let agent = StandIn::start();
    let vars = attach("ADD", "c1", "/n");
    assert!(cni(&vars, "{not json").error(6).contains("not valid JSON"));
    let msg = cni(&vars, r#"{"cniVersion":"9.9.9","name":"cilium"}"#).error(1);
    assert!(msg.contains("9.9.9") && msg.contains("1.1.0"), "{msg}");
    assert!(
        cni(&vars, r#"{"name":"cilium"}"#)
            .error(7)
            .contains("cniVersion")
    );
    assert!(
        cni(&vars, r#"{"cniVersion":"1.1.0"}"#)
            .error(7)
            .contains("name")
    );
    let mut c = conf("1.1.0", agent.socket());
    c["mtu"] = json!("jumbo");
    assert!(cni(&vars, &c.to_string()).error(7).contains("mtu"));
    assert!(agent.state().puts.is_empty());
}

// §12.5: the result shape for every version, and what the agent was asked.
#[test]
fn add_result_shape_per_version() {
    let agent = StandIn::start();
    for (n, v) in ALL_VERSIONS.iter().enumerate() {
        let mut c = conf(v, agent.socket());
        c["mtu"] = json!(1400);
        c["unknownKey"] = json!({"passed": "through"});
        let id = format!("ctr{n}");
        let r = cni(&attach("ADD", &id, "/var/run/netns/x-a"), &c.to_string());
        assert_eq!(r.code, 0, "{r:?}");
        let res = r.json();
        assert_eq!(res["cniVersion"], *v);
        let ips = res["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 1);
        let ip = &ips[0];
        let iface = &res["interfaces"][ip["interface"].as_u64().unwrap() as usize];
        assert_eq!(iface["name"], "eth0");
        assert_eq!(iface["sandbox"], "/var/run/netns/x-a");
        assert_eq!(ip["gateway"], GATEWAY.to_string());
        assert!(ip["address"].as_str().unwrap().ends_with("/32"));
        // ips[].version exists up to 0.4.0 only; interface mtu from 1.1.0 only.
        assert_eq!(ip.get("version").is_some(), v.starts_with("0."), "{res}");
        assert_eq!(iface.get("mtu").is_some(), *v == "1.1.0", "{res}");
        assert!(
            res["interfaces"][0]["name"]
                .as_str()
                .unwrap()
                .starts_with("lxc")
        );
        assert!(res["interfaces"][0].get("sandbox").is_none());
        assert_eq!(
            res["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": GATEWAY.to_string()}])
        );
    }
    let s = agent.state();
    assert_eq!(s.puts.len(), 4);
    let put = &s.puts[0];
    assert_eq!(put.container_id, "ctr0");
    assert_eq!(put.netns, "/var/run/netns/x-a");
    assert_eq!(put.ifname, "eth0");
    assert_eq!(put.pod_namespace.as_deref(), Some("x"));
    assert_eq!(put.pod_name.as_deref(), Some("a"));
    assert_eq!(put.infra_container_id.as_deref(), Some("c1"));
    assert_eq!(put.requested_ipv4, None);
    assert_eq!(put.mtu, Some(1400));
    assert!(s.endpoints.contains_key("cni:ctr0:eth0"));
}

// §12.6
#[test]
fn add_twice_without_del_is_an_error() {
    let agent = StandIn::start();
    add(&agent, "1.1.0", "c1");
    let r = cni(
        &attach("ADD", "c1", "/var/run/netns/x-a"),
        &conf("1.1.0", agent.socket()).to_string(),
    );
    let msg = r.error(100);
    assert!(msg.contains("cni:c1:eth0") && msg.contains("DEL"), "{msg}");
    assert_eq!(agent.state().puts.len(), 1);
}

// §12.7
#[test]
fn add_chained_keeps_prev_result() {
    let agent = StandIn::start();
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "dummy0", "mac": "02:aa:00:00:00:01"}],
        "ips": [{"address": "192.168.9.9/24", "interface": 0}],
        "routes": [{"dst": "192.168.0.0/16"}],
        "dns": {"nameservers": ["10.96.0.10"]}
    });
    let r = cni(
        &attach("ADD", "c1", "/var/run/netns/x-a"),
        &with_prev(conf("1.0.0", agent.socket()), &prev),
    );
    assert_eq!(r.code, 0, "{r:?}");
    let res = r.json();
    assert_eq!(res["interfaces"][0], prev["interfaces"][0]);
    assert_eq!(res["ips"][0], prev["ips"][0]);
    assert_eq!(res["routes"][0], prev["routes"][0]);
    assert_eq!(res["dns"], prev["dns"]);
    assert_eq!(res["interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(res["ips"][1]["interface"], 2);
    assert_eq!(res["interfaces"][2]["name"], "eth0");
}

// §12.8
#[test]
fn check_passes_after_add_and_names_mismatches() {
    let agent = StandIn::start();
    for v in ["0.4.0", "1.1.0"] {
        let id = format!("chk{}", v.replace('.', ""));
        let prev = add(&agent, v, &id);
        let vars = attach("CHECK", &id, "/var/run/netns/x-a");
        cni(&vars, &with_prev(conf(v, agent.socket()), &prev)).ok_silent();

        let mut bad = prev.clone();
        bad["ips"][0]["address"] = json!("10.200.99.99/32");
        let msg = cni(&vars, &with_prev(conf(v, agent.socket()), &bad)).error(101);
        assert!(
            msg.contains("IP mismatch") && msg.contains("10.200.99.99"),
            "{msg}"
        );

        let mut bad = prev.clone();
        bad["interfaces"][1]["name"] = json!("eth9");
        let msg = cni(&vars, &with_prev(conf(v, agent.socket()), &bad)).error(101);
        assert!(msg.contains("interface mismatch"), "{msg}");

        let mut bad = prev.clone();
        bad["interfaces"][1]["mac"] = json!("02:ff:ff:ff:ff:ff");
        let msg = cni(&vars, &with_prev(conf(v, agent.socket()), &bad)).error(101);
        assert!(msg.contains("MAC mismatch"), "{msg}");

        // CHECK asks the agent to verify the live state; a difference it finds (409) is
        // code 101 with the agent's message verbatim.
        let key = format!("cni:{id}:eth0");
        assert!(
            agent.state().verifies.contains(&key),
            "CHECK did not verify"
        );
        let why = format!(
            "endpoint 1 ({key}): address 10.200.0.2/32 is missing on eth0 in /var/run/netns/x-a"
        );
        agent.state().verify_error = Some(ApiError::conflict(why.clone()));
        let msg = cni(&vars, &with_prev(conf(v, agent.socket()), &prev)).error(101);
        assert_eq!(msg, why);
        agent.state().verify_error = None;
        cni(&vars, &with_prev(conf(v, agent.socket()), &prev)).ok_silent();

        // CHECK needs prevResult.
        let msg = cni(&vars, &conf(v, agent.socket()).to_string()).error(7);
        assert!(msg.contains("prevResult"), "{msg}");

        // The endpoint disappears from the agent: CHECK fails.
        agent.state().endpoints.remove(&format!("cni:{id}:eth0"));
        let msg = cni(&vars, &with_prev(conf(v, agent.socket()), &prev)).error(101);
        assert!(msg.contains("no endpoint"), "{msg}");
    }
    // CHECK does not exist in 0.3.1.
    let msg = cni(
        &attach("CHECK", "c1", "/n"),
        &with_prev(
            conf("0.3.1", agent.socket()),
            &json!({"cniVersion": "0.3.1"}),
        ),
    )
    .error(1);
    assert!(msg.contains("CHECK"), "{msg}");
}

// §12.9
#[test]
fn del_is_idempotent_and_needs_no_netns_or_prev_result() {
    let agent = StandIn::start();
    let prev = add(&agent, "1.1.0", "c1");
    let c = conf("1.1.0", agent.socket());
    cni(
        &attach("DEL", "c1", "/var/run/netns/x-a"),
        &with_prev(c.clone(), &prev),
    )
    .ok_silent();
    assert!(agent.state().endpoints.is_empty());
    // Again, with the netns gone and no prevResult.
    cni(&attach("DEL", "c1", ""), &c.to_string()).ok_silent();
    let vars: Vec<_> = attach("DEL", "c1", "")
        .into_iter()
        .filter(|(k, _)| *k != "CNI_NETNS")
        .collect();
    cni(&vars, &c.to_string()).ok_silent();
    // Never added at all.
    cni(
        &attach("DEL", "never", "/var/run/netns/gone"),
        &c.to_string(),
    )
    .ok_silent();
    assert_eq!(
        agent.state().deletes,
        [
            "cni:c1:eth0",
            "cni:c1:eth0",
            "cni:c1:eth0",
            "cni:never:eth0"
        ]
    );
    // 0.3.1 DEL works too, and the address can be had again.
    let again = add(&agent, "0.3.1", "c1");
    assert_eq!(again["ips"][0]["version"], "4");
    cni(
        &attach("DEL", "c1", "/n"),
        &conf("0.3.1", agent.socket()).to_string(),
    )
    .ok_silent();
    // DEL still needs to know which attachment.
    let vars: Vec<_> = attach("DEL", "c1", "")
        .into_iter()
        .filter(|(k, _)| *k != "CNI_CONTAINERID")
        .collect();
    assert_eq!(
        cni(&vars, &c.to_string()).error(4),
        "CNI_CONTAINERID is required for DEL"
    );
}

// §12.10
#[test]
fn gc_sends_the_keep_list() {
    let agent = StandIn::start();
    for id in ["a", "b", "c"] {
        add(&agent, "1.1.0", id);
    }
    let mut c = conf("1.1.0", agent.socket());
    c["cni.dev/valid-attachments"] = json!([{"containerID": "a", "ifname": "eth0"}]);
    c["cni.dev/attachments"] = json!([{"containerID": "a", "ifname": "eth0"},
                                      {"containerID": "b", "ifname": "eth0"}]);
    cni(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
        &c.to_string(),
    )
    .ok_silent();
    let s = agent.state();
    assert_eq!(
        s.gcs,
        [vec!["cni:a:eth0".to_string(), "cni:b:eth0".to_string()]]
    );
    assert_eq!(
        s.endpoints.keys().collect::<Vec<_>>(),
        ["cni:a:eth0", "cni:b:eth0"]
    );
    drop(s);

    // An empty list is a real request: remove everything.
    let mut c = conf("1.1.0", agent.socket());
    c["cni.dev/valid-attachments"] = json!([]);
    cni(&[("CNI_COMMAND", "GC")], &c.to_string()).ok_silent();
    assert!(agent.state().endpoints.is_empty());

    // No list at all is refused, not read as "keep nothing".
    let msg = cni(
        &[("CNI_COMMAND", "GC")],
        &conf("1.1.0", agent.socket()).to_string(),
    )
    .error(7);
    assert!(msg.contains("cni.dev/valid-attachments"), "{msg}");
    // GC does not exist before 1.1.0.
    let mut c = conf("1.0.0", agent.socket());
    c["cni.dev/valid-attachments"] = json!([]);
    assert!(
        cni(&[("CNI_COMMAND", "GC")], &c.to_string())
            .error(1)
            .contains("GC")
    );
    assert_eq!(agent.state().gcs.len(), 2);
}

// §12.11
#[test]
fn status_follows_the_agent() {
    let agent = StandIn::start();
    let c = conf("1.1.0", agent.socket()).to_string();
    let status = [("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/opt/cni/bin")];
    cni(&status, &c).ok_silent();
    agent.state().not_ready = true;
    assert!(cni(&status, &c).error(50).contains("health"));
    let msg = cni(&status, &conf("1.0.0", agent.socket()).to_string()).error(1);
    assert!(msg.contains("STATUS"), "{msg}");
}

#[test]
fn agent_down_is_11_for_add_and_del_and_50_for_status() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("cilium.sock");
    let c = conf("1.1.0", &socket).to_string();
    let msg = cni(&attach("ADD", "c1", "/n"), &c).error(11);
    assert!(msg.contains("cannot reach cilium-agent"), "{msg}");
    cni(&attach("DEL", "c1", "/n"), &c).error(11);
    cni(&[("CNI_COMMAND", "STATUS")], &c).error(50);
    let mut gc = conf("1.1.0", &socket);
    gc["cni.dev/valid-attachments"] = json!([]);
    cni(&[("CNI_COMMAND", "GC")], &gc.to_string()).error(11);
    // No socket directory: no agent ran there since boot, so nothing is left to undo.
    let gone = dir.path().join("no-such-dir/cilium.sock");
    cni(&attach("DEL", "c1", ""), &conf("1.1.0", &gone).to_string()).ok_silent();
}

#[test]
fn socket_from_cilium_socket_env() {
    let agent = StandIn::start();
    let mut vars = attach("ADD", "c1", "/n");
    vars.push(("CILIUM_SOCKET", agent.socket().to_str().unwrap()));
    let r = cni(
        &vars,
        r#"{"cniVersion":"1.1.0","name":"cilium","type":"cilium-cni"}"#,
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(agent.state().puts.len(), 1);
}

#[test]
fn ignore_unknown_governs_unknown_cni_args() {
    let agent = StandIn::start();
    let c = conf("1.1.0", agent.socket()).to_string();
    let mut vars = attach("ADD", "c1", "/n");
    vars.retain(|(k, _)| *k != "CNI_ARGS");
    vars.push(("CNI_ARGS", "K8S_POD_NAME=a;MAC=02:00:00:00:00:09"));
    let msg = cni(&vars, &c).error(4);
    assert!(msg.contains("CNI_ARGS") && msg.contains("MAC"), "{msg}");
    assert!(agent.state().puts.is_empty());
    vars.pop();
    vars.push((
        "CNI_ARGS",
        "K8S_POD_NAME=a;MAC=02:00:00:00:00:09;IgnoreUnknown=true",
    ));
    assert_eq!(cni(&vars, &c).code, 0);
    assert_eq!(agent.state().puts[0].pod_name.as_deref(), Some("a"));
}

#[test]
fn ip_arg_passes_through_and_agent_refusals_map_to_codes() {
    let agent = StandIn::start();
    let c = conf("1.1.0", agent.socket()).to_string();
    let mut vars = attach("ADD", "c1", "/n");
    vars.retain(|(k, _)| *k != "CNI_ARGS");
    vars.push(("CNI_ARGS", "IgnoreUnknown=1;IP=10.200.7.7"));
    let r = cni(&vars, &c);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["ips"][0]["address"], "10.200.7.7/32");
    assert_eq!(
        agent.state().puts[0].requested_ipv4,
        Some(Ipv4Addr::new(10, 200, 7, 7))
    );
    // Outside the pod range: the agent says 422, the request can never succeed: 7.
    vars.pop();
    vars.push(("CNI_ARGS", "IP=192.168.1.1"));
    let r = cni(&attach_with(&vars, "c2"), &c);
    assert!(r.error(7).contains("192.168.1.1"));
    // Not an address at all: refused before asking the agent.
    vars.pop();
    vars.push(("CNI_ARGS", "IP=nonsense"));
    assert!(cni(&attach_with(&vars, "c3"), &c).error(4).contains("IP="));
    // Pod range exhausted (507) and address taken (409): try again later.
    agent.state().put_error = Some(ApiError::new(
        cilium_api::ErrorCode::Exhausted,
        "pod range 10.200.0.0/16 is full",
    ));
    assert!(
        cni(&attach("ADD", "c4", "/n"), &c)
            .error(11)
            .contains("full")
    );
    agent.state().put_error = Some(ApiError::conflict("10.200.7.7 is in use"));
    cni(&attach("ADD", "c5", "/n"), &c).error(11);
    agent.state().put_error = Some(ApiError::internal("netlink said no"));
    cni(&attach("ADD", "c6", "/n"), &c).error(999);
}

fn attach_with<'a>(vars: &[(&'a str, &'a str)], id: &'a str) -> Vec<(&'a str, &'a str)> {
    vars.iter()
        .map(|&(k, v)| {
            if k == "CNI_CONTAINERID" {
                (k, id)
            } else {
                (k, v)
            }
        })
        .collect()
}

// §12.12: the plugin keeps no shared state, so parallel runs only meet at the agent.
#[test]
fn parallel_adds_and_dels() {
    let agent = StandIn::start();
    let socket = agent.socket().to_path_buf();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let id = format!("par{i}");
                let c = conf("1.1.0", &socket).to_string();
                let r = cni(&attach("ADD", &id, "/n"), &c);
                assert_eq!(r.code, 0, "{r:?}");
                if i % 2 == 0 {
                    cni(&attach("DEL", &id, "/n"), &c).ok_silent();
                }
                r.json()["ips"][0]["address"].as_str().unwrap().to_string()
            })
        })
        .collect();
    let mut ips: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 8);
    assert_eq!(agent.state().endpoints.len(), 4);
}

#[test]
fn debug_logs_go_to_stderr_only() {
    let agent = StandIn::start();
    let mut vars = attach("ADD", "c1", "/n");
    vars.push(("CILIUM_CNI_LOG", "debug"));
    let r = cni(&vars, &conf("1.1.0", agent.socket()).to_string());
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["cniVersion"], "1.1.0");
    assert!(r.stderr.contains("endpoint created"), "{r:?}");
    // Without the variable stderr stays empty.
    let r = cni(
        &attach("DEL", "c1", "/n"),
        &conf("1.1.0", agent.socket()).to_string(),
    );
    r.ok_silent();
    assert_eq!(r.stderr, "");
}

/// The shipped conflist's plugin entry, as libcni hands it to the plugin, is accepted.
#[test]
fn shipped_conflist_is_accepted() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/cni/05-cilium.conflist"
    );
    let list: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(list["cniVersion"], "1.1.0");
    let plugins = list["plugins"].as_array().unwrap();
    assert_eq!(plugins[0]["type"], "cilium-cni");
    let agent = StandIn::start();
    // libcni injects cniVersion and name into each plugin's config.
    let mut c = plugins[0].clone();
    c["cniVersion"] = list["cniVersion"].clone();
    c["name"] = list["name"].clone();
    assert_eq!(c["socketPath"], "/var/run/cilium/cilium.sock");
    c["socketPath"] = json!(agent.socket().to_str().unwrap());
    cni(&[("CNI_COMMAND", "STATUS")], &c.to_string()).ok_silent();
    let r = cni(&attach("ADD", "c1", "/n"), &c.to_string());
    assert_eq!(r.code, 0, "{r:?}");
    for v in list["cniVersions"].as_array().unwrap() {
        assert!(ALL_VERSIONS.contains(&v.as_str().unwrap()), "{v}");
    }
}
