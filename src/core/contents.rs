//! Glue between the tree and `crate::contents`: `rootfs/` of image manifests,
//! `<repo>/_layers/sha256:<hex>/`, their attributes, listings, links and
//! reads (docs/contents.md; README, "Image contents"). Everything here is read-only.
//!
//! Nodes: a directory inside a tree is `ContentsDir(tree slot, node)` (its
//! children depend on the tree); every other entry is `ContentsEntry(layer
//! slot, entry, kind)`, named by the layer entry itself, so the same entry of
//! the same layer is one inode in every image of the repository (`diff -r`
//! between two tags sharing base layers skips the shared files unread).
//! A slot is a small number standing for (repository, tree) — see [`Slots`] —
//! so a contents node is three integers and its inode number is computed from
//! them ([`packed_ino`]): an image of a million files adds nothing to the
//! inode table.
//!
//! Indexes are built on first need (an image's layers in parallel) by the
//! [`IndexStore`] in `<cache>/contents/`, from the blob cache; reads go
//! through the blob cache too (local bytes when present, Range GETs when not),
//! every span checked against the digest the verified pass recorded.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, UNIX_EPOCH};

use super::attr::{Attr, FileKind};

use super::node::{self, Node};
use super::Core;
use crate::contents::{self, IndexStore, LayerIndex, LayerRef, Limits, Rootfs, SpanSource};
use crate::error::{Cause, FsError, FsResult};
use crate::oci::Digest;
use crate::oci::{self, ChildTarget, ManifestKind};
use crate::store::{BlobFile, BlobStore, CacheTenant, ReadState};

/// Which tree a directory belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TreeKey {
    /// The merged root filesystem of an image manifest.
    Image(Digest),
    /// One layer as its tar holds it.
    Layer(Digest),
}

/// Trees kept built, at most (each holds its layers' indexes).
const KEPT_TREES: usize = 32;

/// Contents inode numbers: bit 63 clear (digest-derived numbers set it), bit
/// 62 set (sequential numbers never reach it), then 3 bits of kind (0 for a
/// directory of a tree, 1 + `Kind` for an entry), a 27-bit slot and a 32-bit
/// node or entry number.
const CONTENTS_BIT: u64 = 1 << 62;
const CODE_SHIFT: u32 = 59;
const SLOT_SHIFT: u32 = 32;
const SLOT_LIMIT: u32 = 1 << (CODE_SHIFT - SLOT_SHIFT);
const KINDS: [contents::Kind; 7] = [
    contents::Kind::File,
    contents::Kind::Dir,
    contents::Kind::Symlink,
    contents::Kind::HardLink,
    contents::Kind::Char,
    contents::Kind::Block,
    contents::Kind::Fifo,
];

/// The inode number of a contents node, computed (`None` for other nodes).
pub(crate) fn packed_ino(node: &Node) -> Option<u64> {
    let (code, slot, n) = match node {
        Node::ContentsDir(slot, n) => (0, *slot, *n),
        Node::ContentsEntry(slot, e, kind) => (1 + KINDS.iter().position(|k| k == kind)? as u64, *slot, *e),
        _ => return None,
    };
    debug_assert!(slot < SLOT_LIMIT);
    Some(CONTENTS_BIT | (code << CODE_SHIFT) | (u64::from(slot) << SLOT_SHIFT) | u64::from(n))
}

/// The contents node an inode number stands for (`None` if it is not one).
pub(crate) fn unpack_ino(ino: u64) -> Option<Node> {
    if ino >> (CODE_SHIFT + 3) != CONTENTS_BIT >> (CODE_SHIFT + 3) {
        return None;
    }
    let code = (ino >> CODE_SHIFT) & 7;
    let slot = ((ino >> SLOT_SHIFT) & u64::from(SLOT_LIMIT - 1)) as u32;
    let n = ino as u32;
    Some(match code {
        0 => Node::ContentsDir(slot, n),
        c => Node::ContentsEntry(slot, n, KINDS[c as usize - 1]),
    })
}

