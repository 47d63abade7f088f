//! Backups with rsync, the `_oci/` image-layout view and `_export/<tag>.tar`
//! archives (issues 5 and 6), checked with the real tools: `rsync`,
//! `skopeo`, `umoci`, GNU `tar`, against a real `docker-registry`.
//!
//! Fixtures are real images: gzip tar layers whose uncompressed digests are
//! the config's `rootfs.diff_ids` (so docker-archive consumers and `umoci
//! unpack` accept them), an OCI image, a Docker schema 2 image, a multi-arch
//! index with a child for this machine's architecture, and an artifact with a
//! `subject` reachable through the `sha256-<hex>` referrers tag.
//!
//! Every comparison of a restore is made over the registry's HTTP API (tags
//! list, manifest GET), never through the mount. Restored tags may land up to
//! about a second after rsync exits (manifests held until their references
//! arrive): the tests poll with a deadline.
//!
//! Contract: README.md, "The tree" and "OCI layouts and archives"; user
//! docs: docs/backups.md, docs/archives.md.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use common::*;

const SBOM_TYPE: &str = "application/vnd.regfs.test.sbom";
/// How long restored tags may take to appear after rsync exits (held
/// manifests are pushed as their references arrive; ~1 s is expected).
const TAGS_DEADLINE: Duration = Duration::from_secs(30);

/// What `seed` pushed to one repository.
#[allow(dead_code)]
struct Fixture {
    repo: String,
    /// tag -> manifest digest.
    tags: BTreeMap<String, String>,
    /// Every manifest reachable from the tags.
    manifests: BTreeSet<String>,
    /// Every config and layer those manifests reference, with its size.
    blobs: BTreeMap<String, u64>,
    v1: ImageInfo,
    v2: ImageInfo,
    host_child: ImageInfo,
    other_child: ImageInfo,
    index: RawManifest,
    artifact: RawManifest,
    referrers_tag: String,
    /// v1's layers as pushed (for diff_id checks).
    v1_layers: Vec<RealLayer>,
}

impl Fixture {
    fn smallest_layer(&self) -> u64 {
        [&self.v1, &self.v2, &self.host_child, &self.other_child]
            .iter()
            .flat_map(|i| i.layers.iter().map(|l| l.size()))
            .min()
            .unwrap()
    }
    fn blob_bytes(&self) -> u64 {
        self.blobs.values().sum()
    }
}

/// The OCI empty descriptor's blob, `{}`.
const EMPTY_BLOB_DIGEST: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// Pushes to `repo`: `v1` (OCI image, 3 real layers, one of 2 MiB), `v2`
/// (Docker schema 2 image sharing v1's base layer), `multi` (OCI index: a
/// linux/<this arch> child and one other platform), an SBOM artifact whose
/// subject is v1, and the `sha256-<v1 hex>` referrers tag that lists it.
fn seed(c: &RegistryClient, repo: &str) -> Fixture {
    let base = RealLayer::new(&[
        ("etc/os-release", b"ID=regfs-test\nNAME=\"regfs test\"\n"),
        ("usr/lib/base.bin", &random_bytes(200_000)),
    ]);
    let app = RealLayer::new(&[("app/main", &random_bytes(64 * 1024)), ("app/README", b"v1\n")]);
    let big = RealLayer::new(&[("app/data.bin", &random_bytes(2 << 20))]);
    let app2 = RealLayer::new(&[("app/main", &random_bytes(48 * 1024)), ("app/README", b"v2\n")]);
    let host_layer = RealLayer::new(&[("etc/arch", host_arch().as_bytes())]);
    let other_layer = RealLayer::new(&[("etc/arch", b"other".as_slice()), ("x", &random_bytes(3000))]);

    let v1 = c.push_real_image(repo, Some("v1"), OCI_MANIFEST, host_arch(), None, &[&base, &app, &big]);
    let v2 = c.push_real_image(repo, Some("v2"), DOCKER_MANIFEST, host_arch(), None, &[&base, &app2]);
    let (other_arch, other_variant) = if host_arch() == "arm64" {
        ("amd64", None)
    } else {
        ("arm64", Some("v8"))
    };
    let host_child = c.push_real_image(repo, None, OCI_MANIFEST, host_arch(), None, &[&base, &host_layer]);
    let other_child = c.push_real_image(repo, None, OCI_MANIFEST, other_arch, other_variant, &[&other_layer]);
    let index = c.push_index_of(
        repo,
        Some("multi"),
        vec![
            descriptor_with(
                other_child.descriptor(),
                json!({"platform": Platform::new("linux", other_arch, other_variant).to_json()}),
            ),
            descriptor_with(
                host_child.descriptor(),
                json!({"platform": Platform::new("linux", host_arch(), None).to_json()}),
            ),
        ],
        true,
    );
    let sbom = c.push_blob_as(
        repo,
        "application/spdx+json",
        br#"{"spdxVersion":"SPDX-2.3","name":"regfs"}"#,
    );
    let artifact = c.push_artifact(
        repo,
        Some(SBOM_TYPE),
        None,
        std::slice::from_ref(&sbom),
        Some(v1.descriptor()),
    );
    let referrers = c.push_referrers_tag(repo, &v1.digest, &[(&artifact, Some(SBOM_TYPE))]);
    let referrers_tag = format!("sha256-{}", v1.hex());

    let tags: BTreeMap<String, String> = [
        ("v1".to_string(), v1.digest.clone()),
        ("v2".into(), v2.digest.clone()),
        ("multi".into(), index.digest.clone()),
        (referrers_tag.clone(), referrers.digest.clone()),
    ]
    .into_iter()
    .collect();
    let manifests: BTreeSet<String> = [
        &v1.digest,
        &v2.digest,
        &host_child.digest,
        &other_child.digest,
        &index.digest,
        &artifact.digest,
        &referrers.digest,
    ]
    .into_iter()
    .cloned()
    .collect();
    let mut blobs = BTreeMap::new();
    for img in [&v1, &v2, &host_child, &other_child] {
        blobs.insert(img.config.digest.clone(), img.config.size());
        for l in &img.layers {
            blobs.insert(l.digest.clone(), l.size());
        }
    }
    blobs.insert(sha256_digest(b"{}"), 2);
    blobs.insert(sbom.digest.clone(), sbom.size());
    Fixture {
        repo: repo.to_string(),
        tags,
        manifests,
        blobs,
        v1,
        v2,
        host_child,
        other_child,
        index,
        artifact,
        referrers_tag,
        v1_layers: vec![base, app, big],
    }
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// rsync under a watchdog; on failure the panic carries rsync's output and
/// the daemon's last log lines. Returns stdout.
fn rsync_logged(args: &[&str], log: PathBuf) -> String {
    let mut cmd = Command::new("rsync");
    cmd.args(args);
    String::from_utf8_lossy(&run_logged(cmd, log).stdout).into_owned()
}

fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().unwrap()
}

