//! Merging identical requests in flight: callers asking for the same key while a
//! request for it is under way share that request and its result (success or
//! error) instead of sending their own.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

pub struct SingleFlight<K, V> {
    in_flight: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            in_flight: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> SingleFlight<K, V> {
    /// The result of `run` for `key`, shared with every concurrent caller for
    /// the same key. If the caller running it is cancelled, a waiting caller
    /// runs it instead (tokio's `OnceCell` hands initialisation on).
    pub async fn run<F, Fut>(&self, key: K, run: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = self.in_flight.lock().unwrap().entry(key.clone()).or_default().clone();
        // Removes the entry when this caller is done or cancelled, so the next
        // request for the key (after this one finished) is a fresh one.
        let _done = Forget {
            flight: self,
            key,
            cell: cell.clone(),
        };
        cell.get_or_init(run).await.clone()
    }
}

struct Forget<'a, K: Eq + Hash, V> {
    flight: &'a SingleFlight<K, V>,
    key: K,
    cell: Arc<OnceCell<V>>,
}

impl<K: Eq + Hash, V> Drop for Forget<'_, K, V> {
    fn drop(&mut self) {
        let mut map = self.flight.in_flight.lock().unwrap();
        if map.get(&self.key).is_some_and(|c| Arc::ptr_eq(c, &self.cell)) {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_share_one_run_and_later_ones_run_again() {
        let flight = Arc::new(SingleFlight::<&str, Result<u32, String>>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (flight, runs) = (flight.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                flight
                    .run("k", || async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Err::<u32, _>("refused".to_string())
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Err("refused".to_string()));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "8 concurrent callers, one request");
        let again = flight
            .run("k", || async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(7)
            })
            .await;
        assert_eq!(again, Ok(7));
        assert_eq!(runs.load(Ordering::SeqCst), 2, "a finished request is not reused");
        assert!(flight.in_flight.lock().unwrap().is_empty());
    }
}
