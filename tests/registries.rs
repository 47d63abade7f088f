//! Works with the registries people run: names that appear after mounting,
//! referrers and cosign signature tags through backups, deletes a registry
//! refuses, foreign layers, hosted-registry habits (tests/common/quirks.rs) and
//! pull-through caches for fleets.
//!
//! Tests marked with `on_both_registries!` run against Debian's
//! docker-registry (distribution 2.8) and ferro-oci-server (OCI 1.1).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::quirks::{ECR_PASSWORD, ECR_USER, RATE_LIMIT};
use common::*;
use reqwest::blocking::Response;
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};

/// Far below the default 60 s `--metadata-ttl`, far above the 1 s recheck.
const NAME_APPEARS_WITHIN: Duration = Duration::from_secs(5);
/// Watchdog for commands that must not hang (not a timing assertion).
const WATCHDOG: Duration = Duration::from_secs(120);

/// rsync under a watchdog, panicking with its output and the mount's log tail.
fn rsync_to(args: &[&str], m: &Mount) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let log = log_path(m);
    with_deadline(WATCHDOG, "rsync", move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        rsync(&a, || tail(&log, 40))
    })
}

fn get(c: &RegistryClient, path: &str) -> Response {
    c.send(Method::GET, path, HeaderMap::new(), None)
}

