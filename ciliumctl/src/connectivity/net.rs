//! Blocking network plumbing of the connectivity test: network namespaces (`ip netns`), echo
//! servers on threads that entered a pod's namespace, and single TCP/UDP probes with a bounded
//! wait. Nothing here runs on the async runtime's thread: callers use `spawn_blocking` or their
//! own threads.

use std::fs::File;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Where named network namespaces live (`ip netns`).
pub const NETNS_DIR: &str = "/var/run/netns";

/// Path of the named network namespace `name`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run `ip {}`: {e} (is iproute2 installed?)",
                args.join(" ")
            )
        })?;
    if out.status.success() {
        Ok(())
    } else {
        anyhow::bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }
}

/// Create the named network namespace `name` and bring its `lo` up.
pub fn netns_add(name: &str) -> anyhow::Result<()> {
    ip(&["netns", "add", name])?;
    ip(&["-n", name, "link", "set", "lo", "up"])
}

/// Delete the named network namespace `name`; a missing one is not an error.
pub fn netns_del(name: &str) -> anyhow::Result<()> {
    if !netns_path(name).exists() {
        return Ok(());
    }
    ip(&["netns", "del", name])
}

/// Names of the named network namespaces that start with `prefix`.
pub fn netns_list(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut v: Vec<String> = dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// Enter the network namespace at `path` on the CALLING thread only (a thread spawned for it).
pub fn enter_netns(path: &Path) -> std::io::Result<()> {
    let f = File::open(path)?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

/// Transport protocol of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP: connect, send a line, read the answer.
    Tcp,
    /// UDP: connected socket, send a datagram, read the answer.
    Udp,
}

impl Proto {
    /// Lower-case name, as the monitor reports it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// An answer arrived; the server's name.
    Connected(String),
    /// The connection was refused (TCP RST, ICMP port unreachable or refused by socket LB).
    Refused,
    /// Nothing came back within the timeout.
    Timeout,
    /// Any other failure.
    Error(String),
}

impl std::fmt::Display for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connected(who) => write!(f, "connected ({who})"),
            Self::Refused => f.write_str("refused"),
            Self::Timeout => f.write_str("timeout"),
            Self::Error(e) => write!(f, "error: {e}"),
        }
    }
}

fn io_observed(e: &std::io::Error) -> Observed {
    match e.kind() {
        ErrorKind::ConnectionRefused => Observed::Refused,
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Observed::Timeout,
        _ => Observed::Error(e.to_string()),
    }
}

/// One TCP probe from the calling thread's namespace: connect, send `ping`, read the answer.
pub fn tcp_probe(addr: SocketAddr, timeout: Duration) -> Observed {
    let mut s = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => return io_observed(&e),
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    if let Err(e) = s.write_all(b"ping\n") {
        return io_observed(&e);
    }
    // Once connected, silence is not a drop of the connection attempt (e.g. a policy enforced
    // mid-connection): it is reported as an error, so only a refused handshake counts as dropped.
    let mut got = String::new();
    match s.read_to_string(&mut got) {
        Ok(_) if !got.trim().is_empty() => Observed::Connected(got.trim().to_string()),
        Ok(_) => Observed::Error("connected, but the server closed without an answer".into()),
        Err(e) => match io_observed(&e) {
            Observed::Timeout => Observed::Error("connected, but no answer arrived".into()),
            other => other,
        },
    }
}

/// One UDP probe from the calling thread's namespace: a connected socket (so ICMP errors and a
/// refusing socket LB show as `Refused`), two tries of send + wait half the timeout.
pub fn udp_probe(addr: SocketAddr, timeout: Duration) -> Observed {
    let s = match UdpSocket::bind("0.0.0.0:0") {
        Ok(s) => s,
        Err(e) => return Observed::Error(format!("bind: {e}")),
    };
    if let Err(e) = s.connect(addr) {
        return io_observed(&e);
    }
    let _ = s.set_read_timeout(Some(timeout / 2));
    for _ in 0..2 {
        if let Err(e) = s.send(b"ping\n") {
            return io_observed(&e);
        }
        let mut buf = [0u8; 256];
        match s.recv(&mut buf) {
            Ok(n) => {
                let text = String::from_utf8_lossy(buf.get(..n).unwrap_or_default());
                return Observed::Connected(text.trim().to_string());
            }
            Err(e) => match io_observed(&e) {
                Observed::Timeout => continue,
                other => return other,
            },
        }
    }
    Observed::Timeout
}

