//! A registry that lies, made by editing a real registry's storage behind its
//! back (distribution serves whatever its files hold): flipped bytes, crafted
//! manifests with digests that are paths, sizes that are wrong or absurd,
//! hostile platform names. What a user sees must be an errno and a log line,
//! never wrong bytes with exit 0, a path out of the mount, or a memory blow-up.
//! Also: the cache is private, the password never reaches the daemon's
//! environment, SIGTERM with a file open leaves a clean mountpoint.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

use common::client::OCI_CONFIG;

/// The file holding a blob's bytes in distribution's storage.
fn blob_data(reg: &Registry, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    reg.storage_dir()
        .join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
}

/// Flip one byte of a stored blob: the registry now serves other bytes of the same length.
fn flip_byte(reg: &Registry, digest: &str, offset: usize) {
    let path = blob_data(reg, digest);
    let mut bytes = fs::read(&path).unwrap();
    bytes[offset] ^= 0xff;
    fs::write(&path, bytes).unwrap();
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// `cat PATH` as a real process: its exit status and stderr.
fn cat(path: &Path) -> (bool, String) {
    let out = Command::new("cat").arg(path).output().expect("cat runs");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn read_errno(path: &Path) -> i32 {
    match fs::read(path) {
        Ok(b) => panic!("{} read {} bytes; expected an error", path.display(), b.len()),
        Err(e) => errno_of(&e),
    }
}

#[test]
fn flipped_blob_byte_is_eio_for_cat_and_every_later_read() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("lies/flip", "v1", &[3 << 20]);
    let layer = img.layers[0].digest.clone();
    flip_byte(&reg, &layer, (2 << 20) + 17);
    let m = Mount::start(&reg.url());
    let path = m.join(format!("lies/flip/_blobs/{layer}"));

    let (ok, stderr) = cat(&path);
    assert!(!ok, "cat of a blob with a flipped byte must fail");
    assert!(stderr.contains("Input/output error"), "{stderr}");
    assert_eq!(read_errno(&path), libc::EIO, "a second read fails too");
    assert_eq!(
        read_errno(&m.join(format!("lies/flip/_manifests/{}/layers/00", img.digest))),
        libc::EIO
    );
    assert!(m.log().contains("digest mismatch"), "{}", m.log());
    let cached = m
        .cache_dir()
        .join(format!("blobs/sha256/{}", layer.trim_start_matches("sha256:")));
    assert!(
        !cached.exists(),
        "a blob that failed verification never reaches the cache"
    );
    assert!(m.join(".regfs/errors").exists());
    let errors = fs::read_to_string(m.join(".regfs/errors")).unwrap();
    assert!(errors.contains("digest mismatch"), "{errors}");
}

#[test]
fn config_with_other_bytes_of_the_same_length_is_eio() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("lies/config", "v1", &[1000]);
    flip_byte(&reg, &img.config.digest, 3);
    let m = Mount::start(&reg.url());
    let config = m.join(format!("lies/config/_manifests/{}/config.json", img.digest));
    let (ok, _) = cat(&config);
    assert!(!ok, "cat of a config with other bytes must fail");
    assert_eq!(read_errno(&config), libc::EIO);
}

#[test]
fn pages_read_before_a_mismatch_are_dropped_from_the_kernel_cache() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("lies/pages", "v1", &[4 << 20]);
    let layer = img.layers[0].digest.clone();
    flip_byte(&reg, &layer, (4 << 20) - 5);
    let m = Mount::start(&reg.url());
    let path = m.join(format!("lies/pages/_blobs/{layer}"));
    let mut f = fs::File::open(&path).unwrap();
    // A read in the middle of a blob not yet verified returns the registry's bytes.
    let head = read_exact_at(&mut f, 0, 4096).unwrap();
    assert_eq!(head, img.layers[0].bytes[..4096]);
    // Reaching the end finds the mismatch.
    let e = read_exact_at(&mut f, (4 << 20) - 4096, 4096).unwrap_err();
    assert_eq!(errno_of(&e), libc::EIO);
    // The first page was in the kernel's page cache; it must be gone, and this
    // handle poisoned: the same read now fails instead of being served from memory.
    assert!(
        wait_until(Duration::from_secs(10), || read_exact_at(&mut f, 0, 4096).is_err()),
        "the first page is still served after the mismatch"
    );
    assert_eq!(errno_of(&read_exact_at(&mut f, 0, 4096).unwrap_err()), libc::EIO);
}