fn json_of(resp: Response, what: &str) -> Value {
    assert!(resp.status().is_success(), "{what}: HTTP {}", resp.status());
    serde_json::from_slice(&resp.bytes().unwrap()).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Digests listed in an index's `manifests`.
fn index_digests(index: &Value) -> BTreeSet<String> {
    index["manifests"]
        .as_array()
        .unwrap_or(&vec![])
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------------------
// Names that appear after mounting
// ---------------------------------------------------------------------------

on_both_registries! {
/// A repository, a namespace, a tag (and on distribution a blob-only
/// repository) pushed by someone else after the mount read the catalog are
/// reachable by name within seconds, not after the 60 s metadata TTL.
fn names_pushed_after_mounting_are_reachable_at_once(kind) {
    let reg = Registry::start_kind(kind);
    let c = reg.client();
    c.push_random_image("first", "v1", &[100]);
    let m = Mount::start(&reg.url());
    assert_eq!(ls(m.path()), vec!["first"]);

    // Looked up before they exist: ENOENT, which the mount must not keep.
    for name in ["later", "ns", "ns/deep", "blobonly", "first/_tags/v2"] {
        assert_eq!(lstat_errno(&m.join(name)), libc::ENOENT, "{name} before the push");
    }
    let later = c.push_random_image("later", "v1", &[200]);
    let deep = c.push_random_image("ns/deep", "v1", &[300]);
    let v2 = c.push_random_image("first", "v2", &[400]);
    // distribution lists a repository holding only blobs; ferro-oci-server's
    // blobs are global (no repository made by a blob push).
    let blob = random_bytes(500);
    let blob_digest = c.push_blob("blobonly", &blob);

    let appears = |rel: &str| {
        let p = m.join(rel);
        assert!(
            wait_until(NAME_APPEARS_WITHIN, || fs::symlink_metadata(&p).is_ok()),
            "{rel} not reachable within {NAME_APPEARS_WITHIN:?} of its push"
        );
    };
    appears("later/_tags/v1");
    assert_eq!(ls(&m.join("later/_tags")), vec!["v1"]);
    appears("ns");
    appears("ns/deep/_tags/v1");
    appears("first/_tags/v2");
    assert_file_eq(&m.join("later/_tags/v1/manifest.json"), &later.manifest);
    assert_file_eq(&m.join("ns/deep/_tags/v1/manifest.json"), &deep.manifest);
    assert_file_eq(&m.join("first/_tags/v2/manifest.json"), &v2.manifest);
    match kind {
        RegistryKind::Distribution => {
            appears("blobonly");
            assert_file_eq(&m.join(format!("blobonly/_blobs/{blob_digest}")), &blob);
        }
        RegistryKind::Ferro => assert_eq!(lstat_errno(&m.join("blobonly")), libc::ENOENT),
    }
}
}

// ---------------------------------------------------------------------------
// Referrers and signature tags
// ---------------------------------------------------------------------------

const COSIGN_SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const SPDX: &str = "application/spdx+json";

/// What the source repository holds: an image, two untagged referrers (a
/// signature and an SBOM, found only through the referrers API), an artifact
/// without `artifactType`, and a cosign-style signature under the digest tag
/// `sha256-<hex>.sig`.
struct Signed {
    image: ImageInfo,
    sig: RawManifest,
    sbom: RawManifest,
    plain: RawManifest,
    cosign: RawManifest,
}

impl Signed {
    /// The names `_tags/v1/referrers/` shows for this fixture.
    fn referrer_names(&self) -> BTreeMap<String, String> {
        [
            (
                format!("vnd.dev.cosign.artifact.sig.v1+json-{}", short_hex(&self.sig.digest)),
                &self.sig,
            ),
            (format!("spdx+json-{}", short_hex(&self.sbom.digest)), &self.sbom),
            (
                format!("vnd.example.config.v1+json-{}", short_hex(&self.plain.digest)),
                &self.plain,
            ),
            ("cosign-sig".to_string(), &self.cosign),
        ]
        .into_iter()
        .map(|(n, m)| (n, m.digest.clone()))
        .collect()
    }
    fn untagged(&self) -> [&RawManifest; 3] {
        [&self.sig, &self.sbom, &self.plain]
    }
}

fn seed_signed(c: &RegistryClient, repo: &str) -> Signed {
    let image = c.push_random_image(repo, "v1", &[3000]);
    let subject = image.descriptor();
    let payload = c.push_blob_as(
        repo,
        "application/vnd.dev.cosign.simplesigning.v1+json",
        br#"{"critical":{}}"#,
    );
    let sig = c.push_artifact(
        repo,
        Some(COSIGN_SIG),
        None,
        std::slice::from_ref(&payload),
        Some(subject.clone()),
    );
    let doc = c.push_blob_as(repo, SPDX, br#"{"spdxVersion":"SPDX-2.3","name":"signed"}"#);
    let sbom = c.push_artifact(repo, Some(SPDX), None, &[doc], Some(subject.clone()));
    let config = c.push_blob_as(repo, "application/vnd.example.config.v1+json", br#"{"kind":"plain"}"#);
    let plain = c.push_artifact(repo, None, Some(&config), &[], Some(subject));
    // cosign's own scheme: a manifest tagged sha256-<subject hex>.sig, no subject field.
    let sig_layer = c.push_blob_as(
        repo,
        "application/vnd.dev.cosign.simplesigning.v1+json",
        br#"{"cosign":1}"#,
    );
    let cosign_config = c.push_blob_as(
        repo,
        "application/vnd.oci.image.config.v1+json",
        br#"{"cosign":"config"}"#,
    );
    let cosign = c.push_manifest_json(
        repo,
        Some(&format!("sha256-{}.sig", image.hex())),
        OCI_MANIFEST,
        &json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": cosign_config.descriptor(),
            "layers": [descriptor_with(sig_layer.descriptor(), json!({"annotations": {"dev.cosignproject.cosign/signature": "MEUCIQ=="}}))],
        }),
    );
    Signed {
        image,
        sig,
        sbom,
        plain,
        cosign,
    }
}

fn assert_referrers_listed(m: &Mount, repo: &str, fx: &Signed, how: &str) {
    let dir = m.join(format!("{repo}/_tags/v1/referrers"));
    let got: BTreeMap<String, String> = ls(&dir)
        .into_iter()
        .map(|n| {
            let target = fs::read_link(dir.join(&n)).unwrap();
            let d = target.file_name().unwrap().to_string_lossy().into_owned();
            (n, d)
        })
        .collect();
    assert_eq!(got, fx.referrer_names(), "{how}: referrers of {repo}:v1");
    for r in fx.untagged() {
        assert_file_eq(
            &dir.join(format!("../../../_manifests/{}/manifest.json", r.digest)),
            &r.bytes,
        );
    }
}

/// Untagged referrers found through the API are listed in `_manifests/`,
/// their blobs in `_blobs/`, both in `_oci/blobs/` and in a tag's export.
#[test]
fn untagged_referrers_are_listed_in_manifests_oci_and_export() {
    let reg = Registry::start_kind(RegistryKind::Ferro);
    let c = reg.client();
    let fx = seed_signed(&c, "signed");
    let m = Mount::start(&reg.url());
    assert_referrers_listed(&m, "signed", &fx, "ferro source");
    let manifests: BTreeSet<String> = ls(&m.join("signed/_manifests")).into_iter().collect();
    let oci: BTreeSet<String> = ls(&m.join("signed/_oci/blobs/sha256")).into_iter().collect();
    for r in fx.untagged() {
        assert!(
            manifests.contains(&r.digest),
            "_manifests/ lacks {}: {manifests:?}",
            r.digest
        );
        assert!(oci.contains(r.hex()), "_oci/blobs/sha256 lacks {}", r.digest);
    }
    assert!(manifests.contains(&fx.cosign.digest));
    // The SBOM document is a blob of the repository now.
    let sbom: Value = serde_json::from_slice(&fx.sbom.bytes).unwrap();
    let doc = sbom["layers"][0]["digest"].as_str().unwrap().to_string();
    assert!(
        ls(&m.join("signed/_blobs")).contains(&doc),
        "_blobs/ lacks the SBOM document"
    );

    // The export of v1 carries its referrers' manifests and blobs.
    let work = tempfile::tempdir().unwrap();
    let tar = m.join("signed/_export/v1.tar");
    let out = Command::new("tar").arg("-tf").arg(&tar).output().expect("tar -tf");
    assert!(
        out.status.success(),
        "tar -tf: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let members = String::from_utf8_lossy(&out.stdout).into_owned();
    for r in fx.untagged() {
        assert!(members.contains(&format!("blobs/sha256/{}", r.hex())), "{members}");
    }
    assert!(
        members.contains(&format!("blobs/sha256/{}", doc.trim_start_matches("sha256:"))),
        "{members}"
    );
    drop(work);
}

on_both_registries! {
/// ferro (referrers API) → rsync backup → restore into `kind`. Into ferro the
/// referrers are found through the API again; into distribution (no API) the
/// restore writes the tag-schema index `sha256-<hex>` listing them. Either way
/// a fresh mount lists the same referrers, and the cosign tag comes back.
fn backup_and_restore_carry_referrers_and_signature_tags(kind) {
    let src = Registry::start_kind(RegistryKind::Ferro);
    let fx = seed_signed(&src.client(), "signed");
    let work = tempfile::tempdir().unwrap();
    let bk = work.path().join("signed");
    {
        let m = Mount::start(&src.url());
        rsync_to(&["-a", &slash(&m.join("signed")), &slash(&bk)], &m);
    }
    for r in fx.untagged() {
        assert_file_eq(&bk.join(format!("_manifests/{}/manifest.json", r.digest)), &r.bytes);
    }

    let dest = Registry::start_kind(kind);
    let c = dest.client();
    {
        let m = Mount::start(&dest.url());
        fs::create_dir_all(m.join("signed")).unwrap();
        rsync_to(&["-a", &slash(&bk), &slash(&m.join("signed"))], &m);
        assert!(
            wait_until(Duration::from_secs(30), || c.manifest_status("signed", "v1") == 200),
            "v1 restored"
        );
    }
    // What the destination registry itself says.
    for r in fx.untagged().iter().chain([&&fx.cosign]) {
        let (bytes, _, _) = c.get_manifest("signed", &r.digest);
        assert_bytes_eq(&bytes, &r.bytes, &format!("restored {}", r.digest));
    }
    let cosign_tag = format!("sha256-{}.sig", fx.image.hex());
    assert!(c.list_tags("signed").contains(&cosign_tag), "{:?}", c.list_tags("signed"));
    let want: BTreeSet<String> = fx.untagged().iter().map(|r| r.digest.clone()).collect();
    let listed = match kind {
        RegistryKind::Ferro => json_of(
            get(&c, &format!("/v2/signed/referrers/{}", fx.image.digest)),
            "referrers API",
        ),
        RegistryKind::Distribution => {
            let (bytes, _, _) = c.get_manifest("signed", &format!("sha256-{}", fx.image.hex()));
            serde_json::from_slice(&bytes).unwrap()
        }
    };
    assert_eq!(index_digests(&listed), want, "referrers of v1 in the restored registry: {listed}");
    let m = Mount::start(&dest.url());
    assert_referrers_listed(&m, "signed", &fx, "restored");
}
}

// ---------------------------------------------------------------------------
// Deletes a registry refuses
// ---------------------------------------------------------------------------

/// ferro-oci-server answers a tag DELETE with 405 UNSUPPORTED: `rm` of a tag
/// is ENOTSUP (with --allow-delete), and a manifest delete by digest works
/// (ferro needs no switch for it; distribution needs `delete.enabled`).
#[test]
fn ferro_tag_delete_is_enotsup_and_manifest_delete_works() {
    let reg = Registry::start_kind(RegistryKind::Ferro);
    let c = reg.client();
    let img = c.push_random_image("app", "v1", &[100]);
    c.tag_manifest("app", &img.digest, "keep");
    let m = Mount::builder(&reg.url()).arg("--allow-delete").start();
    let e = fs::remove_file(m.join("app/_tags/v1")).unwrap_err();
    assert_eq!(errno_of(&e), libc::ENOTSUP, "{e}");
    assert_eq!(c.manifest_status("app", "v1"), 200, "the tag is still there");
    assert!(m.log().contains("cannot delete tags"), "log line");
    fs::remove_dir_all(m.join(format!("app/_manifests/{}", img.digest))).expect("rm -r _manifests/<digest>");
    assert_eq!(c.manifest_status("app", &img.digest), 404);
}

// ---------------------------------------------------------------------------
// Fleets: many mounts through a pull-through cache
// ---------------------------------------------------------------------------

const MIB: usize = 1024 * 1024;

/// GETs of `path` the origin answered with content (200/206).
fn origin_gets(proxy: &FaultProxy, path: &str) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|r| {
            r.method == "GET" && r.target.split('?').next() == Some(path) && (r.status == 200 || r.status == 206)
        })
        .count()
}

/// Debian's docker-registry in proxy mode in front of an origin registry
/// (counted by a FaultProxy). The first mount's read of a blob costs the
/// origin a few GETs (distribution 2.8 streams one to the client per request
/// and fetches another to store); once the cache holds it, two more mounts read
/// exact bytes without any origin blob or by-digest manifest GET. Uploads and
/// tag writes fail with ENOTSUP at close (405 UNSUPPORTED), logged.
#[test]
fn fleet_of_mounts_through_a_pull_through_cache_fetches_each_blob_once() {
    let origin = Registry::start();
    let img = origin.client().push_random_image("team/app", "v1", &[3 * MIB, 20_000]);
    let counter = FaultProxy::start(&origin.host_port());
    let cache = Registry::start_with(RegistryOptions::pull_through(&counter.url()));
    let blobs: Vec<&BlobInfo> = img.layers.iter().chain([&img.config]).collect();

    // A cache's catalog lists only what it has cached so far: name the
    // repository with --repo, as for a registry without a catalog.
    let mount = || Mount::builder(&cache.url()).args(["--repo", "team/app"]).start();
    let read_all = |m: &Mount| {
        assert_file_eq(&m.join("team/app/_tags/v1/manifest.json"), &img.manifest);
        assert_file_eq(&m.join("team/app/_tags/v1/config.json"), &img.config.bytes);
        for l in &img.layers {
            let p = m.join(format!("team/app/_blobs/{}", l.digest));
            let bytes = with_deadline(WATCHDOG, "read through the cache", move || fs::read(p).unwrap());
            assert_bytes_eq(&bytes, &l.bytes, &l.digest);
        }
    };
    let first = mount();
    read_all(&first);
    // The cache stores what it fetched in the background; wait for it.
    let stored = |d: &str| {
        let hex = d.trim_start_matches("sha256:");
        cache
            .storage_dir()
            .join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
            .is_file()
    };
    assert!(
        wait_until(Duration::from_secs(30), || blobs.iter().all(|b| stored(&b.digest))),
        "the cache stored every blob"
    );
    let blob_gets = |b: &BlobInfo| origin_gets(&counter, &format!("/v2/team/app/blobs/{}", b.digest));
    let after_first: Vec<usize> = blobs.iter().map(|b| blob_gets(b)).collect();
    // Each request the cache cannot answer from its storage yet goes to the
    // origin (whole blob, Range not forwarded) besides its own store fetch:
    // a few GETs for the first mount, measured 2-3 per blob here.
    assert!(
        after_first.iter().all(|&n| n >= 1),
        "origin GETs per blob: {after_first:?}"
    );
    eprintln!("origin blob GETs after the first mount: {after_first:?}");
    let manifest_gets = origin_gets(&counter, &format!("/v2/team/app/manifests/{}", img.digest));

    let more: Vec<Mount> = (0..2).map(|_| mount()).collect();
    for m in &more {
        read_all(m);
    }
    let after_all: Vec<usize> = blobs.iter().map(|b| blob_gets(b)).collect();
    assert_eq!(after_all, after_first, "two more mounts cost the origin no blob GET");
    assert_eq!(
        origin_gets(&counter, &format!("/v2/team/app/manifests/{}", img.digest)),
        manifest_gets,
        "nor a manifest GET by digest"
    );

    // Pushes: the cache refuses them (405 UNSUPPORTED); the writer gets
    // ENOTSUP from close().
    let blob = b"not for a cache";
    assert_eq!(
        write_and_close(&first.join("team/app/_uploads/new.bin"), blob),
        Err(libc::ENOTSUP)
    );
    assert_eq!(
        origin
            .client()
            .get_status(&format!("/v2/team/app/blobs/{}", sha256_digest(blob))),
        Ok(404)
    );
    assert_eq!(
        write_and_close(&first.join("team/app/_tags/v2"), &img.manifest),
        Err(libc::ENOTSUP)
    );
    assert_eq!(cache.client().manifest_status("team/app", "v2"), 404);
    assert!(first.log().contains("405"), "the registry's answer is logged");
    assert!(
        !counter
            .requests()
            .iter()
            .any(|r| r.method != "GET" && r.method != "HEAD"),
        "nothing written to the origin"
    );
}

// ---------------------------------------------------------------------------
// Foreign / non-distributable layers
// ---------------------------------------------------------------------------

const DOCKER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
const OCI_NONDISTRIBUTABLE: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";

/// A Windows-style image (Docker schema 2, a foreign base layer with `urls`)
/// and an OCI image with a non-distributable layer; neither layer is in the
/// registry. They are never requested from it: not listed in `_blobs/`,
/// `_oci/` or exports, so rsync and tar succeed; `layers/00` still points at
/// them, stat shows the descriptor's size, `user.regfs.urls` the URLs, a read
/// is EREMOTE, and the log says why.
#[test]
fn foreign_layers_are_never_fetched_and_never_fail_a_backup() {
    let reg = Registry::start_with(RegistryOptions {
        allow_foreign_urls: true,
        ..Default::default()
    });
    let c = reg.client();
    let repo = "win/app";
    let urls = [
        "https://mcr.example.invalid/base.tar.gz",
        "https://mirror.example.invalid/base.tar.gz",
    ];
    let foreign = random_bytes(4096);
    let foreign_digest = sha256_digest(&foreign);
    let nondist = random_bytes(2048);
    let nondist_digest = sha256_digest(&nondist);
    let own = c.push_blob(repo, &random_bytes(1000));
    let config = c.push_blob(repo, &image_config("amd64", "win"));
    let config_size = image_config("amd64", "win").len();
    let docker = c.push_manifest_json(
        repo,
        Some("docker"),
        DOCKER_MANIFEST,
        &json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config, "size": config_size},
            "layers": [
                {"mediaType": DOCKER_FOREIGN, "digest": foreign_digest, "size": foreign.len(), "urls": urls},
                {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": own, "size": 1000},
            ],
        }),
    );
    let oci = c.push_manifest_json(
        repo,
        Some("oci"),
        OCI_MANIFEST,
        &json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
            "layers": [
                {"mediaType": OCI_NONDISTRIBUTABLE, "digest": nondist_digest, "size": nondist.len(), "urls": [urls[0]]},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": own, "size": 1000},
            ],
        }),
    );
    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::start(&proxy.url());
    let app = m.join(repo);

    let blobs = ls(&app.join("_blobs"));
    assert_eq!(
        blobs,
        vec![config.clone(), own.clone()]
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    let layer = app.join("_tags/docker/layers/00");
    assert_eq!(link_of(&layer), format!("../../../_blobs/{foreign_digest}"));
    assert_eq!(
        fs::metadata(&layer).unwrap().len(),
        foreign.len() as u64,
        "size from the descriptor"
    );
    assert_eq!(xattr_str(&layer, "user.regfs.urls"), urls.join("\n"));
    assert_eq!(xattr_str(&layer, "user.regfs.mediatype"), DOCKER_FOREIGN);
    let e = fs::read(&layer).unwrap_err();
    assert_eq!(errno_of(&e), libc::EREMOTE, "{e}");
    let nd = app.join("_tags/oci/layers/00");
    assert_eq!(xattr_str(&nd, "user.regfs.urls"), urls[0]);
    assert_eq!(errno_of(&fs::read(&nd).unwrap_err()), libc::EREMOTE);
    assert!(m.log().contains("foreign layer"), "a log line says why");

    // rsync of the repository and the OCI layout, and the exports, succeed.
    let work = tempfile::tempdir().unwrap();
    rsync_to(&["-a", &slash(&app), &slash(&work.path().join("bk"))], &m);
    assert_file_eq(
        &work
            .path()
            .join(format!("bk/_manifests/{}/manifest.json", docker.digest)),
        &docker.bytes,
    );
    assert_eq!(
        link_of(&work.path().join(format!("bk/_manifests/{}/layers/00", docker.digest))),
        format!("../../../_blobs/{foreign_digest}")
    );
    rsync_to(&["-a", &slash(&app.join("_oci")), &slash(&work.path().join("oci"))], &m);
    let oci_blobs = ls(&work.path().join("oci/blobs/sha256"));
    assert!(oci_blobs.contains(&oci.hex().to_string()));
    for d in [&foreign_digest, &nondist_digest] {
        assert!(
            !oci_blobs.contains(&d.trim_start_matches("sha256:").to_string()),
            "{d} in _oci/"
        );
    }
    for tag in ["docker", "oci"] {
        let out = Command::new("tar")
            .arg("-tf")
            .arg(app.join(format!("_export/{tag}.tar")))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tar -tf {tag}.tar: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            !listing.contains(foreign_digest.trim_start_matches("sha256:")),
            "{listing}"
        );
        assert!(
            !listing.contains(nondist_digest.trim_start_matches("sha256:")),
            "{listing}"
        );
    }
    // Never asked of the registry.
    let asked: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| {
            r.target.contains(foreign_digest.trim_start_matches("sha256:"))
                || r.target.contains(nondist_digest.trim_start_matches("sha256:"))
        })
        .collect();
    assert!(asked.is_empty(), "foreign layers requested: {asked:#?}");
}

