//! Manifest trees (issue 3): exploded manifest directories (`config.json`,
//! `layers/NN`, `manifests/<platform>`, `subject`, `referrers/<name>`), the
//! naming rules for index children and referrers, odd trees that must never
//! break a directory, `.regfs/` and the `user.regfs.*` extended attributes.
//!
//! Every fixture is pushed over the HTTP API of a real `docker-registry`
//! (distribution 2.8) — except content that distribution refuses to accept
//! over the API, which is written into its storage (see
//! `Registry::inject_manifest`). Assertions are on names, link targets and
//! exact bytes, as `ls`, `readlink` and `cat` see them.
//!
//! Contract: README.md, "The tree" (the tree and its rules); naming rules:
//! docs/debugging.md.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use common::*;

const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const BUILDKIT_CACHE_CONFIG: &str = "application/vnd.buildkit.cacheconfig.v0";
const COSIGN_SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const SPDX: &str = "application/spdx+json";

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// An OCI image with a unique config and `layers` random layers, pushed by digest.
fn image(c: &RegistryClient, repo: &str, arch: &str, layers: usize) -> ImageInfo {
    let layers = (0..layers).map(|i| random_bytes(100 + 37 * i)).collect();
    c.push_image(repo, None, OCI_MANIFEST, image_config(arch, &random_hex(8)), layers)
}

/// The image's descriptor with `platform` set to `platform` (as JSON).
fn with_platform(img: &ImageInfo, platform: Value) -> Value {
    descriptor_with(img.descriptor(), json!({ "platform": platform }))
}

fn linux(arch: &str, variant: Option<&str>) -> Value {
    Platform::new("linux", arch, variant).to_json()
}

/// `manifests/<name>` → `../../sha256:<hex>` for every expected child; checks
/// the listing is exactly these names and every link target.
fn assert_children(dir: &Path, expected: &BTreeMap<String, String>) {
    let want: Vec<String> = expected.keys().cloned().collect();
    assert_eq!(ls_all(dir), want, "names in {}", dir.display());
    for (name, target) in expected {
        assert_eq!(link_of(&dir.join(name)), *target, "readlink {}/{name}", dir.display());
    }
}

fn assert_manifest_xattrs(path: &Path, digest: &str, media_type: &str, size: usize) {
    assert_eq!(xattr_str(path, "user.regfs.digest"), digest, "{}", path.display());
    assert_eq!(
        xattr_str(path, "user.regfs.mediatype"),
        media_type,
        "{}",
        path.display()
    );
    assert_eq!(
        xattr_str(path, "user.regfs.size"),
        size.to_string(),
        "{}",
        path.display()
    );
    let names = list_xattrs(path).unwrap();
    for n in ["user.regfs.digest", "user.regfs.mediatype", "user.regfs.size"] {
        assert!(names.iter().any(|x| x == n), "listxattr {}: {names:?}", path.display());
    }
}

fn errno_of_metadata(p: &Path) -> i32 {
    match fs::metadata(p) {
        Ok(_) => panic!("stat -L {} succeeded, expected an error", p.display()),
        Err(e) => errno_of(&e),
    }
}

