//! A layer's table of contents and seek points ([`LayerIndex`]): built in one
//! verified streaming pass over the blob, used to read any file's bytes by
//! decoding only the span(s) around them, saved to and loaded from disk.

use std::io::{self, BufRead, BufReader, Read, Seek, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::entry::{Data, Entry, Kind};
use super::gzip::{GzipPass, GzipReplay};
use super::spans::Span;
use super::tarscan::{self, Limits, Problems};
use super::zstd::{PlainPass, ZstdPass};
use super::{ContentsError, SpanSource};

/// How the layer blob is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    /// eStargz: gzip members per file chunk, TOC at the end (no pass, no spans).
    Estargz,
}

/// Decoded spans up to this size are kept (a few per layer) so that reading
/// many small files of one span decodes it once.
const CACHED_SPAN_MAX: u64 = 16 << 20;
const CACHED_SPANS: usize = 2;
/// Largest piece asked of a [`SpanSource`] at once.
const FETCH_PIECE: u64 = 8 << 20;

/// The table of contents of one layer, with what random access into it needs.
#[derive(Debug, Serialize, Deserialize)]
pub struct LayerIndex {
    /// `sha256:<hex>` of the blob.
    pub digest: String,
    pub compression: Compression,
    /// Size of the blob (compressed).
    pub blob_size: u64,
    /// Size of the decoded tar stream (0 for eStargz, which has none as a whole).
    pub uncompressed_size: u64,
    /// Entries in tar order. Their position is their stable identity.
    #[serde(deserialize_with = "exact_vec")]
    pub entries: Vec<Entry>,
    pub(crate) spans: Vec<Span>,
    /// What was wrong with the layer (logged once when it was built).
    pub problems: Problems,
    #[serde(skip)]
    cache: Mutex<Vec<(usize, Arc<Vec<u8>>)>>,
    /// Names per regular file with hard links in this layer (computed on first need).
    #[serde(skip)]
    links: std::sync::OnceLock<std::collections::HashMap<u32, u32>>,
}

/// Hashes and counts what passes through.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Decides the encoding. The magic bytes decide: registries of the docker era
/// hold uncompressed tars under `.tar.gzip` media types and the reverse. The
/// media type is only compared, to note a mismatch.
fn sniff(head: &[u8], media_type: Option<&str>, problems: &mut Problems) -> Compression {
    let by_magic = if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    };
    if let Some(mt) = media_type {
        let by_type = if mt.ends_with("gzip") {
            Some(Compression::Gzip)
        } else if mt.ends_with("zstd") {
            Some(Compression::Zstd)
        } else if mt.ends_with(".tar") {
            Some(Compression::None)
        } else {
            None
        };
        if by_type.is_some_and(|t| t != by_magic) {
            problems.push(format!(
                "media type {mt} but the bytes are {by_magic:?}; read as {by_magic:?}"
            ));
        }
    }
    by_magic
}

/// Runs the tar scan over a decoded stream and drains what follows the archive.
fn scan_all<R: Read>(r: &mut R, limits: &Limits, entries: &mut Vec<Entry>, problems: &mut Problems) {
    match tarscan::scan(r, limits, entries, problems) {
        Ok(()) => {
            if let Err(e) = io::copy(r, &mut io::sink()) {
                problems.push(format!("after the tar archive: {e}"));
            }
        }
        Err(e) => problems.push(format!("layer stream: {e}")),
    }
}

fn hex_digest(digest: &str) -> Result<[u8; 32], ContentsError> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| ContentsError::UnsupportedDigest(digest.to_string()))?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).map_err(|_| ContentsError::UnsupportedDigest(digest.to_string()))?;
    Ok(out)
}

