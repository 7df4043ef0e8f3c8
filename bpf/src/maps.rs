//! Typed wrappers over the pinned datapath maps.
//!
//! Each wrapper owns a duplicated map fd ([`MapHandle`]), so it is `Send + Sync`, outlives
//! the skeleton and can also be opened from the pins alone ([`Maps::open_pinned`]), e.g.
//! by the CLI or a restarted agent before it loads programs.

use std::marker::PhantomData;
use std::net::Ipv4Addr;
use std::path::Path;

use libbpf_rs::{MapCore as _, MapFlags, MapHandle};

use crate::drop::DropReason;
use crate::error::{Error, Result};
use crate::types::{
    CtEntry4, CtKey4, DpConfig, EndpointInfo, EndpointKey, IpcacheKey, IpcacheValue,
    Lb4AffinityKey, Lb4AffinityVal, Lb4Backend, Lb4Key, Lb4RevNat, Lb4RevNatKey, Lb4Service,
    Lb4SkFwdKey, Lb4SkFwdVal, Lb4SkKey, Lb4SkVal, Lb4SrcRangeKey, LbConfig, MetricsKey,
    MetricsValue, Pod, PolicyCfg, PolicyCfgKey, PolicyKey, PolicyValue, Snat4Key, Snat4Val,
};

/// Pinned map names (file names under the bpf root).
pub mod names {
    /// Local endpoints.
    pub const LXC: &str = "cilium_lxc_v1";
    /// IP prefix to identity.
    pub const IPCACHE: &str = "cilium_ipcache_v1";
    /// TCP conntrack.
    pub const CT4: &str = "cilium_ct4_v1";
    /// Non-TCP conntrack.
    pub const CT_ANY4: &str = "cilium_ct_any4_v1";
    /// Per-CPU counters.
    pub const METRICS: &str = "cilium_metrics_v1";
    /// Event ring buffer.
    pub const EVENTS: &str = "cilium_events_v1";
    /// Runtime config.
    pub const CONFIG: &str = "cilium_config_v1";
    /// Per-endpoint policy entries (LPM trie).
    pub const POLICY: &str = "cilium_policy_v1";
    /// Per-endpoint enforcement flags.
    pub const POLICY_CFG: &str = "cilium_policy_cfg_v1";
    /// Per-cookie packet/byte counters.
    pub const POLICY_STATS: &str = "cilium_policy_stats_v1";
    /// Service frontends: header (slot 0) and backend slots.
    pub const LB_SERVICES: &str = "cilium_lb4_services_v1";
    /// Backends by id.
    pub const LB_BACKENDS: &str = "cilium_lb4_backends_v1";
    /// Reverse NAT by service id.
    pub const LB_REVNAT: &str = "cilium_lb4_reverse_nat_v1";
    /// ClientIP session affinity (LRU).
    pub const LB_AFFINITY: &str = "cilium_lb4_affinity_v1";
    /// Maglev tables (hash of maps).
    pub const LB_MAGLEV: &str = "cilium_lb4_maglev_v1";
    /// Socket reverse translation (LRU).
    pub const LB_SK: &str = "cilium_lb4_sk_v1";
    /// Unconnected-UDP socket backend choice (LRU).
    pub const LB_SK_FWD: &str = "cilium_lb4_sk_fwd_v1";
    /// NodePort SNAT towards backends elsewhere (LRU, both directions).
    pub const SNAT4: &str = "cilium_snat4_v1";
    /// `loadBalancerSourceRanges` per frontend (LPM trie).
    pub const LB_SRC_RANGE: &str = "cilium_lb4_source_range_v1";
    /// Load-balancer runtime config.
    pub const LB_CONFIG: &str = "cilium_lb_config_v1";
    /// Every pinned map.
    pub const ALL: &[&str] = &[
        LXC,
        IPCACHE,
        CT4,
        CT_ANY4,
        METRICS,
        EVENTS,
        CONFIG,
        POLICY,
        POLICY_CFG,
        POLICY_STATS,
        LB_SERVICES,
        LB_BACKENDS,
        LB_REVNAT,
        LB_AFFINITY,
        LB_MAGLEV,
        LB_SK,
        LB_SK_FWD,
        SNAT4,
        LB_SRC_RANGE,
        LB_CONFIG,
    ];
}

