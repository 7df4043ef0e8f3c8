//! Jobs and health: retry, trigger coalescing, observers, ordering, health rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hive::{
    Backoff, FnHook, Health, Hive, Invoke, Job, JobGroup, Level, Lifecycle, Module, Provide,
    Trigger,
};
use parking_lot::Mutex;

fn ok<T>(v: T) -> anyhow::Result<T> {
    Ok(v)
}

/// Wait (in paused or real time) until `cond` holds, failing after a bounded number of polls.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(start_paused = true)]
async fn one_shot_retries_with_backoff_then_succeeds() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let hive = Hive::new(vec![Module::new(
        "agent",
        "",
        vec![Invoke::new(move |jobs: JobGroup| {
            let a = a.clone();
            jobs.add(
                Job::one_shot("sync", move |_cancel, _health| {
                    let a = a.clone();
                    async move {
                        if a.fetch_add(1, Ordering::SeqCst) < 2 {
                            Err(anyhow::anyhow!("not yet"))
                        } else {
                            Ok(())
                        }
                    }
                })
                .with_retry(
                    5,
                    Backoff {
                        min: Duration::from_secs(1),
                        max: Duration::from_secs(10),
                    },
                ),
            );
            ok(())
        })],
    )]);
    hive.start().await.expect("start");
    let health = hive.health();
    eventually("job completed", || {
        health
            .get("agent.job-sync")
            .is_some_and(|s| s.level == Level::Stopped)
    })
    .await;
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert_eq!(
        health.get("agent.job-sync").map(|s| s.message),
        Some("completed".to_string())
    );
    hive.stop().await.expect("stop");
}

#[tokio::test(start_paused = true)]
async fn one_shot_gives_up_and_reports_degraded() {
    let hive = Hive::new(vec![Module::new(
        "agent",
        "",
        vec![Invoke::new(|jobs: JobGroup| {
            jobs.add(
                Job::one_shot("flaky", |_c, _h| async {
                    Err(anyhow::anyhow!("device eth9 not found"))
                })
                .with_retry(2, Backoff::default()),
            );
            ok(())
        })],
    )]);
    hive.start().await.expect("start");
    let health = hive.health();
    eventually("job failed", || {
        health
            .get("agent.job-flaky")
            .is_some_and(|s| s.message.starts_with("failed after 3 attempt"))
    })
    .await;
    let row = health.get("agent.job-flaky").expect("row");
    assert_eq!(row.level, Level::Degraded);
    assert_eq!(row.error.as_deref(), Some("device eth9 not found"));
    hive.stop().await.expect("stop");
}

#[tokio::test(start_paused = true)]
async fn timer_trigger_coalesces() {
    let runs = Arc::new(AtomicUsize::new(0));
    let trigger = Trigger::new();
    let (r, t) = (runs.clone(), trigger.clone());
    let hive = Hive::new(vec![Module::new(
        "agent",
        "",
        vec![Invoke::new(move |jobs: JobGroup| {
            let r = r.clone();
            jobs.add(
                Job::timer(
                    "refresh",
                    move |_c| {
                        let r = r.clone();
                        async move {
                            r.fetch_add(1, Ordering::SeqCst);
                            Ok(())
                        }
                    },
                    Duration::from_secs(3600),
                )
                .with_trigger(t.clone()),
            );
            ok(())
        })],
    )]);
    hive.start().await.expect("start");
    eventually("first run", || runs.load(Ordering::SeqCst) == 1).await;
    for _ in 0..10 {
        trigger.trigger();
    }
    eventually("triggered run", || runs.load(Ordering::SeqCst) >= 2).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "ten triggers coalesce into one run"
    );
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 3, "the interval still runs it");
    hive.stop().await.expect("stop");
    assert_eq!(
        hive.health().get("agent.job-refresh").map(|s| s.level),
        Some(Level::Stopped)
    );
}

#[tokio::test]
async fn observer_processes_stream_and_reports() {
    let sum = Arc::new(AtomicUsize::new(0));
    let s = sum.clone();
    let hive = Hive::new(vec![Module::new(
        "agent",
        "",
        vec![Invoke::new(move |jobs: JobGroup| {
            let s = s.clone();
            jobs.add(Job::observer(
                "events",
                futures::stream::iter(vec![1usize, 2, 3]),
                move |v| {
                    let s = s.clone();
                    async move {
                        s.fetch_add(v, Ordering::SeqCst);
                        Ok(())
                    }
                },
            ));
            ok(())
        })],
    )]);
    hive.start().await.expect("start");
    let health = hive.health();
    eventually("stream ended", || {
        health
            .get("agent.job-events")
            .is_some_and(|s| s.level == Level::Stopped)
    })
    .await;
    assert_eq!(sum.load(Ordering::SeqCst), 6);
    hive.stop().await.expect("stop");
}

#[derive(Default)]
struct Log(Mutex<Vec<String>>);

