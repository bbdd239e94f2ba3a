//! Request coalescing: at most one task per key does the work; everyone else asking for the
//! same key meanwhile shares its result.
//!
//! The work runs in its own task, so a caller that goes away (a client that disconnects) stops
//! waiting without cancelling the work for the others. The key leaves the table when the work
//! ends, success or not: errors are shared with the current waiters but never remembered.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::oneshot;

/// A result shared by every waiter of one key.
pub type SharedResult<T, E> = Shared<BoxFuture<'static, Result<T, Arc<E>>>>;

/// Error for work that ended without a result (its task panicked or was dropped).
pub trait Abandoned {
    fn abandoned() -> Self;
}

pub struct Coalescer<K, T, E> {
    inflight: Mutex<HashMap<K, SharedResult<T, E>>>,
}

impl<K, T, E> Default for Coalescer<K, T, E> {
    fn default() -> Self {
        Coalescer {
            inflight: Mutex::new(HashMap::new()),
        }
    }
}

/// Removes a key from the table when the work ends, however it ends.
struct Leave<K: Hash + Eq, T, E> {
    table: Arc<Coalescer<K, T, E>>,
    key: Option<K>,
}

impl<K: Hash + Eq, T, E> Drop for Leave<K, T, E> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.table
                .inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        }
    }
}

impl<K, T, E> Coalescer<K, T, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    E: Abandoned + Send + Sync + 'static,
{
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, SharedResult<T, E>>> {
        // A panic while holding this lock cannot leave the map inconsistent (single
        // insert/remove calls), so a poisoned lock is still usable.
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether work for `key` is under way.
    pub fn contains(&self, key: &K) -> bool {
        self.lock().contains_key(key)
    }

    /// Joins the work under way for `key`, or starts `work` in a new task. Returns the shared
    /// result and whether this call started the work.
    pub fn join_or_start<F>(
        self: &Arc<Self>,
        key: K,
        work: impl FnOnce() -> F,
    ) -> (SharedResult<T, E>, bool)
    where
        F: Future<Output = Result<T, Arc<E>>> + Send + 'static,
    {
        let mut map = self.lock();
        if let Some(existing) = map.get(&key) {
            return (existing.clone(), false);
        }
        let leave = Leave {
            table: self.clone(),
            key: Some(key.clone()),
        };
        let work = work();
        let task = tokio::spawn(async move {
            let result = work.await;
            drop(leave);
            result
        });
        let shared = async move { task.await.unwrap_or_else(|_| Err(Arc::new(E::abandoned()))) }
            .boxed()
            .shared();
        map.insert(key, shared.clone());
        (shared, true)
    }

    /// Registers `key` as under way, fed by the caller through the returned sender (used when
    /// one origin response delivers several chunks). `None` when work for it is already under
    /// way. Dropping the sender fails the waiters; [`Coalescer::finish`] removes the key.
    pub fn start_pending(&self, key: K) -> Option<oneshot::Sender<Result<T, Arc<E>>>> {
        let mut map = self.lock();
        if map.contains_key(&key) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let shared = async move { rx.await.unwrap_or_else(|_| Err(Arc::new(E::abandoned()))) }
            .boxed()
            .shared();
        map.insert(key, shared);
        Some(tx)
    }

    /// Ends pending work for `key` (see [`Coalescer::start_pending`]).
    pub fn finish(&self, key: &K) {
        self.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[derive(Debug)]
    struct Gone;
    impl Abandoned for Gone {
        fn abandoned() -> Self {
            Gone
        }
    }

    #[tokio::test]
    async fn one_run_for_many_callers_and_errors_are_not_kept() {
        let c: Arc<Coalescer<u32, u32, Gone>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let mut waiters = Vec::new();
        let mut leaders = 0;
        for _ in 0..50 {
            let runs = runs.clone();
            let (f, leader) = c.join_or_start(1, move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(7)
            });
            leaders += leader as usize;
            waiters.push(f);
        }
        for w in waiters {
            assert_eq!(w.await.unwrap(), 7);
        }
        assert_eq!((runs.load(Ordering::SeqCst), leaders), (1, 1));
        assert!(!c.contains(&1));
        // A failure is shared, then forgotten.
        let (f, _) = c.join_or_start(2, || async { Err(Arc::new(Gone)) });
        assert!(f.await.is_err());
        let (f, leader) = c.join_or_start(2, || async { Ok(3) });
        assert!(leader);
        assert_eq!(f.await.unwrap(), 3);
    }

    #[tokio::test]
    async fn a_dropped_waiter_does_not_cancel_the_work() {
        let c: Arc<Coalescer<u32, u32, Gone>> = Arc::default();
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        let (f, _) = c.join_or_start(1, move || async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            d.fetch_add(1, Ordering::SeqCst);
            Ok(1)
        });
        drop(f);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }
}