/// Slots: the (repository, tree) pairs contents nodes name by number. A slot
/// is never reused (the kernel may hold inode numbers made from it for the
/// life of the mount); there is one per tree or layer ever opened, so the
/// table stays small.
#[derive(Default)]
struct Slots {
    keys: Vec<(Arc<str>, TreeKey)>,
    by_key: HashMap<TreeKey, Vec<(Arc<str>, u32)>>,
}

impl Slots {
    fn slot(&mut self, repo: &str, key: TreeKey) -> FsResult<u32> {
        let repos = self.by_key.entry(key).or_default();
        if let Some((_, s)) = repos.iter().find(|(r, _)| &**r == repo) {
            return Ok(*s);
        }
        let s = u32::try_from(self.keys.len())
            .ok()
            .filter(|&s| s < SLOT_LIMIT)
            .ok_or_else(|| eio("too many image trees opened in this mount"))?;
        let repo: Arc<str> = repo.into();
        repos.push((repo.clone(), s));
        self.keys.push((repo, key));
        Ok(s)
    }
}

/// A tree as this mount keeps it: the tree and the slots of its layers (for
/// the `ContentsEntry` nodes of its entries).
pub(crate) struct Tree {
    fs: Rootfs,
    layer_slots: Vec<u32>,
}

/// The contents state of a mount: the index store and the trees built so far.
pub struct ContentsState {
    store: Option<Arc<IndexStore>>,
    slots: Mutex<Slots>,
    trees: Mutex<lru::LruCache<u32, Arc<Tree>>>,
    /// Indexes of layers by digest, for `ContentsEntry` nodes (alive while a kept tree holds them).
    layers: Mutex<HashMap<Digest, Weak<LayerIndex>>>,
}

impl ContentsState {
    fn slot(&self, repo: &str, key: TreeKey) -> FsResult<u32> {
        self.slots.lock().unwrap().slot(repo, key)
    }

    /// The (repository, tree) of `slot`.
    fn key(&self, slot: u32) -> FsResult<(Arc<str>, TreeKey)> {
        self.slots
            .lock()
            .unwrap()
            .keys
            .get(slot as usize)
            .cloned()
            .ok_or_else(|| FsError::new(Cause::Stale, format!("no image contents tree #{slot} in this mount")))
    }
}

/// Layer indexes count in `--cache-size` with the blobs.
impl CacheTenant for IndexStore {
    fn bytes(&self) -> u64 {
        self.disk_usage()
    }
    fn evict_one(&self) -> Option<u64> {
        IndexStore::evict_one(self)
    }
}

impl ContentsState {
    pub fn new(cache_dir: &Path, blobs: &BlobStore) -> Self {
        let store = match IndexStore::new(crate::store::dir::contents(cache_dir), limits()) {
            Ok(s) => {
                let s = Arc::new(s);
                blobs.set_tenant(s.clone());
                Some(s)
            }
            Err(e) => {
                tracing::warn!(
                    "image contents unavailable: cannot create {}/contents: {e}",
                    cache_dir.display()
                );
                None
            }
        };
        ContentsState {
            store,
            slots: Mutex::default(),
            trees: Mutex::new(lru::LruCache::new(std::num::NonZeroUsize::new(KEPT_TREES).unwrap())),
            layers: Mutex::default(),
        }
    }
}

/// Entries listed per layer can be capped lower than the default (1,000,000)
/// with `REGFS_CONTENTS_MAX_ENTRIES`, undocumented in `--help`: the tests prove
/// the tar-bomb cap through a real mount with a layer of a few hundred
/// thousand entries instead of over a million.
const MAX_ENTRIES_ENV: &str = "REGFS_CONTENTS_MAX_ENTRIES";

fn limits() -> Limits {
    let mut limits = Limits::default();
    if let Some(v) = std::env::var_os(MAX_ENTRIES_ENV) {
        match v.to_str().and_then(|v| v.parse::<usize>().ok()).filter(|&n| n > 0) {
            Some(n) => {
                tracing::info!("{MAX_ENTRIES_ENV}={n}: at most {n} entries listed per layer");
                limits.max_entries = n;
            }
            None => tracing::warn!("{MAX_ENTRIES_ENV}={v:?} is not a positive number: ignored"),
        }
    }
    limits
}

