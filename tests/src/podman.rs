//! Podman on the cilium-cni network for the end-to-end tests: a private podman (its own
//! `containers.conf`, CNI config dir, plugin dir, `--root`/`--runroot`/tmp dir under a temp
//! directory, so the machine's podman and CNI configuration are never touched) whose `cilium`
//! network is the shipped conflist (deploy/podman/) pointed at a test agent's socket, the
//! busybox image built by deploy/podman/build-image.sh, and containers removed on drop.
//!
//! Podman 4.3 (CNI backend) calls the plugin with `CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAME=<container
//! name>` and then appends whatever `CNI_ARGS` it finds in its own environment, so
//! [`Podman::run`] sets `CNI_ARGS=K8S_POD_NAMESPACE=..;K8S_POD_NAME=..` for the `podman run`
//! process (cilium-cni takes the last value of a repeated key).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use crate::{Agent, bin, run, run_ok, unique};

/// The podman network the shipped conflist defines.
pub const NETWORK: &str = "cilium";

/// deploy/podman/ in the workspace.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join("podman")
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether podman, runc and busybox-static are installed; `Err(reason)` when not.
pub fn available() -> Result<(), String> {
    for (tool, package) in [("podman", "podman"), ("runc", "runc")] {
        if !on_path(tool) {
            return Err(format!(
                "{tool} is not installed (apt-get install {package}, or make deps)"
            ));
        }
    }
    if !Path::new("/bin/busybox").exists() {
        return Err("/bin/busybox is missing (apt-get install busybox-static)".into());
    }
    Ok(())
}

/// Call at the top of a podman test: the privileges of [`crate::require_privileges`] plus
/// podman, runc and busybox-static. False (after printing `SKIPPED: <why>`) when it cannot
/// run; panics instead when `CI=true` (CI installs them with hack/deps.sh).
pub fn require_podman(test: &str) -> bool {
    crate::require_privileges(test) && crate::require(test, available())
}

