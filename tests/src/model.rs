//! The upstream network-policy conformance model built from the real binaries: namespaces x, y,
//! z, pods a, b, c in each (Namespace and Pod objects through `ciliumctl apply`, attachments
//! through cilium-cni), every pod serving TCP and UDP on ports 80 and 81, and real probes from
//! pod to pod whose results form the 9×9 matrices the [`crate::oracle`] predicts.
//!
//! Servers and probes run in this process on threads that entered the pod's network namespace
//! (`setns` on that thread only), which keeps a full matrix of 324 probes to about the probe
//! timeout: a TCP server answers every connection with the pod's key (`x/a`), a UDP server
//! answers every datagram with it, and a probe succeeds only when that exact token arrives.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::oracle::{Matrix, ModelNamespace, ModelPod, Oracle, Proto};
use crate::{Agent, Pod, bin};

/// The model's namespaces.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// The model's pod names (in every namespace).
pub const PODS: [&str; 3] = ["a", "b", "c"];
/// Every port and protocol the model serves and probes.
pub const PORTS: [(u16, Proto); 4] = [
    (80, Proto::Tcp),
    (81, Proto::Tcp),
    (80, Proto::Udp),
    (81, Proto::Udp),
];
/// How long a TCP connect or a UDP answer is awaited.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Enter the network namespace at `path` on the CALLING thread. Call it only on a thread spawned
/// for the purpose (never on a shared or async worker thread).
pub fn enter_netns(path: &Path) -> std::io::Result<()> {
    let f = File::open(path)?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

/// Run `f` on a new thread inside the network namespace at `path` and return its result.
pub fn run_in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(path)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("thread in the netns panicked")))
    })
}

/// A Namespace object of the model with extra labels.
pub fn namespace_yaml(name: &str, extra: &[(&str, &str)]) -> String {
    let mut labels = format!("    ns: {name}\n    kubernetes.io/metadata.name: {name}\n");
    for (k, v) in extra {
        labels.push_str(&format!("    {k}: {v:?}\n"));
    }
    format!("---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n{labels}")
}

/// A Pod object of the model with extra labels.
pub fn pod_yaml(ns: &str, name: &str, extra: &[(&str, &str)]) -> String {
    let mut labels = format!("    pod: {name}\n");
    for (k, v) in extra {
        labels.push_str(&format!("    {k}: {v:?}\n"));
    }
    let mut ports = String::new();
    for (port, proto) in PORTS {
        ports.push_str(&format!(
            "    - name: serve-{port}-{}\n      containerPort: {port}\n      protocol: {}\n",
            proto.name().to_lowercase(),
            proto.name()
        ));
    }
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n{labels}spec:\n  containers:\n  - name: server\n    image: none\n    ports:\n{ports}"
    )
}

/// Every Namespace and Pod object of the model with its original labels.
pub fn base_yaml() -> String {
    let mut s = String::new();
    for ns in NAMESPACES {
        s.push_str(&namespace_yaml(ns, &[]));
    }
    for ns in NAMESPACES {
        for p in PODS {
            s.push_str(&pod_yaml(ns, p, &[]));
        }
    }
    s
}

/// Run ciliumctl against `agent` with `input` on stdin.
pub fn ctl_stdin(agent: &Agent, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(bin("ciliumctl"))
        .arg("--socket")
        .arg(&agent.socket)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run ciliumctl: {e}"));
    if let Some(mut si) = child.stdin.take() {
        let _ = si.write_all(input.as_bytes());
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("ciliumctl: {e}"))
}

/// `ciliumctl apply -f -` (or `delete`) of `yaml`; Err carries ciliumctl's message.
pub fn ctl_apply(agent: &Agent, verb: &str, yaml: &str) -> Result<(), String> {
    let out = ctl_stdin(agent, &[verb, "-f", "-"], yaml);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ciliumctl {verb} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

/// A TCP probe from inside the current thread's namespace: connect, read the token.
fn tcp_probe(addr: SocketAddr, token: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
    let mut got = String::new();
    let _ = s.read_to_string(&mut got);
    got.trim() == token
}

/// A UDP probe from inside the current thread's namespace: two tries of send + await the token.
fn udp_probe(addr: SocketAddr, token: &str) -> bool {
    let Ok(s) = UdpSocket::bind("0.0.0.0:0") else {
        return false;
    };
    let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
    for _ in 0..2 {
        if s.send_to(b"probe", addr).is_err() {
            continue;
        }
        let mut buf = [0u8; 128];
        if let Ok((n, from)) = s.recv_from(&mut buf)
            && from == addr
            && String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).trim() == token
        {
            return true;
        }
    }
    false
}

/// The conformance model: an agent, the 9 pods with their servers, and the oracle's base model
/// (no policy, original labels).
pub struct Cluster<'a> {
    // Dropped first: closes the servers before the pods go.
    _runtime: tokio::runtime::Runtime,
    /// The agent.
    pub agent: &'a Agent,
    /// The pods, in matrix order x/a, x/b, x/c, y/a, ... z/c.
    pub pods: Vec<Pod<'a>>,
    /// The pods' keys (`x/a`) in the same order.
    pub keys: Vec<String>,
    /// The oracle's model of this cluster with no policy.
    pub base: Oracle,
}

