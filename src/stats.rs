//! Daemon counters, shown in `.regfs/stats` and `.regfs/metrics`, the table of
//! transfers in flight (`.regfs/transfers`), and the recent errors
//! (`.regfs/errors`). Plain atomics: cheap enough for hot paths.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::oci::Digest;

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        #[derive(Default)]
        pub struct Stats {
            $(pub $name: AtomicU64,)*
            recent_errors: Mutex<VecDeque<String>>,
            pub transfers: Transfers,
            rate_limit: Mutex<Option<RateLimit>>,
        }

        impl Stats {
            /// `name value` lines, in a fixed order.
            pub fn render(&self) -> String {
                let mut out = String::new();
                for (name, value) in self.counters() {
                    out.push_str(&format!("{name} {value}\n"));
                }
                out.push_str(&self.render_rate_limit());
                out
            }

            /// Every counter with its name, in a fixed order.
            pub fn counters(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
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
    /// One `RateLimit-*` header value: its number and window, from
    /// `100;w=21600` (Docker Hub), `57`, or `100, 100;w=60` (the IETF draft's
    /// list of policies: the first one). The one parser of these headers
    /// (`.regfs/stats` and the metrics gauges).
    pub fn parse_value(v: &str) -> Option<(u64, Option<u64>)> {
        let mut parts = v.split(',').next()?.split(';');
        let n = parts.next()?.trim().parse().ok()?;
        let w = parts.find_map(|p| p.trim().strip_prefix("w=").and_then(|w| w.parse().ok()));
        Some((n, w))
    }

    /// From the two header values, e.g. `100;w=21600` and `76;w=21600`.
    pub fn parse(limit: &str, remaining: &str) -> Option<RateLimit> {
        let (limit, w1) = Self::parse_value(limit)?;
        let (remaining, w2) = Self::parse_value(remaining)?;
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

    /// Remember an error line for `.regfs/errors` (callers never pass secrets),
    /// stamped with the UTC time in ISO 8601.
    pub fn record_error(&self, line: String) {
        Self::inc(&self.errors);
        let mut q = self.recent_errors.lock().unwrap();
        if q.len() == RECENT_ERRORS {
            q.pop_front();
        }
        q.push_back(format!("{} {line}", iso8601(SystemTime::now())));
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

    /// One registry request attempt ended: `status` is the HTTP status, or
    /// `None` when no answer came (connection error, timeout). Feeds the
    /// labelled metrics (`.regfs/metrics`); the plain counters are bumped by the client.
    pub fn request_done(
        &self,
        kind: &'static str,
        status: Option<u16>,
        started: Instant,
        headers: Option<&reqwest::header::HeaderMap>,
    ) {
        let status = status.map(|s| s.to_string()).unwrap_or_else(|| "error".into());
        metrics::counter!("regfs_registry_requests_total", "kind" => kind, "status" => status.clone()).increment(1);
        metrics::histogram!("regfs_registry_request_duration_seconds", "kind" => kind)
            .record(started.elapsed().as_secs_f64());
        if status == "429" {
            metrics::counter!("regfs_registry_throttled_total").increment(1);
        }
        if let Some(h) = headers {
            for (header, gauge) in [
                ("ratelimit-limit", "regfs_registry_ratelimit_limit"),
                ("ratelimit-remaining", "regfs_registry_ratelimit_remaining"),
                ("ratelimit-reset", "regfs_registry_ratelimit_reset_seconds"),
            ] {
                if let Some((n, _)) = h
                    .get(header)
                    .and_then(|v| v.to_str().ok())
                    .and_then(RateLimit::parse_value)
                {
                    metrics::gauge!(gauge).set(n as f64);
                }
            }
        }
    }
}

/// `2026-12-01T21:45:10Z`.
pub fn iso8601(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Which way a transfer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    Fetch,
    Push,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Fetch => "fetch",
            Direction::Push => "push",
        }
    }
}

/// Finished transfers stay listed this long, so a sequential read made of
/// many ranged requests shows as one transfer instead of flickering.
const LINGER: Duration = Duration::from_secs(3);

/// Blob transfers in flight, for `.regfs/transfers` and `regfs status`: one row
/// per (direction, repository, blob), however many requests carry its bytes.
#[derive(Default)]
pub struct Transfers {
    rows: Mutex<BTreeMap<(Direction, String, Digest), Row>>,
}

struct Row {
    total: u64,
    done: u64,
    started: Instant,
    active: usize,
    ended: Option<Instant>,
}

/// One request carrying bytes of a transfer; dropping it ends its part.
pub struct TransferGuard {
    transfers: Arc<Stats>,
    key: (Direction, String, Digest),
}

impl Transfers {
    /// Start (or join) the transfer of `digest` (`total` bytes) in `repo`.
    pub fn start(stats: &Arc<Stats>, dir: Direction, repo: &str, digest: &Digest, total: u64) -> TransferGuard {
        let key = (dir, repo.to_string(), *digest);
        let mut rows = stats.transfers.rows.lock().unwrap();
        let row = rows.entry(key.clone()).or_insert_with(|| Row {
            total,
            done: 0,
            started: Instant::now(),
            active: 0,
            ended: None,
        });
        row.active += 1;
        row.ended = None;
        TransferGuard {
            transfers: stats.clone(),
            key,
        }
    }

    /// The registry confirmed `done` bytes of a transfer in flight.
    pub fn set_done(&self, dir: Direction, repo: &str, digest: &Digest, done: u64) {
        if let Some(r) = self.rows.lock().unwrap().get_mut(&(dir, repo.to_string(), *digest)) {
            r.done = done;
        }
    }

    /// `direction repository digest done total bytes_per_second state` lines.
    pub fn render(&self) -> String {
        let mut rows = self.rows.lock().unwrap();
        rows.retain(|_, r| r.ended.is_none_or(|e| e.elapsed() < LINGER));
        let mut out = String::new();
        for ((dir, repo, digest), r) in rows.iter() {
            let secs = r
                .ended
                .unwrap_or_else(Instant::now)
                .duration_since(r.started)
                .as_secs_f64();
            let rate = if secs > 0.0 { (r.done as f64 / secs) as u64 } else { 0 };
            let state = if r.active > 0 { "active" } else { "done" };
            out.push_str(&format!(
                "{} {repo} {digest} {} {} {rate} {state}\n",
                dir.name(),
                r.done,
                r.total
            ));
        }
        out
    }
}

impl TransferGuard {
    /// `n` more bytes moved.
    pub fn add(&self, n: u64) {
        if let Some(r) = self.transfers.transfers.rows.lock().unwrap().get_mut(&self.key) {
            r.done += n;
        }
    }
}

impl TransferGuard {
    /// Every byte arrived.
    pub fn finish(&self) {
        if let Some(r) = self.transfers.transfers.rows.lock().unwrap().get_mut(&self.key) {
            r.done = r.total;
        }
    }
}

impl Drop for TransferGuard {
    fn drop(&mut self) {
        if let Some(r) = self.transfers.transfers.rows.lock().unwrap().get_mut(&self.key) {
            r.active -= 1;
            if r.active == 0 {
                r.ended = Some(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_carry_an_iso_8601_time() {
        let s = Stats::default();
        s.record_error("create /a/_uploads/x: boom".into());
        let text = s.render_errors();
        let (time, rest) = text.split_once(' ').unwrap();
        assert_eq!(rest, "create /a/_uploads/x: boom\n");
        assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
        assert!(time.ends_with('Z') && time.contains('T'), "{time}");
    }

    #[test]
    fn transfers_aggregate_parts_and_linger() {
        let s = Arc::new(Stats::default());
        let d = Digest::of(b"x");
        let a = Transfers::start(&s, Direction::Fetch, "team/app", &d, 100);
        let b = Transfers::start(&s, Direction::Fetch, "team/app", &d, 100);
        a.add(30);
        b.add(20);
        drop(a);
        let text = s.transfers.render();
        assert!(text.starts_with(&format!("fetch team/app {d} 50 100 ")), "{text}");
        assert!(text.ends_with(" active\n"), "{text}");
        drop(b);
        assert!(s.transfers.render().ends_with(" done\n"));
    }

    #[test]
    fn rate_limit_header_values() {
        assert_eq!(RateLimit::parse_value("100;w=21600"), Some((100, Some(21600))));
        assert_eq!(RateLimit::parse_value(" 57 "), Some((57, None)));
        assert_eq!(RateLimit::parse_value("100, 100;w=60"), Some((100, None)));
        assert_eq!(RateLimit::parse_value("10;w=60, 100;w=3600"), Some((10, Some(60))));
        assert_eq!(RateLimit::parse_value("x"), None);
    }

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