fn eio(msg: impl Into<String>) -> FsError {
    FsError::new(Cause::Io, msg)
}

/// Blocking reads of a blob through the blob cache, from a blocking thread.
struct BlobReader {
    rt: tokio::runtime::Handle,
    file: Arc<BlobFile>,
    state: Mutex<ReadState>,
    size: u64,
    pos: u64,
}

impl BlobReader {
    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let data = self
            .rt
            .block_on(self.file.read(offset, len, &self.state))
            .map_err(|e| io::Error::other(e.message))?;
        if data.len() as u64 != len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short blob read"));
        }
        Ok(data)
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.size - self.pos).min(1 << 20);
        if n == 0 {
            return Ok(0);
        }
        let data = self.read_range(self.pos, n)?;
        buf[..data.len()].copy_from_slice(&data);
        self.pos += n;
        Ok(data.len())
    }
}

/// Ranged reads (spans, eStargz footer, TOC and chunks) are checked by the
/// contents code against their own digests, so they do not wait for the
/// whole blob's verdict at its end, and ask for exactly what they need (no
/// readahead).
impl SpanSource for BlobReader {
    fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let data = self
            .rt
            .block_on(self.file.read_self_checked(offset, len))
            .map_err(|e| io::Error::other(e.message))?;
        if data.len() as u64 != len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short blob read"));
        }
        Ok(data)
    }

    /// A span that failed its digest leaves the partial cache file, so the
    /// retry (and any later read) fetches it from the registry again.
    fn discard(&self, offset: u64, len: u64) {
        self.file.forget_range(offset, offset.saturating_add(len));
    }
}

async fn blob_reader(blobs: &Arc<BlobStore>, repo: &str, digest: Digest, size: u64) -> FsResult<BlobReader> {
    let file = blobs.open(repo, digest, size).await?;
    Ok(BlobReader {
        rt: tokio::runtime::Handle::current(),
        file,
        state: Mutex::new(ReadState::default()),
        size,
        pos: 0,
    })
}

/// An open file inside a tree.
pub(crate) struct ContentsFile {
    /// Named in the error of a failed read.
    repo: Arc<str>,
    index: Arc<LayerIndex>,
    entry: u32,
    source: BlobReader,
}

/// This machine's platform, as index children name it (`linux-amd64`).
fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    ("linux", arch)
}

impl Core {
    fn store(&self) -> FsResult<Arc<IndexStore>> {
        self.view
            .contents
            .store
            .clone()
            .ok_or_else(|| eio("image contents are unavailable (see the log)"))
    }