/// The registry's view of `repo` must equal `expected` (polled: tags land
/// when their manifests do); then every manifest digest must be there.
fn assert_restored(c: &RegistryClient, repo: &str, fx: &Fixture, m: &Mount, how: &str) {
    let got = c.wait_for_tags(repo, &fx.tags, TAGS_DEADLINE);
    assert_eq!(
        got,
        fx.tags,
        "{how}: tags and digests of {repo} (registry API) differ from the source's {}\n.regfs/held:\n{}\ndaemon log tail:\n{}",
        fx.repo,
        fs::read_to_string(m.join(".regfs/held")).unwrap_or_default(),
        tail(&log_path(m), 40)
    );
    for d in &fx.manifests {
        assert_eq!(c.manifest_status(repo, d), 200, "{how}: manifest {repo}@{d} missing");
    }
    for (d, size) in &fx.blobs {
        assert_eq!(c.get_blob(repo, d).len() as u64, *size, "{how}: blob {repo}@{d}");
    }
}

fn mtime(p: &Path) -> i64 {
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
        .mtime()
}

// ---------------------------------------------------------------- issue 5: rsync

on_both_registries! {
fn rsync_backup_is_verified_incremental_and_restores_with_the_same_digests(kind) {
    let reg = Registry::start_kind(kind);
    let c = reg.client();
    let fx = seed(&c, "shop/app");
    let m = Mount::start(&reg.url());
    let log = log_path(&m);
    let work = tempdir("regfs-backup-");
    let bk = work.path().join("app");
    let src = m.join("shop/app");

    rsync_logged(&["-a", &slash(&src), &slash(&bk)], log.clone());

    // The copy: tags as links into _manifests, every manifest and blob, an empty _uploads/.
    assert_eq!(
        list_dir(&bk).unwrap(),
        ["_blobs", "_manifests", "_tags", "_uploads"],
        "backup of a repository holds exactly the listed entries (no _oci/, _export/)"
    );
    assert_eq!(list_dir(&bk.join("_uploads")).unwrap(), Vec::<String>::new());
    let tags = list_dir(&bk.join("_tags")).unwrap();
    assert_eq!(tags, fx.tags.keys().cloned().collect::<Vec<_>>(), "backup _tags/");
    for (tag, digest) in &fx.tags {
        let p = bk.join("_tags").join(tag);
        assert!(
            fs::symlink_metadata(&p).unwrap().file_type().is_symlink(),
            "{tag} is a symlink"
        );
        assert_eq!(link_of(&p), format!("../_manifests/{digest}"), "backup _tags/{tag}");
        assert!(
            p.join("manifest.json").is_file(),
            "_tags/{tag} resolves inside the backup"
        );
    }
    let (manifests, blobs) = verify_repo_copy(&bk);
    assert_eq!(
        manifests,
        fx.manifests.iter().cloned().collect::<Vec<_>>(),
        "manifests in the backup"
    );
    assert_eq!(
        blobs,
        fx.blobs.keys().cloned().collect::<Vec<_>>(),
        "blobs in the backup"
    );
    for (d, size) in &fx.blobs {
        assert_eq!(
            fs::metadata(bk.join("_blobs").join(d)).unwrap().len(),
            *size,
            "size of {d}"
        );
    }

    // Derived links are copied as links and resolve inside the backup.
    let v1 = bk.join("_manifests").join(&fx.v1.digest);
    assert_eq!(
        link_of(&v1.join("config.json")),
        format!("../../_blobs/{}", fx.v1.config.digest)
    );
    assert_eq!(list_dir(&v1.join("layers")).unwrap(), ["00", "01", "02"]);
    for (i, l) in fx.v1.layers.iter().enumerate() {
        let p = v1.join(format!("layers/{i:02}"));
        assert_eq!(link_of(&p), format!("../../../_blobs/{}", l.digest));
        assert_eq!(
            sha256_digest(&fs::read(&p).unwrap()),
            l.digest,
            "layers/{i:02} resolves"
        );
    }
    let idx = bk.join("_manifests").join(&fx.index.digest);
    let host_name = format!("linux-{}", host_arch());
    assert_eq!(
        link_of(&idx.join("manifests").join(&host_name)),
        format!("../../{}", fx.host_child.digest),
        "index child link in the backup"
    );
    let art = bk.join("_manifests").join(&fx.artifact.digest);
    assert_eq!(link_of(&art.join("subject")), format!("../{}", fx.v1.digest));
    let referrers = list_dir(&v1.join("referrers")).unwrap();
    assert_eq!(referrers.len(), 1, "v1 referrers in the backup: {referrers:?}");
    assert_eq!(
        link_of(&v1.join("referrers").join(&referrers[0])),
        format!("../../{}", fx.artifact.digest)
    );

    // Stable metadata: every entry has mtime 0 (1970-01-01T00:00:00Z), as in the mount.
    for p in walk(&bk) {
        assert_eq!(mtime(&p), 0, "mtime of {} in the backup", p.display());
    }
    for p in [
        src.join("_tags/v1"),
        src.join("_blobs").join(&fx.v1.config.digest),
        src.join("_manifests").join(&fx.v1.digest),
        src.join("_manifests").join(&fx.v1.digest).join("manifest.json"),
    ] {
        assert_eq!(mtime(&p), 0, "mtime of {} in the mount", p.display());
    }

    // Incremental: nothing transferred, no blob fetched.
    let gets = m.stat("requests_blob_get");
    let fetched = m.stat("bytes_fetched");
    let stats = rsync_logged(&["-a", "--stats", &slash(&src), &slash(&bk)], log.clone());
    assert_eq!(rsync_stat(&stats, "Number of regular files transferred"), 0, "{stats}");
    assert_eq!(rsync_stat(&stats, "Number of created files"), 0, "{stats}");
    assert_eq!(rsync_stat(&stats, "Total transferred file size"), 0, "{stats}");
    let itemized = rsync_logged(&["-ai", &slash(&src), &slash(&bk)], log.clone());
    assert_eq!(itemized, "", "rsync -ai of an unchanged repository itemizes nothing");
    assert_eq!(
        m.stat("requests_blob_get"),
        gets,
        "blob GETs during the incremental rsync"
    );
    assert_eq!(
        m.stat("bytes_fetched"),
        fetched,
        "bytes fetched during the incremental rsync"
    );

    // Incremental from a new mount with an empty cache (the nightly case):
    // still nothing transferred and no blob GET, only listings and HEADs.
    {
        let fresh = Mount::start(&reg.url());
        let stats = rsync_logged(
            &["-a", "--stats", &slash(&fresh.join("shop/app")), &slash(&bk)],
            log_path(&fresh),
        );
        assert_eq!(rsync_stat(&stats, "Number of regular files transferred"), 0, "{stats}");
        assert_eq!(
            fresh.stat("requests_blob_get"),
            0,
            "blob GETs of an incremental rsync from a fresh mount"
        );
    }

    // Restore into a new repository of the same registry: same tags, same digests,
    // blobs mounted or skipped rather than uploaded again.
    let pushed0 = m.stat("bytes_pushed");
    let dest = m.join("restored/app");
    fs::create_dir_all(&dest).unwrap();
    rsync_logged(&["-a", &slash(&bk), &slash(&dest)], log.clone());
    assert_restored(&c, "restored/app", &fx, &m, "rsync restore");
    let pushed = m.stat("bytes_pushed") - pushed0;
    assert!(
        pushed < fx.smallest_layer(),
        "restore into the same registry uploaded {pushed} bytes (smallest layer {}): blobs it has must be mounted or skipped",
        fx.smallest_layer()
    );

    // The restored repository backs up to the same bytes.
    let bk2 = work.path().join("restored");
    let c2 = c.tag_digests("restored/app");
    assert_eq!(c2, fx.tags);
    rsync_logged(&["-a", &slash(&m.join("restored/app")), &slash(&bk2)], log.clone());
    let diff = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(&bk)
        .arg(&bk2)
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "backup of the restored repository differs from the original backup:\n{}",
        String::from_utf8_lossy(&diff.stdout)
    );
}
}

