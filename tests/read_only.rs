//! Read-only integration tests: the real `regfs` binary mounted over a real
//! `docker-registry` (distribution 2.8), checked with std file APIs and real
//! tools (`tar`). Each test has its own registry, mountpoint and cache dir.
//!
//! Contract: README.md, "The tree" (the tree and its rules) and "Errors";
//! CLI and stats counters: docs/cli.md.

mod common;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;

const MIB: usize = 1024 * 1024;
/// Generous watchdog for calls that must not hang (never a timing assertion).
const WATCHDOG: Duration = Duration::from_secs(60);

/// Seeds `count` repositories named by `name(i)`, each with one tiny image
/// tagged `latest`, reusing one config blob by cross-repository mount.
fn seed_many_repos(reg: &Registry, count: usize, name: impl Fn(usize) -> String) -> Vec<String> {
    let c = reg.client();
    let first = name(0);
    let img = c.push_image(
        &first,
        Some("latest"),
        OCI_MANIFEST,
        image_config("amd64", "many"),
        vec![],
    );
    let mut names = vec![first.clone()];
    for i in 1..count {
        let repo = name(i);
        // ferro-oci-server ignores `?mount=` (202, an upload session) but serves
        // every blob under every repository name, so the config is there anyway.
        let mounted = c.mount_blob(&repo, &img.config.digest, &first);
        assert_eq!(mounted, reg.kind().mounts_blobs(), "blob mount into {repo}");
        assert_eq!(
            c.get_blob(&repo, &img.config.digest),
            img.config.bytes,
            "config in {repo}"
        );
        c.push_manifest(&repo, "latest", OCI_MANIFEST, &img.manifest);
        names.push(repo);
    }
    names
}

// ---------------------------------------------------------------------------
// Listings: catalog and tags, with pagination
// ---------------------------------------------------------------------------

/// 110 top-level repositories and 15 under a namespace: more than one
/// 100-entry catalog page (distribution 2.8's default page when no `n=`).
fn seed_catalog(reg: &Registry) -> (BTreeSet<String>, BTreeSet<String>) {
    let c = reg.client();
    let top: Vec<String> = seed_many_repos(reg, 110, |i| format!("repo-{i:03}"));
    let nested: Vec<String> = seed_many_repos(reg, 15, |i| format!("ns/sub-{i:02}"));
    assert_eq!(c.catalog().len(), 125);
    (
        top.into_iter().collect(),
        nested
            .into_iter()
            .map(|n| n.trim_start_matches("ns/").to_string())
            .collect(),
    )
}

fn check_root_listing(m: &Mount, top: &BTreeSet<String>, nested: &BTreeSet<String>) {
    let mut want: BTreeSet<String> = top.clone();
    want.insert("ns".to_string());
    let got: BTreeSet<String> = ls(m.path()).into_iter().collect();
    assert_eq!(
        got.len(),
        want.len(),
        "root listing: {} entries, expected {} (missing: {:?})",
        got.len(),
        want.len(),
        want.difference(&got).take(10).collect::<Vec<_>>()
    );
    assert_eq!(got, want);
    let got_ns: BTreeSet<String> = ls(&m.join("ns")).into_iter().collect();
    assert_eq!(&got_ns, nested);
}

on_both_registries! {
fn root_lists_every_repository_of_a_catalog_over_100_entries(kind) {
    let reg = Registry::start_kind(kind);
    let (top, nested) = seed_catalog(&reg);
    let m = Mount::start(&reg.url());
    check_root_listing(&m, &top, &nested);
    // 125 names fit one page of the 1000 regfs asks for (distribution's
    // default would be 100): the mount's first page, then the listing's one.
    // (Following `Link` pages: `root_listing_follows_catalog_link_pages_with_page_size_40`.)
    assert_eq!(m.stat("requests_catalog"), 2, "stats: {:?}", m.stats());
}
}

#[test]
fn root_listing_follows_catalog_link_pages_with_page_size_40() {
    let reg = Registry::start();
    let (top, nested) = seed_catalog(&reg);
    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::builder(&proxy.url()).args(["--page-size", "40"]).start();
    check_root_listing(&m, &top, &nested);
    // 125 entries at n=40: at least 4 pages, each asked with n=40.
    let pages: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.target.starts_with("/v2/_catalog"))
        .collect();
    assert!(pages.len() >= 4, "catalog requests: {pages:?}");
    assert!(
        pages.iter().all(|r| r.target.contains("n=40")),
        "catalog requests: {pages:?}"
    );
    assert!(pages.iter().any(|r| r.target.contains("last=")));
}

/// 130 tags on one repository, with names that sort differently as strings
/// and as numbers.
fn seed_tags(reg: &Registry, repo: &str) -> (ImageInfo, BTreeSet<String>) {
    let c = reg.client();
    let img = c.push_random_image(repo, "latest", &[64]);
    let mut tags: BTreeSet<String> = BTreeSet::new();
    tags.insert("latest".into());
    for i in 0..129 {
        let t = match i % 3 {
            0 => format!("v{i}"),
            1 => format!("1.{i}.0"),
            _ => format!("build_{i:04}-x"),
        };
        c.push_manifest(repo, &t, OCI_MANIFEST, &img.manifest);
        tags.insert(t);
    }
    assert_eq!(c.list_tags(repo).len(), 130);
    (img, tags)
}

on_both_registries! {
fn tags_directory_lists_more_than_100_tags(kind) {
    let reg = Registry::start_kind(kind);
    let (img, tags) = seed_tags(&reg, "big/tagged");
    let m = Mount::start(&reg.url());
    let got: BTreeSet<String> = ls(&m.join("big/tagged/_tags")).into_iter().collect();
    assert_eq!(got, tags);
    let target = fs::read_link(m.join("big/tagged/_tags/build_0128-x")).unwrap();
    assert_eq!(target, PathBuf::from(format!("../_manifests/{}", img.digest)));
}
}