#[test]
fn descriptor_smaller_than_the_blob_is_eio_not_a_prefix() {
    let reg = Registry::start();
    let c = reg.client();
    let img = c.push_random_image("lies/short", "honest", &[2 << 20]);
    let layer = &img.layers[0];
    let config = c.push_blob("lies/short", br#"{"architecture":"amd64","os":"linux"}"#);
    let lying = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config, 37),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer.digest, 1 << 20)],
    });
    let lying_digest = reg.inject_manifest("lies/short", Some("short"), lying.to_string().as_bytes());
    let m = Mount::start(&reg.url());
    let short = m.join(format!("lies/short/_manifests/{lying_digest}/layers/00"));
    let (ok, _) = cat(&short);
    assert!(
        !ok,
        "a descriptor claiming half the size must not give a prefix with exit 0"
    );
    assert!(m.log().contains("size mismatch"), "{}", m.log());
}

#[test]
fn sizes_claimed_by_two_manifests_that_disagree_are_settled_by_the_registry() {
    let reg = Registry::start();
    let c = reg.client();
    let img = c.push_random_image("lies/disputed", "honest", &[1 << 20]);
    let layer = &img.layers[0];
    let lying = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &img.config.digest, img.config.bytes.len() as u64),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer.digest, 1000)],
    });
    let lying_digest = reg.inject_manifest("lies/disputed", Some("liar"), lying.to_string().as_bytes());
    let m = Mount::start(&reg.url());
    // Both manifests seen, the lying one last: their claims disagree, and the
    // last claim must not win.
    fs::read(m.join(format!("lies/disputed/_manifests/{}/manifest.json", img.digest))).unwrap();
    fs::read(m.join(format!("lies/disputed/_manifests/{lying_digest}/manifest.json"))).unwrap();
    let blob = m.join(format!("lies/disputed/_blobs/{}", layer.digest));
    assert_eq!(
        fs::metadata(&blob).unwrap().len(),
        1 << 20,
        "the registry's length wins"
    );
    let bytes = fs::read(m.join(format!("lies/disputed/_manifests/{}/layers/00", img.digest))).unwrap();
    assert_eq!(sha256_hex(&bytes), layer.digest.trim_start_matches("sha256:"));
}

#[test]
fn absurd_sizes_cost_no_memory_and_no_disk() {
    let reg = Registry::start();
    let c = reg.client();
    let config = c.push_blob("lies/huge", br#"{"architecture":"amd64","os":"linux"}"#);
    let fifteen_tib: u64 = 15 << 40;
    let layers: Vec<String> = (0..40)
        .map(|_| c.push_blob("lies/huge", &random_bytes(10_000)))
        .collect();
    let descriptors: Vec<_> = layers
        .iter()
        .map(|d| descriptor("application/vnd.oci.image.layer.v1.tar+gzip", d, fifteen_tib))
        .collect();
    let crafted = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config, 37),
        "layers": descriptors,
    });
    let digest = reg.inject_manifest("lies/huge", Some("huge"), crafted.to_string().as_bytes());
    let m = Mount::start(&reg.url());
    let pid = m.pid().unwrap();
    let before = vm_rss_kib(pid);
    let started = Instant::now();
    let mut open = Vec::new();
    for i in 0..40 {
        let p = m.join(format!("lies/huge/_manifests/{digest}/layers/{i:02}"));
        assert_eq!(
            fs::metadata(&p).unwrap().len(),
            fifteen_tib,
            "stat shows the claim (no request)"
        );
        let mut f = fs::File::open(&p).unwrap();
        let mut buf = [0u8; 4096];
        let e = f.read(&mut buf).unwrap_err();
        assert_eq!(errno_of(&e), libc::EIO, "layer {i}: the registry's length disagrees");
        open.push(f); // every file stays open: nothing may be sized from the claim
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    let after = vm_rss_kib(pid);
    assert!(after < before + 50 * 1024, "RSS grew from {before} KiB to {after} KiB");
    // No file in the cache claims the size either.
    for e in walk(m.cache_dir()) {
        let meta = fs::metadata(&e).unwrap();
        assert!(meta.len() < 1 << 30, "{} is {} bytes", e.display(), meta.len());
    }
    // Once the registry has said, the blob shows its true size and reads verified.
    let p = m.join(format!("lies/huge/_blobs/{}", layers[0]));
    assert_eq!(fs::metadata(&p).unwrap().len(), 10_000);
    assert_eq!(
        sha256_hex(&fs::read(&p).unwrap()),
        layers[0].trim_start_matches("sha256:")
    );
    assert!(m.log().contains("size mismatch"));
}

