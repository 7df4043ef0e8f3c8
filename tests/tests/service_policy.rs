//! NetworkPolicy decides service traffic on the backend, with the client's own address: a
//! policy on the backend allowing pod x only lets x through the ClusterIP and stops y, on both
//! the socket path and the per-packet path. Pod range 10.237.0.0/24.

use std::net::Ipv4Addr;
use std::time::Duration;

use cilium_e2e::model::{ctl_apply, namespace_yaml, pod_yaml};
use cilium_e2e::services::{
    Client, Reply, SliceEp, SvcPort, apply, dump, eps, lb_args, require_lb, serve, service_yaml,
    slice_yaml, start_agent, wait_programmed,
};
use cilium_e2e::{Pod, wait_until};

const NS: &str = "lbpol";

#[test]
fn network_policy_decides_service_traffic_on_the_backend() {
    let Some(cg) = require_lb("network_policy_decides_service_traffic_on_the_backend") else {
        return;
    };
    let node = "e2e-pol";
    let agent = start_agent(
        "10.237.0.0/24",
        &lb_args(&cg, "10.237.1.0/24", &["--node-name", node]),
    );
    let objects = format!(
        "{}{}{}{}",
        namespace_yaml(NS, &[]),
        pod_yaml(NS, "x", &[]),
        pod_yaml(NS, "y", &[]),
        pod_yaml(NS, "be", &[("app", "backend")]),
    );
    if let Err(e) = ctl_apply(&agent, "apply", &objects) {
        panic!("applying the namespace and pods: {e}");
    }
    let add = |n: &str| Pod::add(&agent, &format!("K8S_POD_NAMESPACE={NS};K8S_POD_NAME={n}"));
    let x = add("x");
    let y = add("y");
    let be = add("be");
    let _s = serve(&be, "be", &[8080], &[]);
    let vip = Ipv4Addr::new(10, 237, 1, 10);
    let ports = [SvcPort::tcp("http", 80, 8080)];
    apply(
        &agent,
        &format!(
            "{}{}",
            service_yaml(NS, "web", vip, &ports, ""),
            slice_yaml(NS, "web", "web-1", &[SliceEp::ready(be.ip, node)], &ports)
        ),
    );
    wait_programmed(&agent, &format!("{vip}:80/tcp"), &eps(&[be.ip], 8080));
    let addr = format!("{vip}:80");

    let paths = |p: &'static str| -> Vec<(String, Client<'_>)> {
        let pod = if p == "x" { &x } else { &y };
        vec![
            (
                format!("{p} {}", Client::pod_in(pod, &cg).describe()),
                Client::pod_in(pod, &cg),
            ),
            (
                format!("{p} {}", Client::pod_out(pod).describe()),
                Client::pod_out(pod),
            ),
        ]
    };
    // Without policy both reach the service.
    for p in ["x", "y"] {
        for (what, c) in paths(p) {
            let r = c.tcp_until_ok(&addr, Duration::from_secs(5));
            assert!(
                r.token().is_some(),
                "{what}: no answer without policy: {r:?}\n{}",
                dump(&agent)
            );
        }
    }

    let policy = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: only-x, namespace: {NS}}}\nspec:\n  podSelector: {{matchLabels: {{app: backend}}}}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector: {{matchLabels: {{pod: x}}}}\n    ports:\n    - {{port: 8080, protocol: TCP}}\n"
    );
    if let Err(e) = ctl_apply(&agent, "apply", &policy) {
        panic!("applying the policy: {e}");
    }
    let y_out = Client::pod_out(&y);
    assert!(
        wait_until(Duration::from_secs(10), || y_out
            .tcp(&addr, 1, 500)
            .iter()
            .all(|r| r.token().is_none())),
        "y still reaches the service 10 s after the policy allowing only x\n{}",
        dump(&agent)
    );
    for (what, c) in paths("x") {
        let r = c.tcp(&addr, 5, 2000);
        for reply in &r {
            match reply {
                Reply::Ok { token, seen, .. } => {
                    assert_eq!(token, "be");
                    assert_eq!(
                        seen,
                        &x.ip.to_string(),
                        "{what}: the backend saw {seen}, not x's address"
                    );
                }
                Reply::Err(k) => panic!(
                    "{what}: x is allowed by the policy but its service connection failed \
                     ({k}): {r:?}\n{}",
                    dump(&agent)
                ),
            }
        }
    }
    for (what, c) in paths("y") {
        let r = c.tcp(&addr, 3, 1000);
        assert!(
            r.iter().all(|x| x.token().is_none()),
            "{what}: y is not allowed by the policy on the backend but reached it: {r:?}\n{}",
            dump(&agent)
        );
    }
}
