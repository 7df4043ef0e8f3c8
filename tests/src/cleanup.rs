//! Cleaning up after an interrupted run. What the harness makes on the host (namespaces,
//! links, agents and their pins, cgroups, iptables chains, sysctls) is undone by its owner's
//! `Drop`, also after a panic, but `Drop` does not run when the process is killed by a signal:
//! Ctrl-C during `make test`, a CI job's timeout, a closed terminal. So each owner also
//! registers the same undo here ([`on_interrupt`]). On SIGINT, SIGTERM or SIGHUP a watcher
//! thread runs every undo still registered, newest first, and exits with 128 + the signal
//! number. An owner that cleaned up by itself drops its [`OnInterrupt`], which deregisters it.
//! Host changes the harness makes through [`busy`] (every `run`/`run_ok` command) are waited
//! for before the undo starts, and none starts after it: such a thread stops for good. While
//! the undo runs, a thread that panics (its agent or namespace just went away) waits instead of
//! unwinding, so a panicking main thread cannot end the process half-way.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Set once a signal arrived: the undo is running and the process is about to exit.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Threads inside [`busy`] sections.
static BUSY: AtomicUsize = AtomicUsize::new(0);

/// Stops the calling thread for good (the watcher is about to exit the process).
fn stop_here() -> ! {
    loop {
        std::thread::park();
    }
}

/// Marks the calling thread as changing host state until the guard drops: an interrupt's undo
/// waits (up to 10 s) for it to finish. Once the undo has begun, the thread stops here instead.
pub fn busy() -> Busy {
    if INTERRUPTED.load(Ordering::SeqCst) {
        stop_here();
    }
    BUSY.fetch_add(1, Ordering::SeqCst);
    if INTERRUPTED.load(Ordering::SeqCst) {
        BUSY.fetch_sub(1, Ordering::SeqCst);
        stop_here();
    }
    Busy(())
}

/// See [`busy`].
#[must_use = "the section ends when it is dropped"]
pub struct Busy(());

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.fetch_sub(1, Ordering::SeqCst);
    }
}

type Undo = Box<dyn Fn() + Send>;

#[derive(Default)]
struct Registry {
    next: u64,
    undo: BTreeMap<u64, Undo>,
}

fn registry() -> MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// A registered undo: run if the process is interrupted while it is alive, forgotten (not
/// run) when dropped.
#[must_use = "dropping it deregisters the undo at once"]
pub struct OnInterrupt(u64);

impl Drop for OnInterrupt {
    fn drop(&mut self) {
        registry().undo.remove(&self.0);
    }
}

/// Registers `undo` to run if the process is interrupted (SIGINT, SIGTERM, SIGHUP) before the
/// returned guard is dropped. `undo` must be harmless when there is nothing left to undo.
pub fn on_interrupt(undo: impl Fn() + Send + 'static) -> OnInterrupt {
    watch_signals();
    if INTERRUPTED.load(Ordering::SeqCst) {
        // Whatever it guards would be made after the undo: do not make it.
        stop_here();
    }
    let mut r = registry();
    r.next += 1;
    let id = r.next;
    r.undo.insert(id, Box::new(undo));
    OnInterrupt(id)
}

/// Runs `prog args`, quietly, ignoring the outcome (for undo closures).
pub fn quiet(prog: &str, args: &[&str]) {
    let _ = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Starts the watcher thread once; returns when its signal handlers are installed.
fn watch_signals() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let (ready, installed) = std::sync::mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("undo-on-signal".into())
            .spawn(move || {
                let Some(signo) = wait_for_signal(&ready) else {
                    return;
                };
                INTERRUPTED.store(true, Ordering::SeqCst);
                let deadline = Instant::now() + Duration::from_secs(10);
                while BUSY.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let undo = std::mem::take(&mut registry().undo);
                // Straight to fd 2: the test harness captures eprintln! of test threads (and
                // of threads they spawn), and would swallow this.
                let _ = writeln!(
                    std::io::stderr(),
                    "interrupted (signal {signo}): undoing {} things this run made on the host",
                    undo.len()
                );
                for f in undo.values().rev() {
                    f();
                }
                std::process::exit(128 + signo);
            });
        match spawned {
            Ok(_) => {
                let _ = installed.recv();
                let previous = std::panic::take_hook();
                std::panic::set_hook(Box::new(move |info| {
                    if INTERRUPTED.load(Ordering::SeqCst) {
                        // The watcher exits the process once the undo is done.
                        stop_here();
                    }
                    previous(info);
                }));
            }
            Err(e) => eprintln!("no cleanup on interrupt: cannot start its thread: {e}"),
        }
    });
}

/// Installs the handlers, says so on `ready`, then waits for one of the signals; its number.
fn wait_for_signal(ready: &std::sync::mpsc::Sender<()>) -> Option<i32> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let Ok(rt) = rt else {
        eprintln!("no cleanup on interrupt: cannot build its runtime");
        let _ = ready.send(());
        return None;
    };
    rt.block_on(async {
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            eprintln!("no cleanup on interrupt: cannot install the signal handlers");
            let _ = ready.send(());
            return None;
        };
        let _ = ready.send(());
        Some(tokio::select! {
            _ = int.recv() => 2,
            _ = term.recv() => 15,
            _ = hup.recv() => 1,
        })
    })
}
