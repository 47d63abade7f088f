//! Blobs on local disk, fetched lazily by HTTP Range.
//!
//! A blob being read lives in a sparse file `<cache>/partial/<hex>.<pid>.<n>` with a
//! map of which 64 KiB units are present (a range map: its memory follows what
//! was fetched, never the size a descriptor claims). A read fetches the chunks it needs
//! (and, when reads are sequential, a growing window ahead of them in parallel
//! parts). A body's bytes are present as soon as they arrive: readers and the
//! hash take them from memory while a writer thread puts them in the file
//! behind them (`held.rs`; bounded: fetches wait when the writer lags by
//! `LAG_LIMIT`). As the present prefix grows it is hashed; when the whole blob
//! is present, written, and its sha256 matches, the file is renamed to
//! `<cache>/blobs/sha256/<hex>` (atomic commit). A complete file from an
//! earlier run is re-hashed once before it is trusted.
//!
//! Verified or error: a read that reaches the end of a blob is answered only
//! once the whole blob hashed to its digest; on a mismatch that read and every
//! later one of this file fail with EIO, the kernel's cached pages of the blob
//! are dropped (the invalidation hook), and nothing reaches the cache. Reads in
//! the middle of a blob not yet verified return the registry's bytes as they
//! came (see the README, "Verification").

use std::collections::HashSet;
use std::fs::File;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::sync::{Arc, Mutex, Weak};

use lru::LruCache;
use rangemap::RangeMap;
use sha2::{Digest as _, Sha256};
use tokio::sync::Notify;

use super::held::{Held, Segment, LAG_LIMIT};
use crate::error::{Cause, FsError, FsResult};
use crate::oci::Digest;
use crate::registry::client::{BlobBody, StallClock};
use crate::registry::Registry;
use crate::stats::{Direction, Stats, Transfers};

/// The smallest fetch (a random 4 KiB read costs one chunk), and the first
/// request a blob looked up by name sends (see `BlobStore::probe`).
pub const CHUNK: u64 = 1 << 20;
/// Unit of presence tracking: a reader waits for the 64 KiB it needs, not for
/// the whole chunk around it (at 25 MB/s a 1 MiB chunk takes 42 ms to arrive).
const UNIT: u64 = 64 << 10;
/// The largest single range request; a bigger window is fetched as parallel
/// parts, each on its own connection. A far registry serves each connection
/// at a capped rate (object storage behind it), so throughput comes from
/// parts in flight: `MAX_WINDOW / PART` of them.
const PART: u64 = 16 << 20;
/// How far ahead sequential reads prefetch, at most. Fetched bytes stream to
/// the cache file, never into memory, so the window costs disk, not RAM.
const MAX_WINDOW: u64 = 256 << 20;

/// Reads within this distance of the previous one still count as sequential
/// (the kernel issues readahead out of order).
const SEQUENTIAL_SLACK: u64 = 4 << 20;
/// A body cut mid-way is resumed from where it stopped this many times.
const MAX_RESUMES: u32 = 3;
/// Partially fetched blobs kept open (and their partial files kept) after use.
const RECENT_FILES: usize = 64;
/// Blob sizes remembered (claims from descriptors and the registry's word).
const KNOWN_SIZES: usize = 1 << 18;

/// The state of a run of chunks; chunks absent from the map are missing.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ChunkState {
    Fetching(u64),
    Present,
    /// The fetch with this id failed; callers waiting on it get the error,
    /// callers arriving later fetch again.
    Failed(u64, FsError),
}

struct Chunks {
    /// Chunk index ranges → state. Sparse: a 15 TiB claim costs nothing until read.
    states: RangeMap<u64, ChunkState>,
    next_fetch_id: u64,
    /// Set when the content cannot be right (digest or length mismatch).
    poisoned: Option<FsError>,
}

impl Chunks {
    fn new(count: u64, present: bool) -> Self {
        let mut states = RangeMap::new();
        if present && count > 0 {
            states.insert(0..count, ChunkState::Present);
        }
        Chunks {
            states,
            next_fetch_id: 0,
            poisoned: None,
        }
    }

    fn state(&self, i: u64) -> Option<&ChunkState> {
        self.states.get(&i)
    }

    fn all_present(&self, range: std::ops::Range<u64>) -> bool {
        if range.is_empty() {
            return true;
        }
        match self.states.get_key_value(&range.start) {
            Some((r, ChunkState::Present)) => r.end >= range.end,
            _ => false,
        }
    }
}

/// Told about a digest whose content turned out wrong.
pub type BadContentHook = Box<dyn Fn(&Digest) + Send + Sync>;

/// Other files in the cache dir that count against `--cache-size` (the layer
/// indexes of image contents). They are evicted only when removing unused
/// blobs is not enough: an index is a fraction of a percent of its layer and
/// spares a whole fetch of it, while an evicted blob is fetched back by Range.
pub trait CacheTenant: Send + Sync {
    /// Bytes on disk now.
    fn bytes(&self) -> u64;
    /// Removes the least recently used item: the bytes freed, None when empty.
    fn evict_one(&self) -> Option<u64>;
}

/// What is known of a blob's length. Descriptors only claim one (a crafted
/// manifest may claim anything); the registry's own answer settles it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KnownSize {
    Claimed(u64),
    /// Two descriptors disagreed: ask the registry.
    Disputed,
    Confirmed(u64),
}

struct HashProgress {
    hasher: Sha256,
    /// Chunks `0..upto` are hashed.
    upto: u64,
    done: bool,
}

/// Per open file handle: how sequential the reads are. The default (last end
/// 0) makes a first read at offset 0 the start of a sequential read.
#[derive(Debug, Default)]
pub struct ReadState {
    last_end: u64,
    window: u64,
}

impl ReadState {
    /// Record a read of `offset..end`; return how many bytes after `end` to prefetch.
    fn advance(&mut self, offset: u64, end: u64) -> u64 {
        let sequential = offset.abs_diff(self.last_end) <= SEQUENTIAL_SLACK;
        self.window = if sequential {
            (self.window * 2).clamp(2 * CHUNK, MAX_WINDOW)
        } else {
            0
        };
        self.last_end = end.max(if sequential { self.last_end } else { 0 });
        self.window
    }
}

pub struct BlobFile {
    pub digest: Digest,
    pub size: u64,
    repo: String,
    file: File,
    /// The partial file's path until the blob is committed.
    partial_path: Mutex<Option<PathBuf>>,
    chunks: Mutex<Chunks>,
    changed: Notify,
    hash: Mutex<HashProgress>,
    /// A hashing task is running (hashing never blocks the fetch tasks).
    hashing: AtomicBool,
    /// `HashProgress::upto`, readable without waiting for the hasher's lock.
    hashed_upto: AtomicU64,
    /// The whole content hashed to the digest.
    verified: AtomicBool,
    /// The cache filesystem was full: reads go straight to the registry.
    no_space: AtomicBool,
    /// Arrived bytes on their way to the file (see `held.rs`).
    held: Mutex<Held>,
    /// The writer wrote (fetches waiting for room look again).
    drained: Notify,
    /// A writer thread is running (at most one per blob).
    writing: AtomicBool,
    store: Weak<BlobStore>,
}