/// distribution 2.8 ignores `n=` on tags/list, so the fault proxy paginates
/// (sorted, `Link` with `last=`), with pages capped below `n`: the mount must
/// follow `Link` and never stop at a short page.
#[test]
fn tags_directory_follows_link_pages_including_short_pages() {
    let reg = Registry::start();
    let (_img, tags) = seed_tags(&reg, "big/tagged");
    let proxy = FaultProxy::start(&reg.host_port());
    proxy.paginate_tags(true);
    proxy.set_tag_page_max(17);
    let m = Mount::builder(&proxy.url()).args(["--page-size", "40"]).start();
    let got: BTreeSet<String> = ls(&m.join("big/tagged/_tags")).into_iter().collect();
    assert_eq!(
        got.len(),
        tags.len(),
        "missing tags: {:?}",
        tags.difference(&got).take(10).collect::<Vec<_>>()
    );
    assert_eq!(got, tags);
    let pages: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.target.contains("/tags/list"))
        .collect();
    // 130 tags at 17 per page: 8 pages.
    assert!(pages.len() >= 8, "tags/list requests: {pages:?}");
    assert!(pages.iter().all(|r| r.target.contains("n=40")), "{pages:?}");
}

// ---------------------------------------------------------------------------
// Tree shape, symlinks, byte-exact content
// ---------------------------------------------------------------------------

on_both_registries! {
fn nested_repository_names_are_directories_inside_their_parent(kind) {
    let reg = Registry::start_kind(kind);
    let c = reg.client();
    let alpine = c.push_random_image("library/alpine", "3.19", &[100]);
    let extras = c.push_random_image("library/alpine/extras", "1.0", &[200]);
    let m = Mount::start(&reg.url());

    assert_eq!(ls(&m.join("library")), vec!["alpine"]);
    let inside: BTreeSet<String> = ls(&m.join("library/alpine")).into_iter().collect();
    for want in ["_tags", "_manifests", "_blobs", "extras"] {
        assert!(inside.contains(want), "library/alpine lists {inside:?}");
    }
    for hidden in ["_oci", "_export"] {
        assert!(!inside.contains(hidden), "{hidden} must not be listed: {inside:?}");
    }
    assert!(m.join("library/alpine").is_dir());
    assert!(m.join("library/alpine/extras").is_dir());
    assert_eq!(ls(&m.join("library/alpine/_tags")), vec!["3.19"]);
    assert_eq!(ls(&m.join("library/alpine/extras/_tags")), vec!["1.0"]);
    assert_file_eq(&m.join("library/alpine/_tags/3.19/manifest.json"), &alpine.manifest);
    assert_file_eq(
        &m.join("library/alpine/extras/_tags/1.0/manifest.json"),
        &extras.manifest,
    );
    // The parent's blobs are not the child's.
    assert_file_eq(
        &m.join(format!("library/alpine/extras/_blobs/{}", extras.layers[0].digest)),
        &extras.layers[0].bytes,
    );
}
}

on_both_registries! {
fn tag_is_a_symlink_to_its_manifest_directory(kind) {
    let reg = Registry::start_kind(kind);
    let c = reg.client();
    let v1 = c.push_random_image("app/web", "v1", &[10]);
    let v2 = c.push_random_image("app/web", "v2", &[20]);
    let m = Mount::start(&reg.url());
    for img in [&v1, &v2] {
        let tag = m.join(format!("app/web/_tags/{}", img.tag.as_deref().unwrap()));
        let meta = fs::symlink_metadata(&tag).unwrap();
        assert!(meta.file_type().is_symlink(), "{} is not a symlink", tag.display());
        assert_eq!(
            fs::read_link(&tag).unwrap(),
            PathBuf::from(format!("../_manifests/sha256:{}", img.hex()))
        );
        // Following the link lands in a directory.
        assert!(fs::metadata(&tag).unwrap().is_dir());
    }
}
}

on_both_registries! {
fn manifest_json_is_byte_exact_and_named_by_its_digest(kind) {
    let reg = Registry::start_kind(kind);
    let c = reg.client();
    let img = c.push_random_image("app/api", "stable", &[1000, 2000]);
    let amd = c.push_random_image("app/api", "amd64", &[10]);
    let arm = c.push_random_image("app/api", "arm64", &[10]);
    let index = c.push_index(
        "app/api",
        "multi",
        IndexKind::Oci,
        &[
            (&amd, Platform::new("linux", "amd64", None)),
            (&arm, Platform::new("linux", "arm64", Some("v8"))),
        ],
    );
    let m = Mount::start(&reg.url());

    for (digest, bytes) in [(&img.digest, &img.manifest), (&index.digest, &index.manifest)] {
        let p = m.join(format!("app/api/_manifests/{digest}/manifest.json"));
        // Size is exact before reading.
        assert_eq!(fs::metadata(&p).unwrap().len(), bytes.len() as u64, "{}", p.display());
        let got = fs::read(&p).unwrap();
        assert_bytes_eq(&got, bytes, &p.display().to_string());
        assert_eq!(format!("sha256:{}", sha256_hex(&got)), *digest);
    }
    assert_file_eq(&m.join("app/api/_tags/stable/manifest.json"), &img.manifest);
    assert_file_eq(&m.join("app/api/_tags/multi/manifest.json"), &index.manifest);

    // _manifests lists what the tags reach (index children included).
    let listed: BTreeSet<String> = ls(&m.join("app/api/_manifests")).into_iter().collect();
    for d in [&img.digest, &index.digest, &amd.digest, &arm.digest] {
        assert!(listed.contains(d.as_str()), "_manifests lists {listed:?}, not {d}");
    }
}
}