#[test]
fn digests_that_are_paths_never_leave_the_mount() {
    let reg = Registry::start();
    let outside = tempfile::tempdir().unwrap();
    let canary = outside.path().join("canary");
    fs::write(&canary, b"do not touch").unwrap();
    let escape = format!("../../../../../../../../../..{}", canary.display());
    let c = reg.client();
    let layer = c.push_blob("lies/paths", &random_bytes(1000));
    let crafted = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": escape, "size": 12},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "/etc/passwd", "size": 10},
            descriptor("application/vnd.oci.image.layer.v1.tar", &layer, 1000),
        ],
        "subject": {"mediaType": OCI_MANIFEST, "digest": "sha256:../../../../etc", "size": 1},
    });
    let digest = reg.inject_manifest("lies/paths", Some("paths"), crafted.to_string().as_bytes());
    let m = Mount::start(&reg.url());
    let dir = m.join(format!("lies/paths/_manifests/{digest}"));
    for (name, target) in [
        ("config.json", "../../_blobs/invalid-digest"),
        ("layers/00", "../../../_blobs/invalid-digest"),
        ("subject", "../../_blobs/invalid-digest"),
    ] {
        assert_eq!(link_of(&dir.join(name)), target, "{name}");
        assert_eq!(
            read_errno(&dir.join(name)),
            libc::ENOENT,
            "{name} dangles inside the mount"
        );
    }
    assert_eq!(link_of(&dir.join("layers/01")), format!("../../../_blobs/{layer}"));
    // Writing through the link reaches nothing outside.
    assert!(fs::write(dir.join("config.json"), b"overwritten").is_err());
    assert_eq!(fs::read(&canary).unwrap(), b"do not touch");
    assert!(m.log().contains("invalid digest"), "{}", m.log());
}

#[test]
fn hostile_platform_names_become_safe_file_names() {
    let reg = Registry::start();
    let c = reg.client();
    let child = c.push_random_image("lies/platforms", "child", &[100]);
    let index = json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            descriptor_with(child_descriptor(&child), json!({"platform": {"os": "linux\nevil", "architecture": "a".repeat(400)}})),
            descriptor_with(child_descriptor(&child), json!({"platform": {"os": "../..", "architecture": "/x"}})),
            {"mediaType": OCI_MANIFEST, "digest": "../../../../etc/passwd", "size": 1},
        ]
    });
    let digest = reg.inject_manifest("lies/platforms", Some("idx"), index.to_string().as_bytes());
    let m = Mount::start(&reg.url());
    let children = m.join(format!("lies/platforms/_manifests/{digest}/manifests"));
    let names = list_dir(&children).unwrap();
    assert_eq!(names.len(), 2, "{names:?}");
    for n in &names {
        assert!(n.len() <= 255 && !n.contains('\n') && !n.contains('/'), "{n:?}");
        assert_eq!(link_of(&children.join(n)), format!("../../{}", child.digest));
        assert!(fs::read(children.join(n).join("manifest.json")).is_ok());
    }
}

