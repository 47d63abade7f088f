//! Image archives pushed while they are written. A file written to
//! `_uploads/<name>` in order (each write where the last ended, as `cp`,
//! `cat` and `skopeo … docker-archive:/dev/stdout > …` do) has its tar
//! headers read as they arrive; each layer member (`<id>/layer.tar` of a
//! `docker save` archive, a large `blobs/sha256/<hex>` of an OCI layout) is
//! hashed as its bytes land and pushed as soon as it is complete, while the
//! writer goes on with the next one. On close the import (import.rs) takes
//! the outcome of those pushes instead of hashing and uploading the members
//! again, so only config, manifests and tags are left for after the close.
//!
//! Nothing here decides what is tagged: the import still reads the whole
//! archive, still checks every member it uses, and fails the close when an
//! early push failed. A write that is not in order (a seek back, a truncate)
//! stops the early pushes and the import does everything on close, as it
//! did before; blobs already pushed are then unreferenced registry garbage,
//! never a tag. Memory stays bounded: members are read back from the staged
//! file (1 MiB at a time), never held.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};

use futures_util::future::{BoxFuture, FutureExt, Shared};

use crate::error::{Cause, FsError, FsResult};
use crate::oci::tarheader::{checksum_matches, pax_records};
use crate::oci::Digest;
use crate::registry::client::MAX_MANIFEST_SIZE;

/// A GNU long name or pax header longer than this is not followed (the
/// member is left to the import on close).
const MAX_META: u64 = 64 << 10;

/// How many bytes a hashing thread waits for before it reads.
const HASH_PIECE: u64 = 1 << 20;

/// A member of the archive being written, as its header announced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub name: String,
    /// Where its bytes start in the file, and how many there are.
    pub offset: u64,
    pub size: u64,
    /// The digest its name claims (`blobs/sha256/<hex>`).
    pub named: Option<Digest>,
}

/// Is `name` a member worth pushing before the close, and what digest does
/// its name claim? Layers are: `<id>/layer.tar` (`docker save` before 25),
/// `<hex>.tar` (skopeo's docker-archive), `blobs/sha256/<hex>` (OCI layouts
/// and later `docker save`; small ones may be manifests, which the import
/// pushes as such). Other names are left to the close: a plain tarball
/// written to `_uploads/` pushes nothing early.
fn wanted(name: &str, size: u64) -> Option<Option<Digest>> {
    let name = name.trim_start_matches("./");
    if let Some(hex) = name.strip_prefix("blobs/sha256/") {
        let d = Digest::from_hex(hex)?;
        return (size > MAX_MANIFEST_SIZE).then_some(Some(d));
    }
    let skopeo_layer = name.strip_suffix(".tar").is_some_and(|h| Digest::from_hex(h).is_some());
    ((name.ends_with("/layer.tar") || skopeo_layer) && size > 0).then_some(None)
}

/// Extended-header data being collected: a GNU long name (`L`) or a pax
/// header (`x`) names the entry after it.
struct Meta {
    pax: bool,
    end: u64,
    bytes: Vec<u8>,
}

impl Meta {
    fn name(self) -> Option<String> {
        if !self.pax {
            let n = self.bytes.split(|b| *b == 0).next().unwrap_or_default();
            return std::str::from_utf8(n).ok().map(str::to_string);
        }
        let mut path = None;
        for record in pax_records(&self.bytes) {
            let (key, value) = record.ok()?;
            if key == b"path" {
                path = std::str::from_utf8(value).ok().map(str::to_string);
            }
        }
        path
    }
}

/// Reads tar headers out of a byte stream that arrives in order, in pieces
/// of any size: the members' names, offsets and sizes, nothing of their data
/// but extended names.
#[derive(Default)]
pub struct TarScan {
    /// Where the next header starts (everything before is data being skipped).
    next: u64,
    header: Vec<u8>,
    meta: Option<Meta>,
    /// The name the next header takes from an extended header before it.
    long_name: Option<String>,
    /// The end of the archive, or bytes that are no tar: nothing more to find.
    done: bool,
}

