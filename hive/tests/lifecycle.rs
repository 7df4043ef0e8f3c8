//! Lifecycle: dependency-ordered start, reverse stop, unwind, timeouts, metrics, shutdowner.

use std::sync::Arc;
use std::time::Duration;

use hive::{
    FnHook, Hive, HiveError, Invoke, Lifecycle, LifecycleOptions, Module, Provide, Shutdowner,
};
use parking_lot::Mutex;

#[derive(Default)]
struct Log(Mutex<Vec<String>>);

impl Log {
    fn push(&self, s: impl Into<String>) {
        self.0.lock().push(s.into());
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock())
    }
}

fn ok<T>(v: T) -> anyhow::Result<T> {
    Ok(v)
}

fn recording_hook(log: &Arc<Log>, name: &str) -> FnHook {
    let (l1, l2, n1, n2) = (log.clone(), log.clone(), name.to_string(), name.to_string());
    FnHook::new(
        name,
        move |_| {
            let (l, n) = (l1.clone(), n1.clone());
            async move {
                l.push(format!("start {n}"));
                Ok(())
            }
        },
        move |_| {
            let (l, n) = (l2.clone(), n2.clone());
            async move {
                l.push(format!("stop {n}"));
                Ok(())
            }
        },
    )
}

struct Db;
struct Api;
struct Server;

#[tokio::test]
async fn start_follows_dependencies_and_stop_reverses() {
    let log = Arc::new(Log::default());
    // Declared in reverse dependency order on purpose.
    let hive = Hive::new(vec![
        Provide::arc(log.clone()),
        Module::new(
            "agent",
            "",
            vec![
                Provide::new(|lc: Lifecycle, log: Arc<Log>, _api: Arc<Api>| {
                    lc.append(recording_hook(&log, "server"));
                    ok(Server)
                }),
                Provide::new(|lc: Lifecycle, log: Arc<Log>, _db: Arc<Db>| {
                    lc.append(recording_hook(&log, "api"));
                    ok(Api)
                }),
                Provide::new(|lc: Lifecycle, log: Arc<Log>| {
                    lc.append(recording_hook(&log, "db"));
                    ok(Db)
                }),
                Invoke::new(|_s: Arc<Server>| ok(())),
            ],
        ),
    ]);
    hive.start().await.expect("start");
    assert_eq!(log.take(), ["start db", "start api", "start server"]);
    hive.stop().await.expect("stop");
    assert_eq!(log.take(), ["stop server", "stop api", "stop db"]);
}

#[tokio::test]
async fn failed_start_unwinds_in_reverse() {
    let log = Arc::new(Log::default());
    let hive = Hive::new(vec![
        Provide::arc(log.clone()),
        Module::new(
            "agent",
            "",
            vec![Invoke::new(|lc: Lifecycle, log: Arc<Log>| {
                lc.append(recording_hook(&log, "one"));
                lc.append(recording_hook(&log, "two"));
                lc.append(FnHook::start_only("broken", |_| async {
                    Err(anyhow::anyhow!("port 80 in use"))
                }));
                lc.append(recording_hook(&log, "never"));
                ok(())
            })],
        ),
    ]);
    let err = hive.start().await.expect_err("must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("start hook broken in module agent failed: port 80 in use"),
        "{msg}"
    );
    assert_eq!(
        log.take(),
        ["start one", "start two", "stop two", "stop one"]
    );
}

#[tokio::test(start_paused = true)]
async fn start_and_stop_timeouts() {
    let hive = Hive::new(vec![Module::new(
        "slow",
        "",
        vec![Invoke::new(|lc: Lifecycle| {
            lc.append(FnHook::new(
                "sleepy",
                |ctx| async move {
                    // Waits for its own deadline to be signalled through the context.
                    ctx.cancel.cancelled().await;
                    Ok(())
                },
                |_| async { Ok(()) },
            ));
            ok(())
        })],
    )])
    .with_options(LifecycleOptions {
        start_timeout: Duration::from_secs(2),
        ..LifecycleOptions::default()
    });
    let err = hive.start().await.expect_err("must time out");
    assert!(
        matches!(&err, HiveError::HookTimeout { phase: "start", hook, module, timeout }
            if hook == "sleepy" && module == "slow" && *timeout == Duration::from_secs(2)),
        "{err}"
    );

    let hive = Hive::new(vec![Invoke::new(|lc: Lifecycle| {
        lc.append(FnHook::new(
            "stuck-stop",
            |_| async { Ok(()) },
            |_| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            },
        ));
        ok(())
    })])
    .with_options(LifecycleOptions {
        stop_timeout: Duration::from_secs(5),
        ..LifecycleOptions::default()
    });
    hive.start().await.expect("start");
    let msg = hive
        .stop()
        .await
        .expect_err("stop must time out")
        .to_string();
    assert!(
        msg.contains("stop hook stuck-stop") && msg.contains("5s"),
        "{msg}"
    );
}

#[tokio::test]
async fn hook_durations_are_exported() {
    let hive = Hive::new(vec![Module::new(
        "agent",
        "",
        vec![Invoke::new(|lc: Lifecycle| {
            lc.append(FnHook::start_only("quick", |_| async { Ok(()) }));
            ok(())
        })],
    )]);
    hive.start().await.expect("start");
    hive.stop().await.expect("stop");
    let families = hive.registry().gather();
    let fam = families
        .iter()
        .find(|f| f.name() == "cilium_hive_hook_duration_seconds")
        .expect("metric registered");
    let labels: Vec<Vec<(String, String)>> = fam
        .get_metric()
        .iter()
        .map(|m| {
            m.get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().to_string()))
                .collect()
        })
        .collect();
    assert!(
        labels
            .iter()
            .any(|l| l.contains(&("hook".into(), "quick".into()))
                && l.contains(&("module".into(), "agent".into()))
                && l.contains(&("phase".into(), "stop".into()))),
        "{labels:?}"
    );
}

#[tokio::test]
async fn shutdowner_stops_run_with_its_error() {
    let log = Arc::new(Log::default());
    let hive = Hive::new(vec![
        Provide::arc(log.clone()),
        Module::new(
            "agent",
            "",
            vec![Invoke::new(
                |lc: Lifecycle, sd: Shutdowner, log: Arc<Log>| {
                    lc.append(recording_hook(&log, "server"));
                    lc.append(FnHook::start_only("watchdog", move |_| {
                        let sd = sd.clone();
                        async move {
                            tokio::spawn(async move {
                                sd.shutdown(Some(anyhow::anyhow!("lost the kvstore")));
                            });
                            Ok(())
                        }
                    }));
                    ok(())
                },
            )],
        ),
    ]);
    let err = hive.run_with_args(["agent"]).await.expect_err("must fail");
    assert!(matches!(err, HiveError::Shutdown(_)), "{err}");
    assert!(err.to_string().contains("lost the kvstore"), "{err}");
    assert_eq!(log.take(), ["start server", "stop server"]);
}

#[tokio::test]
async fn run_with_help_prints_and_returns_ok() {
    let hive = Hive::new(vec![Invoke::new(|| Err(anyhow::anyhow!("must not run")))]);
    hive.run_with_args(["agent", "--help"])
        .await
        .expect("help is not an error");
}

#[test]
fn hive_and_its_futures_are_send() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    fn assert_send<T: Send>(_: &T) {}
    let hive = Hive::new(vec![]);
    assert_send_sync(&hive);
    assert_send(&hive.start());
    assert_send(&hive.stop());
    assert_send(&hive.run_with_args(["agent"]));
}
