//! Values by key that expire after a TTL, with one fetch in flight per key:
//! concurrent callers for the same key share one registry request.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::error::FsResult;

struct Entry<V> {
    value: OnceCell<V>,
    /// When the value was stored; `None` while the first fetch is under way.
    stored: Mutex<Option<Instant>>,
}

pub struct TtlCache<K, V> {
    /// `None` = never expires.
    ttl: Option<Duration>,
    entries: Mutex<HashMap<K, Arc<Entry<V>>>>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Option<Duration>) -> Self {
        TtlCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn fresh(&self, e: &Entry<V>) -> bool {
        match (*e.stored.lock().unwrap(), self.ttl) {
            (None, _) => true, // being fetched: join it
            (Some(_), None) => true,
            (Some(at), Some(ttl)) => at.elapsed() < ttl,
        }
    }

    /// The cached value if still fresh, without fetching.
    pub fn peek(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().unwrap();
        let e = entries.get(key)?;
        if !self.fresh(e) {
            return None;
        }
        e.value.get().cloned()
    }

    /// The fresh value, or the result of `fetch` (shared with concurrent callers).
    /// Errors are not cached: the next caller tries again.
    pub async fn get_or_fetch<F, Fut>(&self, key: K, fetch: F) -> FsResult<V>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = FsResult<V>>,
    {
        let entry = {
            let mut entries = self.entries.lock().unwrap();
            match entries.get(&key) {
                Some(e) if self.fresh(e) => e.clone(),
                _ => {
                    let e = Arc::new(Entry {
                        value: OnceCell::new(),
                        stored: Mutex::new(None),
                    });
                    entries.insert(key, e.clone());
                    e
                }
            }
        };
        let v = entry
            .value
            .get_or_try_init(|| async {
                let v = fetch().await?;
                *entry.stored.lock().unwrap() = Some(Instant::now());
                Ok::<V, crate::error::FsError>(v)
            })
            .await?;
        Ok(v.clone())
    }

    /// Store a value learned another way (e.g. a tag's digest from a GET).
    pub fn insert(&self, key: K, value: V) {
        let e = Arc::new(Entry {
            value: OnceCell::new_with(Some(value)),
            stored: Mutex::new(Some(Instant::now())),
        });
        self.entries.lock().unwrap().insert(key, e);
    }

    /// Drops the value if it was stored more than `age` ago (a fetch under way
    /// is kept); true if something was dropped, so the next get fetches again.
    pub fn expire_if_older(&self, key: &K, age: Duration) -> bool {
        let mut entries = self.entries.lock().unwrap();
        let old = entries
            .get(key)
            .is_some_and(|e| e.stored.lock().unwrap().is_some_and(|at| at.elapsed() > age));
        if old {
            entries.remove(key);
        }
        old
    }

    /// The value if it was stored less than `age` ago, fresh or not (a
    /// listing that may lag by more than the TTL, bounded by `age`).
    pub fn peek_within(&self, key: &K, age: Duration) -> Option<V> {
        let entries = self.entries.lock().unwrap();
        let e = entries.get(key)?;
        let at = (*e.stored.lock().unwrap())?;
        (at.elapsed() < age).then(|| e.value.get().cloned()).flatten()
    }

    /// The TTL values are kept for (`None`: forever).
    pub fn ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// Was the value stored more than `age` ago? (False while being fetched or when absent.)
    pub fn is_older_than(&self, key: &K, age: Duration) -> bool {
        self.entries
            .lock()
            .unwrap()
            .get(key)
            .is_some_and(|e| e.stored.lock().unwrap().is_some_and(|at| at.elapsed() > age))
    }

    /// Forget every value.
    pub fn clear(&self) {
        self.entries.lock().unwrap().clear();
    }

    pub fn invalidate(&self, key: &K) {
        self.entries.lock().unwrap().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Cause, FsError};
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn shares_one_fetch_and_expires() {
        let c: TtlCache<&str, u32> = TtlCache::new(Some(Duration::from_millis(50)));
        let calls = AtomicU32::new(0);
        let fetch = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(7)
        };
        let (a, b) = tokio::join!(c.get_or_fetch("k", fetch), c.get_or_fetch("k", fetch));
        assert_eq!((a.unwrap(), b.unwrap()), (7, 7));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(c.peek(&"k"), Some(7));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(c.peek(&"k"), None);
        assert_eq!(
            c.peek_within(&"k", Duration::from_secs(5)),
            Some(7),
            "stale but within the bound"
        );
        assert_eq!(c.peek_within(&"k", Duration::from_millis(20)), None);
        assert!(c.is_older_than(&"k", Duration::from_millis(20)));
        c.get_or_fetch("k", fetch).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        c.clear();
        assert_eq!(c.peek(&"k"), None);
    }

    #[tokio::test]
    async fn errors_are_not_cached() {
        let c: TtlCache<u8, u8> = TtlCache::new(None);
        let e = c
            .get_or_fetch(1, || async { Err(FsError::new(Cause::Io, "down")) })
            .await;
        assert_eq!(e.unwrap_err().cause, Cause::Io);
        assert_eq!(c.get_or_fetch(1, || async { Ok(3) }).await.unwrap(), 3);
    }
}