pub struct BlobStore {
    complete_dir: PathBuf,
    partial_dir: PathBuf,
    limit: u64,
    client: Arc<dyn Registry>,
    stats: Arc<Stats>,
    /// Complete blobs on disk, least recently used first, with their sizes.
    index: Mutex<(LruCache<Digest, u64>, u64)>,
    /// Blob files in use or recently used.
    files: Mutex<LruCache<Digest, Arc<BlobFile>>>,
    /// Complete files re-hashed during this run.
    verified: Mutex<HashSet<Digest>>,
    /// Blob lengths: descriptors' claims and the registry's word.
    sizes: Mutex<LruCache<Digest, KnownSize>>,
    /// Called with a digest whose content turned out wrong, so the kernel
    /// drops the pages and attributes it cached (set by the daemon).
    on_bad_content: OnceLock<BadContentHook>,
    /// Counted in the limit next to the blobs (set by the daemon).
    tenant: OnceLock<Arc<dyn CacheTenant>>,
}

/// Presence units in a blob of `size` bytes.
fn chunk_count(size: u64) -> u64 {
    size.div_ceil(UNIT)
}

impl BlobStore {
    pub fn new(
        cache_dir: &Path,
        limit: u64,
        client: Arc<dyn Registry>,
        stats: Arc<Stats>,
    ) -> std::io::Result<Arc<Self>> {
        let complete_dir = super::dir::blobs(cache_dir);
        let partial_dir = super::dir::partial(cache_dir);
        std::fs::create_dir_all(&complete_dir)?;
        std::fs::create_dir_all(&partial_dir)?;
        // Partial files of an earlier run have no chunk map: start over. The
        // cache dir may be shared with other running mounts: their files stay.
        super::dir::sweep_dead_processes(&partial_dir);
        let mut found = Vec::new();
        for e in std::fs::read_dir(&complete_dir)?.flatten() {
            let name = e.file_name();
            let Some(d) = name.to_str().and_then(Digest::from_hex) else {
                // Leftover temporary files from a crash: not ours to keep.
                let _ = std::fs::remove_file(e.path());
                continue;
            };
            if let Ok(meta) = e.metadata() {
                found.push((meta.modified().ok(), d, meta.len()));
            }
        }
        found.sort();
        let mut lru = LruCache::unbounded();
        let mut total = 0;
        for (_, d, len) in found {
            lru.put(d, len);
            total += len;
        }
        let store = Arc::new(BlobStore {
            complete_dir,
            partial_dir,
            limit,
            client,
            stats,
            index: Mutex::new((lru, total)),
            files: Mutex::new(LruCache::new(NonZeroUsize::new(RECENT_FILES).unwrap())),
            verified: Mutex::new(HashSet::new()),
            sizes: Mutex::new(LruCache::new(NonZeroUsize::new(KNOWN_SIZES).unwrap())),
            on_bad_content: OnceLock::new(),
            tenant: OnceLock::new(),
        });
        store.evict();
        Ok(store)
    }

    fn complete_path(&self, digest: &Digest) -> PathBuf {
        self.complete_dir.join(digest.hex())
    }

    /// Complete blobs on disk: (count, bytes with the tenant's, limit). `statfs` reports these.
    pub fn cache_use(&self) -> (u64, u64, u64) {
        let tenant = self.tenant_bytes();
        let idx = self.index.lock().unwrap();
        (idx.0.len() as u64, idx.1 + tenant, self.limit)
    }

    fn tenant_bytes(&self) -> u64 {
        self.tenant.get().map_or(0, |t| t.bytes())
    }

    /// Counts `tenant`'s files in the limit (once; later calls are ignored).
    pub fn set_tenant(&self, tenant: Arc<dyn CacheTenant>) {
        let _ = self.tenant.set(tenant);
        self.evict();
    }

    /// Evicts until blobs and the tenant's files fit the limit (the tenant calls
    /// this after it wrote a file).
    pub fn fit(&self) {
        self.evict();
    }

    fn over_limit(&self, incoming: u64) -> bool {
        let tenant = self.tenant_bytes();
        self.index.lock().unwrap().1 + tenant + incoming > self.limit
    }

