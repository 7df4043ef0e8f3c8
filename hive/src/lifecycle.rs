//! Start and stop hooks.
//!
//! Constructors append hooks while they run, and constructors run in dependency order, so hooks
//! start in dependency order and stop in reverse. A failed start stops what already started.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use prometheus::HistogramVec;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::HiveError;
use crate::graph::{ResolveCtx, module_name};
use crate::inject::{Dependency, Inject};

/// What a hook gets: a token cancelled when its deadline passes, and the deadline itself.
#[derive(Debug, Clone)]
pub struct HookContext {
    /// Cancelled when the hook's timeout expires (or the hive aborts).
    pub cancel: CancellationToken,
    /// When the hook's timeout expires.
    pub deadline: Instant,
}

/// A start/stop hook. Both methods default to doing nothing.
#[async_trait::async_trait]
pub trait Hook: Send + Sync + 'static {
    /// Name used in logs, errors and metrics.
    fn name(&self) -> String {
        std::any::type_name::<Self>().to_string()
    }
    /// Called on start, in append order.
    async fn start(&self, _ctx: HookContext) -> anyhow::Result<()> {
        Ok(())
    }
    /// Called on stop, in reverse append order.
    async fn stop(&self, _ctx: HookContext) -> anyhow::Result<()> {
        Ok(())
    }
}

type HookFn = Box<dyn Fn(HookContext) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// A hook made of two closures.
pub struct FnHook {
    name: String,
    start: HookFn,
    stop: HookFn,
}

impl FnHook {
    /// A hook named `name` with async `start` and `stop` closures.
    pub fn new<S, SF, T, TF>(name: impl Into<String>, start: S, stop: T) -> Self
    where
        S: Fn(HookContext) -> SF + Send + Sync + 'static,
        SF: Future<Output = anyhow::Result<()>> + Send + 'static,
        T: Fn(HookContext) -> TF + Send + Sync + 'static,
        TF: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        FnHook {
            name: name.into(),
            start: Box::new(move |c| Box::pin(start(c))),
            stop: Box::new(move |c| Box::pin(stop(c))),
        }
    }

    /// A hook with only a start closure.
    pub fn start_only<S, SF>(name: impl Into<String>, start: S) -> Self
    where
        S: Fn(HookContext) -> SF + Send + Sync + 'static,
        SF: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Self::new(name, start, |_| async { Ok(()) })
    }
}

#[async_trait::async_trait]
impl Hook for FnHook {
    fn name(&self) -> String {
        self.name.clone()
    }
    async fn start(&self, ctx: HookContext) -> anyhow::Result<()> {
        (self.start)(ctx).await
    }
    async fn stop(&self, ctx: HookContext) -> anyhow::Result<()> {
        (self.stop)(ctx).await
    }
}

/// Timeouts of the lifecycle.
#[derive(Debug, Clone, Copy)]
pub struct LifecycleOptions {
    /// Maximum duration of one start hook (default 5 min).
    pub start_timeout: Duration,
    /// Maximum duration of one stop hook or job group stop (default 1 min).
    pub stop_timeout: Duration,
    /// Hooks slower than this are logged at info (default 1 s).
    pub log_threshold: Duration,
}

impl Default for LifecycleOptions {
    fn default() -> Self {
        LifecycleOptions {
            start_timeout: Duration::from_secs(300),
            stop_timeout: Duration::from_secs(60),
            log_threshold: Duration::from_secs(1),
        }
    }
}

/// Where the lifecycle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleState {
    /// Not started yet: appended hooks will run on start.
    Idle,
    /// Start hooks are running.
    Starting,
    /// All start hooks ran.
    Started,
    /// Stop hooks are running or have run.
    Stopped,
}

#[derive(Clone)]
struct HookEntry {
    hook: Arc<dyn Hook>,
    module: String,
}

type PreStopFn = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

struct Inner {
    hooks: Mutex<Vec<HookEntry>>,
    pre_stop: Mutex<Vec<PreStopFn>>,
    state: Mutex<LifecycleState>,
    started: Mutex<usize>,
    opts: Mutex<LifecycleOptions>,
    metrics: Mutex<Option<HistogramVec>>,
}

/// The hive's list of hooks, tagged with the module that appended them. Inject it to append.
#[derive(Clone)]
pub struct Lifecycle {
    inner: Arc<Inner>,
    module: Arc<str>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    /// A new, empty lifecycle (the hive makes one; tests may use their own).
    pub fn new() -> Self {
        Lifecycle {
            inner: Arc::new(Inner {
                hooks: Mutex::new(Vec::new()),
                pre_stop: Mutex::new(Vec::new()),
                state: Mutex::new(LifecycleState::Idle),
                started: Mutex::new(0),
                opts: Mutex::new(LifecycleOptions::default()),
                metrics: Mutex::new(None),
            }),
            module: Arc::from(""),
        }
    }

    pub(crate) fn for_module(&self, module: &str) -> Lifecycle {
        Lifecycle {
            inner: self.inner.clone(),
            module: Arc::from(module),
        }
    }

    pub(crate) fn set_options(&self, opts: LifecycleOptions) {
        *self.inner.opts.lock() = opts;
    }

    pub(crate) fn set_metrics(&self, h: HistogramVec) {
        *self.inner.metrics.lock() = Some(h);
    }

    /// The module path hooks appended through this handle are tagged with.
    pub fn module(&self) -> &str {
        &self.module
    }

    /// Append a hook. Appended before start, it runs on start after every hook appended before it.
    pub fn append(&self, hook: impl Hook) {
        self.append_arc(Arc::new(hook));
    }

