//! The hive: assembles cells, validates the graph, parses config, runs invokes and the lifecycle.

use std::any::{Any, TypeId};
use std::ffi::OsString;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::{HistogramOpts, HistogramVec, Registry};
use statedb::{Db, Table};
use tokio_util::sync::CancellationToken;

use crate::cell::{BoxCell, Cell, Location, Provide};
use crate::config::{self, ConfigDump, ConfigStruct, Overrides};
use crate::error::HiveError;
use crate::graph::{Builder, Graph, ProviderSpec, ResolveCtx, Runtime, State, module_name};
use crate::health::{Health, HealthStatus, HealthStore, MemoryHealthStore};
use crate::health_db::StatedbHealthStore;
use crate::inject::{AnyArc, Dependency, Inject};
use crate::lifecycle::{Lifecycle, LifecycleOptions};

struct ShutInner {
    token: CancellationToken,
    error: Mutex<Option<anyhow::Error>>,
}

/// Lets any cell ask the hive to shut down, optionally because of an error. Inject it.
#[derive(Clone)]
pub struct Shutdowner {
    inner: Arc<ShutInner>,
}

impl Default for Shutdowner {
    fn default() -> Self {
        Shutdowner {
            inner: Arc::new(ShutInner {
                token: CancellationToken::new(),
                error: Mutex::new(None),
            }),
        }
    }
}

impl Shutdowner {
    /// Request shutdown. The first error given is what `Hive::run` returns.
    pub fn shutdown(&self, error: Option<anyhow::Error>) {
        if let Some(e) = error {
            tracing::error!(error = %format!("{e:#}"), "shutdown requested because of an error");
            let mut slot = self.inner.error.lock();
            if slot.is_none() {
                *slot = Some(e);
            }
        } else {
            tracing::info!("shutdown requested");
        }
        self.inner.token.cancel();
    }

    /// Whether shutdown was requested.
    pub fn is_requested(&self) -> bool {
        self.inner.token.is_cancelled()
    }

    /// Wait until shutdown is requested.
    pub async fn requested(&self) {
        self.inner.token.cancelled().await;
    }

    /// Take the error shutdown was requested with, if any.
    pub fn take_error(&self) -> Option<anyhow::Error> {
        self.inner.error.lock().take()
    }
}

impl Inject for Shutdowner {
    fn dependency() -> Dependency {
        Dependency::Builtin("Shutdowner")
    }
    fn resolve(ctx: &mut ResolveCtx<'_>) -> Result<Self, HiveError> {
        Ok(ctx.shutdowner())
    }
}

/// Read access to the health table: every module's and scope's latest report.
/// Injected as `Arc<HealthView>`.
#[derive(Clone)]
pub struct HealthView {
    store: Arc<dyn HealthStore>,
}

impl HealthView {
    /// All rows, ordered by id.
    pub fn all(&self) -> Vec<HealthStatus> {
        self.store.all()
    }
    /// The row with this id (module path plus scope).
    pub fn get(&self, id: &str) -> Option<HealthStatus> {
        self.store.all().into_iter().find(|s| s.id == id)
    }
}

/// Provides `Arc<ConfigDump>` from the parsed configs.
struct ConfigDumpCell;

impl Cell for ConfigDumpCell {
    fn register(&self, b: &mut Builder) {
        b.provide(ProviderSpec {
            type_id: TypeId::of::<ConfigDump>(),
            type_name: std::any::type_name::<ConfigDump>(),
            deps: Vec::new(),
            ctor: Arc::new(|ctx| {
                ctx.config_value(TypeId::of::<ConfigDump>())
                    .map(Ok)
                    .ok_or(HiveError::State {
                        state: "populating",
                        action: "read the config dump (hive bug)",
                    })
            }),
            private: false,
            location: Location::builtin(),
        });
    }
    fn describe(&self, _depth: usize, _out: &mut String) {}
}

struct Populated {
    graph: Graph,
    state: State,
}

/// An application assembled from cells.
pub struct Hive {
    cells: Vec<BoxCell>,
    overrides: Overrides,
    rt: Runtime,
    db: Db,
    health_table: Option<Table<HealthStatus>>,
    health_store: Arc<dyn HealthStore>,
    registry: Arc<Registry>,
    /// `cilium_reconciler_*`, registered once and shared by every reconciler of the hive.
    reconciler_metrics: Option<statedb::reconciler::ReconcilerMetrics>,
    populated: Mutex<Option<Populated>>,
}