    /// `name value` lines about the disk cache, for `.regfs/stats`.
    pub fn usage(&self) -> String {
        let (count, bytes, _) = self.cache_use();
        let tenant = self.tenant_bytes();
        let open = self
            .files
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, f)| !f.is_complete())
            .count();
        format!(
            "cache_blobs {count}\ncache_bytes {bytes}\ncache_index_bytes {tenant}\ncache_limit {}\nblobs_being_fetched {open}\n",
            self.limit
        )
    }

    /// Set the hook told about blobs whose content turned out wrong.
    pub fn set_on_bad_content(&self, hook: BadContentHook) {
        let _ = self.on_bad_content.set(hook);
    }

    /// Tell the hook, on a thread of its own: a kernel invalidation may wait
    /// for reads that the caller's thread still has to answer.
    fn bad_content(self: &Arc<Self>, digest: &Digest) {
        if self.on_bad_content.get().is_none() {
            return;
        }
        let (store, digest) = (self.clone(), *digest);
        let _ = std::thread::Builder::new()
            .name("regfs-inval".into())
            .spawn(move || (store.on_bad_content.get().expect("checked"))(&digest));
    }

    /// A descriptor says `digest` is `size` bytes long. A claim never
    /// overrides the registry's word; two claims that disagree are disputed.
    pub fn note_claimed_size(&self, digest: Digest, size: u64) {
        let mut sizes = self.sizes.lock().unwrap();
        let next = match sizes.get(&digest).copied() {
            None => KnownSize::Claimed(size),
            Some(KnownSize::Claimed(s)) if s != size => {
                tracing::warn!(%digest, "descriptors disagree on the size of this blob ({s} and {size}); asking the registry");
                KnownSize::Disputed
            }
            Some(known) => known,
        };
        sizes.put(digest, next);
    }

    /// The registry's own length for `digest` (HEAD, Content-Range or a verified file).
    pub fn confirm_size(&self, digest: Digest, size: u64) {
        self.sizes.lock().unwrap().put(digest, KnownSize::Confirmed(size));
    }

    /// The size to show for `digest` without a request, if one is known and undisputed.
    pub fn known_size(&self, digest: &Digest) -> Option<u64> {
        match self.sizes.lock().unwrap().get(digest).copied()? {
            KnownSize::Claimed(s) | KnownSize::Confirmed(s) => Some(s),
            KnownSize::Disputed => None,
        }
    }

    /// Is the whole blob on disk (not necessarily verified yet in this run)?
    pub fn has_complete(&self, digest: &Digest) -> bool {
        self.index.lock().unwrap().0.contains(digest)
    }

    /// The length of a blob no descriptor told us about, from a ranged GET of
    /// its first chunk instead of a HEAD: the same round trip, and its body
    /// becomes that chunk's fetch, so the first read waits for no extra round
    /// trip (issue 13). The size is the registry's word (`Content-Range`),
    /// held to the same rules as a HEAD's: the blob is still verified before
    /// its end is read. `None` when the registry states no length (the caller
    /// falls back to a HEAD).
    pub async fn probe(self: &Arc<Self>, repo: &str, digest: Digest) -> FsResult<Option<u64>> {
        let body = self
            .client
            .get_blob(repo, &digest, 0, CHUNK, &StallClock::default())
            .await?;
        let Some(size) = body.total.filter(|_| body.start == 0) else {
            return Ok(None);
        };
        self.confirm_size(digest, size);
        let file = self.open(repo, digest, size).await?;
        file.adopt_first_chunk(body);
        Ok(Some(size))
    }

    /// The blob file for reading: cached and verified, or partial and fetched on demand.
    pub async fn open(self: &Arc<Self>, repo: &str, digest: Digest, size: u64) -> FsResult<Arc<BlobFile>> {
        if let Some(f) = self.files.lock().unwrap().get(&digest) {
            return Ok(f.clone());
        }
        let file = match self.open_complete(digest, size).await? {
            Some(f) => f,
            None => self.open_partial(repo, digest, size)?,
        };
        let mut files = self.files.lock().unwrap();
        // Another opener may have won the race; use theirs.
        if let Some(f) = files.get(&digest) {
            return Ok(f.clone());
        }
        files.put(digest, file.clone());
        Ok(file)
    }

    async fn open_complete(self: &Arc<Self>, digest: Digest, size: u64) -> FsResult<Option<Arc<BlobFile>>> {
        if !self.has_complete(&digest) {
            return Ok(None);
        }
        let path = self.complete_path(&digest);
        let Ok(file) = File::open(&path) else {
            self.forget_complete(&digest);
            return Ok(None);
        };
        let len = file.metadata()?.len();
        let trusted = self.verified.lock().unwrap().contains(&digest);
        if !trusted {
            let f = file.try_clone()?;
            let actual = tokio::task::spawn_blocking(move || Digest::of_file_range(&f, 0, None))
                .await
                .map_err(|e| FsError::new(Cause::Io, format!("hashing task: {e}")))??;
            if actual != digest {
                tracing::warn!(%digest, %actual, path = %path.display(), "cached blob failed verification; removing it and fetching again");
                self.stats
                    .record_error(format!("cached blob {digest} failed verification; refetching"));
                let _ = std::fs::remove_file(&path);
                self.forget_complete(&digest);
                return Ok(None);
            }
            self.verified.lock().unwrap().insert(digest);
        }
        if len != size {
            // The file hashes to its digest, so its length is the truth: the
            // size shown (a descriptor's claim) was wrong.
            self.confirm_size(digest, len);
            self.bad_content(&digest);
            return Err(self.size_mismatch(&digest, size, len));
        }
        self.index.lock().unwrap().0.promote(&digest);
        Ok(Some(Arc::new(BlobFile::new(
            self,
            digest,
            size,
            String::new(),
            file,
            None,
        ))))
    }

    fn open_partial(self: &Arc<Self>, repo: &str, digest: Digest, size: u64) -> FsResult<Arc<BlobFile>> {
        let path = self
            .partial_dir
            .join(super::dir::process_file_name(&digest.hex(), super::dir::unique()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        // No set_len: the file grows as ranges arrive (allocated by fallocate),
        // so a size claimed by a descriptor costs nothing on disk.
        let blob = Arc::new(BlobFile::new(self, digest, size, repo.to_string(), file, Some(path)));
        if size == 0 {
            blob.advance_hash(); // nothing to fetch: verify and commit at once
        }
        Ok(blob)
    }

    fn size_mismatch(&self, digest: &Digest, shown: u64, actual: u64) -> FsError {
        let msg = format!("blob {digest}: the registry says {actual} bytes, the descriptor said {shown}");
        tracing::error!("size mismatch: {msg}");
        self.stats.record_error(msg.clone());
        FsError::new(Cause::Io, format!("size mismatch: {msg}"))
    }

    fn forget_complete(&self, digest: &Digest) {
        let mut idx = self.index.lock().unwrap();
        if let Some(len) = idx.0.pop(digest) {
            idx.1 -= len;
        }
        self.verified.lock().unwrap().remove(digest);
    }

    fn committed(&self, digest: Digest, size: u64) {
        {
            let mut idx = self.index.lock().unwrap();
            if idx.0.put(digest, size).is_none() {
                idx.1 += size;
            }
        }
        self.verified.lock().unwrap().insert(digest);
        self.evict();
    }

    /// The cache filesystem is full: drop every complete blob nobody has open
    /// (they can be fetched again), so the next blobs fit.
    fn make_room(&self) {
        let in_use = self.in_use();
        let mut idx = self.index.lock().unwrap();
        let unused: Vec<(Digest, u64)> = idx
            .0
            .iter()
            .filter(|(d, _)| !in_use.contains(*d))
            .map(|(d, l)| (*d, *l))
            .collect();
        for (d, len) in unused {
            idx.0.pop(&d);
            idx.1 -= len;
            let _ = std::fs::remove_file(self.complete_path(&d));
            self.verified.lock().unwrap().remove(&d);
        }
    }

    fn in_use(&self) -> HashSet<Digest> {
        self.files
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, f)| Arc::strong_count(f) > 1)
            .map(|(d, _)| *d)
            .collect()
    }

    /// Remove least recently used complete blobs until the cache fits its limit,
    /// then, if that was not enough, the tenant's least recently used files.
    /// Blobs open right now are skipped.
    fn evict(&self) {
        self.evict_for(0);
    }

    /// `evict`, leaving room for `incoming` more bytes: a blob about to be
    /// committed makes room before it appears in `blobs/`, so a committed
    /// blob is never seen beside the blobs it displaced.
    fn evict_for(&self, incoming: u64) {
        if !self.over_limit(incoming) {
            return;
        }
        let in_use = self.in_use();
        let mut tenant = self.tenant_bytes().saturating_add(incoming);
        let mut idx = self.index.lock().unwrap();
        let mut skipped = Vec::new();
        while idx.1 + tenant > self.limit {
            let Some((d, len)) = idx.0.pop_lru() else {
                break;
            };
            if in_use.contains(&d) {
                skipped.push((d, len));
                continue;
            }
            idx.1 -= len;
            let _ = std::fs::remove_file(self.complete_path(&d));
            self.files.lock().unwrap().pop(&d);
            self.verified.lock().unwrap().remove(&d);
            tracing::debug!(digest = %d, "evicted from the blob cache");
        }
        for (d, len) in skipped {
            idx.0.put(d, len);
        }
        if let Some(t) = self.tenant.get() {
            while idx.1 + tenant > self.limit {
                match t.evict_one() {
                    Some(freed) => tenant = tenant.saturating_sub(freed),
                    None => break,
                }
            }
        }
    }
}

impl BlobFile {
    /// A blob backed by `file`: complete and verified when `partial_path` is
    /// `None` (a file of the complete cache, hashed before it is served),
    /// else a partial file that fills as ranges arrive.
    fn new(
        store: &Arc<BlobStore>,
        digest: Digest,
        size: u64,
        repo: String,
        file: File,
        partial_path: Option<PathBuf>,
    ) -> Self {
        let complete = partial_path.is_none();
        let hashed = if complete { chunk_count(size) } else { 0 };
        BlobFile {
            digest,
            size,
            repo,
            file,
            partial_path: Mutex::new(partial_path),
            chunks: Mutex::new(Chunks::new(chunk_count(size), complete)),
            changed: Notify::new(),
            hash: Mutex::new(HashProgress {
                hasher: Sha256::new(),
                upto: hashed,
                done: complete,
            }),
            hashing: AtomicBool::new(false),
            hashed_upto: AtomicU64::new(hashed),
            verified: AtomicBool::new(complete),
            no_space: AtomicBool::new(false),
            held: Mutex::new(Held::default()),
            drained: Notify::new(),
            writing: AtomicBool::new(false),
            store: Arc::downgrade(store),
        }
    }