/// How full a map is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FillRatio {
    /// Entries present.
    pub entries: u32,
    /// Map capacity.
    pub max_entries: u32,
}

impl FillRatio {
    /// entries / max_entries, 0.0 for an empty-capacity map.
    pub fn ratio(&self) -> f64 {
        if self.max_entries == 0 {
            0.0
        } else {
            f64::from(self.entries) / f64::from(self.max_entries)
        }
    }
}

/// A map with fixed key/value types (checked against the kernel's sizes on open).
#[derive(Debug)]
pub struct TypedMap<K, V> {
    name: &'static str,
    handle: MapHandle,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K: Pod, V: Pod> TypedMap<K, V> {
    /// Wraps a handle, verifying key and value sizes.
    pub fn new(name: &'static str, handle: MapHandle) -> Result<Self> {
        check_size(name, "key", handle.key_size(), size_of::<K>())?;
        check_size(name, "value", handle.value_size(), size_of::<V>())?;
        Ok(Self {
            name,
            handle,
            _types: PhantomData,
        })
    }

    /// Opens the map pinned at `root/<name>`.
    pub fn open_pinned(root: &Path, name: &'static str) -> Result<Self> {
        let handle = MapHandle::from_pinned_path(root.join(name)).map_err(|source| Error::Map {
            map: name,
            op: "open pinned",
            source,
        })?;
        Self::new(name, handle)
    }

    /// Map name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Capacity.
    pub fn max_entries(&self) -> u32 {
        self.handle.max_entries()
    }

    /// Inserts or replaces an entry.
    pub fn insert(&self, key: &K, value: &V) -> Result<()> {
        self.handle
            .update(key.as_bytes(), value.as_bytes(), MapFlags::ANY)
            .map_err(|source| Error::Map {
                map: self.name,
                op: "update",
                source,
            })
    }

    /// Looks an entry up.
    pub fn lookup(&self, key: &K) -> Result<Option<V>> {
        let raw = self
            .handle
            .lookup(key.as_bytes(), MapFlags::ANY)
            .map_err(|source| Error::Map {
                map: self.name,
                op: "lookup",
                source,
            })?;
        Ok(raw.and_then(|b| V::from_bytes(&b)))
    }

    /// Deletes an entry; `Ok(false)` when it was not there.
    pub fn delete(&self, key: &K) -> Result<bool> {
        match self.handle.delete(key.as_bytes()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(Error::Map {
                map: self.name,
                op: "delete",
                source,
            }),
        }
    }

    /// All entries (a snapshot; entries changing meanwhile may be missed or vanish).
    pub fn entries(&self) -> Result<Vec<(K, V)>> {
        let mut out = Vec::new();
        for kb in self.handle.keys() {
            let Some(k) = K::from_bytes(&kb) else {
                continue;
            };
            if let Some(v) = self.lookup(&k)? {
                out.push((k, v));
            }
        }
        Ok(out)
    }

    /// Number of entries (walks the keys).
    pub fn count(&self) -> u32 {
        u32::try_from(self.handle.keys().count()).unwrap_or(u32::MAX)
    }

    /// Entries versus capacity, for the `cilium_bpf_map_pressure`-style metric.
    pub fn fill_ratio(&self) -> FillRatio {
        FillRatio {
            entries: self.count(),
            max_entries: self.max_entries(),
        }
    }

    /// Inserts many entries with one `BPF_MAP_UPDATE_BATCH` (hash maps).
    pub fn insert_batch(&self, entries: &[(K, V)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut keys = Vec::with_capacity(entries.len() * size_of::<K>());
        let mut values = Vec::with_capacity(entries.len() * size_of::<V>());
        for (k, v) in entries {
            keys.extend_from_slice(k.as_bytes());
            values.extend_from_slice(v.as_bytes());
        }
        let count = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        self.handle
            .update_batch(&keys, &values, count, MapFlags::ANY, MapFlags::ANY)
            .map_err(|source| Error::Map {
                map: self.name,
                op: "update batch",
                source,
            })
    }

    /// Inserts many entries: one `BPF_MAP_UPDATE_BATCH` per chunk, falling back to single
    /// updates when the kernel does not batch this map type. Above [`PARALLEL_MIN`] entries
    /// the chunks are shared out to one thread per CPU (the kernel locks hash maps per
    /// bucket, so the updates run side by side); the call returns when all are in, or the
    /// first error.
    pub fn insert_many(&self, entries: &[(K, V)]) -> Result<()>
    where
        K: Sync,
        V: Sync,
    {
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        if entries.len() < PARALLEL_MIN || threads < 2 {
            return self.insert_chunks(entries);
        }
        let part = entries.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = entries
                .chunks(part)
                .map(|p| scope.spawn(move || self.insert_chunks(p)))
                .collect();
            let mut result = Ok(());
            for h in handles {
                // A panic while writing is a bug: carry it on here.
                let r = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                if result.is_ok() {
                    result = r;
                }
            }
            result
        })
    }

