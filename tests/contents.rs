//! Image contents (issue 11): `rootfs/` of image manifests and
//! `<repo>/_layers/sha256:<hex>/`, against a real `docker-registry`, through
//! a real mount. Layers are made with GNU tar and gzip from directories built
//! in the test (symlinks, hard links, fifos, setuid, owners, long names,
//! whiteouts, opaque directories); the witness is the same image copied with
//! `skopeo` and unpacked with `umoci unpack`, compared with `diff -r` and
//! `find -printf`.
//!
//! Contract: README.md, "Image contents", and docs/contents.md.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::backup::{host_arch, run_ok, RealLayer};
use common::client::OCI_CONFIG;
use common::files::find_printf;
use common::*;

const MTIME: &str = "@1700000000";

/// A layer made by GNU tar from the directory `dir` (all of it, `./` first).
fn layer_of(dir: &Path) -> RealLayer {
    let tar = tar_of(dir);
    let gz = pipe("gzip", &["-n", "-c"], &tar);
    RealLayer {
        gz,
        diff_id: sha256_digest(&tar),
    }
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn mkdirs(root: &Path, rel: &str) {
    fs::create_dir_all(root.join(rel)).unwrap();
}

/// Three layers exercising every rule.
fn layers(work: &Path) -> Vec<RealLayer> {
    let l1 = work.join("l1");
    write(&l1, "etc/os-release", b"ID=one\n");
    write(&l1, "etc/keep", b"kept until layer 3\n");
    write(&l1, "etc/gone", b"deleted by layer 2\n");
    write(&l1, "bin/tool", &random_bytes(300_000));
    fs::set_permissions(l1.join("bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::chown(l1.join("bin/tool"), Some(1234), Some(5678)).unwrap();
    run_ok(
        Command::new("setfattr")
            .args(["-n", "user.comment", "-v", "hello"])
            .arg(l1.join("bin/tool")),
    );
    write(&l1, "opq/lower", b"hidden by the opaque marker\n");
    write(&l1, "opq/sub/deep", b"hidden too\n");
    write(&l1, "usr/lib/libc.so", b"libc\n");
    std::os::unix::fs::symlink("usr/lib", l1.join("lib")).unwrap();
    std::os::unix::fs::symlink("/etc/os-release", l1.join("abs")).unwrap();
    std::os::unix::fs::symlink("nowhere/at/all", l1.join("dangling")).unwrap();
    write(&l1, "usr/lib/hard1", b"one file, two names\n");
    fs::hard_link(l1.join("usr/lib/hard1"), l1.join("etc/hard2")).unwrap();
    mkdirs(&l1, "run");
    run_ok(Command::new("mkfifo").arg(l1.join("run/fifo")));
    mkdirs(&l1, "private");
    fs::set_permissions(l1.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    let long = format!("{}/{}", "d".repeat(110), "f".repeat(120));
    write(&l1, &long, b"a long name\n");

    let l2 = work.join("l2");
    write(&l2, "etc/os-release", b"ID=two\n");
    write(&l2, "etc/.wh.gone", b"");
    write(&l2, "opq/.wh..wh..opq", b"");
    write(&l2, "opq/new", b"added next to the opaque marker\n");
    write(&l2, "usr/lib/libz.so", b"libz\n");

    let l3 = work.join("l3");
    write(&l3, "etc/.wh.keep", b"");
    write(&l3, "data/big", &random_bytes(3 << 20));
    vec![layer_of(&l1), layer_of(&l2), layer_of(&l3)]
}

/// The errno of a failed call (panics if it succeeded).
fn err<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => panic!("the call succeeded"),
        Err(e) => errno_of(&e),
    }
}

#[test]
fn rootfs_is_the_layers_applied_in_order_as_umoci_unpacks_them() {
    let reg = Registry::start();
    let c = reg.client();
    let work = tempfile::tempdir().unwrap();
    let layers = layers(work.path());
    let refs: Vec<&RealLayer> = layers.iter().collect();
    let img = c.push_real_image("shop/app", Some("v1"), OCI_MANIFEST, host_arch(), None, &refs);

    // The witness: skopeo copy + umoci unpack of the same image.
    let layout = work.path().join("layout");
    let host = reg.url().trim_start_matches("http://").to_string();
    run_ok(Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{host}/shop/app:v1"),
        &format!("oci:{}:v1", layout.display()),
    ]));
    let bundle = work.path().join("bundle");
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:v1", layout.display()))
            .arg(&bundle),
    );
    let expected = bundle.join("rootfs");

    let m = Mount::start(&reg.url());
    let rootfs = m.join("shop/app/_tags/v1/rootfs");
    assert_eq!(fs::read_to_string(rootfs.join("etc/os-release")).unwrap(), "ID=two\n");
    // (diff cannot compare fifos; find below checks the fifo's type and mode.)
    let diff = Command::new("diff")
        .args(["-r", "--no-dereference", "-x", "fifo"])
        .arg(&expected)
        .arg(&rootfs)
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "diff -r umoci rootfs vs regfs rootfs:\n{}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
    // Metadata: type, mode, owner, size (not for directories) and link target of every entry.
    let non_dirs = "%y %m %U %G %s %l %p\n";
    let strip = |lines: Vec<String>, root: &Path| -> Vec<String> {
        lines
            .into_iter()
            .map(|l| l.replace(&root.display().to_string(), ""))
            .collect()
    };
    assert_eq!(
        strip(find_printf(&rootfs, &["!", "-type", "d"], non_dirs), &rootfs),
        strip(find_printf(&expected, &["!", "-type", "d"], non_dirs), &expected)
    );
    let dirs = "%y %m %U %G %p\n";
    assert_eq!(
        strip(find_printf(&rootfs, &["-type", "d"], dirs), &rootfs),
        strip(find_printf(&expected, &["-type", "d"], dirs), &expected)
    );
    // Directory entries carry the type too (find -type reads it from readdir).
    assert_eq!(find_printf(&rootfs, &["-type", "p"], "%P\n"), ["run/fifo"]);
    // mtimes from the tar headers.
    assert_eq!(
        fs::symlink_metadata(rootfs.join("bin/tool")).unwrap().mtime(),
        1_700_000_000
    );
    // PAX xattrs (GNU tar --xattrs: SCHILY.xattr.*) through getxattr/listxattr.
    assert_eq!(xattr_str(&rootfs.join("bin/tool"), "user.comment"), "hello");
    assert_eq!(list_xattrs(&rootfs.join("bin/tool")).unwrap(), ["user.comment"]);
    // Whiteouts and opaque directories.
    for gone in [
        "etc/gone",
        "etc/keep",
        "opq/lower",
        "opq/sub",
        "etc/.wh.gone",
        "opq/.wh..wh..opq",
    ] {
        assert_eq!(err(fs::symlink_metadata(rootfs.join(gone))), libc::ENOENT, "{gone}");
    }
    assert!(rootfs.join("opq/new").exists());
    // Hard links are one inode; a file through a symlinked directory is the same file.
    let a = fs::metadata(rootfs.join("usr/lib/hard1")).unwrap();
    let b = fs::metadata(rootfs.join("etc/hard2")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    assert_eq!(fs::read(rootfs.join("lib/libz.so")).unwrap(), b"libz\n");
    assert_eq!(
        sha256_hex(&fs::read(rootfs.join("data/big")).unwrap()),
        sha256_hex(&fs::read(expected.join("data/big")).unwrap())
    );

    // Reachable by name, not listed.
    let mdir = m.join(format!("shop/app/_manifests/{}", img.digest));
    assert!(!list_dir(&mdir).unwrap().contains(&"rootfs".to_string()));
    assert!(!list_dir(&m.join("shop/app")).unwrap().contains(&"_layers".to_string()));

    // One layer's own tree shows its whiteouts as files.
    let l2 = m.join(format!("shop/app/_layers/{}", img.layers[1].digest));
    assert_eq!(list_dir(&l2.join("etc")).unwrap(), [".wh.gone", "os-release"]);
    assert_eq!(fs::metadata(l2.join("opq/.wh..wh..opq")).unwrap().len(), 0);
    // The same layer entry is the same inode in the layer's tree and in the image's.
    let in_layer = fs::metadata(l2.join("usr/lib/libz.so")).unwrap().ino();
    assert_eq!(fs::metadata(rootfs.join("usr/lib/libz.so")).unwrap().ino(), in_layer);

    // Read-only.
    assert_eq!(err(fs::write(rootfs.join("etc/new"), b"x")), libc::EROFS);
    assert_eq!(err(fs::create_dir(rootfs.join("newdir"))), libc::EROFS);
    assert_eq!(err(fs::remove_file(rootfs.join("etc/os-release"))), libc::EROFS);
    assert_eq!(
        err(fs::OpenOptions::new().write(true).open(rootfs.join("etc/os-release"))),
        libc::EROFS
    );
    // Each refusal is reported like any failure: counted, and named in `.regfs/errors`.
    let errors = fs::read_to_string(m.join(".regfs/errors")).unwrap();
    let refused: Vec<&str> = errors
        .lines()
        .filter(|l| l.contains("image contents are read-only"))
        .collect();
    assert_eq!(refused.len(), 4, "{errors}");
    // Each names the repository, the image (or the layer a file comes from)
    // and the path inside it: a path of this mount that reaches that entry.
    let image = format!("/shop/app/_manifests/{}/rootfs", img.digest);
    let layer2 = format!("/shop/app/_layers/{}", img.layers[1].digest);
    for (i, want) in [
        format!("create {image}/etc/new: "),
        format!("mkdir {image}/newdir: "),
        format!("unlink {image}/etc/os-release: "),
        format!("open {layer2}/etc/os-release: "),
    ]
    .iter()
    .enumerate()
    {
        assert!(refused[i].contains(want.as_str()), "{want:?} in {:?}", refused[i]);
    }
    assert!(m.log().contains(&format!("path=\"{image}/etc/new\"")), "{}", m.log());
    assert!(
        !m.log().contains("image contents: "),
        "no log line names a node by number: {}",
        m.log()
    );
    // The index was kept in the cache dir, small next to the layers.
    let kept: u64 = fs::read_dir(m.cache_dir().join("contents"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(kept > 0 && kept < 200_000, "{kept} bytes of indexes");
}

#[test]
fn a_small_read_after_the_blob_left_the_cache_fetches_one_span_not_the_layer() {
    let reg = Registry::start();
    let c = reg.client();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("l");
    for i in 0..24 {
        write(&dir, &format!("data/f{i:02}"), &random_bytes(1 << 20));
    }
    write(&dir, "data/f12-small", b"small file in the middle\n");
    let layer = layer_of(&dir);
    assert!(layer.gz.len() > 24 << 20);
    let img = c.push_real_image("shop/big", Some("v1"), OCI_MANIFEST, host_arch(), None, &[&layer]);
    let cache = work.path().join("cache");
    fs::create_dir_all(&cache).unwrap();
    {
        let m = Mount::builder(&reg.url()).cache_dir(&cache).start();
        let listing = list_dir(&m.join("shop/big/_tags/v1/rootfs/data")).unwrap();
        assert_eq!(listing.len(), 25);
    }
    // The blob leaves the cache; the index stays.
    let hex = img.layers[0].digest.trim_start_matches("sha256:");
    let _ = fs::remove_file(cache.join("blobs/sha256").join(hex));
    assert!(cache.join("contents").join(format!("{hex}.idx")).exists());
    let m = Mount::builder(&reg.url()).cache_dir(&cache).start();
    let before = m.stat("bytes_fetched");
    assert_eq!(
        fs::read(m.join("shop/big/_tags/v1/rootfs/data/f12-small")).unwrap(),
        b"small file in the middle\n"
    );
    let fetched = m.stat("bytes_fetched") - before;
    eprintln!(
        "one small file read with the blob evicted: {fetched} bytes fetched of a {} byte layer",
        layer.gz.len()
    );
    assert!(fetched > 0, "the file came from the registry");
    assert!(
        fetched <= 10 << 20,
        "fetched {fetched} bytes of a {} byte layer",
        layer.gz.len()
    );
}

#[test]
fn an_index_rootfs_is_a_link_to_this_platforms_child() {
    let reg = Registry::start();
    let c = reg.client();
    let work = tempfile::tempdir().unwrap();
    let here = work.path().join("here");
    write(&here, "etc/os-release", b"ID=host\n");
    let there = work.path().join("there");
    write(&there, "etc/os-release", b"ID=other\n");
    let other_arch = if host_arch() == "s390x" { "amd64" } else { "s390x" };
    let (lh, lt) = (layer_of(&here), layer_of(&there));
    let host_img = c.push_real_image("shop/multi", None, OCI_MANIFEST, host_arch(), None, &[&lh]);
    let other_img = c.push_real_image("shop/multi", None, OCI_MANIFEST, other_arch, None, &[&lt]);
    c.push_index(
        "shop/multi",
        "latest",
        IndexKind::Oci,
        &[
            (&other_img, Platform::new("linux", other_arch, None)),
            (&host_img, Platform::new("linux", host_arch(), None)),
        ],
    );
    let m = Mount::start(&reg.url());
    let link = m.join("shop/multi/_tags/latest/rootfs");
    assert_eq!(
        fs::read_link(&link).unwrap().to_str().unwrap(),
        format!("manifests/linux-{}/rootfs", host_arch())
    );
    assert_eq!(fs::read(link.join("etc/os-release")).unwrap(), b"ID=host\n");
    let other = m.join(format!(
        "shop/multi/_tags/latest/manifests/linux-{other_arch}/rootfs/etc/os-release"
    ));
    assert_eq!(fs::read(other).unwrap(), b"ID=other\n");
}

#[test]
fn bad_layers_never_break_the_mount_and_a_corrupted_span_reads_as_eio() {
    let reg = Registry::start();
    let c = reg.client();
    let work = tempfile::tempdir().unwrap();
    // An image whose second layer is not a tar at all (nor gzip): the rest still shows.
    let good = work.path().join("good");
    write(&good, "etc/os-release", b"ID=good\n");
    let junk = RealLayer {
        gz: random_bytes(10_000),
        diff_id: sha256_digest(b"junk"),
    };
    c.push_real_image(
        "shop/bad",
        Some("junk"),
        OCI_MANIFEST,
        host_arch(),
        None,
        &[&layer_of(&good), &junk],
    );

    // An image with a 12 MiB layer of incompressible files, for the corruption below.
    let dir = work.path().join("big");
    for i in 0..12 {
        write(&dir, &format!("data/f{i:02}"), &random_bytes(1 << 20));
    }
    let big = layer_of(&dir);
    let img = c.push_real_image("shop/bad", Some("big"), OCI_MANIFEST, host_arch(), None, &[&big]);
    let cache = work.path().join("cache");
    fs::create_dir_all(&cache).unwrap();
    {
        let m = Mount::builder(&reg.url()).cache_dir(&cache).start();
        let root = m.join("shop/bad/_tags/junk/rootfs");
        assert_eq!(list_dir(&root).unwrap(), ["etc"]);
        assert_eq!(fs::read(root.join("etc/os-release")).unwrap(), b"ID=good\n");
        let junk_tree = m.join(format!("shop/bad/_layers/{}", junk.digest()));
        assert_eq!(
            list_dir(&junk_tree).unwrap(),
            Vec::<String>::new(),
            "a layer that is not a tar is empty"
        );
        assert_eq!(list_dir(&m.join("shop/bad/_tags/big/rootfs/data")).unwrap().len(), 12);
    }
    // The blob leaves the cache, and the registry's copy gets one byte flipped late in the blob.
    let hex = img.layers[0].digest.trim_start_matches("sha256:").to_string();
    let _ = fs::remove_file(cache.join("blobs/sha256").join(&hex));
    let data = reg
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(&hex)
        .join("data");
    let mut bytes = fs::read(&data).unwrap();
    let at = bytes.len() * 9 / 10;
    bytes[at] ^= 0x55;
    fs::write(&data, &bytes).unwrap();

    let m = Mount::builder(&reg.url()).cache_dir(&cache).start();
    let files = m.join("shop/bad/_tags/big/rootfs/data");
    // Far from the damage: exact bytes. Over it: EIO, never wrong bytes.
    let first = fs::read(files.join("f00")).unwrap();
    assert_eq!(sha256_hex(&first), sha256_hex(&fs::read(dir.join("data/f00")).unwrap()));
    assert_eq!(err(fs::read(files.join("f11"))), libc::EIO);
    assert!(m.is_mounted());
    assert_eq!(
        fs::read(m.join("shop/bad/_tags/junk/rootfs/etc/os-release")).unwrap(),
        b"ID=good\n"
    );
}

// ---------------------------------------------------------------- other layer kinds, laziness, bad layers

const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";

/// A layer blob as pushed: bytes, media type, the digest of its tar, annotations.
struct Blob {
    bytes: Vec<u8>,
    media_type: &'static str,
    diff_id: String,
    annotations: Option<serde_json::Value>,
}

impl Blob {
    fn digest(&self) -> String {
        sha256_digest(&self.bytes)
    }
    fn hex(&self) -> String {
        self.digest().trim_start_matches("sha256:").to_string()
    }
}

/// GNU tar of all of `dir` (sorted, numeric owners, fixed mtime, user xattrs).
fn tar_of(dir: &Path) -> Vec<u8> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    run_ok(
        Command::new("tar")
            .args([
                "--sort=name",
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=user.*",
                "--mtime",
                MTIME,
                "-C",
            ])
            .arg(dir)
            .args(["-cf", "-", "."]),
    )
    .stdout
}

/// `prog args… < bytes` (a real compressor), its stdout.
fn pipe(prog: &str, args: &[&str], bytes: &[u8]) -> Vec<u8> {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    fs::write(tmp.path(), bytes).unwrap();
    run_ok(Command::new(prog).args(args).arg(tmp.path())).stdout
}

fn gzip_blob(tar: Vec<u8>) -> Blob {
    Blob {
        bytes: pipe("gzip", &["-n", "-c"], &tar),
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
        diff_id: sha256_digest(&tar),
        annotations: None,
    }
}

/// Pushes an OCI image of `layers` (bottom first) under `repo:tag`; returns the manifest digest.
fn push_layers(c: &RegistryClient, repo: &str, tag: &str, layers: &[&Blob]) -> String {
    let reals: Vec<RealLayer> = layers
        .iter()
        .map(|b| RealLayer {
            gz: Vec::new(),
            diff_id: b.diff_id.clone(),
        })
        .collect();
    let refs: Vec<&RealLayer> = reals.iter().collect();
    let config = common::backup::real_image_config(host_arch(), None, &random_hex(6), &refs);
    let config_digest = c.push_blob(repo, &config);
    let mut descriptors = Vec::new();
    for b in layers {
        assert_eq!(c.push_blob(repo, &b.bytes), b.digest());
        let mut d = serde_json::json!({"mediaType": b.media_type, "digest": b.digest(), "size": b.bytes.len()});
        if let Some(a) = &b.annotations {
            d["annotations"] = a.clone();
        }
        descriptors.push(d);
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": descriptors,
    });
    let bytes = serde_json::to_vec_pretty(&manifest).unwrap();
    c.push_manifest(repo, tag, OCI_MANIFEST, &bytes);
    sha256_digest(&bytes)
}

