//! Image archives written to `MOUNT/<repo>/_uploads/<name>` (issue 6, import
//! half), checked with the real tools against a real `docker-registry`:
//! archives made by `skopeo copy … docker-archive:` and `oci-archive:`,
//! imported with `cp`, then read back with `skopeo inspect` and pulled in full
//! with `skopeo copy` (which verifies every digest).
//!
//! - a `docker save` archive: config and layers pushed as they are (skopeo
//!   writes uncompressed layers, so the imported layer digests are the
//!   source's `rootfs.diff_ids`), an OCI manifest built, one tag per RepoTags
//!   entry;
//! - an OCI layout tar: blobs and manifests pushed, one tag per `index.json`
//!   entry with a ref name (a full reference gives its tag part); a first
//!   entry without one takes the file's name;
//! - `_uploads/<name>` then links to `../_manifests/sha256:<hex>` (the first
//!   manifest imported);
//! - anything else stays a blob upload (a link to `../_blobs/…`);
//! - a broken archive fails the writer's close(2) (EINVAL: malformed archive
//!   manifest; EIO: manifests whose references are nowhere) and tags nothing;
//! - blobs the registry already has are not uploaded again (`bytes_pushed`).
//!
//! Every write into the mount is made by a child process (`cp`, or a small
//! python3 writer that reports the errno of the failing step), never by this
//! process: FUSE `FLUSH` — a commit — is sent whenever any copy of a
//! descriptor is closed, including copies a concurrently forked child
//! inherits, so a descriptor of the mount held open here could be committed
//! half-written by another test's spawn.
//!
//! Every check of what was pushed goes over the registry's HTTP API or
//! through skopeo, never through the mount.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use common::*;

const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

// ---------------------------------------------------------------- fixture

/// A registry with a source repository `src` holding `v1` (a single-platform
/// OCI image with two real layers) and `multi` (an OCI index over a child for
/// this machine's architecture and one for another), plus a scratch dir.
struct Source {
    reg: Registry,
    c: RegistryClient,
    v1: ImageInfo,
    v1_layers: Vec<RealLayer>,
    host_child: ImageInfo,
    other_child: ImageInfo,
    index: IndexInfo,
    dir: tempfile::TempDir,
}