on_both_registries! {
fn manifest_directory_links_config_layers_and_platform_children(kind) {
    let reg = Registry::start_kind(kind);
    let c = reg.client();
    let img = c.push_random_image("app/links", "v1", &[100, 200, 300]);
    let amd = c.push_random_image("app/links", "amd64", &[10]);
    let arm = c.push_random_image("app/links", "arm64", &[10]);
    let index = c.push_index(
        "app/links",
        "multi",
        IndexKind::DockerList,
        &[
            (&amd, Platform::new("linux", "amd64", None)),
            (&arm, Platform::new("linux", "arm64", Some("v8"))),
        ],
    );
    let m = Mount::start(&reg.url());
    let dir = m.join(format!("app/links/_manifests/{}", img.digest));
    assert_eq!(
        fs::read_link(dir.join("config.json")).unwrap(),
        PathBuf::from(format!("../../_blobs/{}", img.config.digest))
    );
    assert_file_eq(&dir.join("config.json"), &img.config.bytes);
    assert_eq!(ls(&dir.join("layers")), vec!["00", "01", "02"]);
    for (i, layer) in img.layers.iter().enumerate() {
        let l = dir.join(format!("layers/{i:02}"));
        assert_eq!(
            fs::read_link(&l).unwrap(),
            PathBuf::from(format!("../../../_blobs/{}", layer.digest))
        );
        assert_file_eq(&l, &layer.bytes);
    }
    // Same digest, same inode, through the link and in _blobs.
    assert_eq!(
        fs::metadata(dir.join("layers/00")).unwrap().ino(),
        fs::metadata(m.join(format!("app/links/_blobs/{}", img.layers[0].digest)))
            .unwrap()
            .ino()
    );
    // Reachable through the tag as well.
    assert_file_eq(&m.join("app/links/_tags/v1/layers/01"), &img.layers[1].bytes);
    let idx = m.join(format!("app/links/_manifests/{}/manifests", index.digest));
    assert_eq!(ls(&idx), vec!["linux-amd64", "linux-arm64-v8"]);
    assert_eq!(
        fs::read_link(idx.join("linux-arm64-v8")).unwrap(),
        PathBuf::from(format!("../../{}", arm.digest))
    );
    assert_file_eq(&idx.join("linux-amd64/manifest.json"), &amd.manifest);
}
}

on_both_registries! {
fn blob_is_byte_exact_with_exact_size_before_reading(kind) {
    let reg = Registry::start_kind(kind);
    // Not "data/blobs": ferro-oci-server routes /v2/data/blobs/manifests/v1 as
    // the blob "manifests/v1" of repository "data" (405), distribution does not.
    let c = reg.client();
    let img = c.push_random_image("data/bytes", "v1", &[12_345, 40 * MIB]);
    // A second image sharing the first layer.
    c.push_image(
        "data/other",
        Some("v1"),
        OCI_MANIFEST,
        image_config("arm64", "other"),
        vec![img.layers[0].bytes.clone()],
    );
    let m = Mount::start(&reg.url());
    let blobs = m.join("data/bytes/_blobs");
    for blob in [&img.config, &img.layers[0], &img.layers[1]] {
        let p = blobs.join(&blob.digest);
        let meta = fs::metadata(&p).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.len(), blob.size(), "stat size of {}", blob.digest);
        assert_eq!(meta.mode() & 0o777, 0o444, "mode of {}", blob.digest);
    }
    let listed: BTreeSet<String> = ls(&blobs).into_iter().collect();
    for blob in [&img.config, &img.layers[0], &img.layers[1]] {
        assert!(listed.contains(&blob.digest), "_blobs lists {listed:?}");
    }
    for blob in [&img.config, &img.layers[0], &img.layers[1]] {
        let p = blobs.join(&blob.digest);
        let expected = blob.bytes.clone();
        let got = with_deadline(WATCHDOG * 2, "reading a blob", move || fs::read(p).unwrap());
        assert_bytes_eq(&got, &expected, &blob.digest);
    }
    // Same digest, same inode, in every repository that has it.
    let a = fs::metadata(blobs.join(&img.layers[0].digest)).unwrap().ino();
    let b = fs::metadata(m.join(format!("data/other/_blobs/{}", img.layers[0].digest)))
        .unwrap()
        .ino();
    assert_eq!(a, b, "inode of one digest in two repositories");
}
}

on_both_registries! {
fn range_reads_at_odd_offsets_on_an_uncached_blob(kind) {
    let reg = Registry::start_kind(kind);
    let c = reg.client();
    let size = 20 * MIB + 333;
    let img = c.push_random_image("data/ranges", "v1", &[size]);
    let layer = Arc::new(img.layers[0].bytes.clone());
    let m = Mount::start(&reg.url());
    let path = m.join(format!("data/ranges/_blobs/{}", img.layers[0].digest));
    let len = size as u64;
    // (offset, length): odd offsets, page and window boundaries, backwards
    // seeks, reads crossing the end.
    let cases: Vec<(u64, usize)> = vec![
        (1, 1),
        (4095, 2),
        (1024 * 1024 - 3, 7),
        (8 * 1024 * 1024 + 17, 4096),
        (len - 1, 1),
        (0, 1),
        (4096 * 3 + 1, 131_072 + 5),
        (1024 * 1024 - 3, MIB + 11),
        (16 * 1024 * 1024 - 1, 2),
        (len - 100, 1000),
        (2 * 1024 * 1024 + 12_345, 300_000),
        (5, 3 * MIB),
        (len, 10),
        (len + 4096, 10),
    ];
    let layer2 = layer.clone();
    with_deadline(WATCHDOG * 2, "range reads", move || {
        let mut f = File::open(&path).unwrap();
        for (off, n) in cases {
            let got = read_exact_at(&mut f, off, n).unwrap_or_else(|e| panic!("read {n} at {off}: {e}"));
            let start = (off as usize).min(layer2.len());
            let end = (start + n).min(layer2.len());
            assert_bytes_eq(&got, &layer2[start..end], &format!("read {n} at offset {off}"));
        }
        // pread on a second descriptor, interleaved with the first.
        let g = File::open(&path).unwrap();
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; 9999];
        let n = g.read_at(&mut buf, 12 * 1024 * 1024 + 3).unwrap();
        assert!(n > 0);
        let o = 12 * 1024 * 1024 + 3;
        assert_bytes_eq(&buf[..n], &layer2[o..o + n], "pread at 12 MiB + 3");
        f.seek(SeekFrom::Start(len - 2)).unwrap();
        let mut tail = Vec::new();
        f.read_to_end(&mut tail).unwrap();
        assert_eq!(tail, &layer2[layer2.len() - 2..]);
    });
}
}

