//! A registry that lies, hangs or pages forever, seen through the real mount:
//! the fault proxy sits between the real `regfs` binary and a real
//! `docker-registry`, and each test asserts what a user sees (exit status,
//! errno, bytes, elapsed time under a generous bound, the daemon's memory) and
//! what the proxy or the token issuer saw.
//!
//! Elapsed times are printed (`cargo nextest run --no-capture`) so the report
//! can quote them; the assertions only use generous bounds.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::proxy::ProxiedRequest;
use common::*;

const MIB: usize = 1024 * 1024;
/// What a user may wait for an error from a registry that does not answer.
const USER_BOUND: Duration = Duration::from_secs(60);
/// Watchdog against a hung mount (not a timing assertion).
const WATCHDOG: Duration = Duration::from_secs(180);

/// Runs a real command (`cat`, `ls`) under a watchdog: (success, stderr, elapsed).
fn run(cmd: &'static str, args: Vec<String>) -> (bool, String, Duration) {
    let what = format!("{cmd} {}", args.join(" "));
    with_deadline(WATCHDOG, &what.clone(), move || {
        let started = Instant::now();
        let out = Command::new(cmd)
            .args(&args)
            .env("LC_ALL", "C")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
        let elapsed = started.elapsed();
        eprintln!("{what}: exit {:?} after {elapsed:.1?}", out.status.code());
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed,
        )
    })
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

/// The command failed with EIO's message, within the user bound.
fn assert_eio_within_bound(result: (bool, String, Duration), what: &str, m: &Mount) {
    let (ok, stderr, elapsed) = result;
    assert!(!ok, "{what} succeeded against a faulty registry");
    assert!(
        stderr.contains("Input/output error"),
        "{what}: expected EIO, stderr: {stderr}\nlog:\n{}",
        m.log()
    );
    assert!(elapsed < USER_BOUND, "{what} took {elapsed:?} (bound {USER_BOUND:?})");
}

/// `VmHWM` (peak resident set) of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"));
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

// ---------------------------------------------------------------------------
// Deadlines users feel
// ---------------------------------------------------------------------------

#[test]
fn tag_listing_against_a_registry_that_never_answers_fails_with_eio_in_bounded_time() {
    let reg = Registry::start();
    reg.client().push_random_image("hang/app", "v1", &[1000]);
    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::start(&proxy.url());
    // From now on every request is read and never answered.
    proxy.hang_next(u32::MAX, Match::any());
    let r = run("ls", vec!["-l".into(), path_arg(&m.join("hang/app/_tags"))]);
    assert_eio_within_bound(r, "ls -l _tags", &m);
    assert!(
        m.log().contains("no complete answer within"),
        "no deadline line in the log:\n{}",
        m.log()
    );
}

#[test]
fn blob_read_against_a_registry_that_never_answers_fails_with_eio_in_bounded_time() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("hang/blob", "v1", &[3 * MIB]);
    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::start(&proxy.url());
    let blob = m.join(format!("hang/blob/_blobs/{}", img.layers[0].digest));
    assert_eq!(fs::metadata(&blob).unwrap().len(), img.layers[0].size());
    proxy.hang_next(u32::MAX, Match::method_path("GET", "/blobs/"));
    let r = run("cat", vec![path_arg(&blob)]);
    assert_eio_within_bound(r, "cat of a blob", &m);
}

#[test]
fn blob_body_that_stalls_after_its_headers_fails_with_eio_in_bounded_time() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("stall/blob", "v1", &[3 * MIB]);
    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::start(&proxy.url());
    let blob = m.join(format!("stall/blob/_blobs/{}", img.layers[0].digest));
    assert_eq!(fs::metadata(&blob).unwrap().len(), img.layers[0].size());
    // Every blob GET sends its head and 1000 bytes, then nothing.
    proxy.stall_next_body(u32::MAX, 1000, Match::method_path("GET", "/blobs/"));
    let r = run("cat", vec![path_arg(&blob)]);
    assert_eio_within_bound(r, "cat of a stalled blob", &m);
    assert!(
        proxy
            .requests()
            .iter()
            .any(|r| r.fault == Some(FaultAction::StallBodyAfter(1000))),
        "no blob response was stalled: {:?}",
        proxy.requests()
    );
}

// ---------------------------------------------------------------------------
// Link pagination bounded
// ---------------------------------------------------------------------------