/// Replace the line that sets `key` in a containers.conf (TOML) text with `key = value`.
fn set_key(conf: &str, key: &str, value: &str) -> String {
    let mut found = false;
    let mut out: Vec<String> = conf
        .lines()
        .map(|l| {
            let t = l.trim_start();
            if !t.starts_with('#')
                && t.split('=').next().map(str::trim) == Some(key)
                && t.contains('=')
            {
                found = true;
                format!("{key} = {value}")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(found, "deploy/podman/containers.conf has no `{key}` line");
    out.push(String::new());
    out.join("\n")
}

/// A TOML string literal.
fn toml_str(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// A private podman whose `cilium` network goes to one agent. Everything lives under `dir`;
/// on drop every container is removed (CNI DEL through the agent), then the directory.
pub struct Podman {
    /// The temp directory holding config, storage and run state.
    pub dir: PathBuf,
    /// The containers.conf in use (env `CONTAINERS_CONF`).
    pub conf: PathBuf,
    /// The image the containers run (after [`Podman::build_image`]).
    pub image: String,
    names: Mutex<Vec<String>>,
}

impl Podman {
    /// Write the config for `agent`: the shipped containers.conf with this test's CNI config
    /// and plugin dirs and tmp dir, the shipped conflist with the agent's socket, and a plugin
    /// dir holding a link to the built cilium-cni.
    pub fn new(agent: &Agent) -> Self {
        let dir = std::env::temp_dir().join(format!("cilium-podman-{}", unique("pm")));
        let mk = |p: &Path| {
            std::fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()))
        };
        let (net_d, cni_bin, tmp) = (dir.join("net.d"), dir.join("cni-bin"), dir.join("tmp"));
        for p in [&dir, &net_d, &cni_bin, &tmp] {
            mk(p);
        }
        std::os::unix::fs::symlink(bin("cilium-cni"), cni_bin.join("cilium-cni"))
            .unwrap_or_else(|e| panic!("symlink cilium-cni into {}: {e}", cni_bin.display()));

        let shipped = deploy_dir().join("containers.conf");
        let mut conf = std::fs::read_to_string(&shipped)
            .unwrap_or_else(|e| panic!("read {}: {e}", shipped.display()));
        conf = set_key(&conf, "network_config_dir", &toml_str(&net_d));
        conf = set_key(
            &conf,
            "cni_plugin_dirs",
            &format!("[{}, \"/usr/lib/cni\"]", toml_str(&cni_bin)),
        );
        // [engine] is the last table of the shipped file: the tmp dir (podman's default is
        // the machine-wide /run/libpod) belongs there.
        assert!(
            conf.lines()
                .rev()
                .find(|l| l.trim_start().starts_with('['))
                .is_some_and(|l| l.trim() == "[engine]"),
            "deploy/podman/containers.conf must end with its [engine] table"
        );
        conf.push_str(&format!("tmp_dir = {}\n", toml_str(&tmp)));
        let conf_path = dir.join("containers.conf");
        std::fs::write(&conf_path, conf)
            .unwrap_or_else(|e| panic!("write {}: {e}", conf_path.display()));

        let list_path = deploy_dir().join("cilium-podman.conflist");
        let mut list: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&list_path)
                .unwrap_or_else(|e| panic!("read {}: {e}", list_path.display())),
        )
        .unwrap_or_else(|e| panic!("{}: bad JSON: {e}", list_path.display()));
        assert_eq!(list["name"], NETWORK, "{}", list_path.display());
        list["plugins"][0]["socketPath"] = agent.socket.display().to_string().into();
        std::fs::write(net_d.join("cilium.conflist"), list.to_string())
            .unwrap_or_else(|e| panic!("write the conflist: {e}"));

        Self {
            dir,
            conf: conf_path,
            image: "localhost/cilium-busybox:e2e".to_string(),
            names: Mutex::new(Vec::new()),
        }
    }

    /// The podman command line with this instance's global options (storage under `dir`).
    pub fn argv(&self) -> Vec<String> {
        vec![
            "podman".into(),
            "--root".into(),
            self.dir.join("root").display().to_string(),
            "--runroot".into(),
            self.dir.join("runroot").display().to_string(),
            "--storage-driver".into(),
            "vfs".into(),
        ]
    }

    /// A podman command of this instance (env `CONTAINERS_CONF` and the storage options).
    pub fn cmd(&self) -> Command {
        let argv = self.argv();
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..])
            .env("CONTAINERS_CONF", &self.conf)
            .env_remove("CNI_ARGS")
            .stdin(Stdio::null());
        c
    }

    /// Build the image with deploy/podman/build-image.sh into this instance's storage.
    pub fn build_image(&self) {
        run_ok(
            Command::new(deploy_dir().join("build-image.sh"))
                .arg(&self.image)
                .env("PODMAN", self.argv().join(" "))
                .env("CONTAINERS_CONF", &self.conf)
                .env("TMPDIR", &self.dir),
        );
    }

    /// `podman run -d --name NAME --network cilium IMAGE sh -c SCRIPT` as pod `ns/NAME`.
    pub fn run(&self, ns: &str, name: &str, script: &str) -> String {
        self.lock_names().push(name.to_string());
        run_ok(
            self.cmd()
                .env(
                    "CNI_ARGS",
                    format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}"),
                )
                .args(["run", "-d", "--name", name, "--network", NETWORK])
                .arg(&self.image)
                .args(["sh", "-c", script]),
        )
        .trim()
        .to_string()
    }

    /// `podman exec NAME sh -c SCRIPT`.
    pub fn exec(&self, name: &str, script: &str) -> Output {
        run(self.cmd().args(["exec", name, "sh", "-c", script]))
    }

    /// An HTTP/1.0 GET of `/` at `addr` `port` from container `name` with busybox nc (its wget
    /// crashes on some hosts: static glibc resolver); the response, empty when nothing answered.
    pub fn http_get(&self, name: &str, addr: &str, port: u16) -> String {
        let out = self.exec(
            name,
            &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {addr} {port}"),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A field of `podman inspect` (Go template).
    pub fn inspect(&self, name: &str, format: &str) -> String {
        run_ok(self.cmd().args(["inspect", "--format", format, name]))
            .trim()
            .to_string()
    }

    /// The container's address on the cilium network.
    pub fn ip(&self, name: &str) -> Ipv4Addr {
        let s = self.inspect(
            name,
            &format!("{{{{.NetworkSettings.Networks.{NETWORK}.IPAddress}}}}"),
        );
        s.parse()
            .unwrap_or_else(|e| panic!("container {name}: address {s:?}: {e}"))
    }

    /// The container's network namespace path (under /run/netns).
    pub fn netns(&self, name: &str) -> String {
        self.inspect(name, "{{.NetworkSettings.SandboxKey}}")
    }

    /// `podman rm -f -t 0 NAME` (a shell as PID 1 ignores SIGTERM: no 10 s wait).
    pub fn rm(&self, name: &str) -> Output {
        let out = run(self.cmd().args(["rm", "-f", "-t", "0", name]));
        self.lock_names().retain(|n| n != name);
        out
    }

    fn lock_names(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let names = self.lock_names().clone();
        for n in &names {
            let _ = run(self.cmd().args(["rm", "-f", "-t", "0", n]));
        }
        let _ = run(self.cmd().args(["rm", "-a", "-f", "-t", "0"]));
        let _ = run(self.cmd().args(["rmi", "-a", "-f"]));
        // Anything still mounted below the dir (a container's /dev/shm when rm failed).
        let prefix = self.dir.display().to_string();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut below: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        below.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in below {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("cannot remove {}: {e}", self.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_key_replaces_the_setting_not_comments() {
        let conf =
            "[network]\n# network_config_dir = \"/x\"\nnetwork_config_dir = \"/etc/cni/net.d\"\n";
        let out = set_key(conf, "network_config_dir", "\"/tmp/y\"");
        assert!(out.contains("network_config_dir = \"/tmp/y\""), "{out}");
        assert!(out.contains("# network_config_dir = \"/x\""), "{out}");
        assert!(!out.contains("/etc/cni/net.d"), "{out}");
    }

    #[test]
    fn shipped_config_has_the_settings_the_test_overrides() {
        let conf = std::fs::read_to_string(deploy_dir().join("containers.conf"))
            .unwrap_or_else(|e| panic!("{e}"));
        for key in [
            "network_config_dir",
            "cni_plugin_dirs",
            "network_backend",
            "runtime",
        ] {
            let _ = set_key(&conf, key, "\"x\"");
        }
        assert!(conf.contains("network_backend = \"cni\""));
        assert!(conf.contains("runtime = \"runc\""));
        let list: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(deploy_dir().join("cilium-podman.conflist"))
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(list["plugins"][0]["type"], "cilium-cni");
        // podman 4.3's libcni rejects result version 1.1.0.
        assert_eq!(list["cniVersion"], "1.0.0");
    }
}