on_both_registries! {
fn oci_layout_backup_and_restore_with_rsync(kind) {
    let reg = Registry::start_kind(kind);
    let c = reg.client();
    let fx = seed(&c, "shop/app");
    let m = Mount::start(&reg.url());
    let log = log_path(&m);
    let work = tempdir("regfs-ocibackup-");
    let bk = work.path().join("oci-layout");
    let oci = m.join("shop/app/_oci");

    // _oci/ is reachable by name but not listed.
    assert!(!list_dir(&m.join("shop/app")).unwrap().contains(&"_oci".to_string()));
    rsync_logged(&["-a", &slash(&oci), &slash(&bk)], log.clone());
    assert_eq!(list_dir(&bk).unwrap(), ["blobs", "index.json", "oci-layout"]);
    let (index, digests) = verify_oci_layout(&bk);
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index_refs(&index), fx.tags, "index.json: one entry per tag");
    let mut want: Vec<String> = fx.manifests.iter().cloned().chain(fx.blobs.keys().cloned()).collect();
    want.sort();
    assert_eq!(digests, want, "_oci/blobs/sha256: every reachable manifest and blob");
    for p in walk(&bk) {
        assert_eq!(mtime(&p), 0, "mtime of {} in the layout backup", p.display());
    }

    // Incremental: nothing to do.
    let gets = m.stat("requests_blob_get");
    let stats = rsync_logged(&["-a", "--stats", &slash(&oci), &slash(&bk)], log.clone());
    assert_eq!(rsync_stat(&stats, "Number of regular files transferred"), 0, "{stats}");
    assert_eq!(
        m.stat("requests_blob_get"),
        gets,
        "blob GETs during the incremental rsync of _oci/"
    );

    // Restore: blobs, every manifest, one tag per index.json entry.
    let pushed0 = m.stat("bytes_pushed");
    fs::create_dir_all(m.join("restored/oci")).unwrap();
    rsync_logged(&["-a", &slash(&bk), &slash(&m.join("restored/oci/_oci"))], log.clone());
    assert_restored(&c, "restored/oci", &fx, &m, "rsync restore of an OCI layout");
    let pushed = m.stat("bytes_pushed") - pushed0;
    assert!(
        pushed < fx.smallest_layer(),
        "layout restore into the same registry uploaded {pushed} bytes (smallest layer {})",
        fx.smallest_layer()
    );
}
}