#[test]
fn concurrent_readers_of_one_uncached_blob_get_exact_bytes() {
    let reg = Registry::start();
    let size = 24 * MIB + 4321;
    let img = reg.client().push_random_image("data/shared", "v1", &[size]);
    let layer = Arc::new(img.layers[0].bytes.clone());
    let m = Mount::start(&reg.url());
    let path = m.join(format!("data/shared/_blobs/{}", img.layers[0].digest));
    with_deadline(WATCHDOG * 2, "concurrent reads", move || {
        let mut threads = Vec::new();
        // Four readers on disjoint quarters (pread, odd chunk size, backwards)
        // and one whole-file sequential reader, all at once.
        for q in 0..4usize {
            let (path, layer) = (path.clone(), layer.clone());
            threads.push(std::thread::spawn(move || {
                use std::os::unix::fs::FileExt;
                let f = File::open(&path).unwrap();
                let quarter = layer.len() / 4;
                let (start, end) = (q * quarter, if q == 3 { layer.len() } else { (q + 1) * quarter });
                let chunk = 777_777;
                let mut off = end;
                while off > start {
                    let lo = off.saturating_sub(chunk).max(start);
                    let mut buf = vec![0u8; off - lo];
                    f.read_exact_at(&mut buf, lo as u64).unwrap();
                    assert_bytes_eq(&buf, &layer[lo..off], &format!("pread {lo}..{off}"));
                    off = lo;
                }
            }));
        }
        let (p2, l2) = (path.clone(), layer.clone());
        threads.push(std::thread::spawn(move || {
            assert_bytes_eq(&fs::read(&p2).unwrap(), &l2, "sequential reader");
        }));
        for t in threads {
            t.join().expect("a reader failed");
        }
    });
}

