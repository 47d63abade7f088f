//! Layers built in the test (tar crate headers, GNU tar, gzip, zstd), indexed,
//! merged and read back; GNU tar's own view of the same bytes is the witness
//! where it has one.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

use super::*;

const MTIME: u64 = 1_700_000_000;

/// A tar archive assembled header by header.
struct Layer {
    b: tar::Builder<Vec<u8>>,
}

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h
}

impl Layer {
    fn new() -> Self {
        Layer {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn dir(&mut self, path: &str) -> &mut Self {
        let mut h = header(EntryType::Directory, 0o755, 0);
        self.b.append_data(&mut h, path, io::empty()).unwrap();
        self
    }

    fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.file_meta(path, data, 0o644, 0, 0)
    }

    fn file_meta(&mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> &mut Self {
        let mut h = header(EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }

    fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = header(EntryType::Symlink, 0o777, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = header(EntryType::Link, 0o644, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    fn node(&mut self, path: &str, kind: EntryType, major: u32, minor: u32) -> &mut Self {
        let mut h = header(kind, 0o600, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, io::empty()).unwrap();
        self
    }

    /// A PAX extended header applying to the next entry.
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (k, v) in records {
            let body_len = k.len() + v.len() + 3; // ' ', '=', '\n'
            let mut len = body_len + 1;
            while len.to_string().len() + body_len != len {
                len = len.to_string().len() + body_len;
            }
            data.extend_from_slice(format!("{len} {k}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        let mut h = header(EntryType::XHeader, 0o644, data.len() as u64);
        h.as_old_mut().name[..9].copy_from_slice(b"PaxHeader");
        h.set_cksum();
        self.b.append(&h, &data[..]).unwrap();
        self
    }

    /// An entry whose name is written as given (no validation: `..`, absolute).
    fn raw(&mut self, name: &[u8], kind: EntryType, data: &[u8]) -> &mut Self {
        let mut h = header(kind, 0o644, data.len() as u64);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    fn finish(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()))
            .into_inner()
            .unwrap()
    }
}

fn run_filter(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} must be installed: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{program} {args:?} failed");
    out.stdout
}

fn gzip(data: &[u8]) -> Vec<u8> {
    run_filter("gzip", &["-c", "-n"], data)
}

fn digest_of(blob: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(blob)))
}

fn index(blob: &[u8]) -> LayerIndex {
    LayerIndex::build(&digest_of(blob), None, blob, &Limits::default()).expect("index builds")
}

/// Counts what a read asks of the blob.
struct Counting<'a> {
    blob: &'a [u8],
    fetched: Cell<u64>,
    requests: Cell<u32>,
}

impl<'a> Counting<'a> {
    fn new(blob: &'a [u8]) -> Self {
        Counting {
            blob,
            fetched: Cell::new(0),
            requests: Cell::new(0),
        }
    }
}

impl SpanSource for Counting<'_> {
    fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        self.fetched.set(self.fetched.get() + len);
        self.requests.set(self.requests.get() + 1);
        self.blob.read_at(offset, len)
    }
}

/// Pseudo-random bytes (incompressible: gzip cannot shrink them).
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Equal bytes, or a short message (never megabytes of numbers).
fn same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: {} bytes read, {} expected, first difference at {at}",
            got.len(),
            want.len()
        );
    }
}

fn read_all(fs: &Rootfs, path: &str, src: &dyn SpanSource) -> Vec<u8> {
    let node = fs.lookup_path(path).unwrap_or_else(|| panic!("{path} is in the tree"));
    fs.read(node, 0, u64::MAX, src)
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Every path of a tree with its kind letter (as `find -printf %y`), sorted.
fn listing(fs: &Rootfs) -> BTreeMap<String, char> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(String::new(), fs.root())];
    while let Some((path, dir)) = stack.pop() {
        for (name, node) in fs.list(dir) {
            let p = if path.is_empty() {
                name.to_string()
            } else {
                format!("{path}/{name}")
            };
            let kind = match fs.metadata(node).kind {
                Kind::File => 'f',
                Kind::Dir => 'd',
                Kind::Symlink => 'l',
                Kind::Char => 'c',
                Kind::Block => 'b',
                Kind::Fifo => 'p',
                Kind::HardLink => 'h',
            };
            if kind == 'd' {
                stack.push((p.clone(), node));
            }
            out.insert(p, kind);
        }
    }
    out
}

/// GNU tar's list of member names, normalized like ours.
fn gnu_tar_names(tar_bytes: &[u8]) -> Vec<String> {
    let out = run_filter("tar", &["-t"], tar_bytes);
    let mut names: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .filter_map(entry::normalize_path)
        .filter(|p| !p.is_empty())
        .collect();
    names.sort();
    names
}

