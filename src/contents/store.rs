//! Layer indexes on disk (`<cache>/contents/<hex>.idx`) and in memory: the
//! one place that decides whether an index is loaded, built, or refused, so
//! that the filesystem glue only asks for "the index of this layer".
//!
//! - An index is built at most once at a time per digest (concurrent askers
//!   wait for the first), loaded from disk on later mounts (a damaged file is
//!   removed and rebuilt, never trusted), and shared while anyone holds it.
//! - [`IndexStore::image`] builds the missing indexes of an image's layers in
//!   parallel and merges them; a layer that cannot be indexed (foreign,
//!   unknown media type, digest mismatch, fetch error) shows as empty, with one
//!   log line, instead of failing the whole root filesystem.
//! - An eStargz layer whose descriptor carries the TOC digest annotation is
//!   opened from its footer and TOC by Range, with no pass over the blob; the
//!   TOC is checked against the annotation, itself part of a verified
//!   manifest. Without it the footer proves nothing (the TOC is not tied to
//!   the layer digest), so such a layer gets the ordinary verified pass
//!   (docs/contents.md, "Trust").
//! - The files on disk are tracked least recently used first with their sizes,
//!   so the blob cache can count them in `--cache-size` and evict them
//!   ([`IndexStore::evict_one`]) when removing blobs is not enough.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use lru::LruCache;

use super::index::LayerIndex;
use super::rootfs::Rootfs;
use super::tarscan::{Limits, Problems};
use super::{Compression, ContentsError, SpanSource};

/// Layers of one image indexed at the same time, at most.
const PARALLEL_BUILDS: usize = 4;

/// A layer of an image, as its manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    /// `sha256:<hex>`.
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// The descriptor's `containerd.io/snapshot/stargz/toc.digest`: an eStargz
    /// layer whose TOC can be read by Range and trusted.
    pub toc_digest: Option<String>,
}

/// The blob of a layer: streamed once for a pass, read by Range for eStargz.
pub trait LayerBlob: Read + SpanSource {}
impl<T: Read + SpanSource> LayerBlob for T {}

/// Whether a layer of this media type can be read as a tar (possibly
/// compressed). Foreign / non-distributable layers are not fetched: they
/// usually live elsewhere (and the registry does not have them).
pub fn is_readable_layer(media_type: &str) -> bool {
    let foreign = media_type.contains(".foreign.") || media_type.contains("nondistributable");
    let tar = media_type.contains("tar") || media_type.is_empty();
    tar && !foreign
}

pub struct IndexStore {
    dir: PathBuf,
    limits: Limits,
    loaded: Mutex<HashMap<String, Weak<LayerIndex>>>,
    /// One lock per digest being loaded or built.
    busy: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Index files on disk, least recently used first, with their sizes; and their total.
    files: Mutex<(LruCache<String, u64>, u64)>,
}