impl LayerIndex {
    /// Builds the index of the blob `digest` in one pass over its bytes. The
    /// blob is hashed on the way; the index is returned only if it matches.
    /// A layer that is broken inside (not a tar, truncated) still gives an
    /// index of what could be read, with `problems` saying what went wrong.
    pub fn build<R: Read>(
        digest: &str,
        media_type: Option<&str>,
        blob: R,
        limits: &Limits,
    ) -> Result<LayerIndex, ContentsError> {
        let expected = hex_digest(digest)?;
        let mut problems = Problems::default();
        let mut entries = Vec::new();
        let mut buffered = BufReader::with_capacity(
            64 << 10,
            Hashing {
                inner: blob,
                hasher: Sha256::new(),
                count: 0,
            },
        );
        let compression = sniff(buffered.fill_buf()?, media_type, &mut problems);
        let (spans, uncompressed_size, buffered) = match compression {
            Compression::Gzip => {
                let mut pass = GzipPass::new(buffered)?;
                scan_all(&mut pass, limits, &mut entries, &mut problems);
                if pass.trailing_garbage {
                    problems.push("bytes after the last gzip member ignored");
                }
                pass.finish()?
            }
            Compression::Zstd => {
                let mut pass = ZstdPass::new(buffered)?;
                scan_all(&mut pass, limits, &mut entries, &mut problems);
                pass.finish()?
            }
            _ => {
                let mut pass = PlainPass::new(buffered);
                scan_all(&mut pass, limits, &mut entries, &mut problems);
                pass.finish()?
            }
        };
        let mut hashing = buffered.into_inner();
        io::copy(&mut hashing, &mut io::sink())?; // normally nothing is left
        let actual: [u8; 32] = hashing.hasher.finalize().into();
        if actual != expected {
            return Err(ContentsError::DigestMismatch {
                expected: digest.to_string(),
                actual: hex::encode(actual),
            });
        }
        for e in &mut entries {
            let end = match &e.data {
                Data::Contiguous { offset } => offset + e.size,
                Data::Sparse { offset, map } => offset + map.iter().map(|c| c.1).sum::<u64>(),
                _ => continue,
            };
            if end > uncompressed_size {
                e.data = Data::Broken;
            }
        }
        // Kept for the life of the tree: no spare capacity (a quarter of the
        // entries' memory on average after the pushes' doublings).
        entries.shrink_to_fit();
        Ok(LayerIndex {
            digest: digest.to_string(),
            compression,
            blob_size: hashing.count,
            uncompressed_size,
            entries,
            spans,
            problems,
            cache: Mutex::default(),
            links: Default::default(),
        })
    }

    /// An index made from parts (eStargz: entries with chunk data, no spans).
    pub(crate) fn from_parts(
        digest: &str,
        compression: Compression,
        blob_size: u64,
        mut entries: Vec<Entry>,
        problems: Problems,
    ) -> LayerIndex {
        entries.shrink_to_fit();
        LayerIndex {
            digest: digest.to_string(),
            compression,
            blob_size,
            uncompressed_size: 0,
            entries,
            spans: Vec::new(),
            problems,
            cache: Mutex::default(),
            links: Default::default(),
        }
    }

    /// How many names entry `idx` has in this layer: itself plus the hard
    /// links to it (each resolved to the last entry of its target path before it).
    pub fn nlink(&self, idx: u32) -> u32 {
        let links = self.links.get_or_init(|| {
            // Most layers have no hard link: no map of every path for them.
            if !self.entries.iter().any(|e| e.kind == Kind::HardLink) {
                return Default::default();
            }
            let mut by_path: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
            let mut counts = std::collections::HashMap::new();
            for (i, e) in self.entries.iter().enumerate() {
                match e.kind {
                    Kind::HardLink => {
                        if let Some(&t) = e.link.as_deref().and_then(|l| by_path.get(l)) {
                            *counts.entry(t).or_insert(1) += 1;
                        }
                    }
                    _ => {
                        by_path.insert(&e.path, i as u32);
                    }
                }
            }
            counts
        });
        links.get(&idx).copied().unwrap_or(1)
    }

    /// Number of seek points.
    pub fn span_count(&self) -> usize {
        self.spans.len()
    }

    /// Reads `len` bytes at `offset` of entry `idx` (a regular file). The source
    /// must serve this layer's blob. Every byte returned comes from spans whose
    /// sha256 matched; any mismatch or missing data is an error (EIO for the caller).
    pub fn read(&self, idx: usize, offset: u64, len: u64, src: &dyn SpanSource) -> io::Result<Vec<u8>> {
        let e = self
            .entries
            .get(idx)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such entry"))?;
        if e.kind != Kind::File {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
        }
        if offset >= e.size {
            return Ok(Vec::new());
        }
        let end = offset.saturating_add(len).min(e.size);
        match &e.data {
            Data::None => Ok(vec![0; (end - offset) as usize]),
            Data::Contiguous { offset: base } => self.read_stream(base + offset, end - offset, src),
            Data::Sparse { offset: base, map } => {
                let mut out = vec![0u8; (end - offset) as usize];
                let mut stored = 0u64;
                for &(lo, n) in map {
                    let (a, b) = (lo.max(offset), (lo + n).min(end));
                    if a < b {
                        let bytes = self.read_stream(base + stored + (a - lo), b - a, src)?;
                        out[(a - offset) as usize..(b - offset) as usize].copy_from_slice(&bytes);
                    }
                    stored += n;
                }
                Ok(out)
            }
            Data::Chunks(chunks) => super::estargz::read_chunks(chunks, offset, end, src),
            Data::Broken => Err(io::Error::other(format!(
                "{}: the layer's data for {} is unavailable",
                self.digest, e.path
            ))),
        }
    }

