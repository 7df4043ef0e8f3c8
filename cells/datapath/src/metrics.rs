//! Datapath metrics read at scrape time: packet/byte counters from `cilium_metrics_v1`,
//! and map entries / capacity / fill ratio for every map (entry counts are refreshed by a
//! timer job, since walking a large map on every scrape is too slow).

use std::sync::Arc;

use cilium_bpf::{Datapath, reason_name};
use libbpf_rs::MapCore as _;
use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts};

use crate::error::Error;

/// Entry count and capacity of one map at the last refresh.
#[derive(Debug, Clone, PartialEq)]
pub struct MapPressure {
    /// Pinned map name.
    pub map: &'static str,
    /// Entries at the last refresh.
    pub entries: u64,
    /// Capacity.
    pub capacity: u64,
}

impl MapPressure {
    /// entries / capacity.
    pub fn ratio(&self) -> f64 {
        if self.capacity == 0 {
            0.0
        } else {
            self.entries as f64 / self.capacity as f64
        }
    }
}

/// Counts entries of every map (blocking; walks the keys).
pub fn measure(dp: &Datapath) -> Vec<MapPressure> {
    let m = dp.maps();
    let mut out = Vec::new();
    let mut typed = |map: &'static str, f: cilium_bpf::FillRatio| {
        out.push(MapPressure {
            map,
            entries: u64::from(f.entries),
            capacity: u64::from(f.max_entries),
        });
    };
    typed(m.endpoints.0.name(), m.endpoints.0.fill_ratio());
    typed(m.ipcache.0.name(), m.ipcache.0.fill_ratio());
    typed(m.conntrack.tcp.name(), m.conntrack.tcp.fill_ratio());
    typed(m.conntrack.any.name(), m.conntrack.any.fill_ratio());
    let lb = &m.lb;
    typed(lb.services.name(), lb.services.fill_ratio());
    typed(lb.backends.name(), lb.backends.fill_ratio());
    typed(lb.revnat.name(), lb.revnat.fill_ratio());
    typed(lb.affinity.name(), lb.affinity.fill_ratio());
    typed(lb.sk.name(), lb.sk.fill_ratio());
    typed(lb.sk_fwd.name(), lb.sk_fwd.fill_ratio());
    typed(lb.snat.name(), lb.snat.fill_ratio());
    typed(lb.src_range.name(), lb.src_range.fill_ratio());
    // `cilium_config_v1` is an array of one slot, always full: no pressure to report.
    let metrics = &m.metrics.0;
    out.push(MapPressure {
        map: "cilium_metrics_v1",
        entries: metrics.keys().count() as u64,
        capacity: u64::from(metrics.max_entries()),
    });
    out
}

/// The prometheus collector of the datapath; register it in the hive's registry.
pub struct DatapathCollector {
    dp: Arc<Datapath>,
    pressure: Arc<Mutex<Vec<MapPressure>>>,
    packets: IntCounterVec,
    bytes: IntCounterVec,
    entries: IntGaugeVec,
    capacity: IntGaugeVec,
    fill: GaugeVec,
    descs: Vec<Desc>,
}

impl std::fmt::Debug for DatapathCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatapathCollector").finish_non_exhaustive()
    }
}

impl DatapathCollector {
    /// A collector over `dp`, reading map pressure from `pressure` (kept fresh by
    /// [`refresh`]).
    pub fn new(dp: Arc<Datapath>, pressure: Arc<Mutex<Vec<MapPressure>>>) -> Result<Self, Error> {
        let packets = IntCounterVec::new(
            Opts::new(
                "cilium_datapath_packets_total",
                "Packets forwarded or dropped by the datapath, by reason and direction",
            ),
            &["reason", "direction"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "cilium_datapath_bytes_total",
                "Bytes forwarded or dropped by the datapath, by reason and direction",
            ),
            &["reason", "direction"],
        )?;
        let entries = IntGaugeVec::new(
            Opts::new("cilium_bpf_map_entries", "Entries in a BPF map"),
            &["map"],
        )?;
        let capacity = IntGaugeVec::new(
            Opts::new("cilium_bpf_map_capacity", "Maximum entries of a BPF map"),
            &["map"],
        )?;
        let fill = GaugeVec::new(
            Opts::new(
                "cilium_bpf_map_fill_ratio",
                "Entries divided by capacity of a BPF map (0..1)",
            ),
            &["map"],
        )?;
        let descs = [
            packets.desc(),
            bytes.desc(),
            entries.desc(),
            capacity.desc(),
            fill.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        Ok(Self {
            dp,
            pressure,
            packets,
            bytes,
            entries,
            capacity,
            fill,
            descs,
        })
    }
}

/// Refreshes the cached map pressure (blocking).
pub fn refresh(dp: &Datapath, pressure: &Mutex<Vec<MapPressure>>) {
    let fresh = measure(dp);
    *pressure.lock() = fresh;
}

impl Collector for DatapathCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // Values are absolute (the BPF map counts since it was created), so each scrape
        // starts from fresh vectors.
        self.packets.reset();
        self.bytes.reset();
        self.entries.reset();
        self.capacity.reset();
        self.fill.reset();
        match self.dp.maps().metrics.dump() {
            Ok(rows) => {
                for r in rows {
                    let labels = [reason_name(r.reason), r.direction().to_string()];
                    let labels = [labels[0].as_str(), labels[1].as_str()];
                    self.packets.with_label_values(&labels).inc_by(r.packets);
                    self.bytes.with_label_values(&labels).inc_by(r.bytes);
                }
            }
            Err(error) => tracing::warn!(%error, "reading the BPF metrics map failed"),
        }
        for p in self.pressure.lock().iter() {
            self.entries
                .with_label_values(&[p.map])
                .set(i64::try_from(p.entries).unwrap_or(i64::MAX));
            self.capacity
                .with_label_values(&[p.map])
                .set(i64::try_from(p.capacity).unwrap_or(i64::MAX));
            self.fill.with_label_values(&[p.map]).set(p.ratio());
        }
        let mut out = Vec::new();
        out.extend(self.packets.collect());
        out.extend(self.bytes.collect());
        out.extend(self.entries.collect());
        out.extend(self.capacity.collect());
        out.extend(self.fill.collect());
        out
    }
}