fn metadata_layer() -> Vec<u8> {
    let long_dir = "d".repeat(120);
    let long_file = format!("{long_dir}/{}", "f".repeat(130));
    let mut l = Layer::new();
    l.dir("./")
        .dir("etc")
        .file_meta("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o4755, 1000, 2000)
        .symlink("etc/rel", "../usr/lib/os-release")
        .symlink("etc/abs", "/usr/lib/os-release")
        .symlink("etc/dangling", "nowhere/at/all")
        .dir("usr/lib")
        .file("usr/lib/os-release", b"ID=test\n")
        .hardlink("etc/os-release-hard", "usr/lib/os-release")
        .dir("dev")
        .node("dev/null", EntryType::Char, 1, 3)
        .node("dev/sda", EntryType::Block, 8, 0)
        .node("dev/fifo", EntryType::Fifo, 0, 0)
        .dir(&long_dir)
        .file(&long_file, b"gnu long name\n")
        .symlink("longlink", &format!("/{}", "t".repeat(150)));
    // PAX: a long path, xattrs, big uid/gid and an mtime with a fraction.
    let pax_path = format!("pax/{}", "p".repeat(200));
    l.dir("pax").pax(&[
        ("path", pax_path.as_bytes()),
        ("SCHILY.xattr.user.comment", b"hello"),
        ("SCHILY.xattr.security.capability", &[1, 0, 0, 2, 0x20, 0, 0, 0]),
        ("uid", b"3000000"),
        ("mtime", b"1700000123.75"),
    ]);
    l.raw(b"pax/short-name-ignored", EntryType::Regular, b"pax long name data\n");
    l.finish()
}

#[test]
fn metadata_of_every_entry_type_and_names_match_gnu_tar() {
    let tar_bytes = metadata_layer();
    let blob = gzip(&tar_bytes);
    let idx = index(&blob);
    assert!(idx.problems.is_empty(), "{}", idx.problems.summary());
    assert_eq!(idx.compression, Compression::Gzip);
    assert_eq!(idx.uncompressed_size, tar_bytes.len() as u64);
    let mut ours: Vec<String> = idx
        .entries
        .iter()
        .map(|e| e.path.to_string())
        .filter(|p| !p.is_empty())
        .collect();
    ours.sort();
    assert_eq!(ours, gnu_tar_names(&tar_bytes));

    let fs = Rootfs::layer(Arc::new(idx));
    let src = &blob;
    let m = |p: &str| fs.metadata(fs.lookup_path(p).unwrap_or_else(|| panic!("{p}")));
    let passwd = m("etc/passwd");
    assert_eq!(
        (passwd.kind, passwd.mode, passwd.uid, passwd.gid, passwd.mtime),
        (Kind::File, 0o4755, 1000, 2000, MTIME as i64)
    );
    assert_eq!(read_all(&fs, "etc/passwd", src), b"root:x:0:0::/root:/bin/sh\n");
    assert_eq!(m("etc/rel").link, Some("../usr/lib/os-release"));
    assert_eq!(m("etc/rel").size, "../usr/lib/os-release".len() as u64);
    assert_eq!(m("etc/abs").link, Some("/usr/lib/os-release"));
    assert_eq!(m("etc/dangling").link, Some("nowhere/at/all"));
    assert_eq!(m("longlink").link.unwrap().len(), 151);
    let null = m("dev/null");
    assert_eq!(
        (null.kind, null.dev_major, null.dev_minor, null.mode),
        (Kind::Char, 1, 3, 0o600)
    );
    let sda = m("dev/sda");
    assert_eq!((sda.kind, sda.dev_major, sda.dev_minor), (Kind::Block, 8, 0));
    assert_eq!(m("dev/fifo").kind, Kind::Fifo);
    // Hard link: same identity, same data, two names.
    let a = fs.lookup_path("usr/lib/os-release").unwrap();
    let b = fs.lookup_path("etc/os-release-hard").unwrap();
    assert_eq!(fs.identity(a), fs.identity(b));
    assert_eq!(fs.metadata(b).nlink, 2);
    assert_eq!(read_all(&fs, "etc/os-release-hard", src), b"ID=test\n");
    // GNU long name, PAX long name + xattrs + uid + fractional mtime.
    let long_file = format!("{}/{}", "d".repeat(120), "f".repeat(130));
    assert_eq!(read_all(&fs, &long_file, src), b"gnu long name\n");
    let pax_path = format!("pax/{}", "p".repeat(200));
    let pax = m(&pax_path);
    assert_eq!((pax.uid, pax.mtime), (3_000_000, 1_700_000_123));
    assert_eq!(pax.xattrs.len(), 2);
    assert_eq!((&*pax.xattrs[0].0, &*pax.xattrs[0].1), ("user.comment", &b"hello"[..]));
    assert_eq!(&*pax.xattrs[1].0, "security.capability");
    assert_eq!(read_all(&fs, &pax_path, src), b"pax long name data\n");
    assert!(fs.lookup_path("pax/short-name-ignored").is_none());
    // The explicit root entry gives the root its metadata.
    assert_eq!(fs.metadata(fs.root()).mtime, MTIME as i64);
    assert!(fs.identity(fs.root()).is_some());
}

#[test]
fn a_layer_tree_matches_what_gnu_tar_extracts() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = Layer::new();
    l.dir("a")
        .file("a/one", b"1")
        .file("a/b/two", &noise(1, 70_000)) // parent without an entry of its own
        .symlink("a/link", "one")
        .hardlink("a/b/hard", "a/one")
        .file("dup", b"first")
        .file("dup", b"second wins")
        .file(".wh.shown-in-a-layer-view", b"");
    let tar_bytes = l.finish();
    let status = Command::new("tar")
        .args(["-x", "-C"])
        .arg(dir.path())
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(&tar_bytes)?;
            c.wait()
        })
        .unwrap();
    assert!(status.success());
    let blob = tar_bytes.clone(); // uncompressed layer
    let fs = Rootfs::layer(Arc::new(index(&blob)));
    let ours = listing(&fs);
    let mut theirs = BTreeMap::new();
    walk_disk(dir.path(), dir.path(), &mut theirs);
    assert_eq!(ours, theirs);
    for (path, kind) in &ours {
        if *kind == 'f' {
            let want = std::fs::read(dir.path().join(path)).unwrap();
            assert_eq!(read_all(&fs, path, &blob), want, "{path}");
        }
    }
}

fn walk_disk(root: &Path, dir: &Path, out: &mut BTreeMap<String, char>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_str().unwrap().to_string();
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else {
            'f'
        };
        out.insert(rel, kind);
        if ft.is_dir() {
            walk_disk(root, &e.path(), out);
        }
    }
}