/// The witness: `skopeo copy` of `repo:tag` into an OCI layout, `umoci unpack` of it; its rootfs.
fn umoci_rootfs(reg: &Registry, repo: &str, tag: &str, work: &Path) -> std::path::PathBuf {
    let layout = work.join(format!("layout-{tag}"));
    run_ok(Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}/{repo}:{tag}", reg.host_port()),
        &format!("oci:{}:{tag}", layout.display()),
    ]));
    let bundle = work.join(format!("bundle-{tag}"));
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:{tag}", layout.display()))
            .arg(&bundle),
    );
    bundle.join("rootfs")
}

/// `diff -r` and `find -printf` (type, mode, owner, size, mtime, link target) of two trees agree.
fn assert_same_tree(expected: &Path, actual: &Path, exclude: &[&str]) {
    let mut cmd = Command::new("diff");
    cmd.args(["-r", "--no-dereference"]);
    for x in exclude {
        cmd.args(["-x", x]);
    }
    let diff = cmd.arg(expected).arg(actual).output().unwrap();
    assert!(
        diff.status.success(),
        "diff -r {} {}:\n{}{}",
        expected.display(),
        actual.display(),
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
    let strip = |lines: Vec<String>, root: &Path| -> Vec<String> {
        lines
            .into_iter()
            .map(|l| l.replace(&root.display().to_string(), ""))
            .filter(|l| !exclude.iter().any(|x| l.ends_with(&format!("/{x}"))))
            .collect()
    };
    let non_dirs = "%y %m %U %G %s %T@ %l %p\n";
    assert_eq!(
        strip(find_printf(actual, &["!", "-type", "d"], non_dirs), actual),
        strip(find_printf(expected, &["!", "-type", "d"], non_dirs), expected)
    );
    let dirs = "%y %m %U %G %p\n";
    assert_eq!(
        strip(find_printf(actual, &["-type", "d"], dirs), actual),
        strip(find_printf(expected, &["-type", "d"], dirs), expected)
    );
}

/// GETs of the blob `hex` the proxy saw from request `from` on: (without a Range, bytes asked by Range).
fn blob_gets(proxy: &FaultProxy, hex: &str, from: usize) -> (usize, u64) {
    let mut full = 0;
    let mut ranged = 0;
    for r in proxy.requests().iter().skip(from) {
        if r.method != "GET" || !r.target.contains(hex) {
            continue;
        }
        match r.range.as_deref().and_then(|v| v.strip_prefix("bytes=")) {
            Some(spec) => {
                let (a, b) = spec.split_once('-').unwrap();
                let a: u64 = a.parse().unwrap();
                let b: u64 = b.parse().unwrap_or(a);
                ranged += b + 1 - a;
            }
            None => full += 1,
        }
    }
    (full, ranged)
}

/// Text that compresses about 3:1, fast to make (xorshift over a word list).
fn compressible(seed: u64, n: usize) -> Vec<u8> {
    const WORDS: [&[u8]; 32] = [
        b"alpha",
        b"bravo",
        b"charlie",
        b"delta",
        b"echo",
        b"foxtrot",
        b"golf",
        b"hotel",
        b"india",
        b"juliet",
        b"kilo",
        b"lima",
        b"mike",
        b"november",
        b"oscar",
        b"papa",
        b"quebec",
        b"romeo",
        b"sierra",
        b"tango",
        b"uniform",
        b"victor",
        b"whiskey",
        b"xray",
        b"yankee",
        b"zulu",
        b"0123",
        b"4567",
        b"89ab",
        b"cdef",
        b"layer",
        b"span",
    ];
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(n + 16);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(WORDS[(x & 31) as usize]);
        out.push(if (x >> 8) & 7 == 0 { b'\n' } else { b' ' });
        out.push(b"0123456789"[((x >> 16) % 10) as usize]);
    }
    out.truncate(n);
    out
}