#[tokio::test]
async fn jobs_start_at_add_position_and_stop_before_hooks() {
    let log = Arc::new(Log::default());
    let late_group: Arc<Mutex<Option<JobGroup>>> = Arc::default();
    let lg = late_group.clone();
    let hive = Hive::new(vec![
        Provide::arc(log.clone()),
        Module::new(
            "agent",
            "",
            vec![Invoke::new(
                move |lc: Lifecycle, jobs: JobGroup, log: Arc<Log>| {
                    let (l1, l2) = (log.clone(), log.clone());
                    lc.append(FnHook::new(
                        "before",
                        move |_| {
                            let l = l1.clone();
                            async move {
                                l.0.lock().push("start before".into());
                                Ok(())
                            }
                        },
                        move |_| {
                            let l = l2.clone();
                            async move {
                                l.0.lock().push("stop before".into());
                                Ok(())
                            }
                        },
                    ));
                    let l = log.clone();
                    jobs.add(Job::one_shot("worker", move |cancel, _h| {
                        let l = l.clone();
                        async move {
                            let saw = l.0.lock().contains(&"start before".to_string());
                            l.0.lock().push(format!("job running, saw hook: {saw}"));
                            cancel.cancelled().await;
                            l.0.lock().push("job cancelled".into());
                            Ok(())
                        }
                    }));
                    *lg.lock() = Some(jobs);
                    ok(())
                },
            )],
        ),
    ]);
    hive.start().await.expect("start");
    eventually("job running", || {
        log.0.lock().iter().any(|l| l.starts_with("job running"))
    })
    .await;

    // A job added after start runs at once.
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let group = late_group.lock().clone().expect("group");
    group.add(Job::one_shot("late", move |_c, _h| {
        let r = r.clone();
        async move {
            r.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }));
    eventually("late job ran", || ran.load(Ordering::SeqCst) == 1).await;

    hive.stop().await.expect("stop");
    let log = log.0.lock().clone();
    assert_eq!(
        log,
        [
            "start before",
            "job running, saw hook: true",
            "job cancelled",
            "stop before"
        ]
    );
}

#[tokio::test]
async fn module_health_is_in_the_table() {
    let hive = Hive::new(vec![Module::new(
        "agent",
        "",
        vec![Module::new(
            "ipam",
            "",
            vec![Invoke::new(|h: Health| {
                h.ok("allocator ready");
                h.scope("pool")
                    .degraded("pool exhausted", "no free addresses in 10.0.0.0/24");
                h.scope("pool")
                    .degraded("pool exhausted", "no free addresses in 10.0.0.0/24");
                ok(())
            })],
        )],
    )]);
    hive.populate().expect("populate");
    let health = hive.health();
    let row = health.get("agent.ipam").expect("module row");
    assert_eq!(
        (row.level, row.message.as_str()),
        (Level::Ok, "allocator ready")
    );
    let pool = health.get("agent.ipam.pool").expect("scope row");
    assert_eq!((pool.level, pool.count), (Level::Degraded, 2));
    assert_eq!(
        pool.error.as_deref(),
        Some("no free addresses in 10.0.0.0/24")
    );
}

#[tokio::test]
async fn health_rows_live_in_the_statedb_table() {
    use hive::statedb::{Db, Table};
    use hive::{HEALTH_TABLE, HealthStatus};
    let hive = Hive::new(vec![Module::new(
        "agent",
        "",
        vec![Invoke::new(
            |h: Health, db: Arc<Db>, table: Arc<Table<HealthStatus>>| {
                h.ok("up");
                h.scope("sub").stopped("done");
                let txn = db.read_txn();
                let ids: Vec<String> = table.all(&txn).map(|o| o.id.clone()).collect();
                assert_eq!(ids, ["agent", "agent.sub"]);
                h.close();
                assert_eq!(
                    table.all(&db.read_txn()).count(),
                    0,
                    "close removes the subtree"
                );
                h.degraded("reconcile failed", "EPERM");
                ok(())
            },
        )],
    )]);
    hive.populate().expect("populate");
    let txn = hive.db().read_txn();
    let dump = txn.dump_table(HEALTH_TABLE).expect("dump");
    assert_eq!(dump.len(), 1);
    let row = &dump[0]["object"];
    assert_eq!(row["id"], "agent");
    assert_eq!(row["level"], "degraded");
    assert_eq!(row["error"], "EPERM");
    assert_eq!(row["count"], 1);
    assert!(
        row["updated_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{row}"
    );
}

#[tokio::test(start_paused = true)]
async fn stuck_job_is_aborted_at_the_stop_timeout() {
    let hive = Hive::new(vec![Module::new(
        "agent",
        "",
        vec![Invoke::new(|jobs: JobGroup| {
            jobs.add(Job::one_shot("deaf", |_cancel, _h| async {
                // Ignores its cancellation token.
                tokio::time::sleep(Duration::from_secs(86400)).await;
                Ok(())
            }));
            Ok(())
        })],
    )])
    .with_options(hive::LifecycleOptions {
        stop_timeout: Duration::from_secs(3),
        ..hive::LifecycleOptions::default()
    });
    hive.start().await.expect("start");
    let msg = hive.stop().await.expect_err("must time out").to_string();
    assert!(msg.contains("did not stop within 3s"), "{msg}");
}