fn child_descriptor(img: &ImageInfo) -> serde_json::Value {
    descriptor(&img.media_type, &img.digest, img.manifest.len() as u64)
}

#[test]
fn the_cache_is_private_by_default() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("private/app", "v1", &[5000]);
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("cache");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let m = Mount::builder(&reg.url()).cache_dir(&dir).start();
    let bytes = fs::read(m.join(format!("private/app/_blobs/{}", img.layers[0].digest))).unwrap();
    assert_eq!(bytes, img.layers[0].bytes);
    fs::read(m.join("private/app/_tags/v1/manifest.json")).unwrap();
    assert_eq!(
        fs::metadata(&dir).unwrap().mode() & 0o777,
        0o700,
        "the cache dir is made private"
    );
    let entries = walk(&dir);
    assert!(entries.len() >= 3, "{entries:?}");
    for p in entries {
        let mode = fs::metadata(&p).unwrap().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", p.display());
    }
    assert!(m.log().contains("made it 0700"));
}

#[test]
fn shared_cache_keeps_the_mode_the_user_chose() {
    let reg = Registry::start();
    reg.client().push_random_image("shared/app", "v1", &[100]);
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("cache");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let m = Mount::builder(&reg.url()).cache_dir(&dir).arg("--shared-cache").start();
    fs::read(m.join("shared/app/_tags/v1/manifest.json")).unwrap();
    assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o755);
}

#[test]
fn the_password_reaches_the_background_daemon_through_a_pipe() {
    let reg = Registry::start_with(RegistryOptions::htpasswd());
    reg.client().push_random_image("secret/app", "v1", &[100]);
    let m = Mount::builder(&reg.url())
        .args(["--username", TEST_USER, "--password-stdin"])
        .stdin(format!("{TEST_PASSWORD}\n").as_bytes())
        .start_background()
        .unwrap();
    assert!(fs::read(m.join("secret/app/_tags/v1/manifest.json")).is_ok());
    let pids = m.daemon_pids();
    assert!(!pids.is_empty());
    for pid in pids {
        let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        for (what, bytes) in [("environment", environ), ("command line", cmdline)] {
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains(TEST_PASSWORD), "password in the daemon's {what}");
        }
    }
}

#[test]
fn sigterm_with_a_file_open_leaves_a_clean_mountpoint() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("term/app", "v1", &[100]);
    let mut m = Mount::start(&reg.url());
    let held = fs::File::open(m.join(format!("term/app/_blobs/{}", img.layers[0].digest))).unwrap();
    let cwd_holder = Command::new("sleep")
        .arg("30")
        .current_dir(m.join("term/app/_tags"))
        .spawn()
        .unwrap();
    m.signal(libc::SIGTERM);
    let status = m.wait_exit(Duration::from_secs(30)).expect("the daemon exits");
    assert!(status.success(), "{status:?}\n{}", m.log());
    assert!(
        !is_fuse_mounted(m.path()),
        "the mountpoint is clean: no dead mount left"
    );
    // The directory is usable again: no "Transport endpoint is not connected".
    fs::read_dir(m.path()).unwrap();
    assert!(m.log().contains("detaching the mount lazily"), "{}", m.log());
    drop(held);
    let mut holder = cwd_holder;
    let _ = holder.kill();
    let _ = holder.wait();
}