    /// The tree of `slot`, built (indexes included) on first need.
    pub(crate) async fn tree(&self, slot: u32) -> FsResult<Arc<Tree>> {
        if let Some(t) = self.view.contents.trees.lock().unwrap().get(&slot) {
            return Ok(t.clone());
        }
        let (repo, key) = self.view.contents.key(slot)?;
        let repo = &*repo;
        let store = self.store()?;
        let layers: Vec<LayerRef> = match key {
            TreeKey::Image(d) => {
                let m = self.view.manifest(repo, d).await?;
                if m.parsed.kind != ManifestKind::Image {
                    return Err(FsError::new(Cause::NotFound, format!("{d} is not an image manifest")));
                }
                m.parsed
                    .layers
                    .iter()
                    .map(|l| LayerRef {
                        digest: l.digest.clone(),
                        media_type: l.media_type.clone(),
                        size: l.size,
                        toc_digest: oci::annotation(l, contents::estargz::TOC_DIGEST_ANNOTATION).map(str::to_string),
                    })
                    .collect()
            }
            TreeKey::Layer(d) => {
                let size = self.view.blob_size(repo, d).await?;
                let media_type = self.view.blob_media_type(&d).unwrap_or_default();
                // The layer is named by digest only: an eStargz TOC digest is
                // known if a manifest read so far lists this layer with it.
                // Without one the layer gets the verified pass (a footer and
                // TOC nothing ties to the layer digest are not trusted).
                vec![LayerRef {
                    digest: d.to_string(),
                    media_type,
                    size,
                    toc_digest: self.view.blob_estargz_toc(&d),
                }]
            }
        };
        // Built on a blocking thread: blobs are read (and indexes loaded or built)
        // there, so no runtime worker waits on the network or on another build.
        let (blobs, repo_name, rt) = (
            self.view.blobs.clone(),
            repo.to_string(),
            tokio::runtime::Handle::current(),
        );
        let tree = tokio::task::spawn_blocking(move || {
            let open = |l: &LayerRef| -> io::Result<BlobReader> {
                let d: Digest = l.digest.parse().map_err(|_| io::Error::other("not a sha256 digest"))?;
                rt.block_on(blob_reader(&blobs, &repo_name, d, l.size))
                    .map_err(|e| io::Error::other(e.message))
            };
            let indexes = store.layers(&layers, open);
            match key {
                TreeKey::Image(_) => Rootfs::merged(indexes),
                TreeKey::Layer(_) => Rootfs::layer(indexes.into_iter().next().expect("one layer")),
            }
        })
        .await
        .map_err(|e| eio(format!("building the tree failed: {e}")))?;
        // New index files count in the cache limit.
        self.view.blobs.fit();
        if !tree.problems().is_empty() {
            tracing::warn!(repo, ?key, "contents: {}", tree.problems().summary());
        }
        let mut layer_slots = Vec::with_capacity(tree.layer_count());
        {
            let mut layers = self.view.contents.layers.lock().unwrap();
            layers.retain(|_, w| w.strong_count() > 0);
            for i in 0..tree.layer_count() {
                let index = tree.layer_index(i).expect("i < layer_count");
                let d: Digest = index
                    .digest
                    .parse()
                    .map_err(|_| eio(format!("layer digest {} is not sha256", index.digest)))?;
                layers.insert(d, Arc::downgrade(&index));
                layer_slots.push(self.view.contents.slot(repo, TreeKey::Layer(d))?);
            }
        }
        let tree = Arc::new(Tree { fs: tree, layer_slots });
        self.view.contents.trees.lock().unwrap().put(slot, tree.clone());
        Ok(tree)
    }

    /// The node for `n` of `tree`: a directory stays in the tree, anything
    /// else is named by its layer entry.
    fn contents_node(slot: u32, tree: &Tree, n: contents::NodeId) -> Option<Node> {
        if tree.fs.is_dir(n) {
            return Some(Node::ContentsDir(slot, n.index()));
        }
        let (layer, entry) = tree.fs.entry_ref(n)?;
        Some(Node::ContentsEntry(
            tree.layer_slots[layer],
            entry,
            tree.fs.metadata(n).kind,
        ))
    }

    /// The tree of a `ContentsDir` and its node `n`.
    async fn tree_node(&self, slot: u32, n: u32) -> FsResult<(Arc<Tree>, contents::NodeId)> {
        let tree = self.tree(slot).await?;
        let n = tree
            .fs
            .node(n)
            .ok_or_else(|| FsError::new(Cause::Stale, "tree changed; look it up again"))?;
        Ok((tree, n))
    }