#[test]
fn tag_listing_whose_link_never_ends_fails_with_eio_and_bounded_memory() {
    let reg = Registry::start();
    reg.client().push_random_image("endless/app", "v1", &[1000]);
    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::start(&proxy.url());
    // Every page: 1000 names of ~110 bytes and a Link to a new page.
    proxy.endless_pages(u32::MAX, 1000, Match::method_path("GET", "/tags/list"));
    let r = run("ls", vec![path_arg(&m.join("endless/app/_tags"))]);
    assert_eio_within_bound(r, "ls of an endless tag list", &m);
    let log = m.log();
    assert!(log.contains("the listing fails"), "no log line:\n{log}");
    let rss = peak_rss(m.pid().unwrap());
    eprintln!("daemon peak RSS after an endless tag list: {} MiB", rss >> 20);
    assert!(rss < 300 << 20, "daemon peak RSS {} MiB", rss >> 20);
    // The mount still works for other listings.
    proxy.clear_faults();
    assert_eq!(list_dir(&m.join("endless/app/_tags")).unwrap(), vec!["v1"]);
}

#[test]
fn root_listing_whose_catalog_link_never_ends_fails_with_eio_and_bounded_memory() {
    let reg = Registry::start();
    reg.client().push_random_image("endless/catalog", "v1", &[1000]);
    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::start(&proxy.url());
    // Short pages: the page cap, not the name cap, stops this one.
    proxy.endless_pages(u32::MAX, 5, Match::method_path("GET", "/_catalog"));
    let r = run("ls", vec![path_arg(m.path())]);
    assert_eio_within_bound(r, "ls of the mount root with an endless catalog", &m);
    let log = m.log();
    assert!(log.contains("pages; the listing fails"), "no page-cap log line:\n{log}");
    let rss = peak_rss(m.pid().unwrap());
    eprintln!("daemon peak RSS after an endless catalog: {} MiB", rss >> 20);
    assert!(rss < 300 << 20, "daemon peak RSS {} MiB", rss >> 20);
}

#[test]
fn listings_whose_link_loops_fail_with_eio_and_a_log_line() {
    let reg = Registry::start();
    reg.client().push_random_image("loop/app", "v1", &[1000]);
    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::start(&proxy.url());

    // A catalog whose second page links back to the first (asked first: a
    // later lookup would find the catalog cached).
    proxy.looping_pages(u32::MAX, false, Match::method_path("GET", "/_catalog"));
    let r = run("ls", vec![path_arg(m.path())]);
    assert_eio_within_bound(r, "ls of a catalog looping back", &m);
    let catalog_pages = proxy
        .requests()
        .iter()
        .filter(|r| r.target.starts_with("/v2/_catalog"))
        .count();

    // A tag list page whose Link points at itself.
    proxy.clear_faults();
    proxy.looping_pages(u32::MAX, true, Match::method_path("GET", "/tags/list"));
    let r = run("ls", vec![path_arg(&m.join("loop/app/_tags"))]);
    assert_eio_within_bound(r, "ls of a self-linked tag list", &m);

    let log = m.log();
    let loops = log.matches("Link leads back to a page already read").count();
    assert!(loops >= 2, "expected a log line per looping listing:\n{log}");
    assert!(
        catalog_pages < 10,
        "{catalog_pages} catalog pages read for a 2-page loop"
    );
}

#[test]
fn a_tag_listing_whose_link_leads_to_another_host_fails_and_sends_nothing_there() {
    let reg = Registry::start_with(RegistryOptions::token());
    reg.client().push_random_image("foreign/app", "v1", &[100]);
    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::builder(&proxy.url())
        .args(["--username", TEST_USER])
        .env("REGFS_PASSWORD", TEST_PASSWORD)
        .start();
    // "Another host" that would get the registry's token if the Link were followed.
    let elsewhere = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    elsewhere.set_nonblocking(true).unwrap();
    let origin = format!("http://{}", elsewhere.local_addr().unwrap());
    proxy.foreign_link_pages(u32::MAX, &origin, Match::method_path("GET", "/tags/list"));
    let r = run("ls", vec![path_arg(&m.join("foreign/app/_tags"))]);
    assert_eio_within_bound(r, "ls of a tag list linking to another host", &m);
    assert!(m.log().contains("Link leads to another host"), "{}", m.log());
    assert_eq!(
        elsewhere.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "regfs connected to the host the Link named"
    );
}

// ---------------------------------------------------------------------------
// Challenges per registry and scope
// ---------------------------------------------------------------------------

fn token_mount(proxy: &FaultProxy) -> Mount {
    Mount::builder(&proxy.url())
        .args(["--username", TEST_USER])
        .env("REGFS_PASSWORD", TEST_PASSWORD)
        .start()
}