    /// [`read`](Self::read) answered from the decoded spans kept in memory
    /// only, or `None` when it needs anything else (a span not kept, a sparse
    /// or eStargz file, a broken entry): the caller then reads with a source,
    /// off the FUSE thread. Never fetches or decodes, so it may run on the
    /// thread that received the request: reading many small files in tar order
    /// costs no thread hop per read. The kept spans were verified when decoded.
    pub fn read_kept(&self, idx: usize, offset: u64, len: u64) -> Option<Vec<u8>> {
        let e = self.entries.get(idx).filter(|e| e.kind == Kind::File)?;
        if offset >= e.size {
            return Some(Vec::new());
        }
        let end = offset.saturating_add(len).min(e.size);
        match &e.data {
            Data::None => Some(vec![0; (end - offset) as usize]),
            Data::Contiguous { offset: base } => self.stream_kept(base + offset, end - offset),
            _ => None,
        }
    }

    /// The span holding decoded offset `pos` (below the uncompressed size,
    /// spans not empty): its number and its decoded start and end.
    fn span_at(&self, pos: u64) -> (usize, u64, u64) {
        let i = self.spans.partition_point(|s| s.uncomp_start <= pos) - 1;
        let end = self.spans.get(i + 1).map_or(self.uncompressed_size, |n| n.uncomp_start);
        (i, self.spans[i].uncomp_start, end)
    }

    /// `[start, start + len)` of the decoded tar stream if every span it
    /// touches is kept decoded (their recency is left as it is).
    fn stream_kept(&self, start: u64, len: u64) -> Option<Vec<u8>> {
        let end = start.checked_add(len).filter(|&e| e <= self.uncompressed_size)?;
        if self.spans.is_empty() {
            return None;
        }
        let cache = self.cache.lock().unwrap();
        let mut out = Vec::with_capacity(len as usize);
        let mut pos = start;
        while pos < end {
            let (i, span_start, span_end) = self.span_at(pos);
            let (_, block) = cache.iter().find(|(k, _)| *k == i)?;
            let take = end.min(span_end) - pos;
            let from = (pos - span_start) as usize;
            out.extend_from_slice(block.get(from..from + take as usize)?);
            pos += take;
        }
        Some(out)
    }

