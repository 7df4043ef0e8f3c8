//! Podman 4.3 (CNI backend, runc) runs containers on our network: the shipped deploy/podman/
//! config and conflist against a test agent, the image built from busybox-static, pods labelled
//! from Pod objects applied before `podman run`, traffic by pod IP and through a Service, a
//! NetworkPolicy that blocks one client, and `podman rm` releasing the endpoint, its address and
//! its map entries.
//!
//! Privileged (root, BTF, bpffs) and needs podman, runc and busybox-static: SKIPPED without them,
//! a failure under `CI=true`.

use std::time::Duration;

use cilium_e2e::model::ctl_apply;
use cilium_e2e::podman::{Podman, require_podman};
use cilium_e2e::services::{
    SliceEp, SvcPort, apply, eps, service_yaml, slice_yaml, wait_programmed,
};
use cilium_e2e::{Agent, unique, wait_until};

const POD_CIDR: &str = "10.246.0.0/24";
const SERVICE_CIDR: &str = "10.247.0.0/24";
const VIP: &str = "10.247.0.10";
/// How long a change may take to show in the datapath.
const SETTLE: Duration = Duration::from_secs(15);

fn namespace_yaml(ns: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    kubernetes.io/metadata.name: {ns}\n"
    )
}

fn pod_yaml(ns: &str, name: &str, labels: &[(&str, &str)]) -> String {
    let labels: String = labels
        .iter()
        .map(|(k, v)| format!("    {k}: {v}\n"))
        .collect();
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n{labels}spec:\n  containers:\n  - name: main\n    image: localhost/cilium-busybox:e2e\n"
    )
}

fn policy_yaml(ns: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web-from-allowed\n  namespace: {ns}\nspec:\n  podSelector:\n    matchLabels:\n      app: web\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          access: allowed\n    ports:\n    - port: 8080\n      protocol: TCP\n"
    )
}

/// The endpoint of `pod` (`ns/name`) in the agent's list, if any.
fn endpoint(agent: &Agent, pod: &str) -> Option<serde_json::Value> {
    agent
        .ctl_json(&["endpoint", "list"])
        .as_array()
        .and_then(|a| a.iter().find(|e| e["pod"] == pod).cloned())
}