#[test]
fn merged_layers_honour_whiteouts_opaque_dirs_and_last_wins() {
    let mut l1 = Layer::new();
    l1.dir("etc")
        .file("etc/keep", b"base")
        .file("etc/gone", b"deleted later")
        .file("etc/replaced", b"old")
        .dir("opq")
        .file("opq/lower", b"hidden by opaque")
        .dir("opq/sub")
        .file("opq/sub/deep", b"also hidden")
        .dir("usr/lib")
        .symlink("lib", "usr/lib")
        .file("usr/lib/libc.so", b"libc");
    // Whiteouts listed after their siblings, an opaque marker after the new entry.
    let mut l2 = Layer::new();
    l2.dir("opq")
        .file("opq/new", b"added with the opaque marker")
        .file("opq/.wh..wh..opq", b"")
        .file("etc/replaced", b"new")
        .file("etc/.wh.gone", b"")
        .file("lib/libz.so", b"through the lib symlink");
    let mut l3 = Layer::new();
    l3.file("etc/gone", b"back again")
        .file("etc/.wh.keep", b"")
        .hardlink("etc/hard-to-lower", "etc/replaced");
    let blobs: Vec<Vec<u8>> = [l1.finish(), l2.finish(), l3.finish()]
        .iter()
        .map(|t| gzip(t))
        .collect();
    let layers: Vec<Arc<LayerIndex>> = blobs.iter().map(|b| Arc::new(index(b))).collect();
    let fs = Rootfs::merged(layers.clone());
    let got = listing(&fs);
    let want: BTreeMap<String, char> = [
        ("etc", 'd'),
        ("etc/gone", 'f'),
        ("etc/replaced", 'f'),
        ("etc/hard-to-lower", 'f'),
        ("opq", 'd'),
        ("opq/new", 'f'),
        ("usr", 'd'),
        ("usr/lib", 'd'),
        ("usr/lib/libc.so", 'f'),
        ("usr/lib/libz.so", 'f'),
        ("lib", 'l'),
    ]
    .into_iter()
    .map(|(p, k)| (p.to_string(), k))
    .collect();
    assert_eq!(got, want);
    assert_eq!(read_all(&fs, "etc/gone", &blobs[2]), b"back again");
    assert_eq!(read_all(&fs, "etc/replaced", &blobs[1]), b"new");
    assert_eq!(read_all(&fs, "etc/hard-to-lower", &blobs[1]), b"new");
    assert_eq!(
        fs.layer_digest(fs.lookup_path("etc/hard-to-lower").unwrap()),
        Some(layers[1].digest.as_str())
    );
    assert_eq!(read_all(&fs, "usr/lib/libz.so", &blobs[1]), b"through the lib symlink");
    // The same layer entry has the same identity in another tree over the same layer.
    let alone = Rootfs::merged(vec![layers[0].clone()]);
    let a = fs.identity(fs.lookup_path("usr/lib/libc.so").unwrap()).unwrap();
    let b = alone.identity(alone.lookup_path("usr/lib/libc.so").unwrap()).unwrap();
    assert_eq!(a, b);
    // A layer's own view shows its whiteouts as files.
    let own = listing(&Rootfs::layer(layers[1].clone()));
    assert_eq!(own.get("etc/.wh.gone"), Some(&'f'));
    assert_eq!(own.get("opq/.wh..wh..opq"), Some(&'f'));
}

/// A layer bigger than 10 MiB of mostly incompressible files, gzip'd.
fn big_layer() -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let mut l = Layer::new();
    let mut files = Vec::new();
    for i in 0..30 {
        let data = noise(i + 100, 400_000 + (i as usize) * 1000);
        let path = format!("data/f{i:02}");
        l.file(&path, &data);
        files.push((path, data));
    }
    let big = noise(7, 6 << 20); // larger than a span
    l.file("data/big", &big);
    files.push(("data/big".into(), big));
    (gzip(&l.finish()), files)
}

#[test]
fn gzip_reads_inflate_from_the_nearest_checkpoint_and_fetch_about_one_span() {
    let (blob, files) = big_layer();
    assert!(blob.len() > 10 << 20);
    let idx = Arc::new(index(&blob));
    assert!(idx.span_count() >= 4, "{} spans", idx.span_count());
    let fs = Rootfs::layer(idx.clone());
    // A file in the middle, read whole: one span (4 MiB of output) plus the file at most.
    let (path, data) = &files[15];
    let counting = Counting::new(&blob);
    same(&read_all(&fs, path, &counting), data, path);
    let fetched = counting.fetched.get();
    assert!(
        fetched < 2 * super::spans::SPAN_SIZE + data.len() as u64,
        "fetched {fetched} bytes"
    );
    assert!(fetched >= data.len() as u64);
    // A small read in the middle of the 6 MiB file spans no more than two spans.
    let counting = Counting::new(&blob);
    let node = fs.lookup_path("data/big").unwrap();
    let got = fs.read(node, 3 << 20, 4096, &counting).unwrap();
    same(&got, &files.last().unwrap().1[3 << 20..(3 << 20) + 4096], "big");
    assert!(
        counting.fetched.get() <= 2 * super::spans::SPAN_SIZE + 4096,
        "fetched {}",
        counting.fetched.get()
    );
    // Every file, read in odd-sized pieces, is exact.
    for (path, data) in &files {
        let node = fs.lookup_path(path).unwrap();
        let mut got = Vec::new();
        let mut off = 0;
        while off < data.len() as u64 {
            let piece = fs.read(node, off, 300_001, &blob).unwrap();
            off += piece.len() as u64;
            got.extend(piece);
        }
        same(&got, data, path);
    }
    // The index on disk is small next to the layer.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("index");
    idx.save(&file).unwrap();
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(
        size * 50 < idx.uncompressed_size,
        "index {size} bytes for {} uncompressed",
        idx.uncompressed_size
    );
}

