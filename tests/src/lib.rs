//! Harness for the end-to-end tests: locating the built binaries, checking privileges (a test
//! that cannot run prints `SKIPPED: <why>`, or fails when `CI=true`), and RAII guards for the
//! agent process, network namespaces and paths so every test cleans up after itself, also when
//! it fails, and (through [`cleanup`]) also when the run is interrupted by a signal.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cleanup::{OnInterrupt, on_interrupt, quiet};

pub mod cleanup;
pub mod model;
pub mod oracle;
pub mod podman;
pub mod services;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, short enough for interface names (≤ 15 chars with
/// a prefix of up to 5).
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{n:x}", std::process::id() % 0xfffff)
}

/// Path of a workspace binary built by `cargo build --workspace --bins`.
pub fn bin(name: &str) -> PathBuf {
    // target/<profile>/deps/<test-binary> -> target/<profile>/<name>
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut p = dir.join(name);
    // A benchmark binary lives beside the binaries (target/<profile>/bench-x), and
    // CILIUM_BIN_DIR points anywhere else.
    if let Some(d) = std::env::var_os("CILIUM_BIN_DIR") {
        p = PathBuf::from(d).join(name);
    } else if !p.exists()
        && let Some(here) = exe.parent()
    {
        p = here.join(name);
    }
    assert!(
        p.exists(),
        "{} not found: build the binaries first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

/// Whether the privileged tests can run here; `Err(reason)` when not.
pub fn privileged() -> Result<(), String> {
    // The effective uid from /proc (no unsafe geteuid needed).
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0");
    if !root {
        return Err("not running as root".into());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err("the kernel has no BTF (/sys/kernel/btf/vmlinux)".into());
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("bpf"))
    {
        return Err("bpffs is not mounted (mount -t bpf bpf /sys/fs/bpf)".into());
    }
    for tool in ["ip", "ping"] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Err(format!("{tool} is not installed (make deps)"));
        }
    }
    Ok(())
}

/// Call at the top of a privileged test: returns false (after printing SKIPPED) when the test
/// cannot run here; panics instead when `CI=true`.
pub fn require_privileges(test: &str) -> bool {
    require(test, privileged())
}

/// `Ok`: true. `Err(why)`: prints `SKIPPED: <test>: <why>` and returns false, or panics when
/// `CI=true` (CI must exercise the kernel, so a missing requirement is a failure there).
pub fn require(test: &str, check: Result<(), String>) -> bool {
    match check {
        Ok(()) => true,
        Err(why) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{test}: cannot run in CI: {why}");
            }
            eprintln!("SKIPPED: {test}: {why}");
            false
        }
    }
}

/// Run a command and return its output; panics with the command line if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    let _busy = cleanup::busy();
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Run a command that must succeed; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where cgroup v2 is mounted: /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified on a
/// hybrid one.
pub fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, kind) = (f.next(), f.next(), f.next());
            (kind == Some("cgroup2")).then(|| PathBuf::from(at.unwrap_or_default()))
        })
        .next()
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup/unified"))
}

/// A network namespace made with `ip netns add`, deleted on drop.
pub struct Netns {
    /// Its name (under /var/run/netns).
    pub name: String,
    _undo: OnInterrupt,
}

impl Netns {
    /// Create a namespace with a unique name starting with `prefix`, with `lo` up.
    pub fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        let undo = {
            let name = name.clone();
            on_interrupt(move || {
                // Processes still inside would keep it (and its veths) alive.
                let pids = Command::new("ip")
                    .args(["netns", "pids", &name])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                for pid in pids.split_whitespace() {
                    quiet("kill", &["-KILL", pid]);
                }
                quiet("ip", &["netns", "del", &name]);
            })
        };
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name, _undo: undo };
        run_ok(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        ns
    }

    /// The namespace's path (CNI_NETNS).
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// A command run inside the namespace (`ip netns exec NAME prog ...`).
    pub fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A running `cilium-agent` with its own socket, state dir and bpf root; killed and cleaned up
/// (pins, state) on drop.
pub struct Agent {
    child: std::sync::Mutex<Option<Child>>,
    /// API socket.
    pub socket: PathBuf,
    /// State directory.
    pub state_dir: PathBuf,
    /// BPF root (under /sys/fs/bpf).
    pub bpf_root: PathBuf,
    /// Pod CIDR given to the agent.
    pub pod_cidr: String,
    /// Where the agent's stderr goes.
    pub log: PathBuf,
    /// The cgroup v2 directory where this agent attaches socket load balancing (its own, so
    /// nothing outside the test is touched); processes put in it get socket LB.
    pub cgroup: PathBuf,
    dir: PathBuf,
    extra: Vec<String>,
    _undo: OnInterrupt,
}