impl TarScan {
    /// Bytes `data` at stream position `offset` (where the last piece ended);
    /// members whose header completed are added to `found`.
    pub fn feed(&mut self, offset: u64, data: &[u8], found: &mut Vec<Found>) {
        let end = offset + data.len() as u64;
        let mut pos = offset;
        let slice = |a: u64, b: u64| &data[(a - offset) as usize..(b - offset) as usize];
        while pos < end && !self.done {
            if pos < self.next {
                let upto = self.next.min(end);
                if let Some(meta) = &mut self.meta {
                    let b = upto.min(meta.end);
                    if pos < b {
                        meta.bytes.extend_from_slice(slice(pos, b));
                    }
                }
                pos = upto;
                continue;
            }
            let take = (512 - self.header.len() as u64).min(end - pos);
            self.header.extend_from_slice(slice(pos, pos + take));
            pos += take;
            if self.header.len() == 512 {
                let header = std::mem::take(&mut self.header);
                self.parse(&header, pos, found);
            }
        }
    }

    /// One complete header, whose data starts at `data_start`.
    fn parse(&mut self, block: &[u8], data_start: u64, found: &mut Vec<Found>) {
        if let Some(meta) = self.meta.take() {
            self.long_name = meta.name();
        }
        if block.iter().all(|b| *b == 0) {
            self.done = true;
            return;
        }
        let mut bytes = [0u8; 512];
        bytes.copy_from_slice(block);
        let header = tar::Header::from_byte_slice(&bytes);
        let size = header.entry_size();
        let (true, Ok(size)) = (checksum_matches(&bytes), size) else {
            self.done = true;
            return;
        };
        self.next = data_start + size.div_ceil(512) * 512;
        let kind = header.entry_type();
        let long_name = self.long_name.take();
        match kind {
            tar::EntryType::GNULongName | tar::EntryType::XHeader if size <= MAX_META => {
                self.meta = Some(Meta {
                    pax: kind == tar::EntryType::XHeader,
                    end: data_start + size,
                    bytes: Vec::with_capacity(size as usize),
                });
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let name = long_name.or_else(|| std::str::from_utf8(&header.path_bytes()).ok().map(str::to_string));
                if let Some(name) = name {
                    if let Some(named) = wanted(&name, size) {
                        found.push(Found {
                            name,
                            offset: data_start,
                            size,
                            named,
                        });
                    }
                }
            }
            _ => {}
        }
    }
}

/// How far the writer got, shared with the threads hashing behind it.
#[derive(Default)]
pub struct Progress {
    state: Mutex<Flow>,
    grew: Condvar,
}

#[derive(Default)]
struct Flow {
    written: u64,
    /// No more bytes will come (closed, or the early pushes were given up):
    /// a wait for more fails with this reason.
    stopped: Option<String>,
}

impl Progress {
    fn advance(&self, written: u64) {
        self.state.lock().unwrap().written = written;
        self.grew.notify_all();
    }

    fn stop(&self, why: &str) {
        let mut s = self.state.lock().unwrap();
        s.stopped.get_or_insert_with(|| why.to_string());
        drop(s);
        self.grew.notify_all();
    }

    /// Block until `upto` bytes are written (or they never will be).
    fn wait_for(&self, upto: u64) -> FsResult<()> {
        let mut s = self.state.lock().unwrap();
        loop {
            if s.written >= upto {
                return Ok(());
            }
            if let Some(why) = &s.stopped {
                return Err(FsError::new(Cause::Io, format!("archive member not complete: {why}")));
            }
            s = self.grew.wait(s).unwrap();
        }
    }