#[test]
fn a_malformed_challenge_fails_that_request_only() {
    let reg = Registry::start_with(RegistryOptions::token());
    let c = reg.client();
    let a = c.push_random_image("team/a", "v1", &[100]);
    let bad_challenges = [
        "Bearer realm=",
        "Bearer realm=\"\",service=\"x\"",
        "Bearer realm=\"not a url\"",
        "Bearer",
        "%%garbage%% ,,=",
    ];
    let victims: Vec<ImageInfo> = (0..bad_challenges.len())
        .map(|i| c.push_random_image(&format!("team/b{i}"), "v1", &[100]))
        .collect();
    let fresh = c.push_random_image("team/fresh", "v1", &[100]);
    let proxy = FaultProxy::start(&reg.host_port());
    let m = token_mount(&proxy);
    assert_file_eq(&m.join("team/a/_tags/v1/manifest.json"), &a.manifest);

    for (i, bad) in bad_challenges.iter().enumerate() {
        proxy.challenge_next(1, bad, Match::path(&format!("/v2/team/b{i}/")));
        let err = fs::read(m.join(format!("team/b{i}/_tags/v1/manifest.json"))).unwrap_err();
        assert_eq!(errno_of(&err), libc::EACCES, "challenge {bad:?}: {err}");
        assert_eq!(proxy.pending_faults(), 0, "{:?}", proxy.requests());
    }
    let log = m.log();
    assert!(
        log.contains("no usable WWW-Authenticate challenge"),
        "no log line for the bad challenge:\n{log}"
    );
    // Nothing else is poisoned: a repository never asked for (a new scope, so
    // a new token) and those that got the bad challenges.
    assert_file_eq(&m.join("team/fresh/_tags/v1/manifest.json"), &fresh.manifest);
    for (i, v) in victims.iter().enumerate() {
        assert_file_eq(&m.join(format!("team/b{i}/_tags/v1/manifest.json")), &v.manifest);
    }
}

#[test]
fn a_challenge_whose_realm_fails_is_learned_again() {
    let reg = Registry::start_with(RegistryOptions::token());
    let c = reg.client();
    let a = c.push_random_image("relearn/a", "v1", &[100]);
    let b = c.push_random_image("relearn/b", "v1", &[100]);
    let fresh = c.push_random_image("relearn/fresh", "v1", &[100]);
    let proxy = FaultProxy::start(&reg.host_port());
    let m = token_mount(&proxy);
    assert_file_eq(&m.join("relearn/a/_tags/v1/manifest.json"), &a.manifest);

    // While the registry's challenges name a realm where nothing listens
    // (port 1 on loopback), a request needing a new token fails: the token
    // request fails, the challenge is forgotten, the retry is told the same.
    proxy.rewrite_realm(Some("http://127.0.0.1:1/token"));
    proxy.fail_next(1, 401, Match::path("/v2/relearn/b/"));
    let err = fs::read(m.join("relearn/b/_tags/v1/manifest.json")).unwrap_err();
    assert_eq!(errno_of(&err), libc::EACCES, "{err}");
    assert_eq!(proxy.pending_faults(), 0, "{:?}", proxy.requests());
    proxy.rewrite_realm(None);

    // The registry's real challenge is learned again on the next 401.
    assert_file_eq(&m.join("relearn/fresh/_tags/v1/manifest.json"), &fresh.manifest);
    assert_file_eq(&m.join("relearn/b/_tags/v1/manifest.json"), &b.manifest);
    assert!(m.log().contains("the challenge will be learned again"), "{}", m.log());
}

// ---------------------------------------------------------------------------
// Credentials and token realms on other hosts
// ---------------------------------------------------------------------------

/// A registry whose challenges (through the proxy) name a plain-HTTP realm on
/// 127.0.0.2 — another host than the registry's 127.0.0.1 — relayed to the
/// real token issuer, so the issuer sees exactly what regfs sent there.
fn other_host_realm() -> (Registry, FaultProxy, TcpRelay, ImageInfo) {
    let reg = Registry::start_with(RegistryOptions::token());
    let img = reg.client().push_random_image("realm/app", "v1", &[100]);
    let issuer_addr = reg.issuer().unwrap().realm();
    let issuer_addr = issuer_addr
        .trim_start_matches("http://")
        .trim_end_matches("/token")
        .to_string();
    let relay = TcpRelay::start("127.0.0.2", &issuer_addr);
    let proxy = FaultProxy::start(&reg.host_port());
    proxy.rewrite_realm(Some(&format!("http://{}/token", relay.host_port())));
    (reg, proxy, relay, img)
}