    fn store(&self) -> FsResult<Arc<BlobStore>> {
        self.store
            .upgrade()
            .ok_or_else(|| FsError::new(Cause::Io, "blob store is gone"))
    }

    /// The cache file, when it holds the whole blob and hashed to its digest
    /// (then the kernel may read it directly: FUSE passthrough).
    pub fn verified_cache_file(&self) -> Option<&File> {
        let ok = self.is_complete() && self.is_verified() && !self.no_space.load(Ordering::Acquire);
        ok.then_some(&self.file)
    }

    pub fn is_complete(&self) -> bool {
        self.partial_path.lock().unwrap().is_none()
    }

    fn is_verified(&self) -> bool {
        self.verified.load(Ordering::Acquire)
    }

    fn poisoned(&self) -> Option<FsError> {
        self.chunks.lock().unwrap().poisoned.clone()
    }

    /// Read `len` bytes at `offset` (fewer at the end of the blob) if they are
    /// on disk already; otherwise start fetching them (and the readahead window)
    /// and return `None`. Never waits on the network, so FUSE threads may call it
    /// (inside the runtime context: it spawns fetch tasks). A read that reaches
    /// the end of the blob returns `None` until the whole blob is verified.
    pub fn try_read(self: &Arc<Self>, offset: u64, len: u64, rs: &Mutex<ReadState>) -> FsResult<Option<Vec<u8>>> {
        if let Some(e) = self.poisoned() {
            return Err(e);
        }
        let end = offset.saturating_add(len).min(self.size);
        // A read at or past the end still waits for the verdict: EOF is an answer too.
        let offset = offset.min(end);
        if offset == end && end < self.size {
            return Ok(Some(Vec::new()));
        }
        let store = self.store()?;
        Stats::inc(&store.stats.fuse_reads);
        if self.no_space.load(Ordering::Acquire) {
            return Ok(None); // served from the registry by `wait_and_read`
        }
        if self.is_complete() {
            Stats::inc(&store.stats.blob_cache_hits);
        } else {
            Stats::inc(&store.stats.blob_cache_misses);
            let ahead = rs.lock().unwrap().advance(offset, end);
            self.start_fetches(offset, end);
            if ahead > 0 {
                // Round the window to whole parts: the frontier then advances a
                // part at a time instead of a chunk per read.
                let window_end = end.saturating_add(ahead).div_ceil(PART).saturating_mul(PART);
                self.start_fetches(end, window_end.min(self.size));
            }
            if !self.all_present(offset, end) || (end >= self.size && !self.is_verified()) {
                Stats::inc(&store.stats.fuse_read_waits);
                return Ok(None);
            }
        }
        match self.read_present(offset, end) {
            // The cache copy was given up under this read: `wait_and_read` serves it.
            Err(e) if e.cause == Cause::NoSpace => Ok(None),
            result => result.map(Some),
        }
    }

    /// Read, waiting for the network when needed.
    pub async fn read(self: &Arc<Self>, offset: u64, len: u64, rs: &Mutex<ReadState>) -> FsResult<Vec<u8>> {
        match self.try_read(offset, len, rs)? {
            Some(data) => Ok(data),
            None => self.wait_and_read(offset, offset.saturating_add(len), rs).await,
        }
    }