impl<'a> Cluster<'a> {
    /// Apply the Namespace and Pod objects, ADD the 9 pods through cilium-cni and start their
    /// servers.
    pub fn build(agent: &'a Agent) -> Self {
        if let Err(e) = ctl_apply(agent, "apply", &base_yaml()) {
            panic!("applying the model's namespaces and pods: {e}");
        }
        let keys: Vec<(String, String)> = NAMESPACES
            .iter()
            .flat_map(|ns| PODS.iter().map(move |p| (ns.to_string(), p.to_string())))
            .collect();
        let pods: Vec<Pod<'a>> = std::thread::scope(|s| {
            let handles: Vec<_> = keys
                .iter()
                .map(|(ns, p)| {
                    s.spawn(move || {
                        Pod::add(agent, &format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={p}"))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| panic!("CNI ADD of a model pod failed"))
                })
                .collect()
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
        for (pod, (ns, name)) in pods.iter().zip(&keys) {
            start_servers(&runtime, &pod.netns.path(), &format!("{ns}/{name}"));
        }
        let namespaces = NAMESPACES
            .iter()
            .map(|ns| ModelNamespace {
                name: ns.to_string(),
                labels: [("ns", *ns), ("kubernetes.io/metadata.name", *ns)]
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })
            .collect();
        let model_pods = pods
            .iter()
            .zip(&keys)
            .map(|(pod, (ns, name))| ModelPod {
                namespace: ns.clone(),
                name: name.clone(),
                labels: [("pod".to_string(), name.clone())].into_iter().collect(),
                ip: pod.ip,
                named_ports: PORTS
                    .iter()
                    .map(|(port, proto)| {
                        (
                            format!("serve-{port}-{}", proto.name().to_lowercase()),
                            (*port, *proto),
                        )
                    })
                    .collect(),
                service_account: "default".into(),
            })
            .collect();
        Self {
            _runtime: runtime,
            agent,
            pods,
            keys: keys.iter().map(|(n, p)| format!("{n}/{p}")).collect(),
            base: Oracle::new(namespaces, model_pods),
        }
    }

    /// Index of the pod `ns/name`.
    pub fn index(&self, key: &str) -> Option<usize> {
        self.keys.iter().position(|k| k == key)
    }

    /// Address of the pod `ns/name`.
    pub fn ip(&self, key: &str) -> Option<Ipv4Addr> {
        self.index(key).and_then(|i| self.pods.get(i)).map(|p| p.ip)
    }

    /// Replace `{{ip:NS/POD}}` with the pod's address and `{{podcidr}}` with the agent's pod
    /// range in a policy template.
    pub fn render(&self, template: &str) -> String {
        let mut s = template.replace("{{podcidr}}", &self.agent.pod_cidr);
        for k in &self.keys {
            if let Some(ip) = self.ip(k) {
                s = s.replace(&format!("{{{{ip:{k}}}}}"), &ip.to_string());
            }
        }
        s
    }

    /// One probe from pod `src` to pod `dst` on `port`/`proto`: true when the answer arrived.
    pub fn probe(&self, src: usize, dst: usize, port: u16, proto: Proto) -> bool {
        let (Some(s), Some(d), Some(token)) =
            (self.pods.get(src), self.pods.get(dst), self.keys.get(dst))
        else {
            return false;
        };
        let addr = SocketAddr::from((d.ip, port));
        run_in_netns(&s.netns.path(), || match proto {
            Proto::Tcp => tcp_probe(addr, token),
            Proto::Udp => udp_probe(addr, token),
            Proto::Sctp => false,
        })
        .unwrap_or(false)
    }

    /// The observed matrices for `ports`, every probe on its own thread in parallel.
    pub fn probe_matrices(&self, ports: &[(u16, Proto)]) -> Vec<Matrix> {
        let n = self.pods.len();
        let results: Vec<Vec<Vec<bool>>> = std::thread::scope(|s| {
            let handles: Vec<Vec<Vec<_>>> = ports
                .iter()
                .map(|&(port, proto)| {
                    (0..n)
                        .map(|i| {
                            (0..n)
                                .map(|j| s.spawn(move || self.probe(i, j, port, proto)))
                                .collect()
                        })
                        .collect()
                })
                .collect();
            handles
                .into_iter()
                .map(|m| {
                    m.into_iter()
                        .map(|r| r.into_iter().map(|h| h.join().unwrap_or(false)).collect())
                        .collect()
                })
                .collect()
        });
        ports
            .iter()
            .zip(results)
            .map(|(&(port, proto), cells)| Matrix {
                port,
                proto,
                names: self.keys.clone(),
                cells,
            })
            .collect()
    }

    /// Probe until the observed matrices equal `expected` or `timeout` passed (at least one
    /// round); returns the last observation and the number of rounds.
    pub fn probe_until(&self, expected: &[Matrix], timeout: Duration) -> (Vec<Matrix>, u32) {
        let ports: Vec<(u16, Proto)> = expected.iter().map(|m| (m.port, m.proto)).collect();
        let deadline = Instant::now() + timeout;
        let mut rounds = 0;
        loop {
            let observed = self.probe_matrices(&ports);
            rounds += 1;
            if observed == expected || Instant::now() >= deadline {
                return (observed, rounds);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ciliumctl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) -> Result<(), String> {
        ctl_apply(self.agent, "apply", yaml)
    }

    /// `ciliumctl delete -f -` of `yaml`.
    pub fn delete(&self, yaml: &str) -> Result<(), String> {
        ctl_apply(self.agent, "delete", yaml)
    }
}

/// Bind the four servers inside the pod's namespace and serve them on `rt`.
fn start_servers(rt: &tokio::runtime::Runtime, netns: &Path, token: &str) {
    let bound = run_in_netns(netns, || -> std::io::Result<_> {
        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        for port in [80u16, 81] {
            let l = std::net::TcpListener::bind(("0.0.0.0", port))?;
            l.set_nonblocking(true)?;
            tcp.push(l);
            let u = UdpSocket::bind(("0.0.0.0", port))?;
            u.set_nonblocking(true)?;
            udp.push(u);
        }
        Ok((tcp, udp))
    });
    let (tcp, udp) = match bound {
        Ok(Ok(b)) => b,
        Ok(Err(e)) | Err(e) => panic!("binding the servers of {token}: {e}"),
    };
    let _guard = rt.enter();
    for l in tcp {
        let l = tokio::net::TcpListener::from_std(l)
            .unwrap_or_else(|e| panic!("tokio listener of {token}: {e}"));
        let token = format!("{token}\n");
        rt.spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            while let Ok((mut c, _)) = l.accept().await {
                let token = token.clone();
                tokio::spawn(async move {
                    let _ = c.write_all(token.as_bytes()).await;
                    let _ = c.shutdown().await;
                });
            }
        });
    }
    for u in udp {
        let u = tokio::net::UdpSocket::from_std(u)
            .unwrap_or_else(|e| panic!("tokio UDP socket of {token}: {e}"));
        let token = format!("{token}\n");
        rt.spawn(async move {
            let mut buf = [0u8; 256];
            while let Ok((_, from)) = u.recv_from(&mut buf).await {
                let _ = u.send_to(token.as_bytes(), from).await;
            }
        });
    }
}

/// What `ciliumctl policy explain` said for one flow.
#[derive(Debug, Clone)]
pub enum Explained {
    /// The command is not there (yet).
    Unsupported(String),
    /// Its verdict: true = allowed.
    Verdict(bool),
    /// It failed or answered something unreadable.
    Error(String),
}

/// Read a verdict out of explain's JSON: a boolean `allowed`, or a `verdict`/`decision` string
/// starting with allow / deny / drop.
pub fn explain_verdict(v: &serde_json::Value) -> Option<bool> {
    if let Some(b) = v.get("allowed").and_then(serde_json::Value::as_bool) {
        return Some(b);
    }
    for key in ["verdict", "decision", "result"] {
        let s = match v.get(key) {
            Some(serde_json::Value::String(s)) => s.to_ascii_lowercase(),
            Some(o @ serde_json::Value::Object(_)) => {
                if let Some(b) = explain_verdict(o) {
                    return Some(b);
                }
                continue;
            }
            _ => continue,
        };
        if s.starts_with("allow") || s == "forwarded" {
            return Some(true);
        }
        if s.starts_with("den") || s.starts_with("drop") || s.starts_with("block") {
            return Some(false);
        }
    }
    None
}

impl Cluster<'_> {
    /// Whether `ciliumctl policy explain` exists.
    pub fn explain_supported(&self) -> Result<(), String> {
        let out = self.agent.ctl(&["policy", "explain", "--help"]);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("policy explain failed")
                .to_string())
        }
    }