/// Serves the blob with one byte flipped.
struct Corrupt<'a> {
    blob: &'a [u8],
    at: u64,
}

impl SpanSource for Corrupt<'_> {
    fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut v = self.blob.read_at(offset, len)?;
        if (offset..offset + len).contains(&self.at) {
            v[(self.at - offset) as usize] ^= 0x55;
        }
        Ok(v)
    }
}

#[test]
fn a_corrupted_span_is_an_error_never_wrong_bytes() {
    let (blob, files) = big_layer();
    let idx = Arc::new(index(&blob));
    let fs = Rootfs::layer(idx.clone());
    let (path, data) = &files[10];
    let node = fs.lookup_path(path).unwrap();
    for at in [
        idx.spans[1].comp_start + 100,
        idx.spans[1].comp_end - 1,
        blob.len() as u64 / 2,
    ] {
        let corrupt = Corrupt { blob: &blob, at };
        // Read everything of every file: each read either fails or is exact.
        let mut failures = 0;
        for (p, d) in &files {
            let n = fs.lookup_path(p).unwrap();
            match fs.read(n, 0, u64::MAX, &corrupt) {
                Ok(got) => same(&got, d, &format!("{p} with byte {at} corrupted")),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
                    failures += 1;
                }
            }
        }
        assert!(failures > 0, "the corruption at {at} went unnoticed");
    }
    // And the clean source still reads.
    same(&fs.read(node, 0, u64::MAX, &blob).unwrap(), data, path);
}

/// A source that keeps what it serves, as the blob cache does: the copy it
/// fetched (damaged at `at` the first `bad_fetches` times) stays until discarded.
struct KeepsCopies<'a> {
    blob: &'a [u8],
    at: u64,
    bad_fetches: Cell<u32>,
    /// The kept copy of the byte at `at` is damaged.
    holds_damage: Cell<bool>,
    fetches: Cell<u32>,
    discards: Cell<u32>,
}

impl<'a> KeepsCopies<'a> {
    fn new(blob: &'a [u8], at: u64, bad_fetches: u32) -> Self {
        KeepsCopies {
            blob,
            at,
            bad_fetches: Cell::new(bad_fetches),
            holds_damage: Cell::new(false),
            fetches: Cell::new(0),
            discards: Cell::new(0),
        }
    }
}

impl SpanSource for KeepsCopies<'_> {
    fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut v = self.blob.read_at(offset, len)?;
        if (offset..offset + len).contains(&self.at) {
            if !self.holds_damage.get() && self.bad_fetches.get() > 0 {
                // Not kept yet: fetched now, damaged this time.
                self.bad_fetches.set(self.bad_fetches.get() - 1);
                self.holds_damage.set(true);
                self.fetches.set(self.fetches.get() + 1);
            }
            if self.holds_damage.get() {
                v[(self.at - offset) as usize] ^= 0x55;
            }
        }
        Ok(v)
    }

    fn discard(&self, offset: u64, len: u64) {
        if (offset..offset + len).contains(&self.at) {
            self.holds_damage.set(false);
        }
        self.discards.set(self.discards.get() + 1);
    }
}

#[test]
fn a_damaged_span_is_dropped_and_fetched_once_more() {
    let (blob, files) = big_layer();
    let idx = Arc::new(index(&blob));
    let fs = Rootfs::layer(idx.clone());
    let (path, data) = &files[10];
    let at = idx.spans[1].comp_start + 100;
    // Damaged once: the span is dropped, fetched again, and the read is exact.
    let once = KeepsCopies::new(&blob, at, 1);
    let mut served = 0;
    for (p, d) in &files {
        let n = fs.lookup_path(p).unwrap();
        same(&fs.read(n, 0, u64::MAX, &once).unwrap(), d, p);
        served += 1;
    }
    assert_eq!(served, files.len());
    assert_eq!(
        (once.fetches.get(), once.discards.get()),
        (1, 1),
        "one damaged copy, dropped once"
    );
    // Damaged every time: an error naming the span and both digests, never
    // wrong bytes; the second copy is dropped too, so a later read tries again.
    let always = KeepsCopies::new(&blob, at, u32::MAX);
    let fs = Rootfs::layer(Arc::new(index(&blob))); // no decoded span kept from above
    let span_of_file = |p: &str| {
        let n = fs.lookup_path(p).unwrap();
        fs.read(n, 0, u64::MAX, &always)
    };
    let e = files
        .iter()
        .find_map(|(p, _)| span_of_file(p).err())
        .expect("some file lies in the damaged span");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    let msg = e.to_string();
    let bad_sha = {
        let s = &idx.spans[1];
        let mut copy = blob[s.comp_start as usize..s.comp_end as usize].to_vec();
        copy[(at - s.comp_start) as usize] ^= 0x55;
        hex::encode(Sha256::digest(&copy))
    };
    assert!(msg.contains("span 1 ("), "{msg}");
    assert!(msg.contains(&format!("hashes to sha256:{bad_sha}")), "{msg}");
    assert!(
        msg.contains(&format!("recorded sha256:{}", hex::encode(idx.spans[1].sha256))),
        "{msg}"
    );
    assert!(msg.contains("fetched twice"), "{msg}");
    assert_eq!((always.fetches.get(), always.discards.get()), (2, 2));
    assert!(!always.holds_damage.get(), "nothing damaged is kept after the error");
    // The same node read from an honest source after that: exact.
    same(
        &fs.read(fs.lookup_path(path).unwrap(), 0, u64::MAX, &blob).unwrap(),
        data,
        path,
    );
}