on_both_registries! {
/// The disaster-recovery case: the backup goes into another (empty)
/// registry, so every blob is uploaded exactly once.
fn rsync_backup_restores_into_another_registry(kind) {
    let reg = Registry::start_kind(kind);
    let fx = seed(&reg.client(), "shop/app");
    let m = Mount::start(&reg.url());
    let work = tempdir("regfs-dr-");
    let bk = work.path().join("app");
    rsync_logged(&["-a", &slash(&m.join("shop/app")), &slash(&bk)], log_path(&m));
    drop(m);

    let reg2 = Registry::start_kind(kind);
    let c2 = reg2.client();
    let m2 = Mount::start(&reg2.url());
    let dest = m2.join("shop/app");
    fs::create_dir_all(&dest).unwrap();
    rsync_logged(&["-a", &slash(&bk), &slash(&dest)], log_path(&m2));
    assert_restored(&c2, "shop/app", &fx, &m2, "restore into another registry");
    // A blob shared by several images (v1, v2 and a child share the base layer) is uploaded once.
    // ferro-oci-server holds the OCI empty blob `{}` from the start (an artifact's
    // config), so it is not uploaded there.
    let empty_blob = (kind == RegistryKind::Ferro)
        .then(|| fx.blobs.get(EMPTY_BLOB_DIGEST).copied())
        .flatten()
        .unwrap_or(0);
    assert_eq!(
        m2.stat("bytes_pushed"),
        fx.blob_bytes() - empty_blob,
        "bytes pushed = the sum of the distinct blobs (stats: {:?})",
        m2.stats()
    );
}
}

/// A restore through a mount that has not seen the blobs in another
/// repository (a new mount, empty cache) into a registry that has them.
#[test]
fn restore_through_a_fresh_mount_does_not_upload_blobs_the_registry_has() {
    let reg = Registry::start();
    let c = reg.client();
    let fx = seed(&c, "shop/app");
    let work = tempdir("regfs-fresh-restore-");
    let bk = work.path().join("app");
    {
        let m = Mount::start(&reg.url());
        rsync_logged(&["-a", &slash(&m.join("shop/app")), &slash(&bk)], log_path(&m));
    }
    let m = Mount::start(&reg.url());
    let dest = m.join("copy/app");
    fs::create_dir_all(&dest).unwrap();
    rsync_logged(&["-a", &slash(&bk), &slash(&dest)], log_path(&m));
    assert_restored(&c, "copy/app", &fx, &m, "restore through a fresh mount");
    let pushed = m.stat("bytes_pushed");
    assert!(
        pushed < fx.smallest_layer(),
        "restore through a fresh mount into the registry that holds every blob uploaded {pushed} bytes \
         (all distinct blobs: {}); expected cross-repository mounts or skips",
        fx.blob_bytes()
    );
}

