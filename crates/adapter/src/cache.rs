//! One query per key per interval, however many callers ask: answers are kept for the
//! interval, and concurrent misses share the one query in flight. Failures are shared by
//! the callers waiting for them but not kept, so the next request tries again.
//!
//! With refresh-ahead (the metric reads), an answer past its interval is still served for
//! one more interval while a single background query refreshes it, so after the first read
//! no caller waits for OAP; a refresh that fails drops the answer, and the next callers
//! wait for a query of their own and see its error.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

type Query<V> = Shared<BoxFuture<'static, V>>;

enum Slot<V: Clone> {
    Ready {
        value: V,
        at: Instant,
        /// The background query renewing this answer, when one runs.
        refreshing: bool,
    },
    Pending(Query<V>),
}

/// How a lookup was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// From a kept answer.
    Hit,
    /// From a kept answer past its interval, while a background query renews it.
    Stale,
    /// By joining a query another caller started.
    Shared,
    /// By a new query.
    Miss,
}

impl Lookup {
    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Stale => "stale",
            Lookup::Shared => "shared",
            Lookup::Miss => "miss",
        }
    }
}

pub struct Cache<K, V: Clone> {
    ttl: Duration,
    refresh_ahead: bool,
    slots: Arc<Mutex<HashMap<K, Slot<V>>>>,
}

impl<K, T, E> Cache<K, Result<T, E>>
where
    K: Eq + Hash + Clone + Send + 'static,
    T: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    /// Answers kept for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Cache {
            ttl,
            refresh_ahead: false,
            slots: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Answers kept for `ttl`, then served for one more `ttl` while being refreshed.
    pub fn with_refresh_ahead(ttl: Duration) -> Self {
        Cache {
            refresh_ahead: true,
            ..Cache::new(ttl)
        }
    }

    /// The value for `key`: kept, being fetched, or fetched now with `fetch`.
    pub async fn get(
        &self,
        key: K,
        fetch: impl FnOnce() -> BoxFuture<'static, Result<T, E>>,
    ) -> Result<T, E> {
        self.lookup(key, fetch).await.0
    }

    /// As [`Cache::get`], also saying how the value was found.
    pub async fn lookup(
        &self,
        key: K,
        fetch: impl FnOnce() -> BoxFuture<'static, Result<T, E>>,
    ) -> (Result<T, E>, Lookup) {
        let (pending, lookup) = {
            let mut slots = self.slots.lock().expect("never poisoned");
            match slots.get_mut(&key) {
                Some(Slot::Ready { value, at, .. }) if at.elapsed() < self.ttl => {
                    return (value.clone(), Lookup::Hit);
                }
                Some(Slot::Ready {
                    value,
                    at,
                    refreshing,
                }) if self.refresh_ahead && at.elapsed() < self.ttl * 2 => {
                    if !*refreshing {
                        *refreshing = true;
                        self.refresh(key, fetch());
                    }
                    return (value.clone(), Lookup::Stale);
                }
                Some(Slot::Pending(pending)) => (pending.clone(), Lookup::Shared),
                _ => {
                    // A new query: entries nobody asked for in a while go first.
                    let ttl = self.ttl;
                    slots.retain(|_, slot| match slot {
                        Slot::Ready { at, .. } => at.elapsed() < ttl * 10,
                        Slot::Pending(_) => true,
                    });
                    let pending = fetch().shared();
                    slots.insert(key.clone(), Slot::Pending(pending.clone()));
                    (pending, Lookup::Miss)
                }
            }
        };
        let value = pending.clone().await;
        let mut slots = self.slots.lock().expect("never poisoned");
        // Only the caller whose query this was settles the slot.
        if let Some(Slot::Pending(current)) = slots.get(&key)
            && current.ptr_eq(&pending)
        {
            settle(&mut slots, key, &value);
        }
        (value, lookup)
    }

    /// Renews `key` in the background; callers keep getting the kept answer meanwhile.
    fn refresh(&self, key: K, query: BoxFuture<'static, Result<T, E>>) {
        let slots = self.slots.clone();
        tokio::spawn(async move {
            let value = query.await;
            settle(&mut slots.lock().expect("never poisoned"), key, &value);
        });
    }
}