#[test]
fn zstd_and_uncompressed_layers_read_as_umoci_unpacks_them_and_a_plain_layer_reads_by_range() {
    let reg = Registry::start();
    let c = reg.client();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();

    let l1 = w.join("l1");
    write(&l1, "etc/os-release", b"ID=gzip\n");
    write(&l1, "usr/share/doc/a", b"from the gzip layer\n");
    write(&l1, "usr/share/doc/gone", b"deleted by the tar layer\n");
    let l2 = w.join("l2");
    write(&l2, "etc/os-release", b"ID=zstd\n");
    write(&l2, "opt/zstd/big", &random_bytes(6 << 20));
    std::os::unix::fs::symlink("../opt/zstd/big", {
        mkdirs(&l2, "bin");
        l2.join("bin/big")
    })
    .unwrap();
    write(&l2, "opt/zstd/small", b"small file of the zstd layer\n");
    let l3 = w.join("l3");
    write(&l3, "usr/share/doc/.wh.gone", b"");
    write(&l3, "srv/plain/big", &random_bytes(5 << 20));
    write(&l3, "srv/plain/small", b"small file of the plain tar layer\n");
    write(&l3, "srv/plain/tail", &random_bytes(2 << 20));

    let gz = gzip_blob(tar_of(&l1));
    let zst = {
        let tar = tar_of(&l2);
        Blob {
            bytes: pipe("zstd", &["-q", "-c"], &tar),
            media_type: OCI_LAYER_ZSTD,
            diff_id: sha256_digest(&tar),
            annotations: None,
        }
    };
    assert!(
        zst.bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
        "zstd wrote a zstd frame"
    );
    let plain = {
        let tar = tar_of(&l3);
        Blob {
            diff_id: sha256_digest(&tar),
            bytes: tar,
            media_type: OCI_LAYER_TAR,
            annotations: None,
        }
    };
    push_layers(&c, "kinds/app", "v1", &[&gz, &zst, &plain]);
    // The witness: umoci 0.4.7 does not read zstd layers, so GNU tar x of each
    // layer in order (it detects gzip and zstd itself), then the whiteouts.
    let expected = w.join("expected");
    fs::create_dir_all(&expected).unwrap();
    for b in [&gz, &zst, &plain] {
        let file = w.join("layer.blob");
        fs::write(&file, &b.bytes).unwrap();
        run_ok(
            Command::new("tar")
                .args(["--numeric-owner", "-xpf"])
                .arg(&file)
                .arg("-C")
                .arg(&expected),
        );
        for wh in find_printf(&expected, &["-name", ".wh.*"], "%p\n") {
            let wh = Path::new(&wh);
            let name = wh.file_name().unwrap().to_str().unwrap().trim_start_matches(".wh.");
            let _ = fs::remove_dir_all(wh.with_file_name(name));
            let _ = fs::remove_file(wh.with_file_name(name));
            fs::remove_file(wh).unwrap();
        }
    }

    let proxy = FaultProxy::start(&reg.host_port());
    let cache = w.join("cache");
    fs::create_dir_all(&cache).unwrap();
    {
        let m = Mount::builder(&proxy.url()).cache_dir(&cache).start();
        let rootfs = m.join("kinds/app/_tags/v1/rootfs");
        assert_eq!(fs::read(rootfs.join("etc/os-release")).unwrap(), b"ID=zstd\n");
        assert_same_tree(&expected, &rootfs, &[]);
        assert_eq!(
            sha256_hex(&fs::read(rootfs.join("bin/big")).unwrap()),
            sha256_hex(&fs::read(l2.join("opt/zstd/big")).unwrap())
        );
    }
    // The blobs leave the cache, the indexes stay: a small file of the plain
    // layer is read by Range (1 MiB spans, 1 MiB fetch chunks), not the layer.
    for b in [&gz, &zst, &plain] {
        let _ = fs::remove_file(cache.join("blobs/sha256").join(b.hex()));
    }
    let m = Mount::builder(&proxy.url()).cache_dir(&cache).start();
    let rootfs = m.join("kinds/app/_tags/v1/rootfs");
    let from = proxy.requests().len();
    assert_eq!(
        fs::read(rootfs.join("srv/plain/small")).unwrap(),
        b"small file of the plain tar layer\n"
    );
    let (full, ranged) = blob_gets(&proxy, &plain.hex(), from);
    eprintln!(
        "plain layer: one small file read fetched {ranged} bytes of {}",
        plain.bytes.len()
    );
    assert_eq!(full, 0, "no GET of the whole plain layer");
    assert!(ranged > 0 && ranged <= 3 << 20, "{ranged} bytes fetched");
    // A single-frame zstd layer decodes from its start: right bytes, at the documented cost.
    let from = proxy.requests().len();
    assert_eq!(
        fs::read(rootfs.join("opt/zstd/small")).unwrap(),
        b"small file of the zstd layer\n"
    );
    let (full, ranged) = blob_gets(&proxy, &zst.hex(), from);
    eprintln!(
        "single-frame zstd layer: one small file read fetched {ranged} bytes of {}",
        zst.bytes.len()
    );
    assert_eq!(full, 0);
    assert!(ranged > 0);
    // No index was rebuilt: no layer had a second pass (nothing read the gzip layer).
    let (full, ranged) = blob_gets(&proxy, &gz.hex(), from);
    assert_eq!((full, ranged), (0, 0));
}

