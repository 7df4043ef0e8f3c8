//! ciliumctl against a live agent (the real binaries), and without one.

use std::process::Command;

use cilium_e2e::{Agent, bin, require_privileges, run};

#[test]
fn ciliumctl_without_agent_says_so_and_exits_1() {
    let dir = std::env::temp_dir().join(cilium_e2e::unique("noagent"));
    let sock = dir.join("cilium.sock");
    let out = run(Command::new(bin("ciliumctl"))
        .arg("--socket")
        .arg(&sock)
        .arg("status"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot reach cilium-agent at {}: is it running?",
            sock.display()
        )),
        "{err}"
    );
    // The environment variable is honoured too.
    let out = run(Command::new(bin("ciliumctl"))
        .env("CILIUM_SOCKET", &sock)
        .arg("db")
        .arg("health"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&sock.display().to_string()));
}

#[test]
fn ciliumctl_against_a_live_agent() {
    if !require_privileges("ciliumctl_against_a_live_agent") {
        return;
    }
    let agent = Agent::start("10.211.0.0/24", &[]);

    let status = agent.ctl_ok(&["status", "--verbose"]);
    assert!(status.contains("Agent:     ok"), "{status}");
    assert!(status.contains("agent.infra.api"), "{status}");
    let v = agent.ctl_json(&["status"]);
    let cells = v["cells"].as_array().expect("cells");
    assert!(!cells.is_empty());
    for c in cells {
        assert_eq!(c["level"], "ok", "cell not healthy: {c}");
    }

    let yaml = agent.ctl_ok(&["status", "-o", "yaml"]);
    assert!(yaml.contains("state: ok"), "{yaml}");

    let db = agent.ctl_ok(&["db", "health"]);
    assert!(db.lines().next().unwrap_or_default().contains("ID"), "{db}");
    assert!(db.contains("agent.infra.api"), "{db}");

    let out = agent.ctl(&["db", "no-such-table"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no table named") && err.contains("404"),
        "{err}"
    );

    let cfg = agent.ctl_json(&["config"]);
    assert_eq!(
        cfg["agent.infra.api"]["socket-path"].as_str(),
        Some(agent.socket.to_str().unwrap_or_default()),
        "{cfg}"
    );
    let table = agent.ctl_ok(&["config"]);
    assert!(table.contains("socket-path"), "{table}");

    // SIGTERM runs the stop hooks: a clean exit that removes the socket.
    assert!(
        agent.terminate(),
        "agent did not exit cleanly:\n{}",
        agent.log_text()
    );
    assert!(!agent.socket.exists());
}