    /// Where a node is, below the mount point, for log lines and messages:
    /// a contents directory by its repository, image or layer and path in the
    /// tree (`/app/_manifests/sha256:…/rootfs/etc`), a contents entry by the
    /// layer it comes from (`/app/_layers/sha256:…/etc/os-release`: the same
    /// entry is one node in every image sharing the layer, and that path
    /// reaches it). Nothing is loaded for it: a tree or layer no longer kept
    /// is named by its number in it.
    pub(crate) fn log_path(&self, node: &Node) -> String {
        let (slot, inner) = match node {
            Node::ContentsDir(slot, n) => (*slot, *n),
            Node::ContentsEntry(slot, e, _) => (*slot, *e),
            n => return n.path(),
        };
        let Ok((repo, key)) = self.view.contents.key(slot) else {
            return node.path();
        };
        let (top, inside) = match key {
            TreeKey::Image(d) => (Node::Rootfs(repo.to_string(), d).path(), None),
            TreeKey::Layer(d) => (Node::LayerTree(repo.to_string(), d).path(), Some(d)),
        };
        let rel = match node {
            Node::ContentsDir(..) => {
                let tree = self.view.contents.trees.lock().unwrap().peek(&slot).cloned();
                tree.and_then(|t| Some(t.fs.path(t.fs.node(inner)?)))
            }
            _ => inside.and_then(|d| {
                let index = self
                    .view
                    .contents
                    .layers
                    .lock()
                    .unwrap()
                    .get(&d)
                    .and_then(Weak::upgrade)?;
                Some(index.entries.get(inner as usize)?.path.to_string())
            }),
        };
        match rel {
            Some(rel) if rel.is_empty() => top,
            Some(rel) => format!("{top}/{rel}"),
            None if matches!(node, Node::ContentsDir(..)) => format!("{top}/(directory #{inner})"),
            None => format!("{top}/(entry #{inner})"),
        }
    }

    /// `lookup` inside a tree directory.
    pub(crate) async fn contents_lookup(&self, parent: &Node, name: &str) -> FsResult<Node> {
        let Node::ContentsDir(slot, dir) = parent else {
            return Err(FsError::new(Cause::NotADirectory, "not a contents directory"));
        };
        let (tree, dir) = self.tree_node(*slot, *dir).await?;
        let child = tree.fs.lookup(dir, name).ok_or_else(|| {
            FsError::new(
                Cause::NotFound,
                format!("{}/{name} does not exist", self.log_path(parent)),
            )
        })?;
        Self::contents_node(*slot, &tree, child).ok_or_else(|| eio("entry without identity"))
    }

    /// Entries of a tree directory.
    pub(crate) async fn contents_list(&self, node: &Node) -> FsResult<Vec<(String, Node)>> {
        let Node::ContentsDir(slot, dir) = node else {
            return Ok(Vec::new()); // `_layers/` itself lists nothing
        };
        let (tree, dir) = self.tree_node(*slot, *dir).await?;
        Ok(tree
            .fs
            .list(dir)
            .filter_map(|(name, n)| Some((name.to_string(), Self::contents_node(*slot, &tree, n)?)))
            .collect())
    }

    /// The repository and layer of a `ContentsEntry`'s slot.
    fn entry_layer(&self, slot: u32) -> FsResult<(Arc<str>, Digest)> {
        match self.view.contents.key(slot)? {
            (repo, TreeKey::Layer(d)) => Ok((repo, d)),
            (_, TreeKey::Image(_)) => Err(FsError::new(Cause::Stale, "not a layer slot")),
        }
    }

    /// The layer index behind a `ContentsEntry` (from a kept tree, or loaded from the store).
    async fn layer_index(&self, slot: u32) -> FsResult<Arc<LayerIndex>> {
        let (_, layer) = self.entry_layer(slot)?;
        let layer = &layer;
        if let Some(i) = self
            .view
            .contents
            .layers
            .lock()
            .unwrap()
            .get(layer)
            .and_then(Weak::upgrade)
        {
            return Ok(i);
        }
        let (store, digest) = (self.store()?, layer.to_string());
        let index = tokio::task::spawn_blocking(move || store.cached(&digest))
            .await
            .map_err(|e| eio(format!("loading a layer index failed: {e}")))?
            .ok_or_else(|| FsError::new(Cause::Stale, "layer index not loaded; look the entry up again"))?;
        if let Ok(d) = index.digest.parse::<Digest>() {
            self.view
                .contents
                .layers
                .lock()
                .unwrap()
                .insert(d, Arc::downgrade(&index));
        }
        Ok(index)
    }