    /// Append a shared hook.
    pub fn append_arc(&self, hook: Arc<dyn Hook>) {
        let state = self.state();
        if state == LifecycleState::Started || state == LifecycleState::Stopped {
            tracing::warn!(
                hook = hook.name(),
                module = module_name(&self.module),
                ?state,
                "hook appended after start; it will not run"
            );
        }
        self.inner.hooks.lock().push(HookEntry {
            hook,
            module: self.module.to_string(),
        });
    }

    /// Register something (a job group) to stop before any stop hook.
    pub(crate) fn append_pre_stop(&self, f: PreStopFn) {
        self.inner.pre_stop.lock().push(f);
    }

    /// The current state.
    pub fn state(&self) -> LifecycleState {
        *self.inner.state.lock()
    }

    /// Number of hooks appended.
    pub fn len(&self) -> usize {
        self.inner.hooks.lock().len()
    }

    /// Whether no hook was appended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn observe(&self, phase: &str, e: &HookEntry, took: Duration) {
        let threshold = self.inner.opts.lock().log_threshold;
        if took >= threshold {
            tracing::info!(
                hook = e.hook.name(),
                module = module_name(&e.module),
                phase,
                duration_ms = took.as_millis() as u64,
                "slow hook"
            );
        } else {
            tracing::debug!(
                hook = e.hook.name(),
                module = module_name(&e.module),
                phase,
                duration_us = took.as_micros() as u64,
                "hook done"
            );
        }
        if let Some(h) = self.inner.metrics.lock().as_ref() {
            h.with_label_values(&[e.hook.name().as_str(), module_name(&e.module), phase])
                .observe(took.as_secs_f64());
        }
    }

    async fn run_hook(
        &self,
        phase: &'static str,
        e: &HookEntry,
        timeout: Duration,
    ) -> Result<(), HiveError> {
        let ctx = HookContext {
            cancel: CancellationToken::new(),
            deadline: Instant::now() + timeout,
        };
        let cancel = ctx.cancel.clone();
        let began = Instant::now();
        let fut = if phase == "start" {
            e.hook.start(ctx)
        } else {
            e.hook.stop(ctx)
        };
        let res = tokio::time::timeout(timeout, fut).await;
        self.observe(phase, e, began.elapsed());
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(cause)) if phase == "start" => Err(HiveError::StartHook {
                hook: e.hook.name(),
                module: module_name(&e.module).to_string(),
                cause,
            }),
            Ok(Err(cause)) => Err(HiveError::Stop(vec![format!(
                "stop hook {} in module {}: {cause:#}",
                e.hook.name(),
                module_name(&e.module)
            )])),
            Err(_) => {
                cancel.cancel();
                Err(HiveError::HookTimeout {
                    phase,
                    hook: e.hook.name(),
                    module: module_name(&e.module).to_string(),
                    timeout,
                })
            }
        }
    }

    /// Run start hooks in order. On failure, stop what started (in reverse) and return the error.
    pub async fn start(&self) -> Result<(), HiveError> {
        {
            let mut st = self.inner.state.lock();
            if *st != LifecycleState::Idle {
                return Err(HiveError::State {
                    state: "already started",
                    action: "start",
                });
            }
            *st = LifecycleState::Starting;
        }
        let timeout = self.inner.opts.lock().start_timeout;
        let mut i = 0;
        loop {
            let Some(e) = self.inner.hooks.lock().get(i).cloned() else {
                break;
            };
            tracing::debug!(
                hook = e.hook.name(),
                module = module_name(&e.module),
                "starting"
            );
            if let Err(err) = self.run_hook("start", &e, timeout).await {
                *self.inner.started.lock() = i;
                tracing::error!(error = %err, "start failed, stopping the hooks already started");
                if let Err(stop_err) = self.stop().await {
                    tracing::error!(error = %stop_err, "stop after a failed start also failed");
                }
                return Err(err);
            }
            i += 1;
            *self.inner.started.lock() = i;
        }
        *self.inner.state.lock() = LifecycleState::Started;
        Ok(())
    }

    /// Stop job groups first, then run the stop hooks of started hooks in reverse order.
    /// Every hook gets its chance; errors are collected.
    pub async fn stop(&self) -> Result<(), HiveError> {
        {
            let mut st = self.inner.state.lock();
            if *st == LifecycleState::Stopped {
                return Ok(());
            }
            *st = LifecycleState::Stopped;
        }
        let timeout = self.inner.opts.lock().stop_timeout;
        let mut errors = Vec::new();
        let pre: Vec<PreStopFn> = self.inner.pre_stop.lock().clone();
        for f in pre {
            match tokio::time::timeout(timeout, f()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push(format!(
                    "a job group did not stop within {timeout:?}; its jobs were aborted"
                )),
            }
        }
        let started = std::mem::take(&mut *self.inner.started.lock());
        let hooks: Vec<HookEntry> = self.inner.hooks.lock()[..started].to_vec();
        for e in hooks.iter().rev() {
            match self.run_hook("stop", e, timeout).await {
                Ok(()) => {}
                Err(HiveError::Stop(mut v)) => errors.append(&mut v),
                Err(other) => errors.push(other.to_string()),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(HiveError::Stop(errors))
        }
    }
}

impl Inject for Lifecycle {
    fn dependency() -> Dependency {
        Dependency::Builtin("Lifecycle")
    }
    fn resolve(ctx: &mut ResolveCtx<'_>) -> Result<Self, HiveError> {
        Ok(ctx.lifecycle())
    }
}