// ---------------------------------------------------------------------------
// Hosted-registry habits (tests/common/quirks.rs)
// ---------------------------------------------------------------------------

/// Manifest GETs by tag (what Docker Hub counts against the pull limit when
/// a HEAD would have done).
fn manifest_gets_by_tag(p: &QuirkProxy) -> Vec<String> {
    p.requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.target.contains("/manifests/") && !r.target.contains("/manifests/sha256:"))
        .map(|r| r.target)
        .collect()
}

/// Docker Hub: token realm on another host with `service=registry.docker.io`
/// and `library/` scopes, `_catalog` refused (the mount lists `--repo`),
/// `RateLimit-*` shown in `.regfs/stats`, and tags resolved by HEAD so that
/// only manifest bodies actually read use up the limit.
#[test]
fn docker_hub_token_realm_catalog_denied_and_rate_limit_in_stats() {
    let reg = Registry::start();
    let c = reg.client();
    let a = c.push_random_image("library/alpine", "3.19", &[1000]);
    let b = c.push_random_image("library/alpine", "3.20", &[1000]);
    let hub = QuirkProxy::start(&reg.host_port(), Quirk::DockerHub);
    let m = Mount::builder(&hub.url()).args(["--repo", "library/alpine"]).start();

    assert_eq!(ls(m.path()), vec!["library"]);
    assert_eq!(ls(&m.join("library/alpine/_tags")), vec!["3.19", "3.20"]);
    for (tag, img) in [("3.19", &a), ("3.20", &b)] {
        assert_eq!(
            fs::read_link(m.join(format!("library/alpine/_tags/{tag}"))).unwrap(),
            Path::new(&format!("../_manifests/{}", img.digest))
        );
    }
    assert_eq!(
        manifest_gets_by_tag(&hub),
        Vec::<String>::new(),
        "tags resolved by HEAD"
    );
    assert_file_eq(&m.join("library/alpine/_tags/3.19/manifest.json"), &a.manifest);

    let tokens: Vec<_> = hub
        .side_requests()
        .into_iter()
        .filter(|r| r.target.starts_with("/token"))
        .collect();
    assert!(!tokens.is_empty());
    for t in &tokens {
        assert!(t.target.contains("service=registry.docker.io"), "{t:?}");
    }
    assert!(
        tokens
            .iter()
            .any(|t| t.target.contains("repository%3Alibrary%2Falpine%3Apull")
                || t.target.contains("repository:library/alpine:pull")),
        "a token for library/alpine: {tokens:#?}"
    );
    assert!(hub
        .requests()
        .iter()
        .any(|r| r.target.starts_with("/v2/_catalog") && r.status == 401));

    let stats = m.stats();
    assert_eq!(stats.get("ratelimit_limit"), Some(&RATE_LIMIT), "{stats:?}");
    assert_eq!(stats.get("ratelimit_window_seconds"), Some(&21600), "{stats:?}");
    assert_eq!(
        stats.get("ratelimit_remaining"),
        Some(&hub.rate_remaining()),
        "{stats:?}"
    );
    assert_eq!(
        hub.rate_remaining(),
        RATE_LIMIT - 1,
        "one manifest body read, one pull counted"
    );
}