    /// Bytes `offset..offset + len` (fewer at the end of the blob) for a caller
    /// that checks them against a digest of its own: image contents, whose
    /// spans, eStargz chunks and TOC each have one. So a read that reaches the
    /// end of the blob does not wait for the whole blob's verdict (an eStargz
    /// footer and TOC are read there), and no readahead is added: the caller
    /// asks for exactly the ranges it needs.
    pub async fn read_self_checked(self: &Arc<Self>, offset: u64, len: u64) -> FsResult<Vec<u8>> {
        if let Some(e) = self.poisoned() {
            return Err(e);
        }
        let end = offset.saturating_add(len).min(self.size);
        let offset = offset.min(end);
        if offset == end {
            return Ok(Vec::new());
        }
        if !self.no_space.load(Ordering::Acquire) {
            if !self.is_complete() {
                self.start_fetches(offset, end);
            }
            let cached = async {
                self.wait_present(offset, end).await?;
                self.read_present(offset, end)
            };
            match cached.await {
                Err(e) if e.cause == Cause::NoSpace => self.out_of_space(&e),
                result => return result,
            }
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        self.stream_from_registry(offset, end, |bytes| {
            out.extend_from_slice(bytes);
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// The bytes `start..end` failed a check of the caller's own (a span's
    /// sha256, see `read_self_checked`): drop them so the next read fetches
    /// them again, instead of serving the same damaged copy from the cache
    /// until the whole blob is fetched anew. The 64 KiB units holding them
    /// leave the chunk map and memory (`Held::forget`), and a whole-blob hash
    /// that already took them in starts over, so a later verdict on the blob
    /// is not spoiled by bytes no longer in it. A blob already verified whole
    /// is left alone: its bytes are proven, the fault is the caller's.
    /// Returns whether anything was dropped.
    pub fn forget_range(&self, start: u64, end: u64) -> bool {
        let end = end.min(self.size);
        if start >= end || self.is_verified() || self.is_complete() || self.no_space.load(Ordering::Acquire) {
            return false;
        }
        let units = self.chunk_range(start, end);
        let bytes = units.start * UNIT..(units.end * UNIT).min(self.size);
        // Lock order as in `advance_hash` (hash, then chunks, then held): a
        // hashing pass in progress finishes before the bytes leave.
        let mut h = self.hash.lock().unwrap();
        if h.done {
            return false; // verified (see above) or poisoned: nothing to mend
        }
        {
            let mut c = self.chunks.lock().unwrap();
            if c.poisoned.is_some() {
                return false;
            }
            // Only present units leave; a fetch in flight or a failed one stays as it is.
            let present: Vec<std::ops::Range<u64>> = c
                .states
                .overlapping(units.clone())
                .filter(|(_, s)| **s == ChunkState::Present)
                .map(|(r, _)| r.start.max(units.start)..r.end.min(units.end))
                .collect();
            for r in present {
                c.states.remove(r);
            }
            self.held.lock().unwrap().forget(bytes.clone());
        }
        if h.upto > units.start {
            h.hasher = Sha256::new();
            h.upto = 0;
            self.hashed_upto.store(0, Ordering::Release);
        }
        drop(h);
        tracing::debug!(digest = %self.digest, start = bytes.start, end = bytes.end, "dropped damaged bytes from the partial cache");
        true
    }

    /// After `try_read` returned `None`: wait for the bytes (and, at the end
    /// of the blob, for the verdict on the whole content), then read them.
    pub async fn wait_and_read(self: &Arc<Self>, offset: u64, end: u64, _rs: &Mutex<ReadState>) -> FsResult<Vec<u8>> {
        let end = end.min(self.size);
        let offset = offset.min(end);
        if !self.no_space.load(Ordering::Acquire) {
            let cached = async {
                self.wait_present(offset, end).await?;
                if end >= self.size {
                    self.wait_verified().await?;
                }
                self.read_present(offset, end)
            };
            match cached.await {
                Err(e) if e.cause == Cause::NoSpace => self.out_of_space(&e),
                result => return result,
            }
        }
        self.read_direct(offset, end).await
    }

    /// The cache filesystem is full: give back what this file holds and serve
    /// its reads straight from the registry from now on (the mount keeps working).
    fn out_of_space(&self, e: &FsError) {
        if self.no_space.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(digest = %self.digest, "cache filesystem full ({e}); reading this blob without caching it");
        if let Ok(store) = self.store() {
            store
                .stats
                .record_error(format!("cache full: blob {} read without caching", self.digest));
            store.files.lock().unwrap().pop(&self.digest);
            store.make_room();
        }
        let _ = self.file.set_len(0);
        self.held.lock().unwrap().clear();
        // Fetches waiting for the writer stop; readers fall back to the registry.
        self.drained.notify_waiters();
        self.changed.notify_waiters();
    }

    /// A read served from the registry without the cache. A read that reaches
    /// the end is answered only after the whole blob streamed through the hash.
    async fn read_direct(self: &Arc<Self>, offset: u64, end: u64) -> FsResult<Vec<u8>> {
        if let Some(e) = self.poisoned() {
            return Err(e);
        }
        if end >= self.size && !self.is_verified() {
            let actual = self.hash_from_registry().await?;
            if actual != self.digest {
                self.poison(actual);
                return Err(self.poisoned().expect("just poisoned"));
            }
            self.verified.store(true, Ordering::Release);
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        if offset < end {
            self.stream_from_registry(offset, end, |bytes| {
                out.extend_from_slice(bytes);
                Ok(())
            })
            .await?;
        }
        Ok(out)
    }

    async fn hash_from_registry(self: &Arc<Self>) -> FsResult<Digest> {
        let mut hasher = Sha256::new();
        if self.size > 0 {
            self.stream_from_registry(0, self.size, |bytes| {
                hasher.update(bytes);
                Ok(())
            })
            .await?;
        }
        Ok(Digest::from_bytes(hasher.finalize().into()))
    }

    /// Bytes `start..end` from the registry, in order, to `sink` (no resume:
    /// a cut body is an error for this read; the next read asks again).
    async fn stream_from_registry(
        self: &Arc<Self>,
        start: u64,
        end: u64,
        mut sink: impl FnMut(&[u8]) -> FsResult<()>,
    ) -> FsResult<()> {
        let store = self.store()?;
        let stall = crate::registry::client::StallClock::default();
        let mut body = store
            .client
            .get_blob(&self.repo, &self.digest, start, end, &stall)
            .await?;
        self.check_registry_length(&store, body.total)?;
        let mut off = body.start;
        while off < end {
            let Some(bytes) = body.chunk().await? else {
                return Err(FsError::new(
                    Cause::Io,
                    format!("GET blob {}: body ended at byte {off}", self.digest),
                ));
            };
            Stats::add(&store.stats.bytes_fetched, bytes.len() as u64);
            let chunk_start = off;
            off += bytes.len() as u64;
            // A 200 answer starts at 0: skip what comes before `start`.
            let from = start.saturating_sub(chunk_start).min(bytes.len() as u64) as usize;
            let to = (end.min(off) - chunk_start).max(from as u64) as usize;
            sink(&bytes[from..to])?;
        }
        Ok(())
    }

    /// Bytes `offset..end`, all present: from memory where they are still
    /// held, else from the file.
    fn read_present(&self, offset: u64, end: u64) -> FsResult<Vec<u8>> {
        let plan = self.held.lock().unwrap().plan(offset, end);
        // Filled in order; only the room a file read writes into is zeroed
        // first (a cold read is mostly memory segments: no memset for them).
        let mut buf = Vec::with_capacity((end - offset) as usize);
        for segment in plan {
            match segment {
                Segment::Memory(bytes) => buf.extend_from_slice(&bytes),
                Segment::File(range) => {
                    let at = buf.len();
                    buf.resize(at + (range.end - range.start) as usize, 0);
                    if let Err(e) = self.file.read_exact_at(&mut buf[at..], range.start) {
                        return Err(self.given_up_or(e.into()));
                    }
                }
            }
        }
        if self.no_space.load(Ordering::Acquire) {
            // The file may have been emptied under the read: do not trust it.
            return Err(self.given_up_or(FsError::new(Cause::Io, "cache file given up")));
        }
        Ok(buf)
    }

    /// Hand the present bytes `offset..end` to `sink` in order, in pieces.
    fn each_present(&self, offset: u64, end: u64, mut sink: impl FnMut(&[u8]) -> FsResult<()>) -> FsResult<()> {
        let plan = self.held.lock().unwrap().plan(offset, end);
        let mut buf = Vec::new();
        for segment in plan {
            match segment {
                Segment::Memory(bytes) => sink(&bytes)?,
                Segment::File(range) => {
                    buf.resize((range.end - range.start) as usize, 0);
                    if let Err(e) = self.file.read_exact_at(&mut buf, range.start) {
                        return Err(self.given_up_or(e.into()));
                    }
                    sink(&buf)?;
                }
            }
        }
        if self.no_space.load(Ordering::Acquire) {
            // The file may have been emptied under the read: do not trust it.
            return Err(self.given_up_or(FsError::new(Cause::Io, "cache file given up")));
        }
        Ok(())
    }

    /// ENOSPC (the caller then reads from the registry) when the cache copy
    /// was given up, else `e`.
    fn given_up_or(&self, e: FsError) -> FsError {
        if self.no_space.load(Ordering::Acquire) {
            FsError::new(Cause::NoSpace, format!("blob {}: cache file given up", self.digest))
        } else {
            e
        }
    }

    /// Wait while the writer lags `LAG_LIMIT` bytes behind the fetches: memory
    /// stays bounded, and the reader keeps that much lead over a slow disk.
    async fn room(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.held.lock().unwrap().unwritten_bytes() < LAG_LIMIT || self.no_space.load(Ordering::Acquire) {
                return;
            }
            drained.await;
        }
    }

    /// Make sure a writer thread is putting the held bytes in the file. At
    /// most one runs per blob; like the hasher it looks again after it stops.
    fn kick_writer(self: &Arc<Self>) {
        if self.writing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        let spawned = std::thread::Builder::new().name("regfs-write".into()).spawn(move || {
            loop {
                this.write_held();
                this.writing.store(false, Ordering::Release);
                let more = this.held.lock().unwrap().unwritten_bytes() > 0 && !this.no_space.load(Ordering::Acquire);
                if !more || this.writing.swap(true, Ordering::AcqRel) {
                    break;
                }
            }
            this.worker_done();
        });
        if let Err(e) = spawned {
            // Without a writer nothing reaches the file: serve from the registry.
            self.writing.store(false, Ordering::Release);
            self.out_of_space(&FsError::new(Cause::Io, format!("cannot start the cache writer: {e}")));
        }
    }

    /// Write every held unwritten byte to the file, a contiguous batch per
    /// system call. A failed write (ENOSPC, EIO) gives up the cache copy.
    fn write_held(self: &Arc<Self>) {
        loop {
            if self.no_space.load(Ordering::Acquire) {
                return;
            }
            let batch = self.held.lock().unwrap().next_batch();
            let Some((start, _)) = batch.first() else {
                break;
            };
            if let Err(e) = pwritev_all(&self.file, *start, &batch) {
                self.out_of_space(&e.into());
                return;
            }
            let hashed = self.hashed_upto.load(Ordering::Acquire).saturating_mul(UNIT);
            self.held.lock().unwrap().written(&batch, hashed);
            self.drained.notify_waiters();
        }
        self.commit_if_ready();
    }

    /// A fetch task, the writer or the hash thread lets go of this blob.
    /// Eviction skips blobs held by anyone (`BlobStore::in_use`), so a blob
    /// committed by its own worker after its reader closed it counted as in
    /// use then: the last worker out looks again, so the cache fits its limit
    /// whatever order the release, the commit and the workers' exits came in.
    fn worker_done(self: Arc<Self>) {
        if !self.is_complete() {
            return;
        }
        let store = self.store.upgrade();
        drop(self);
        if let Some(store) = store {
            store.fit();
        }
    }

    /// Commit once the whole blob is verified and every byte is in the file.
    fn commit_if_ready(&self) {
        if self.is_verified() && self.held.lock().unwrap().unwritten_bytes() == 0 {
            self.commit();
        }
    }

    fn all_present(&self, start: u64, end: u64) -> bool {
        self.chunks.lock().unwrap().all_present(self.chunk_range(start, end))
    }

    fn chunk_range(&self, start: u64, end: u64) -> std::ops::Range<u64> {
        start / UNIT..end.div_ceil(UNIT)
    }

    /// Let `body` (a GET from byte 0, see `BlobStore::probe`) fetch the first
    /// chunk, unless some of it is present or being fetched already (then the
    /// body is dropped).
    fn adopt_first_chunk(self: &Arc<Self>, body: BlobBody) {
        let units = chunk_count(CHUNK.min(self.size));
        let id = {
            let mut c = self.chunks.lock().unwrap();
            let fetchable = c.states.overlapping(0..units).next().is_none();
            if units == 0 || c.poisoned.is_some() || !fetchable || self.is_complete() {
                return;
            }
            c.next_fetch_id += 1;
            let id = c.next_fetch_id;
            c.states.insert(0..units, ChunkState::Fetching(id));
            id
        };
        let this = self.clone();
        tokio::spawn(async move {
            this.clone().fetch_part(0, units, id, Some(body)).await;
            this.worker_done();
        });
    }

    /// Start fetches for every chunk of `start..end` nobody is fetching yet,
    /// runs of missing chunks grouped into requests of at most `PART` bytes.
    fn start_fetches(self: &Arc<Self>, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // Whole chunks: a small read costs one request of a useful size.
        let (start, end) = (
            start - start % CHUNK,
            end.div_ceil(CHUNK).saturating_mul(CHUNK).min(self.size),
        );
        let range = self.chunk_range(start, end);
        let mut parts = Vec::new();
        {
            let mut c = self.chunks.lock().unwrap();
            if c.poisoned.is_some() {
                return;
            }
            let per_part = PART / UNIT;
            let fetchable = |s: Option<&ChunkState>| matches!(s, None | Some(ChunkState::Failed(..)));
            let mut i = range.start;
            while i < range.end {
                if fetchable(c.state(i)) {
                    let first = i;
                    // Parts never cross a PART-aligned boundary, so requests stay
                    // large and aligned however the reads arrive.
                    while i < range.end && fetchable(c.state(i)) {
                        i += 1;
                        if i.is_multiple_of(per_part) {
                            break;
                        }
                    }
                    c.next_fetch_id += 1;
                    let id = c.next_fetch_id;
                    c.states.insert(first..i, ChunkState::Fetching(id));
                    parts.push((first, i, id));
                } else {
                    // Skip the whole run in this state.
                    let run_end = c.states.get_key_value(&i).map(|(r, _)| r.end).unwrap_or(i + 1);
                    i = run_end.min(range.end).max(i + 1);
                }
            }
        }
        for (first, last, id) in parts {
            let this = self.clone();
            tokio::spawn(async move {
                this.clone().fetch_part(first, last, id, None).await;
                this.worker_done();
            });
        }
    }

    /// Wait until every chunk of `start..end` is present. Fails with the error of
    /// a fetch this caller waited on; refetches chunks that failed before.
    async fn wait_present(self: &Arc<Self>, start: u64, end: u64) -> FsResult<()> {
        let range = self.chunk_range(start, end);
        let mut waited_on = HashSet::new();
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut refetch = false;
            {
                let c = self.chunks.lock().unwrap();
                if let Some(e) = &c.poisoned {
                    return Err(e.clone());
                }
                if c.all_present(range.clone()) {
                    return Ok(());
                }
                let mut covered = range.start;
                for (r, s) in c.states.overlapping(range.clone()) {
                    if r.start > covered {
                        refetch = true; // a gap: missing chunks
                    }
                    covered = r.end;
                    match s {
                        ChunkState::Present => {}
                        ChunkState::Fetching(id) => {
                            waited_on.insert(*id);
                        }
                        ChunkState::Failed(id, e) if waited_on.contains(id) => return Err(e.clone()),
                        ChunkState::Failed(..) => refetch = true,
                    }
                }
                if covered < range.end {
                    refetch = true;
                }
            }
            if refetch {
                self.start_fetches(start, end);
                continue;
            }
            notified.await;
        }
    }

    /// Wait until the whole content is hashed: Ok when it matched the digest.
    async fn wait_verified(self: &Arc<Self>) -> FsResult<()> {
        // The verdict needs every byte: a read of the tail alone fetches the
        // whole blob (once), failing as the fetch fails.
        self.wait_present(0, self.size).await?;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(e) = self.poisoned() {
                return Err(e);
            }
            if self.is_verified() {
                return Ok(());
            }
            self.kick_hasher();
            notified.await;
        }
    }

    /// Fetch units `first..last` (marked `Fetching(id)`); `sent` is the body
    /// of a GET already sent for them (see `BlobStore::probe`).
    async fn fetch_part(self: Arc<Self>, first: u64, last: u64, id: u64, sent: Option<BlobBody>) {
        let start = first * UNIT;
        let end = (last * UNIT).min(self.size);
        if let Err(e) = self.fetch_range(start, end, sent).await {
            tracing::warn!(digest = %self.digest, start, end, "blob fetch failed: {e}");
            if let Ok(store) = self.store() {
                store
                    .stats
                    .record_error(format!("GET blob {} bytes {start}-{end}: {e}", self.digest));
            }
            let mut c = self.chunks.lock().unwrap();
            let ours: Vec<_> = c
                .states
                .overlapping(first..last)
                .filter(|(_, s)| matches!(s, ChunkState::Fetching(x) if *x == id))
                .map(|(r, _)| r.start.max(first)..r.end.min(last))
                .collect();
            for r in ours {
                c.states.insert(r, ChunkState::Failed(id, e.clone()));
            }
            drop(c);
            self.changed.notify_waiters();
        }
    }

    /// Stream `start..end` into the file, resuming a cut body from where it stopped.
    async fn fetch_range(self: &Arc<Self>, start: u64, end: u64, mut sent: Option<BlobBody>) -> FsResult<()> {
        let store = self.store()?;
        // Allocate the range before streaming into it: writes into a hole cost
        // the filesystem far more per page than writes into allocated space.
        // Only fetched ranges are allocated, so random reads stay cheap on disk.
        {
            use std::os::fd::AsRawFd;
            // SAFETY: fallocate on our own open descriptor; failure is harmless.
            unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    0,
                    start as libc::off_t,
                    (end - start) as libc::off_t,
                );
            }
        }
        let transfer = Transfers::start(&store.stats, Direction::Fetch, &self.repo, &self.digest, self.size);
        let mut pos = start;
        // Bytes `covered_from..pos` are written (a 200 answer starts at 0).
        let mut covered_from = start;
        let mut resumes = 0;
        let stall = StallClock::default();
        while pos < end {
            let mut body = match sent.take() {
                Some(body) => body,
                None => {
                    store
                        .client
                        .get_blob(&self.repo, &self.digest, pos, end, &stall)
                        .await?
                }
            };
            self.check_registry_length(&store, body.total)?;
            covered_from = covered_from.min(body.start);
            let mut off = body.start;
            let cut = loop {
                match body.chunk().await {
                    Ok(Some(bytes)) => {
                        let room = self.size.saturating_sub(off);
                        if bytes.len() as u64 > room {
                            let e = FsError::new(
                                Cause::Io,
                                format!("blob {} is longer than its size {}", self.digest, self.size),
                            );
                            self.poison_with(e.clone());
                            return Err(e);
                        }
                        if self.no_space.load(Ordering::Acquire) {
                            // The cache copy was given up: reads go to the registry.
                            return Err(FsError::new(Cause::NoSpace, "the cache file of this blob was given up"));
                        }
                        let len = bytes.len() as u64;
                        Stats::add(&store.stats.bytes_fetched, len);
                        transfer.add(len);
                        // In memory first: readers and the hash take the bytes
                        // from there; the writer thread files them behind.
                        if self.held.lock().unwrap().arrive(off, bytes) {
                            self.kick_writer();
                        }
                        off += len;
                        if off > pos {
                            pos = off;
                        }
                        self.mark_present(covered_from, off);
                        self.room().await;
                    }
                    Ok(None) => break None,
                    Err(e) => break Some(e.to_string()),
                }
            };
            if pos >= end {
                break;
            }
            resumes += 1;
            let why = cut.unwrap_or_else(|| "body ended early".into());
            if resumes > MAX_RESUMES {
                return Err(FsError::new(
                    Cause::Io,
                    format!("GET blob {}: {why} (gave up at byte {pos})", self.digest),
                ));
            }
            Stats::inc(&store.stats.retries);
            tracing::info!(digest = %self.digest, pos, "blob body cut ({why}); resuming with Range");
        }
        Ok(())
    }