on_both_registries! {
fn oci_index_children_are_named_by_platform_with_attestations_duplicates_and_bare_digests(kind) {
    let reg = Registry::start_kind(kind);
    let c = reg.client();
    let repo = "multi/arch";
    let amd64 = image(&c, repo, "amd64", 2);
    let arm64 = image(&c, repo, "arm64", 3);
    let armv7 = image(&c, repo, "arm", 1);
    let amd64_b = image(&c, repo, "amd64", 1);
    let amd64_c = image(&c, repo, "amd64", 1);
    let windows = image(&c, repo, "amd64", 1);
    let slashed = image(&c, repo, "arm64", 1);
    let bare = image(&c, repo, "amd64", 1);
    let unknown = image(&c, repo, "amd64", 1);
    let attestation = image(&c, repo, "unknown", 1);
    let orphan_attestation = image(&c, repo, "unknown", 1);
    let absent = sha256_digest(b"a manifest that is not in this index");
    let attests = |img: &ImageInfo, of: &str| {
        descriptor_with(
            img.descriptor(),
            json!({
                "platform": {"os": "unknown", "architecture": "unknown"},
                "annotations": {
                    "vnd.docker.reference.type": "attestation-manifest",
                    "vnd.docker.reference.digest": of,
                },
            }),
        )
    };
    let index = c.push_index_of(
        repo,
        Some("latest"),
        vec![
            with_platform(&amd64, linux("amd64", None)),
            with_platform(&arm64, linux("arm64", Some("v8"))),
            with_platform(&armv7, linux("arm", Some("v7"))),
            with_platform(&amd64_b, linux("amd64", None)),
            attests(&attestation, &arm64.digest),
            with_platform(
                &windows,
                json!({"os": "windows", "architecture": "amd64", "os.version": "10.0.17763.1"}),
            ),
            with_platform(&slashed, linux("arm64", Some("v8/custom"))),
            bare.descriptor(),
            with_platform(&unknown, json!({"os": "unknown", "architecture": "unknown"})),
            with_platform(&amd64_c, linux("amd64", None)),
            attests(&orphan_attestation, &absent),
            bare.descriptor(),
        ],
        true,
    );
    let m = Mount::start(&reg.url());

    let tag = m.join("multi/arch/_tags/latest");
    assert_eq!(
        link_of(&tag),
        format!("../_manifests/{}", index.digest),
        "readlink _tags/latest"
    );
    assert_eq!(ls_all(&tag), strings(&["manifest.json", "manifests", "referrers"]));
    assert_file_eq(&tag.join("manifest.json"), &index.bytes);

    let to = |img: &ImageInfo| format!("../../{}", img.digest);
    let expected: BTreeMap<String, String> = [
        ("linux-amd64".to_string(), to(&amd64)),
        ("linux-arm64-v8".into(), to(&arm64)),
        ("linux-arm-v7".into(), to(&armv7)),
        ("linux-amd64~2".into(), to(&amd64_b)),
        ("linux-amd64~3".into(), to(&amd64_c)),
        ("attestation-linux-arm64-v8".into(), to(&attestation)),
        (
            format!("attestation-sha256-{}", short_hex(&absent)),
            to(&orphan_attestation),
        ),
        ("windows-amd64-10.0.17763.1".into(), to(&windows)),
        ("linux-arm64-v8_custom".into(), to(&slashed)),
        (bare.digest.clone(), to(&bare)),
        (format!("{}~2", bare.digest), to(&bare)),
        (unknown.digest.clone(), to(&unknown)),
    ]
    .into_iter()
    .collect();
    // Through the tag and through _manifests: the same directory.
    assert_children(&tag.join("manifests"), &expected);
    assert_children(
        &m.join(format!("multi/arch/_manifests/{}/manifests", index.digest)),
        &expected,
    );

    // Every child link leads to its manifest's exact bytes.
    let by_digest: BTreeMap<&str, &ImageInfo> = [
        &amd64,
        &arm64,
        &armv7,
        &amd64_b,
        &amd64_c,
        &windows,
        &slashed,
        &bare,
        &unknown,
        &attestation,
        &orphan_attestation,
    ]
    .into_iter()
    .map(|i| (i.digest.as_str(), i))
    .collect();
    for (name, target) in &expected {
        let img = by_digest[target.trim_start_matches("../../")];
        assert_file_eq(&tag.join(format!("manifests/{name}/manifest.json")), &img.manifest);
    }

    // "What does this tag contain on arm64?"
    let arm = tag.join("manifests/linux-arm64-v8");
    assert_eq!(
        ls_all(&arm),
        strings(&["config.json", "layers", "manifest.json", "referrers"])
    );
    assert_eq!(
        link_of(&arm.join("config.json")),
        format!("../../_blobs/{}", arm64.config.digest)
    );
    assert_file_eq(&arm.join("config.json"), &arm64.config.bytes);
    assert_eq!(ls_all(&arm.join("layers")), strings(&["00", "01", "02"]));
    for (i, layer) in arm64.layers.iter().enumerate() {
        let l = arm.join(format!("layers/{i:02}"));
        assert_eq!(link_of(&l), format!("../../../_blobs/{}", layer.digest));
        // `ls -lL`: the size through the link, before any read.
        assert_eq!(fs::metadata(&l).unwrap().len(), layer.size(), "{}", l.display());
        assert_file_eq(&l, &layer.bytes);
    }

    // Extended attributes: the index (directory and manifest.json), a child
    // manifest, and a blob (its media type from the descriptor listed above).
    assert_manifest_xattrs(&tag, &index.digest, OCI_INDEX, index.bytes.len());
    assert_manifest_xattrs(&tag.join("manifest.json"), &index.digest, OCI_INDEX, index.bytes.len());
    assert_manifest_xattrs(
        &arm.join("manifest.json"),
        &arm64.digest,
        OCI_MANIFEST,
        arm64.manifest.len(),
    );
    let blob = m.join(format!("multi/arch/_blobs/{}", arm64.layers[1].digest));
    assert_manifest_xattrs(&blob, &arm64.layers[1].digest, OCI_LAYER, arm64.layers[1].bytes.len());
    // The same answers through the `getfattr` a user would run.
    let out = Command::new("getfattr")
        .arg("-d")
        .arg(&blob)
        .output()
        .expect("running getfattr");
    assert!(out.status.success(), "getfattr -d failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        format!("user.regfs.digest=\"{}\"", arm64.layers[1].digest),
        format!("user.regfs.mediatype=\"{OCI_LAYER}\""),
        format!("user.regfs.size=\"{}\"", arm64.layers[1].size()),
    ] {
        assert!(text.contains(&line), "getfattr -d printed:\n{text}");
    }
}
}