on_both_registries! {
fn gzip_layer_lists_with_tar_through_the_mount(kind) {
    let reg = Registry::start_kind(kind);
    let c = reg.client();
    let files: Vec<(&str, &[u8])> = vec![
        ("etc/os-release", b"NAME=regfs-test\n"),
        ("usr/bin/hello", b"#!/bin/sh\necho hello\n"),
        ("var/lib/data.bin", &[7u8; 100_000]),
    ];
    let layer = make_tar_gz(&files);
    let img = c.push_image(
        "tools/tarred",
        Some("v1"),
        OCI_MANIFEST,
        image_config("amd64", "tar"),
        vec![layer],
    );
    let m = Mount::start(&reg.url());
    {
        let p = m.join(format!("tools/tarred/_blobs/{}", img.layers[0].digest));
        let out = Command::new("tar").arg("-tzf").arg(&p).output().unwrap();
        assert!(
            out.status.success(),
            "tar -tzf {}: {}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut names: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        names.sort();
        assert_eq!(names, vec!["etc/os-release", "usr/bin/hello", "var/lib/data.bin"]);
    }
}
}

// ---------------------------------------------------------------------------
// Authentication and TLS
// ---------------------------------------------------------------------------

#[test]
fn basic_auth_with_username_and_password_from_env_or_stdin() {
    let reg = Registry::start_with(RegistryOptions::htpasswd());
    let c = reg.client();
    let img = c.push_random_image("private/app", "v1", &[5000]);

    let m = Mount::builder(&reg.url())
        .args(["--username", TEST_USER])
        .env("REGFS_PASSWORD", TEST_PASSWORD)
        .start();
    assert_file_eq(&m.join("private/app/_tags/v1/manifest.json"), &img.manifest);
    assert_file_eq(
        &m.join(format!("private/app/_blobs/{}", img.layers[0].digest)),
        &img.layers[0].bytes,
    );
    assert_eq!(ls(m.path()), vec!["private"]);
    let log = m.log();
    assert!(!log.contains(TEST_PASSWORD), "the password appears in the log");
    drop(m);

    let m = Mount::builder(&reg.url())
        .args(["--username", TEST_USER, "--password-stdin"])
        .stdin(format!("{TEST_PASSWORD}\n").as_bytes())
        .start();
    assert_file_eq(&m.join("private/app/_tags/v1/manifest.json"), &img.manifest);
}

fn assert_clear_failure(f: &MountFailure, words: &[&str]) {
    let status = f.status.unwrap_or_else(|| panic!("regfs did not exit: {f}"));
    assert!(!status.success(), "regfs exited 0: {f}");
    let text = format!("{}\n{}", f.stderr, f.log).to_lowercase();
    assert!(
        words.iter().any(|w| text.contains(w)),
        "no clear message (one of {words:?}) in:\n{f}"
    );
}

#[test]
fn basic_auth_wrong_password_fails_the_mount() {
    let reg = Registry::start_with(RegistryOptions::htpasswd());
    reg.client().push_random_image("private/app", "v1", &[10]);
    let words = [
        "401",
        "unauthorized",
        "authentication",
        "credentials",
        "password",
        "denied",
    ];

    let f = Mount::builder(&reg.url())
        .args(["--username", TEST_USER])
        .env("REGFS_PASSWORD", "not-the-password")
        .start_background()
        .err()
        .expect("background mount with a wrong password must fail");
    assert_clear_failure(&f, &words);
    assert!(!f.stderr.trim().is_empty(), "background mode printed nothing: {f}");
    assert!(!f.stderr.contains("not-the-password"), "password echoed: {f}");

    let f = Mount::builder(&reg.url())
        .args(["--username", TEST_USER])
        .env("REGFS_PASSWORD", "not-the-password")
        .try_start()
        .err()
        .expect("foreground mount with a wrong password must fail");
    assert_clear_failure(&f, &words);
}

#[test]
fn token_auth_reads_work_and_the_issuer_sees_token_requests() {
    let reg = Registry::start_with(RegistryOptions::token());
    let c = reg.client();
    let img = c.push_random_image("secure/app", "v1", &[4096, 300_000]);
    let issuer = reg.issuer().unwrap();
    let before = issuer.request_count();

    let m = Mount::builder(&reg.url())
        .args(["--username", TEST_USER])
        .env("REGFS_PASSWORD", TEST_PASSWORD)
        .start();
    assert_eq!(ls(m.path()), vec!["secure"]);
    assert_eq!(ls(&m.join("secure/app/_tags")), vec!["v1"]);
    assert_file_eq(&m.join("secure/app/_tags/v1/manifest.json"), &img.manifest);
    for l in &img.layers {
        assert_file_eq(&m.join(format!("secure/app/_blobs/{}", l.digest)), &l.bytes);
    }
    let seen: Vec<_> = issuer.requests().into_iter().skip(before as usize).collect();
    assert!(!seen.is_empty(), "the issuer saw no token request");
    assert!(
        seen.iter().all(|r| r.user.as_deref() == Some(TEST_USER)),
        "token requests: {seen:?}"
    );
    assert!(
        seen.iter().any(|r| r
            .scopes
            .iter()
            .any(|s| s.starts_with("repository:secure/app:") && s.contains("pull"))),
        "no pull scope for secure/app in {seen:?}"
    );
    assert!(m.stat("requests_token") >= 1, "stats: {:?}", m.stats());
    assert!(!m.log().contains(TEST_PASSWORD), "the password appears in the log");
}

/// Like Docker Hub: `/v2/` answers 401 even to anonymous clients, and the
/// issuer hands out pull-only tokens without credentials.
#[test]
fn token_auth_anonymous_pull_without_credentials() {
    let reg = Registry::start_with(RegistryOptions {
        auth: AuthMode::Token(TokenIssuerOptions {
            anonymous_pull: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let img = reg.client().push_random_image("public/app", "v1", &[100_000]);
    let issuer = reg.issuer().unwrap();
    let before = issuer.request_count();
    let m = Mount::start(&reg.url());
    assert_eq!(ls(&m.join("public/app/_tags")), vec!["v1"]);
    assert_file_eq(&m.join("public/app/_tags/v1/manifest.json"), &img.manifest);
    assert_file_eq(
        &m.join(format!("public/app/_blobs/{}", img.layers[0].digest)),
        &img.layers[0].bytes,
    );
    let seen: Vec<_> = issuer.requests().into_iter().skip(before as usize).collect();
    assert!(
        seen.iter().any(|r| r.user.is_none() && r.granted),
        "no anonymous token request: {seen:?}"
    );
}

#[test]
fn mount_of_an_unreachable_registry_fails_clearly() {
    let mut reg = Registry::start();
    reg.stop();
    let f = Mount::builder(&reg.url())
        .start_background()
        .err()
        .expect("mounting a registry that is down must fail");
    assert_clear_failure(&f, &["connect", "refused", "unreachable", "network"]);
    assert!(!f.stderr.trim().is_empty(), "background mode printed nothing: {f}");
}

#[test]
fn tls_registry_with_ca_cert_without_it_and_insecure() {
    let reg = Registry::start_with(RegistryOptions::tls());
    let img = reg.client().push_random_image("tls/app", "v1", &[70_000]);
    let ca = reg.ca_cert().unwrap().to_str().unwrap().to_string();

    // `host:port` means HTTPS.
    let m = Mount::builder(&reg.host_port()).args(["--ca-cert", &ca]).start();
    assert_file_eq(&m.join("tls/app/_tags/v1/manifest.json"), &img.manifest);
    assert_file_eq(
        &m.join(format!("tls/app/_blobs/{}", img.layers[0].digest)),
        &img.layers[0].bytes,
    );
    drop(m);

    let f = Mount::builder(&reg.url())
        .try_start()
        .err()
        .expect("mount of a self-signed registry without --ca-cert must fail");
    assert_clear_failure(&f, &["certificate", "tls", "ssl", "x509", "unknownissuer", "trust"]);

    let m = Mount::builder(&reg.url()).arg("--insecure").start();
    assert_file_eq(&m.join("tls/app/_tags/v1/manifest.json"), &img.manifest);
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

on_both_registries! {
fn unknown_repository_tag_and_digest_are_enoent(kind) {
    let reg = Registry::start_kind(kind);
    let img = reg.client().push_random_image("known/repo", "v1", &[10]);
    let m = Mount::start(&reg.url());
    let missing_digest = format!("sha256:{}", sha256_hex(b"not pushed anywhere"));
    let cases = [
        "nosuchrepo".to_string(),
        "known/nosuch".to_string(),
        "nosuchrepo/_tags/v1".to_string(),
        "known/repo/_tags/nosuchtag".to_string(),
        format!("known/repo/_manifests/{missing_digest}"),
        format!("known/repo/_manifests/{missing_digest}/manifest.json"),
        format!("known/repo/_blobs/{missing_digest}"),
        // A digest that exists in another repository only.
        format!("nosuchrepo/_blobs/{}", img.layers[0].digest),
        // Names that can never be repositories, tags or digests.
        "known/repo/_blobs/not-a-digest".to_string(),
        "known/repo/_tags/..bad".to_string(),
        "known/repo/_nonsense".to_string(),
    ];
    for rel in &cases {
        let p = m.join(rel);
        assert_eq!(lstat_errno(&p), libc::ENOENT, "lstat {rel}");
    }
    assert_eq!(
        errno_of(&File::open(m.join(format!("known/repo/_blobs/{missing_digest}"))).unwrap_err()),
        libc::ENOENT
    );
    assert_eq!(
        errno_of(&fs::read_dir(m.join("nosuchrepo/_tags")).unwrap_err()),
        libc::ENOENT
    );
    // The rest of the tree still works.
    assert_file_eq(&m.join("known/repo/_tags/v1/manifest.json"), &img.manifest);
}
}

#[test]
fn registry_down_uncached_blob_read_is_eio() {
    let mut reg = Registry::start();
    let img = reg.client().push_random_image("down/app", "v1", &[2 * MIB]);
    let m = Mount::start(&reg.url());
    let p = m.join(format!("down/app/_blobs/{}", img.layers[0].digest));
    // Known while the registry is up (size from the descriptor).
    assert_eq!(
        fs::metadata(m.join("down/app/_tags/v1/manifest.json")).unwrap().len(),
        img.manifest.len() as u64
    );
    assert_eq!(fs::metadata(&p).unwrap().len(), img.layers[0].size());

    reg.stop();
    let p2 = p.clone();
    let res = with_deadline(WATCHDOG, "reading with the registry down", move || {
        let mut f = File::open(&p2)?;
        let mut buf = vec![0u8; 64 * 1024];
        f.read(&mut buf)
    });
    let err = res.expect_err("a read of an uncached blob with the registry down must fail");
    assert_eq!(errno_of(&err), libc::EIO, "errno: {err:?}");
    assert!(m.is_mounted(), "the mount must survive a registry outage");

    // The registry comes back: the same read works (errors are not cached).
    reg.start_again();
    let expected = img.layers[0].bytes.clone();
    let got = with_deadline(WATCHDOG, "reading after the registry restarted", move || {
        fs::read(&p).unwrap()
    });
    assert_bytes_eq(&got, &expected, "blob after restart");
}

#[test]
fn corrupted_cache_file_is_detected_and_refetched() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("cache/app", "v1", &[3 * MIB + 7]);
    let layer = &img.layers[0];
    let cache = tempfile::Builder::new().prefix("regfs-cache-").tempdir().unwrap();
    let cached = cache.path().join(format!("blobs/sha256/{}", layer.hex()));

    let m = Mount::builder(&reg.url()).cache_dir(cache.path()).start();
    let p = m.join(format!("cache/app/_blobs/{}", layer.digest));
    assert_file_eq(&p, &layer.bytes);
    assert!(
        wait_until(Duration::from_secs(15), || fs::read(&cached)
            .map(|b| b == layer.bytes)
            .unwrap_or(false)),
        "a full read must leave the verified blob at {}; cache dir has: {:?}",
        cached.display(),
        walk(cache.path())
    );
    drop(m);

    let mut bytes = fs::read(&cached).unwrap();
    let flip = bytes.len() / 2 + 3;
    bytes[flip] ^= 0x55;
    fs::write(&cached, &bytes).unwrap();

    let m = Mount::builder(&reg.url()).cache_dir(cache.path()).start();
    assert_file_eq(&m.join(format!("cache/app/_blobs/{}", layer.digest)), &layer.bytes);
    // The lines only the corruption path writes (src/cache/blobs.rs
    // `open_complete`), not the normal "blob verified and cached".
    let log = m.log();
    assert!(
        log.lines().any(
            |l| l.contains("cached blob failed verification; removing it and fetching again")
                && l.contains(&layer.digest)
        ),
        "the log does not report the bad cache file:\n{log}"
    );
    let errors = fs::read_to_string(m.join(".regfs/errors")).unwrap();
    assert!(
        errors
            .lines()
            .any(|l| l.ends_with(&format!("cached blob {} failed verification; refetching", layer.digest))),
        ".regfs/errors:\n{errors}"
    );
    // Refetched whole from the registry, and the good bytes cached again.
    assert_eq!(m.stat("bytes_fetched"), layer.size(), "{:?}", m.stats());
    assert!(
        wait_until(Duration::from_secs(15), || fs::read(&cached)
            .map(|b| b == layer.bytes)
            .unwrap_or(false)),
        "the refetched blob is not cached at {}",
        cached.display()
    );
}

// ---------------------------------------------------------------------------
// Faults between the mount and the registry
// ---------------------------------------------------------------------------

#[test]
fn server_errors_and_rate_limits_are_retried() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("flaky/app", "v1", &[MIB + 5]);
    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::start(&proxy.url());
    assert_eq!(ls(&m.join("flaky/app/_tags")), vec!["v1"]);

    proxy.fail_next(2, 500, Match::path("/manifests/"));
    assert_file_eq(&m.join("flaky/app/_tags/v1/manifest.json"), &img.manifest);

    proxy.fail_next(2, 500, Match::method_path("GET", "/blobs/"));
    proxy.fail_next(1, 429, Match::method_path("GET", "/blobs/"));
    let p = m.join(format!("flaky/app/_blobs/{}", img.layers[0].digest));
    let expected = img.layers[0].bytes.clone();
    let got = with_deadline(WATCHDOG, "reading through 500/429", move || fs::read(p).unwrap());
    assert_bytes_eq(&got, &expected, "blob through injected 500s and a 429");

    assert_eq!(
        proxy.pending_faults(),
        0,
        "not every injected fault was hit: {:?}",
        proxy.requests()
    );
    let injected = proxy.requests().iter().filter(|r| r.fault.is_some()).count();
    assert_eq!(injected, 5);
    assert!(m.stat("retries") > 0, "stats: {:?}", m.stats());
}

#[test]
fn token_is_fetched_again_after_a_401() {
    let reg = Registry::start_with(RegistryOptions::token());
    let img = reg.client().push_random_image("secure/flaky", "v1", &[200_000]);
    let issuer = reg.issuer().unwrap();
    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::builder(&proxy.url())
        .args(["--username", TEST_USER])
        .env("REGFS_PASSWORD", TEST_PASSWORD)
        .start();
    assert_file_eq(&m.join("secure/flaky/_tags/v1/manifest.json"), &img.manifest);
    let tokens_before = issuer.request_count();

    // The registry "forgets" the token once: the mount must get a new one
    // and retry.
    proxy.fail_next(1, 401, Match::method_path("GET", "/blobs/"));
    let p = m.join(format!("secure/flaky/_blobs/{}", img.layers[0].digest));
    let expected = img.layers[0].bytes.clone();
    let got = with_deadline(WATCHDOG, "reading through a 401", move || fs::read(p));
    let got = got.unwrap_or_else(|e| panic!("read after an injected 401: {e}; log:\n{}", m.log()));
    assert_bytes_eq(&got, &expected, "blob after a 401");
    assert_eq!(proxy.pending_faults(), 0, "{:?}", proxy.requests());
    assert!(
        issuer.request_count() > tokens_before,
        "no new token request after the 401 (issuer saw {:?})",
        issuer.requests()
    );
}

#[test]
fn connection_cut_mid_body_still_yields_the_exact_bytes() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("cut/app", "v1", &[6 * MIB + 1234]);
    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::start(&proxy.url());
    let p = m.join(format!("cut/app/_blobs/{}", img.layers[0].digest));
    assert_eq!(fs::metadata(&p).unwrap().len(), img.layers[0].size());

    // Two blob responses are cut after 100 000 body bytes.
    proxy.cut_next_body(2, 100_000, Match::method_path("GET", "/blobs/"));
    let expected = img.layers[0].bytes.clone();
    let got = with_deadline(WATCHDOG, "reading through cut connections", move || {
        fs::read(p).unwrap()
    });
    assert_bytes_eq(&got, &expected, "blob through cut connections");
    let cuts = proxy
        .requests()
        .iter()
        .filter(|r| matches!(r.fault, Some(FaultAction::CutBodyAfter(_))))
        .count();
    assert!(cuts >= 1, "no response was cut: {:?}", proxy.requests());
}

/// The unit regfs fetches and tracks blobs in (src/cache/blobs.rs `CHUNK`):
/// a random read costs the chunks it touches, never the blob.
const CHUNK: u64 = 1 << 20;

/// Blob GETs of `digest` in the proxy's log, once every response is over.
fn blob_gets(proxy: &FaultProxy, digest: &str) -> Vec<ProxiedRequest> {
    assert!(
        proxy.wait_idle(WATCHDOG),
        "blob responses still running: {:#?}",
        proxy.requests()
    );
    proxy
        .requests()
        .into_iter()
        .filter(|r| r.is_blob_get() && r.target.ends_with(digest))
        .inspect(|r| {
            eprintln!(
                "GET {:?} -> {} ({} body bytes, fault {:?})",
                r.range, r.status, r.body_bytes, r.fault
            )
        })
        .collect()
}

/// Reads are lazy and ranged: `stat` and a 4 KiB read in the middle of an
/// uncached 64 MiB blob fetch at most 2 MiB, by chunk-aligned `Range`s (the
/// blob's size comes from the `Content-Range` of a GET of its first chunk,
/// the read from the chunk it falls in), never the blob. Witnesses: the
/// proxy's log (each `Range` asked and each body byte sent) and the mount's
/// own `bytes_fetched`.
#[test]
fn a_4k_read_in_an_uncached_64mib_blob_fetches_at_most_2mib_by_range() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("lazy/app", "v1", &[64 * MIB]);
    let layer = &img.layers[0];
    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::start(&proxy.url());
    let p = m.join(format!("lazy/app/_blobs/{}", layer.digest));
    assert_eq!(fs::metadata(&p).unwrap().len(), 64 * MIB as u64);

    let offset = 40 * MIB + 12_345;
    let got = with_deadline(WATCHDOG, "a 4 KiB read", move || {
        read_exact_at(&mut File::open(p).unwrap(), offset as u64, 4096).unwrap()
    });
    assert_bytes_eq(&got, &layer.bytes[offset..offset + 4096], "4 KiB at 40 MiB + 12345");

    let gets = blob_gets(&proxy, &layer.digest);
    assert!(!gets.is_empty(), "no blob GET: {:#?}", proxy.requests());
    let mut asked = 0;
    let mut covers_read = false;
    for r in &gets {
        let (first, last) = r
            .byte_range()
            .unwrap_or_else(|| panic!("blob GET without Range: {r:?}"));
        let last = last.unwrap_or_else(|| panic!("open-ended Range on a first fetch: {r:?}"));
        assert_eq!(r.status, 206, "{r:?}");
        assert_eq!(first % CHUNK, 0, "ranges start on a chunk: {r:?}");
        assert_eq!(r.body_bytes, last + 1 - first, "body = the range asked: {r:?}");
        asked += last + 1 - first;
        covers_read |= first <= offset as u64 && offset as u64 + 4096 <= last + 1;
    }
    assert!(covers_read, "no GET covers the read: {gets:#?}");
    assert!(asked <= 2 * CHUNK, "{asked} bytes asked for a 4 KiB read: {gets:#?}");
    let sent: u64 = gets.iter().map(|r| r.body_bytes).sum();
    assert!(sent <= 2 * CHUNK, "{sent} body bytes sent for a 4 KiB read: {gets:#?}");
    // The read returns once its 64 KiB are in; the rest of the chunk is still
    // being received (and counted) by the mount when the proxy is done sending.
    wait_until(WATCHDOG, || m.stat("bytes_fetched") >= sent);
    assert_eq!(m.stat("bytes_fetched"), sent, "the mount counts what the proxy sent");
}

/// A body cut mid-way resumes with `Range: bytes=<byte reached>-<same end>`:
/// the bytes that arrived are kept (src/cache/blobs.rs `fetch_range`), so the
/// resumed request starts exactly where the cut one stopped, and no byte of
/// the blob is fetched twice.
#[test]
fn a_cut_blob_body_resumes_with_range_from_the_byte_reached() {
    let reg = Registry::start();
    let size = 6 * MIB + 1234;
    let img = reg.client().push_random_image("resume/app", "v1", &[size]);
    let layer = &img.layers[0];
    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::start(&proxy.url());
    let p = m.join(format!("resume/app/_blobs/{}", layer.digest));
    assert_eq!(fs::metadata(&p).unwrap().len(), size as u64);

    // Only a body longer than this is cut: the readahead part (chunks 1..),
    // not the first chunk's; an odd count, so no chunk boundary hides an error.
    let cut_at: u64 = 2 * CHUNK + 4_321;
    proxy.cut_next_body(1, cut_at, Match::method_path("GET", "/blobs/"));
    let got = with_deadline(WATCHDOG, "reading through a cut", move || fs::read(p).unwrap());
    assert_bytes_eq(&got, &layer.bytes, "blob through a cut body");

    let gets = blob_gets(&proxy, &layer.digest);
    let cut: Vec<&ProxiedRequest> = gets
        .iter()
        .filter(|r| r.fault == Some(FaultAction::CutBodyAfter(cut_at)))
        .collect();
    assert_eq!(cut.len(), 1, "one response cut: {gets:#?}");
    let cut = cut[0];
    assert_eq!(cut.body_bytes, cut_at, "the proxy sent {cut_at} bytes before the cut");
    let (first, last) = cut.byte_range().expect("the cut GET had a Range");
    let last = last.expect("a bounded Range");
    let want = format!("bytes={}-{last}", first + cut_at);
    let resumed: Vec<&ProxiedRequest> = gets
        .iter()
        .filter(|r| {
            r.fault.is_none()
                && r.byte_range().and_then(|(_, l)| l) == Some(last)
                && r.byte_range().map(|(f, _)| f) != Some(first)
        })
        .collect();
    assert_eq!(
        resumed.iter().map(|r| r.range.clone().unwrap()).collect::<Vec<_>>(),
        vec![want],
        "one resumed GET, from the byte reached to the same end: {gets:#?}"
    );
    let sent: u64 = gets.iter().map(|r| r.body_bytes).sum();
    assert_eq!(sent, size as u64, "every byte fetched once: {gets:#?}");
    assert_eq!(m.stat("retries"), 1, "one resume counted as a retry");
}

// ---------------------------------------------------------------------------
// Daemon life cycle
// ---------------------------------------------------------------------------

#[test]
fn fusermount_u_ends_the_foreground_daemon_with_status_0() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("life/app", "v1", &[10]);
    let mut m = Mount::start(&reg.url());
    assert_file_eq(&m.join("life/app/_tags/v1/manifest.json"), &img.manifest);
    let version = fs::read_to_string(m.join(".regfs/version")).unwrap();
    assert!(version.starts_with("regfs "), ".regfs/version: {version:?}");
    let status = m
        .unmount()
        .unwrap_or_else(|e| panic!("fusermount3 -u failed: {e}"))
        .unwrap_or_else(|| panic!("daemon still running after unmount; log:\n{}", m.log()));
    assert!(status.success(), "daemon exit status {status}; log:\n{}", m.log());
    assert!(!m.is_mounted());
}

#[test]
fn sigterm_unmounts_cleanly() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("life/app", "v1", &[10]);
    let mut m = Mount::start(&reg.url());
    assert_file_eq(&m.join("life/app/_tags/v1/manifest.json"), &img.manifest);
    m.signal(libc::SIGTERM);
    let status = m
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("daemon still running after SIGTERM; log:\n{}", m.log()));
    assert!(!m.is_mounted(), "mount still listed after SIGTERM");
    assert!(
        status.success(),
        "daemon exit status after SIGTERM: {status}; log:\n{}",
        m.log()
    );
}

