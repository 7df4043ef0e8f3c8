//! The CNI conformance checklist (shared/reference/cni_spec.md §12, items 1-11) through the real
//! cilium-cni binary, with env and stdin, against a real agent and real network namespaces.

use cilium_e2e::{Agent, CniCall, Netns, net_conf, require_privileges, run, unique};

fn call<'a>(command: &'a str, cid: &'a str, netns: &'a str) -> CniCall<'a> {
    CniCall {
        command,
        container_id: cid,
        netns,
        ifname: "eth0",
        args: "",
    }
}

fn with_prev(version: &str, prev: &serde_json::Value) -> String {
    serde_json::json!({"cniVersion": version, "name": "cilium", "type": "cilium-cni", "prevResult": prev})
        .to_string()
}

#[test]
fn cni_checklist_through_the_real_binary() {
    if !require_privileges("cni_checklist_through_the_real_binary") {
        return;
    }
    let agent = Agent::start("10.215.0.0/24", &[]);
    let ns = Netns::new("cni");
    let nsp = ns.path().display().to_string();
    let cid = unique("ctr");

    // 1. VERSION.
    let out = agent.cni(&call("VERSION", "", ""), &net_conf("1.1.0"));
    assert_eq!(out.code, 0, "{:?}", out);
    let versions = out.json["supportedVersions"].to_string();
    for v in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        assert!(versions.contains(v), "{v} not in {versions}");
    }

    // 2. No CNI_COMMAND: about text (exit 0) or code 4.
    let out = agent.cni(&call("", &cid, &nsp), &net_conf("1.1.0"));
    assert!(out.code == 0 || out.json["code"] == 4, "{out:?}");

    // 3. Missing variables name the variable.
    for (missing, c) in [
        ("CNI_CONTAINERID", call("ADD", "", &nsp)),
        ("CNI_NETNS", call("ADD", &cid, "")),
        (
            "CNI_IFNAME",
            CniCall {
                ifname: "",
                ..call("ADD", &cid, &nsp)
            },
        ),
    ] {
        let out = agent.cni(&c, &net_conf("1.1.0"));
        assert_ne!(out.code, 0);
        assert_eq!(out.json["code"], 4, "{missing}: {out:?}");
        assert!(
            out.json["msg"]
                .as_str()
                .unwrap_or_default()
                .contains(missing),
            "{out:?}"
        );
    }

    // 4. Bad JSON → 6, unsupported version → 1, invalid config → 7 naming the field.
    let out = agent.cni(&call("ADD", &cid, &nsp), "{not json");
    assert_eq!(out.json["code"], 6, "{out:?}");
    let out = agent.cni(&call("ADD", &cid, &nsp), &net_conf("9.9.9"));
    assert_eq!(out.json["code"], 1, "{out:?}");
    let out = agent.cni(
        &call("ADD", &cid, &nsp),
        r#"{"cniVersion":"1.1.0","name":"cilium","type":"cilium-cni","mtu":"big"}"#,
    );
    assert_eq!(out.json["code"], 7, "{out:?}");
    assert!(
        out.json["msg"].as_str().unwrap_or_default().contains("mtu"),
        "{out:?}"
    );

    // 5. ADD: a 1.1.0 result whose interface lives in the netns, with the address and a
    // default route really there.
    let out = agent.cni(&call("ADD", &cid, &nsp), &net_conf("1.1.0"));
    assert_eq!(out.code, 0, "{out:?}");
    let result = out.json.clone();
    assert_eq!(result["cniVersion"], "1.1.0");
    let idx = result["ips"][0]["interface"].as_u64().unwrap_or(99) as usize;
    assert_eq!(
        result["interfaces"][idx]["sandbox"],
        nsp.as_str(),
        "{result}"
    );
    assert_eq!(result["interfaces"][idx]["name"], "eth0", "{result}");
    let addr = result["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ip = addr.split('/').next().unwrap_or_default().to_string();
    let shown =
        String::from_utf8_lossy(&run(ns.cmd("ip").args(["-4", "addr", "show", "eth0"])).stdout)
            .into_owned();
    assert!(
        shown.contains(&ip),
        "{ip} not on eth0 in the netns:\n{shown}"
    );
    let routes = String::from_utf8_lossy(&run(ns.cmd("ip").args(["route"])).stdout).into_owned();
    assert!(
        routes.contains("default via"),
        "no default route:\n{routes}"
    );

    // 6. ADD again for the same attachment fails.
    let out = agent.cni(&call("ADD", &cid, &nsp), &net_conf("1.1.0"));
    assert_ne!(out.code, 0, "{out:?}");

    // 7. ADD as a chained plugin keeps prevResult's entries.
    let ns2 = Netns::new("cni");
    let ns2p = ns2.path().display().to_string();
    let cid2 = unique("ctr");
    let prev = serde_json::json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "dummy0", "sandbox": ns2p}],
        "ips": [{"address": "192.0.2.10/24", "interface": 0}],
        "dns": {"nameservers": ["192.0.2.53"]}
    });
    let out = agent.cni(&call("ADD", &cid2, &ns2p), &with_prev("1.1.0", &prev));
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["interfaces"][0]["name"], "dummy0", "{}", out.json);
    assert!(
        out.json["ips"].to_string().contains("192.0.2.10/24"),
        "{}",
        out.json
    );
    assert!(
        out.json["dns"].to_string().contains("192.0.2.53"),
        "{}",
        out.json
    );
    let out = agent.cni(&call("DEL", &cid2, &ns2p), &net_conf("1.1.0"));
    assert_eq!(out.code, 0, "{out:?}");

    // 8. CHECK right after ADD passes; after the address is removed inside the netns it fails.
    let out = agent.cni(&call("CHECK", &cid, &nsp), &with_prev("1.1.0", &result));
    assert_eq!(out.code, 0, "{out:?}");
    run(ns.cmd("ip").args(["addr", "del", &addr, "dev", "eth0"]));
    let out = agent.cni(&call("CHECK", &cid, &nsp), &with_prev("1.1.0", &result));
    assert_ne!(out.code, 0, "CHECK passed with the address gone: {out:?}");

    // 9. DEL: interface gone, address released; DEL again, with no netns, and for a never-added
    // container all succeed.
    let out = agent.cni(&call("DEL", &cid, &nsp), &net_conf("1.1.0"));
    assert_eq!(out.code, 0, "{out:?}");
    let link = run(ns.cmd("ip").args(["link", "show", "eth0"]));
    assert!(!link.status.success(), "eth0 still in the netns");
    let ipam = agent.ctl_json(&["db", "ipam"]);
    assert!(
        !ipam.to_string().contains(&format!("\"{ip}\"")),
        "{ip} still allocated"
    );
    assert_eq!(
        agent.cni(&call("DEL", &cid, &nsp), &net_conf("1.1.0")).code,
        0
    );
    assert_eq!(
        agent.cni(&call("DEL", &cid, ""), &net_conf("1.1.0")).code,
        0
    );
    assert_eq!(
        agent
            .cni(&call("DEL", &unique("never"), &nsp), &net_conf("1.1.0"))
            .code,
        0
    );
    assert_eq!(
        agent
            .cni(
                &call("DEL", &cid, "/var/run/netns/does-not-exist"),
                &net_conf("1.1.0")
            )
            .code,
        0
    );
    // The released address can be handed out again.
    let cid3 = unique("ctr");
    let out = agent.cni(
        &CniCall {
            args: &format!("IP={ip}"),
            ..call("ADD", &cid3, &nsp)
        },
        &net_conf("1.1.0"),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.json["ips"][0]["address"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&ip)
    );

    // 10. GC keeps the listed attachments and removes the rest; 1.0.0 rejects GC.
    let ns4 = Netns::new("cni");
    let ns4p = ns4.path().display().to_string();
    let cid4 = unique("ctr");
    assert_eq!(
        agent
            .cni(&call("ADD", &cid4, &ns4p), &net_conf("1.1.0"))
            .code,
        0
    );
    let gc = serde_json::json!({
        "cniVersion": "1.1.0", "name": "cilium", "type": "cilium-cni",
        "cni.dev/valid-attachments": [{"containerID": cid3, "ifname": "eth0"}]
    });
    let out = agent.cni(&call("GC", "", ""), &gc.to_string());
    assert_eq!(out.code, 0, "{out:?}");
    let eps = agent.ctl_json(&["endpoint", "list"]).to_string();
    assert!(eps.contains(&cid3), "listed attachment removed: {eps}");
    assert!(!eps.contains(&cid4), "stale attachment kept: {eps}");
    let gc10 = serde_json::json!({"cniVersion": "1.0.0", "name": "cilium", "type": "cilium-cni",
        "cni.dev/valid-attachments": []});
    assert_eq!(
        agent.cni(&call("GC", "", ""), &gc10.to_string()).json["code"],
        1
    );
    assert_eq!(
        agent
            .cni(&call("DEL", &cid3, &nsp), &net_conf("1.1.0"))
            .code,
        0
    );

    // 11. STATUS: 0 with the agent up, 50 with it down.
    assert_eq!(
        agent.cni(&call("STATUS", "", ""), &net_conf("1.1.0")).code,
        0
    );
    agent.kill9();
    let out = agent.cni(&call("STATUS", "", ""), &net_conf("1.1.0"));
    assert_eq!(out.json["code"], 50, "{out:?}");
    // ADD with the agent down: 11 (try again later).
    let out = agent.cni(&call("ADD", &unique("ctr"), &nsp), &net_conf("1.1.0"));
    assert_eq!(out.json["code"], 11, "{out:?}");
}