    /// The sha256 of member `m` of `file`, read as the writer puts it there.
    pub fn hash_as_written(&self, file: &File, m: &Found) -> FsResult<Digest> {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; HASH_PIECE as usize];
        let (mut off, end) = (m.offset, m.offset + m.size);
        while off < end {
            let len = (end - off).min(HASH_PIECE);
            self.wait_for(off + len)?;
            file.read_exact_at(&mut buf[..len as usize], off)?;
            h.update(&buf[..len as usize]);
            off += len;
        }
        Ok(Digest::from_bytes(h.finalize().into()))
    }
}

/// The outcome of one early push: the member's digest once it is hashed,
/// checked against its name and in the registry.
pub type Pushing = Shared<BoxFuture<'static, FsResult<Digest>>>;

/// The early pushes of one archive, handed to the import on close, by the
/// member's (offset, size).
#[derive(Default)]
pub struct Prepushed(HashMap<(u64, u64), Pushing>);

impl Prepushed {
    pub fn get(&self, offset: u64, size: u64) -> Option<Pushing> {
        self.0.get(&(offset, size)).cloned()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Early pushes of one file being written to `_uploads/` (owned by its StagedFile).
pub struct Early {
    scan: TarScan,
    written: u64,
    progress: Arc<Progress>,
    found: Vec<Found>,
    started: HashMap<(u64, u64), Pushing>,
    /// Pushes of this archive at once (hashing is not limited: it follows the writer).
    limit: Arc<tokio::sync::Semaphore>,
    /// Why early pushing was given up (the import on close does it all).
    given_up: Option<String>,
}

impl Default for Early {
    fn default() -> Self {
        Early {
            scan: TarScan::default(),
            written: 0,
            progress: Arc::default(),
            found: Vec::new(),
            started: HashMap::new(),
            limit: Arc::new(tokio::sync::Semaphore::new(super::import::UPLOAD_CONCURRENCY)),
            given_up: None,
        }
    }
}

impl Early {
    /// `data` was written at `offset`.
    pub fn wrote(&mut self, offset: u64, data: &[u8]) {
        if self.given_up.is_some() {
            return;
        }
        if offset != self.written {
            self.give_up(format!(
                "a write at byte {offset} after {} bytes in order",
                self.written
            ));
            return;
        }
        self.scan.feed(offset, data, &mut self.found);
        self.written += data.len() as u64;
        self.progress.advance(self.written);
    }

    /// The file was cut to `size`.
    pub fn truncated(&mut self, size: u64) {
        if size != self.written {
            self.give_up(format!("truncated to {size} bytes after {} in order", self.written));
        }
    }

    fn give_up(&mut self, why: String) {
        if !self.started.is_empty() {
            tracing::info!("image archive not written in order ({why}): it is pushed on close");
        }
        self.progress.stop(&why);
        self.given_up = Some(why);
        self.found.clear();
    }

    /// Members found since the last call, to be started.
    pub fn take_found(&mut self) -> Vec<Found> {
        std::mem::take(&mut self.found)
    }

    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    pub fn limit(&self) -> Arc<tokio::sync::Semaphore> {
        self.limit.clone()
    }

    pub fn started(&mut self, m: &Found, pushing: Pushing) {
        self.started.insert((m.offset, m.size), pushing);
    }

    /// The file is being committed: the early pushes that stand, if the
    /// whole file was written in order. Writes after this go the old way.
    pub fn finish(&mut self) -> Option<Prepushed> {
        if self.given_up.is_some() {
            return None;
        }
        self.progress.stop("the file was committed short of it");
        self.given_up = Some("committed".to_string());
        Some(Prepushed(std::mem::take(&mut self.started)))
    }
}

impl Drop for Early {
    fn drop(&mut self) {
        self.progress.stop("the file was dropped");
    }
}

/// Box and share a push, and drive it now (it runs whether or not the
/// import comes to ask for it).
pub fn share(fut: impl std::future::Future<Output = FsResult<Digest>> + Send + 'static) -> Pushing {
    let shared = fut.boxed().shared();
    tokio::spawn(shared.clone().map(|_| ()));
    shared
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, data.as_slice()).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn scan_in_pieces(bytes: &[u8], piece: usize) -> Vec<Found> {
        let mut s = TarScan::default();
        let mut found = Vec::new();
        for (i, chunk) in bytes.chunks(piece).enumerate() {
            s.feed((i * piece) as u64, chunk, &mut found);
        }
        found
    }

    #[test]
    fn layers_are_found_with_their_offsets_whatever_the_write_sizes() {
        let big = vec![7u8; (MAX_MANIFEST_SIZE + 1) as usize];
        let d = Digest::of(&big);
        let long = format!("{}/layer.tar", "x".repeat(150));
        let bytes = tar_of(&[
            ("manifest.json", b"[]".to_vec()),
            ("abc/layer.tar", vec![1u8; 1000]),
            (&format!("blobs/sha256/{}", d.hex()), big.clone()),
            (&format!("blobs/sha256/{}", Digest::of(b"m").hex()), b"m".to_vec()),
            (&long, vec![2u8; 10]),
            ("notes/big.bin", big.clone()),
            (&format!("{}.tar", d.hex()), vec![4u8; 20]),
        ]);
        // Where the tar crate puts each member's data: the truth.
        let mut truth = HashMap::new();
        let mut a = tar::Archive::new(bytes.as_slice());
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            truth.insert(
                e.path().unwrap().to_string_lossy().to_string(),
                (e.raw_file_position(), e.size()),
            );
        }
        for piece in [1, 511, 512, 4096, 1 << 20, bytes.len()] {
            let found = scan_in_pieces(&bytes, piece);
            let names: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
            let blob = format!("blobs/sha256/{}", d.hex());
            let skopeo = format!("{}.tar", d.hex());
            assert_eq!(
                names,
                vec!["abc/layer.tar", blob.as_str(), long.as_str(), skopeo.as_str()],
                "piece {piece}"
            );
            for f in &found {
                assert_eq!(truth[&f.name], (f.offset, f.size), "{} piece {piece}", f.name);
            }
            assert_eq!(found[1].named, Some(d));
            assert_eq!(found[0].named, None);
        }
    }

