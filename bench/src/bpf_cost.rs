//! Where the CPU of a connection goes: the run time of our BPF programs (the kernel's
//! `kernel.bpf_stats_enabled` counters, summed per program name over every loaded program
//! whose name starts with `cil_`) and the busy time of all CPUs (`/proc/stat`) over the same
//! window, each divided by the connections made in it.
//!
//! Stats cost two clock reads per program run, so they are only on during these passes, never
//! while the main rows are measured.

use std::collections::BTreeMap;
use std::time::Duration;

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `/proc/stat` counts in USER_HZ, which is 100 on every Linux ABI this runs on.
const NS_PER_TICK: f64 = 1e7;

/// Turns the BPF run-time statistics on; puts back what was there when dropped (or when the
/// run is interrupted).
pub struct StatsOn {
    before: String,
    _undo: cilium_e2e::cleanup::OnInterrupt,
}

impl StatsOn {
    /// Enables the statistics, or says why it cannot.
    pub fn enable() -> Result<Self, String> {
        let before =
            std::fs::read_to_string(STATS_SYSCTL).map_err(|e| format!("{STATS_SYSCTL}: {e}"))?;
        let before = before.trim().to_string();
        let undo = {
            let before = before.clone();
            cilium_e2e::cleanup::on_interrupt(move || {
                let _ = std::fs::write(STATS_SYSCTL, &before);
            })
        };
        std::fs::write(STATS_SYSCTL, "1").map_err(|e| format!("{STATS_SYSCTL}: {e}"))?;
        Ok(Self {
            before,
            _undo: undo,
        })
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        let _ = std::fs::write(STATS_SYSCTL, &self.before);
    }
}

/// Run time (ns) and run count of our programs, per (truncated) program name.
pub type ProgStats = BTreeMap<String, (u64, u64)>;

/// The counters of every loaded program whose name starts with `cil_`.
pub fn prog_stats() -> ProgStats {
    let mut out = ProgStats::new();
    for p in libbpf_rs::query::ProgInfoIter::default() {
        let name = p.name.to_string_lossy().into_owned();
        if !name.starts_with("cil_") {
            continue;
        }
        let e = out.entry(name).or_default();
        e.0 += p.run_time_ns;
        e.1 += p.run_cnt;
    }
    out
}

/// Busy time of all CPUs since boot (user, nice, system, irq, softirq, steal), in ns.
pub fn cpu_busy_ns() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: f64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum();
    busy * NS_PER_TICK
}

/// One measured path.
#[derive(Debug, Clone)]
pub struct Cost {
    /// What was measured.
    pub path: String,
    /// Connections per second during the pass.
    pub rate: f64,
    /// CPU time (all CPUs, kernel and user) per connection, ns.
    pub cpu_ns: f64,
    /// Run time of our programs per connection, ns.
    pub bpf_ns: f64,
    /// Per program: runs per connection and ns per run.
    pub programs: Vec<(String, f64, f64)>,
}

impl Cost {
    /// From the counters before and after a window of `dur` in which `conns` connections
    /// were made.
    pub fn from_window(
        path: &str,
        conns: f64,
        dur: Duration,
        (progs0, cpu0): (&ProgStats, f64),
        (progs1, cpu1): (&ProgStats, f64),
    ) -> Option<Self> {
        if conns < 1.0 || dur.is_zero() {
            return None;
        }
        let rate = conns / dur.as_secs_f64();
        let mut bpf = 0.0;
        let mut programs = Vec::new();
        for (name, &(t1, n1)) in progs1 {
            let (t0, n0) = progs0.get(name).copied().unwrap_or_default();
            let (dt, dn) = (t1.saturating_sub(t0) as f64, n1.saturating_sub(n0) as f64);
            if dn == 0.0 {
                continue;
            }
            bpf += dt;
            programs.push((name.clone(), dn / conns, dt / dn));
        }
        Some(Self {
            path: path.to_string(),
            rate,
            cpu_ns: (cpu1 - cpu0) / conns,
            bpf_ns: bpf / conns,
            programs,
        })
    }
}

/// The markdown table of `costs`.
pub fn table(costs: &[Cost], loops: usize, services: usize) -> String {
    let mut t = format!(
        "\n| path ({services} services) | conn/s, {loops} loops, stats on | CPU per connection (all CPUs) | our BPF programs per connection | share | runs per connection × ns per run |\n|---|---:|---:|---:|---:|---|\n"
    );
    for c in costs {
        let progs: Vec<String> = c
            .programs
            .iter()
            .map(|(n, runs, ns)| format!("{n} {runs:.1} × {ns:.0}"))
            .collect();
        t.push_str(&format!(
            "| {} | {:.0} | {:.1} µs | {:.2} µs | {:.1}% | {} |\n",
            c.path,
            c.rate,
            c.cpu_ns / 1e3,
            c.bpf_ns / 1e3,
            if c.cpu_ns > 0.0 {
                100.0 * c.bpf_ns / c.cpu_ns
            } else {
                0.0
            },
            progs.join(", ")
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divides_the_deltas_by_the_connections_of_the_window() {
        let before = ProgStats::from([
            ("cil_from_contai".to_string(), (1_000, 10)),
            ("cil_to_netdev".to_string(), (500, 5)),
        ]);
        let after = ProgStats::from([
            (
                "cil_from_contai".to_string(),
                (1_000 + 4 * 300 * 100, 10 + 4 * 100),
            ),
            ("cil_to_netdev".to_string(), (500, 5)),
            ("cil_sock4_conne".to_string(), (200 * 100, 100)),
        ]);
        let c = Cost::from_window(
            "p",
            100.0,
            Duration::from_secs(2),
            (&before, 1e9),
            (&after, 1e9 + 100.0 * 50_000.0),
        )
        .unwrap();
        assert_eq!(c.cpu_ns, 50_000.0);
        assert_eq!(c.bpf_ns, 4.0 * 300.0 + 200.0);
        assert_eq!(
            c.programs,
            vec![
                ("cil_from_contai".to_string(), 4.0, 300.0),
                ("cil_sock4_conne".to_string(), 1.0, 200.0)
            ],
            "programs that did not run are left out"
        );
        assert!(table(&[c], 4, 10).contains("| p | 50 | 50.0 µs | 1.40 µs | 2.8% |"));
        assert!(
            Cost::from_window(
                "p",
                0.0,
                Duration::from_secs(1),
                (&before, 0.0),
                (&after, 0.0)
            )
            .is_none()
        );
    }
}
