//! Mount options that change what a user sees: `--cache-size` (LRU eviction of
//! verified blobs), `--uid`/`--gid`, `--repo` for registries without a catalog,
//! and `--metadata-ttl` (how long a tag's digest is trusted).

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1 << 20;

fn cached(cache_dir: &Path, digest: &str) -> bool {
    cache_dir
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
        .exists()
}

/// Wait (bounded) for the daemon's background verification to commit a blob.
fn wait_cached(cache_dir: &Path, digest: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if cached(cache_dir, digest) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Wait (bounded) for a blob to leave the cache.
fn wait_gone(cache_dir: &Path, digest: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if !cached(cache_dir, digest) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A registry holding an image of two 2 MiB layers, mounted with a 3 MiB
/// cache: room for one of them at a time.
fn two_blobs_over_a_3m_cache() -> (Registry, ImageInfo, tempfile::TempDir, Mount) {
    let reg = Registry::start();
    let img = reg.client().push_random_image("team/app", "v1", &[2 * MIB, 2 * MIB]);
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::builder(&reg.url())
        .arg("--cache-size")
        .arg("3M")
        .cache_dir(cache.path())
        .start();
    (reg, img, cache, m)
}

#[test]
fn cache_size_evicts_the_least_recently_used_blob() {
    let (reg, img, cache, m) = two_blobs_over_a_3m_cache();
    let (a, b) = (&img.layers[0], &img.layers[1]);

    let read = |digest: &str| fs::read(m.join(format!("team/app/_blobs/{digest}"))).unwrap();
    assert_eq!(read(&a.digest), a.bytes);
    assert!(
        wait_cached(m.cache_dir(), &a.digest),
        "first blob is verified and cached"
    );
    assert_eq!(read(&b.digest), b.bytes);
    assert!(
        wait_cached(m.cache_dir(), &b.digest),
        "second blob is verified and cached"
    );
    // 2 MiB + 2 MiB > 3 MiB: the least recently used one had to go. It goes
    // before the second appears if the kernel had released the first read's
    // handle by then, else at that release (the kernel sends it after close()
    // returned): bounded wait, never an either-way pass.
    assert!(wait_gone(m.cache_dir(), &a.digest), "the first blob was evicted");
    assert!(cached(m.cache_dir(), &b.digest), "the second blob stays");
    // A later mount with the same cache: the kept blob comes from disk, the
    // evicted one from the registry again (a fresh mount has no page cache).
    drop(m);
    let m = Mount::builder(&reg.url())
        .arg("--cache-size")
        .arg("3M")
        .cache_dir(cache.path())
        .start();
    let read = |digest: &str| fs::read(m.join(format!("team/app/_blobs/{digest}"))).unwrap();
    assert_eq!(read(&b.digest), b.bytes);
    assert_eq!(
        m.stats()["bytes_fetched"],
        0,
        "the kept blob is served from the disk cache"
    );
    assert_eq!(read(&a.digest), a.bytes);
    assert_eq!(
        m.stats()["bytes_fetched"],
        a.bytes.len() as u64,
        "the evicted blob is fetched again"
    );
}

/// An open blob is never evicted, and a cache pushed over its limit while
/// blobs were open gets back under it as soon as one is released (the kernel
/// sends the release after close() returned): not only at the next commit.
#[test]
fn a_cache_over_its_limit_evicts_at_the_release_of_a_blob() {
    let (_reg, img, _cache, m) = two_blobs_over_a_3m_cache();
    let (a, b) = (&img.layers[0], &img.layers[1]);
    let path = |digest: &str| m.join(format!("team/app/_blobs/{digest}"));
    let mut held = fs::File::open(path(&a.digest)).unwrap();
    let mut got = Vec::new();
    held.read_to_end(&mut got).unwrap();
    assert!(got == a.bytes, "first blob's bytes");
    assert!(
        wait_cached(m.cache_dir(), &a.digest),
        "first blob is verified and cached"
    );
    assert_eq!(fs::read(path(&b.digest)).unwrap(), b.bytes);
    // 4 MiB > 3 MiB. Whichever comes last of b's commit, b's release and
    // the exit of b's fetch/write/hash workers, b is then the one blob nobody
    // holds: it goes, a (open) stays.
    let evicted = format!("evicted from the blob cache digest={}", b.digest);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !m.log().contains(&evicted) {
        assert!(Instant::now() < deadline, "b never evicted\n{}", m.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!cached(m.cache_dir(), &b.digest), "the evicted blob's file is gone");
    assert!(cached(m.cache_dir(), &a.digest), "an open blob is never evicted");
    drop(held);
    assert!(cached(m.cache_dir(), &a.digest), "within the limit, nothing more goes");
}

#[test]
fn uid_and_gid_are_shown_for_every_entry() {
    let reg = Registry::start();
    let c = reg.client();
    let img = c.push_random_image("team/app", "v1", &[1000]);
    let m = Mount::builder(&reg.url())
        .args(["--uid", "1234", "--gid", "4321"])
        .start();
    for rel in [
        String::new(),
        "team/app".into(),
        "team/app/_tags".into(),
        format!("team/app/_blobs/{}", img.layers[0].digest),
        format!("team/app/_manifests/{}/manifest.json", img.digest),
    ] {
        let meta = fs::symlink_metadata(m.join(&rel)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1234, 4321), "owner of /{rel}");
    }
}

#[test]
fn without_a_catalog_repo_names_are_listed_and_any_name_can_be_entered() {
    let reg = Registry::start();
    let c = reg.client();
    let app = c.push_random_image("team/app", "v1", &[100]);
    let thing = c.push_random_image("other/thing", "v2", &[100]);
    let proxy = FaultProxy::start(&reg.host_port());
    // The registry behind the proxy has no catalog.
    proxy.fail_next(1_000_000, 404, Match::path("/_catalog"));
    let m = Mount::builder(&proxy.url()).args(["--repo", "team/app"]).start();

    let mut top = ls_all(m.path());
    top.sort();
    assert_eq!(
        top,
        [".regfs", "team"],
        "only --repo names are listed without a catalog"
    );
    // A tag is a symlink to its manifest directory (README, "The tree").
    assert_eq!(
        fs::read_link(m.join("team/app/_tags/v1")).unwrap(),
        Path::new(&format!("../_manifests/{}", app.digest))
    );
    // A repository not listed can still be entered by name, and then it is listed.
    assert_eq!(
        fs::read_link(m.join("other/thing/_tags/v2")).unwrap(),
        Path::new(&format!("../_manifests/{}", thing.digest))
    );
    let mut top = ls_all(m.path());
    top.sort();
    assert_eq!(
        top,
        [".regfs", "other", "team"],
        "a name looked up is listed from then on"
    );
    // A name that is no repository is an empty namespace, not an error; its
    // repository entries do not exist.
    assert!(m.join("no/such").is_dir());
    let err = fs::read_dir(m.join("no/such/_tags")).unwrap_err();
    assert_eq!(errno_of(&err), libc::ENOENT);
}

/// Point `tag` at a new manifest in the registry (behind the mount's back).
fn retag(c: &RegistryClient, repo: &str, tag: &str, img: &ImageInfo) {
    c.push_manifest(repo, tag, &img.media_type, &img.manifest);
}

#[test]
fn metadata_ttl_bounds_how_long_a_moved_tag_shows_its_old_digest() {
    let reg = Registry::start();
    let c = reg.client();
    let one = c.push_random_image("team/app", "v1", &[100]);
    let two = c.push_random_image("team/app", "other", &[200]);
    let short = Mount::builder(&reg.url()).args(["--metadata-ttl", "1"]).start();
    let forever = Mount::builder(&reg.url())
        .args(["--metadata-ttl", "indefinite"])
        .start();
    let link = |m: &Mount| fs::read_link(m.join("team/app/_tags/v1")).unwrap();
    let to = |digest: &str| Path::new("../_manifests").join(digest);
    assert_eq!(link(&short), to(&one.digest));
    assert_eq!(link(&forever), to(&one.digest));

    retag(&c, "team/app", "v1", &two);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(link(&short), to(&two.digest), "after the TTL the new digest shows");
    assert_eq!(
        link(&forever),
        to(&one.digest),
        "with an indefinite TTL the first answer stays"
    );
}