impl Hive {
    /// A hive made of `cells`. Nothing runs until populate/start/run.
    /// Health goes to the statedb table `health` of the hive's `Db`.
    pub fn new(cells: Vec<BoxCell>) -> Self {
        // statedb's metrics go to the hive's registry, so `/metrics` shows them.
        let registry = Arc::new(Registry::new());
        let db = Db::with_metrics(&registry).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot register statedb metrics; continuing without them");
            Db::new()
        });
        match StatedbHealthStore::new(&db) {
            Ok(store) => {
                let table = store.table();
                let mut hive = Self::build(cells, Arc::new(store), db, registry);
                hive.health_table = Some(table);
                hive
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot register the health table; keeping health in memory");
                Self::build(cells, Arc::new(MemoryHealthStore::default()), db, registry)
            }
        }
    }

    /// A hive whose health reports go to `store` (no `health` table is registered).
    pub fn with_health_store(cells: Vec<BoxCell>, store: Arc<dyn HealthStore>) -> Self {
        Self::build(cells, store, Db::new(), Arc::new(Registry::new()))
    }

    fn build(
        cells: Vec<BoxCell>,
        store: Arc<dyn HealthStore>,
        db: Db,
        registry: Arc<Registry>,
    ) -> Self {
        Hive {
            cells,
            db,
            health_table: None,
            overrides: Overrides::new(),
            rt: Runtime {
                lifecycle: Lifecycle::new(),
                health: Health::new(store.clone()),
                shutdowner: Shutdowner::default(),
            },
            health_store: store,
            reconciler_metrics: statedb::reconciler::ReconcilerMetrics::new(&registry).ok(),
            registry,
            populated: Mutex::new(None),
        }
    }

    /// An in-memory-health hive (no statedb), mostly for tests.
    pub fn with_memory_health(cells: Vec<BoxCell>) -> Self {
        Self::with_health_store(cells, Arc::new(MemoryHealthStore::default()))
    }

    /// Set start/stop timeouts and the slow-hook log threshold.
    pub fn with_options(self, opts: LifecycleOptions) -> Self {
        self.rt.lifecycle.set_options(opts);
        self
    }

    /// Change config `T` after it is parsed (tests and embedders; no argv needed).
    pub fn with_config_override<T: ConfigStruct>(
        mut self,
        f: impl Fn(&mut T) + Send + Sync + 'static,
    ) -> Self {
        self.overrides
            .entry(TypeId::of::<T>())
            .or_default()
            .push(Arc::new(move |any: &mut dyn Any| {
                if let Some(v) = any.downcast_mut::<T>() {
                    f(v);
                }
            }));
        self
    }

    /// The hive's lifecycle.
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.rt.lifecycle
    }

    /// The shutdowner cells get when they inject `Shutdowner`.
    pub fn shutdowner(&self) -> Shutdowner {
        self.rt.shutdowner.clone()
    }

    /// The health table.
    pub fn health(&self) -> HealthView {
        HealthView {
            store: self.health_store.clone(),
        }
    }

    /// The statedb database (also injectable as `Arc<statedb::Db>`).
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The `health` table, when health is kept in statedb (injectable as
    /// `Arc<statedb::Table<HealthStatus>>`).
    pub fn health_table(&self) -> Option<&Table<HealthStatus>> {
        self.health_table.as_ref()
    }

    /// The metrics registry (also injectable as `Arc<prometheus::Registry>`).
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    fn builder(&self) -> Builder {
        let mut b = Builder::new();
        for cell in self.builtin_cells() {
            cell.register(&mut b);
        }
        for c in &self.cells {
            c.register(&mut b);
        }
        b
    }

    fn builtin_cells(&self) -> Vec<BoxCell> {
        let mut cells: Vec<BoxCell> = vec![
            Box::new(ConfigDumpCell),
            Provide::arc_at(self.registry.clone(), Location::builtin()),
            Provide::arc_at(
                Arc::new(HealthView {
                    store: self.health_store.clone(),
                }),
                Location::builtin(),
            ),
        ];
        cells.push(Provide::arc_at(
            Arc::new(self.db.clone()),
            Location::builtin(),
        ));
        if let Some(m) = &self.reconciler_metrics {
            cells.push(Provide::arc_at(Arc::new(m.clone()), Location::builtin()));
        }
        if let Some(t) = &self.health_table {
            cells.push(Provide::arc_at(Arc::new(t.clone()), Location::builtin()));
        }
        cells
    }

    /// Validate the graph (no constructor runs) and render it in graphviz dot format.
    pub fn dot(&self) -> Result<String, HiveError> {
        let mut b = self.builder();
        b.configs.clear();
        Ok(Graph::build(b)?.dot())
    }

    /// A tree of modules and cells with their file:line.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for c in &self.cells {
            c.describe(0, &mut out);
        }
        out
    }

    /// The clap command of all configs (for `--help` output and docs).
    pub fn command(&self, name: &str) -> Result<clap::Command, HiveError> {
        let b = self.builder();
        config::build_command(name, &b.configs, &b.scopes)
    }

    /// Populate without command-line arguments (defaults, env, overrides).
    pub fn populate(&self) -> Result<(), HiveError> {
        self.populate_with_args([OsString::from("hive")])
    }

    /// Validate the graph, parse config from `args` (argv incl. program name), run the invokes.
    pub fn populate_with_args<I, A>(&self, args: I) -> Result<(), HiveError>
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        let mut slot = self.populated.lock();
        if slot.is_some() {
            return Err(HiveError::State {
                state: "already populated",
                action: "populate",
            });
        }
        let mut b = self.builder();
        let configs = std::mem::take(&mut b.configs);
        let scopes = b.scopes.clone();
        let graph = Graph::build(b)?;
        let parsed = config::parse(
            &configs,
            &scopes,
            args.into_iter().map(Into::into).collect(),
            &self.overrides,
        )?;
        let mut state = State {
            config_values: parsed.values,
            ..State::default()
        };
        state
            .config_values
            .insert(TypeId::of::<ConfigDump>(), Arc::new(parsed.dump) as AnyArc);
        self.register_metrics()?;
        for (spec, scope) in &graph.invokes {
            let mut ctx = ResolveCtx {
                graph: &graph,
                state: &mut state,
                rt: &self.rt,
                scope: *scope,
            };
            (spec.ctor)(&mut ctx)?.map_err(|cause| HiveError::Invoke {
                location: spec.location.to_string(),
                module: module_name(&graph.scopes[*scope].path).to_string(),
                cause,
            })?;
        }
        *slot = Some(Populated { graph, state });
        Ok(())
    }

    fn register_metrics(&self) -> Result<(), HiveError> {
        let h = HistogramVec::new(
            HistogramOpts::new(
                "cilium_hive_hook_duration_seconds",
                "Duration of hive start and stop hooks",
            )
            .buckets(vec![0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0]),
            &["hook", "module", "phase"],
        )?;
        self.registry.register(Box::new(h.clone()))?;
        self.rt.lifecycle.set_metrics(h);
        Ok(())
    }

    /// After populate: get (constructing if needed) a public `Arc<T>`.
    pub fn get<T: Send + Sync + 'static>(&self) -> Result<Option<Arc<T>>, HiveError> {
        let mut slot = self.populated.lock();
        let Some(p) = slot.as_mut() else {
            return Err(HiveError::State {
                state: "not populated",
                action: "get a value",
            });
        };
        let mut ctx = ResolveCtx {
            graph: &p.graph,
            state: &mut p.state,
            rt: &self.rt,
            scope: 0,
        };
        ctx.get::<T>()
    }

    /// Run the start hooks (populating first if needed). On failure the started hooks are stopped.
    pub async fn start(&self) -> Result<(), HiveError> {
        if self.populated.lock().is_none() {
            self.populate()?;
        }
        self.rt.lifecycle.start().await
    }

    /// Stop the jobs, then run the stop hooks in reverse order.
    pub async fn stop(&self) -> Result<(), HiveError> {
        self.rt.lifecycle.stop().await
    }

    /// Populate from the process arguments, start, wait for SIGINT/SIGTERM or a shutdown request, stop.
    pub async fn run(&self) -> Result<(), HiveError> {
        self.run_with_args(std::env::args_os()).await
    }

    /// Like [`run`](Self::run) with explicit argv. `--help`/`--version` print and return Ok.
    pub async fn run_with_args<I, A>(&self, args: I) -> Result<(), HiveError>
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        match self.populate_with_args(args) {
            Err(HiveError::Cli(e))
                if matches!(
                    e.kind(),
                    clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
                ) =>
            {
                let _ = e.print();
                return Ok(());
            }
            other => other?,
        }
        self.start().await?;
        self.wait_for_shutdown().await?;
        let stopped = self.stop().await;
        if let Some(e) = self.rt.shutdowner.take_error() {
            if let Err(stop_err) = stopped {
                tracing::error!(error = %stop_err, "stop failed during shutdown");
            }
            return Err(HiveError::Shutdown(e));
        }
        stopped
    }

    async fn wait_for_shutdown(&self) -> Result<(), HiveError> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, stopping"),
            _ = int.recv() => tracing::info!("SIGINT received, stopping"),
            _ = self.rt.shutdowner.requested() => {}
        }
        Ok(())
    }
}