#[test]
fn credentials_are_not_sent_to_a_plain_http_realm_on_another_host() {
    let (reg, proxy, relay, _img) = other_host_realm();
    // The test's own pushes went to the issuer directly; only later requests are regfs's.
    let before = reg.issuer().unwrap().requests().len();
    let failure = Mount::builder(&proxy.url())
        .args(["--username", TEST_USER])
        .env("REGFS_PASSWORD", TEST_PASSWORD)
        .try_start()
        .err()
        .expect("the mount came up although the realm refused an anonymous login");
    let requests = reg.issuer().unwrap().requests().split_off(before);
    assert!(!requests.is_empty(), "the realm was never asked");
    assert!(
        requests.iter().all(|r| r.user.is_none()),
        "credentials reached the plain-HTTP realm on another host: {requests:?}"
    );
    let said = format!("{}\n{}", failure.stderr, failure.log);
    assert!(
        said.contains("not sending credentials to a token realm on another host over plain HTTP"),
        "no reason given:\n{said}"
    );
    assert!(said.contains(&relay.host_port()), "the realm is not named:\n{said}");
}

#[test]
fn credentials_go_to_a_plain_http_realm_on_another_host_with_insecure_and_the_log_says_where() {
    let (reg, proxy, _relay, img) = other_host_realm();
    let before = reg.issuer().unwrap().requests().len();
    let m = Mount::builder(&proxy.url())
        .args(["--username", TEST_USER, "--insecure"])
        .env("REGFS_PASSWORD", TEST_PASSWORD)
        .start();
    assert_file_eq(&m.join("realm/app/_tags/v1/manifest.json"), &img.manifest);
    let requests = reg.issuer().unwrap().requests().split_off(before);
    assert!(
        requests.iter().any(|r| r.user.as_deref() == Some(TEST_USER)),
        "{requests:?}"
    );
    let log = m.log();
    assert!(
        log.lines()
            .any(|l| l.contains("sending credentials to the token realm") && l.contains("127.0.0.2")),
        "the log does not say where credentials went:\n{log}"
    );
}

// ---------------------------------------------------------------------------
// Cut manifest bodies, 416
// ---------------------------------------------------------------------------

#[test]
fn a_manifest_body_cut_mid_way_is_retried() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("cut/manifest", "v1", &[100]);
    assert!(img.manifest.len() > 200);
    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::start(&proxy.url());
    proxy.cut_next_body(1, 100, Match::method_path("GET", "/manifests/"));
    assert_file_eq(&m.join("cut/manifest/_tags/v1/manifest.json"), &img.manifest);
    let gets: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.target.contains("/manifests/"))
        .collect();
    assert_eq!(proxy.pending_faults(), 0, "the cut never happened: {gets:?}");
    assert_eq!(gets.len(), 2, "one cut GET and one retry: {gets:?}");
}

#[test]
fn a_416_to_a_blob_range_is_eio() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("range/app", "v1", &[2 * MIB]);
    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::start(&proxy.url());
    let blob = m.join(format!("range/app/_blobs/{}", img.layers[0].digest));
    assert_eq!(fs::metadata(&blob).unwrap().len(), img.layers[0].size());
    proxy.fail_next(u32::MAX, 416, Match::method_path("GET", "/blobs/"));
    let err = with_deadline(WATCHDOG, "reading through 416s", move || fs::read(blob).unwrap_err());
    assert_eq!(errno_of(&err), libc::EIO, "{err}");
}

// ---------------------------------------------------------------------------
// Identical requests in flight are merged
// ---------------------------------------------------------------------------