/// GHCR: public images still need an anonymous Bearer token, and an index is
/// only served to an `Accept` that lists index types.
#[test]
fn ghcr_anonymous_token_and_index_accept() {
    let reg = Registry::start();
    let c = reg.client();
    let amd = c.push_random_image("org/tool", "amd64", &[500]);
    let arm = c.push_random_image("org/tool", "arm64", &[500]);
    let index = c.push_index(
        "org/tool",
        "multi",
        IndexKind::Oci,
        &[
            (&amd, Platform::new("linux", "amd64", None)),
            (&arm, Platform::new("linux", "arm64", Some("v8"))),
        ],
    );
    let ghcr = QuirkProxy::start(&reg.host_port(), Quirk::Ghcr);
    let m = Mount::start(&ghcr.url());
    assert_file_eq(&m.join("org/tool/_tags/multi/manifest.json"), &index.manifest);
    assert_eq!(
        ls(&m.join("org/tool/_tags/multi/manifests")),
        vec!["linux-amd64", "linux-arm64-v8"]
    );
    assert_file_eq(
        &m.join("org/tool/_tags/multi/manifests/linux-arm64-v8/manifest.json"),
        &arm.manifest,
    );
    let tokens: Vec<_> = ghcr
        .side_requests()
        .into_iter()
        .filter(|r| r.target.starts_with("/token"))
        .collect();
    assert!(!tokens.is_empty(), "anonymous token fetched");
    assert!(
        tokens.iter().all(|t| t.authorization.is_none()),
        "anonymous: no credentials sent"
    );
    assert!(
        !ghcr
            .requests()
            .iter()
            .any(|r| r.status == 404 && r.target.contains("/manifests/")),
        "no manifest refused for its Accept: {:#?}",
        ghcr.requests()
    );
}