impl Agent {
    /// Start an agent for `pod_cidr` (e.g. "10.201.0.0/24") and wait until it is healthy.
    pub fn start(pod_cidr: &str, extra: &[&str]) -> Self {
        let id = unique("e2e");
        let dir = std::env::temp_dir().join(format!("cilium-{id}"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let socket = dir.join("cilium.sock");
        let bpf_root = PathBuf::from("/sys/fs/bpf").join(format!("cilium-{id}"));
        let cgroup = cgroup2_mount().join(format!("cilium-{id}"));
        let undo = {
            let (socket, bpf_root, cgroup, dir) = (
                socket.display().to_string(),
                bpf_root.clone(),
                cgroup.clone(),
                dir.clone(),
            );
            let gateway = gateway_of(pod_cidr);
            // By its socket path, which names this agent whichever process runs it now.
            on_interrupt(move || {
                quiet("pkill", &["-KILL", "-f", &socket]);
                std::thread::sleep(Duration::from_millis(100));
                remove_host_leftovers(&gateway);
                let _ = std::fs::remove_dir_all(&bpf_root);
                let _ = std::fs::remove_dir(&cgroup);
                let _ = std::fs::remove_dir_all(&dir);
            })
        };
        let agent = Self {
            child: std::sync::Mutex::new(None),
            socket,
            state_dir: dir.join("state"),
            bpf_root,
            cgroup,
            pod_cidr: pod_cidr.to_string(),
            log: dir.join("agent.log"),
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            _undo: undo,
        };
        agent.spawn();
        agent
    }

    fn spawn(&self) {
        if let Err(e) = std::fs::create_dir_all(&self.cgroup) {
            panic!(
                "cannot create the test cgroup {}: {e}",
                self.cgroup.display()
            );
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log.display()));
        let mut cmd = Command::new(bin("cilium-agent"));
        cmd.arg("--socket-path")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--bpf-root")
            .arg(&self.bpf_root)
            .arg("--ipv4-pod-cidr")
            .arg(&self.pod_cidr)
            .arg("--prometheus-listen")
            .arg("")
            .args(&self.extra)
            // The test's own cgroup, unless the test brings one (service tests run clients in
            // theirs).
            .args(if self.extra.iter().any(|a| a == "--cgroup-root") {
                Vec::new()
            } else {
                vec!["--cgroup-root".into(), self.cgroup.clone().into_os_string()]
            })
            .env_remove("CILIUM_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start cilium-agent: {e}"));
        *self.lock_child() = Some(child);
        self.wait_healthy(Duration::from_secs(30));
    }