    fn insert_chunks(&self, entries: &[(K, V)]) -> Result<()> {
        for chunk in entries.chunks(BATCH_CHUNK) {
            if self.insert_batch(chunk).is_err() {
                for (k, v) in chunk {
                    self.insert(k, v)?;
                }
            }
        }
        Ok(())
    }

    /// Deletes many keys (absent ones are ignored); returns how many were deleted.
    pub fn delete_many(&self, keys: &[K]) -> Result<usize> {
        let mut n = 0;
        for k in keys {
            if self.delete(k)? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The raw handle (fd), e.g. for a ring buffer or bpftool-like tools.
    pub fn handle(&self) -> &MapHandle {
        &self.handle
    }
}

/// Entries per `BPF_MAP_UPDATE_BATCH` call.
const BATCH_CHUNK: usize = 4096;

/// [`TypedMap::insert_many`] writes at least this many entries on several threads.
const PARALLEL_MIN: usize = 2 * BATCH_CHUNK;

fn check_size(map: &'static str, what: &'static str, got: u32, expected: usize) -> Result<()> {
    let got = got as usize;
    if got == expected {
        Ok(())
    } else {
        Err(Error::Layout {
            map,
            what,
            got,
            expected,
        })
    }
}

/// `cilium_lxc_v1`: local endpoints by IPv4.
#[derive(Debug)]
pub struct EndpointMap(pub TypedMap<EndpointKey, EndpointInfo>);

impl EndpointMap {
    /// Adds or replaces the endpoint owning `ip`.
    pub fn upsert(&self, ip: Ipv4Addr, info: &EndpointInfo) -> Result<()> {
        self.0.insert(&EndpointKey::new(ip), info)
    }
    /// Removes the endpoint owning `ip`; `Ok(false)` when absent.
    pub fn remove(&self, ip: Ipv4Addr) -> Result<bool> {
        self.0.delete(&EndpointKey::new(ip))
    }
    /// Looks an endpoint up by address.
    pub fn get(&self, ip: Ipv4Addr) -> Result<Option<EndpointInfo>> {
        self.0.lookup(&EndpointKey::new(ip))
    }
    /// All endpoints, sorted by address.
    pub fn dump(&self) -> Result<Vec<(Ipv4Addr, EndpointInfo)>> {
        let mut v: Vec<_> = self
            .0
            .entries()?
            .into_iter()
            .map(|(k, v)| (k.ip(), v))
            .collect();
        v.sort_by_key(|(ip, _)| *ip);
        Ok(v)
    }
}

/// `cilium_ipcache_v1`: prefix to identity (longest prefix match).
#[derive(Debug)]
pub struct IpcacheMap(pub TypedMap<IpcacheKey, IpcacheValue>);

impl IpcacheMap {
    /// Adds or replaces `ip/prefixlen`.
    pub fn upsert(&self, ip: Ipv4Addr, prefixlen: u8, value: &IpcacheValue) -> Result<()> {
        self.0.insert(&IpcacheKey::new(ip, prefixlen), value)
    }
    /// Removes `ip/prefixlen`; `Ok(false)` when absent.
    pub fn remove(&self, ip: Ipv4Addr, prefixlen: u8) -> Result<bool> {
        self.0.delete(&IpcacheKey::new(ip, prefixlen))
    }
    /// Longest-prefix lookup of one address (as the datapath does it).
    pub fn lookup_addr(&self, ip: Ipv4Addr) -> Result<Option<IpcacheValue>> {
        self.0.lookup(&IpcacheKey::new(ip, 32))
    }
    /// All prefixes as `(network, prefixlen, value)`, sorted.
    pub fn dump(&self) -> Result<Vec<(Ipv4Addr, u8, IpcacheValue)>> {
        let mut v: Vec<_> = self
            .0
            .entries()?
            .into_iter()
            .map(|(k, v)| (k.ip(), u8::try_from(k.prefixlen).unwrap_or(32), v))
            .collect();
        v.sort_by_key(|(ip, p, _)| (*ip, *p));
        Ok(v)
    }
}

/// A conntrack entry with the map it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CtRecord {
    /// Tuple of the packet that opened the connection.
    pub key: CtKey4,
    /// State and counters.
    pub entry: CtEntry4,
}

/// `cilium_ct4_v1` + `cilium_ct_any4_v1`.
#[derive(Debug)]
pub struct ConntrackMaps {
    /// TCP.
    pub tcp: TypedMap<CtKey4, CtEntry4>,
    /// Everything else.
    pub any: TypedMap<CtKey4, CtEntry4>,
}

impl ConntrackMaps {
    /// All entries of both maps.
    pub fn dump(&self) -> Result<Vec<CtRecord>> {
        let mut out = Vec::new();
        for m in [&self.tcp, &self.any] {
            out.extend(
                m.entries()?
                    .into_iter()
                    .map(|(key, entry)| CtRecord { key, entry }),
            );
        }
        Ok(out)
    }