/// An eStargz blob made the way the stargz writer lays it out, from GNU tar's
/// output: each entry's headers in a gzip member, each chunk of a regular
/// file in a gzip member of its own (`offset` in the TOC is where that member
/// starts), then `stargz.index.json` in a tar in its own member, then the
/// 51-byte footer. Every member is written by `gzip -n`. Returns the blob, the
/// TOC JSON, and where each file's first chunk member starts.
fn estargz_of(dir: &Path, chunk: u64) -> (Blob, Vec<u8>, std::collections::BTreeMap<String, u64>) {
    let tar = tar_of(dir);
    let mut blob: Vec<u8> = Vec::new();
    let mut toc = Vec::new();
    let mut first_chunk = std::collections::BTreeMap::new();
    let mut cur = 0usize; // tar bytes before `cur` are in members already
    let mut archive = tar::Archive::new(std::io::Cursor::new(&tar));
    let mut end_of_entries = 0usize;
    let rfc3339 = "2023-11-14T22:13:20Z"; // MTIME
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let path = String::from_utf8(e.path_bytes().to_vec()).unwrap();
        let name = path.trim_start_matches("./").to_string();
        let data_at = e.raw_file_position() as usize;
        let size = h.entry_size().unwrap();
        end_of_entries = data_at + (size as usize).div_ceil(512) * 512;
        if name.is_empty() {
            continue; // "./": the root
        }
        let kind = match h.entry_type() {
            tar::EntryType::Regular => "reg",
            tar::EntryType::Directory => "dir",
            tar::EntryType::Symlink => "symlink",
            tar::EntryType::Link => "hardlink",
            tar::EntryType::Fifo => "fifo",
            tar::EntryType::Char => "char",
            tar::EntryType::Block => "block",
            other => panic!("entry type {other:?} in the test layer"),
        };
        let link = e.link_name_bytes().map(|l| String::from_utf8(l.to_vec()).unwrap());
        let mut xattrs = serde_json::Map::new();
        if let Some(exts) = e.pax_extensions().unwrap() {
            for x in exts {
                let x = x.unwrap();
                if let Some(k) = x.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    use base64::Engine as _;
                    xattrs.insert(
                        k.into(),
                        base64::engine::general_purpose::STANDARD.encode(x.value_bytes()).into(),
                    );
                }
            }
        }
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut content).unwrap();
        let base = serde_json::json!({
            "name": name, "type": kind, "mode": h.mode().unwrap(), "uid": h.uid().unwrap(), "gid": h.gid().unwrap(),
            "modtime": rfc3339, "linkName": link.map(|l| l.trim_start_matches("./").to_string()).unwrap_or_default(),
            "xattrs": xattrs,
        });
        if kind != "reg" || size == 0 {
            let mut t = base;
            if kind == "reg" {
                t["size"] = 0.into();
            }
            toc.push(t);
            continue;
        }
        // Headers up to the data: one member.
        blob.extend(pipe("gzip", &["-n", "-c"], &tar[cur..data_at]));
        let padded_end = data_at + (size as usize).div_ceil(512) * 512;
        let mut off = 0u64;
        while off < size {
            let n = chunk.min(size - off);
            let start = data_at + off as usize;
            let end = if off + n == size {
                padded_end
            } else {
                start + n as usize
            };
            let at = blob.len() as u64;
            if off == 0 {
                first_chunk.insert(name.clone(), at);
            }
            blob.extend(pipe("gzip", &["-n", "-c"], &tar[start..end]));
            let piece = &content[off as usize..(off + n) as usize];
            let mut t = base.clone();
            t["type"] = (if off == 0 { "reg" } else { "chunk" }).into();
            t["size"] = size.into();
            t["offset"] = at.into();
            t["chunkOffset"] = off.into();
            t["chunkSize"] = n.into();
            t["chunkDigest"] = sha256_digest(piece).into();
            if off == 0 {
                t["digest"] = sha256_digest(&content).into();
            }
            toc.push(t);
            off += n;
        }
        cur = padded_end;
    }
    if cur < end_of_entries {
        blob.extend(pipe("gzip", &["-n", "-c"], &tar[cur..end_of_entries]));
    }
    let json = serde_json::to_vec(&serde_json::json!({"version": 1, "entries": toc})).unwrap();
    let toc_dir = tempfile::tempdir().unwrap();
    fs::write(toc_dir.path().join("stargz.index.json"), &json).unwrap();
    let toc_tar = run_ok(
        Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "--mtime", MTIME, "-C"])
            .arg(toc_dir.path())
            .args(["-cf", "-", "stargz.index.json"]),
    )
    .stdout;
    let toc_at = blob.len();
    blob.extend(pipe("gzip", &["-n", "-c"], &toc_tar));
    // The footer: an empty gzip member whose extra field ("SG") holds the TOC offset.
    let mut footer = vec![0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 26, 0, b'S', b'G', 22, 0];
    footer.extend(format!("{toc_at:016x}STARGZ").as_bytes());
    footer.extend([1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(footer.len(), 51);
    blob.extend(footer);
    // What the blob decompresses to (by gzip itself) is the diff_id.
    let tar_again = pipe("gzip", &["-d", "-c"], &blob);
    let b = Blob {
        bytes: blob,
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
        diff_id: sha256_digest(&tar_again),
        annotations: Some({
            let mut a = serde_json::Map::new();
            a.insert(TOC_DIGEST.into(), sha256_digest(&json).into());
            a.into()
        }),
    };
    (b, json, first_chunk)
}

#[test]
fn an_estargz_layer_is_listed_from_its_toc_by_range_and_a_damaged_chunk_is_eio() {
    let reg = Registry::start();
    let c = reg.client();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let dir = w.join("l");
    write(&dir, "etc/os-release", b"ID=estargz\n");
    write(&dir, "usr/bin/big", &random_bytes(9 << 20));
    write(&dir, "usr/lib/mid", &random_bytes(300_000));
    fs::set_permissions(dir.join("usr/lib/mid"), fs::Permissions::from_mode(0o4750)).unwrap();
    std::os::unix::fs::chown(dir.join("usr/lib/mid"), Some(321), Some(654)).unwrap();
    run_ok(
        Command::new("setfattr")
            .args(["-n", "user.comment", "-v", "from the toc"])
            .arg(dir.join("usr/lib/mid")),
    );
    write(&dir, "empty", b"");
    std::os::unix::fs::symlink("usr/bin/big", dir.join("link")).unwrap();
    fs::hard_link(dir.join("etc/os-release"), dir.join("usr/hard")).unwrap();
    let (layer, _json, first_chunk) = estargz_of(&dir, 4 << 20);
    let base = gzip_blob(tar_of(&{
        let b = w.join("base");
        write(&b, "etc/base", b"from the base layer\n");
        b
    }));
    push_layers(&c, "lazy/stargz", "v1", &[&base, &layer]);
    let expected = umoci_rootfs(&reg, "lazy/stargz", "v1", w);

    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::start(&proxy.url());
    let rootfs = m.join("lazy/stargz/_tags/v1/rootfs");
    // Listing and stat of every entry: only the footer and the TOC are read, by Range.
    let listed = find_printf(&rootfs, &[], "%y %m %U %G %s %T@ %l %P\n");
    assert!(listed.iter().any(|l| l.ends_with(" usr/bin/big")), "{listed:?}");
    let (full, ranged) = blob_gets(&proxy, &layer.hex(), 0);
    eprintln!(
        "eStargz listing fetched {ranged} bytes of a {} byte layer",
        layer.bytes.len()
    );
    assert_eq!(full, 0, "no GET of the whole eStargz layer");
    assert!(
        ranged > 0 && ranged <= 2 << 20,
        "{ranged} bytes fetched to list the layer; log:\n{}",
        m.log()
    );
    assert!(
        m.log().contains("layer indexed"),
        "the index was made (from the TOC): {}",
        m.log()
    );
    // Contents and metadata as umoci unpacks the same blob (stargz.index.json is not part of the image).
    assert!(expected.join("stargz.index.json").exists());
    assert_eq!(
        err(fs::symlink_metadata(rootfs.join("stargz.index.json"))),
        libc::ENOENT
    );
    assert_same_tree(&expected, &rootfs, &["stargz.index.json"]);
    assert_eq!(xattr_str(&rootfs.join("usr/lib/mid"), "user.comment"), "from the toc");
    drop(m);

    // A registry that flips a byte inside the big file's first chunk: EIO, never other bytes.
    let m = Mount::builder(&proxy.url()).start();
    let rootfs = m.join("lazy/stargz/_tags/v1/rootfs");
    assert_eq!(fs::metadata(rootfs.join("usr/bin/big")).unwrap().len(), 9 << 20);
    let at = first_chunk["usr/bin/big"];
    let chunk_start = at / (1 << 20) * (1 << 20); // the blob cache fetches 1 MiB-aligned ranges
    proxy.flip_next_body(1, at - chunk_start + 5_000, Match::method_path("GET", &layer.hex()));
    let mut f = fs::File::open(rootfs.join("usr/bin/big")).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    assert_eq!(err(std::io::Read::read(&mut f, &mut buf)), libc::EIO);
    assert!(
        proxy.requests().iter().any(|r| r.fault.is_some()),
        "the flipped response was served"
    );
    // A log line per failed FUSE read (the kernel may retry one read(2)),
    // naming the file by its repository, layer and path.
    let failed: Vec<String> = m
        .log()
        .lines()
        .filter(|l| l.contains("read of layer contents failed"))
        .map(str::to_string)
        .collect();
    let want = format!("path=\"/lazy/stargz/_layers/{}/usr/bin/big\"", layer.digest());
    assert!(
        !failed.is_empty() && failed.iter().all(|l| l.contains(&want)),
        "{failed:?}"
    );
    assert!(m.is_mounted());
    assert_eq!(fs::read(rootfs.join("etc/os-release")).unwrap(), b"ID=estargz\n");
}

/// `_layers/` opens an eStargz layer from its TOC by Range only when a
/// manifest read before listed the layer with the TOC digest annotation; a
/// layer with no known annotation gets the verified pass (its footer and TOC
/// are not tied to the layer digest), and then shows as its tar holds it,
/// `stargz.index.json` included. Every file reads as `tar x` writes it.
#[test]
fn layers_opens_an_estargz_layer_from_its_toc_only_with_a_known_annotation() {
    let reg = Registry::start();
    let c = reg.client();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let mut layers = Vec::new();
    for (name, annotated) in [("ann", true), ("bare", false)] {
        let dir = w.join(name);
        write(&dir, "etc/os-release", format!("ID={name}\n").as_bytes());
        write(&dir, "usr/bin/big", &random_bytes(9 << 20));
        write(&dir, "usr/lib/mid", &random_bytes(300_000));
        std::os::unix::fs::chown(dir.join("usr/lib/mid"), Some(321), Some(654)).unwrap();
        std::os::unix::fs::symlink("usr/bin/big", dir.join("link")).unwrap();
        let (mut layer, _json, _) = estargz_of(&dir, 4 << 20);
        if !annotated {
            layer.annotations = None;
        }
        push_layers(&c, &format!("lazy/{name}"), "v1", &[&layer]);
        // The witness: GNU tar extracting the very blob the registry holds.
        let expected = w.join(format!("{name}-tar-x"));
        fs::create_dir(&expected).unwrap();
        let blob_file = w.join(format!("{name}.tgz"));
        fs::write(&blob_file, &layer.bytes).unwrap();
        run_ok(
            Command::new("tar")
                .args(["--numeric-owner", "--same-owner", "-xpzf"])
                .arg(&blob_file)
                .arg("-C")
                .arg(&expected),
        );
        assert!(expected.join("stargz.index.json").exists());
        layers.push((name, layer, expected));
    }

    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::start(&proxy.url());
    for (name, layer, expected) in &layers {
        let size = layer.bytes.len() as u64;
        if *name == "ann" {
            // Reading the manifest makes its layer descriptors (and annotations) known.
            assert!(fs::read(m.join("lazy/ann/_tags/v1/manifest.json")).unwrap().len() > 100);
        }
        let tree = m.join(format!("lazy/{name}/_layers/sha256:{}", layer.hex()));
        let listed = find_printf(&tree, &[], "%y %m %U %G %s %l %P\n");
        assert!(
            listed.contains(&"f 644 321 654 300000  usr/lib/mid".to_string()),
            "{listed:?}"
        );
        let (full, ranged) = blob_gets(&proxy, &layer.hex(), 0);
        let fetched = full as u64 * size + ranged;
        eprintln!("{name}: listing through _layers/ fetched {fetched} bytes of a {size} byte layer");
        if *name == "ann" {
            assert_eq!(full, 0, "no GET of the whole eStargz layer");
            // Its first 1 MiB chunk (for its size) and the last (footer and TOC).
            assert!(
                fetched <= 2 << 20,
                "{fetched} bytes fetched to list it; log:\n{}",
                m.log()
            );
            assert_eq!(err(fs::symlink_metadata(tree.join("stargz.index.json"))), libc::ENOENT);
            assert_same_tree(expected, &tree, &["stargz.index.json"]);
        } else {
            assert!(
                fetched >= size,
                "the verified pass read the whole layer: {fetched} of {size} bytes"
            );
            assert_same_tree(expected, &tree, &[]);
        }
        assert_eq!(
            fs::read(tree.join("etc/os-release")).unwrap(),
            format!("ID={name}\n").as_bytes()
        );
    }
    assert!(!m.log().contains("eStargz TOC not usable"), "{}", m.log());
    assert!(m.is_mounted());
}

/// `VmHWM` of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[test]
fn a_300_mib_gzip_layer_is_indexed_once_then_one_file_costs_two_spans_and_a_flipped_span_is_eio() {
    const FILES: usize = 320;
    let reg = Registry::start();
    let c = reg.client();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let dir = w.join("big");
    for i in 0..FILES {
        write(&dir, &format!("data/{i:03}/f"), &compressible(i as u64, 1 << 20));
    }
    write(&dir, "etc/os-release", b"ID=big\n");
    // tar and gzip through files: the 320 MiB tar is never in the test's memory.
    let tar_path = w.join("layer.tar");
    let gz_path = w.join("layer.tar.gz");
    run_ok(
        Command::new("tar")
            .args(["--sort=name", "--numeric-owner", "--mtime", MTIME, "-C"])
            .arg(&dir)
            .arg("-cf")
            .arg(&tar_path)
            .arg("."),
    );
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!("gzip -n -c '{}' > '{}'", tar_path.display(), gz_path.display())),
    );
    let tar_len = fs::metadata(&tar_path).unwrap().len();
    assert!(tar_len > 300 << 20);
    let diff_id = {
        let out = run_ok(Command::new("sha256sum").arg(&tar_path)).stdout;
        format!(
            "sha256:{}",
            String::from_utf8(out).unwrap().split_whitespace().next().unwrap()
        )
    };
    fs::remove_file(&tar_path).unwrap();
    let layer = Blob {
        bytes: fs::read(&gz_path).unwrap(),
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
        diff_id,
        annotations: None,
    };
    let ratio = layer.bytes.len() as f64 / tar_len as f64;
    push_layers(&c, "lazy/big", "v1", &[&layer]);
    let proxy = FaultProxy::start(&reg.host_port());
    let cache = w.join("cache");
    fs::create_dir_all(&cache).unwrap();
    {
        let m = Mount::builder(&proxy.url()).cache_dir(&cache).start();
        let out = run_ok(
            Command::new("find")
                .arg(m.join("lazy/big/_tags/v1/rootfs"))
                .args(["-type", "f"]),
        )
        .stdout;
        assert_eq!(out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count(), FILES + 1);
        let (_, ranged) = blob_gets(&proxy, &layer.hex(), 0);
        assert!(
            ranged >= layer.bytes.len() as u64,
            "the first listing made one pass over the layer"
        );
    }
    let index = cache.join("contents").join(format!("{}.idx", layer.hex()));
    let index_len = fs::metadata(&index).unwrap().len();
    eprintln!(
        "index of the {tar_len} byte layer ({} gzip): {index_len} bytes ({:.2} %)",
        layer.bytes.len(),
        index_len as f64 * 100.0 / tar_len as f64
    );
    assert!(index_len * 50 < tar_len, "the index is under 2 % of the layer");
    // The blob leaves the cache; the index stays. A later mount lists from the
    // index and reads one 1 MiB file by fetching only the spans around it.
    fs::remove_file(cache.join("blobs/sha256").join(layer.hex())).unwrap();
    let m = Mount::builder(&proxy.url()).cache_dir(&cache).start();
    let rootfs = m.join("lazy/big/_tags/v1/rootfs");
    let from = proxy.requests().len();
    assert_eq!(list_dir(&rootfs.join("data")).unwrap().len(), FILES);
    assert_eq!(
        blob_gets(&proxy, &layer.hex(), from),
        (0, 0),
        "listing from the kept index reads no blob byte"
    );
    let got = fs::read(rootfs.join("data/150/f")).unwrap();
    assert!(got == compressible(150, 1 << 20), "the file's bytes");
    let (full, ranged) = blob_gets(&proxy, &layer.hex(), from);
    // Two ~4 MiB (decoded) spans cover any 1 MiB file; the blob cache rounds each range to 1 MiB chunks.
    let bound = ((9u64 << 20) as f64 * ratio) as u64 + (2 << 20);
    eprintln!(
        "one 1 MiB file of the {} byte layer: {ranged} bytes fetched (bound {bound})",
        layer.bytes.len()
    );
    assert_eq!(full, 0, "no GET of the whole layer");
    assert!(ranged > 0 && ranged <= bound, "{ranged} bytes fetched, bound {bound}");
    assert!(ranged <= 8 << 20);

    // A registry that flips one byte of every span it serves: EIO, never wrong
    // bytes (one damaged response is mended by a refetch: see
    // `a_damaged_span_is_dropped_and_fetched_once_more…`).
    // (Ranges start at a 1 MiB boundary before the span, a refetch at a 64 KiB
    // one; a span is longer than 1 MiB compressed, so the byte just before 1 MiB is in it.)
    proxy.flip_next_body(1000, (1 << 20) - 1000, Match::method_path("GET", &layer.hex()));
    assert_eq!(err(fs::read(rootfs.join("data/290/f"))), libc::EIO);
    proxy.clear_faults();
    assert!(
        proxy.requests().iter().any(|r| r.fault.is_some()),
        "the damaged span was served"
    );
    assert!(m.log().contains("span digest mismatch"), "{}", m.log());
    // The rest of the layer still reads right.
    assert!(fs::read(rootfs.join("data/010/f")).unwrap() == compressible(10, 1 << 20));
    assert!(m.is_mounted());
}

