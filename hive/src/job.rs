//! Jobs: background tasks owned by a module, tied to the lifecycle.
//!
//! A job added before start joins the lifecycle at the moment it is added (so it starts after
//! the hooks appended before it); a job added after start runs at once. All jobs are cancelled
//! and awaited before any stop hook runs. Each job reports health in scope `job-<name>`.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::HiveError;
use crate::graph::ResolveCtx;
use crate::health::Health;
use crate::hive::Shutdowner;
use crate::inject::{Dependency, Inject};
use crate::lifecycle::{Hook, HookContext, Lifecycle, LifecycleState};

type RunFn =
    Box<dyn FnOnce(CancellationToken, Health, Shutdowner) -> BoxFuture<'static, ()> + Send>;

/// A job ready to be added to a [`JobGroup`].
pub struct Job {
    name: String,
    run: RunFn,
}

impl Job {
    /// A job that runs `f(cancel, health)` once (see [`OneShot::with_retry`]).
    pub fn one_shot<F, Fut>(name: impl Into<String>, f: F) -> OneShot
    where
        F: Fn(CancellationToken, Health) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        OneShot {
            name: name.into(),
            f: Arc::new(move |c, h| Box::pin(f(c, h))),
            retries: 0,
            backoff: Backoff::default(),
            shutdown_on_error: false,
        }
    }

    /// A job that runs `f(cancel)` at start, then every `interval` and whenever its trigger fires.
    pub fn timer<F, Fut>(name: impl Into<String>, f: F, interval: Duration) -> Timer
    where
        F: Fn(CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Timer {
            name: name.into(),
            f: Box::new(move |c| Box::pin(f(c))),
            interval,
            trigger: None,
        }
    }

    /// A job that calls `f(item)` for every item of `stream` until it ends.
    pub fn observer<S, T, F, Fut>(name: impl Into<String>, stream: S, f: F) -> Job
    where
        S: Stream<Item = T> + Send + 'static,
        T: Send + 'static,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let run: RunFn = Box::new(move |cancel, health, _| {
            Box::pin(async move {
                let mut stream = std::pin::pin!(stream);
                let mut seen = 0u64;
                health.ok("observing");
                loop {
                    let item = tokio::select! {
                        _ = cancel.cancelled() => break,
                        item = stream.next() => item,
                    };
                    let Some(item) = item else {
                        health.stopped("stream ended");
                        return;
                    };
                    seen += 1;
                    match f(item).await {
                        Ok(()) => health.ok(format!("{seen} event(s) processed")),
                        Err(e) => {
                            tracing::warn!(health_id = health.id(), error = %e, "observer failed to process an event");
                            health.degraded("processing an event failed", e);
                        }
                    }
                }
                health.stopped("cancelled");
            })
        });
        Job {
            name: name.into(),
            run,
        }
    }
}