    /// Reads `[start, start + len)` of the decoded tar stream.
    fn read_stream(&self, start: u64, len: u64, src: &dyn SpanSource) -> io::Result<Vec<u8>> {
        let end = start + len;
        if end > self.uncompressed_size || self.spans.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the decoded layer",
            ));
        }
        let mut out = Vec::with_capacity(len as usize);
        let mut pos = start;
        while pos < end {
            let (i, span_start, span_end) = self.span_at(pos);
            let take = end.min(span_end) - pos;
            if span_end - span_start <= CACHED_SPAN_MAX {
                let block = self.decoded_span(i, span_end - span_start, src)?;
                let from = (pos - span_start) as usize;
                out.extend_from_slice(&block[from..from + take as usize]);
            } else {
                out.extend(self.decode_span(i, src, pos - span_start, take)?);
            }
            pos += take;
        }
        Ok(out)
    }

    /// Span `i` decoded whole, from the small cache or fetched and decoded.
    fn decoded_span(&self, i: usize, len: u64, src: &dyn SpanSource) -> io::Result<Arc<Vec<u8>>> {
        {
            let mut cache = self.cache.lock().unwrap();
            if let Some(p) = cache.iter().position(|(k, _)| *k == i) {
                let hit = cache.remove(p);
                let block = hit.1.clone();
                cache.push(hit);
                return Ok(block);
            }
        }
        let block = Arc::new(self.decode_span(i, src, 0, len)?);
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= CACHED_SPANS {
            cache.remove(0);
        }
        cache.push((i, block.clone()));
        Ok(block)
    }

    /// Fetches span `i`, decodes it, keeps `take` bytes after the first `skip`,
    /// and returns them once the whole span's sha256 matched. A span that
    /// fails its digest is dropped from the source (the blob cache would
    /// otherwise serve the same damaged copy to every later read) and fetched
    /// once more; a second failure is the caller's error, and that copy is
    /// dropped too, so a later read tries afresh.
    fn decode_span(&self, i: usize, src: &dyn SpanSource, skip: u64, take: u64) -> io::Result<Vec<u8>> {
        let span = &self.spans[i];
        let drop_span = || src.discard(span.comp_start, span.comp_end - span.comp_start);
        match self.decode_span_once(i, src, skip, take) {
            Err(e) if is_span_mismatch(&e) => {
                tracing::warn!(layer = %self.digest, "{e}; dropping that copy and fetching the span once more");
                drop_span();
                self.decode_span_once(i, src, skip, take).map_err(|again| {
                    if !is_span_mismatch(&again) {
                        return again;
                    }
                    drop_span();
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{again} (fetched twice, damaged both times: first {e})"),
                    )
                })
            }
            result => result,
        }
    }

    fn decode_span_once(&self, i: usize, src: &dyn SpanSource, skip: u64, take: u64) -> io::Result<Vec<u8>> {
        let span = &self.spans[i];
        let mut fetch = VerifiedSpan::new(src, span, i);
        let mut out = vec![0u8; take as usize];
        let decoded = (|| -> io::Result<()> {
            let mut dec: Box<dyn Read + '_> = match self.compression {
                Compression::Gzip => Box::new(GzipReplay::new(&mut fetch, span)?),
                Compression::Zstd => super::zstd::replay(&mut fetch)?,
                _ => Box::new(&mut fetch),
            };
            io::copy(&mut (&mut dec).take(skip), &mut io::sink())?;
            dec.read_exact(&mut out)
        })();
        fetch.verify_rest()?; // a corrupted span reports as such, whatever the decoder said
        decoded?;
        Ok(out)
    }

    /// Writes the index to `path` (atomically: a temporary file renamed over it).
    ///
    /// Format: magic, version (u32 LE), sha256 of the payload, payload = zstd of
    /// the postcard encoding. The hash makes a damaged file a load error rather
    /// than a wrong answer.
    /// Returns the size of the file.
    pub fn save(&self, path: &Path) -> io::Result<u64> {
        // Streamed (postcard into zstd into the file, hashed on the way): no
        // copy of the encoding in memory, which for a 1M-entry layer would be
        // as large as the index itself. The plain size is counted first and
        // written in the zstd frame, so `load` allocates exactly once.
        let plain_len = postcard::to_io(self, Counter(0)).map_err(io::Error::other)?.0;
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(INDEX_MAGIC)?;
        f.write_all(&INDEX_VERSION.to_le_bytes())?;
        f.write_all(&[0; 32])?; // the payload's sha256, written once known
        let hashing = HashingWriter {
            inner: io::BufWriter::with_capacity(1 << 16, f),
            hasher: Sha256::new(),
            count: 0,
        };
        let mut enc = zstd::stream::write::Encoder::new(hashing, 3)?;
        enc.include_contentsize(true)?;
        enc.set_pledged_src_size(Some(plain_len))?;
        postcard::to_io(self, &mut enc).map_err(io::Error::other)?;
        let hashing = enc.finish()?;
        let (payload_len, hash) = (hashing.count, hashing.hasher.finalize());
        let mut f = hashing.inner.into_inner().map_err(|e| e.into_error())?;
        f.seek(io::SeekFrom::Start((INDEX_MAGIC.len() + 4) as u64))?;
        f.write_all(&hash)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        Ok((INDEX_MAGIC.len() + 4 + 32) as u64 + payload_len)
    }

    /// Loads an index saved by [`save`](Self::save), checking that it is whole
    /// and that it describes the blob `digest`.
    pub fn load(path: &Path, digest: &str) -> Result<LayerIndex, ContentsError> {
        let bytes = std::fs::read(path)?;
        let bad = |why: &str| ContentsError::BadIndexFile(format!("{}: {why}", path.display()));
        let header = INDEX_MAGIC.len() + 4 + 32;
        if bytes.len() < header || !bytes.starts_with(INDEX_MAGIC) {
            return Err(bad("not a regfs layer index"));
        }
        let version = u32::from_le_bytes(bytes[INDEX_MAGIC.len()..INDEX_MAGIC.len() + 4].try_into().unwrap());
        if version != INDEX_VERSION {
            return Err(bad(&format!(
                "index version {version}, this build reads {INDEX_VERSION}"
            )));
        }
        let payload = &bytes[header..];
        if Sha256::digest(payload).as_slice() != &bytes[header - 32..header] {
            return Err(bad("checksum mismatch (damaged file)"));
        }
        // The frame says its plain size (files written before it did: grown as read).
        let size = zstd::zstd_safe::get_frame_content_size(payload).ok().flatten();
        let mut plain = Vec::with_capacity(size.filter(|&n| n <= MAX_INDEX_BYTES).unwrap_or(0) as usize);
        zstd::stream::read::Decoder::new(payload)?
            .take(MAX_INDEX_BYTES)
            .read_to_end(&mut plain)
            .map_err(|e| bad(&e.to_string()))?;
        let mut index: LayerIndex = postcard::from_bytes(&plain).map_err(|e| bad(&e.to_string()))?;
        drop(plain);
        index.entries.shrink_to_fit();
        if index.digest != digest {
            return Err(bad(&format!("describes {}, not {digest}", index.digest)));
        }
        Ok(index)
    }
}