    /// The registry's own length (when it states one) settles what a
    /// descriptor claimed: a disagreement poisons this file.
    fn check_registry_length(&self, store: &BlobStore, total: Option<u64>) -> FsResult<()> {
        let Some(total) = total.filter(|&t| t != self.size) else {
            return Ok(());
        };
        store.confirm_size(self.digest, total);
        let e = store.size_mismatch(&self.digest, self.size, total);
        self.poison_with(e.clone());
        Err(e)
    }

    /// Mark chunks entirely inside `from..to` present and wake readers.
    fn mark_present(self: &Arc<Self>, from: u64, to: u64) {
        let first = from.div_ceil(UNIT);
        let last = if to >= self.size {
            chunk_count(self.size)
        } else {
            to / UNIT
        };
        if first >= last {
            return;
        }
        let changed = {
            let mut c = self.chunks.lock().unwrap();
            let before = c.all_present(first..last);
            c.states.insert(first..last, ChunkState::Present);
            !before
        };
        if changed {
            self.changed.notify_waiters();
            // The hasher takes a chunk or the tail at a time: a thread per
            // 64 KiB unit would cost more than the hashing.
            let hashed = self.hashed_upto.load(Ordering::Acquire);
            if last >= chunk_count(self.size) || last >= hashed + CHUNK / UNIT {
                self.kick_hasher();
            }
        }
    }