/// Exponential backoff between retries.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First wait.
    pub min: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The wait before retry number `attempt` (0-based), doubling from `min` up to `max`.
    pub fn duration(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.min
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

type OneShotFn =
    Arc<dyn Fn(CancellationToken, Health) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// A one-shot job under construction.
pub struct OneShot {
    name: String,
    f: OneShotFn,
    retries: u32,
    backoff: Backoff,
    shutdown_on_error: bool,
}

impl OneShot {
    /// Retry up to `retries` more times after a failure, waiting with `backoff` in between.
    pub fn with_retry(mut self, retries: u32, backoff: Backoff) -> Self {
        self.retries = retries;
        self.backoff = backoff;
        self
    }

    /// Ask the hive to shut down if the job finally fails.
    pub fn with_shutdown(mut self) -> Self {
        self.shutdown_on_error = true;
        self
    }
}

impl From<OneShot> for Job {
    fn from(o: OneShot) -> Job {
        let OneShot {
            name,
            f,
            retries,
            backoff,
            shutdown_on_error,
        } = o;
        let job_name = name.clone();
        let run: RunFn = Box::new(move |cancel, health, shutdowner| {
            Box::pin(async move {
                let mut attempt = 0u32;
                loop {
                    health.ok(format!("running (attempt {})", attempt + 1));
                    // The function sees the token and is expected to return when it fires;
                    // the stop timeout bounds how long the hive waits for it.
                    let res = f(cancel.clone(), health.clone()).await;
                    let err = match res {
                        Ok(()) if cancel.is_cancelled() => {
                            health.stopped("cancelled");
                            return;
                        }
                        Ok(()) => {
                            health.stopped("completed");
                            return;
                        }
                        Err(e) => e,
                    };
                    if attempt >= retries || cancel.is_cancelled() {
                        tracing::error!(job = job_name, error = %format!("{err:#}"), attempts = attempt + 1, "one-shot job failed");
                        health.degraded(format!("failed after {} attempt(s)", attempt + 1), &err);
                        if shutdown_on_error {
                            shutdowner
                                .shutdown(Some(err.context(format!("job {job_name} failed"))));
                        }
                        return;
                    }
                    let wait = backoff.duration(attempt);
                    health.degraded(
                        format!("attempt {} failed, retrying in {wait:?}", attempt + 1),
                        &err,
                    );
                    attempt += 1;
                    tokio::select! {
                        _ = cancel.cancelled() => { health.stopped("cancelled"); return; }
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            })
        });
        Job { name, run }
    }
}

/// Fires a timer job early. Many `trigger()` calls before the job runs coalesce into one run;
/// a trigger during a run causes one more run after it. A trigger belongs to one timer job.
#[derive(Clone, Debug)]
pub struct Trigger {
    tx: mpsc::Sender<()>,
    rx: Arc<Mutex<Option<mpsc::Receiver<()>>>>,
}

impl Default for Trigger {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(1);
        Trigger {
            tx,
            rx: Arc::new(Mutex::new(Some(rx))),
        }
    }
}

impl Trigger {
    /// A new trigger.
    pub fn new() -> Self {
        Self::default()
    }
    /// Request a run of the timer job (never blocks; coalesces with pending requests).
    pub fn trigger(&self) {
        let _ = self.tx.try_send(());
    }
}

type TimerFn =
    Box<dyn Fn(CancellationToken) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// A timer job under construction.
pub struct Timer {
    name: String,
    f: TimerFn,
    interval: Duration,
    trigger: Option<Trigger>,
}

impl Timer {
    /// Also run whenever `trigger` fires.
    pub fn with_trigger(mut self, trigger: Trigger) -> Self {
        self.trigger = Some(trigger);
        self
    }
}

impl From<Timer> for Job {
    fn from(t: Timer) -> Job {
        let Timer {
            name,
            f,
            interval,
            trigger,
        } = t;
        let trigger = trigger.unwrap_or_default();
        let run: RunFn = Box::new(move |cancel, health, _| {
            Box::pin(async move {
                let rx = trigger.rx.lock().take();
                if rx.is_none() {
                    tracing::warn!(
                        health_id = health.id(),
                        "trigger already used by another timer job; ignoring it"
                    );
                }
                let mut rx = rx.unwrap_or_else(|| mpsc::channel(1).1);
                let mut runs = 0u64;
                loop {
                    // Requests that arrived before this run are served by it.
                    while rx.try_recv().is_ok() {}
                    if cancel.is_cancelled() {
                        break;
                    }
                    let res = f(cancel.clone()).await;
                    runs += 1;
                    match res {
                        Ok(()) => health.ok(format!("{runs} run(s)")),
                        Err(e) => health.degraded("run failed", e),
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(interval) => {}
                        Some(()) = rx.recv() => {}
                    }
                }
                health.stopped("cancelled");
            })
        });
        Job { name, run }
    }
}

struct GroupInner {
    lifecycle: Lifecycle,
    health: Health,
    shutdowner: Shutdowner,
    cancel: CancellationToken,
    tasks: Mutex<JoinSet<()>>,
    names: Mutex<Vec<String>>,
}

impl GroupInner {
    fn spawn(&self, job: Job) {
        let health = self.health.scope(&format!("job-{}", job.name));
        let token = self.cancel.child_token();
        tracing::debug!(
            job = job.name,
            module = self.lifecycle.module(),
            "job started"
        );
        self.tasks
            .lock()
            .spawn((job.run)(token, health, self.shutdowner.clone()));
    }
}

/// The jobs of one module. Inject it and [`add`](JobGroup::add) jobs from a constructor.
#[derive(Clone)]
pub struct JobGroup {
    inner: Arc<GroupInner>,
}

impl JobGroup {
    pub(crate) fn new(lifecycle: Lifecycle, health: Health, shutdowner: Shutdowner) -> Self {
        let inner = Arc::new(GroupInner {
            lifecycle: lifecycle.clone(),
            health,
            shutdowner,
            cancel: CancellationToken::new(),
            tasks: Mutex::new(JoinSet::new()),
            names: Mutex::new(Vec::new()),
        });
        let weak: Weak<GroupInner> = Arc::downgrade(&inner);
        lifecycle.append_pre_stop(Arc::new(move || {
            let weak = weak.clone();
            Box::pin(async move {
                let Some(g) = weak.upgrade() else {
                    return Ok(());
                };
                g.cancel.cancel();
                // Owned by this future: if the stop timeout drops it, the tasks are aborted.
                let mut tasks = std::mem::take(&mut *g.tasks.lock());
                let mut panicked = Vec::new();
                while let Some(res) = tasks.join_next().await {
                    if let Err(e) = res
                        && e.is_panic()
                    {
                        panicked.push(e.to_string());
                    }
                }
                if panicked.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "module {}: {} job(s) panicked: {}",
                        crate::graph::module_name(g.lifecycle.module()),
                        panicked.len(),
                        panicked.join("; ")
                    ))
                }
            })
        }));
        JobGroup { inner }
    }

    /// Add a job: before start it joins the lifecycle now; after start it runs at once.
    pub fn add(&self, job: impl Into<Job>) {
        let job = job.into();
        self.inner.names.lock().push(job.name.clone());
        match self.inner.lifecycle.state() {
            LifecycleState::Idle => self.inner.lifecycle.append(JobHook {
                name: format!("job-{}", job.name),
                group: Arc::downgrade(&self.inner),
                job: Mutex::new(Some(job)),
            }),
            LifecycleState::Starting | LifecycleState::Started => self.inner.spawn(job),
            LifecycleState::Stopped => {
                tracing::warn!(
                    job = job.name,
                    module = self.inner.lifecycle.module(),
                    "job added after stop; not run"
                );
            }
        }
    }

    /// Names of the jobs added so far.
    pub fn job_names(&self) -> Vec<String> {
        self.inner.names.lock().clone()
    }
}

struct JobHook {
    name: String,
    group: Weak<GroupInner>,
    job: Mutex<Option<Job>>,
}

#[async_trait::async_trait]
impl Hook for JobHook {
    fn name(&self) -> String {
        self.name.clone()
    }
    async fn start(&self, _ctx: HookContext) -> anyhow::Result<()> {
        if let (Some(group), Some(job)) = (self.group.upgrade(), self.job.lock().take()) {
            group.spawn(job);
        }
        Ok(())
    }
}

impl Inject for JobGroup {
    fn dependency() -> Dependency {
        Dependency::Builtin("JobGroup")
    }
    fn resolve(ctx: &mut ResolveCtx<'_>) -> Result<Self, HiveError> {
        Ok(ctx.job_group())
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.duration(0), Duration::from_millis(100));
        assert_eq!(b.duration(2), Duration::from_millis(400));
        assert_eq!(b.duration(10), Duration::from_secs(1));
        assert_eq!(b.duration(200), Duration::from_secs(1));
    }
}