    /// Extended attributes of a contents node (PAX `SCHILY.xattr.*` of its
    /// entry); `None` when `ino` is not a contents node.
    pub(crate) async fn contents_xattrs(&self, ino: u64) -> Option<FsResult<Vec<(String, Vec<u8>)>>> {
        let node = self.inodes.get(ino).filter(Node::is_contents)?;
        let copy = |x: &[(Box<str>, Box<[u8]>)]| x.iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect();
        Some(match &node {
            Node::ContentsEntry(slot, entry, _) => match self.layer_index(*slot).await {
                Ok(index) => Ok(index
                    .entries
                    .get(*entry as usize)
                    .map(|e| copy(&e.xattrs))
                    .unwrap_or_default()),
                Err(e) => Err(e),
            },
            Node::ContentsDir(slot, n) => match self.tree_node(*slot, *n).await {
                Ok((tree, n)) => Ok(copy(tree.fs.metadata(n).xattrs)),
                Err(e) => Err(e),
            },
            _ => Ok(Vec::new()),
        })
    }

    /// Attributes of contents nodes (`None` for any other node).
    pub(crate) async fn contents_attr(&self, node: &Node) -> FsResult<Option<Attr>> {
        let (m, ino) = match node {
            Node::Rootfs(..) => {
                // Reached only for an index (an image's rootfs resolves to its tree's root).
                let target = self.contents_link(node).await?;
                return Ok(Some(self.synthetic_attr(
                    node,
                    FileKind::Symlink,
                    0o777,
                    target.len() as u64,
                )));
            }
            Node::LayerTreesDir(r) => {
                if !self.view.repo_exists(r).await? {
                    return Err(FsError::new(Cause::NotFound, format!("{} does not exist", node.path())));
                }
                return Ok(Some(self.synthetic_attr(node, FileKind::Directory, 0o555, 0)));
            }
            Node::ContentsDir(slot, n) => {
                let (tree, n) = self.tree_node(*slot, *n).await?;
                (owned(tree.fs.metadata(n)), self.inodes.ino(node))
            }
            Node::ContentsEntry(slot, entry, _) => {
                let index = self.layer_index(*slot).await?;
                let e = index
                    .entries
                    .get(*entry as usize)
                    .ok_or_else(|| eio("no such layer entry"))?;
                let mut m = entry_metadata(e);
                m.nlink = index.nlink(*entry);
                (m, self.inodes.ino(node))
            }
            _ => return Ok(None),
        };
        let kind = match m.kind {
            contents::Kind::Dir => FileKind::Directory,
            contents::Kind::Symlink => FileKind::Symlink,
            contents::Kind::Char => FileKind::CharDevice,
            contents::Kind::Block => FileKind::BlockDevice,
            contents::Kind::Fifo => FileKind::NamedPipe,
            contents::Kind::File | contents::Kind::HardLink => FileKind::RegularFile,
        };
        let mtime = if m.mtime >= 0 {
            UNIX_EPOCH + Duration::from_secs(m.mtime as u64)
        } else {
            UNIX_EPOCH - Duration::from_secs(m.mtime.unsigned_abs())
        };
        Ok(Some(Attr {
            ino,
            size: m.size,
            blocks: m.size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm: (m.mode & 0o7777) as u16,
            nlink: m.nlink,
            uid: m.uid,
            gid: m.gid,
            rdev: libc::makedev(m.dev_major, m.dev_minor) as u32,
            blksize: 1 << 16,
            flags: 0,
        }))
    }

    fn synthetic_attr(&self, node: &Node, kind: FileKind, perm: u16, size: u64) -> Attr {
        Attr {
            ino: self.inodes.ino(node),
            size,
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink: if kind == FileKind::Directory { 2 } else { 1 },
            uid: self.opts.uid,
            gid: self.opts.gid,
            rdev: 0,
            blksize: 1 << 16,
            flags: 0,
        }
    }