    /// Make sure a blocking task is hashing the present prefix. At most one runs
    /// per blob; it re-checks after finishing so no newly present chunk is missed.
    fn kick_hasher(self: &Arc<Self>) {
        if self.hashing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        let spawned = std::thread::Builder::new().name("regfs-hash".into()).spawn(move || {
            // The hash runs at the daemon's own priority, beside the fetches:
            // the last read of a blob waits for its verdict, so a hash left to
            // idle CPU (it was SCHED_IDLE) made a busy machine's cold reads
            // wait for all of it at the end (perf: the daemon's hash thread
            // ran alone for the last ~0.5 s of a 1 GiB read).
            loop {
                this.advance_hash();
                this.hashing.store(false, Ordering::Release);
                if !this.next_hashable() || this.hashing.swap(true, Ordering::AcqRel) {
                    break;
                }
            }
            this.worker_done();
        });
        if let Err(e) = spawned {
            self.hashing.store(false, Ordering::Release);
            tracing::warn!(digest = %self.digest, "cannot start the hashing thread: {e}");
        }
    }

    fn next_hashable(&self) -> bool {
        let h = self.hash.lock().unwrap();
        !h.done && matches!(self.chunks.lock().unwrap().state(h.upto), Some(ChunkState::Present))
    }

    /// Hash the present prefix; when it is the whole blob, verify and commit.
    fn advance_hash(&self) {
        let mut h = self.hash.lock().unwrap();
        if h.done || self.no_space.load(Ordering::Acquire) {
            return; // out of space: the file is given back, reads verify on their own
        }
        let n = chunk_count(self.size);
        while h.upto < n {
            // The present run from `upto`, at most a chunk at a time.
            let run_end = match self.chunks.lock().unwrap().states.get_key_value(&h.upto) {
                Some((r, ChunkState::Present)) => r.end.min(h.upto + CHUNK / UNIT).min(n),
                _ => return,
            };
            let off = h.upto * UNIT;
            let end = (run_end * UNIT).min(self.size);
            // From memory where the bytes are still held, else read back.
            let hasher = &mut h.hasher;
            if let Err(e) = self.each_present(off, end, |bytes| {
                hasher.update(bytes);
                Ok(())
            }) {
                drop(h);
                if self.no_space.load(Ordering::Acquire) {
                    return; // the file was emptied to give the space back
                }
                self.poison_with(FsError::new(
                    Cause::Io,
                    format!("blob {}: reading back for verification failed: {e}", self.digest),
                ));
                return;
            }
            h.upto = run_end;
            self.hashed_upto.store(run_end, Ordering::Release);
            self.held.lock().unwrap().hashed(end);
        }
        h.done = true;
        let actual = Digest::from_bytes(h.hasher.finalize_reset().into());
        drop(h);
        if self.no_space.load(Ordering::Acquire) {
            return; // the bytes may have been emptied under the hash
        }
        if actual == self.digest {
            self.verified.store(true, Ordering::Release);
            self.commit_if_ready();
            self.changed.notify_waiters();
        } else {
            self.poison(actual);
        }
    }

    fn commit(&self) {
        let Ok(store) = self.store() else { return };
        let mut partial = self.partial_path.lock().unwrap();
        let Some(path) = partial.as_ref() else { return };
        store.evict_for(self.size);
        match std::fs::rename(path, store.complete_path(&self.digest)) {
            Ok(()) => {
                *partial = None;
                drop(partial);
                tracing::debug!(digest = %self.digest, size = self.size, "blob verified and cached");
                store.confirm_size(self.digest, self.size);
                store.committed(self.digest, self.size);
            }
            Err(e) => tracing::warn!(digest = %self.digest, "cannot commit blob to the cache: {e}"),
        }
    }