#[test]
fn zstd_single_and_multi_frame_layers() {
    let (tar_bytes, files) = {
        let mut l = Layer::new();
        let mut files = Vec::new();
        for i in 0..12 {
            let data = noise(i + 500, 900_000);
            l.file(&format!("z/f{i}"), &data);
            files.push((format!("z/f{i}"), data));
        }
        (l.finish(), files)
    };
    let single = ::zstd::encode_all(&tar_bytes[..], 3).unwrap();
    let mut multi = Vec::new();
    for piece in tar_bytes.chunks(1 << 20) {
        multi.extend(::zstd::encode_all(piece, 3).unwrap());
    }
    for (name, blob) in [("single", &single), ("multi", &multi)] {
        let idx = Arc::new(index(blob));
        assert_eq!(idx.compression, Compression::Zstd);
        let fs = Rootfs::layer(idx.clone());
        let counting = Counting::new(blob);
        same(&read_all(&fs, &files[2].0, &counting), &files[2].1, name);
        if name == "single" {
            assert_eq!(idx.span_count(), 1);
            assert_eq!(
                counting.fetched.get(),
                blob.len() as u64,
                "one frame: read from the start"
            );
        } else {
            assert!(idx.span_count() >= 2);
            assert!(
                counting.fetched.get() < blob.len() as u64 / 2,
                "fetched {}",
                counting.fetched.get()
            );
        }
        for (p, d) in &files {
            same(&read_all(&fs, p, blob), d, p);
        }
    }
}

#[test]
fn uncompressed_layers_read_by_range() {
    let (blob, files) = {
        let mut l = Layer::new();
        let mut files = Vec::new();
        for i in 0..8 {
            let data = noise(i + 900, 1_500_000);
            l.file(&format!("u/f{i}"), &data);
            files.push((format!("u/f{i}"), data));
        }
        (l.finish(), files)
    };
    let idx = Arc::new(index(&blob));
    assert_eq!(idx.compression, Compression::None);
    let fs = Rootfs::layer(idx);
    let counting = Counting::new(&blob);
    let node = fs.lookup_path("u/f5").unwrap();
    same(
        &fs.read(node, 10, 100, &counting).unwrap(),
        &files[5].1[10..110],
        "u/f5",
    );
    assert!(counting.fetched.get() <= 2 << 20, "fetched {}", counting.fetched.get());
    for (p, d) in &files {
        same(&read_all(&fs, p, &blob), d, p);
    }
    // A fresh tree (no decoded span cached) over a source with a flipped byte.
    let fs = Rootfs::layer(Arc::new(index(&blob)));
    let corrupt = Corrupt {
        blob: &blob,
        at: 2_000_000,
    }; // inside u/f1
    let n = fs.lookup_path("u/f1").unwrap();
    match fs.read(n, 0, u64::MAX, &corrupt) {
        Ok(_) => panic!("a corrupted span was served"),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidData),
    }
}

#[test]
fn index_survives_save_and_load_and_a_damaged_file_is_refused() {
    let tar_bytes = metadata_layer();
    let blob = gzip(&tar_bytes);
    let idx = index(&blob);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("idx");
    idx.save(&file).unwrap();
    let loaded = LayerIndex::load(&file, &idx.digest).unwrap();
    assert_eq!(loaded.entries, idx.entries);
    assert_eq!(loaded.spans, idx.spans);
    assert_eq!(
        (loaded.compression, loaded.blob_size, loaded.uncompressed_size),
        (idx.compression, idx.blob_size, idx.uncompressed_size)
    );
    let fs = Rootfs::layer(Arc::new(loaded));
    assert_eq!(read_all(&fs, "usr/lib/os-release", &blob), b"ID=test\n");

    assert!(matches!(
        LayerIndex::load(&file, &digest_of(b"other")),
        Err(ContentsError::BadIndexFile(_))
    ));
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    assert!(matches!(
        LayerIndex::load(&file, &idx.digest),
        Err(ContentsError::BadIndexFile(_))
    ));
    std::fs::write(&file, b"garbage").unwrap();
    assert!(matches!(
        LayerIndex::load(&file, &idx.digest),
        Err(ContentsError::BadIndexFile(_))
    ));
}

#[test]
fn a_blob_that_does_not_match_its_digest_is_refused() {
    let blob = gzip(&metadata_layer());
    let err = LayerIndex::build(&digest_of(b"something else"), None, &blob[..], &Limits::default()).unwrap_err();
    assert!(matches!(err, ContentsError::DigestMismatch { .. }), "{err}");
}