/// `(A, B)` of the first "span N (compressed bytes A-B)" in `text`.
fn span_range_in(text: &str, span: usize) -> (u64, u64) {
    let key = format!("span {span} (compressed bytes ");
    let at = text.find(&key).unwrap_or_else(|| panic!("no {key:?} in:\n{text}")) + key.len();
    let (a, rest) = text[at..].split_once('-').unwrap();
    let b = rest.split_once(')').unwrap().0;
    (a.parse().unwrap(), b.parse().unwrap())
}

/// Ranged GETs of the blob `hex` from request `from` on that overlap `a..b`,
/// and how many times each byte of `a..b` was asked for: (fewest, most).
fn span_requests(proxy: &FaultProxy, hex: &str, from: usize, a: u64, b: u64) -> (Vec<ProxiedRequest>, u64, u64) {
    let ranges: Vec<(ProxiedRequest, u64, u64)> = proxy
        .requests()
        .into_iter()
        .skip(from)
        .filter(|r| r.is_blob_get() && r.target.contains(hex))
        .map(|r| {
            let (first, last) = r.byte_range().expect("a ranged GET");
            let end = last.expect("a closed range") + 1;
            (r, first, end)
        })
        .filter(|(_, first, end)| *first < b && *end > a)
        .collect();
    let mut points: Vec<u64> = vec![a];
    points.extend(
        ranges
            .iter()
            .flat_map(|(_, f, e)| [*f, *e])
            .filter(|p| (a..b).contains(p)),
    );
    let counts: Vec<u64> = points
        .iter()
        .map(|&p| ranges.iter().filter(|(_, f, e)| (*f..*e).contains(&p)).count() as u64)
        .collect();
    let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
    (ranges.into_iter().map(|(r, ..)| r).collect(), min, max)
}