#[test]
fn background_mode_returns_once_mounted() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("bg/app", "v1", &[10]);
    let bg = Mount::builder(&reg.url())
        .start_background()
        .unwrap_or_else(|f| panic!("{f}"));
    // Ready as soon as the command returned.
    assert!(bg.is_mounted());
    assert_file_eq(&bg.join("bg/app/_tags/v1/manifest.json"), &img.manifest);
    assert_eq!(bg.daemon_pids().len(), 1, "daemon processes: {:?}", bg.daemon_pids());
}

/// Resident pages of `path` in the page cache (`fincore`, util-linux).
fn resident_bytes(path: &std::path::Path) -> u64 {
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux) is installed");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A blob not cached yet is opened with direct I/O (issue 13, cold reads):
/// its bytes go from the daemon straight to the reader, not also into the
/// kernel's page cache of the mount (a second copy beside the cache file,
/// and a copy more per byte). The bytes are exact, the mount's page cache
/// holds none of them after the read, and the same cold blob can still be
/// mmapped (FUSE_DIRECT_IO_ALLOW_MMAP) with the same bytes.
#[test]
fn a_cold_blob_is_read_without_a_page_cache_copy_and_can_be_mmapped() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("cold/read", "v1", &[6 * MIB + 1234]);
    let layer = &img.layers[0];
    let m = Mount::start(&reg.url());
    let path = m.join(format!("cold/read/_blobs/{}", layer.digest));
    let mut f = File::open(&path).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; MIB];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert_bytes_eq(&got, &layer.bytes, "cold read");
    assert_eq!(
        resident_bytes(&path),
        0,
        "a cold read leaves no pages in the mount's page cache"
    );
    drop(f);

    // A fresh mount and cache: mmap the blob before any byte of it is cached.
    let m2 = Mount::start(&reg.url());
    let path2 = m2.join(format!("cold/read/_blobs/{}", layer.digest));
    let f2 = File::open(&path2).unwrap();
    let len = layer.bytes.len();
    use std::os::fd::AsRawFd;
    // SAFETY: a private read-only mapping of an open file, unmapped below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            f2.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        ptr,
        libc::MAP_FAILED,
        "mmap of a cold blob: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the mapping is `len` readable bytes until munmap.
    let mapped = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) }.to_vec();
    // SAFETY: unmapping what was mapped above.
    unsafe { libc::munmap(ptr, len) };
    assert_bytes_eq(&mapped, &layer.bytes, "mmap of a cold blob");
}