#[test]
fn malformed_layers_show_what_they_can() {
    // Not a tar at all.
    let junk = noise(3, 5000);
    let idx = index(&junk);
    assert!(idx.entries.is_empty());
    assert!(
        idx.problems.summary().contains("not a tar"),
        "{}",
        idx.problems.summary()
    );
    // gzip of not-a-tar.
    let idx = index(&gzip(&junk));
    assert!(idx.entries.is_empty() && !idx.problems.is_empty());

    // Truncated gzip: the entries before the cut are there; the cut file fails to read.
    let mut l = Layer::new();
    l.file("first", b"complete")
        .file("second", &noise(5, 2 << 20))
        .file("third", b"lost");
    let full = gzip(&l.finish());
    let cut = &full[..full.len() * 3 / 4].to_vec();
    let idx = Arc::new(index(&cut[..]));
    assert!(
        idx.problems.summary().contains("truncated"),
        "{}",
        idx.problems.summary()
    );
    let fs = Rootfs::layer(idx.clone());
    assert_eq!(read_all(&fs, "first", cut), b"complete");
    let second = fs.lookup_path("second").unwrap();
    assert!(fs.is_broken(second));
    assert!(fs.read(second, 0, 10, cut).is_err());
    assert!(fs.lookup_path("third").is_none());

    // `..` and absolute paths are refused; a hard link to a missing target is shown, reads fail.
    let mut l = Layer::new();
    l.raw(b"../escape", EntryType::Regular, b"x")
        .raw(b"/etc/abs", EntryType::Regular, b"y")
        .raw(b"ok/../../up", EntryType::Regular, b"z")
        .file("fine", b"fine")
        .hardlink("orphan", "missing/target");
    let blob = gzip(&l.finish());
    let idx = Arc::new(index(&blob));
    assert_eq!(idx.problems.count, 3, "{}", idx.problems.summary());
    let fs = Rootfs::merged(vec![idx]);
    assert_eq!(listing(&fs).keys().cloned().collect::<Vec<_>>(), ["fine", "orphan"]);
    let orphan = fs.lookup_path("orphan").unwrap();
    assert_eq!(fs.metadata(orphan).kind, Kind::File);
    assert!(fs.read(orphan, 0, 1, &blob).is_err());
    assert_eq!(fs.problems().count, 1);

    // A header that declares a huge size in a tiny blob: nothing is allocated, the entry is broken.
    let mut h = header(EntryType::Regular, 0o644, 0);
    h.set_path("huge").unwrap();
    h.set_size(1 << 40);
    h.set_cksum();
    let mut tar_bytes = h.as_bytes().to_vec();
    tar_bytes.extend(noise(9, 4096));
    let idx = index(&tar_bytes);
    assert_eq!(idx.entries.len(), 1);
    assert_eq!(idx.entries[0].size, 1 << 40);
    assert!(matches!(idx.entries[0].data, Data::Broken));
}

#[test]
fn a_tar_bomb_is_capped() {
    let mut l = Layer::new();
    for i in 0..2000 {
        l.file(&format!("bomb/{i}"), b"");
    }
    let blob = gzip(&l.finish());
    let limits = Limits {
        max_entries: 500,
        ..Limits::default()
    };
    let idx = LayerIndex::build(&digest_of(&blob), None, &blob[..], &limits).unwrap();
    assert_eq!(idx.entries.len(), 500);
    assert!(
        idx.problems.summary().contains("more than 500 entries"),
        "{}",
        idx.problems.summary()
    );
}

#[test]
fn gnu_sparse_files_read_back_as_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(10 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&noise(11, 100_000), 1 << 20).unwrap();
    f.write_all_at(b"tail", (10 << 20) - 4).unwrap();
    drop(f);
    let out = Command::new("tar")
        .args(["--sparse", "--format=gnu", "-c", "-C"])
        .arg(dir.path())
        .arg("sparse")
        .output()
        .unwrap();
    assert!(out.status.success());
    let tar_bytes = out.stdout;
    assert!(tar_bytes.len() < 1 << 20, "GNU tar stored the file sparse");
    let blob = gzip(&tar_bytes);
    let idx = Arc::new(index(&blob));
    assert!(idx.problems.is_empty(), "{}", idx.problems.summary());
    assert!(matches!(idx.entries[0].data, Data::Sparse { .. }));
    let fs = Rootfs::layer(idx);
    let want = std::fs::read(&path).unwrap();
    assert_eq!(fs.metadata(fs.lookup_path("sparse").unwrap()).size, want.len() as u64);
    assert!(read_all(&fs, "sparse", &blob) == want);
}

