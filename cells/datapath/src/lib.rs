//! cilium-datapath: the cell that owns the loaded BPF datapath in the agent.
//!
//! It loads [`cilium_bpf::Datapath`] once at construction (mounting bpffs at /sys/fs/bpf
//! if needed) and provides it as `Arc<Datapath>` together with the
//! `Arc<cilium_api::models::DatapathStatus>` that `GET /v1/status` reports. Around it:
//! conntrack garbage collection with an adaptive interval ([`ConntrackGc`]), the monitor
//! that fans ring-buffer events out to API streams ([`Monitor`]), a Prometheus collector
//! for the BPF metrics map and every map's fill ratio ([`DatapathCollector`]), and the
//! routes `/v1/monitor`, `/v1/metrics`, `/v1/bpf/{lxc,ipcache,ct,metrics}`, `/v1/bpf/ct/gc`.

pub mod api;
pub mod config;
pub mod conntrack;
pub mod error;
pub mod loader;
pub mod metrics;
pub mod monitor;

use std::sync::Arc;

use cilium_api::routes::ApiRoutes;
use cilium_bpf::Datapath;
use hive::{Backoff, BoxCell, Config, Health, Invoke, Job, JobGroup, Module, Provide};
use parking_lot::Mutex;
use prometheus::Registry;

pub use api::DatapathApi;
pub use config::{DatapathFlags, DatapathMode};
pub use conntrack::{ConntrackGc, GcStats};
pub use error::Error;
pub use metrics::{DatapathCollector, MapPressure};
pub use monitor::Monitor;

fn new_datapath(flags: Arc<DatapathFlags>, health: Health) -> hive::anyhow::Result<Datapath> {
    let dp = loader::load(&flags)?;
    health.ok(format!(
        "loaded under {} ({} mode, attach via {})",
        dp.bpf_root().display(),
        flags.datapath_mode.name(),
        dp.attach_mode().name()
    ));
    Ok(dp)
}

fn new_conntrack_gc(
    dp: Arc<Datapath>,
    registry: Arc<Registry>,
    flags: Arc<DatapathFlags>,
) -> hive::anyhow::Result<ConntrackGc> {
    let fixed = (!flags.conntrack_gc_interval.is_zero()).then_some(flags.conntrack_gc_interval);
    Ok(ConntrackGc::new(
        dp,
        &registry,
        fixed,
        flags.conntrack_gc_min_interval,
        flags.conntrack_gc_max_interval,
    )?)
}

#[expect(clippy::too_many_arguments, reason = "injected dependencies")]
fn start(
    dp: Arc<Datapath>,
    gc: Arc<ConntrackGc>,
    monitor: Arc<Monitor>,
    registry: Arc<Registry>,
    flags: Arc<DatapathFlags>,
    routes: Arc<ApiRoutes>,
    jobs: JobGroup,
    _status: Arc<cilium_api::models::DatapathStatus>,
) -> hive::anyhow::Result<()> {
    let pressure = Arc::new(Mutex::new(Vec::new()));
    registry.register(Box::new(DatapathCollector::new(
        dp.clone(),
        pressure.clone(),
    )?))?;

    let g = gc.clone();
    jobs.add(Job::one_shot("conntrack-gc", move |cancel, health| {
        g.clone().run(cancel, health)
    }));

    let (m, d) = (monitor.clone(), dp.clone());
    jobs.add(
        Job::one_shot("monitor", move |cancel, health| {
            m.clone().run(d.clone(), cancel, health)
        })
        .with_retry(
            u32::MAX,
            Backoff {
                min: std::time::Duration::from_millis(100),
                max: std::time::Duration::from_secs(10),
            },
        ),
    );

    let d = dp.clone();
    jobs.add(Job::timer(
        "map-pressure",
        move |_cancel| {
            let (d, p) = (d.clone(), pressure.clone());
            async move {
                tokio::task::spawn_blocking(move || metrics::refresh(&d, &p)).await?;
                Ok(())
            }
        },
        flags.map_pressure_interval,
    ));

    routes.add(
        DatapathApi {
            dp,
            monitor,
            gc,
            registry,
        }
        .router(),
    );
    Ok(())
}

/// The datapath cell: flags, `Arc<Datapath>`, `Arc<DatapathStatus>`, `Arc<ConntrackGc>`,
/// `Arc<Monitor>`, the metrics collector, jobs and routes.
pub fn cell() -> BoxCell {
    Module::new(
        "datapath",
        "BPF datapath: loader, conntrack GC, monitor, metrics, map dumps",
        vec![
            Config::<DatapathFlags>::new(),
            Provide::new(new_datapath),
            Provide::new(|dp: Arc<Datapath>, flags: Arc<DatapathFlags>| {
                Ok(loader::status(&dp, flags.datapath_mode))
            }),
            Provide::new(new_conntrack_gc),
            Provide::new(
                |registry: Arc<Registry>, repo: Option<Arc<cilium_policy::Repository>>| {
                    Ok(Monitor::new(&registry)?.with_policy(repo))
                },
            ),
            Invoke::new(start),
        ],
    )
}