on_both_registries! {
fn docker_manifest_list_of_docker_v2_images(kind) {
    let reg = Registry::start_kind(kind);
    let c = reg.client();
    let repo = "legacy/list";
    let push = |arch: &str, n: usize| {
        c.push_image(
            repo,
            None,
            DOCKER_MANIFEST,
            image_config(arch, &random_hex(8)),
            (0..n).map(|i| random_bytes(300 + i)).collect(),
        )
    };
    let amd64 = push("amd64", 1);
    let arm64 = push("arm64", 2);
    let ppc = push("ppc64le", 1);
    let list = c.push_index(
        repo,
        "v1",
        IndexKind::DockerList,
        &[
            (&amd64, Platform::new("linux", "amd64", None)),
            (&arm64, Platform::new("linux", "arm64", Some("v8"))),
            (&ppc, Platform::new("linux", "ppc64le", None)),
        ],
    );
    let m = Mount::start(&reg.url());
    let tag = m.join("legacy/list/_tags/v1");
    assert_eq!(ls_all(&tag), strings(&["manifest.json", "manifests", "referrers"]));
    assert_file_eq(&tag.join("manifest.json"), &list.manifest);
    let expected: BTreeMap<String, String> = [
        ("linux-amd64".to_string(), format!("../../{}", amd64.digest)),
        ("linux-arm64-v8".into(), format!("../../{}", arm64.digest)),
        ("linux-ppc64le".into(), format!("../../{}", ppc.digest)),
    ]
    .into_iter()
    .collect();
    assert_children(&tag.join("manifests"), &expected);
    assert_manifest_xattrs(&tag, &list.digest, DOCKER_LIST, list.manifest.len());

    let arm = tag.join("manifests/linux-arm64-v8");
    assert_file_eq(&arm.join("manifest.json"), &arm64.manifest);
    assert_manifest_xattrs(&arm, &arm64.digest, DOCKER_MANIFEST, arm64.manifest.len());
    assert_eq!(
        link_of(&arm.join("config.json")),
        format!("../../_blobs/{}", arm64.config.digest)
    );
    assert_file_eq(&arm.join("config.json"), &arm64.config.bytes);
    assert_eq!(ls_all(&arm.join("layers")), strings(&["00", "01"]));
    assert_file_eq(&arm.join("layers/01"), &arm64.layers[1].bytes);
    assert_eq!(
        xattr_str(&arm.join("layers/01"), "user.regfs.mediatype"),
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    assert_eq!(
        xattr_str(&arm.join("config.json"), "user.regfs.mediatype"),
        "application/vnd.docker.container.image.v1+json"
    );
}
}

on_both_registries! {
fn index_of_indexes_and_index_without_media_type(kind) {
    let reg = Registry::start_kind(kind);
    let c = reg.client();
    let repo = "nested";
    let amd64 = image(&c, repo, "amd64", 1);
    let arm64 = image(&c, repo, "arm64", 2);
    let s390x = image(&c, repo, "s390x", 1);
    let riscv = image(&c, repo, "riscv64", 1);
    // An inner OCI index (by digest), an inner index without "mediaType"
    // (by digest, and tagged on its own), and an outer index over both.
    let inner = c.push_index_of(
        repo,
        None,
        vec![
            with_platform(&amd64, linux("amd64", None)),
            with_platform(&arm64, linux("arm64", Some("v8"))),
        ],
        true,
    );
    let no_type = c.push_index_of(
        repo,
        Some("no-media-type"),
        vec![with_platform(&riscv, linux("riscv64", None))],
        false,
    );
    let no_type_json: Value = serde_json::from_slice(&no_type.bytes).unwrap();
    assert!(no_type_json.get("mediaType").is_none(), "{no_type_json}");
    let outer = c.push_index_of(
        repo,
        Some("all"),
        vec![
            inner.descriptor(),
            descriptor_with(
                json!({"digest": no_type.digest, "size": no_type.size(), "mediaType": OCI_INDEX}),
                json!({"annotations": {"org.opencontainers.image.ref.name": "riscv"}}),
            ),
            with_platform(&s390x, linux("s390x", None)),
        ],
        true,
    );
    let m = Mount::start(&reg.url());
    let all = m.join("nested/_tags/all");
    assert_file_eq(&all.join("manifest.json"), &outer.bytes);
    let expected: BTreeMap<String, String> = [
        (inner.digest.clone(), format!("../../{}", inner.digest)),
        (no_type.digest.clone(), format!("../../{}", no_type.digest)),
        ("linux-s390x".into(), format!("../../{}", s390x.digest)),
    ]
    .into_iter()
    .collect();
    assert_children(&all.join("manifests"), &expected);

    // Down two levels of indexes to a config, following links all the way.
    let inner_dir = all.join(format!("manifests/{}", inner.digest));
    assert_eq!(ls_all(&inner_dir), strings(&["manifest.json", "manifests", "referrers"]));
    assert_file_eq(&inner_dir.join("manifest.json"), &inner.bytes);
    assert_eq!(
        ls_all(&inner_dir.join("manifests")),
        strings(&["linux-amd64", "linux-arm64-v8"])
    );
    assert_file_eq(
        &inner_dir.join("manifests/linux-arm64-v8/config.json"),
        &arm64.config.bytes,
    );
    assert_file_eq(
        &inner_dir.join("manifests/linux-arm64-v8/layers/01"),
        &arm64.layers[1].bytes,
    );

    // The index without "mediaType" is an OCI index, by name and by tag.
    for dir in [
        all.join(format!("manifests/{}", no_type.digest)),
        m.join("nested/_tags/no-media-type"),
    ] {
        assert_eq!(
            ls_all(&dir),
            strings(&["manifest.json", "manifests", "referrers"]),
            "{}",
            dir.display()
        );
        assert_file_eq(&dir.join("manifest.json"), &no_type.bytes);
        assert_eq!(ls_all(&dir.join("manifests")), strings(&["linux-riscv64"]));
        assert_eq!(
            link_of(&dir.join("manifests/linux-riscv64")),
            format!("../../{}", riscv.digest)
        );
        assert_file_eq(&dir.join("manifests/linux-riscv64/config.json"), &riscv.config.bytes);
        assert_manifest_xattrs(&dir, &no_type.digest, OCI_INDEX, no_type.bytes.len());
    }

    // _manifests lists everything reachable, indexes followed.
    let listed = ls_all(&m.join("nested/_manifests"));
    for d in [
        &outer.digest,
        &inner.digest,
        &no_type.digest,
        &amd64.digest,
        &arm64.digest,
        &s390x.digest,
        &riscv.digest,
    ] {
        assert!(listed.contains(d), "_manifests lists {listed:?}, not {d}");
    }
}
}

on_both_registries! {
fn buildx_cache_index_entries_are_blob_links(kind) {
    let reg = Registry::start_kind(kind);
    let c = reg.client();
    let repo = "cache/app";
    let layer_a = c.push_blob_as(repo, OCI_LAYER, &random_bytes(700));
    let layer_b = c.push_blob_as(repo, OCI_LAYER, &random_bytes(900));
    let config = c.push_blob_as(
        repo,
        BUILDKIT_CACHE_CONFIG,
        br#"{"layers":[{"blob":"a"},{"blob":"b","parent":0}],"records":[]}"#,
    );
    let index = c.push_index_of(
        repo,
        Some("buildcache"),
        vec![
            descriptor_with(
                layer_a.descriptor(),
                json!({"annotations": {"buildkit/createdat": "2024-01-01T00:00:00Z"}}),
            ),
            layer_b.descriptor(),
            config.descriptor(),
        ],
        true,
    );
    let m = Mount::start(&reg.url());
    let tag = m.join("cache/app/_tags/buildcache");
    assert_eq!(ls_all(&tag), strings(&["manifest.json", "manifests", "referrers"]));
    assert_file_eq(&tag.join("manifest.json"), &index.bytes);
    let expected: BTreeMap<String, String> = [&layer_a, &layer_b, &config]
        .into_iter()
        .map(|b| (b.digest.clone(), format!("../../../_blobs/{}", b.digest)))
        .collect();
    assert_children(&tag.join("manifests"), &expected);
    for b in [&layer_a, &layer_b, &config] {
        let p = tag.join(format!("manifests/{}", b.digest));
        assert_eq!(fs::metadata(&p).unwrap().len(), b.size(), "{}", p.display());
        assert_file_eq(&p, &b.bytes);
    }
    assert_eq!(
        xattr_str(
            &m.join(format!("cache/app/_blobs/{}", config.digest)),
            "user.regfs.mediatype"
        ),
        BUILDKIT_CACHE_CONFIG
    );
}
}

on_both_registries! {
/// A buildx cache index (`--cache-to type=registry`) beside an ordinary
/// image: the repository listings must not treat the cache's blob entries as
/// manifests.
fn repository_listings_with_a_buildx_cache_index(kind) {
    let reg = Registry::start_kind(kind);
    let c = reg.client();
    let repo = "cache/app";
    let app = image(&c, repo, "amd64", 1);
    c.tag_manifest(repo, &app.digest, "v1");
    let layer = c.push_blob_as(repo, OCI_LAYER, &random_bytes(700));
    let config = c.push_blob_as(repo, BUILDKIT_CACHE_CONFIG, br#"{"layers":[{"blob":"a"}]}"#);
    let index = c.push_index_of(
        repo,
        Some("buildcache"),
        vec![layer.descriptor(), config.descriptor()],
        true,
    );
    let m = Mount::start(&reg.url());
    let listed = ls_all(&m.join("cache/app/_manifests"));
    assert!(listed.contains(&index.digest), "{listed:?}");
    assert!(listed.contains(&app.digest), "{listed:?}");
    assert!(!listed.contains(&layer.digest), "{listed:?}");
    let blobs = ls_all(&m.join("cache/app/_blobs"));
    assert!(blobs.contains(&app.layers[0].digest), "{blobs:?}");
}
}

#[test]
fn deleted_child_is_a_dangling_link_and_its_siblings_still_work() {
    let reg = Registry::start_with(RegistryOptions::default().with_delete());
    let c = reg.client();
    let repo = "broken/app";
    let amd64 = image(&c, repo, "amd64", 2);
    let arm64 = image(&c, repo, "arm64", 1);
    let index = c.push_index(
        repo,
        "latest",
        IndexKind::Oci,
        &[
            (&amd64, Platform::new("linux", "amd64", None)),
            (&arm64, Platform::new("linux", "arm64", Some("v8"))),
        ],
    );
    assert_eq!(c.delete_manifest(repo, &arm64.digest), 202);
    assert_eq!(c.manifest_status(repo, &arm64.digest), 404);
    // Another tag whose second layer blob was deleted.
    let gone = image(&c, repo, "amd64", 2);
    c.tag_manifest(repo, &gone.digest, "v2");
    assert_eq!(c.delete_blob(repo, &gone.layers[1].digest), 202);
    let m = Mount::start(&reg.url());

    let tag = m.join("broken/app/_tags/latest");
    assert_file_eq(&tag.join("manifest.json"), &index.manifest);
    let kids = tag.join("manifests");
    assert_eq!(ls_all(&kids), strings(&["linux-amd64", "linux-arm64-v8"]));
    // The link is listed and readable (`ls -l`, `readlink`) ...
    assert_eq!(link_of(&kids.join("linux-arm64-v8")), format!("../../{}", arm64.digest));
    assert!(fs::symlink_metadata(kids.join("linux-arm64-v8"))
        .unwrap()
        .file_type()
        .is_symlink());
    // ... but dangling: `stat -L` and anything inside are ENOENT.
    assert_eq!(errno_of_metadata(&kids.join("linux-arm64-v8")), libc::ENOENT);
    assert_eq!(
        errno_of_metadata(&kids.join("linux-arm64-v8/manifest.json")),
        libc::ENOENT
    );
    assert_eq!(
        errno_of_metadata(&m.join(format!("broken/app/_manifests/{}", arm64.digest))),
        libc::ENOENT
    );
    // The sibling works end to end.
    let amd = kids.join("linux-amd64");
    assert_file_eq(&amd.join("manifest.json"), &amd64.manifest);
    assert_file_eq(&amd.join("config.json"), &amd64.config.bytes);
    assert_file_eq(&amd.join("layers/01"), &amd64.layers[1].bytes);
    // The repository listings skip the missing manifest instead of failing.
    let listed = ls_all(&m.join("broken/app/_manifests"));
    assert!(listed.contains(&index.digest), "{listed:?}");
    assert!(listed.contains(&amd64.digest), "{listed:?}");
    assert!(!listed.contains(&arm64.digest), "{listed:?}");
    let blobs = ls_all(&m.join("broken/app/_blobs"));
    assert!(blobs.contains(&amd64.layers[0].digest), "{blobs:?}");

    // A deleted layer: listed and linked; reading it fails with ENOENT and
    // the registry's answer lands in .regfs/errors. Its sibling reads fine.
    let v2 = m.join("broken/app/_tags/v2/layers");
    assert_eq!(ls_all(&v2), strings(&["00", "01"]));
    assert_eq!(
        link_of(&v2.join("01")),
        format!("../../../_blobs/{}", gone.layers[1].digest)
    );
    assert_file_eq(&v2.join("00"), &gone.layers[0].bytes);
    let err = fs::read(v2.join("01")).expect_err("reading a deleted layer");
    assert_eq!(errno_of(&err), libc::ENOENT, "{err}");
    let errors = fs::read_to_string(m.join(".regfs/errors")).unwrap();
    assert!(
        errors
            .lines()
            .any(|l| l.contains(&gone.layers[1].digest) && l.contains("BLOB_UNKNOWN")),
        ".regfs/errors:\n{errors}"
    );
    assert!(m.stat("errors") >= 1, "{:?}", m.stats());
}

on_both_registries! {
fn artifacts_link_their_subject_and_referrers_come_from_the_tag_fallback(kind) {
    let reg = Registry::start_kind(kind);
    let c = reg.client();
    let repo = "app";
    let app = c.push_image(
        repo,
        Some("v1"),
        OCI_MANIFEST,
        image_config("amd64", &random_hex(8)),
        vec![random_bytes(500)],
    );
    let subject = app.descriptor();
    let sig_payload = c.push_blob_as(
        repo,
        "application/vnd.dev.cosign.simplesigning.v1+json",
        format!(
            r#"{{"critical":{{"image":{{"docker-manifest-digest":"{}"}},"type":"cosign container image signature"}}}}"#,
            app.digest
        )
        .as_bytes(),
    );
    let sig = c.push_artifact(
        repo,
        Some(COSIGN_SIG),
        None,
        std::slice::from_ref(&sig_payload),
        Some(subject.clone()),
    );
    let sbom_doc = c.push_blob_as(repo, SPDX, br#"{"spdxVersion":"SPDX-2.3","name":"app"}"#);
    let sbom = c.push_artifact(repo, Some(SPDX), None, &[sbom_doc], Some(subject.clone()));
    let custom_config = c.push_blob_as(
        repo,
        "application/vnd.example.config.v1+json",
        br#"{"kind":"no artifactType"}"#,
    );
    let plain = c.push_artifact(repo, None, Some(&custom_config), &[], Some(subject.clone()));
    let note = c.push_artifact(repo, Some("text/plain"), None, &[], Some(subject.clone()));
    let fallback = c.push_referrers_tag(
        repo,
        &app.digest,
        &[
            (&sig, Some(COSIGN_SIG)),
            (&sbom, Some(SPDX)),
            (&plain, None),
            (&note, Some("text/plain")),
        ],
    );
    // An index can have a subject too.
    let other = image(&c, repo, "arm64", 1);
    let index_with_subject = c.push_manifest_json(
        repo,
        Some("signed-index"),
        OCI_INDEX,
        &json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "artifactType": "application/vnd.example.bundle.v1",
            "manifests": [with_platform(&other, linux("arm64", Some("v8")))],
            "subject": subject,
        }),
    );
    let m = Mount::start(&reg.url());

    // `ls _tags/v1/referrers/`: sorted names, links to the referrers.
    let v1 = m.join("app/_tags/v1");
    assert_eq!(
        ls_all(&v1),
        strings(&["config.json", "layers", "manifest.json", "referrers"])
    );
    // distribution has no referrers API: the names come from the hand-made
    // `sha256-<hex>` fallback index (no artifactType for `plain`, no bundle).
    // ferro-oci-server answers the API: every manifest with this subject,
    // `plain` named by its config media type (the spec's artifactType rule),
    // and the index with a subject too.
    let mut referrers: Vec<(&RawManifest, String)> = vec![
        (
            &sig,
            format!("vnd.dev.cosign.artifact.sig.v1+json-{}", short_hex(&sig.digest)),
        ),
        (&sbom, format!("spdx+json-{}", short_hex(&sbom.digest))),
        (&note, format!("text_plain-{}", short_hex(&note.digest))),
    ];
    if kind.has_referrers_api() {
        referrers.push((&plain, format!("vnd.example.config.v1+json-{}", short_hex(&plain.digest))));
        referrers.push((
            &index_with_subject,
            format!("vnd.example.bundle.v1-{}", short_hex(&index_with_subject.digest)),
        ));
    } else {
        referrers.push((&plain, format!("manifest-{}", short_hex(&plain.digest))));
    }
    let expected: BTreeMap<String, String> = referrers
        .iter()
        .map(|(r, n)| (n.clone(), format!("../../{}", r.digest)))
        .collect();
    assert_children(&v1.join("referrers"), &expected);
    assert_children(&m.join(format!("app/_manifests/{}/referrers", app.digest)), &expected);
    for (r, name) in &referrers {
        let dir = v1.join("referrers").join(name);
        assert_file_eq(&dir.join("manifest.json"), &r.bytes);
        // Back from the referrer to what it refers to.
        assert_eq!(link_of(&dir.join("subject")), format!("../{}", app.digest));
        assert_file_eq(&dir.join("subject/manifest.json"), &app.manifest);
    }

    // The signature artifact's own directory.
    let sig_dir = m.join(format!("app/_manifests/{}", sig.digest));
    assert_eq!(
        ls_all(&sig_dir),
        strings(&["config.json", "layers", "manifest.json", "referrers", "subject"])
    );
    assert_file_eq(&sig_dir.join("config.json"), b"{}");
    assert_eq!(ls_all(&sig_dir.join("layers")), strings(&["00"]));
    assert_file_eq(&sig_dir.join("layers/00"), &sig_payload.bytes);
    assert_eq!(ls_all(&sig_dir.join("referrers")), Vec::<String>::new());
    assert_file_eq(&sig_dir.join("subject/config.json"), &app.config.bytes);
    // An artifact without layers still has an (empty) layers directory.
    let note_dir = m.join(format!("app/_manifests/{}", note.digest));
    assert_eq!(ls_all(&note_dir.join("layers")), Vec::<String>::new());

    // An index with a subject.
    let idx = m.join("app/_tags/signed-index");
    assert_eq!(
        ls_all(&idx),
        strings(&["manifest.json", "manifests", "referrers", "subject"])
    );
    assert_file_eq(&idx.join("manifest.json"), &index_with_subject.bytes);
    assert_eq!(link_of(&idx.join("subject")), format!("../{}", app.digest));
    assert_file_eq(&idx.join("subject/manifest.json"), &app.manifest);

    // The fallback tag itself is an ordinary tag of an index.
    assert_file_eq(
        &m.join(format!("app/_tags/sha256-{}/manifest.json", app.hex())),
        &fallback.bytes,
    );

    // .regfs/: the status files, and the referrers lookups counted.
    let status = ls_all(&m.join(".regfs"));
    for f in ["config", "errors", "stats", "version"] {
        assert!(status.iter().any(|s| s == f), ".regfs lists {status:?}");
    }
    let version = fs::read_to_string(m.join(".regfs/version")).unwrap();
    assert!(version.starts_with("regfs "), "{version:?}");
    assert!(m.stat("requests_referrers") >= 1, "{:?}", m.stats());
}
}

on_both_registries! {
fn layers_are_zero_padded_to_the_width_of_the_count(kind) {
    let reg = Registry::start_kind(kind);
    let c = reg.client();
    let repo = "layers";
    let many = c.push_image(
        repo,
        Some("many"),
        OCI_MANIFEST,
        image_config("amd64", &random_hex(8)),
        (0..101).map(|i| format!("layer {i}").into_bytes()).collect(),
    );
    let none = c.push_image(
        repo,
        Some("none"),
        OCI_MANIFEST,
        image_config("amd64", &random_hex(8)),
        vec![],
    );
    let m = Mount::start(&reg.url());
    let dir = m.join("layers/_tags/many/layers");
    let want: Vec<String> = (0..101).map(|i| format!("{i:03}")).collect();
    assert_eq!(ls_all(&dir), want);
    for i in [0usize, 9, 10, 99, 100] {
        let l = dir.join(format!("{i:03}"));
        assert_eq!(link_of(&l), format!("../../../_blobs/{}", many.layers[i].digest));
        assert_file_eq(&l, &many.layers[i].bytes);
    }
    // Two-digit names do not exist when the width is three.
    assert_eq!(errno_of_metadata(&dir.join("00")), libc::ENOENT);
    assert_eq!(ls_all(&m.join("layers/_tags/none/layers")), Vec::<String>::new());
    assert_file_eq(&m.join("layers/_tags/none/config.json"), &none.config.bytes);
}
}

#[test]
fn odd_manifests_never_break_their_directory() {
    let reg = Registry::start();
    let c = reg.client();
    let repo = "odd";
    let amd64 = image(&c, repo, "amd64", 1);
    // distribution refuses these over the API (missing config blob,
    // malformed digests) but serves them once stored: written to storage.
    let layer = c.push_blob_as(repo, OCI_LAYER, &random_bytes(333));
    let no_config = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "layers": [layer.descriptor()],
    }))
    .unwrap();
    let no_config_digest = reg.inject_manifest(repo, Some("no-config"), &no_config);
    let bad_digests = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            descriptor_with(descriptor(OCI_MANIFEST, "sha256:not-hex", 1), json!({"platform": linux("arm64", None)})),
            descriptor_with(amd64.descriptor(), json!({"platform": linux("amd64", None)})),
            descriptor_with(descriptor(OCI_MANIFEST, "", 1), json!({"platform": linux("s390x", None)})),
        ],
    }))
    .unwrap();
    let bad_digests_digest = reg.inject_manifest(repo, Some("bad-digests"), &bad_digests);
    let m = Mount::start(&reg.url());

    let dir = m.join("odd/_tags/no-config");
    assert_eq!(link_of(&dir), format!("../_manifests/{no_config_digest}"));
    assert_eq!(ls_all(&dir), strings(&["layers", "manifest.json", "referrers"]));
    assert_file_eq(&dir.join("manifest.json"), &no_config);
    assert_eq!(errno_of_metadata(&dir.join("config.json")), libc::ENOENT);
    assert_eq!(ls_all(&dir.join("layers")), strings(&["00"]));
    assert_eq!(
        link_of(&dir.join("layers/00")),
        format!("../../../_blobs/{}", layer.digest)
    );
    assert_file_eq(&dir.join("layers/00"), &layer.bytes);

    let idx = m.join("odd/_tags/bad-digests");
    assert_eq!(link_of(&idx), format!("../_manifests/{bad_digests_digest}"));
    assert_file_eq(&idx.join("manifest.json"), &bad_digests);
    assert_eq!(ls_all(&idx.join("manifests")), strings(&["linux-amd64"]));
    assert_file_eq(&idx.join("manifests/linux-amd64/manifest.json"), &amd64.manifest);
}