#[test]
fn rsync_hard_links_keep_one_copy_of_a_shared_blob() {
    let reg = Registry::start();
    let c = reg.client();
    let shared = RealLayer::new(&[("usr/share/shared.bin", &random_bytes(300_000))]);
    let own_a = RealLayer::new(&[("a", b"a".as_slice())]);
    let own_b = RealLayer::new(&[("b", b"b".as_slice())]);
    let a = c.push_real_image(
        "team/a",
        Some("latest"),
        OCI_MANIFEST,
        host_arch(),
        None,
        &[&shared, &own_a],
    );
    let b = c.push_real_image(
        "team/b",
        Some("latest"),
        OCI_MANIFEST,
        host_arch(),
        None,
        &[&shared, &own_b],
    );
    let d = shared.digest();
    assert_eq!(a.layers[0].digest, d);
    assert_eq!(b.layers[0].digest, d);
    let m = Mount::start(&reg.url());

    // One inode per digest everywhere in the mount.
    let in_a = m.join(format!("team/a/_blobs/{d}"));
    let in_b = m.join(format!("team/b/_blobs/{d}"));
    let in_oci = m.join(format!("team/a/_oci/blobs/sha256/{}", d.trim_start_matches("sha256:")));
    let ino = fs::metadata(&in_a).unwrap().ino();
    assert_eq!(
        fs::metadata(&in_b).unwrap().ino(),
        ino,
        "same blob, same inode across repositories"
    );
    assert_eq!(
        fs::metadata(&in_oci).unwrap().ino(),
        ino,
        "same blob, same inode in _oci/"
    );
    let via_layer = m.join(format!("team/b/_manifests/{}/layers/00", b.digest));
    assert_eq!(
        fs::metadata(&via_layer).unwrap().ino(),
        ino,
        "layers/00 resolves to the same inode"
    );

    let work = tempdir("regfs-hardlinks-");
    let bk = work.path().join("team");
    rsync_logged(&["-aH", &slash(&m.join("team")), &slash(&bk)], log_path(&m));
    let ma = fs::metadata(bk.join(format!("a/_blobs/{d}"))).unwrap();
    let mb = fs::metadata(bk.join(format!("b/_blobs/{d}"))).unwrap();
    assert_eq!(sha256_digest(&fs::read(bk.join(format!("b/_blobs/{d}"))).unwrap()), d);
    assert_eq!(
        (ma.ino(), ma.nlink()),
        (mb.ino(), 2),
        "rsync -aH keeps one copy of a blob shared by two repositories (mount reports nlink {})",
        fs::metadata(&in_a).unwrap().nlink()
    );
}

#[test]
fn whole_registry_rsync_copies_every_repository() {
    let reg = Registry::start();
    let c = reg.client();
    let l1 = RealLayer::new(&[("one", b"1".as_slice())]);
    let l2 = RealLayer::new(&[("two", b"2".as_slice())]);
    c.push_real_image("alpha", Some("1.0"), OCI_MANIFEST, host_arch(), None, &[&l1]);
    c.push_real_image("alpha", Some("latest"), DOCKER_MANIFEST, host_arch(), None, &[&l1, &l2]);
    c.push_real_image("ns/beta", Some("x"), OCI_MANIFEST, host_arch(), None, &[&l2]);
    c.push_real_image("ns/beta/nested", Some("y"), OCI_MANIFEST, host_arch(), None, &[&l1]);
    let m = Mount::start(&reg.url());
    let log = log_path(&m);
    let work = tempdir("regfs-all-");
    let bk = work.path().join("registry");

    rsync_logged(&["-a", &slash(m.path()), &slash(&bk)], log.clone());
    for repo in c.catalog() {
        let dir = bk.join(&repo);
        let tags: BTreeMap<String, String> = list_dir(&dir.join("_tags"))
            .unwrap()
            .into_iter()
            .map(|t| {
                let target = link_of(&dir.join("_tags").join(&t));
                (t, target.trim_start_matches("../_manifests/").to_string())
            })
            .collect();
        assert_eq!(
            tags,
            c.tag_digests(&repo),
            "tags of {repo} in the whole-registry backup"
        );
        let (manifests, _) = verify_repo_copy(&dir);
        for d in tags.values() {
            assert!(manifests.contains(d), "{repo}: manifest {d} in the backup");
        }
    }
    // A nested repository is a plain subdirectory of its parent in the copy.
    assert!(bk.join("ns/beta/_tags/x").exists() && bk.join("ns/beta/nested/_tags/y").exists());

    // .regfs/ (daemon status) is copied like any directory: report what it holds.
    let status: Vec<String> = list_dir(&bk.join(".regfs")).unwrap_or_default();
    eprintln!("whole-registry backup: .regfs/ holds {status:?}");

    // Incremental: only status files may change.
    let gets = m.stat("requests_blob_get");
    let itemized = rsync_logged(&["-ai", &slash(m.path()), &slash(&bk)], log.clone());
    let changed: Vec<&str> = itemized.lines().filter(|l| !l.contains(".regfs/")).collect();
    assert!(changed.is_empty(), "second whole-registry rsync changed: {changed:?}");
    eprintln!("second whole-registry rsync itemized: {itemized:?}");
    assert_eq!(
        m.stat("requests_blob_get"),
        gets,
        "blob GETs during the incremental rsync"
    );

    // Restore of the whole registry into another one. `.regfs/` cannot be
    // written (EPERM, rsync exit 23), so it is excluded, as docs/backups.md says.
    let reg2 = Registry::start();
    let c2 = reg2.client();
    let m2 = Mount::start(&reg2.url());
    rsync_logged(
        &["-a", "--exclude=/.regfs/", &slash(&bk), &slash(m2.path())],
        log_path(&m2),
    );
    for repo in c.catalog() {
        let want = c.tag_digests(&repo);
        let got = c2.wait_for_tags(&repo, &want, TAGS_DEADLINE);
        assert_eq!(
            got,
            want,
            "{repo} after a whole-registry restore\n{}",
            tail(&log_path(&m2), 40)
        );
    }
    assert_eq!(c2.catalog(), c.catalog(), "repositories after a whole-registry restore");
}

// ---------------------------------------------------------------- issue 5: _oci/ consumers