/// A blob whose cache file is complete and verified is opened with FUSE
/// passthrough: the kernel reads the cache file itself, so the bytes are
/// right (sha256) and no read request reaches the daemon; the stats count
/// the passthrough open and the log says so. (Tests run as root on a kernel
/// with passthrough; without it this fails rather than passes.)
#[test]
fn a_verified_cached_blob_is_read_through_fuse_passthrough() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("pass/through", "v1", &[5 * MIB + 4321]);
    let layer = &img.layers[0];
    let m = Mount::start(&reg.url());
    let path = m.join(format!("pass/through/_blobs/{}", layer.digest));
    // The first read goes through the daemon: fetched, verified, cached.
    assert_eq!(sha256_digest(&fs::read(&path).unwrap()), layer.digest);
    assert_eq!(m.stat("fuse_passthrough_opens"), 0);
    // The kernel releases the first handle after close returns; until it
    // has, a new open of the inode stays in the daemon's (cached) mode.
    let mut served = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            let reads_before = m.stat("fuse_reads");
            let bytes = fs::read(&path).unwrap();
            assert_eq!(
                sha256_digest(&bytes),
                layer.digest,
                "bytes read after the blob was cached"
            );
            if m.stat("fuse_passthrough_opens") > 0 {
                served = Some(m.stat("fuse_reads") - reads_before);
                return true;
            }
            false
        }),
        "no open went passthrough; log:\n{}",
        m.log()
    );
    assert_eq!(served, Some(0), "reads of a passthrough open reached the daemon");
    // Another process reading at an offset sees the same bytes.
    let mut f = File::open(&path).unwrap();
    f.seek(SeekFrom::Start(3 * MIB as u64 + 7)).unwrap();
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).unwrap();
    assert_bytes_eq(&tail, &layer.bytes[3 * MIB + 7..], "passthrough read at an offset");
    let log = m.log();
    assert!(log.contains("FUSE passthrough on"), "{log}");
    assert!(
        log.contains("FUSE passthrough: reads go straight to the cache file"),
        "{log}"
    );
}
