//! Daemon counters, shown in `.regfs/stats`. Plain atomics: cheap enough for hot paths.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        #[derive(Default)]
        pub struct Stats {
            $(pub $name: AtomicU64,)*
            recent_errors: Mutex<std::collections::VecDeque<String>>,
        }

        impl Stats {
            /// `name value` lines, in a fixed order.
            pub fn render(&self) -> String {
                let mut out = String::new();
                $(out.push_str(&format!("{} {}\n", stringify!($name), self.$name.load(Ordering::Relaxed)));)*
                out
            }
        }
    };
}

counters!(
    requests,
    requests_catalog,
    requests_tags,
    requests_manifest_get,
    requests_manifest_head,
    requests_blob_get,
    requests_blob_head,
    requests_referrers,
    requests_blob_push,
    requests_manifest_put,
    requests_delete,
    bytes_pushed,
    requests_token,
    bytes_fetched,
    retries,
    errors,
    blob_cache_hits,
    blob_cache_misses,
    manifest_cache_hits,
    manifest_cache_misses,
    fuse_reads,
    fuse_read_waits,
);

const RECENT_ERRORS: usize = 100;

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Remember an error line for `.regfs/errors` (callers never pass secrets).
    pub fn record_error(&self, line: String) {
        Self::inc(&self.errors);
        let mut q = self.recent_errors.lock().unwrap();
        if q.len() == RECENT_ERRORS {
            q.pop_front();
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        q.push_back(format!("{now} {line}"));
    }

    pub fn render_errors(&self) -> String {
        let q = self.recent_errors.lock().unwrap();
        q.iter().map(|l| format!("{l}\n")).collect()
    }
}