/// A sequence loaded into a vector of exactly its length (serde's default
/// grows it by doubling from a cautious start: up to twice the memory, and a
/// copy, for the largest thing an index holds). The length comes from the
/// file, so it is capped: a lying length costs at most the cap.
fn exact_vec<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Exact<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Exact<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a sequence")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 21));
            while let Some(x) = seq.next_element()? {
                v.push(x);
            }
            Ok(v)
        }
    }
    d.deserialize_seq(Exact(std::marker::PhantomData))
}

/// Counts what is written to it (the size of an encoding without keeping it).
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Hashes and counts what it passes on.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

const INDEX_MAGIC: &[u8] = b"regfs-layer-index\n";
const INDEX_VERSION: u32 = 1;
/// A decoded index larger than this is refused (a 1M-entry layer is ~150 MB).
const MAX_INDEX_BYTES: u64 = 1 << 30;

/// A span's bytes did not hash to the digest the verified pass recorded.
#[derive(Debug, thiserror::Error)]
#[error(
    "span digest mismatch: span {span} (compressed bytes {start}-{end}) hashes to sha256:{}, the index recorded sha256:{}",
    hex::encode(actual),
    hex::encode(expected)
)]
struct SpanMismatch {
    span: usize,
    start: u64,
    end: u64,
    expected: [u8; 32],
    actual: [u8; 32],
}

fn is_span_mismatch(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<SpanMismatch>())
}

/// A span read through a [`SpanSource`] in pieces, hashed as it is read; the
/// end of the span is reported only if the digest matched.
struct VerifiedSpan<'a> {
    src: &'a dyn SpanSource,
    index: usize,
    start: u64,
    pos: u64,
    end: u64,
    expected: [u8; 32],
    hasher: Sha256,
    buf: Vec<u8>,
    buf_pos: usize,
    /// The span's sha256, once all of it was read (a decoder that saw the
    /// error may read again: the verdict stays the same).
    actual: Option<[u8; 32]>,
}

impl<'a> VerifiedSpan<'a> {
    fn new(src: &'a dyn SpanSource, span: &Span, index: usize) -> Self {
        VerifiedSpan {
            src,
            index,
            start: span.comp_start,
            pos: span.comp_start,
            end: span.comp_end,
            expected: span.sha256,
            hasher: Sha256::new(),
            buf: Vec::new(),
            buf_pos: 0,
            actual: None,
        }
    }

    fn verify_rest(&mut self) -> io::Result<()> {
        self.buf_pos = self.buf.len();
        io::copy(self, &mut io::sink())?;
        Ok(())
    }
}

impl Read for VerifiedSpan<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.buf_pos == self.buf.len() {
            if self.pos == self.end {
                let hasher = &mut self.hasher;
                let actual = *self
                    .actual
                    .get_or_insert_with(|| std::mem::take(hasher).finalize().into());
                if actual != self.expected {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        SpanMismatch {
                            span: self.index,
                            start: self.start,
                            end: self.end,
                            expected: self.expected,
                            actual,
                        },
                    ));
                }
                return Ok(0);
            }
            let n = (self.end - self.pos).min(FETCH_PIECE);
            let piece = self.src.read_at(self.pos, n)?;
            if piece.len() as u64 != n {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "short read from the span source",
                ));
            }
            self.hasher.update(&piece);
            self.pos += n;
            self.buf = piece;
            self.buf_pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.buf_pos);
        out[..n].copy_from_slice(&self.buf[self.buf_pos..self.buf_pos + n]);
        self.buf_pos += n;
        Ok(n)
    }
}