    /// Deletes entries whose lifetime ended before `now_secs` (CLOCK_BOOTTIME seconds, see
    /// [`crate::boot_time_secs`]). Returns how many were deleted.
    pub fn gc(&self, now_secs: u32) -> Result<usize> {
        let mut removed = 0;
        for m in [&self.tcp, &self.any] {
            for (k, v) in m.entries()? {
                if v.lifetime < now_secs && m.delete(&k)? {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// One row of the metrics map, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricRow {
    /// 0 = forwarded, else a drop reason code.
    pub reason: u8,
    /// 1 ingress, 2 egress.
    pub dir: u8,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

impl MetricRow {
    /// The drop reason, `None` for forwarded or unknown codes.
    pub fn drop_reason(&self) -> Option<DropReason> {
        DropReason::from_code(self.reason)
    }
    /// "ingress" / "egress" / "unknown".
    pub fn direction(&self) -> &'static str {
        match self.dir {
            1 => "ingress",
            2 => "egress",
            _ => "unknown",
        }
    }
}

/// `cilium_metrics_v1` (per-CPU hash).
#[derive(Debug)]
pub struct MetricsMap(pub MapHandle);

impl MetricsMap {
    /// Every (reason, direction) row summed over CPUs, sorted.
    pub fn dump(&self) -> Result<Vec<MetricRow>> {
        let mut rows = Vec::new();
        for kb in self.0.keys() {
            let Some(key) = MetricsKey::from_bytes(&kb) else {
                continue;
            };
            let per_cpu =
                self.0
                    .lookup_percpu(&kb, MapFlags::ANY)
                    .map_err(|source| Error::Map {
                        map: names::METRICS,
                        op: "lookup",
                        source,
                    })?;
            let Some(per_cpu) = per_cpu else { continue };
            let (packets, bytes) = per_cpu
                .iter()
                .filter_map(|b| MetricsValue::from_bytes(b))
                .fold((0u64, 0u64), |(p, b), v| (p + v.packets, b + v.bytes));
            rows.push(MetricRow {
                reason: key.reason,
                dir: key.dir,
                packets,
                bytes,
            });
        }
        rows.sort_by_key(|r| (r.reason, r.dir));
        Ok(rows)
    }

    /// Packets counted for `(reason, dir)`; 0 when absent.
    pub fn packets(&self, reason: u8, dir: u8) -> Result<u64> {
        Ok(self
            .dump()?
            .iter()
            .find(|r| r.reason == reason && r.dir == dir)
            .map_or(0, |r| r.packets))
    }
}

/// `cilium_config_v1` (array with one [`DpConfig`]).
#[derive(Debug)]
pub struct ConfigMap(pub TypedMap<u32, DpConfig>);

impl ConfigMap {
    /// Writes the config the programs read on every packet.
    pub fn set(&self, cfg: &DpConfig) -> Result<()> {
        self.0.insert(&0, cfg)
    }
    /// Reads it back.
    pub fn get(&self) -> Result<Option<DpConfig>> {
        self.0.lookup(&0)
    }
}

/// Counters of one policy cookie, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyStatsRow {
    /// The cookie (names a rule).
    pub cookie: u32,
    /// Packets the cookie decided (original-direction packets of enforced directions).
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
}

/// `cilium_policy_v1` + `cilium_policy_cfg_v1` + `cilium_policy_stats_v1`.
///
/// Entries are written already normalised (see `bpf/lib/policy.h`): within one
/// (endpoint, direction, identity, protocol) an allow block covered by a shorter deny
/// block must be written as that deny. `cilium-policymap` does this.
#[derive(Debug)]
pub struct PolicyMaps {
    /// Policy entries (LPM trie).
    pub entries: TypedMap<PolicyKey, PolicyValue>,
    /// Enforcement flags per endpoint.
    pub cfg: TypedMap<PolicyCfgKey, PolicyCfg>,
    /// Per-cookie counters (per-CPU hash: key `u32` cookie, value 16 B per CPU).
    pub stats: MapHandle,
}

impl PolicyMaps {
    fn open_pinned(root: &Path) -> Result<Self> {
        let stats =
            MapHandle::from_pinned_path(root.join(names::POLICY_STATS)).map_err(|source| {
                Error::Map {
                    map: names::POLICY_STATS,
                    op: "open pinned",
                    source,
                }
            })?;
        Self::new(
            TypedMap::open_pinned(root, names::POLICY)?,
            TypedMap::open_pinned(root, names::POLICY_CFG)?,
            stats,
        )
    }

    pub(crate) fn new(
        entries: TypedMap<PolicyKey, PolicyValue>,
        cfg: TypedMap<PolicyCfgKey, PolicyCfg>,
        stats: MapHandle,
    ) -> Result<Self> {
        check_size(
            names::POLICY_STATS,
            "key",
            stats.key_size(),
            size_of::<u32>(),
        )?;
        check_size(
            names::POLICY_STATS,
            "value",
            stats.value_size(),
            size_of::<MetricsValue>(),
        )?;
        Ok(Self {
            entries,
            cfg,
            stats,
        })
    }

    /// Writes the enforcement flags of an endpoint.
    pub fn set_enforcement(
        &self,
        ep_id: u16,
        ingress: bool,
        egress: bool,
        revision: u32,
    ) -> Result<()> {
        self.cfg.insert(
            &PolicyCfgKey { ep_id, pad: 0 },
            &PolicyCfg {
                ingress_enforced: u8::from(ingress),
                egress_enforced: u8::from(egress),
                pad: 0,
                revision,
            },
        )
    }

    /// The enforcement flags of an endpoint (`None`: nothing enforced).
    pub fn enforcement(&self, ep_id: u16) -> Result<Option<PolicyCfg>> {
        self.cfg.lookup(&PolicyCfgKey { ep_id, pad: 0 })
    }

    /// Removes an endpoint's flags (= nothing enforced); `Ok(false)` when absent.
    pub fn remove_enforcement(&self, ep_id: u16) -> Result<bool> {
        self.cfg.delete(&PolicyCfgKey { ep_id, pad: 0 })
    }

    /// Every endpoint with flags, sorted by id.
    pub fn enforcements(&self) -> Result<Vec<(u16, PolicyCfg)>> {
        let mut v: Vec<_> = self
            .cfg
            .entries()?
            .into_iter()
            .map(|(k, v)| (k.ep_id, v))
            .collect();
        v.sort_by_key(|(id, _)| *id);
        Ok(v)
    }

    /// Every policy entry, sorted by key.
    pub fn dump(&self) -> Result<Vec<(PolicyKey, PolicyValue)>> {
        let mut v = self.entries.entries()?;
        v.sort_by_key(|(k, _)| *k);
        Ok(v)
    }

    /// The policy entries of one endpoint, sorted by key.
    pub fn endpoint_entries(&self, ep_id: u16) -> Result<Vec<(PolicyKey, PolicyValue)>> {
        let mut v = self.dump()?;
        v.retain(|(k, _)| k.ep_id == ep_id);
        Ok(v)
    }

    /// Counters of one cookie (0/0 when never hit).
    pub fn stat(&self, cookie: u32) -> Result<PolicyStatsRow> {
        let per_cpu = self
            .stats
            .lookup_percpu(&cookie.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| Error::Map {
                map: names::POLICY_STATS,
                op: "lookup",
                source,
            })?;
        let (packets, bytes) = per_cpu
            .unwrap_or_default()
            .iter()
            .filter_map(|b| MetricsValue::from_bytes(b))
            .fold((0u64, 0u64), |(p, b), v| (p + v.packets, b + v.bytes));
        Ok(PolicyStatsRow {
            cookie,
            packets,
            bytes,
        })
    }

    /// Counters of every cookie that was hit, sorted by cookie.
    pub fn stats(&self) -> Result<Vec<PolicyStatsRow>> {
        let mut rows = Vec::new();
        for kb in self.stats.keys() {
            let Some(cookie) = u32::from_bytes(&kb) else {
                continue;
            };
            rows.push(self.stat(cookie)?);
        }
        rows.sort_by_key(|r| r.cookie);
        Ok(rows)
    }

    /// Forgets the counters of a cookie; `Ok(false)` when absent.
    pub fn delete_stat(&self, cookie: u32) -> Result<bool> {
        match self.stats.delete(&cookie.to_ne_bytes()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(Error::Map {
                map: names::POLICY_STATS,
                op: "delete",
                source,
            }),
        }
    }
}

/// Every datapath map, by owned fd.
#[derive(Debug)]
pub struct Maps {
    /// `cilium_lxc_v1`.
    pub endpoints: EndpointMap,
    /// `cilium_ipcache_v1`.
    pub ipcache: IpcacheMap,
    /// `cilium_ct4_v1`, `cilium_ct_any4_v1`.
    pub conntrack: ConntrackMaps,
    /// `cilium_metrics_v1`.
    pub metrics: MetricsMap,
    /// `cilium_config_v1`.
    pub config: ConfigMap,
    /// `cilium_events_v1` (ring buffer; read with [`crate::EventReader`]).
    pub events: MapHandle,
    /// `cilium_policy_v1`, `cilium_policy_cfg_v1`, `cilium_policy_stats_v1`.
    pub policy: PolicyMaps,
    /// The load-balancer maps (`cilium_lb4_*`, `cilium_lb_config_v1`).
    pub lb: LbMaps,
}

impl Maps {
    /// Opens every map from its pin under `root` (no programs are loaded).
    pub fn open_pinned(root: &Path) -> Result<Self> {
        let events =
            MapHandle::from_pinned_path(root.join(names::EVENTS)).map_err(|source| Error::Map {
                map: names::EVENTS,
                op: "open pinned",
                source,
            })?;
        let metrics = MapHandle::from_pinned_path(root.join(names::METRICS)).map_err(|source| {
            Error::Map {
                map: names::METRICS,
                op: "open pinned",
                source,
            }
        })?;
        check_size(
            names::METRICS,
            "key",
            metrics.key_size(),
            size_of::<MetricsKey>(),
        )?;
        check_size(
            names::METRICS,
            "value",
            metrics.value_size(),
            size_of::<MetricsValue>(),
        )?;
        Ok(Self {
            endpoints: EndpointMap(TypedMap::open_pinned(root, names::LXC)?),
            ipcache: IpcacheMap(TypedMap::open_pinned(root, names::IPCACHE)?),
            conntrack: ConntrackMaps {
                tcp: TypedMap::open_pinned(root, names::CT4)?,
                any: TypedMap::open_pinned(root, names::CT_ANY4)?,
            },
            metrics: MetricsMap(metrics),
            config: ConfigMap(TypedMap::open_pinned(root, names::CONFIG)?),
            events,
            policy: PolicyMaps::open_pinned(root)?,
            lb: LbMaps::open_pinned(root)?,
        })
    }
}

/// Flags of an inner Maglev map (`BPF_F_INNER_MAP`: its size may differ from the template).
const BPF_F_INNER_MAP: u32 = 1 << 12;

/// The load-balancer maps. See `bpf/lib/lb.h` for layouts and the write order.
#[derive(Debug)]
pub struct LbMaps {
    /// `cilium_lb4_services_v1`: slot 0 header, slots 1..n backend ids.
    pub services: TypedMap<Lb4Key, Lb4Service>,
    /// `cilium_lb4_backends_v1`: backend id → address.
    pub backends: TypedMap<u32, Lb4Backend>,
    /// `cilium_lb4_reverse_nat_v1`: service id → frontend.
    pub revnat: TypedMap<Lb4RevNatKey, Lb4RevNat>,
    /// `cilium_lb4_affinity_v1` (LRU).
    pub affinity: TypedMap<Lb4AffinityKey, Lb4AffinityVal>,
    /// `cilium_lb4_maglev_v1` (hash of maps: service id → ARRAY of M backend ids).
    pub maglev: MapHandle,
    /// `cilium_lb4_sk_v1` (LRU): socket reverse translation.
    pub sk: TypedMap<Lb4SkKey, Lb4SkVal>,
    /// `cilium_lb4_sk_fwd_v1` (LRU): unconnected UDP socket → backend.
    pub sk_fwd: TypedMap<Lb4SkFwdKey, Lb4SkFwdVal>,
    /// `cilium_snat4_v1` (LRU): NodePort SNAT towards backends elsewhere.
    pub snat: TypedMap<Snat4Key, Snat4Val>,
    /// `cilium_lb4_source_range_v1` (LPM trie): the source-range client prefixes per frontend
    /// (admitted, or refused when the header says `SVC_F_SRC_RANGE_DENY`).
    pub src_range: TypedMap<Lb4SrcRangeKey, u32>,
    /// `cilium_lb_config_v1`.
    pub config: TypedMap<u32, LbConfig>,
}

impl LbMaps {
    pub(crate) fn open_pinned(root: &Path) -> Result<Self> {
        let maglev =
            MapHandle::from_pinned_path(root.join(names::LB_MAGLEV)).map_err(|source| {
                Error::Map {
                    map: names::LB_MAGLEV,
                    op: "open pinned",
                    source,
                }
            })?;
        Ok(Self {
            services: TypedMap::open_pinned(root, names::LB_SERVICES)?,
            backends: TypedMap::open_pinned(root, names::LB_BACKENDS)?,
            revnat: TypedMap::open_pinned(root, names::LB_REVNAT)?,
            affinity: TypedMap::open_pinned(root, names::LB_AFFINITY)?,
            maglev,
            sk: TypedMap::open_pinned(root, names::LB_SK)?,
            sk_fwd: TypedMap::open_pinned(root, names::LB_SK_FWD)?,
            snat: TypedMap::open_pinned(root, names::SNAT4)?,
            src_range: TypedMap::open_pinned(root, names::LB_SRC_RANGE)?,
            config: TypedMap::open_pinned(root, names::LB_CONFIG)?,
        })
    }

    fn maglev_err(op: &'static str) -> impl FnOnce(libbpf_rs::Error) -> Error {
        move |source| Error::Map {
            map: names::LB_MAGLEV,
            op,
            source,
        }
    }

    /// Installs the Maglev table of service `rev_nat_id`: a new inner ARRAY filled
    /// completely, then swapped into the outer map in one update (the datapath sees the
    /// old or the new table, never a mix).
    pub fn set_maglev(&self, rev_nat_id: u16, table: &[u32]) -> Result<()> {
        let size = u32::try_from(table.len()).unwrap_or(u32::MAX);
        let opts = libbpf_sys::bpf_map_create_opts {
            sz: size_of::<libbpf_sys::bpf_map_create_opts>() as libbpf_sys::size_t,
            map_flags: BPF_F_INNER_MAP,
            ..Default::default()
        };
        let inner = MapHandle::create(
            libbpf_rs::MapType::Array,
            Some("cilium_maglev_in"),
            4,
            4,
            size.max(1),
            &opts,
        )
        .map_err(Self::maglev_err("create inner"))?;
        let mut keys = Vec::with_capacity(table.len() * 4);
        let mut values = Vec::with_capacity(table.len() * 4);
        for (i, id) in table.iter().enumerate() {
            keys.extend_from_slice(&u32::try_from(i).unwrap_or(u32::MAX).to_ne_bytes());
            values.extend_from_slice(&id.to_ne_bytes());
        }
        if !table.is_empty()
            && inner
                .update_batch(&keys, &values, size, MapFlags::ANY, MapFlags::ANY)
                .is_err()
        {
            for (i, id) in table.iter().enumerate() {
                let k = u32::try_from(i).unwrap_or(u32::MAX).to_ne_bytes();
                inner
                    .update(&k, &id.to_ne_bytes(), MapFlags::ANY)
                    .map_err(Self::maglev_err("fill inner"))?;
            }
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(&inner));
        let key = Lb4RevNatKey { rev_nat_id, pad: 0 };
        self.maglev
            .update(key.as_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(Self::maglev_err("update"))
    }

    /// The Maglev table of a service (`None`: none installed).
    pub fn maglev_table(&self, rev_nat_id: u16) -> Result<Option<Vec<u32>>> {
        let key = Lb4RevNatKey { rev_nat_id, pad: 0 };
        let Some(raw) = self
            .maglev
            .lookup(key.as_bytes(), MapFlags::ANY)
            .map_err(Self::maglev_err("lookup"))?
        else {
            return Ok(None);
        };
        let Some(id) = u32::from_bytes(&raw) else {
            return Ok(None);
        };
        let inner = MapHandle::from_map_id(id).map_err(Self::maglev_err("open inner"))?;
        let n = inner.max_entries();
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n {
            let v = inner
                .lookup(&i.to_ne_bytes(), MapFlags::ANY)
                .map_err(Self::maglev_err("read inner"))?;
            out.push(v.and_then(|b| u32::from_bytes(&b)).unwrap_or(0));
        }
        Ok(Some(out))
    }

    /// Removes a service's Maglev table; `Ok(false)` when absent.
    pub fn remove_maglev(&self, rev_nat_id: u16) -> Result<bool> {
        let key = Lb4RevNatKey { rev_nat_id, pad: 0 };
        match self.maglev.delete(key.as_bytes()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(Error::Map {
                map: names::LB_MAGLEV,
                op: "delete",
                source,
            }),
        }
    }

    /// Service ids with a Maglev table, sorted.
    pub fn maglev_services(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self
            .maglev
            .keys()
            .filter_map(|k| Lb4RevNatKey::from_bytes(&k).map(|k| k.rev_nat_id))
            .collect();
        v.sort_unstable();
        v
    }

    /// Writes the netns cookie of the host namespace (external frontends are translated at
    /// the socket layer only there) and the node address unbound host sockets are checked
    /// with against `loadBalancerSourceRanges` (`None`: unknown, only `0.0.0.0/0` admits
    /// them).
    pub fn set_lb_config(&self, host_netns_cookie: u64, node_addr: Option<Ipv4Addr>) -> Result<()> {
        self.config.insert(
            &0,
            &LbConfig {
                host_netns_cookie,
                flags: 0,
                node_addr: node_addr.map_or(0, |a| u32::from_ne_bytes(a.octets())),
            },
        )
    }

    /// Adds source-range client prefixes `(service id, prefix, length)` (host bits cleared).
    pub fn add_src_ranges(&self, ranges: &[(u16, Ipv4Addr, u8)]) -> Result<()> {
        ranges
            .iter()
            .try_for_each(|&(id, a, l)| self.src_range.insert(&Lb4SrcRangeKey::new(id, a, l), &0))
    }

    /// Removes source-range client prefixes (absent ones are ignored).
    pub fn remove_src_ranges(&self, ranges: &[(u16, Ipv4Addr, u8)]) -> Result<usize> {
        let keys: Vec<Lb4SrcRangeKey> = ranges
            .iter()
            .map(|&(id, a, l)| Lb4SrcRangeKey::new(id, a, l))
            .collect();
        self.src_range.delete_many(&keys)
    }

    /// Every source-range client prefix as `(service id, prefix, length)`, sorted.
    pub fn src_ranges(&self) -> Result<Vec<(u16, Ipv4Addr, u8)>> {
        let mut v: Vec<(u16, Ipv4Addr, u8)> = self
            .src_range
            .entries()?
            .into_iter()
            .map(|(k, _)| (k.rev_nat_id, k.addr(), k.prefix_len()))
            .collect();
        v.sort_unstable();
        Ok(v)
    }
}