/// ECR: a `Basic` challenge that carries a `service`; credentials are sent Basic.
#[test]
fn ecr_basic_challenge_with_service() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("team/svc", "prod", &[700]);
    let ecr = QuirkProxy::start(&reg.host_port(), Quirk::Ecr);
    let m = Mount::builder(&ecr.url())
        .args(["--username", ECR_USER, "--repo", "team/svc"])
        .env("REGFS_PASSWORD", ECR_PASSWORD)
        .start();
    assert_file_eq(&m.join("team/svc/_tags/prod/manifest.json"), &img.manifest);
    assert_file_eq(
        &m.join(format!("team/svc/_blobs/{}", img.layers[0].digest)),
        &img.layers[0].bytes,
    );
    assert!(ecr
        .requests()
        .iter()
        .any(|r| r.authorization.as_deref().is_some_and(|a| a.starts_with("Basic "))));
    assert!(!m.log().contains(ECR_PASSWORD));
}

/// Quay: tag pages of 2 with a relative `Link` holding an opaque page token.
#[test]
fn quay_opaque_page_tokens_in_relative_links() {
    let reg = Registry::start();
    let c = reg.client();
    let img = c.push_random_image("quay/app", "t0", &[100]);
    let tags: Vec<String> = (0..7).map(|i| format!("t{i}")).collect();
    for t in &tags[1..] {
        c.tag_manifest("quay/app", &img.digest, t);
    }
    let quay = QuirkProxy::start(&reg.host_port(), Quirk::Quay);
    let m = Mount::start(&quay.url());
    assert_eq!(ls(&m.join("quay/app/_tags")), tags);
    let pages: Vec<_> = quay
        .requests()
        .into_iter()
        .filter(|r| r.target.contains("/tags/list"))
        .collect();
    assert!(
        pages.iter().filter(|r| r.target.contains("next_page=gAAAAAB")).count() >= 3,
        "{pages:#?}"
    );
}