    /// Wait until `GET /v1/healthz` answers.
    pub fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.lock_child().as_mut().map(Child::try_wait);
            if let Some(Ok(Some(status))) = exited {
                panic!(
                    "cilium-agent exited early ({status}); its log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if self.ctl(&["status"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cilium-agent not healthy after {timeout:?}; its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Run ciliumctl against this agent.
    pub fn ctl(&self, args: &[&str]) -> Output {
        run(Command::new(bin("ciliumctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args))
    }

    /// Run ciliumctl; it must succeed; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        run_ok(
            Command::new(bin("ciliumctl"))
                .arg("--socket")
                .arg(&self.socket)
                .args(args),
        )
    }

    /// Run ciliumctl with `-o json` and parse the answer.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = self.ctl_ok(&a);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("ciliumctl {args:?}: bad JSON ({e}): {out}"))
    }

    /// SIGKILL the agent (pinned maps and links stay).
    pub fn kill9(&self) {
        if let Some(mut c) = self.lock_child().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns whether it exited successfully.
    pub fn terminate(&self) -> bool {
        let Some(mut c) = self.lock_child().take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Start the agent again over the same state dir and bpf root.
    pub fn restart(&self) {
        self.kill9();
        self.spawn();
    }

    fn lock_child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Environment for a cilium-cni call against this agent.
    pub fn cni_env(&self) -> Vec<(String, String)> {
        vec![(
            "CILIUM_SOCKET".to_string(),
            self.socket.display().to_string(),
        )]
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Agent {
    /// The gateway address of this agent's pod range (its first host address).
    pub fn gateway(&self) -> String {
        gateway_of(&self.pod_cidr)
    }
}

/// The first host address of `pod_cidr` (the agent's gateway).
fn gateway_of(pod_cidr: &str) -> String {
    let base = pod_cidr.split('/').next().unwrap_or_default();
    let mut octets: Vec<u8> = base.split('.').filter_map(|o| o.parse().ok()).collect();
    if let Some(last) = octets.last_mut() {
        *last = last.wrapping_add(1);
    }
    octets
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// Undo what an agent leaves on the host on purpose (so a restarted agent finds it): its
/// gateway address on `cilium_host`, and the device once no agent uses it.
fn remove_host_leftovers(gateway: &str) {
    quiet(
        "ip",
        &[
            "addr",
            "del",
            &format!("{gateway}/32"),
            "dev",
            "cilium_host",
        ],
    );
    let left = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", "cilium_host"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if left.is_empty() {
        quiet("ip", &["link", "del", "cilium_host"]);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        remove_host_leftovers(&self.gateway());
        let _ = std::fs::remove_dir_all(&self.bpf_root);
        // Empty once the agent's links are unpinned and no test process is left in it.
        let _ = std::fs::remove_dir(&self.cgroup);
        if std::thread::panicking() {
            eprintln!("agent log ({}):\n{}", self.log.display(), self.log_text());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The network configuration the tests give cilium-cni.
pub fn net_conf(version: &str) -> String {
    format!(r#"{{"cniVersion":"{version}","name":"cilium","type":"cilium-cni"}}"#)
}

/// The outcome of one cilium-cni call.
#[derive(Debug)]
pub struct CniOutcome {
    /// Exit code.
    pub code: i32,
    /// stdout parsed as JSON (Null when empty).
    pub json: serde_json::Value,
    /// stderr.
    pub stderr: String,
}

/// One CNI attachment's variables.
#[derive(Debug, Clone)]
pub struct CniCall<'a> {
    /// CNI_COMMAND.
    pub command: &'a str,
    /// CNI_CONTAINERID.
    pub container_id: &'a str,
    /// CNI_NETNS.
    pub netns: &'a str,
    /// CNI_IFNAME.
    pub ifname: &'a str,
    /// CNI_ARGS.
    pub args: &'a str,
}

impl Agent {
    /// Run cilium-cni with the CNI variables of `call` and `stdin` as the network config.
    pub fn cni(&self, call: &CniCall<'_>, stdin: &str) -> CniOutcome {
        use std::io::Write as _;
        let mut cmd = Command::new(bin("cilium-cni"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CILIUM_SOCKET", &self.socket)
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in [
            ("CNI_COMMAND", call.command),
            ("CNI_CONTAINERID", call.container_id),
            ("CNI_NETNS", call.netns),
            ("CNI_IFNAME", call.ifname),
            ("CNI_ARGS", call.args),
        ] {
            if !v.is_empty() {
                cmd.env(k, v);
            }
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run cilium-cni: {e}"));
        if let Some(mut si) = child.stdin.take() {
            let _ = si.write_all(stdin.as_bytes());
        }
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("cilium-cni: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        CniOutcome {
            code: out.status.code().unwrap_or(-1),
            json: if stdout.trim().is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_str(&stdout)
                    .unwrap_or_else(|e| panic!("cilium-cni printed non-JSON ({e}): {stdout}"))
            },
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// A pod: a network namespace plus its CNI attachment, deleted (CNI DEL, then the namespace)
/// on drop.
pub struct Pod<'a> {
    /// The agent that wired it.
    pub agent: &'a Agent,
    /// Its namespace.
    pub netns: Netns,
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// The address it got.
    pub ip: std::net::Ipv4Addr,
    /// The ADD result.
    pub result: serde_json::Value,
}

impl<'a> Pod<'a> {
    /// Create a namespace and ADD it through cilium-cni with `args` as CNI_ARGS.
    pub fn add(agent: &'a Agent, args: &str) -> Self {
        let netns = Netns::new("pod");
        let container_id = unique("ctr");
        let path = netns.path().display().to_string();
        let out = agent.cni(
            &CniCall {
                command: "ADD",
                container_id: &container_id,
                netns: &path,
                ifname: "eth0",
                args,
            },
            &net_conf("1.1.0"),
        );
        assert_eq!(out.code, 0, "CNI ADD failed: {} {}", out.json, out.stderr);
        let ip = out.json["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in the ADD result: {}", out.json));
        Self {
            agent,
            netns,
            container_id,
            ip,
            result: out.json,
        }
    }

    /// Run a program inside the pod; returns the output.
    pub fn exec(&self, prog: &str, args: &[&str]) -> Output {
        run(self.netns.cmd(prog).args(args))
    }

    /// Ping `dst` from the pod (`count` packets); true when all answered.
    pub fn ping(&self, dst: &str, count: u32) -> bool {
        self.exec(
            "ping",
            &["-c", &count.to_string(), "-i", "0.2", "-W", "2", "-q", dst],
        )
        .status
        .success()
    }

    /// CNI DEL of this pod; returns the outcome.
    pub fn del(&self) -> CniOutcome {
        let path = self.netns.path().display().to_string();
        self.agent.cni(
            &CniCall {
                command: "DEL",
                container_id: &self.container_id,
                netns: &path,
                ifname: "eth0",
                args: "",
            },
            &net_conf("1.1.0"),
        )
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        let _ = self.del();
    }
}

/// A background process (a server in a pod, `ciliumctl monitor`, ...), killed on drop.
pub struct Bg {
    child: Option<Child>,
    _undo: OnInterrupt,
}

impl Bg {
    /// Spawn `cmd` with stdout captured.
    pub fn spawn(cmd: &mut Command) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let pid = child.id().to_string();
        Self {
            child: Some(child),
            _undo: on_interrupt(move || quiet("kill", &["-KILL", &pid])),
        }
    }

    /// Kill it and return what it printed on stdout.
    pub fn stop(mut self) -> String {
        match self.child.take() {
            Some(mut c) => {
                let _ = c.kill();
                c.wait_with_output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            }
            None => String::new(),
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Wait until `f` holds, polling every 50 ms, for at most `timeout`.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