on_both_registries! {
fn skopeo_and_umoci_read_the_oci_layout_from_the_mount(kind) {
    let reg = Registry::start_kind(kind);
    let c = reg.client();
    let fx = seed(&c, "shop/app");
    let m = Mount::start(&reg.url());
    let log = log_path(&m);
    let work = tempdir("regfs-ocitools-");
    let oci = m.join("shop/app/_oci");
    assert_eq!(
        fs::read(oci.join("oci-layout")).unwrap(),
        br#"{"imageLayoutVersion":"1.0.0"}"#
    );

    // umoci lists one name per tag.
    let out = run_logged(
        {
            let mut cmd = Command::new("umoci");
            cmd.args(["ls", "--layout"]).arg(&oci);
            cmd
        },
        log.clone(),
    );
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
    names.sort();
    assert_eq!(names, fx.tags.keys().cloned().collect::<Vec<_>>(), "umoci ls --layout");

    // skopeo copy --all of the index keeps every digest.
    let x = work.path().join("x");
    skopeo(
        &[
            "copy",
            "--all",
            &format!("oci:{}:multi", s(&oci)),
            &format!("oci:{}:multi", s(&x)),
        ],
        log.clone(),
    );
    let (index, digests) = verify_oci_layout(&x);
    assert_eq!(
        index_refs(&index)["multi"],
        fx.index.digest,
        "skopeo copy --all: index digest"
    );
    for d in [
        &fx.host_child.digest,
        &fx.other_child.digest,
        &fx.host_child.layers[1].digest,
    ] {
        assert!(digests.contains(d), "skopeo copy --all copied {d}");
    }
    // An OCI image keeps its digest.
    skopeo(
        &["copy", &format!("oci:{}:v1", s(&oci)), &format!("oci:{}:v1", s(&x))],
        log.clone(),
    );
    let (index, _) = verify_oci_layout(&x);
    assert_eq!(index_refs(&index)["v1"], fx.v1.digest, "skopeo copy oci:_oci:v1");
    // (A Docker schema 2 tag is in index.json with its own media type; skopeo
    // 1.9 resolves only OCI media types in a layout, so `oci:_oci:v2` is not
    // copied here: see docs/backups.md.)

    // umoci unpack checks every layer against the config's diff_ids.
    let bundle = work.path().join("bundle");
    run_logged(
        {
            let mut cmd = Command::new("umoci");
            cmd.args(["unpack", "--image"])
                .arg(format!("{}:v1", s(&oci)))
                .arg(&bundle);
            cmd
        },
        log.clone(),
    );
    assert_eq!(
        fs::read(bundle.join("rootfs/etc/os-release")).unwrap(),
        b"ID=regfs-test\nNAME=\"regfs test\"\n"
    );
    assert_eq!(
        fs::metadata(bundle.join("rootfs/app/data.bin")).unwrap().len(),
        2 << 20,
        "umoci unpack: the 2 MiB layer"
    );
}
}

// ---------------------------------------------------------------- issue 6: _export

fn tar_list(path: &Path, log: PathBuf) -> Vec<String> {
    let out = run_logged(
        {
            let mut cmd = Command::new("tar");
            cmd.arg("-tf").arg(path);
            cmd
        },
        log,
    );
    String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
}

