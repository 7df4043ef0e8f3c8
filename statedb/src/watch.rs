//! Close-once notifications ([`Watch`]) and waiting on many of them ([`WatchSet`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use futures::FutureExt;
use tokio::sync::Notify;

struct Inner {
    closed: AtomicBool,
    notify: Notify,
}

/// A close-once notification: it closes when the watched data changes. Cheap to clone;
/// awaitable from any async runtime ([`Watch::changed`]) or blocking ([`Watch::wait_blocking`]).
#[derive(Clone)]
pub struct Watch(Arc<Inner>);

static CLOSED: LazyLock<Watch> = LazyLock::new(|| {
    let w = Watch::new();
    w.close();
    w
});

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Default for Watch {
    fn default() -> Self {
        Self::new()
    }
}

impl Watch {
    /// A new open watch.
    pub fn new() -> Self {
        Watch(Arc::new(Inner {
            closed: AtomicBool::new(false),
            notify: Notify::new(),
        }))
    }

    /// A shared, already closed watch (no allocation).
    pub fn closed() -> Self {
        CLOSED.clone()
    }

    /// Closes the watch, waking every waiter. Idempotent.
    pub fn close(&self) {
        if !self.0.closed.swap(true, Ordering::SeqCst) {
            self.0.notify.notify_waiters();
        }
    }

    /// True once the watch is closed.
    pub fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::SeqCst)
    }

    /// Completes when the watch is closed (immediately if it already is).
    pub async fn changed(&self) {
        // Create the Notified future before checking the flag: notify_waiters wakes every
        // Notified created before it, so a close between check and await is not lost.
        let notified = self.0.notify.notified();
        if self.is_closed() {
            return;
        }
        notified.await;
    }

    /// Blocks the current thread until the watch is closed. Do not call from async code.
    pub fn wait_blocking(&self) {
        futures::executor::block_on(self.changed());
    }

    /// True if both handles refer to the same watch.
    pub fn same(&self, other: &Watch) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// A set of watches to wait on together.
#[derive(Debug, Default, Clone)]
pub struct WatchSet {
    watches: Vec<Watch>,
}

impl WatchSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a watch (duplicates of the same watch are skipped).
    pub fn add(&mut self, w: Watch) {
        if !self.watches.iter().any(|x| x.same(&w)) {
            self.watches.push(w);
        }
    }

    /// Number of watches in the set.
    pub fn len(&self) -> usize {
        self.watches.len()
    }

    /// True if the set holds no watch.
    pub fn is_empty(&self) -> bool {
        self.watches.is_empty()
    }

    /// Removes every watch.
    pub fn clear(&mut self) {
        self.watches.clear();
    }

    /// Waits until at least one watch closes and returns all closed ones (removing them
    /// from the set). With an empty set this never completes.
    pub async fn wait(&mut self) -> Vec<Watch> {
        if !self.watches.iter().any(Watch::is_closed) {
            if self.watches.is_empty() {
                futures::future::pending::<()>().await;
            }
            let futs = self.watches.iter().map(|w| {
                let w = w.clone();
                async move { w.changed().await }.boxed()
            });
            futures::future::select_all(futs).await;
        }
        let (closed, open): (Vec<_>, Vec<_>) = self.watches.drain(..).partition(Watch::is_closed);
        self.watches = open;
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn close_wakes_waiters() {
        let w = Watch::new();
        assert!(!w.is_closed());
        let w2 = w.clone();
        let h = tokio::spawn(async move { w2.changed().await });
        tokio::task::yield_now().await;
        w.close();
        h.await.unwrap();
        assert!(w.is_closed());
        w.changed().await; // already closed: immediate
    }

    #[tokio::test]
    async fn watch_set_returns_closed() {
        let (a, b) = (Watch::new(), Watch::new());
        let mut set = WatchSet::new();
        set.add(a.clone());
        set.add(b.clone());
        set.add(a.clone());
        assert_eq!(set.len(), 2);
        let bb = b.clone();
        tokio::spawn(async move { bb.close() });
        let closed = set.wait().await;
        assert_eq!(closed.len(), 1);
        assert!(closed[0].same(&b));
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn blocking_wait() {
        let w = Watch::new();
        let w2 = w.clone();
        let t = std::thread::spawn(move || w2.wait_blocking());
        w.close();
        t.join().unwrap();
        assert!(Watch::closed().is_closed());
    }
}