/// Keeps an answer, or forgets the key after a failure.
fn settle<K: Eq + Hash, T: Clone, E: Clone>(
    slots: &mut HashMap<K, Slot<Result<T, E>>>,
    key: K,
    value: &Result<T, E>,
) {
    match value {
        Ok(_) => {
            slots.insert(
                key,
                Slot::Ready {
                    value: value.clone(),
                    at: Instant::now(),
                    refreshing: false,
                },
            );
        }
        Err(_) => {
            slots.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting(
        calls: &Arc<AtomicUsize>,
        answer: Result<u32, String>,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<u32, String>> {
        let calls = calls.clone();
        move || {
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                answer
            }
            .boxed()
        }
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_query_and_answers_are_kept() {
        let cache = Arc::new(Cache::new(Duration::from_secs(10)));
        let calls = Arc::new(AtomicUsize::new(0));
        let asks = (0..20).map(|_| {
            let (cache, calls) = (cache.clone(), calls.clone());
            async move { cache.get("m", counting(&calls, Ok(7))).await }
        });
        let answers = futures::future::join_all(asks).await;
        assert!(answers.iter().all(|a| *a == Ok(7)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            cache.lookup("m", counting(&calls, Ok(8))).await,
            (Ok(7), Lookup::Hit)
        );
        assert_eq!(cache.get("m", counting(&calls, Ok(8))).await, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "kept for the interval");
        assert_eq!(cache.get("other", counting(&calls, Ok(9))).await, Ok(9));
        assert_eq!(calls.load(Ordering::SeqCst), 2, "per key");
    }

    #[tokio::test]
    async fn failures_are_not_kept_and_answers_expire() {
        let cache = Cache::new(Duration::from_millis(100));
        let calls = Arc::new(AtomicUsize::new(0));
        assert_eq!(
            cache.get("m", counting(&calls, Err("down".into()))).await,
            Err("down".into())
        );
        assert_eq!(cache.get("m", counting(&calls, Ok(1))).await, Ok(1));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(cache.get("m", counting(&calls, Ok(2))).await, Ok(2));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn with_refresh_ahead_a_past_answer_is_served_while_one_query_renews_it() {
        let cache = Arc::new(Cache::with_refresh_ahead(Duration::from_millis(100)));
        let calls = Arc::new(AtomicUsize::new(0));
        assert_eq!(cache.get("m", counting(&calls, Ok(1))).await, Ok(1));
        tokio::time::sleep(Duration::from_millis(120)).await;
        // Past the interval: the kept answer at once, and one renewal for all callers.
        for _ in 0..5 {
            assert_eq!(
                cache.lookup("m", counting(&calls, Ok(2))).await,
                (Ok(1), Lookup::Stale)
            );
        }
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            cache.lookup("m", counting(&calls, Ok(3))).await,
            (Ok(2), Lookup::Hit)
        );
        // A renewal that fails drops the answer: the next caller waits and sees the error.
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(
            cache.get("m", counting(&calls, Err("down".into()))).await,
            Ok(2)
        );
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(
            cache
                .lookup("m", counting(&calls, Err("still down".into())))
                .await,
            (Err("still down".into()), Lookup::Miss)
        );
        // Too old to serve: a plain miss.
        assert_eq!(cache.get("n", counting(&calls, Ok(5))).await, Ok(5));
        tokio::time::sleep(Duration::from_millis(210)).await;
        assert_eq!(
            cache.lookup("n", counting(&calls, Ok(6))).await,
            (Ok(6), Lookup::Miss)
        );
    }
}