#[test]
fn a_damaged_span_is_dropped_and_fetched_once_more_and_damaged_twice_is_eio_until_the_registry_mends() {
    let reg = Registry::start();
    let c = reg.client();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let base = w.join("base");
    write(&base, "etc/os-release", b"ID=base\n");
    // Incompressible 1 MiB files (so compressed and decoded offsets are about
    // equal, and spans are about 4 MiB compressed), with a small file well
    // inside span 1 (about 5 MiB) and one well inside span 2 (about 9 MiB).
    let dir = w.join("big");
    for i in 0..5 {
        write(&dir, &format!("data/f{i:02}"), &random_bytes(1 << 20));
    }
    write(&dir, "data/f05-small", &random_bytes(20_000));
    for i in 6..10 {
        write(&dir, &format!("data/f{i:02}"), &random_bytes(1 << 20));
    }
    write(&dir, "data/f10-small", &random_bytes(20_000));
    for i in 11..13 {
        write(&dir, &format!("data/f{i:02}"), &random_bytes(1 << 20));
    }
    let big = layer_of(&dir);
    let img = c.push_real_image(
        "shop/mend",
        Some("v1"),
        OCI_MANIFEST,
        host_arch(),
        None,
        &[&layer_of(&base), &big],
    );
    let hex = img.layers[1].digest.trim_start_matches("sha256:").to_string();
    // The witness: GNU tar's extraction of the layer, and sha256sum.
    let x = w.join("x");
    fs::create_dir_all(&x).unwrap();
    fs::write(w.join("big.tar.gz"), &big.gz).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xzf")
            .arg(w.join("big.tar.gz"))
            .arg("-C")
            .arg(&x),
    );
    let sha256sum = |p: &Path| {
        let out = run_ok(Command::new("sha256sum").arg(p)).stdout;
        String::from_utf8(out)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };

    let proxy = FaultProxy::start(&reg.host_port());
    let cache = w.join("cache");
    fs::create_dir_all(&cache).unwrap();
    {
        let m = Mount::builder(&proxy.url()).cache_dir(&cache).start();
        assert_eq!(list_dir(&m.join("shop/mend/_tags/v1/rootfs/data")).unwrap().len(), 13);
    }
    // The layer leaves the cache (its index stays): reads fetch spans by Range.
    fs::remove_file(cache.join("blobs/sha256").join(&hex)).unwrap();
    let m = Mount::builder(&proxy.url()).cache_dir(&cache).start();
    let data = m.join("shop/mend/_tags/v1/rootfs/data");
    assert_eq!(list_dir(&data).unwrap().len(), 13);
    let blob_get = Match::method_path("GET", &hex);
    // A flip 1.1 MiB into a body: the first GET for a span starts at the 1 MiB
    // boundary before it (or later), a refetch at the 64 KiB boundary before
    // it, and a span is about 4 MiB: the flipped byte is inside the span.
    const FLIP_AT: u64 = (1 << 20) + (100 << 10);

    // 1. The first response for the span is damaged: dropped, fetched once
    // more, and the read gives exactly GNU tar's bytes.
    let from = proxy.requests().len();
    proxy.flip_next_body(1, FLIP_AT, blob_get.clone());
    let got = fs::read(data.join("f05-small")).unwrap();
    assert_eq!(proxy.pending_faults(), 0, "the damaged body was served");
    assert_eq!(sha256_hex(&got), sha256sum(&x.join("data/f05-small")));
    let log = m.log();
    let retry_line = log
        .lines()
        .find(|l| l.contains("fetching the span once more"))
        .unwrap_or_else(|| panic!("no line about the refetch:\n{log}"));
    let (a, b) = span_range_in(retry_line, 1);
    let (asked, fewest, most) = span_requests(&proxy, &hex, from, a, b);
    assert_eq!(
        (fewest, most),
        (2, 2),
        "every byte of span 1 asked for exactly twice: {asked:?}"
    );
    assert!(
        asked[0].fault.is_some() && asked[1..].iter().all(|r| r.fault.is_none()),
        "{asked:?}"
    );

    drop(m);
    assert!(
        !cache.join("blobs/sha256").join(&hex).exists(),
        "only spans were fetched: the layer is not in the cache"
    );

    // 2. Every response is damaged: EIO, one log line naming the repository,
    // the layer, the span and both digests, counted in .regfs/errors. (A new
    // mount: nothing of the layer is held, so both copies of the span come
    // from the registry.)
    let m = Mount::builder(&proxy.url()).cache_dir(&cache).start();
    let data = m.join("shop/mend/_tags/v1/rootfs/data");
    assert_eq!(list_dir(&data).unwrap().len(), 13);
    // Read with O_DIRECT: one read(2) is one FUSE read. (Through the page
    // cache the kernel asks again after a failed readahead, and that read
    // fetches twice too: see the `cat` below.)
    let from = proxy.requests().len();
    proxy.flip_next_body(1000, FLIP_AT, blob_get.clone());
    let direct_read = |p: &Path| -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(p)?;
        let mut buf = vec![0u8; 1 << 16];
        let n = f.read(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    };
    assert_eq!(err(direct_read(&data.join("f10-small"))), libc::EIO);
    let log = m.log();
    let fail_lines: Vec<&str> = log.lines().filter(|l| l.contains("fetched twice")).collect();
    assert_eq!(fail_lines.len(), 1, "one line for the failed read:\n{log}");
    let line = fail_lines[0];
    let (a, b) = span_range_in(line, 2);
    let (asked, fewest, most) = span_requests(&proxy, &hex, from, a, b);
    assert_eq!((fewest, most), (2, 2), "span 2 fetched twice, no more: {asked:?}");
    assert!(asked.iter().all(|r| r.fault.is_some()), "{asked:?}");
    let recorded = sha256_hex(&big.gz[a as usize..b as usize]);
    let second = {
        // The copy of the second fetch: the flipped byte sits FLIP_AT into its body.
        let (start, _) = asked.last().unwrap().byte_range().unwrap();
        let mut copy = big.gz[a as usize..b as usize].to_vec();
        copy[(start + FLIP_AT - a) as usize] ^= 0x55;
        sha256_hex(&copy)
    };
    for part in [
        "repository shop/mend".to_string(),
        format!("layer {}", img.layers[1].digest),
        format!("the index recorded sha256:{recorded}"),
        format!("hashes to sha256:{second}"),
    ] {
        assert!(line.contains(&part), "{part:?} not in {line}");
    }
    let errors = fs::read_to_string(m.join(".regfs/errors")).unwrap();
    assert!(errors.contains(&format!("hashes to sha256:{second}")), "{errors}");
    // Through the page cache too: EIO, never the damaged bytes.
    assert_eq!(err(fs::read(data.join("f10-small"))), libc::EIO);
    // The mount stays healthy: another layer's file reads right.
    assert_eq!(
        fs::read(m.join("shop/mend/_tags/v1/rootfs/etc/os-release")).unwrap(),
        b"ID=base\n"
    );
    assert!(m.is_mounted());

    // 3. The registry mends: the same file now reads exactly (nothing damaged
    // stayed in the partial cache, nothing is poisoned).
    proxy.clear_faults();
    let from = proxy.requests().len();
    let got = fs::read(data.join("f10-small")).unwrap();
    assert_eq!(sha256_hex(&got), sha256sum(&x.join("data/f10-small")));
    let (asked, fewest, most) = span_requests(&proxy, &hex, from, a, b);
    assert_eq!((fewest, most), (1, 1), "fetched afresh, once: {asked:?}");
}