/// A tmpfs of `mib` MiB mounted at a new directory; unmounted on drop.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn new(mib: u32) -> SmallFs {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs (the tests run as root)");
        SmallFs(dir)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_cache_filesystem_still_serves_verified_reads() {
    let reg = Registry::start();
    let c = reg.client();
    let big = c.push_random_image("full/app", "big", &[24 << 20]);
    let small = c.push_random_image("full/app", "small", &[3 << 20]);
    let fs_ = SmallFs::new(8);
    let cache = fs_.0.path().join("cache");
    let m = Mount::builder(&reg.url()).cache_dir(&cache).start();
    for img in [&big, &small, &big] {
        let path = m.join(format!("full/app/_blobs/{}", img.layers[0].digest));
        let out = Command::new("sha256sum").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            m.log()
        );
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(
            printed.starts_with(img.layers[0].digest.trim_start_matches("sha256:")),
            "{printed}"
        );
    }
    assert!(m.log().contains("cache filesystem full"), "{}", m.log());
    // A lying registry is still caught without a cache: flip a byte of the big blob.
    flip_byte(&reg, &big.layers[0].digest, 100);
    let m2 = Mount::builder(&reg.url())
        .cache_dir(&fs_.0.path().join("cache2"))
        .start();
    let (ok, _) = cat(&m2.join(format!("full/app/_blobs/{}", big.layers[0].digest)));
    assert!(!ok, "wrong bytes are EIO even when they cannot be cached");
}

/// Bytes reach a reader from memory as they arrive and the cache file is
/// written behind them (issue 13): when that write fails part-way (a 4 MiB
/// cache filesystem under a 32 MiB blob), the reader still gets the
/// registry's bytes, every one of them, in 1 MiB reads, nothing is left in
/// the cache, and the log says why.
#[test]
fn a_cache_write_failing_behind_the_reader_still_gives_exact_bytes() {
    let reg = Registry::start();
    let c = reg.client();
    let img = c.push_random_image("full/lag", "big", &[32 << 20]);
    let layer = &img.layers[0];
    let fs_ = SmallFs::new(4);
    let cache = fs_.0.path().join("cache");
    let m = Mount::builder(&reg.url()).cache_dir(&cache).start();
    let path = m.join(format!("full/lag/_blobs/{}", layer.digest));
    let mut f = fs::File::open(&path).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read at {}: {e}\n{}", got.len(), m.log()));
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got.len(), layer.bytes.len());
    assert!(got == layer.bytes, "the bytes read differ from the registry's");
    let log = m.log();
    assert!(log.contains("cache filesystem full"), "{log}");
    assert!(log.contains("No space left on device"), "{log}");
    let cached: Vec<_> = fs::read_dir(cache.join("blobs/sha256")).unwrap().flatten().collect();
    assert!(
        cached.iter().all(|e| e.file_name().to_string_lossy() != layer.hex()),
        "a blob whose cache write failed is not in the cache: {cached:?}"
    );
}

#[test]
fn an_unusable_cache_dir_is_named_in_the_error() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    fs::create_dir(&cache).unwrap();
    // Root ignores modes, so make the cache unusable another way: files where
    // its subdirectories must go.
    for sub in ["blobs", "manifests", "partial", "staging"] {
        fs::write(cache.join(sub), b"x").unwrap();
    }
    let err = Mount::builder(&reg.url())
        .cache_dir(&cache)
        .try_start()
        .err()
        .expect("mount fails");
    let shown = format!("{}{}", err.stderr, err.log);
    assert!(shown.contains(&format!("cache dir {}", cache.display())), "{shown}");
}

#[test]
fn a_damaged_archive_in_uploads_is_einval_and_nothing_is_pushed() {
    let reg = Registry::start();
    reg.client().push_random_image("arch/app", "v1", &[100]);
    let work = tempfile::tempdir().unwrap();
    fs::write(work.path().join("manifest.json"), b"[]").unwrap();
    fs::write(work.path().join("layer"), random_bytes(3000)).unwrap();
    let tar = work.path().join("image.tar");
    let ok = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(work.path())
        .args(["manifest.json", "layer"])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let mut bytes = fs::read(&tar).unwrap();
    // The second header (after manifest.json's header and one data block) gets a bad checksum.
    bytes[1024 + 148..1024 + 156].copy_from_slice(b"9999999\0");
    let m = Mount::start(&reg.url());
    assert_eq!(
        write_and_close(&m.join("arch/app/_uploads/image.tar"), &bytes),
        Err(libc::EINVAL)
    );
    let digest = format!("sha256:{}", sha256_hex(&bytes));
    let status = reg
        .client()
        .get_status(&format!("/v2/arch/app/blobs/{digest}"))
        .unwrap();
    assert_eq!(status, 404, "the damaged tar must not be pushed as a blob");
    assert!(m.log().contains("damaged tar"), "{}", m.log());
    assert_eq!(list_dir(&m.join("arch/app/_uploads")).unwrap(), Vec::<String>::new());
}

