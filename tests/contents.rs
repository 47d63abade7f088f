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
use common::*;

const MTIME: &str = "@1700000000";

/// A layer made by GNU tar from the directory `dir` (all of it, `./` first).
fn layer_of(dir: &Path) -> RealLayer {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    let tar = run_ok(
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
    .stdout;
    let gz = {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        fs::write(tmp.path(), &tar).unwrap();
        run_ok(Command::new("gzip").args(["-n", "-c"]).arg(tmp.path())).stdout
    };
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

/// `find DIR -mindepth 1 -printf FORMAT`, sorted.
fn find(dir: &Path, args: &[&str], format: &str) -> Vec<String> {
    let out = run_ok(
        Command::new("find")
            .arg(dir)
            .args(["-mindepth", "1"])
            .args(args)
            .args(["-printf", format]),
    );
    let mut lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    lines
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
        strip(find(&rootfs, &["!", "-type", "d"], non_dirs), &rootfs),
        strip(find(&expected, &["!", "-type", "d"], non_dirs), &expected)
    );
    let dirs = "%y %m %U %G %p\n";
    assert_eq!(
        strip(find(&rootfs, &["-type", "d"], dirs), &rootfs),
        strip(find(&expected, &["-type", "d"], dirs), &expected)
    );
    // Directory entries carry the type too (find -type reads it from readdir).
    assert_eq!(find(&rootfs, &["-type", "p"], "%P\n"), ["run/fifo"]);
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