#[test]
fn indexes_are_kept_across_remounts_and_count_in_the_cache_size() {
    let reg = Registry::start();
    let c = reg.client();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // Three layers of incompressible files: their indexes hold a 32 KiB window per 4 MiB span.
    let blobs: Vec<Blob> = (0..3)
        .map(|i| {
            let d = w.join(format!("l{i}"));
            write(&d, &format!("layer{i}/big"), &random_bytes(9 << 20));
            write(&d, &format!("layer{i}/small"), format!("layer {i}\n").as_bytes());
            gzip_blob(tar_of(&d))
        })
        .collect();
    push_layers(&c, "keep/app", "v1", &blobs.iter().collect::<Vec<_>>());
    let proxy = FaultProxy::start(&reg.host_port());
    let cache = w.join("cache");
    fs::create_dir_all(&cache).unwrap();
    let index_files = || -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = fs::read_dir(cache.join("contents"))
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let tree = |m: &Mount| find_printf(&m.join("keep/app/_tags/v1/rootfs"), &[], "%y %s %P\n");
    let want = {
        let m = Mount::builder(&proxy.url()).cache_dir(&cache).start();
        tree(&m)
    };
    assert_eq!(index_files().len(), 3);
    let idx_total: u64 = index_files().iter().map(|f| f.1).sum();

    // A remount lists from the kept indexes: no GET of any layer, even with the blobs gone.
    for b in &blobs {
        let _ = fs::remove_file(cache.join("blobs/sha256").join(b.hex()));
    }
    let from = proxy.requests().len();
    {
        let m = Mount::builder(&proxy.url()).cache_dir(&cache).start();
        assert_eq!(tree(&m), want);
        for b in &blobs {
            assert_eq!(
                blob_gets(&proxy, &b.hex(), from),
                (0, 0),
                "no second pass over {}",
                b.digest()
            );
        }
        assert_eq!(m.stat("cache_index_bytes"), idx_total);
    }

    // A cache limit below what the indexes take: the least recently used ones go,
    // blobs first; what is listed stays right (a missing index is built again).
    let limit = idx_total / 2;
    let m = Mount::builder(&proxy.url())
        .cache_dir(&cache)
        .args(["--cache-size", &limit.to_string()])
        .start();
    let kept: u64 = index_files().iter().map(|f| f.1).sum();
    assert!(kept <= limit, "{kept} bytes of indexes kept under a {limit} byte limit");
    assert!(index_files().len() < 3);
    let from = proxy.requests().len();
    assert_eq!(tree(&m), want);
    let passes = blobs
        .iter()
        .filter(|b| blob_gets(&proxy, &b.hex(), from).1 >= b.bytes.len() as u64)
        .count();
    assert!(passes >= 1, "an evicted index was built again from its layer");
    let (used, cap) = (m.stat("cache_bytes"), m.stat("cache_limit"));
    assert_eq!(cap, limit);
    assert!(used <= cap, "cache use {used} over the limit {cap}");
    let kept: u64 = index_files().iter().map(|f| f.1).sum();
    assert!(kept <= limit);
    assert_eq!(m.stat("cache_index_bytes"), kept);
}

/// A tar header of `kind` for `name` (ustar), checksum set.
fn raw_header(name: &str, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_cksum();
    h
}