    /// `ciliumctl policy explain --from SRC --to DST --port N/PROTO -o json`.
    pub fn explain(&self, src: usize, dst: usize, port: u16, proto: Proto) -> Explained {
        let (Some(from), Some(to)) = (self.keys.get(src), self.keys.get(dst)) else {
            return Explained::Error("no such pod".into());
        };
        let mut last = String::new();
        for p in [proto.name().to_string(), proto.name().to_lowercase()] {
            let port_arg = format!("{port}/{p}");
            let out = self.agent.ctl(&[
                "policy", "explain", "--from", from, "--to", to, "--port", &port_arg, "-o", "json",
            ]);
            let stdout = String::from_utf8_lossy(&out.stdout);
            // `policy explain` exits 1 for a denied flow (like grep for no match) and still
            // prints its JSON answer.
            if out.status.success() || stdout.trim_start().starts_with('{') {
                return match serde_json::from_str::<serde_json::Value>(&stdout) {
                    Ok(v) => match explain_verdict(&v) {
                        Some(b) => Explained::Verdict(b),
                        None => Explained::Error(format!("no verdict in {v}")),
                    },
                    Err(e) => Explained::Error(format!("not JSON ({e}): {stdout}")),
                };
            }
            last = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if last.contains("unrecognized subcommand") {
                return Explained::Unsupported(last);
            }
        }
        Explained::Error(last)
    }
}
