//! `lb-client`: the small server and clients the service e2e tests and `bench-lb` run inside
//! pod namespaces (and inside the agent's test cgroup, so the socket hooks see them).
//!
//! ```text
//! lb-client serve TOKEN [--tcp P[,P]] [--udp P[,P]]    answer "TOKEN CLIENT-IP" per connection/datagram
//! lb-client tcp ADDR:PORT COUNT [TIMEOUT_MS]           COUNT connections, one result line each
//! lb-client udp ADDR:PORT COUNT [TIMEOUT_MS]           one unconnected socket, COUNT datagrams
//! lb-client udp-connected ADDR:PORT COUNT [TIMEOUT_MS] one connected socket, COUNT datagrams
//! lb-client udp-stdin ADDR:PORT [TIMEOUT_MS]           one unconnected socket, a datagram per stdin line
//! lb-client rate ADDR:PORT[,ADDR:PORT...] DURATION_MS [LOOPS]
//!                                                      connect + read to EOF + close in a loop
//!                                                      (LOOPS threads, default 1; each connection
//!                                                      to the next address); JSON
//! ```
//!
//! `LB_CLIENT_BIND=IP` makes `tcp` connect from that source address, `LB_CLIENT_TTL=N` with
//! that IP TTL.
//!
//! A result line is `ok TOKEN SEEN-CLIENT-IP REPLY-FROM` (REPLY-FROM: the peer as the socket
//! reports it, getpeername for TCP, recvfrom's address for UDP) or `err KIND` where KIND is
//! `refused`, `timeout`, `host-unreachable`, `net-unreachable`, `reset`, `denied` (EPERM) or the OS
//! error.

use std::io::{BufRead as _, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn kind(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "refused".into(),
        K::TimedOut | K::WouldBlock => "timeout".into(),
        K::HostUnreachable => "host-unreachable".into(),
        K::NetworkUnreachable => "net-unreachable".into(),
        K::ConnectionReset => "reset".into(),
        _ if e.raw_os_error() == Some(nix::libc::EPERM) => "denied".into(),
        _ if e.raw_os_error() == Some(nix::libc::EINPROGRESS) => "timeout".into(),
        _ => format!("os-{}", e.raw_os_error().unwrap_or(-1)),
    }
}

fn ports(arg: Option<&String>) -> Vec<u16> {
    arg.map(|s| s.split(',').filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

fn serve(token: &str, tcp: &[u16], udp: &[u16]) -> ExitCode {
    let mut threads = Vec::new();
    for &p in tcp {
        let l = match TcpListener::bind(("0.0.0.0", p)) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("lb-client serve: bind tcp/{p}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let token = token.to_string();
        threads.push(std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                let peer = c
                    .peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                let _ = c.write_all(format!("{token} {peer}\n").as_bytes());
            }
        }));
    }
    for &p in udp {
        let u = match UdpSocket::bind(("0.0.0.0", p)) {
            Ok(u) => u,
            Err(e) => {
                eprintln!("lb-client serve: bind udp/{p}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let token = token.to_string();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((_, from)) = u.recv_from(&mut buf) {
                let _ = u.send_to(format!("{token} {}\n", from.ip()).as_bytes(), from);
            }
        }));
    }
    println!("serving");
    let _ = std::io::stdout().flush();
    for t in threads {
        let _ = t.join();
    }
    ExitCode::SUCCESS
}

/// A TCP connection from `src` (else any address; port chosen by the kernel) with IP TTL
/// `ttl` (else the default) to `addr`, giving up after `timeout` (SO_SNDTIMEO bounds a
/// blocking connect).
fn connect_with(
    src: Option<std::net::Ipv4Addr>,
    ttl: Option<i32>,
    addr: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket, sockopt,
    };
    use std::os::fd::AsRawFd as _;
    let SocketAddr::V4(dst) = addr else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    if let Some(src) = src {
        bind(
            fd.as_raw_fd(),
            &SockaddrIn::from(std::net::SocketAddrV4::new(src, 0)),
        )?;
    }
    if let Some(ttl) = ttl {
        setsockopt(&fd, sockopt::Ipv4Ttl, &ttl)?;
    }
    let tv = nix::sys::time::TimeVal::new(
        i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        i64::from(timeout.subsec_micros()),
    );
    setsockopt(&fd, sockopt::SendTimeout, &tv)?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(dst))?;
    Ok(TcpStream::from(fd))
}

fn tcp_once(addr: SocketAddr, timeout: Duration) -> String {
    let bind = std::env::var("LB_CLIENT_BIND")
        .ok()
        .and_then(|b| b.parse::<std::net::Ipv4Addr>().ok());
    let ttl = std::env::var("LB_CLIENT_TTL")
        .ok()
        .and_then(|t| t.parse::<i32>().ok());
    let conn = if bind.is_some() || ttl.is_some() {
        connect_with(bind, ttl, addr, timeout)
    } else {
        TcpStream::connect_timeout(&addr, timeout)
    };
    let mut s = match conn {
        Ok(s) => s,
        Err(e) => return format!("err {}", kind(&e)),
    };
    let from = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let _ = s.set_read_timeout(Some(timeout));
    let mut got = String::new();
    match s.read_to_string(&mut got) {
        Ok(_) if !got.trim().is_empty() => format!("ok {} {from}", got.trim()),
        Ok(_) => "err empty".into(),
        Err(e) => format!("err {}", kind(&e)),
    }
}