/// distribution 2.x stores a schema1 manifest as its unsigned payload (the
/// digest is the payload's) and signs it again, with a fresh key and time,
/// on every GET: the served bytes never hash to the digest. The tree must
/// still show such a manifest raw (`manifest.json` only, the payload its
/// digest covers), never an error.
#[test]
fn schema1_manifest_is_shown_raw() {
    let reg = Registry::start();
    let payload = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 1,
        "name": "legacy/old",
        "tag": "v1",
        "architecture": "amd64",
        "fsLayers": [],
        "history": [],
    }))
    .unwrap();
    let digest = reg.inject_manifest("legacy/old", Some("v1"), &payload);
    // The registry really does serve it (signed) under that digest.
    let (served, ct, _) = reg.client().get_manifest("legacy/old", &digest);
    assert_eq!(ct, DOCKER_SCHEMA1_SIGNED);
    assert_eq!(schema1_payload(&served).as_deref(), Some(payload.as_slice()));
    let m = Mount::start(&reg.url());

    for dir in [
        m.join("legacy/old/_tags/v1"),
        m.join(format!("legacy/old/_manifests/{digest}")),
    ] {
        let names = list_dir(&dir);
        assert_eq!(
            names.as_ref().map_err(|e| e.to_string()),
            Ok(&strings(&["manifest.json"])),
            "ls {}",
            dir.display()
        );
        let got =
            fs::read(dir.join("manifest.json")).unwrap_or_else(|e| panic!("cat {}/manifest.json: {e}", dir.display()));
        // The payload itself, which is what the digest covers (README, "The
        // tree": "schema1 as its signed payload"), never the re-signed JWS.
        assert_bytes_eq(&got, &payload, &format!("{}/manifest.json", dir.display()));
        assert_eq!(sha256_digest(&got), digest, "manifest.json hashes to its digest");
        assert_eq!(fs::metadata(dir.join("manifest.json")).unwrap().len(), got.len() as u64);
    }
}