impl IndexStore {
    /// A store in `dir` (created if missing), e.g. `<cache dir>/contents`.
    pub fn new(dir: impl Into<PathBuf>, limits: Limits) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        // Files of earlier mounts, oldest use first (a load touches the file's mtime).
        let mut found = Vec::new();
        for e in std::fs::read_dir(&dir)?.flatten() {
            let name = e.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".idx")) else {
                continue; // a temporary file of a save in progress (or a crash): not counted
            };
            if let Ok(m) = e.metadata() {
                found.push((m.modified().ok(), format!("sha256:{hex}"), m.len()));
            }
        }
        found.sort();
        let mut lru = LruCache::unbounded();
        let mut total = 0;
        for (_, digest, len) in found {
            total += len;
            lru.put(digest, len);
        }
        Ok(IndexStore {
            dir,
            limits,
            loaded: Mutex::default(),
            busy: Mutex::default(),
            files: Mutex::new((lru, total)),
        })
    }

    /// Records that the file of `digest` is on disk with `len` bytes (or gone: None), most recently used.
    fn track(&self, digest: &str, len: Option<u64>) {
        let mut files = self.files.lock().unwrap();
        if let Some(old) = files.0.pop(digest) {
            files.1 -= old;
        }
        if let Some(len) = len {
            files.0.put(digest.to_string(), len);
            files.1 += len;
        }
    }

    /// Marks the file of `digest` used now, in memory and in its mtime (the
    /// order a later mount starts from).
    fn touch(&self, digest: &str) {
        let known = self.files.lock().unwrap().0.get(digest).is_some();
        if known {
            if let Ok(f) = std::fs::File::options().append(true).open(self.path(digest)) {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
        }
    }

    /// Removes the least recently used index file (cache eviction): the bytes
    /// freed, or None when there is none. An index in use stays usable from
    /// memory; a later mount builds it again.
    pub fn evict_one(&self) -> Option<u64> {
        let (digest, len) = {
            let mut files = self.files.lock().unwrap();
            let (digest, len) = files.0.pop_lru()?;
            files.1 -= len;
            (digest, len)
        };
        let _ = std::fs::remove_file(self.path(&digest));
        tracing::debug!(digest, bytes = len, "layer index evicted from the cache");
        Some(len)
    }

    /// Where the index of `digest` is kept.
    pub fn path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir.join(format!("{hex}.idx"))
    }

    fn in_memory(&self, digest: &str) -> Option<Arc<LayerIndex>> {
        self.loaded.lock().unwrap().get(digest).and_then(Weak::upgrade)
    }

    /// The index if it is in memory or on disk (no build).
    pub fn cached(&self, digest: &str) -> Option<Arc<LayerIndex>> {
        if let Some(i) = self.in_memory(digest) {
            return Some(i);
        }
        let lock = self.lock_for(digest);
        let _guard = lock.lock().unwrap();
        self.load(digest)
    }

    fn lock_for(&self, digest: &str) -> Arc<Mutex<()>> {
        self.busy.lock().unwrap().entry(digest.to_string()).or_default().clone()
    }

    fn remember(&self, index: LayerIndex) -> Arc<LayerIndex> {
        let index = Arc::new(index);
        let mut loaded = self.loaded.lock().unwrap();
        loaded.retain(|_, w| w.strong_count() > 0);
        loaded.insert(index.digest.clone(), Arc::downgrade(&index));
        index
    }

    fn load(&self, digest: &str) -> Option<Arc<LayerIndex>> {
        if let Some(i) = self.in_memory(digest) {
            return Some(i);
        }
        let path = self.path(digest);
        if !path.exists() {
            return None;
        }
        match LayerIndex::load(&path, digest) {
            Ok(index) => {
                self.touch(digest);
                Some(self.remember(index))
            }
            Err(e) => {
                tracing::warn!(digest, "{e}; removing it (it will be rebuilt)");
                let _ = std::fs::remove_file(&path);
                self.track(digest, None);
                None
            }
        }
    }

    /// The index of a layer: from memory, from disk, or built from the blob
    /// `open` returns (then saved): by Range from an eStargz layer's TOC, else
    /// by one pass over the blob. Problems inside the layer are logged
    /// once, when it is built.
    pub fn get_or_build<R: LayerBlob>(
        &self,
        layer: &LayerRef,
        open: impl FnOnce() -> io::Result<R>,
    ) -> Result<Arc<LayerIndex>, ContentsError> {
        if let Some(i) = self.in_memory(&layer.digest) {
            return Ok(i);
        }
        let lock = self.lock_for(&layer.digest);
        let _guard = lock.lock().unwrap();
        if let Some(i) = self.load(&layer.digest) {
            return Ok(i);
        }
        let started = std::time::Instant::now();
        let blob = open()?;
        let index = match self.toc_index(layer, &blob) {
            Some(index) => index,
            None => LayerIndex::build(&layer.digest, Some(&layer.media_type), blob, &self.limits)?,
        };
        if !index.problems.is_empty() {
            tracing::warn!(digest = %layer.digest, problems = index.problems.count, "layer contents: {}", index.problems.summary());
        }
        tracing::info!(
            digest = %layer.digest,
            entries = index.entries.len(),
            spans = index.span_count(),
            ms = started.elapsed().as_millis() as u64,
            "layer indexed"
        );
        match index.save(&self.path(&layer.digest)) {
            Ok(len) => self.track(&layer.digest, Some(len)),
            Err(e) => tracing::warn!(digest = %layer.digest, "cannot save the layer index: {e}"),
        }
        Ok(self.remember(index))
    }

    /// The index of an eStargz layer read from its footer and TOC by Range, or
    /// `None` when the layer needs the full pass: no TOC digest annotation, or
    /// a TOC that is unusable or does not match it. A footer and TOC with no
    /// annotation are not trusted: nothing ties them to the layer digest
    /// until the whole blob is read, so a lying registry could show files the
    /// layer does not hold. The pass checks the blob against the layer digest,
    /// so whatever was wrong with the TOC, what the pass lists is the truth.
    fn toc_index(&self, layer: &LayerRef, blob: &impl SpanSource) -> Option<LayerIndex> {
        let toc = layer.toc_digest.as_deref()?;
        super::estargz::open(&layer.digest, layer.size, blob, Some(toc), &self.limits)
            .inspect_err(|e| tracing::warn!(digest = %layer.digest, "eStargz TOC not usable ({e}): indexing the layer with a full pass"))
            .ok()
    }

    /// The merged root filesystem of an image (`layers` bottom first). Missing
    /// indexes are built in parallel, each from the reader `open` gives for its
    /// layer. A layer that cannot be indexed is shown empty (logged).
    pub fn image<R: LayerBlob>(&self, layers: &[LayerRef], open: impl Fn(&LayerRef) -> io::Result<R> + Sync) -> Rootfs {
        let indexes = self.layers(layers, open);
        Rootfs::merged(indexes)
    }

    /// The indexes of `layers`, built in parallel where missing; stand-ins
    /// (empty, with the reason as a problem) for layers that cannot be indexed.
    pub fn layers<R: LayerBlob>(
        &self,
        layers: &[LayerRef],
        open: impl Fn(&LayerRef) -> io::Result<R> + Sync,
    ) -> Vec<Arc<LayerIndex>> {
        let slots: Vec<Mutex<Option<Arc<LayerIndex>>>> = layers.iter().map(|_| Mutex::new(None)).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..PARALLEL_BUILDS.min(layers.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(layer) = layers.get(i) else { break };
                    let index = self.one_layer(layer, &open);
                    *slots[i].lock().unwrap() = Some(index);
                });
            }
        });
        slots
            .into_iter()
            .map(|s| s.into_inner().unwrap().expect("every slot filled"))
            .collect()
    }

    fn one_layer<R: LayerBlob>(&self, layer: &LayerRef, open: &impl Fn(&LayerRef) -> io::Result<R>) -> Arc<LayerIndex> {
        if !is_readable_layer(&layer.media_type) {
            tracing::warn!(digest = %layer.digest, media_type = %layer.media_type, "layer not read (foreign or not a tar): shown empty");
            return Arc::new(empty(layer, format!("media type {} is not read", layer.media_type)));
        }
        match self.get_or_build(layer, || open(layer)) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(digest = %layer.digest, "layer contents unavailable, shown empty: {e}");
                Arc::new(empty(layer, e.to_string()))
            }
        }
    }

    /// Forgets the index of `digest` (cache eviction): memory and disk.
    pub fn remove(&self, digest: &str) -> io::Result<()> {
        self.loaded.lock().unwrap().remove(digest);
        self.track(digest, None);
        match std::fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Bytes the index files take on disk.
    pub fn disk_usage(&self) -> u64 {
        self.files.lock().unwrap().1
    }
}

fn empty(layer: &LayerRef, why: String) -> LayerIndex {
    let mut problems = Problems::default();
    problems.push(why);
    LayerIndex::from_parts(&layer.digest, Compression::None, layer.size, Vec::new(), problems)
}

/// A [`SpanSource`] over a local file (a blob in the cache).
pub struct FileSource(pub std::fs::File);

impl FileSource {
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(FileSource(std::fs::File::open(path)?))
    }
}

impl SpanSource for FileSource {
    fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
        self.0.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
}