/// A DELETE answered 405 without an error body (Quay, Harbor, caches) is ENOTSUP.
#[test]
fn delete_answered_405_is_enotsup() {
    let reg = Registry::start_with(RegistryOptions::default().with_delete());
    let img = reg.client().push_random_image("app", "v1", &[100]);
    let p = QuirkProxy::start(&reg.host_port(), Quirk::Delete405);
    let m = Mount::builder(&p.url()).arg("--allow-delete").start();
    let e = fs::remove_dir_all(m.join(format!("app/_manifests/{}", img.digest))).unwrap_err();
    assert_eq!(errno_of(&e), libc::ENOTSUP, "{e}");
    assert!(p.requests().iter().any(|r| r.method == "DELETE" && r.status == 405));
    assert_eq!(reg.client().manifest_status("app", &img.digest), 200, "nothing deleted");
}

/// Blob GETs redirected to another host (object store / CDN): the bytes are
/// exact, `Range` reaches the CDN, and the registry token is not sent there.
#[test]
fn blob_redirect_to_another_host_keeps_range_and_drops_authorization() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("cdn/app", "v1", &[5 * MIB]);
    let p = QuirkProxy::start(&reg.host_port(), Quirk::RedirectBlobs);
    let m = Mount::start(&p.url());
    let layer = &img.layers[0];
    let path = m.join(format!("cdn/app/_blobs/{}", layer.digest));
    let mut f = fs::File::open(&path).unwrap();
    let tail = read_exact_at(&mut f, 4 * MIB as u64 + 12_345, 10_000).unwrap();
    assert_bytes_eq(&tail, &layer.bytes[4 * MIB + 12_345..4 * MIB + 22_345], "ranged read");
    assert_file_eq(&path, &layer.bytes);
    let cdn: Vec<_> = p
        .side_requests()
        .into_iter()
        .filter(|r| r.target.starts_with("/cdn/"))
        .collect();
    assert!(!cdn.is_empty(), "blob served by the CDN");
    assert!(
        cdn.iter().all(|r| r.authorization.is_none()),
        "Authorization sent to the CDN: {cdn:#?}"
    );
    assert!(
        cdn.iter().any(|r| r.range.is_some()),
        "Range kept across the redirect: {cdn:#?}"
    );
    assert!(p
        .requests()
        .iter()
        .any(|r| r.status == 307 && r.authorization.is_some()));
}