    #[test]
    fn bytes_that_are_no_tar_find_nothing() {
        let found = scan_in_pieces(&[0x55u8; 8192], 100);
        assert!(found.is_empty());
        let found = scan_in_pieces(&[0u8; 8192], 100);
        assert!(found.is_empty());
    }

    #[test]
    fn a_write_out_of_order_gives_up_and_wakes_the_hashers() {
        let mut e = Early::default();
        let bytes = tar_of(&[("a/layer.tar", vec![3u8; 5000])]);
        e.wrote(0, &bytes[..1024]);
        let found = e.take_found();
        assert_eq!(found.len(), 1);
        let p = e.progress();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        let m = found[0].clone();
        let t = std::thread::spawn(move || p.hash_as_written(&file, &m));
        e.wrote(0, &bytes[..10]); // a seek back
        let err = t.join().unwrap().unwrap_err();
        assert_eq!(err.cause, Cause::Io, "{err}");
        assert!(e.finish().is_none(), "nothing early stands");
    }

    #[test]
    fn hashing_follows_the_writer() {
        let mut e = Early::default();
        let body = (0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>();
        let bytes = tar_of(&[("a/layer.tar", body.clone())]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let w = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .unwrap();
        w.write_all_at(&bytes[..700], 0).unwrap();
        e.wrote(0, &bytes[..700]);
        let m = e.take_found().remove(0);
        let p = e.progress();
        let file = File::open(&path).unwrap();
        let t = std::thread::spawn(move || p.hash_as_written(&file, &m));
        for (i, chunk) in bytes[700..].chunks(65536).enumerate() {
            let off = 700 + (i * 65536) as u64;
            w.write_all_at(chunk, off).unwrap();
            e.wrote(off, chunk);
        }
        assert_eq!(t.join().unwrap().unwrap(), Digest::of(&body));
        assert!(e.finish().is_some());
    }
}
