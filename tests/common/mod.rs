//! Shared harness for regfs integration tests.
//!
//! Every test gets its own registry (own port, own storage), its own mount
//! (own mountpoint and cache dir) and its own helpers, so tests run in
//! parallel. Use it from a test file with `mod common;` and
//! `use common::*;`.
//!
//! - [`Registry`]: a real `docker-registry` (distribution 2.8) or
//!   `ferro-oci-server` ([`RegistryKind`], [`on_both_registries!`]) on a free
//!   loopback port; plain, htpasswd, token auth (with a test [`TokenIssuer`]),
//!   TLS with a test CA; optional delete. `stop()`/`start_again()` for
//!   "registry down" tests.
//! - [`RegistryClient`] (`registry.client()`): seeding and checking over the
//!   HTTP API (blobs, manifests, images, indexes, tags, catalog), handling
//!   Basic and Bearer auth.
//! - [`Mount`]: the real `regfs` binary mounted in the foreground (or
//!   [`BackgroundMount`] for the daemonizing mode), unmounted on drop.
//! - [`FaultProxy`]: delays, injected statuses, cut bodies, tag pagination.
//! - [`QuirkProxy`]: habits of hosted registries (Docker Hub, GHCR, ECR, Quay,
//!   405 on DELETE, blobs redirected to a CDN).
//! - [`tree`]: manifests of any shape (artifacts, referrers tag, indexes
//!   with annotations), storage injection, xattrs.
//! - [`backup`]: real layers with their `diff_id`, images docker-archive
//!   consumers accept, running rsync/skopeo, checking copied content addresses.
//! - [`files`]: `ls`, `readlink`, `lstat_errno`, `close_file`/`write_and_close`
//!   (close(2)'s errno), `walk`, `tar_member`.
//! - [`stats`]: the one strict parser of `.regfs/stats` (`Mount::stats()`).
//! - Utilities: [`sha256_hex`], [`errno_of`], [`read_exact_at`],
//!   [`with_deadline`].
//!
//! Environment: `REGFS_TEST_KEEP_LOGS=1` prints each mount's log when it is
//! dropped.

#![allow(dead_code, unused_imports)]

pub mod backup;
pub mod client;
pub mod files;
pub mod http;
pub mod mount;
pub mod pki;
pub mod proxy;
pub mod quirks;
pub mod registry;
pub mod stats;
pub mod token;
pub mod tree;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

pub use backup::*;
pub use client::{
    image_config, make_tar_gz, random_bytes, random_hex, BlobInfo, ImageInfo, IndexInfo, IndexKind, Platform,
    RegistryClient, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST,
};
pub use files::*;
pub use mount::{is_fuse_mounted, log_path, tail, BackgroundMount, Mount, MountBuilder, MountFailure};
pub use proxy::{FaultAction, FaultProxy, Match, ProxiedRequest, TcpRelay};
pub use quirks::{Quirk, QuirkProxy};
pub use registry::{AuthMode, Registry, RegistryKind, RegistryOptions};
pub use stats::{parse_stats, try_parse_stats};
pub use token::{TokenIssuer, TokenIssuerOptions};
pub use tree::*;

/// Username accepted by auth-enabled test registries.
pub const TEST_USER: &str = "regfs-tester";
/// Password for [`TEST_USER`].
pub const TEST_PASSWORD: &str = "s3cret-Pa55word";

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// The errno carried by an I/O error (panics if it has none).
pub fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error()
        .unwrap_or_else(|| panic!("io::Error without errno: {e:?}"))
}

/// Reads `len` bytes at `offset` (fewer only at EOF) with seek + read loop.
pub fn read_exact_at(file: &mut File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let n = file.read(&mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(buf)
}

/// Reads a whole file with std and asserts it equals `expected`, with a
/// readable message (length, first differing offset) instead of a byte dump.
pub fn assert_file_eq(path: &Path, expected: &[u8]) {
    let got = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert_bytes_eq(&got, expected, &path.display().to_string());
}

/// Asserts two byte strings are equal, reporting length and first mismatch.
pub fn assert_bytes_eq(got: &[u8], expected: &[u8], what: &str) {
    if got == expected {
        return;
    }
    let first = got
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(expected.len()));
    panic!(
        "{what}: bytes differ: got {} bytes (sha256 {}), expected {} bytes (sha256 {}), first difference at offset {first}",
        got.len(),
        sha256_hex(got),
        expected.len(),
        sha256_hex(expected)
    );
}

/// Runs `f` on a thread and panics if it does not finish within `limit`
/// (a watchdog against a hung mount, not a timing assertion). On timeout
/// the thread is left behind; dropping the test's [`Mount`] unblocks it.
pub fn with_deadline<T: Send + 'static>(limit: Duration, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {limit:?} (watchdog)"),
    }
}

/// Polls `cond` every 50 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sorted names in a directory (std `read_dir`).
pub fn list_dir(path: &Path) -> io::Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(path)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<io::Result<_>>()?;
    v.sort();
    Ok(v)
}
