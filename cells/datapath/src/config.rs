//! The datapath cell's flags.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};

/// How pods are connected to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatapathMode {
    /// A veth pair per pod (the `lxc…` host side carries the programs).
    Veth,
    /// netkit devices (not supported yet).
    Netkit,
}

impl DatapathMode {
    /// "veth" / "netkit".
    pub fn name(&self) -> &'static str {
        match self {
            Self::Veth => "veth",
            Self::Netkit => "netkit",
        }
    }
}

/// Flags of the datapath cell (each also `CILIUM_<FLAG>` and a YAML key).
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct DatapathFlags {
    /// Directory on bpffs where maps and endpoint links are pinned.
    #[arg(long = "bpf-root", default_value = cilium_bpf::DEFAULT_BPF_ROOT)]
    pub bpf_root: PathBuf,
    /// How pods are connected: veth (netkit is refused: the agent does not support it yet,
    /// and needs a kernel with CONFIG_NETKIT).
    #[arg(long = "datapath-mode", value_enum, default_value = "veth")]
    pub datapath_mode: DatapathMode,
    /// Conntrack lifetime of established TCP connections.
    #[arg(long = "bpf-ct-timeout-tcp", default_value = "6h", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub ct_timeout_tcp: Duration,
    /// Conntrack lifetime of TCP connections until ACK was seen both ways.
    #[arg(long = "bpf-ct-timeout-tcp-syn", default_value = "60s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub ct_timeout_tcp_syn: Duration,
    /// Conntrack lifetime of TCP connections after RST or FIN both ways.
    #[arg(long = "bpf-ct-timeout-tcp-fin", default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub ct_timeout_tcp_fin: Duration,
    /// Conntrack lifetime of non-TCP flows (UDP, ICMP, ...).
    #[arg(long = "bpf-ct-timeout-any", default_value = "60s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub ct_timeout_any: Duration,
    /// Fixed conntrack GC interval; 0 = adaptive between the min and max intervals.
    #[arg(long = "conntrack-gc-interval", default_value = "0s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub conntrack_gc_interval: Duration,
    /// Shortest adaptive conntrack GC interval.
    #[arg(long = "conntrack-gc-min-interval", default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub conntrack_gc_min_interval: Duration,
    /// Longest adaptive conntrack GC interval.
    #[arg(long = "conntrack-gc-max-interval", default_value = "12h", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub conntrack_gc_max_interval: Duration,
    /// How often BPF map entry counts (`cilium_bpf_map_entries`, fill ratio) are refreshed.
    #[arg(long = "bpf-map-pressure-interval", default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub map_pressure_interval: Duration,
    /// Emit a trace event for every forwarded packet, not only for new connections (expensive).
    #[arg(long = "monitor-trace-all", default_value_t = false)]
    pub monitor_trace_all: bool,
}

impl Default for DatapathFlags {
    fn default() -> Self {
        Self {
            bpf_root: PathBuf::from(cilium_bpf::DEFAULT_BPF_ROOT),
            datapath_mode: DatapathMode::Veth,
            ct_timeout_tcp: Duration::from_secs(6 * 3600),
            ct_timeout_tcp_syn: Duration::from_secs(60),
            ct_timeout_tcp_fin: Duration::from_secs(10),
            ct_timeout_any: Duration::from_secs(60),
            conntrack_gc_interval: Duration::ZERO,
            conntrack_gc_min_interval: Duration::from_secs(10),
            conntrack_gc_max_interval: Duration::from_secs(12 * 3600),
            map_pressure_interval: Duration::from_secs(10),
            monitor_trace_all: false,
        }
    }
}

impl DatapathFlags {
    /// The loader configuration these flags describe.
    pub fn loader_config(&self) -> cilium_bpf::DatapathConfig {
        cilium_bpf::DatapathConfig {
            bpf_root: self.bpf_root.clone(),
            ct: cilium_bpf::CtLifetimes {
                tcp_syn: self.ct_timeout_tcp_syn,
                tcp: self.ct_timeout_tcp,
                tcp_close: self.ct_timeout_tcp_fin,
                any: self.ct_timeout_any,
            },
            events: cilium_bpf::EventConfig {
                trace_all: self.monitor_trace_all,
                ..Default::default()
            },
        }
    }
}

/// Parses a humantime duration ("10s", "5m", "6h", "0s").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 10s, 5m or 6h: {e}"))
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        flags: DatapathFlags,
    }

    #[test]
    fn defaults_match_the_loader_defaults() {
        let cli = Cli::parse_from(["x"]);
        assert_eq!(
            cli.flags.loader_config().ct,
            cilium_bpf::CtLifetimes::default()
        );
        assert_eq!(cli.flags.datapath_mode, DatapathMode::Veth);
        let json = serde_json::to_value(&cli.flags).unwrap();
        assert_eq!(json["ct_timeout_tcp"], "6h");
        assert_eq!(json["datapath_mode"], "veth");
    }

    #[test]
    fn parses_durations_and_rejects_garbage() {
        let cli = Cli::parse_from([
            "x",
            "--bpf-ct-timeout-any",
            "2m",
            "--datapath-mode",
            "netkit",
        ]);
        assert_eq!(cli.flags.ct_timeout_any, Duration::from_secs(120));
        assert_eq!(cli.flags.datapath_mode, DatapathMode::Netkit);
        let err = Cli::try_parse_from(["x", "--bpf-ct-timeout-tcp", "soon"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not a duration"), "{err}");
    }
}