#[test]
fn concurrent_listings_fetch_each_manifest_once() {
    let reg = Registry::start();
    let c = reg.client();
    let amd = c.push_random_image("merge/app", "amd", &[1000, 2000]);
    let arm = c.push_random_image("merge/app", "arm", &[3000]);
    c.push_index(
        "merge/app",
        "multi",
        IndexKind::Oci,
        &[
            (&amd, Platform::new("linux", "amd64", None)),
            (&arm, Platform::new("linux", "arm64", Some("v8"))),
        ],
    );
    for i in 0..4 {
        c.push_random_image("merge/app", &format!("solo{i}"), &[500 + i]);
    }
    let proxy = FaultProxy::start(&reg.host_port());
    // Slow answers widen the window in which the 8 listings overlap.
    proxy.set_delay_ms(200);
    let m = Mount::start(&proxy.url());
    let root = m.join("merge/app");
    let listings: Vec<_> = (0..8)
        .map(|_| {
            Command::new("ls")
                .args(["-lR", &path_arg(&root)])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    with_deadline(WATCHDOG, "8 concurrent ls -lR", move || {
        for l in listings {
            let out = l.wait_with_output().unwrap();
            assert!(out.status.success(), "ls -lR: {}", String::from_utf8_lossy(&out.stderr));
        }
    });
    let mut per_target = std::collections::BTreeMap::<String, usize>::new();
    for r in proxy.requests() {
        if r.method == "GET" && r.target.contains("/manifests/") {
            *per_target.entry(r.target).or_default() += 1;
        }
    }
    eprintln!("manifest GETs per target: {per_target:?}");
    assert!(per_target.len() >= 7, "{per_target:?}");
    let repeated: Vec<_> = per_target.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "manifests fetched more than once: {repeated:?}");
}

// ---------------------------------------------------------------------------
// No extra round trip before the first byte (issue 13)
// ---------------------------------------------------------------------------

/// A blob looked up by name, whose size no descriptor gives, is sized by the
/// `Content-Range` of a ranged GET of its first chunk, and that GET's body
/// serves the first read: no HEAD goes out before it. The bytes are still
/// verified (the whole file hashes to its digest, the size is the registry's).
#[test]
fn first_read_of_a_blob_known_only_by_name_sends_no_head_before_its_first_get() {
    let reg = Registry::start();
    reg.client().push_random_image("first/byte", "v1", &[1000]);
    // In the repository, but in no manifest: its size comes from no descriptor.
    let bytes = random_bytes(3 * MIB + 12_345);
    let digest = reg.client().push_blob("first/byte", &bytes);
    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::start(&proxy.url());
    let path = m.join(format!("first/byte/_blobs/{digest}"));
    let before = proxy.requests().len();

    let mut f = fs::File::open(&path).expect("open the blob by name");
    let first = read_exact_at(&mut f, 0, 4096).expect("read its first 4 KiB");
    assert_bytes_eq(&first, &bytes[..4096], "first 4 KiB");
    let hex = digest.trim_start_matches("sha256:");
    let for_blob = |from: usize| -> Vec<ProxiedRequest> {
        proxy.requests()[from..]
            .iter()
            .filter(|r| r.target.contains(hex))
            .cloned()
            .collect()
    };
    let seen = for_blob(before);
    let summary: Vec<String> = seen
        .iter()
        .map(|r| format!("{} {} {:?} -> {}", r.method, r.target, r.range, r.status))
        .collect();
    eprintln!("requests for the blob up to the first 4 KiB: {summary:#?}");
    let first_get = seen.iter().position(|r| r.method == "GET").expect("a GET of the blob");
    assert_eq!(first_get, 0, "a request went before the first GET: {summary:#?}");
    assert_eq!(
        seen[0].range.as_deref(),
        Some("bytes=0-1048575"),
        "the first GET asks for the first chunk: {summary:#?}"
    );
    assert_eq!(seen[0].status, 206, "{summary:#?}");
    assert!(
        seen.iter().all(|r| r.method != "HEAD"),
        "a HEAD was sent for the blob: {summary:#?}"
    );

    // The size shown is the registry's, and reading to the end verifies.
    assert_eq!(fs::metadata(&path).unwrap().len(), bytes.len() as u64);
    let all = fs::read(&path).expect("read the whole blob");
    assert_eq!(sha256_digest(&all), digest);
    let seen = for_blob(before);
    assert!(
        seen.iter().all(|r| r.method != "HEAD"),
        "a HEAD was sent for the blob: {seen:#?}"
    );
    // The first chunk came once: no GET asked for bytes 0-… again.
    let from_zero = seen
        .iter()
        .filter(|r| r.range.as_deref().is_some_and(|r| r.starts_with("bytes=0-")))
        .count();
    assert_eq!(from_zero, 1, "{seen:#?}");
}

/// A digest the registry does not have: ENOENT from the ranged GET itself
/// (no HEAD after it), and the mount keeps working.
#[test]
fn lookup_of_a_missing_blob_by_name_is_enoent_from_one_get() {
    let reg = Registry::start();
    reg.client().push_random_image("first/missing", "v1", &[1000]);
    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::start(&proxy.url());
    let hex = "ab".repeat(32);
    let path = m.join(format!("first/missing/_blobs/sha256:{hex}"));
    let before = proxy.requests().len();
    let err = fs::metadata(&path).expect_err("no such blob");
    assert_eq!(errno_of(&err), libc::ENOENT, "{err}");
    let seen: Vec<ProxiedRequest> = proxy.requests()[before..]
        .iter()
        .filter(|r| r.target.contains(&hex))
        .cloned()
        .collect();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!((seen[0].method.as_str(), seen[0].status), ("GET", 404), "{seen:#?}");
}