    /// `readlink` of a symlink inside a tree, or of an index's `rootfs`.
    pub(crate) async fn contents_link(&self, node: &Node) -> FsResult<String> {
        match node {
            Node::ContentsEntry(slot, entry, _) => {
                let index = self.layer_index(*slot).await?;
                index
                    .entries
                    .get(*entry as usize)
                    .and_then(|e| e.link.as_deref())
                    .map(str::to_string)
                    .ok_or_else(|| FsError::new(Cause::Invalid, "not a symlink"))
            }
            Node::Rootfs(r, d) => {
                let m = self.view.manifest(r, *d).await?;
                let (os, arch) = host_platform();
                let child = m
                    .parsed
                    .manifests
                    .iter()
                    .find(|c| {
                        c.platform
                            .as_ref()
                            .is_some_and(|p| p.os == os && p.architecture == arch)
                    })
                    .and_then(|c| c.digest());
                let name = child.and_then(|c| {
                    oci::child_names(&m.parsed)
                        .into_iter()
                        .find(|(_, t)| *t == ChildTarget::Manifest(c))
                        .map(|(n, _)| n)
                });
                name.map(|n| format!("{}/{n}/{}", node::CHILDREN, node::ROOTFS))
                    .ok_or_else(|| FsError::new(Cause::NotFound, format!("{}: no child for {os}/{arch}", node.path())))
            }
            n => Err(FsError::new(
                Cause::Invalid,
                format!("{} is not a symlink", self.log_path(n)),
            )),
        }
    }

    /// An image's `rootfs` is its tree's root; an index's stays a link.
    /// `_layers/sha256:<hex>` is its layer tree's root.
    pub(crate) async fn contents_resolve(&self, node: Node) -> FsResult<Node> {
        match node {
            Node::LayerTree(r, d) => Ok(Node::ContentsDir(self.view.contents.slot(&r, TreeKey::Layer(d))?, 0)),
            Node::Rootfs(r, d) => {
                let m = self.view.manifest(&r, d).await?;
                match m.parsed.kind {
                    ManifestKind::Image => Ok(Node::ContentsDir(self.view.contents.slot(&r, TreeKey::Image(d))?, 0)),
                    ManifestKind::Index => Ok(Node::Rootfs(r, d)),
                    _ => Err(FsError::new(
                        Cause::NotFound,
                        format!("{} has no root filesystem", Node::Rootfs(r, d).path()),
                    )),
                }
            }
            n => Ok(n),
        }
    }

    /// Opens a regular file of a tree.
    pub(crate) async fn contents_open(&self, node: &Node) -> FsResult<ContentsFile> {
        let Node::ContentsEntry(slot, entry, kind) = node else {
            return Err(FsError::new(Cause::Invalid, "not a contents file"));
        };
        if *kind != contents::Kind::File {
            return Err(FsError::new(
                Cause::Invalid,
                format!("{} cannot be opened", self.log_path(node)),
            ));
        }
        let (repo, layer) = self.entry_layer(*slot)?;
        let index = self.layer_index(*slot).await?;
        // A hard link whose target the layer lacks shows as an empty file: with
        // size 0 the kernel never asks for a read, so the open says EIO.
        if index
            .entries
            .get(*entry as usize)
            .is_none_or(|e| e.kind == contents::Kind::HardLink)
        {
            return Err(eio(format!("{}: hard link to a missing target", self.log_path(node))));
        }
        let source = blob_reader(&self.view.blobs, &repo, layer, index.blob_size).await?;
        Ok(ContentsFile {
            repo,
            index,
            entry: *entry,
            source,
        })
    }
}

impl ContentsFile {
    /// A read answered from the layer's decoded spans kept in memory, on the
    /// calling thread; `None` when it must go through [`read`](Self::read).
    pub(crate) fn read_kept(&self, offset: u64, len: u64) -> Option<Vec<u8>> {
        self.index.read_kept(self.entry as usize, offset, len)
    }

    /// Reads on a blocking thread (decoding is CPU work; the source may wait on the network).
    pub(crate) async fn read(self: Arc<Self>, offset: u64, len: u64) -> FsResult<Vec<u8>> {
        tokio::task::spawn_blocking(move || {
            // Logged once, by the caller's report, with the entry's path and
            // this message: the repository, the layer and (for a damaged
            // span) the span and both digests.
            self.index
                .read(self.entry as usize, offset, len, &self.source)
                .map_err(|e| {
                    eio(format!(
                        "read of layer contents failed: repository {}, layer {}: {e}",
                        self.repo, self.index.digest
                    ))
                })
        })
        .await
        .map_err(|e| eio(format!("read task failed: {e}")))?
    }
}

