//! Daemon counters, shown in `.regfs/stats`. Plain atomics: cheap enough for hot paths.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        #[derive(Default)]
        pub struct Stats {
            $(pub $name: AtomicU64,)*
            recent_errors: Mutex<std::collections::VecDeque<String>>,
            rate_limit: Mutex<Option<RateLimit>>,
        }

        impl Stats {
            /// `name value` lines, in a fixed order.
            pub fn render(&self) -> String {
                let mut out = String::new();
                $(out.push_str(&format!("{} {}\n", stringify!($name), self.$name.load(Ordering::Relaxed)));)*
                out.push_str(&self.render_rate_limit());
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

/// The registry's last `RateLimit-Limit` / `RateLimit-Remaining` answer
/// (Docker Hub: `100;w=21600` = 100 pulls per 21600 s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: u64,
    pub remaining: u64,
    pub window_seconds: Option<u64>,
}

impl RateLimit {
    /// From the two header values, e.g. `100;w=21600` and `76;w=21600`.
    pub fn parse(limit: &str, remaining: &str) -> Option<RateLimit> {
        fn split(v: &str) -> Option<(u64, Option<u64>)> {
            let mut parts = v.split(';');
            let n = parts.next()?.trim().parse().ok()?;
            let w = parts.find_map(|p| p.trim().strip_prefix("w=").and_then(|w| w.parse().ok()));
            Some((n, w))
        }
        let (limit, w1) = split(limit)?;
        let (remaining, w2) = split(remaining)?;
        Some(RateLimit {
            limit,
            remaining,
            window_seconds: w1.or(w2),
        })
    }
}

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

    /// Remember the registry's rate-limit headers (shown in `.regfs/stats`).
    pub fn note_rate_limit(&self, r: RateLimit) {
        *self.rate_limit.lock().unwrap() = Some(r);
    }

    /// `ratelimit_*` lines once the registry has sent rate-limit headers.
    fn render_rate_limit(&self) -> String {
        match *self.rate_limit.lock().unwrap() {
            None => String::new(),
            Some(r) => {
                let mut s = format!("ratelimit_limit {}\nratelimit_remaining {}\n", r.limit, r.remaining);
                if let Some(w) = r.window_seconds {
                    s.push_str(&format!("ratelimit_window_seconds {w}\n"));
                }
                s
            }
        }
    }

    pub fn render_errors(&self) -> String {
        let q = self.recent_errors.lock().unwrap();
        q.iter().map(|l| format!("{l}\n")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_rate_limit_headers() {
        assert_eq!(
            RateLimit::parse("100;w=21600", "76;w=21600"),
            Some(RateLimit {
                limit: 100,
                remaining: 76,
                window_seconds: Some(21600)
            })
        );
        assert_eq!(RateLimit::parse("5000", "4999").map(|r| r.window_seconds), Some(None));
        assert_eq!(RateLimit::parse("x", "1"), None);
    }
}