/// The OCI-layout route: ferro's `_oci/` (which holds the untagged referrers)
/// rsynced out and into distribution's `_oci/`; the referrers are pushed by
/// digest and listed in the `sha256-<hex>` tag-schema index there.
#[test]
fn oci_layout_restore_into_distribution_keeps_referrers_findable() {
    let src = Registry::start_kind(RegistryKind::Ferro);
    let fx = seed_signed(&src.client(), "signed");
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    {
        let m = Mount::start(&src.url());
        rsync_to(&["-a", &slash(&m.join("signed/_oci")), &slash(&layout)], &m);
    }
    for r in fx.untagged() {
        assert_file_eq(&layout.join(format!("blobs/sha256/{}", r.hex())), &r.bytes);
    }
    let dest = Registry::start();
    let c = dest.client();
    {
        let m = Mount::start(&dest.url());
        fs::create_dir_all(m.join("signed/_oci")).unwrap();
        rsync_to(&["-a", &slash(&layout), &slash(&m.join("signed/_oci"))], &m);
        assert!(
            wait_until(Duration::from_secs(30), || c.manifest_status("signed", "v1") == 200),
            "v1 restored"
        );
    }
    let (bytes, _, _) = c.get_manifest("signed", &format!("sha256-{}", fx.image.hex()));
    let index: Value = serde_json::from_slice(&bytes).unwrap();
    let want: BTreeSet<String> = fx.untagged().iter().map(|r| r.digest.clone()).collect();
    assert_eq!(index_digests(&index), want, "{index}");
    let m = Mount::start(&dest.url());
    assert_referrers_listed(&m, "signed", &fx, "restored from an OCI layout");
}
