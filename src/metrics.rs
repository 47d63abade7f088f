//! Prometheus metrics: the text in `.regfs/metrics` (node_exporter's textfile
//! collector can read it) and, with `--metrics-addr`, an HTTP endpoint.
//!
//! Labelled request metrics (kind × status, latency histograms, 429s, the
//! registry's RateLimit headers) are recorded where requests end
//! (`Stats::request_done`); the plain counters of `.regfs/stats` and the cache
//! use are copied into the recorder before every render and once a second
//! for the HTTP endpoint, so both show the same numbers.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::stats::Stats;
use crate::store::BlobStore;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Request latency buckets (seconds): a loopback registry answers in a
/// millisecond, a far one in a second; blob bodies take longer.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// How often the HTTP endpoint's copy of the counters is refreshed.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// `PORT` alone means `127.0.0.1:PORT`; any other address is taken as told.
pub fn parse_addr(s: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse()
        .with_context(|| format!("invalid --metrics-addr {s:?}: PORT or ADDRESS:PORT, e.g. 127.0.0.1:9184"))
}

/// Install the recorder (once per process); with `addr`, also serve
/// `GET /metrics` there (fails when the address cannot be bound). Must run
/// inside the tokio runtime.
pub fn install(addr: Option<SocketAddr>) -> anyhow::Result<()> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("seconds".into()), LATENCY_BUCKETS)
        .expect("bucket list is not empty");
    let handle = match addr {
        Some(addr) => {
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "metrics are served beyond this machine (--metrics-addr is not a loopback address)");
            }
            let (recorder, exporter) = builder
                .with_http_listener(addr)
                .build()
                .with_context(|| format!("cannot serve metrics on {addr}"))?;
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).context("metrics recorder installed twice")?;
            tokio::spawn(exporter);
            tracing::info!(%addr, "serving metrics at http://{addr}/metrics");
            handle
        }
        None => builder.install_recorder().context("metrics recorder installed twice")?,
    };
    let _ = HANDLE.set(handle);
    describe();
    Ok(())
}

/// `# HELP` lines for the series regfs records itself.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "regfs_registry_requests_total",
        "Registry request attempts by kind and HTTP status (error: no answer)"
    );
    describe_histogram!(
        "regfs_registry_request_duration_seconds",
        Unit::Seconds,
        "Time from sending a registry request to its response headers"
    );
    describe_counter!("regfs_registry_throttled_total", "429 Too Many Requests answers");
    describe_gauge!(
        "regfs_registry_ratelimit_limit",
        "Last RateLimit-Limit the registry sent"
    );
    describe_gauge!(
        "regfs_registry_ratelimit_remaining",
        "Last RateLimit-Remaining the registry sent"
    );
    describe_gauge!(
        "regfs_registry_ratelimit_reset_seconds",
        "Last RateLimit-Reset the registry sent"
    );
    describe_gauge!(
        "regfs_cache_bytes",
        Unit::Bytes,
        "Bytes of verified blobs in the disk cache"
    );
    describe_gauge!(
        "regfs_cache_limit_bytes",
        Unit::Bytes,
        "The disk cache limit (--cache-size)"
    );
    describe_gauge!("regfs_cache_blobs", "Verified blobs in the disk cache");
    describe_counter!(
        "regfs_bytes_fetched_total",
        Unit::Bytes,
        "Blob body bytes received from the registry"
    );
    describe_counter!(
        "regfs_bytes_pushed_total",
        Unit::Bytes,
        "Blob bytes pushed to the registry"
    );
}

/// Keep the recorder's copy of the counters fresh for the HTTP endpoint, and
/// its histograms drained. Must run inside the tokio runtime.
pub fn keep_in_sync(stats: Arc<Stats>, blobs: Arc<BlobStore>) {
    tokio::spawn(async move {
        loop {
            sync(&stats, &blobs);
            if let Some(h) = HANDLE.get() {
                h.run_upkeep();
            }
            tokio::time::sleep(SYNC_EVERY).await;
        }
    });
}

/// The Prometheus text for `.regfs/metrics`.
pub fn render(stats: &Stats, blobs: &BlobStore) -> String {
    match HANDLE.get() {
        Some(h) => {
            sync(stats, blobs);
            h.render()
        }
        None => String::new(),
    }
}

/// Copy the plain counters and the cache use into the recorder.
fn sync(stats: &Stats, blobs: &BlobStore) {
    for (name, value) in stats.counters() {
        metrics::counter!(format!("regfs_{name}_total")).absolute(value);
    }
    let (count, bytes, limit) = blobs.cache_use();
    metrics::gauge!("regfs_cache_blobs").set(count as f64);
    metrics::gauge!("regfs_cache_bytes").set(bytes as f64);
    metrics::gauge!("regfs_cache_limit_bytes").set(limit as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_addr("9184").unwrap().to_string(), "127.0.0.1:9184");
        assert_eq!(parse_addr("[::1]:9184").unwrap().to_string(), "[::1]:9184");
        assert!(parse_addr("localhost").is_err());
    }
}