/// An eStargz blob built as the stargz writer lays it out: per-file gzip
/// members (header, then each chunk alone), the TOC member, the footer.
fn estargz_layer(files: &[(&str, Vec<u8>)], chunk: usize) -> (Vec<u8>, Vec<u8>) {
    let mut blob = Vec::new();
    let mut toc = Vec::new();
    toc.push(serde_json::json!({"name": "etc/", "type": "dir", "mode": 0o755, "modtime": "2024-01-02T03:04:05Z"}));
    toc.push(serde_json::json!({"name": "etc/link", "type": "symlink", "linkName": "../x", "mode": 0o777}));
    for (name, data) in files {
        let mut h = header(EntryType::Regular, 0o644, data.len() as u64);
        h.set_path(name).unwrap();
        h.set_cksum();
        blob.extend(gzip(h.as_bytes()));
        let digest = digest_of(data);
        for (k, piece) in data.chunks(chunk).enumerate() {
            let offset = blob.len();
            let mut member = piece.to_vec();
            if (k + 1) * chunk >= data.len() {
                member.resize(member.len() + (512 - data.len() % 512) % 512, 0);
                // tar padding
            }
            blob.extend(gzip(&member));
            let mut e = serde_json::json!({
                "name": name, "type": if k == 0 { "reg" } else { "chunk" }, "size": data.len(),
                "offset": offset, "chunkOffset": k * chunk, "chunkSize": piece.len(),
                "chunkDigest": digest_of(piece), "mode": 0o640, "uid": 7, "gid": 8,
                "modtime": "2024-01-02T03:04:05Z", "xattrs": {"user.k": "dmFsdWU="},
            });
            if k == 0 {
                e["digest"] = serde_json::json!(digest);
            }
            toc.push(e);
        }
    }
    let json = serde_json::to_vec(&serde_json::json!({"version": 1, "entries": toc})).unwrap();
    let toc_offset = blob.len();
    let mut l = Layer::new();
    l.file("stargz.index.json", &json);
    blob.extend(gzip(&l.finish()));
    // Footer: an empty gzip member whose extra field carries the TOC offset.
    let mut footer = vec![0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 26, 0, b'S', b'G', 22, 0];
    footer.extend(format!("{toc_offset:016x}STARGZ").as_bytes());
    footer.extend([1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(footer.len() as u64, estargz::FOOTER_SIZE);
    blob.extend(footer);
    (blob, json)
}

#[test]
fn estargz_toc_is_read_from_the_footer_and_chunks_are_verified() {
    let files = vec![("etc/a", noise(21, 300_000)), ("etc/b", b"small".to_vec())];
    let (blob, json) = estargz_layer(&files, 100_000);
    // It is also an ordinary gzip tar: GNU tar reads it.
    let names = gnu_tar_names(&run_filter("gzip", &["-dc"], &blob));
    assert_eq!(names, ["etc/a", "etc/b", "stargz.index.json"]);
    let toc_digest = digest_of(&json);
    let counting = Counting::new(&blob);
    let idx = estargz::open(
        &digest_of(&blob),
        blob.len() as u64,
        &counting,
        Some(&toc_digest),
        &Limits::default(),
    )
    .unwrap();
    assert!(
        counting.fetched.get() < 4096,
        "only footer and TOC were read: {}",
        counting.fetched.get()
    );
    let fs = Rootfs::layer(Arc::new(idx));
    assert_eq!(
        listing(&fs).keys().cloned().collect::<Vec<_>>(),
        ["etc", "etc/a", "etc/b", "etc/link"]
    );
    let a = fs.metadata(fs.lookup_path("etc/a").unwrap());
    assert_eq!(
        (a.mode, a.uid, a.gid, a.size, a.mtime),
        (0o640, 7, 8, 300_000, 1_704_164_645)
    );
    assert_eq!(&*a.xattrs[0].1, b"value");
    assert_eq!(fs.metadata(fs.lookup_path("etc/link").unwrap()).link, Some("../x"));
    let counting = Counting::new(&blob);
    let node = fs.lookup_path("etc/a").unwrap();
    same(
        &fs.read(node, 150_000, 10, &counting).unwrap(),
        &files[0].1[150_000..150_010],
        "etc/a",
    );
    assert!(
        counting.fetched.get() < 110_000,
        "one chunk fetched: {}",
        counting.fetched.get()
    );
    same(&read_all(&fs, "etc/a", &blob), &files[0].1, "etc/a");
    assert_eq!(read_all(&fs, "etc/b", &blob), b"small");
    // A corrupted chunk fails; a TOC that does not match the annotation is refused.
    let chunk_at = blob.len() as u64 / 3;
    assert!(fs
        .read(
            node,
            0,
            u64::MAX,
            &Corrupt {
                blob: &blob,
                at: chunk_at
            }
        )
        .is_err());
    let wrong = digest_of(b"not the toc");
    let err = estargz::open(
        &digest_of(&blob),
        blob.len() as u64,
        &blob,
        Some(&wrong),
        &Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ContentsError::BadToc(_)), "{err}");
    // An ordinary gzip layer is not eStargz.
    let plain = gzip(&metadata_layer());
    assert_eq!(estargz::probe(&plain, plain.len() as u64).unwrap(), None);
}

#[test]
fn the_store_builds_once_keeps_indexes_on_disk_and_rebuilds_damaged_ones() {
    let dir = tempfile::tempdir().unwrap();
    let base = gzip(
        &Layer::new()
            .file("etc/os-release", b"ID=base\n")
            .file("bin/sh", b"#!sh")
            .finish(),
    );
    let top = gzip(
        &Layer::new()
            .file("etc/os-release", b"ID=top\n")
            .file("bin/.wh.sh", b"")
            .finish(),
    );
    let r = |blob: &[u8], mt: &str| LayerRef {
        digest: digest_of(blob),
        media_type: mt.into(),
        size: blob.len() as u64,
        toc_digest: None,
    };
    const GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    let layers = vec![
        r(&base, GZ),
        r(&top, GZ),
        r(
            b"elsewhere",
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        ),
        r(b"lying", GZ), // the registry serves other bytes than the digest says
    ];
    let blobs: HashMap<String, Vec<u8>> = [
        (layers[0].digest.clone(), base.clone()),
        (layers[1].digest.clone(), top.clone()),
        (layers[3].digest.clone(), b"not the bytes of the digest".to_vec()),
    ]
    .into();
    let opened = std::sync::atomic::AtomicUsize::new(0);
    let open = |l: &LayerRef| -> io::Result<io::Cursor<Vec<u8>>> {
        opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        blobs
            .get(&l.digest)
            .cloned()
            .map(io::Cursor::new)
            .ok_or_else(|| io::Error::other("not in the registry"))
    };
    let store = IndexStore::new(dir.path().join("contents"), Limits::default()).unwrap();
    let fs = store.image(&layers, open);
    assert_eq!(
        opened.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "the foreign layer is never fetched"
    );
    assert_eq!(
        listing(&fs).keys().cloned().collect::<Vec<_>>(),
        ["bin", "etc", "etc/os-release"]
    );
    assert_eq!(read_all(&fs, "etc/os-release", &top), b"ID=top\n");
    assert!(store.path(&layers[0].digest).exists() && store.path(&layers[1].digest).exists());
    assert!(
        !store.path(&layers[3].digest).exists(),
        "a layer that failed verification leaves no index"
    );
    drop(fs);

    // A new store on the same directory (a later mount) loads instead of building.
    let store = IndexStore::new(dir.path().join("contents"), Limits::default()).unwrap();
    opened.store(0, std::sync::atomic::Ordering::SeqCst);
    let fs = store.image(&layers[..2], open);
    assert_eq!(opened.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(read_all(&fs, "etc/os-release", &top), b"ID=top\n");
    drop(fs);

    // A damaged index file is rebuilt from the blob.
    let store = IndexStore::new(dir.path().join("contents"), Limits::default()).unwrap();
    let path = store.path(&layers[1].digest);
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let fs = store.image(&layers[..2], open);
    assert_eq!(opened.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(read_all(&fs, "etc/os-release", &top), b"ID=top\n");
    assert!(store.disk_usage() > 0);
    store.remove(&layers[1].digest).unwrap();
    assert!(!path.exists());
}

/// A layer blob handed to the store, counting what the pass streams and
/// what is read by Range.
struct Watched {
    blob: io::Cursor<Vec<u8>>,
    streamed: Arc<std::sync::atomic::AtomicU64>,
    ranged: Arc<std::sync::atomic::AtomicU64>,
}

impl io::Read for Watched {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.blob.read(buf)?;
        self.streamed.fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
        Ok(n)
    }
}

impl SpanSource for Watched {
    fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        self.ranged.fetch_add(len, std::sync::atomic::Ordering::SeqCst);
        self.blob.read_at(offset, len)
    }
}

/// Only the TOC digest annotation (part of a verified manifest) lets an
/// eStargz layer be opened from its footer and TOC by Range. Without it (a
/// layer reached through `_layers/` before any manifest listing it was read,
/// or pushed without it) nothing ties the TOC to the layer digest, so the
/// layer gets the verified pass, and its footer is not even read.
#[test]
fn only_an_annotated_estargz_layer_skips_the_verified_pass() {
    let files = vec![("etc/a", noise(5, 300_000)), ("etc/b", b"small".to_vec())];
    let (stargz, json) = estargz_layer(&files, 100_000);
    let toc = digest_of(&json);
    const GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    let cases: [(&str, Option<&str>, bool); 3] = [(GZ, Some(&toc), false), (GZ, None, true), ("", None, true)];
    for (media_type, toc_digest, pass) in cases {
        let dir = tempfile::tempdir().unwrap();
        let store = IndexStore::new(dir.path(), Limits::default()).unwrap();
        let streamed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let ranged = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let layer = LayerRef {
            digest: digest_of(&stargz),
            media_type: media_type.into(),
            size: stargz.len() as u64,
            toc_digest: toc_digest.map(str::to_string),
        };
        let fs = store.image(std::slice::from_ref(&layer), |_| {
            Ok(Watched {
                blob: io::Cursor::new(stargz.clone()),
                streamed: streamed.clone(),
                ranged: ranged.clone(),
            })
        });
        let (streamed, ranged) = (
            streamed.load(std::sync::atomic::Ordering::SeqCst),
            ranged.load(std::sync::atomic::Ordering::SeqCst),
        );
        let what = format!("{media_type:?} layer, annotation {toc_digest:?}");
        let names: Vec<String> = listing(&fs).keys().cloned().collect();
        assert!(
            names.contains(&"etc/a".to_string()) && names.contains(&"etc/b".to_string()),
            "{what}: {names:?}"
        );
        if pass {
            assert_eq!(
                streamed,
                stargz.len() as u64,
                "{what}: the verified pass read all of it"
            );
            assert_eq!(ranged, 0, "{what}: no footer or TOC read by Range");
        } else {
            assert_eq!(streamed, 0, "{what}: no pass");
            assert!(ranged > 0, "{what}: footer and TOC by Range");
        }
        same(&read_all(&fs, "etc/a", &stargz), &files[0].1, "etc/a");
    }
}

/// A node's path (for log lines) is the path that looks it up, at any depth.
#[test]
fn a_node_knows_its_path() {
    let blob = gzip(&metadata_layer());
    let fs = Rootfs::layer(Arc::new(index(&blob)));
    let paths = listing(&fs);
    assert!(
        paths.len() > 5 && paths.keys().any(|p| p.matches('/').count() >= 2),
        "{paths:?}"
    );
    for p in paths.keys() {
        assert_eq!(&fs.path(fs.lookup_path(p).unwrap()), p);
    }
    assert_eq!(fs.path(fs.root()), "");
}

/// Reads answered from the decoded spans kept in memory (on the FUSE thread)
/// are the same bytes as reads through the source, and nothing else is
/// answered that way.
#[test]
fn reads_from_kept_spans_match_and_never_fetch() {
    let (blob, files) = big_layer();
    let idx = Arc::new(index(&blob));
    let fs = Rootfs::layer(idx.clone());
    let entry = |path: &str| fs.entry_ref(fs.lookup_path(path).unwrap()).unwrap().1 as usize;
    let (first, data) = &files[0];
    assert_eq!(idx.read_kept(entry(first), 0, 4096), None, "nothing decoded yet");
    same(&read_all(&fs, first, &blob), data, first);
    // The first span is kept: the file and its neighbours in it read from memory, exact.
    let mut kept = 0;
    for (path, data) in &files {
        let e = entry(path);
        let Some(got) = idx.read_kept(e, 100, 5000) else {
            continue;
        };
        kept += 1;
        let want = &data[100.min(data.len())..5100.min(data.len())];
        same(&got, want, path);
        assert_eq!(idx.read_kept(e, data.len() as u64, 10), Some(Vec::new()), "{path}: EOF");
    }
    assert!(kept >= 1 && kept < files.len(), "{kept} of {} files kept", files.len());
    // A file whose span was never decoded is not answered from memory.
    let (last, _) = files.last().unwrap();
    assert_eq!(idx.read_kept(entry(last), 3 << 20, 4096), None);
}