#[test]
fn malformed_layers_show_what_can_be_shown_with_eio_and_a_log_line() {
    let reg = Registry::start();
    let c = reg.client();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();

    // 1. A gzip layer cut short: the entries before the cut are listed, the file cut reads EIO.
    let d = w.join("trunc");
    write(&d, "t/a-first", b"before the cut\n");
    write(&d, "t/b-cut", &random_bytes(3 << 20));
    write(&d, "t/c-after", b"after the cut\n");
    let mut truncated = gzip_blob(tar_of(&d));
    let keep = truncated.bytes.len() * 6 / 10;
    truncated.bytes.truncate(keep);

    // 2. Names GNU tar -P writes as given: `..` and absolute; duplicates (tar -r
    //    appends a second copy); a hard link whose target tar --delete removed.
    let d = w.join("names");
    write(&d, "sub/x", b"");
    write(&d, "escape", b"outside the root\n");
    write(&d, "dup", b"first copy\n");
    write(&d, "target", b"hard link target\n");
    fs::hard_link(d.join("target"), d.join("hl")).unwrap();
    let abs = d.join("absolute");
    write(&d, "absolute", b"absolute name\n");
    let t = w.join("names.tar");
    let tar = |args: &[&str], cwd: &Path| {
        run_ok(Command::new("tar").current_dir(cwd).args(args));
    };
    tar(&["-cPf", t.to_str().unwrap(), "../escape"], &d.join("sub"));
    tar(&["-rPf", t.to_str().unwrap(), abs.to_str().unwrap()], &d);
    tar(&["-rf", t.to_str().unwrap(), "dup", "target", "hl"], &d);
    write(&d, "dup", b"second copy, the one shown\n");
    tar(&["-rf", t.to_str().unwrap(), "dup"], &d);
    tar(&["--delete", "-f", t.to_str().unwrap(), "target"], &d);
    let listing = String::from_utf8(run_ok(Command::new("tar").arg("-tPf").arg(&t)).stdout).unwrap();
    assert_eq!(listing.lines().filter(|l| *l == "dup").count(), 2, "{listing}");
    assert!(
        listing.contains("../escape") && listing.contains(abs.to_str().unwrap()),
        "{listing}"
    );
    assert!(!listing.lines().any(|l| l == "target"), "{listing}");
    let names = gzip_blob(fs::read(&t).unwrap());

    // 3. A bomb: a header claiming 1 TiB in a 4 KiB layer, then 200,000 empty files.
    let mut bomb = Vec::new();
    bomb.extend_from_slice(raw_header("huge", tar::EntryType::Regular, 1 << 40).as_bytes());
    bomb.extend_from_slice(&[7u8; 4096]);
    let bomb_huge = gzip_blob(bomb);
    let mut many = Vec::with_capacity(200_001 * 512 + 1024);
    many.extend_from_slice(raw_header("many/", tar::EntryType::Directory, 0).as_bytes());
    for i in 0..200_000 {
        many.extend_from_slice(raw_header(&format!("many/{i:06}"), tar::EntryType::Regular, 0).as_bytes());
    }
    many.extend_from_slice(&[0u8; 1024]);
    let bomb_many = gzip_blob(many);

    let good = gzip_blob(tar_of(&{
        let g = w.join("good");
        write(&g, "etc/os-release", b"ID=good\n");
        g
    }));
    push_layers(
        &c,
        "bad/mix",
        "v1",
        &[&good, &truncated, &names, &bomb_huge, &bomb_many],
    );

    let m = Mount::start(&reg.url());
    let rootfs = m.join("bad/mix/_tags/v1/rootfs");
    assert_eq!(fs::read(rootfs.join("etc/os-release")).unwrap(), b"ID=good\n");
    // 1.
    assert_eq!(fs::read(rootfs.join("t/a-first")).unwrap(), b"before the cut\n");
    assert_eq!(err(fs::read(rootfs.join("t/b-cut"))), libc::EIO);
    assert_eq!(err(fs::symlink_metadata(rootfs.join("t/c-after"))), libc::ENOENT);
    // 2.
    assert_eq!(err(fs::symlink_metadata(rootfs.join("escape"))), libc::ENOENT);
    assert_eq!(err(fs::symlink_metadata(m.join("bad/escape"))), libc::ENOENT);
    let top = list_dir(&rootfs).unwrap();
    assert_eq!(
        top,
        ["dup", "etc", "hl", "huge", "many", "t"],
        "absolute and '..' names are not shown"
    );
    assert_eq!(fs::read(rootfs.join("dup")).unwrap(), b"second copy, the one shown\n");
    assert_eq!(err(fs::read(rootfs.join("hl"))), libc::EIO);
    // 3.
    assert_eq!(fs::metadata(rootfs.join("huge")).unwrap().len(), 1 << 40);
    let mut f = fs::File::open(rootfs.join("huge")).unwrap();
    assert_eq!(err(std::io::Read::read(&mut f, &mut [0u8; 65536])), libc::EIO);
    assert_eq!(list_dir(&rootfs.join("many")).unwrap().len(), 200_000);
    let rss = peak_rss(m.pid().unwrap());
    eprintln!("daemon peak RSS with 200,000 entries listed: {} MiB", rss >> 20);
    assert!(rss < 300 << 20, "peak RSS {} MiB", rss >> 20);
    // One log line per broken layer says what was wrong.
    let log = m.log();
    for needle in [
        "escapes the layer root",
        "hard link hl -> target: target missing",
        "huge",
    ] {
        assert!(log.contains(needle), "log lacks {needle:?}:\n{log}");
    }
    assert!(
        log.lines()
            .any(|l| l.contains(&truncated.digest()) && l.contains("layer contents")),
        "a line names the truncated layer:\n{log}"
    );
    assert!(m.is_mounted());
}

/// A tar bomb of many entries through a real mount, over a cap lowered with
/// `REGFS_CONTENTS_MAX_ENTRIES` (the default, 1,000,000, would need a layer of
/// over half a GiB of tar): the entries up to the cap are listed and read, the
/// rest of the layer is not listed (ENOENT, as the contract says: "at most N
/// entries per layer are listed"), one log line says so, the mount stays
/// healthy and the daemon's memory is bounded by the cap, not by the layer.
#[test]
fn a_tar_bomb_over_the_entry_cap_lists_up_to_the_cap_with_one_log_line_and_bounded_memory() {
    const CAP: usize = 20_000;
    const ENTRIES: usize = 600_000;
    let reg = Registry::start();
    let c = reg.client();
    let mut tar = Vec::with_capacity((ENTRIES + 8) * 512 + 1024);
    tar.extend_from_slice(raw_header("etc/", tar::EntryType::Directory, 0).as_bytes());
    let release = b"ID=bomb\n";
    tar.extend_from_slice(raw_header("etc/os-release", tar::EntryType::Regular, release.len() as u64).as_bytes());
    let mut block = [0u8; 512];
    block[..release.len()].copy_from_slice(release);
    tar.extend_from_slice(&block);
    tar.extend_from_slice(raw_header("bomb/", tar::EntryType::Directory, 0).as_bytes());
    for i in 0..ENTRIES {
        tar.extend_from_slice(raw_header(&format!("bomb/{i:06}"), tar::EntryType::Regular, 0).as_bytes());
    }
    tar.extend_from_slice(raw_header("late/", tar::EntryType::Directory, 0).as_bytes());
    tar.extend_from_slice(&[0u8; 1024]);
    let layer = gzip_blob(tar);
    let small = gzip_blob(tar_of(&{
        let d = tempfile::tempdir().unwrap().keep();
        write(&d, "usr/share/ok", b"a healthy layer\n");
        d
    }));
    push_layers(&c, "bomb/app", "v1", &[&small, &layer]);

    let m = Mount::builder(&reg.url())
        .env("REGFS_CONTENTS_MAX_ENTRIES", &CAP.to_string())
        .start();
    let rootfs = m.join("bomb/app/_tags/v1/rootfs");
    let listed = list_dir(&rootfs.join("bomb")).unwrap();
    // The cap counts entries in tar order: etc/, etc/os-release, bomb/, then bomb/000000…
    assert_eq!(listed.len(), CAP - 3);
    assert_eq!(
        listed.last().map(String::as_str),
        Some(format!("{:06}", CAP - 4).as_str())
    );
    assert_eq!(
        err(fs::symlink_metadata(rootfs.join(format!("bomb/{:06}", CAP - 3)))),
        libc::ENOENT
    );
    assert_eq!(err(fs::symlink_metadata(rootfs.join("late"))), libc::ENOENT);
    assert_eq!(fs::read(rootfs.join("etc/os-release")).unwrap(), b"ID=bomb\n");
    assert_eq!(fs::read(rootfs.join("bomb/000042")).unwrap(), b"");
    assert_eq!(fs::read(rootfs.join("usr/share/ok")).unwrap(), b"a healthy layer\n");
    // The layer's own tree is capped the same way (the same index).
    let own = m.join(format!("bomb/app/_layers/{}", layer.digest()));
    assert_eq!(list_dir(&own.join("bomb")).unwrap().len(), CAP - 3);
    // One log line names the layer and the cap.
    let log = m.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("more than {CAP} entries")))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains(&layer.digest()), "{}", lines[0]);
    // Healthy: the rest of the mount answers.
    assert!(m.is_mounted());
    assert!(list_dir(&m.join("bomb/app/_tags")).unwrap().contains(&"v1".to_string()));
    // Memory follows the cap, not the layer's 600,000 entries: 39 MiB here,
    // against 282 MiB with the same layer listed whole (cap 1,000,000).
    let rss = peak_rss(m.pid().unwrap());
    eprintln!(
        "daemon peak RSS after a {ENTRIES}-entry layer capped at {CAP}: {} MiB",
        rss >> 20
    );
    assert!(rss < 100 << 20, "peak RSS {} MiB", rss >> 20);
}