#[test]
fn a_failed_push_is_not_listed_and_reading_it_pushes_nothing() {
    let reg = Registry::start();
    reg.client().push_random_image("failed/app", "v1", &[100]);
    let m = Mount::start(&reg.url());
    let wrong = format!("sha256:{}", "0".repeat(64));
    let path = m.join(format!("failed/app/_blobs/{wrong}"));
    assert_eq!(
        write_and_close(&path, b"these bytes do not hash to the name"),
        Err(libc::EIO)
    );
    // Reading what is left of it (if anything) must not push again on close.
    assert!(
        wait_until(Duration::from_secs(10), || !list_dir(&m.join("failed/app/_blobs"))
            .unwrap()
            .contains(&wrong)),
        "the failed upload stays listed"
    );
    assert_eq!(errno_of(&fs::symlink_metadata(&path).unwrap_err()), libc::ENOENT);
}

#[test]
fn a_held_manifest_is_listed_and_can_be_stat() {
    let reg = Registry::start();
    let c = reg.client();
    c.push_random_image("held/app", "v1", &[100]);
    let missing = format!("sha256:{}", "1".repeat(64));
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &missing, 10),
        "layers": [],
    })
    .to_string();
    let digest = format!("sha256:{}", sha256_hex(manifest.as_bytes()));
    let m = Mount::start(&reg.url());
    let dir = m.join(format!("held/app/_manifests/{digest}"));
    fs::create_dir(&dir).unwrap();
    assert_eq!(write_and_close(&dir.join("manifest.json"), manifest.as_bytes()), Ok(()));
    let held = fs::read_to_string(m.join(".regfs/held")).unwrap();
    assert!(held.contains(&digest), "{held}");
    assert!(list_dir(&m.join("held/app/_manifests")).unwrap().contains(&digest));
    let meta = fs::symlink_metadata(dir.join("manifest.json")).unwrap();
    assert_eq!(meta.len(), manifest.len() as u64);
    assert_eq!(fs::read(dir.join("manifest.json")).unwrap(), manifest.as_bytes());
}

#[test]
fn tag_resolution_in_the_background_stops_when_nobody_looks() {
    let reg = Registry::start();
    let c = reg.client();
    let img = c.push_random_image("many/tags", "t0", &[100]);
    for i in 1..600 {
        c.push_manifest("many/tags", &format!("t{i}"), &img.media_type, &img.manifest);
    }
    let proxy = FaultProxy::start(&reg.host_port());
    // Slow enough that 600 tags take far longer than the 3 s interest window
    // at 64 tags at a time (src/core/view.rs TAG_CONCURRENCY): 10 waves of 500 ms,
    // of which at most 7 (448 tags) start within the window.
    proxy.set_delay_ms(500);
    let m = Mount::start(&proxy.url());
    assert_eq!(list_dir(&m.join("many/tags/_tags")).unwrap().len(), 600);
    // A look at one link (as `ls -l` does right after the listing) starts it.
    assert!(fs::symlink_metadata(m.join("many/tags/_tags/t1"))
        .unwrap()
        .file_type()
        .is_symlink());
    let heads = || {
        proxy
            .requests()
            .iter()
            .filter(|r| r.method == "HEAD" && r.target.contains("/manifests/t"))
            .count()
    };
    std::thread::sleep(Duration::from_secs(8));
    let after_8s = heads();
    std::thread::sleep(Duration::from_secs(3));
    let after_11s = heads();
    assert!(after_8s < 500, "{after_8s} tags resolved after ls returned");
    assert_eq!(after_8s, after_11s, "resolution goes on after nobody looks at the tags");
    assert!(after_8s > 0, "the listing starts resolving tags");
}