impl Source {
    fn new() -> Source {
        let reg = Registry::start();
        let c = reg.client();
        let base = RealLayer::new(&[
            ("etc/os-release", b"ID=regfs-import\n".as_slice()),
            ("usr/lib/base.bin", &random_bytes(150_000)),
        ]);
        let app = RealLayer::new(&[("app/main", &random_bytes(96 * 1024)), ("app/README", b"v1\n")]);
        let v1 = c.push_real_image("src", Some("v1"), OCI_MANIFEST, host_arch(), None, &[&base, &app]);
        let host_layer = RealLayer::new(&[("etc/arch", host_arch().as_bytes()), ("h", &random_bytes(70_000))]);
        let other_layer = RealLayer::new(&[("etc/arch", b"other".as_slice()), ("o", &random_bytes(80_000))]);
        let (other_arch, other_variant) = other_platform();
        let host_child = c.push_real_image("src", None, OCI_MANIFEST, host_arch(), None, &[&base, &host_layer]);
        let other_child = c.push_real_image("src", None, OCI_MANIFEST, other_arch, other_variant, &[&other_layer]);
        let index = c.push_index(
            "src",
            "multi",
            IndexKind::Oci,
            &[
                (&host_child, Platform::new("linux", host_arch(), None)),
                (&other_child, Platform::new("linux", other_arch, other_variant)),
            ],
        );
        Source {
            reg,
            c,
            v1,
            v1_layers: vec![base, app],
            host_child,
            other_child,
            index,
            dir: tempfile::Builder::new().prefix("regfs-import-").tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `docker://127.0.0.1:PORT/<repo_ref>`.
    fn docker_ref(&self, repo_ref: &str) -> String {
        format!("docker://{}/{repo_ref}", self.reg.host_port())
    }

    /// `skopeo copy docker://…/src:v1 docker-archive:DIR/app.tar:team/app:v7`
    /// (with the additional tag `team/app:stable`): a docker save archive
    /// with uncompressed layers and two RepoTags.
    fn docker_archive(&self) -> PathBuf {
        let out = self.path("app.tar");
        skopeo(
            &[
                "copy",
                "--src-tls-verify=false",
                "--additional-tag=team/app:stable",
                &self.docker_ref("src:v1"),
                &format!("docker-archive:{}:team/app:v7", s(&out)),
            ],
            None,
        );
        out
    }

    /// `skopeo copy --all docker://…/src:multi oci-archive:DIR/multi.tar:multi`.
    fn oci_archive(&self) -> PathBuf {
        let out = self.path("multi.tar");
        skopeo(
            &[
                "copy",
                "--all",
                "--src-tls-verify=false",
                &self.docker_ref("src:multi"),
                &format!("oci-archive:{}:multi", s(&out)),
            ],
            None,
        );
        out
    }

    fn v1_diff_ids(&self) -> Vec<String> {
        self.v1_layers.iter().map(|l| l.diff_id.clone()).collect()
    }
}

fn other_platform() -> (&'static str, Option<&'static str>) {
    if host_arch() == "arm64" {
        ("amd64", None)
    } else {
        ("arm64", Some("v8"))
    }
}

/// Every blob of an image (manifest, config, layers) as (bytes).
fn image_blobs(img: &ImageInfo) -> Vec<Vec<u8>> {
    let mut v = vec![img.manifest.clone(), img.config.bytes.clone()];
    v.extend(img.layers.iter().map(|l| l.bytes.clone()));
    v
}

/// An OCI image layout in `dir`: `oci-layout`, `index.json` listing
/// `entries`, and `blobs/sha256/<hex>` for each of `blobs`.
fn write_layout(dir: &Path, blobs: &[Vec<u8>], entries: Vec<Value>) {
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    for b in blobs {
        fs::write(dir.join("blobs/sha256").join(sha256_hex(b)), b).unwrap();
    }
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// A descriptor with a ref name annotation.
fn named(desc: Value, name: &str) -> Value {
    descriptor_with(desc, json!({"annotations": {REF_NAME: name}}))
}

/// `tar -cf OUT -C DIR MEMBERS…` (GNU tar).
fn tar_of(dir: &Path, out: &Path, members: &[&str]) {
    run_ok(Command::new("tar").arg("-cf").arg(out).arg("-C").arg(dir).args(members));
}

// ---------------------------------------------------------------- commands

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// `skopeo inspect docker://…` → its JSON.
fn skopeo_inspect(reference: &str, log: Option<PathBuf>) -> Value {
    let out = skopeo(&["inspect", "--tls-verify=false", reference], log);
    serde_json::from_slice(&out.stdout).expect("skopeo inspect JSON")
}

/// `cp SRC MOUNT/<repo>/_uploads/[NAME]`; panics (with the daemon's log)
/// unless cp exits 0.
fn cp_upload(m: &Mount, src: &Path, repo: &str, name: Option<&str>) -> PathBuf {
    fs::create_dir_all(m.join(repo)).unwrap_or_else(|e| panic!("mkdir -p {repo}: {e}"));
    let dst = m.join(format!("{repo}/_uploads/{}", name.unwrap_or("")));
    let mut cmd = Command::new("cp");
    cmd.arg(src).arg(&dst);
    run_logged(cmd, Some(log_path(m)));
    let name = name
        .map(String::from)
        .unwrap_or_else(|| src.file_name().unwrap().to_string_lossy().into_owned());
    m.join(format!("{repo}/_uploads/{name}"))
}

/// Writes the file `src` to `dst` in a python3 child (open, write, close) and
/// returns `Ok(())` or the failing step and its errno (`("close", EINVAL)`).
fn write_in_child(src: &Path, dst: &Path) -> Result<(), (String, i32)> {
    const SCRIPT: &str = r#"
import os, sys
data = open(sys.argv[1], 'rb').read()
step = 'open'
try:
    fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    step = 'write'
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    step = 'close'
    os.close(fd)
except OSError as e:
    print(step, e.errno)
    sys.exit(0)
print('ok')
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(SCRIPT).arg(src).arg(dst);
    let out = run_logged(cmd, None);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if text == "ok" {
        return Ok(());
    }
    let (step, errno) = text
        .split_once(' ')
        .unwrap_or_else(|| panic!("writer printed {text:?}"));
    Err((step.to_string(), errno.parse().unwrap()))
}

fn tags(c: &RegistryClient, repo: &str) -> BTreeMap<String, String> {
    c.tag_digests(repo)
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn ctx(m: &Mount) -> String {
    format!(
        ".regfs/held:\n{}\n.regfs/errors:\n{}\ndaemon log tail:\n{}",
        fs::read_to_string(m.join(".regfs/held")).unwrap_or_default(),
        fs::read_to_string(m.join(".regfs/errors")).unwrap_or_default(),
        tail(&log_path(m), 40)
    )
}

// ---------------------------------------------------------------- docker save archives

#[test]
fn docker_archive_is_imported_with_its_layers_as_they_are_and_tagged_with_its_repo_tags() {
    let src = Source::new();
    let c = &src.c;
    let app_tar = src.docker_archive();
    // What skopeo wrote: one image, RepoTags for v7 and stable, uncompressed layers.
    let dm: Value = serde_json::from_slice(&tar_member(&app_tar, "manifest.json")).unwrap();
    let repo_tags: Vec<&str> = dm[0]["RepoTags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(dm.as_array().unwrap().len(), 1, "docker archive manifest.json: {dm}");
    assert!(
        repo_tags.iter().any(|t| t.ends_with("team/app:v7")) && repo_tags.iter().any(|t| t.ends_with(":stable")),
        "RepoTags {repo_tags:?}"
    );
    let archive_config = tar_member(&app_tar, dm[0]["Config"].as_str().unwrap());

    let m = Mount::start(&src.reg.url());
    let link = cp_upload(&m, &app_tar, "dst", None);

    // The registry has dst:v7 and dst:stable, one OCI manifest.
    let got = tags(c, "dst");
    let digest = got
        .get("v7")
        .unwrap_or_else(|| panic!("no dst:v7 after cp app.tar dst/_uploads/; tags {got:?}\n{}", ctx(&m)))
        .clone();
    assert_eq!(got, map(&[("v7", &digest), ("stable", &digest)]), "tags of dst");
    let (bytes, ct, _) = c.get_manifest("dst", "v7");
    assert_eq!(ct, OCI_MANIFEST, "media type of the built manifest");
    let manifest: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(
        manifest["config"]["digest"],
        sha256_digest(&archive_config),
        "config digest"
    );
    assert_eq!(manifest["config"]["size"], archive_config.len() as u64, "config size");
    assert_bytes_eq(
        &c.get_blob("dst", &sha256_digest(&archive_config)),
        &archive_config,
        "config blob",
    );
    let layer_digests: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        layer_digests,
        src.v1_diff_ids(),
        "imported layers are the archive's uncompressed tars: their digests are the source's diff_ids"
    );
    for l in manifest["layers"].as_array().unwrap() {
        assert_eq!(l["mediaType"], OCI_LAYER_TAR, "uncompressed layer media type: {l}");
    }

    // skopeo sees the same layers (as diff_ids) and the same digest.
    let inspect = skopeo_inspect(&src.docker_ref("dst:v7"), Some(log_path(&m)));
    assert_eq!(inspect["Digest"], digest, "skopeo inspect Digest");
    let layers: Vec<&str> = inspect["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(layers, src.v1_diff_ids(), "skopeo inspect Layers");
    let src_inspect = skopeo_inspect(&src.docker_ref("src:v1"), None);
    assert_eq!(inspect["Labels"], src_inspect["Labels"], "same image config (labels)");
    assert_eq!(inspect["Architecture"], host_arch());

    // A full pull verifies every digest. (skopeo gzips uncompressed layers
    // on the way into an OCI layout, so the layout's manifest is its own;
    // the config is carried as it is.)
    let out = tempfile::Builder::new().prefix("regfs-import-out-").tempdir().unwrap();
    skopeo(
        &[
            "copy",
            "--src-tls-verify=false",
            &src.docker_ref("dst:v7"),
            &format!("oci:{}:v7", s(&out.path().join("layout"))),
        ],
        Some(log_path(&m)),
    );
    let (index, blobs) = verify_oci_layout(&out.path().join("layout"));
    let pulled = index_refs(&index)["v7"].clone();
    let pulled: Value =
        serde_json::from_slice(&fs::read(out.path().join("layout/blobs/sha256").join(&pulled[7..])).unwrap()).unwrap();
    assert_eq!(
        pulled["config"]["digest"], manifest["config"]["digest"],
        "pulled config"
    );
    assert_eq!(pulled["layers"].as_array().unwrap().len(), 2, "pulled layers");
    assert!(blobs.contains(&sha256_digest(&archive_config)));
    // And byte for byte with `dir:` (no conversion): the manifest as the
    // registry serves it, each layer file hashing to its diff_id.
    let dir = out.path().join("dir");
    skopeo(
        &[
            "copy",
            "--src-tls-verify=false",
            &src.docker_ref("dst:v7"),
            &format!("dir:{}", s(&dir)),
        ],
        Some(log_path(&m)),
    );
    assert_bytes_eq(
        &fs::read(dir.join("manifest.json")).unwrap(),
        &bytes,
        "dir:/manifest.json",
    );
    for d in src.v1_diff_ids() {
        let layer = fs::read(dir.join(&d[7..])).unwrap_or_else(|e| panic!("dir: layer {d}: {e}"));
        assert_eq!(sha256_digest(&layer), d, "pulled layer");
    }

    // _uploads/app.tar now links to the manifest.
    assert_eq!(readlink(&link), manifest_link(&digest), "_uploads/app.tar");
    assert_bytes_eq(
        &fs::read(m.join(format!("dst/_manifests/{digest}/manifest.json"))).unwrap(),
        &bytes,
        "manifest through the mount",
    );
    assert_eq!(
        readlink(&m.join("dst/_tags/v7")),
        manifest_link(&digest),
        "dst/_tags/v7"
    );
}

#[test]
fn docker_archive_without_repo_tags_is_tagged_with_its_file_name() {
    let src = Source::new();
    let c = &src.c;
    let app_tar = src.docker_archive();
    // The same archive with RepoTags removed from manifest.json.
    let tree = src.path("untagged");
    fs::create_dir_all(&tree).unwrap();
    run_ok(Command::new("tar").arg("-xf").arg(&app_tar).arg("-C").arg(&tree));
    let mut dm: Value = serde_json::from_slice(&fs::read(tree.join("manifest.json")).unwrap()).unwrap();
    dm[0].as_object_mut().unwrap().remove("RepoTags");
    fs::write(tree.join("manifest.json"), serde_json::to_vec(&dm).unwrap()).unwrap();
    let _ = fs::remove_file(tree.join("repositories"));
    let members: Vec<String> = list_dir(&tree).unwrap();
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    let nightly = src.path("nightly-3.tar");
    tar_of(&tree, &nightly, &members);

    let m = Mount::start(&src.reg.url());
    let link = cp_upload(&m, &nightly, "dst", None);
    let got = tags(c, "dst");
    let digest = got
        .get("nightly-3")
        .unwrap_or_else(|| panic!("no dst:nightly-3; tags {got:?}\n{}", ctx(&m)))
        .clone();
    assert_eq!(got.len(), 1, "one tag: {got:?}");
    assert_eq!(readlink(&link), manifest_link(&digest));
    skopeo(
        &[
            "copy",
            "--src-tls-verify=false",
            &src.docker_ref("dst:nightly-3"),
            &format!("oci:{}:x", s(&src.path("out"))),
        ],
        Some(log_path(&m)),
    );
}

/// A docker save archive made by hand: a gzip layer, a zstd layer and an
/// uncompressed layer larger than one upload chunk (64 MiB), so the import
/// uploads a member from its offset inside the tar in several PATCHes.
#[test]
fn docker_archive_layers_keep_their_compression_and_a_large_layer_uploads_in_chunks() {
    let src = Source::new();
    let c = &src.c;
    let tree = src.path("handmade");
    fs::create_dir_all(&tree).unwrap();

    let gz = RealLayer::new(&[("gz/file", &random_bytes(30_000))]);
    fs::write(tree.join("gz.tar.gz"), &gz.gz).unwrap();
    let zroot = src.path("zroot");
    fs::create_dir_all(&zroot).unwrap();
    fs::write(zroot.join("z.bin"), random_bytes(40_000)).unwrap();
    let ztar = src.path("z.tar");
    tar_of(&zroot, &ztar, &["z.bin"]);
    let zdiff = sha256_digest(&fs::read(&ztar).unwrap());
    run_ok(
        Command::new("zstd")
            .arg("-q")
            .arg("-f")
            .arg(&ztar)
            .arg("-o")
            .arg(tree.join("z.tar.zst")),
    );
    let broot = src.path("broot");
    fs::create_dir_all(&broot).unwrap();
    fs::write(broot.join("big.bin"), random_bytes((64 << 20) + 300_000)).unwrap();
    tar_of(&broot, &tree.join("big.tar"), &["big.bin"]);
    let big = fs::read(tree.join("big.tar")).unwrap();
    let big_digest = sha256_digest(&big);
    drop(big);

    let z_layer = RealLayer {
        gz: Vec::new(),
        diff_id: zdiff.clone(),
    };
    let b_layer = RealLayer {
        gz: Vec::new(),
        diff_id: big_digest.clone(),
    };
    let config = real_image_config(host_arch(), None, "handmade", &[&gz, &z_layer, &b_layer]);
    fs::write(tree.join("config.json"), &config).unwrap();
    fs::write(
        tree.join("manifest.json"),
        serde_json::to_vec(&json!([{
            "Config": "config.json",
            "RepoTags": ["localhost:5000/team/handmade:hm"],
            "Layers": ["gz.tar.gz", "z.tar.zst", "big.tar"],
        }]))
        .unwrap(),
    )
    .unwrap();
    let archive = src.path("handmade.tar");
    tar_of(
        &tree,
        &archive,
        &["manifest.json", "config.json", "gz.tar.gz", "z.tar.zst", "big.tar"],
    );
    fs::remove_dir_all(&broot).unwrap();

    let m = Mount::start(&src.reg.url());
    let link = cp_upload(&m, &archive, "hand", None);
    let got = tags(c, "hand");
    let digest = got
        .get("hm")
        .unwrap_or_else(|| panic!("no hand:hm; tags {got:?}\n{}", ctx(&m)))
        .clone();
    assert_eq!(readlink(&link), manifest_link(&digest));
    let (bytes, _, _) = c.get_manifest("hand", "hm");
    let manifest: Value = serde_json::from_slice(&bytes).unwrap();
    let layers: Vec<(String, String, u64)> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["mediaType"].as_str().unwrap().to_string(),
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect();
    let zst = fs::read(tree.join("z.tar.zst")).unwrap();
    let big_len = fs::metadata(tree.join("big.tar")).unwrap().len();
    assert!(big_len > 64 << 20);
    assert_eq!(
        layers,
        [
            (format!("{OCI_LAYER_TAR}+gzip"), gz.digest(), gz.gz.len() as u64),
            (format!("{OCI_LAYER_TAR}+zstd"), sha256_digest(&zst), zst.len() as u64),
            (OCI_LAYER_TAR.to_string(), big_digest.clone(), big_len),
        ],
        "layers of the built manifest (media type by magic bytes, digest and size as in the archive)"
    );
    assert_eq!(manifest["config"]["digest"], sha256_digest(&config));
    // The big layer arrived whole and in order.
    assert_eq!(
        sha256_digest(&c.get_blob("hand", &big_digest)),
        big_digest,
        "big layer in the registry"
    );
    assert_eq!(
        sha256_digest(&c.get_blob("hand", &sha256_digest(&zst))),
        sha256_digest(&zst)
    );
    assert_eq!(
        m.stat("bytes_pushed"),
        manifest_blob_bytes(&manifest),
        "bytes_pushed: config + layers"
    );
}

fn manifest_blob_bytes(manifest: &Value) -> u64 {
    manifest["config"]["size"].as_u64().unwrap()
        + manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["size"].as_u64().unwrap())
            .sum::<u64>()
}

// ---------------------------------------------------------------- OCI layout archives

#[test]
fn oci_archive_of_an_index_is_imported_with_every_platform() {
    let src = Source::new();
    let c = &src.c;
    let multi_tar = src.oci_archive();
    let index_json: Value = serde_json::from_slice(&tar_member(&multi_tar, "index.json")).unwrap();
    assert_eq!(
        index_refs(&index_json),
        map(&[("multi", &src.index.digest)]),
        "skopeo's oci-archive keeps the index digest"
    );

    let m = Mount::start(&src.reg.url());
    let link = cp_upload(&m, &multi_tar, "dst2", None);
    let got = tags(c, "dst2");
    assert_eq!(got, map(&[("multi", &src.index.digest)]), "tags of dst2\n{}", ctx(&m));
    for child in [&src.host_child, &src.other_child] {
        assert_eq!(
            c.manifest_status("dst2", &child.digest),
            200,
            "child {} in dst2",
            child.digest
        );
    }
    assert_eq!(readlink(&link), manifest_link(&src.index.digest), "_uploads/multi.tar");

    // Every platform pulls in full (every digest verified by skopeo).
    let out = src.path("out2");
    skopeo(
        &[
            "copy",
            "--all",
            "--src-tls-verify=false",
            &src.docker_ref("dst2:multi"),
            &format!("oci:{}:multi", s(&out)),
        ],
        Some(log_path(&m)),
    );
    let (index, blobs) = verify_oci_layout(&out);
    assert_eq!(index_refs(&index)["multi"], src.index.digest, "pulled index digest");
    for img in [&src.host_child, &src.other_child] {
        for b in image_blobs(img) {
            assert!(
                blobs.contains(&sha256_digest(&b)),
                "pulled layout lacks {}",
                sha256_digest(&b)
            );
        }
    }
    // Nothing is left held.
    assert_eq!(
        fs::read_to_string(m.join(".regfs/held")).unwrap_or_default().trim(),
        "",
        ".regfs/held after the import"
    );
}

#[test]
fn oci_archive_ref_names_give_tags_and_a_first_unnamed_entry_takes_the_file_name() {
    let src = Source::new();
    let c = &src.c;
    let m = Mount::start(&src.reg.url());

    // No ref names: the first entry is tagged with the file name, the second
    // is pushed by digest only. Made with `tar -C layout .` (members `./…`).
    let layout = src.path("unnamed");
    let mut blobs = image_blobs(&src.v1);
    blobs.extend(image_blobs(&src.host_child));
    write_layout(&layout, &blobs, vec![src.v1.descriptor(), src.host_child.descriptor()]);
    let rel = src.path("rel-2.tar");
    tar_of(&layout, &rel, &["."]);
    let link = cp_upload(&m, &rel, "dst3", None);
    assert_eq!(
        tags(c, "dst3"),
        map(&[("rel-2", &src.v1.digest)]),
        "tags after rel-2.tar\n{}",
        ctx(&m)
    );
    assert_eq!(
        c.manifest_status("dst3", &src.host_child.digest),
        200,
        "second entry by digest"
    );
    assert_eq!(readlink(&link), manifest_link(&src.v1.digest), "_uploads/rel-2.tar");
    skopeo(
        &[
            "copy",
            "--src-tls-verify=false",
            &src.docker_ref("dst3:rel-2"),
            &format!("oci:{}:x", s(&src.path("out3"))),
        ],
        Some(log_path(&m)),
    );

    // The file name must be a valid tag to become one: otherwise the import
    // works and tags nothing.
    let odd = src.path("odd+name.tar");
    fs::copy(&rel, &odd).unwrap();
    let link = cp_upload(&m, &odd, "dst5", None);
    assert_eq!(
        tags(c, "dst5"),
        BTreeMap::new(),
        "an invalid tag from the file name\n{}",
        ctx(&m)
    );
    assert_eq!(readlink(&link), manifest_link(&src.v1.digest), "_uploads/odd+name.tar");
    assert_eq!(c.manifest_status("dst5", &src.v1.digest), 200);

    // rsync writes a temporary `.rel-2.tar.XXXXXX` and renames it: the
    // import happens under the final name, which gives the tag.
    fs::create_dir_all(m.join("dst6")).unwrap();
    let mut cmd = Command::new("rsync");
    cmd.arg(&rel).arg(format!("{}/", s(&m.join("dst6/_uploads"))));
    run_logged(cmd, Some(log_path(&m)));
    assert_eq!(
        tags(c, "dst6"),
        map(&[("rel-2", &src.v1.digest)]),
        "tags after rsync rel-2.tar\n{}",
        ctx(&m)
    );
    assert_eq!(
        readlink(&m.join("dst6/_uploads/rel-2.tar")),
        manifest_link(&src.v1.digest)
    );

    // Ref names: a full reference gives its tag part, a bare tag is used as it
    // is; the file name gives no tag; the link goes to the first entry.
    let layout = src.path("named");
    write_layout(
        &layout,
        &blobs,
        vec![
            named(src.host_child.descriptor(), "registry.example:5000/team/app:v9"),
            named(src.v1.descriptor(), "plain"),
        ],
    );
    let named_tar = src.path("named.tar");
    tar_of(&layout, &named_tar, &["oci-layout", "index.json", "blobs"]);
    let link = cp_upload(&m, &named_tar, "dst4", None);
    assert_eq!(
        tags(c, "dst4"),
        map(&[("v9", &src.host_child.digest), ("plain", &src.v1.digest)]),
        "tags after named.tar\n{}",
        ctx(&m)
    );
    assert_eq!(
        readlink(&link),
        manifest_link(&src.host_child.digest),
        "_uploads/named.tar"
    );
}

// ---------------------------------------------------------------- not archives

#[test]
fn plain_files_and_tars_without_an_image_layout_at_their_root_stay_blob_uploads() {
    let src = Source::new();
    let c = &src.c;
    let m = Mount::start(&src.reg.url());
    let mut cases: Vec<(PathBuf, &str)> = Vec::new();

    let plain = src.path("data.bin");
    fs::write(&plain, random_bytes(200_000)).unwrap();
    cases.push((plain, "a plain file"));

    let files = src.path("files");
    fs::create_dir_all(files.join("b")).unwrap();
    fs::write(files.join("a.txt"), b"a\n").unwrap();
    fs::write(files.join("b/c.txt"), random_bytes(5000)).unwrap();
    let files_tar = src.path("files.tar");
    tar_of(&files, &files_tar, &["a.txt", "b"]);
    cases.push((files_tar, "a tar of plain files"));

    // An image layout one directory down is not at the root.
    let nested = src.path("nested");
    write_layout(
        &nested.join("sub"),
        &image_blobs(&src.v1),
        vec![named(src.v1.descriptor(), "nested")],
    );
    fs::write(nested.join("sub/manifest.json"), b"[]").unwrap();
    let nested_tar = src.path("nested.tar");
    tar_of(&nested, &nested_tar, &["sub"]);
    cases.push((nested_tar, "a tar with the layout under sub/"));

    for (path, what) in &cases {
        let bytes = fs::read(path).unwrap();
        let digest = sha256_digest(&bytes);
        let link = cp_upload(&m, path, "plain", None);
        assert_eq!(readlink(&link), format!("../_blobs/{digest}"), "{what}: _uploads link");
        assert_bytes_eq(&c.get_blob("plain", &digest), &bytes, what);
    }
    assert_eq!(tags(c, "plain"), BTreeMap::new(), "no tags from plain uploads");
}

// ---------------------------------------------------------------- broken archives

/// Writes `archive` to `repo/_uploads/<name>` and expects close(2) to fail
/// with `errno`; also `cp` to another name must exit non-zero. Nothing may
/// be tagged, and the name must not link to a manifest.
fn expect_import_error(m: &Mount, c: &RegistryClient, archive: &Path, repo: &str, name: &str, errno: i32) {
    fs::create_dir_all(m.join(repo)).unwrap();
    let dst = m.join(format!("{repo}/_uploads/{name}"));
    let got = write_in_child(archive, &dst);
    assert!(
        matches!(&got, Err((step, e)) if step == "close" && *e == errno),
        "writing {name} into {repo}/_uploads/: expected close(2) to fail with errno {errno}, got {got:?}\n{}",
        ctx(m)
    );
    let mut cmd = Command::new("cp");
    cmd.arg(archive).arg(m.join(format!("{repo}/_uploads/cp-{name}")));
    let out = run_watched(cmd);
    assert!(
        !out.status.success(),
        "cp {name} into {repo}/_uploads/ exited 0\n{}",
        ctx(m)
    );
    assert_eq!(tags(c, repo), BTreeMap::new(), "{name}: no tag in {repo}\n{}", ctx(m));
    for n in [name.to_string(), format!("cp-{name}")] {
        if let Ok(t) = fs::read_link(m.join(format!("{repo}/_uploads/{n}"))) {
            assert!(
                !t.to_string_lossy().starts_with("../_manifests/"),
                "{repo}/_uploads/{n} links to {} after a failed import",
                t.display()
            );
        }
    }
}

#[test]
fn malformed_docker_archive_manifest_fails_close_with_einval_and_tags_nothing() {
    let src = Source::new();
    let m = Mount::start(&src.reg.url());

    // manifest.json that is not JSON.
    let tree = src.path("notjson");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("manifest.json"), b"this is not JSON {").unwrap();
    fs::write(tree.join("layer.tar"), random_bytes(4096)).unwrap();
    let bad = src.path("bad.tar");
    tar_of(&tree, &bad, &["manifest.json", "layer.tar"]);
    expect_import_error(&m, &src.c, &bad, "bad", "bad.tar", libc::EINVAL);

    // manifest.json naming a layer the archive does not hold.
    let tree = src.path("nolayer");
    fs::create_dir_all(&tree).unwrap();
    let config = &src.v1.config.bytes;
    fs::write(tree.join("config.json"), config).unwrap();
    fs::write(
        tree.join("manifest.json"),
        serde_json::to_vec(
            &json!([{"Config": "config.json", "RepoTags": ["team/app:v1"], "Layers": ["missing/layer.tar"]}]),
        )
        .unwrap(),
    )
    .unwrap();
    let nolayer = src.path("nolayer.tar");
    tar_of(&tree, &nolayer, &["manifest.json", "config.json"]);
    expect_import_error(&m, &src.c, &nolayer, "bad2", "nolayer.tar", libc::EINVAL);
}

#[test]
fn oci_archive_whose_index_lacks_a_child_manifest_fails_close_with_eio_and_tags_nothing() {
    let src = Source::new();
    let m = Mount::start(&src.reg.url());
    // The index and everything but the host child's manifest (its config and
    // layers are there): the index cannot be pushed.
    let mut blobs = vec![src.index.manifest.clone()];
    blobs.extend(image_blobs(&src.other_child));
    blobs.extend(image_blobs(&src.host_child).into_iter().skip(1));
    let layout = src.path("nochild");
    let index_desc = json!({"mediaType": OCI_INDEX, "digest": src.index.digest, "size": src.index.manifest.len()});
    write_layout(&layout, &blobs, vec![named(index_desc, "multi")]);
    let tar = src.path("nochild.tar");
    tar_of(&layout, &tar, &["oci-layout", "index.json", "blobs"]);
    expect_import_error(&m, &src.c, &tar, "broken", "nochild.tar", libc::EIO);
    // (The index stays listed in `.regfs/held`: it would be pushed, untagged,
    // if its missing child arrived later through this mount. Not asserted.)
}

/// v1's config and layers in an OCI archive whose `index.json` names v1's
/// manifest, which the archive lacks (and the registry does not have).
fn import_archive_lacking_the_named_manifest(errno: i32) {
    let src = Source::new();
    let m = Mount::start(&src.reg.url());
    let blobs: Vec<Vec<u8>> = image_blobs(&src.v1).into_iter().skip(1).collect();
    let layout = src.path("nomanifest");
    write_layout(&layout, &blobs, vec![named(src.v1.descriptor(), "v1")]);
    let tar = src.path("nomanifest.tar");
    tar_of(&layout, &tar, &["oci-layout", "index.json", "blobs"]);
    expect_import_error(&m, &src.c, &tar, "broken2", "nomanifest.tar", errno);
}

/// The archive names a manifest it does not carry (and the registry does not
/// have): close fails with EIO, as for an index lacking a child above, and
/// nothing is tagged. (One errno, not "any errno": a variant that accepted
/// any failure is gone.)
#[test]
fn oci_archive_whose_index_json_names_a_manifest_it_lacks_fails_close_with_eio_and_tags_nothing() {
    import_archive_lacking_the_named_manifest(libc::EIO);
}

// ---------------------------------------------------------------- no blob pushed twice

#[test]
fn importing_into_a_repository_that_has_the_blobs_uploads_no_blob_bytes() {
    let src = Source::new();
    let c = &src.c;
    let app_tar = src.docker_archive();
    let multi_tar = src.oci_archive();
    let m = Mount::start(&src.reg.url());

    // First import: the archive's layers are uncompressed (new digests) and are
    // uploaded; its config is in the registry already (in `src`, where the
    // archive came from), so regfs finds it through the catalog and mounts it.
    cp_upload(&m, &app_tar, "dst", None);
    let first = m.stat("bytes_pushed");
    let (bytes, _, _) = c.get_manifest("dst", "v7");
    let manifest: Value = serde_json::from_slice(&bytes).unwrap();
    let config_size = manifest["config"]["size"].as_u64().unwrap();
    assert_eq!(
        first,
        manifest_blob_bytes(&manifest) - config_size,
        "first import: the layers are uploaded, the config mounted from src\n{}",
        ctx(&m)
    );
    let digest = tags(c, "dst")["v7"].clone();

    // The same archive again into the same repository: the registry has every blob.
    let link = cp_upload(&m, &app_tar, "dst", Some("again.tar"));
    assert_eq!(readlink(&link), manifest_link(&digest), "_uploads/again.tar");
    assert_eq!(
        m.stat("bytes_pushed") - first,
        0,
        "re-import into the same repository uploaded blob bytes\n{}",
        ctx(&m)
    );

    // Into another repository: mounted from dst (or skipped), not uploaded.
    let before = m.stat("bytes_pushed");
    cp_upload(&m, &app_tar, "other", None);
    assert_eq!(tags(c, "other"), map(&[("v7", &digest), ("stable", &digest)]));
    assert_eq!(
        m.stat("bytes_pushed") - before,
        0,
        "import into another repository uploaded blob bytes (cross-repository mount expected)\n{}",
        ctx(&m)
    );

    // The multi-platform archive into the source repository itself, which
    // holds every blob already (regfs never pushed them).
    let before = m.stat("bytes_pushed");
    let link = cp_upload(&m, &multi_tar, "src", Some("multi-again.tar"));
    assert_eq!(readlink(&link), manifest_link(&src.index.digest));
    assert_eq!(tags(c, "src")["multi"], src.index.digest);
    assert_eq!(
        m.stat("bytes_pushed") - before,
        0,
        "import into the source repository uploaded blob bytes\n{}",
        ctx(&m)
    );
}

// ---------------------------------------------------------------- layers pushed while the archive is written (issue 13)

/// A `docker save` archive made by GNU tar: `manifest.json`, `config.json`,
/// then `<diff_id hex>/layer.tar` per layer (each a real tar of one file of
/// random bytes, `sizes[i]` long). Returns the archive and the layers' digests.
fn layered_docker_archive(src: &Source, name: &str, tag: &str, sizes: &[usize]) -> (PathBuf, Vec<String>, Vec<u8>) {
    let tree = src.path(&format!("{name}-tree"));
    fs::create_dir_all(&tree).unwrap();
    let mut diff_ids = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let root = src.path(&format!("{name}-layer{i}"));
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join(format!("data{i}.bin")), random_bytes(*size)).unwrap();
        let layer = src.path(&format!("{name}-layer{i}.tar"));
        tar_of(&root, &layer, &[&format!("data{i}.bin")]);
        let bytes = fs::read(&layer).unwrap();
        let d = sha256_digest(&bytes);
        fs::create_dir_all(tree.join(&d[7..])).unwrap();
        fs::write(tree.join(&d[7..]).join("layer.tar"), &bytes).unwrap();
        diff_ids.push(d);
    }
    let config = serde_json::to_vec(&json!({
        "architecture": host_arch(), "os": "linux",
        "config": {"Labels": {"made-by": "regfs-early-test"}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    fs::write(tree.join("config.json"), &config).unwrap();
    let layers: Vec<String> = diff_ids.iter().map(|d| format!("{}/layer.tar", &d[7..])).collect();
    let manifest = json!([{"Config": "config.json", "RepoTags": [format!("team/app:{tag}")], "Layers": layers}]);
    fs::write(tree.join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    let out = src.path(&format!("{name}.tar"));
    let mut members = vec!["manifest.json".to_string(), "config.json".to_string()];
    members.extend(diff_ids.iter().map(|d| d[7..].to_string()));
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    tar_of(&tree, &out, &members);
    (out, diff_ids, config)
}

/// Where member `name`'s bytes start in `tar` (read with the tar crate).
fn member_offset(tar: &Path, name: &str) -> u64 {
    let mut a = tar::Archive::new(fs::File::open(tar).unwrap());
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        if e.path().unwrap().to_string_lossy() == name {
            return e.raw_file_position();
        }
    }
    panic!("{} has no member {name}", tar.display())
}

/// A python3 child that writes `src` to `dst` as told by `how`: `pause:N`
/// writes bytes [0, N), prints `paused`, waits for a line on stdin, then
/// writes the rest; `backwards:N` writes [N, end) first, then [0, N). Then it
/// closes and prints `ok`, or the failing step and its errno.
fn start_writer(src: &Path, dst: &Path, how: &str) -> std::process::Child {
    const SCRIPT: &str = r#"
import os, sys
data = open(sys.argv[1], 'rb').read()
mode, n = sys.argv[3].split(':'); n = int(n)
def write_at(fd, off, view):
    while view:
        k = os.pwrite(fd, view, off)
        view = view[k:]; off += k
step = 'open'
try:
    fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    step = 'write'
    if mode == 'pause':
        write_at(fd, 0, memoryview(data)[:n])
        print('paused', flush=True)
        sys.stdin.readline()
        write_at(fd, n, memoryview(data)[n:])
    else:
        write_at(fd, n, memoryview(data)[n:])
        write_at(fd, 0, memoryview(data)[:n])
    step = 'close'
    os.close(fd)
except OSError as e:
    print(step, e.errno, flush=True)
    sys.exit(0)
print('ok', flush=True)
"#;
    Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(src)
        .arg(dst)
        .arg(how)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3")
}

fn read_line(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let out = child.stdout.as_mut().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(out).read_line(&mut line).unwrap();
    line.trim().to_string()
}

fn blob_status(c: &RegistryClient, repo: &str, digest: &str) -> u16 {
    c.send(
        reqwest::Method::HEAD,
        &format!("/v2/{repo}/blobs/{digest}"),
        reqwest::header::HeaderMap::new(),
        None,
    )
    .status()
    .as_u16()
}

/// The image an archive from `layered_docker_archive` became in `repo:tag`:
/// its layers are the archive's, byte for byte (skopeo pulls and checks them).
fn assert_layered_image(m: &Mount, src: &Source, repo: &str, tag: &str, diff_ids: &[String], config: &[u8]) {
    let c = &src.c;
    let got = tags(c, repo);
    let digest = got
        .get(tag)
        .unwrap_or_else(|| panic!("no {repo}:{tag}; tags {got:?}\n{}", ctx(m)))
        .clone();
    let (bytes, _, _) = c.get_manifest(repo, tag);
    let manifest: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(manifest["config"]["digest"], sha256_digest(config), "config digest");
    let layers: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(layers, diff_ids, "layer digests of {repo}:{tag}");
    let inspect = skopeo_inspect(&src.docker_ref(&format!("{repo}:{tag}")), Some(log_path(m)));
    assert_eq!(inspect["Digest"], digest, "skopeo inspect Digest");
    assert_eq!(inspect["Labels"]["made-by"], "regfs-early-test");
    let dir = src.path(&format!("pulled-{}-{tag}", repo.replace('/', "-")));
    skopeo(
        &[
            "copy",
            "--src-tls-verify=false",
            &src.docker_ref(&format!("{repo}:{tag}")),
            &format!("dir:{}", s(&dir)),
        ],
        Some(log_path(m)),
    );
    for d in diff_ids {
        let layer = fs::read(dir.join(&d[7..])).unwrap_or_else(|e| panic!("pulled layer {d}: {e}"));
        assert_eq!(sha256_digest(&layer), *d, "pulled layer");
    }
}

#[test]
fn docker_archive_layers_are_pushed_while_the_archive_is_still_being_written() {
    let src = Source::new();
    let c = &src.c;
    let sizes = [3 << 20, 2 << 20, 1 << 20];
    let (archive, diff_ids, config) = layered_docker_archive(&src, "early", "early", &sizes);
    // Pause a megabyte into the second layer: the first is whole, the third unseen.
    let split = member_offset(&archive, &format!("{}/layer.tar", &diff_ids[1][7..])) + (1 << 20);
    let m = Mount::start(&src.reg.url());
    fs::create_dir_all(m.join("early")).unwrap();
    let dst = m.join("early/_uploads/image.tar");
    let mut writer = start_writer(&archive, &dst, &format!("pause:{split}"));
    assert_eq!(read_line(&mut writer), "paused");

    // While the writer holds the file open, mid-archive: the first layer
    // reaches the registry (a loose bound: the push takes well under a second here).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while blob_status(c, "early", &diff_ids[0]) != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first layer is not in the registry 60 s after it was written, the archive still open\n{}",
            ctx(&m)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        blob_status(c, "early", &diff_ids[2]),
        404,
        "the third layer, not written yet, is not in the registry"
    );
    assert_eq!(tags(c, "early"), BTreeMap::new(), "nothing is tagged before the close");

    use std::io::Write;
    writer.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(read_line(&mut writer), "ok", "the writer's close\n{}", ctx(&m));
    writer.wait().unwrap();
    assert_layered_image(&m, &src, "early", "early", &diff_ids, &config);
    let layer_bytes: u64 = diff_ids
        .iter()
        .map(|d| {
            fs::metadata(src.path("early-tree").join(&d[7..]).join("layer.tar"))
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(
        m.stat("bytes_pushed"),
        layer_bytes + config.len() as u64,
        "every layer and the config uploaded once\n{}",
        ctx(&m)
    );
    let log = fs::read_to_string(log_path(&m)).unwrap();
    assert_eq!(
        log.matches("archive member pushed while the archive is written")
            .count(),
        3,
        "each layer pushed early, once\n{}",
        ctx(&m)
    );
}

#[test]
fn an_archive_written_out_of_order_is_imported_on_close_as_before() {
    let src = Source::new();
    let (archive, diff_ids, config) = layered_docker_archive(&src, "backwards", "back", &[2 << 20, 1 << 20]);
    let split = member_offset(&archive, &format!("{}/layer.tar", &diff_ids[1][7..])) + 4096;
    let m = Mount::start(&src.reg.url());
    fs::create_dir_all(m.join("back")).unwrap();
    let mut writer = start_writer(
        &archive,
        &m.join("back/_uploads/image.tar"),
        &format!("backwards:{split}"),
    );
    assert_eq!(read_line(&mut writer), "ok", "the writer's close\n{}", ctx(&m));
    writer.wait().unwrap();
    assert_layered_image(&m, &src, "back", "back", &diff_ids, &config);
    let log = fs::read_to_string(log_path(&m)).unwrap();
    assert_eq!(
        log.matches("archive member pushed while the archive is written")
            .count(),
        0,
        "nothing pushed early from a file written out of order\n{}",
        ctx(&m)
    );
}

#[test]
fn an_oci_archive_whose_layer_does_not_hash_to_its_name_fails_close_with_eio_and_tags_nothing() {
    let src = Source::new();
    // A layer large enough to be pushed while the archive is written.
    let layer = random_bytes(5 << 20);
    let config = serde_json::to_vec(&json!({"architecture": host_arch(), "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&layer)]}}))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(&config), "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER_TAR, "digest": sha256_digest(&layer), "size": layer.len()}],
    }))
    .unwrap();
    let desc = json!({"mediaType": OCI_MANIFEST, "digest": sha256_digest(&manifest), "size": manifest.len()});
    let layout = src.path("corrupt");
    write_layout(&layout, &[manifest, config, layer.clone()], vec![named(desc, "v1")]);
    // One byte of the layer changed under its name.
    let path = layout.join("blobs/sha256").join(sha256_hex(&layer));
    let mut bytes = fs::read(&path).unwrap();
    bytes[1 << 20] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let tar = src.path("corrupt.tar");
    tar_of(&layout, &tar, &["oci-layout", "index.json", "blobs"]);
    let m = Mount::start(&src.reg.url());
    expect_import_error(&m, &src.c, &tar, "corrupt", "corrupt.tar", libc::EIO);
    assert_eq!(
        blob_status(&src.c, "corrupt", &sha256_digest(&layer)),
        404,
        "the layer is not in the registry"
    );
    assert_eq!(
        blob_status(&src.c, "corrupt", &sha256_digest(&bytes)),
        404,
        "nor are the corrupt bytes"
    );
    let log = fs::read_to_string(log_path(&m)).unwrap();
    assert!(
        log.contains(&format!(
            "blobs/sha256/{} hashes to {}",
            sha256_hex(&layer),
            sha256_digest(&bytes)
        )),
        "the log names the member and what it hashes to\n{}",
        ctx(&m)
    );
}