/// The member list `_export/<tag>.tar` must have: directories, blobs sorted by
/// digest, then index.json, manifest.json (when there is a Docker image), oci-layout.
fn expected_members(digests: &BTreeSet<String>, docker: bool) -> Vec<String> {
    let mut v = vec!["blobs/".to_string(), "blobs/sha256/".to_string()];
    v.extend(
        digests
            .iter()
            .map(|d| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"))),
    );
    v.push("index.json".into());
    if docker {
        v.push("manifest.json".into());
    }
    v.push("oci-layout".into());
    v
}

fn image_digests(img: &ImageInfo) -> BTreeSet<String> {
    let mut set: BTreeSet<String> = img.layers.iter().map(|l| l.digest.clone()).collect();
    set.insert(img.config.digest.clone());
    set.insert(img.digest.clone());
    set
}

/// An artifact's manifest, config and layer digests.
fn artifact_digests(a: &RawManifest) -> BTreeSet<String> {
    let v: Value = serde_json::from_slice(&a.bytes).unwrap();
    let mut set: BTreeSet<String> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    set.insert(v["config"]["digest"].as_str().unwrap().to_string());
    set.insert(a.digest.clone());
    set
}

/// What `_export/<tag>.tar` holds for an image: the image and its referrers
/// (v1 has the SBOM artifact; v2 has none).
fn export_digests(fx: &Fixture, img: &ImageInfo) -> BTreeSet<String> {
    let mut set = image_digests(img);
    if img.digest == fx.v1.digest {
        set.extend(artifact_digests(&fx.artifact));
    }
    set
}

fn blob_path(d: &str) -> String {
    format!("blobs/sha256/{}", d.trim_start_matches("sha256:"))
}

on_both_registries! {
fn export_tar_of_an_image_loads_with_skopeo_docker_archive(kind) {
    let reg = Registry::start_kind(kind);
    let c = reg.client();
    let fx = seed(&c, "shop/app");
    let m = Mount::start(&reg.url());
    let log = log_path(&m);
    let work = tempdir("regfs-export-");
    let repo_dir = m.join("shop/app");

    let listed = list_dir(&repo_dir).unwrap();
    assert!(
        !listed.contains(&"_export".to_string()),
        "_export is not listed: {listed:?}"
    );
    let mut want: Vec<String> = fx.tags.keys().map(|t| format!("{t}.tar")).collect();
    want.sort();
    assert_eq!(
        list_dir(&repo_dir.join("_export")).unwrap(),
        want,
        "_export/ lists <tag>.tar"
    );

    for (tag, img) in [("v1", &fx.v1), ("v2", &fx.v2)] {
        let tar = repo_dir.join(format!("_export/{tag}.tar"));
        assert_eq!(
            tar_list(&tar, log.clone()),
            expected_members(&export_digests(&fx, img), true),
            "tar -tf {tag}.tar (with its referrers)"
        );
        let index: Value = serde_json::from_slice(&tar_member(&tar, "index.json")).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        let entries = index["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "{tag}.tar index.json: {index}");
        assert_eq!(entries[0]["digest"], img.digest.as_str());
        assert_eq!(entries[0]["mediaType"], img.media_type.as_str());
        assert_eq!(entries[0]["size"], img.manifest.len());
        assert_eq!(entries[0]["annotations"]["org.opencontainers.image.ref.name"], tag);
        let docker: Value = serde_json::from_slice(&tar_member(&tar, "manifest.json")).unwrap();
        assert_eq!(
            docker,
            json!([{
                "Config": blob_path(&img.config.digest),
                "RepoTags": [format!("{}/shop/app:{tag}", reg.host_port())],
                "Layers": img.layers.iter().map(|l| blob_path(&l.digest)).collect::<Vec<_>>(),
            }]),
            "{tag}.tar manifest.json"
        );
        assert_eq!(tar_member(&tar, &blob_path(&img.digest)), img.manifest);
        assert_eq!(tar_member(&tar, "oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#);

        // docker-archive → dir: the config as it is, layers as their diff_ids.
        let dir = work.path().join(format!("{tag}-dir"));
        skopeo(
            &[
                "copy",
                &format!("docker-archive:{}", s(&tar)),
                &format!("dir:{}", s(&dir)),
            ],
            log.clone(),
        );
        let copied: Value = serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(
            copied["config"]["digest"],
            img.config.digest.as_str(),
            "docker-archive:{tag}.tar config"
        );
        let config: Value = serde_json::from_slice(&img.config.bytes).unwrap();
        let copied_layers: Vec<&str> = copied["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap())
            .collect();
        let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap())
            .collect();
        assert_eq!(
            copied_layers, diff_ids,
            "docker-archive:{tag}.tar layers are the config's diff_ids"
        );
        for name in list_dir(&dir).unwrap() {
            if name.len() == 64 {
                let bytes = fs::read(dir.join(&name)).unwrap();
                assert_eq!(sha256_hex(&bytes), name, "{tag}-dir/{name}");
            }
        }
        // docker-archive → oci: works too (skopeo converts the manifest).
        let oci = work.path().join("from-docker-archive");
        skopeo(
            &[
                "copy",
                &format!("docker-archive:{}", s(&tar)),
                &format!("oci:{}:{tag}", s(&oci)),
            ],
            log.clone(),
        );
        let (index, _) = verify_oci_layout(&oci);
        assert!(index_refs(&index).contains_key(tag));
    }
    // v1's layer diff_ids are the ones the layers were made with.
    let cfg: Value = serde_json::from_slice(&fx.v1.config.bytes).unwrap();
    let ids: Vec<String> = fx.v1_layers.iter().map(|l| l.diff_id.clone()).collect();
    assert_eq!(cfg["rootfs"]["diff_ids"], json!(ids));

    // oci-archive of an image keeps its digest.
    let oci = work.path().join("from-oci-archive");
    skopeo(
        &[
            "copy",
            &format!("oci-archive:{}", s(&repo_dir.join("_export/v1.tar"))),
            &format!("oci:{}:v1", s(&oci)),
        ],
        log.clone(),
    );
    assert_eq!(index_refs(&verify_oci_layout(&oci).0)["v1"], fx.v1.digest);
}
}

#[test]
fn export_tar_of_an_index_has_every_platform_and_this_machines_docker_image() {
    let reg = Registry::start();
    let c = reg.client();
    let fx = seed(&c, "shop/app");
    let m = Mount::start(&reg.url());
    let log = log_path(&m);
    let work = tempdir("regfs-export-index-");
    let tar = m.join("shop/app/_export/multi.tar");

    let mut digests = image_digests(&fx.host_child);
    digests.extend(image_digests(&fx.other_child));
    digests.insert(fx.index.digest.clone());
    assert_eq!(
        tar_list(&tar, log.clone()),
        expected_members(&digests, true),
        "tar -tf multi.tar"
    );
    let docker: Value = serde_json::from_slice(&tar_member(&tar, "manifest.json")).unwrap();
    assert_eq!(
        docker,
        json!([{
            "Config": blob_path(&fx.host_child.config.digest),
            "RepoTags": [format!("{}/shop/app:multi", reg.host_port())],
            "Layers": fx.host_child.layers.iter().map(|l| blob_path(&l.digest)).collect::<Vec<_>>(),
        }]),
        "multi.tar manifest.json describes the linux/{} child",
        host_arch()
    );
    let index: Value = serde_json::from_slice(&tar_member(&tar, "index.json")).unwrap();
    assert_eq!(
        index_refs(&index),
        [("multi".to_string(), fx.index.digest.clone())].into()
    );

    // skopeo copy --all oci-archive: keeps the index and both children.
    let oci = work.path().join("all");
    skopeo(
        &[
            "copy",
            "--all",
            &format!("oci-archive:{}", s(&tar)),
            &format!("oci:{}:multi", s(&oci)),
        ],
        log.clone(),
    );
    let (index, copied) = verify_oci_layout(&oci);
    assert_eq!(
        index_refs(&index)["multi"],
        fx.index.digest,
        "oci-archive --all: index digest"
    );
    let copied: BTreeSet<String> = copied.into_iter().collect();
    assert_eq!(copied, digests, "oci-archive --all: every blob and manifest");

    // docker-archive: gives this machine's image.
    let dir = work.path().join("docker");
    skopeo(
        &[
            "copy",
            &format!("docker-archive:{}", s(&tar)),
            &format!("dir:{}", s(&dir)),
        ],
        log.clone(),
    );
    let copied: Value = serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(copied["config"]["digest"], fx.host_child.config.digest.as_str());

    // An artifact index (the referrers tag) has no image for this machine: no manifest.json.
    let art = m.join(format!("shop/app/_export/{}.tar", fx.referrers_tag));
    let mut digests: BTreeSet<String> = fx.tags.get(&fx.referrers_tag).into_iter().cloned().collect();
    digests.insert(fx.artifact.digest.clone());
    digests.insert(sha256_digest(b"{}"));
    let art_json: Value = serde_json::from_slice(&fx.artifact.bytes).unwrap();
    digests.insert(art_json["layers"][0]["digest"].as_str().unwrap().to_string());
    assert_eq!(
        tar_list(&art, log.clone()),
        expected_members(&digests, false),
        "tar -tf of the referrers tag"
    );
}

#[test]
fn export_tar_is_deterministic_sized_exactly_and_readable_at_any_offset() {
    let reg = Registry::start();
    let c = reg.client();
    let fx = seed(&c, "shop/app");
    let cache = tempdir("regfs-export-cache-");
    let m = Mount::builder(&reg.url()).cache_dir(cache.path()).start();
    let tar = m.join("shop/app/_export/v1.tar");
    let size = fs::metadata(&tar).unwrap().len();
    assert!(size > 2 << 20, "v1.tar holds a 2 MiB layer: {size}");
    assert_eq!(size % 512, 0, "a tar is a whole number of 512-byte blocks");

    // Cold: ranged reads at pseudo-random offsets (across headers, member
    // data and the end), before anything was read in full.
    let mut state = 0x5eed_u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 17
    };
    let f = fs::File::open(&tar).unwrap();
    let mut slices = Vec::new();
    for i in 0..40 {
        let off = match i {
            0 => 0,
            1 => size - 1024,
            2 => size - 1,
            _ => next() % size,
        };
        let len = [1usize, 511, 512, 4096, 70_000, 1 << 20][i % 6];
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            let n = f.read_at(&mut buf[got..], off + got as u64).unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        buf.truncate(got);
        assert_eq!(
            got as u64,
            len.min((size - off) as usize) as u64,
            "pread at {off} of {len}"
        );
        slices.push((off, buf));
    }
    let past = {
        let mut b = [0u8; 16];
        f.read_at(&mut b, size + 10).unwrap()
    };
    assert_eq!(past, 0, "read past the end");

    let full = fs::read(&tar).unwrap();
    assert_eq!(full.len() as u64, size, "stat size equals the bytes read");
    for (off, bytes) in &slices {
        let o = *off as usize;
        assert_bytes_eq(bytes, &full[o..o + bytes.len()], &format!("slice at {off}"));
    }
    let again = fs::read(&tar).unwrap();
    assert_bytes_eq(&again, &full, "second read of v1.tar");
    // The bytes are a valid tar holding the exact blobs.
    let work = tempdir("regfs-export-x-");
    run_ok(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(work.path()));
    for l in &fx.v1.layers {
        assert_eq!(
            sha256_digest(&fs::read(work.path().join(blob_path(&l.digest))).unwrap()),
            l.digest
        );
    }
    let multi = fs::read(m.join("shop/app/_export/multi.tar")).unwrap();
    drop(m);

    // Another mount, fresh cache: `tar -t` of the cold tar, then the same bytes as before.
    let m2 = Mount::start(&reg.url());
    let tar2 = m2.join("shop/app/_export/v1.tar");
    let listed = tar_list(&tar2, log_path(&m2));
    assert_eq!(listed.len(), 2 + export_digests(&fx, &fx.v1).len() + 3, "{listed:?}");
    assert_eq!(fs::metadata(&tar2).unwrap().len(), size, "size across mounts");
    assert_bytes_eq(&fs::read(&tar2).unwrap(), &full, "v1.tar across mounts");
    assert_bytes_eq(
        &fs::read(m2.join("shop/app/_export/multi.tar")).unwrap(),
        &multi,
        "multi.tar across mounts",
    );
    drop(m2);
    let m3 = Mount::builder(&reg.url()).cache_dir(cache.path()).start();
    assert_bytes_eq(
        &fs::read(m3.join("shop/app/_export/v1.tar")).unwrap(),
        &full,
        "v1.tar with a warm cache",
    );
}