/// One probe of `proto` to `addr`.
pub fn probe(proto: Proto, addr: SocketAddr, timeout: Duration) -> Observed {
    match proto {
        Proto::Tcp => tcp_probe(addr, timeout),
        Proto::Udp => udp_probe(addr, timeout),
    }
}

/// Run `f` on a new thread inside the namespace `netns` (the host's when None).
pub fn in_netns<T: Send>(netns: Option<&Path>, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(p) = netns {
                enter_netns(p).map_err(|e| format!("cannot enter {}: {e}", p.display()))?;
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err("probe thread panicked".to_string()))
    })
}

/// Echo servers of one pod (or the host): threads answering every TCP connection and UDP
/// datagram with the server's name. Stopped (threads joined, sockets closed) on drop.
pub struct EchoServers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// The bound addresses (the ports actually bound when 0 was asked).
    pub tcp: Vec<SocketAddr>,
    /// The bound UDP addresses.
    pub udp: Vec<SocketAddr>,
}

impl EchoServers {
    /// Bind TCP `tcp_ports` and UDP `udp_ports` on `bind` inside `netns` (the host's when None)
    /// and serve them, answering with `name`.
    pub fn start(
        netns: Option<&Path>,
        bind: Ipv4Addr,
        tcp_ports: &[u16],
        udp_ports: &[u16],
        name: &str,
    ) -> anyhow::Result<Self> {
        // Sockets keep the namespace they were made in: bind on a thread inside it, serve anywhere.
        let (tcp, udp) = in_netns(netns, || -> std::io::Result<_> {
            let mut tcp = Vec::new();
            for p in tcp_ports {
                let l = TcpListener::bind(SocketAddrV4::new(bind, *p))?;
                l.set_nonblocking(true)?;
                tcp.push(l);
            }
            let mut udp = Vec::new();
            for p in udp_ports {
                let u = UdpSocket::bind(SocketAddrV4::new(bind, *p))?;
                u.set_read_timeout(Some(Duration::from_millis(100)))?;
                udp.push(u);
            }
            Ok((tcp, udp))
        })
        .map_err(|e| anyhow::anyhow!("echo server {name}: {e}"))?
        .map_err(|e| anyhow::anyhow!("echo server {name}: cannot bind: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut me = Self {
            stop: stop.clone(),
            threads: Vec::new(),
            tcp: tcp.iter().filter_map(|l| l.local_addr().ok()).collect(),
            udp: udp.iter().filter_map(|u| u.local_addr().ok()).collect(),
        };
        for l in tcp {
            let (stop, name) = (stop.clone(), name.to_string());
            me.threads
                .push(std::thread::spawn(move || serve_tcp(&l, &stop, &name)));
        }
        for u in udp {
            let (stop, name) = (stop.clone(), name.to_string());
            me.threads
                .push(std::thread::spawn(move || serve_udp(&u, &stop, &name)));
        }
        Ok(me)
    }
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_tcp(l: &TcpListener, stop: &AtomicBool, name: &str) {
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((mut s, _)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                // Read the request line first, so closing never resets unread data.
                let mut buf = [0u8; 64];
                let deadline = Instant::now() + Duration::from_millis(500);
                let mut got = 0;
                while got < buf.len() && Instant::now() < deadline {
                    match s.read(buf.get_mut(got..).unwrap_or_default()) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            got += n;
                            if buf.get(..got).is_some_and(|b| b.contains(&b'\n')) {
                                break;
                            }
                        }
                    }
                }
                let _ = s.write_all(format!("{name}\n").as_bytes());
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn serve_udp(u: &UdpSocket, stop: &AtomicBool, name: &str) {
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((_, from)) = u.recv_from(&mut buf) {
            let _ = u.send_to(format!("{name}\n").as_bytes(), from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_servers_answer_tcp_and_udp_on_loopback() {
        let s = EchoServers::start(None, Ipv4Addr::LOCALHOST, &[0], &[0], "echo-x").unwrap();
        let t = Duration::from_secs(2);
        assert_eq!(tcp_probe(s.tcp[0], t), Observed::Connected("echo-x".into()));
        assert_eq!(udp_probe(s.udp[0], t), Observed::Connected("echo-x".into()));
    }

    #[test]
    fn closed_ports_are_refused_not_timeouts() {
        // Bind and drop to find a port nothing listens on.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert_eq!(tcp_probe(port, Duration::from_secs(2)), Observed::Refused);
        let uport = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert_eq!(udp_probe(uport, Duration::from_secs(2)), Observed::Refused);
    }
}