fn udp_once(s: &UdpSocket, addr: Option<SocketAddr>) -> String {
    let sent = match addr {
        Some(a) => s.send_to(b"probe", a),
        None => s.send(b"probe"),
    };
    if let Err(e) = sent {
        return format!("err {}", kind(&e));
    }
    let mut buf = [0u8; 1500];
    match s.recv_from(&mut buf) {
        Ok((n, from)) => format!(
            "ok {} {from}",
            String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).trim()
        ),
        Err(e) => format!("err {}", kind(&e)),
    }
}

fn udp_socket(timeout: Duration) -> Result<UdpSocket, String> {
    let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| format!("timeout: {e}"))?;
    Ok(s)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(idx).copied().unwrap_or(0)
}

/// What one connection loop of `rate` saw.
#[derive(Default)]
struct RateLoop {
    ok: u64,
    failed: u64,
    lat: Vec<u64>,
    last_err: String,
}

/// Connections in a loop until `dur` after `start`, each to the next of `addrs` (starting
/// at `first`).
fn rate_loop(addrs: &[SocketAddr], first: usize, dur: Duration, start: Instant) -> RateLoop {
    let mut r = RateLoop::default();
    let mut next = first;
    while start.elapsed() < dur {
        let Some(addr) = addrs.get(next % addrs.len().max(1)) else {
            break;
        };
        next += 1;
        let t0 = Instant::now();
        match TcpStream::connect_timeout(addr, Duration::from_secs(1)) {
            Ok(mut s) => {
                r.lat.push(t0.elapsed().as_micros() as u64);
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                r.ok += 1;
            }
            Err(e) => {
                r.failed += 1;
                r.last_err = kind(&e);
            }
        }
    }
    r
}

/// `loops` threads each connecting in a loop for `dur`; the summed rate and the latency
/// percentiles over every connection.
fn rate(addrs: &[SocketAddr], dur: Duration, loops: usize) -> String {
    let start = Instant::now();
    let handles: Vec<_> = (0..loops.max(1))
        .map(|i| {
            let addrs = addrs.to_vec();
            std::thread::spawn(move || rate_loop(&addrs, i, dur, start))
        })
        .collect();
    let mut all = RateLoop::default();
    for h in handles {
        let Ok(r) = h.join() else { continue };
        all.ok += r.ok;
        all.failed += r.failed;
        all.lat.extend(r.lat);
        if !r.last_err.is_empty() {
            all.last_err = r.last_err;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    all.lat.sort_unstable();
    format!(
        r#"{{"ok":{},"failed":{},"secs":{secs},"rate":{},"p50_us":{},"p99_us":{},"last_error":"{}"}}"#,
        all.ok,
        all.failed,
        all.ok as f64 / secs,
        percentile(&all.lat, 0.5),
        percentile(&all.lat, 0.99),
        all.last_err
    )
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let addr = || -> Result<SocketAddr, String> {
        arg(1)
            .parse()
            .map_err(|e| format!("bad ADDR:PORT {:?}: {e}", arg(1)))
    };
    let num = |i: usize, default: u64| arg(i).parse::<u64>().unwrap_or(default);
    let result: Result<(), String> = (|| {
        match arg(0).as_str() {
            "serve" => {
                let flag = |name: &str| {
                    args.iter()
                        .position(|a| a == name)
                        .and_then(|i| args.get(i + 1))
                };
                let code = serve(&arg(1), &ports(flag("--tcp")), &ports(flag("--udp")));
                if code != ExitCode::SUCCESS {
                    return Err("serve failed".into());
                }
            }
            "tcp" => {
                let a = addr()?;
                let timeout = Duration::from_millis(num(3, 3000));
                for _ in 0..num(2, 1) {
                    println!("{}", tcp_once(a, timeout));
                }
            }
            "udp" | "udp-connected" => {
                let a = addr()?;
                let s = udp_socket(Duration::from_millis(num(3, 2000)))?;
                let target = if arg(0) == "udp" {
                    Some(a)
                } else {
                    s.connect(a).map_err(|e| format!("err {}", kind(&e)))?;
                    None
                };
                for _ in 0..num(2, 1) {
                    println!("{}", udp_once(&s, target));
                }
            }
            "udp-stdin" => {
                let a = addr()?;
                let s = udp_socket(Duration::from_millis(num(2, 1000)))?;
                let local = s.local_addr().map(|l| l.to_string()).unwrap_or_default();
                println!("local {local}");
                let _ = std::io::stdout().flush();
                for line in std::io::stdin().lock().lines() {
                    if line.is_err() {
                        break;
                    }
                    println!("{}", udp_once(&s, Some(a)));
                    let _ = std::io::stdout().flush();
                }
            }
            "rate" => {
                let a: Vec<SocketAddr> = arg(1)
                    .split(',')
                    .map(|a| a.parse().map_err(|e| format!("bad ADDR:PORT {a:?}: {e}")))
                    .collect::<Result<_, _>>()?;
                let loops = usize::try_from(num(3, 1)).unwrap_or(1);
                println!("{}", rate(&a, Duration::from_millis(num(2, 1000)), loops));
            }
            other => {
                return Err(format!(
                    "unknown mode {other:?} (serve|tcp|udp|udp-connected|udp-stdin|rate)"
                ));
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A connect error of udp-connected is a result line, not a usage error.
            if e.starts_with("err ") {
                println!("{e}");
                return ExitCode::SUCCESS;
            }
            eprintln!("lb-client: {e}");
            ExitCode::from(2)
        }
    }
}
