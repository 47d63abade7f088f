//! `.regfs/stats`, parsed strictly: the one parser of the tests.
//!
//! The format (docs/cli.md, `.regfs/`): one `name value` line per counter,
//! every counter of [`COUNTERS`] in that order, with the registry's
//! rate-limit lines ([`RATE_LIMIT`]), once it has sent such headers, just
//! before the disk cache's lines (`cache_blobs` …). Any
//! other line — a literal `\n`, a name nobody documented, a value that is
//! not a plain decimal, a duplicate, a missing counter, no final newline —
//! fails the test with the line quoted: a parser that dropped what it did
//! not understand once let a broken file pass.

use std::collections::BTreeMap;

/// The counters of `.regfs/stats`, in the order the daemon writes them (the
/// order docs/cli.md lists them in; `harness.rs` checks the two agree).
pub const COUNTERS: &[&str] = &[
    "requests",
    "requests_catalog",
    "requests_tags",
    "requests_manifest_get",
    "requests_manifest_head",
    "requests_blob_get",
    "requests_blob_head",
    "requests_referrers",
    "requests_blob_push",
    "requests_manifest_put",
    "requests_delete",
    "bytes_pushed",
    "requests_token",
    "bytes_fetched",
    "retries",
    "errors",
    "blob_cache_hits",
    "blob_cache_misses",
    "manifest_cache_hits",
    "manifest_cache_misses",
    "fuse_reads",
    "fuse_read_waits",
    "fuse_passthrough_opens",
    "cache_blobs",
    "cache_bytes",
    "cache_index_bytes",
    "cache_limit",
    "blobs_being_fetched",
    "inodes",
];

/// The last lines of [`COUNTERS`] come after the rate-limit lines: the disk
/// cache's (`cache_blobs` on) and the inode table's size (`inodes`).
const CACHE_LINES: usize = 6;

/// Lines that come before the disk cache's once the registry sent `RateLimit-*`
/// headers: limit and remaining together, the window when the header has one.
pub const RATE_LIMIT: &[&str] = &["ratelimit_limit", "ratelimit_remaining", "ratelimit_window_seconds"];

/// Parses `.regfs/stats`; panics (quoting the text) on anything that is not
/// the documented format.
pub fn parse_stats(text: &str) -> BTreeMap<String, u64> {
    try_parse_stats(text).unwrap_or_else(|e| panic!(".regfs/stats: {e}\n--- text ---\n{text}"))
}

/// [`parse_stats`] without the panic: `Err` says what was wrong.
pub fn try_parse_stats(text: &str) -> Result<BTreeMap<String, u64>, String> {
    if !text.ends_with('\n') {
        return Err("does not end with a newline".into());
    }
    let mut order = Vec::new();
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let (name, value) = line
            .split_once(' ')
            .ok_or_else(|| format!("line {n} is not `name value`: {line:?}"))?;
        if !COUNTERS.contains(&name) && !RATE_LIMIT.contains(&name) {
            return Err(format!("line {n}: unknown name {name:?} in {line:?}"));
        }
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("line {n}: value is not a decimal number: {line:?}"));
        }
        let value: u64 = value
            .parse()
            .map_err(|e| format!("line {n}: value {value:?} out of range: {e}"))?;
        if out.insert(name.to_string(), value).is_some() {
            return Err(format!("line {n}: {name} appears twice"));
        }
        order.push(name);
    }
    // The rate-limit lines, when present, stand between the daemon's counters
    // and the disk cache's lines (`cache_blobs` … `blobs_being_fetched`, then `inodes`).
    let rate: Vec<&str> = order.iter().copied().filter(|n| RATE_LIMIT.contains(n)).collect();
    let at = COUNTERS.len() - CACHE_LINES;
    let mut want: Vec<&str> = COUNTERS[..at].to_vec();
    want.extend(&rate);
    want.extend(&COUNTERS[at..]);
    if order != want {
        return Err(format!(
            "the lines are not exactly {COUNTERS:?} in that order (rate-limit lines before `cache_blobs`): got {order:?}"
        ));
    }
    if !(rate.is_empty() || rate == RATE_LIMIT[..2] || rate == RATE_LIMIT) {
        return Err(format!(
            "rate-limit lines must be {RATE_LIMIT:?} (limit and remaining together, the window optional): got {rate:?}"
        ));
    }
    Ok(out)
}
