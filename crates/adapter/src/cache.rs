//! One OAP query per (metric, entity) per refresh interval, however many HPAs and adapter
//! requests ask: answers are kept for the interval, and concurrent misses share the one
//! query in flight. Failures are shared by the callers waiting for them but not kept, so
//! the next request tries again.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

enum Slot<V: Clone> {
    Ready { value: V, at: Instant },
    Pending(Shared<BoxFuture<'static, V>>),
}

/// How a lookup was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// From a kept answer.
    Hit,
    /// By joining a query another caller started.
    Shared,
    /// By a new query.
    Miss,
}

impl Lookup {
    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Shared => "shared",
            Lookup::Miss => "miss",
        }
    }
}

pub struct Cache<K, V: Clone> {
    ttl: Duration,
    slots: Mutex<HashMap<K, Slot<V>>>,
}

impl<K, T, E> Cache<K, Result<T, E>>
where
    K: Eq + Hash + Clone + Send + 'static,
    T: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    pub fn new(ttl: Duration) -> Self {
        Cache {
            ttl,
            slots: Mutex::new(HashMap::new()),
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
            match slots.get(&key) {
                Some(Slot::Ready { value, at }) if at.elapsed() < self.ttl => {
                    return (value.clone(), Lookup::Hit);
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
            match &value {
                Ok(_) => {
                    slots.insert(
                        key,
                        Slot::Ready {
                            value: value.clone(),
                            at: Instant::now(),
                        },
                    );
                }
                Err(_) => {
                    slots.remove(&key);
                }
            }
        }
        (value, lookup)
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
}