    fn poison(&self, actual: Digest) {
        let msg = format!("blob {} from {}: content hashes to {actual}", self.digest, self.repo);
        tracing::error!("digest mismatch: {msg}");
        if let Ok(store) = self.store() {
            store.stats.record_error(format!("digest mismatch: {msg}"));
        }
        self.poison_with(FsError::new(Cause::Io, format!("digest mismatch: {msg}")));
    }

    /// This file's content cannot be right: every read of it fails from now
    /// on, the kernel forgets what it cached, a later open fetches afresh.
    fn poison_with(&self, err: FsError) {
        {
            let mut c = self.chunks.lock().unwrap();
            if c.poisoned.is_some() {
                return;
            }
            c.poisoned = Some(err);
        }
        // Waiting readers first: the kernel's invalidation waits for the pages
        // their reads hold locked.
        self.changed.notify_waiters();
        if let Ok(store) = self.store() {
            store.files.lock().unwrap().pop(&self.digest);
            store.bad_content(&self.digest);
        }
    }
}

impl Drop for BlobFile {
    fn drop(&mut self) {
        if let Some(p) = self.partial_path.lock().unwrap().take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Write `pieces` (contiguous, the first at `start`) at `start` of `file`,
/// with as few `pwritev` calls as the kernel allows.
fn pwritev_all(file: &File, start: u64, pieces: &[(u64, bytes::Bytes)]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut slices: Vec<&[u8]> = pieces.iter().map(|(_, b)| &b[..]).collect();
    let mut pos = start;
    while !slices.is_empty() {
        let iov: Vec<libc::iovec> = slices
            .iter()
            .map(|s| libc::iovec {
                iov_base: s.as_ptr() as *mut libc::c_void,
                iov_len: s.len(),
            })
            .collect();
        // SAFETY: the iovecs point into `slices`, alive for the call; the fd is ours.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
                pos as libc::off_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "pwritev wrote nothing",
            ));
        }
        let mut n = n as usize;
        pos += n as u64;
        while n > 0 {
            if n >= slices[0].len() {
                n -= slices[0].len();
                slices.remove(0);
            } else {
                slices[0] = &slices[0][n..];
                n = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_detection() {
        let mut rs = ReadState::default();
        assert_eq!(rs.advance(0, 131072), 2 * CHUNK);
        assert_eq!(rs.advance(131072, 262144), 4 * CHUNK);
        for _ in 0..10 {
            rs.advance(rs.last_end, rs.last_end + 131072);
        }
        assert_eq!(rs.window, MAX_WINDOW);
        assert_eq!(rs.advance(900 << 20, (900 << 20) + 4096), 0, "a jump is random");
    }

    /// The cache file is committed only once every byte is in it (the hash
    /// may finish from memory before the writer does), it holds exactly the
    /// blob, and nothing stays held in memory after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blob_is_committed_with_every_byte_written_and_nothing_held() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Arc::new(crate::registry::fake::FakeRegistry::new());
        // 40 MiB that differ everywhere (a hole or a misplaced piece shows).
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let data: Vec<u8> = (0..40 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let digest = reg.put_blob("r", data.clone());
        let store = BlobStore::new(dir.path(), 1 << 30, reg, Arc::new(Stats::default())).unwrap();
        let file = store.open("r", digest, data.len() as u64).await.unwrap();
        let rs = Mutex::new(ReadState::default());
        let mut off = 0;
        while off < data.len() {
            let got = file.read(off as u64, 1 << 20, &rs).await.unwrap();
            assert!(got[..] == data[off..off + got.len()], "bytes at {off}");
            off += got.len();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !store.has_complete(&digest) {
            assert!(std::time::Instant::now() < deadline, "never committed");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(std::fs::read(store.complete_path(&digest)).unwrap() == data);
        assert_eq!(file.held.lock().unwrap().memory_bytes(), 0);
        assert_eq!(std::fs::read_dir(&store.partial_dir).unwrap().count(), 0);
    }

    /// A damaged copy of some bytes, found out by a caller's own digest, is
    /// dropped and fetched again; the whole-blob hash, which had taken the
    /// damaged bytes in, starts over, so the blob still verifies and commits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_bytes_are_fetched_again_and_the_blob_still_verifies() {
        use crate::registry::fake::{FakeRegistry, Lie};
        let dir = tempfile::tempdir().unwrap();
        let reg = Arc::new(FakeRegistry::new());
        let data: Vec<u8> = (0..3u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let digest = reg.put_blob("r", data.clone());
        let bad_at = (3 << 19) + 7; // 1.5 MiB + 7
        let mut damaged = data.clone();
        damaged[bad_at] ^= 0x55;
        reg.lie(digest, Lie::Bytes(damaged.into()));
        let store = BlobStore::new(dir.path(), 1 << 30, reg.clone(), Arc::new(Stats::default())).unwrap();
        let file = store.open("r", digest, data.len() as u64).await.unwrap();
        // The first 2 MiB arrive (the damaged byte among them) and are hashed.
        let got = file.read_self_checked(0, 2 << 20).await.unwrap();
        assert_ne!(got[bad_at], data[bad_at], "the registry's damaged copy");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while file.hashed_upto.load(Ordering::Acquire) * UNIT < 2 << 20 {
            assert!(std::time::Instant::now() < deadline, "never hashed");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        reg.stop_lying(&digest);
        let gets = || reg.requests().iter().filter(|r| r.starts_with("GET blob")).count();
        let before = gets();
        let again = file.read_self_checked(bad_at as u64, 1).await.unwrap();
        assert_ne!(
            again[0], data[bad_at],
            "kept in the cache: served again without a fetch"
        );
        assert_eq!(gets(), before);

        assert!(file.forget_range(bad_at as u64 - 10, bad_at as u64 + 10));
        assert_eq!(file.hashed_upto.load(Ordering::Acquire), 0, "the hash starts over");
        let fresh = file.read_self_checked(bad_at as u64 - 10, 20).await.unwrap();
        assert!(fresh[..] == data[bad_at - 10..bad_at + 10], "the fresh copy");
        let refetch: Vec<String> = reg.requests().into_iter().skip(before).collect();
        // One GET of the 64 KiB units that were dropped (the range crosses a
        // unit boundary: two), nothing else.
        let (first, end) = (
            (bad_at as u64 - 10) / UNIT * UNIT,
            (bad_at as u64 + 10).div_ceil(UNIT) * UNIT,
        );
        assert_eq!(end - first, 2 * UNIT);
        assert_eq!(
            refetch,
            [format!("GET blob r@{digest} bytes={first}-{}", end - 1)],
            "{refetch:?}"
        );
        // Reading to the end verifies the whole blob, the fresh bytes included.
        let rs = Mutex::new(ReadState::default());
        let tail = file.read(data.len() as u64 - 100, 100, &rs).await.unwrap();
        assert!(tail[..] == data[data.len() - 100..]);
        while !store.has_complete(&digest) {
            assert!(std::time::Instant::now() < deadline, "never committed");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(std::fs::read(store.complete_path(&digest)).unwrap() == data);
        assert!(
            !file.forget_range(0, 10),
            "a verified blob's bytes are proven: nothing to drop"
        );
    }

    #[test]
    fn random_first_read_prefetches_nothing() {
        let mut rs = ReadState::default();
        assert_eq!(rs.advance(500 << 20, (500 << 20) + 4096), 0);
    }
}
