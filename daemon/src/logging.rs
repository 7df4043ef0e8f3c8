//! Logging: a tracing subscriber whose level can be changed while the agent runs
//! (`--log-level`, or `PATCH /v1/config` with `{"log-level": "debug"}`).

use std::sync::Arc;

use hive::{BoxCell, Config, Invoke};
use parking_lot::Mutex;
use serde::Serialize;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// Logging flags.
#[derive(Debug, Clone, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct LogConfig {
    /// Log level or tracing filter (error, warn, info, debug, trace, or `info,statedb=debug`).
    #[arg(long = "log-level", default_value = "info")]
    pub log_level: String,
}

/// Handle to change the log filter at run time.
pub struct LogControl {
    handle: Option<reload::Handle<EnvFilter, Registry>>,
    current: Mutex<String>,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl")
            .field("current", &*self.current.lock())
            .finish()
    }
}

impl LogControl {
    /// Install the global subscriber (stderr, text) with `initial` as filter.
    pub fn install(initial: &str) -> Arc<Self> {
        let filter = EnvFilter::try_new(initial).unwrap_or_else(|_| EnvFilter::new("info"));
        let (layer, handle) = reload::Layer::new(filter);
        let installed = tracing_subscriber::registry()
            .with(layer)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .try_init()
            .is_ok();
        Arc::new(Self {
            handle: installed.then_some(handle),
            current: Mutex::new(initial.to_string()),
        })
    }

    /// A control that changes nothing (tests, embedding).
    pub fn detached() -> Arc<Self> {
        Arc::new(Self {
            handle: None,
            current: Mutex::new("info".into()),
        })
    }

    /// Replace the filter; the error names the bad directive.
    pub fn set(&self, filter: &str) -> Result<(), String> {
        let parsed =
            EnvFilter::try_new(filter).map_err(|e| format!("invalid log level {filter:?}: {e}"))?;
        if let Some(h) = &self.handle {
            h.reload(parsed)
                .map_err(|e| format!("cannot reload the log filter: {e}"))?;
        }
        *self.current.lock() = filter.to_string();
        Ok(())
    }

    /// The filter in force.
    pub fn current(&self) -> String {
        self.current.lock().clone()
    }
}

/// The logging cell: applies `--log-level` once the configuration is parsed.
pub fn cell() -> BoxCell {
    hive::Module::new(
        "logging",
        "log level, reloadable at run time",
        vec![
            Config::<LogConfig>::new(),
            Invoke::new(
                |cfg: Arc<LogConfig>, ctl: Arc<LogControl>, health: hive::Health| {
                    ctl.set(&cfg.log_level).map_err(hive::anyhow::Error::msg)?;
                    health.ok(format!("log level {}", cfg.log_level));
                    Ok(())
                },
            ),
        ],
    )
}