#[test]
fn podman_containers_on_the_cilium_network() {
    if !require_podman("podman_containers_on_the_cilium_network") {
        return;
    }
    let agent = Agent::start(POD_CIDR, &["--service-cidr", SERVICE_CIDR]);
    // Declared after the agent: dropped (containers removed through the agent) before it.
    let podman = Podman::new(&agent);
    podman.build_image();

    let ns = unique("pm-");
    let (web, good, bad) = (unique("web-"), unique("good-"), unique("bad-"));
    let token = format!("served-by-{web}");
    // Labels come from the Pod objects, which must exist before the CNI ADD.
    let objects = format!(
        "{}{}{}{}",
        namespace_yaml(&ns),
        pod_yaml(&ns, &web, &[("app", "web")]),
        pod_yaml(&ns, &good, &[("app", "client"), ("access", "allowed")]),
        pod_yaml(&ns, &bad, &[("app", "client"), ("access", "blocked")]),
    );
    ctl_apply(&agent, "apply", &objects).unwrap_or_else(|e| panic!("{e}"));

    podman.run(
        &ns,
        &web,
        &format!("echo {token} > /www/index.html && exec httpd -f -p 8080 -h /www"),
    );
    for c in [&good, &bad] {
        podman.run(&ns, c, "exec sleep 1000000");
    }

    // The plugin got namespace and name: every endpoint carries its pod's labels.
    for (name, label, value) in [
        (&web, "app", "web"),
        (&good, "access", "allowed"),
        (&bad, "access", "blocked"),
    ] {
        let pod = format!("{ns}/{name}");
        let ep = endpoint(&agent, &pod).unwrap_or_else(|| {
            panic!(
                "no endpoint for pod {pod}: {}",
                agent.ctl_ok(&["endpoint", "list"])
            )
        });
        assert_eq!(ep["labels"][label], value, "{ep}");
        assert_eq!(ep["ipv4"], podman.ip(name).to_string(), "{ep}");
    }
    let web_ip = podman.ip(&web).to_string();

    // Container to container by address, both clients.
    for c in [&good, &bad] {
        let mut last = String::new();
        assert!(
            wait_until(SETTLE, || {
                last = podman.http_get(c, &web_ip, 8080);
                last.contains(&token)
            }),
            "{c} cannot reach {web} at {web_ip}:8080: {last:?}"
        );
    }

    // Container to a Service whose backend is the web container.
    let ports = [SvcPort::tcp("http", 80, 8080)];
    let web_addr = podman.ip(&web);
    apply(
        &agent,
        &format!(
            "{}{}",
            service_yaml(
                &ns,
                "web",
                VIP.parse().unwrap_or_else(|e| panic!("{e}")),
                &ports,
                ""
            ),
            slice_yaml(&ns, "web", "web-1", &[SliceEp::ready(web_addr, "")], &ports)
        ),
    );
    wait_programmed(&agent, &format!("{VIP}:80/tcp"), &eps(&[web_addr], 8080));
    for c in [&good, &bad] {
        let mut last = String::new();
        assert!(
            wait_until(SETTLE, || {
                last = podman.http_get(c, VIP, 80);
                last.contains(&token)
            }),
            "{c} cannot reach the service {VIP}:80: {last:?}"
        );
    }

    // A NetworkPolicy lets only access=allowed in: the bad client is cut off, directly and
    // through the service; the good one is not.
    ctl_apply(&agent, "apply", &policy_yaml(&ns)).unwrap_or_else(|e| panic!("{e}"));
    let mut last = String::new();
    assert!(
        wait_until(SETTLE, || {
            last = podman.http_get(&bad, &web_ip, 8080);
            last.is_empty()
        }),
        "the policy does not block {bad}: {last:?}"
    );
    assert!(podman.http_get(&bad, VIP, 80).is_empty());
    assert!(podman.http_get(&good, &web_ip, 8080).contains(&token));
    assert!(podman.http_get(&good, VIP, 80).contains(&token));

    // podman rm releases the endpoint, its address, its map entries, its veth and netns.
    let ep = endpoint(&agent, &format!("{ns}/{bad}")).unwrap_or_else(|| panic!("no endpoint"));
    let bad_ip = podman.ip(&bad).to_string();
    let host_if = ep["host_ifname"].as_str().unwrap_or_default().to_string();
    let netns = podman.netns(&bad);
    assert!(host_if.starts_with("lxc"), "{ep}");
    assert!(netns.starts_with("/run/netns/"), "{netns}");
    let out = podman.rm(&bad);
    assert!(
        out.status.success(),
        "podman rm {bad}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(endpoint(&agent, &format!("{ns}/{bad}")).is_none());
    let ipam = agent.ctl_json(&["db", "ipam"]).to_string();
    assert!(!ipam.contains(&format!("\"{bad_ip}\"")), "{ipam}");
    let lxc = agent.ctl_json(&["bpf", "lxc", "list"]).to_string();
    assert!(!lxc.contains(&format!("\"{bad_ip}\"")), "{lxc}");
    let mut ipc = String::new();
    assert!(
        wait_until(SETTLE, || {
            ipc = agent.ctl_json(&["bpf", "ipcache", "list"]).to_string();
            !ipc.contains(&format!("{bad_ip}/32"))
        }),
        "{bad_ip}/32 still in the ipcache: {ipc}"
    );
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(&host_if)
            .exists(),
        "{host_if} left on the host"
    );
    assert!(
        !std::path::Path::new(&netns).exists(),
        "{netns} left behind"
    );
    // The others are untouched.
    assert!(endpoint(&agent, &format!("{ns}/{good}")).is_some());
    assert!(podman.http_get(&good, VIP, 80).contains(&token));

    // Everything else goes: nothing of this test is left in the agent.
    for c in [&good, &web] {
        let out = podman.rm(c);
        assert!(out.status.success(), "podman rm {c}");
    }
    let left = agent.ctl_json(&["endpoint", "list"]);
    assert!(left.as_array().is_some_and(Vec::is_empty), "{left}");
    let _ = ctl_apply(&agent, "delete", &policy_yaml(&ns));
    let _ = ctl_apply(&agent, "delete", &objects);
}