/// The directory-entry type of devices and fifos inside image contents
/// (`Node::kind` has only directory, file and symlink).
pub(crate) fn special_file_type(node: &Node) -> Option<FileKind> {
    match node {
        Node::ContentsEntry(.., contents::Kind::Char) => Some(FileKind::CharDevice),
        Node::ContentsEntry(.., contents::Kind::Block) => Some(FileKind::BlockDevice),
        Node::ContentsEntry(.., contents::Kind::Fifo) => Some(FileKind::NamedPipe),
        _ => None,
    }
}

/// Metadata with owned strings dropped: what an attribute needs.
struct Meta {
    kind: contents::Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
    dev_major: u32,
    dev_minor: u32,
    nlink: u32,
}

fn owned(m: contents::Metadata<'_>) -> Meta {
    Meta {
        kind: m.kind,
        mode: m.mode,
        uid: m.uid,
        gid: m.gid,
        size: m.size,
        mtime: m.mtime,
        dev_major: m.dev_major,
        dev_minor: m.dev_minor,
        nlink: m.nlink,
    }
}

/// Attributes of a layer entry seen on its own (nlink set by the caller).
fn entry_metadata(e: &contents::Entry) -> Meta {
    let kind = if e.kind == contents::Kind::HardLink {
        contents::Kind::File
    } else {
        e.kind
    };
    Meta {
        kind,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        size: match e.kind {
            contents::Kind::File => e.size,
            contents::Kind::Symlink => e.link.as_deref().map_or(0, |l| l.len() as u64),
            _ => 0,
        },
        mtime: e.mtime,
        dev_major: e.dev_major,
        dev_minor: e.dev_minor,
        nlink: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Contents inode numbers go to and from their node, and never meet the
    /// table's numbers (sequential from 2, or digest-derived with bit 63).
    #[test]
    fn contents_inode_numbers_round_trip() {
        let nodes = [
            Node::ContentsDir(0, 0),
            Node::ContentsDir(SLOT_LIMIT - 1, u32::MAX),
            Node::ContentsEntry(7, 123_456, contents::Kind::File),
            Node::ContentsEntry(SLOT_LIMIT - 1, u32::MAX, contents::Kind::Fifo),
        ];
        let mut seen = std::collections::HashSet::new();
        for n in nodes
            .iter()
            .cloned()
            .chain(KINDS.iter().map(|&k| Node::ContentsEntry(3, 9, k)))
        {
            let ino = packed_ino(&n).unwrap();
            assert!(seen.insert(ino), "{n:?} shares inode {ino:#x}");
            assert_eq!(ino & (1 << 63), 0);
            assert_ne!(ino & CONTENTS_BIT, 0);
            assert_eq!(unpack_ino(ino), Some(n));
        }
        for ino in [1, 2, 1 << 40, CONTENTS_BIT - 1, 1 << 63, u64::MAX] {
            assert_eq!(unpack_ino(ino), None, "{ino:#x}");
        }
        assert_eq!(packed_ino(&Node::Root), None);
    }

    #[test]
    fn a_slot_is_one_per_repository_and_tree() {
        let mut s = Slots::default();
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let x = s.slot("r", TreeKey::Layer(a)).unwrap();
        assert_eq!(s.slot("r", TreeKey::Layer(a)).unwrap(), x);
        let others = [
            s.slot("q", TreeKey::Layer(a)).unwrap(),
            s.slot("r", TreeKey::Image(a)).unwrap(),
            s.slot("r", TreeKey::Layer(b)).unwrap(),
        ];
        assert!(!others.contains(&x));
        assert_eq!(&*s.keys[x as usize].0, "r");
    }

    /// Entries are the bulk of a big layer's memory (one per tar entry).
    #[test]
    fn a_layer_entry_stays_small() {
        assert!(
            std::mem::size_of::<contents::Entry>() <= 120,
            "{}",
            std::mem::size_of::<contents::Entry>()
        );
    }
}
