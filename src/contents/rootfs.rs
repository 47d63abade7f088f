//! A directory tree over layer indexes: one layer as its tar holds it
//! ([`Rootfs::layer`]), or an image's layers applied in order with the OCI
//! whiteout rules ([`Rootfs::merged`], image-spec `layer.md`):
//!
//! - `.wh.<name>` hides `<name>` of the layers below; `.wh..wh..opq` hides every
//!   lower entry of its directory. A layer's whiteouts are applied before any
//!   of its entries, wherever they appear in the tar, and never hide entries of
//!   their own layer.
//! - A later entry for the same path replaces the earlier one (last wins, as
//!   `tar x`), except that a directory over a directory keeps the children.
//! - A hard link shares its target's identity (same inode, same data); a link
//!   to a missing target stays visible as an empty file whose reads fail.
//! - A path through a symlinked directory (`lib -> usr/lib`, then `lib/x`) is
//!   followed inside the tree, as `tar x` follows it on disk.
//!
//! Nodes are kept in an arena; names live only in their parent's map.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::Arc;

use super::entry::{Data, Entry, Kind};
use super::index::LayerIndex;
use super::tarscan::Problems;
use super::SpanSource;

/// A node of a [`Rootfs`]. Valid only for the tree that gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(u32);

impl NodeId {
    /// The node's number, to keep in a caller's own handle ([`Rootfs::node`] turns it back).
    pub fn index(self) -> u32 {
        self.0
    }
}

/// What a node shows: an entry of one of the layers, or a directory the tar
/// implies (a path's parent that has no entry of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    Entry { layer: u16, entry: u32 },
    Implicit,
}

#[derive(Debug)]
struct Node {
    parent: u32,
    target: Target,
    /// `Some` for directories.
    children: Option<BTreeMap<Box<str>, u32>>,
}

/// The stable identity of a node's entry: the same layer entry has the same
/// identity in every tree (and so should get the same inode number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity<'a> {
    pub layer_digest: &'a str,
    pub entry: u32,
}

/// What `stat` and `readlink` need of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata<'a> {
    /// Never [`Kind::HardLink`]: links are resolved to their target.
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Bytes of a file, length of a symlink's target, 0 otherwise.
    pub size: u64,
    pub mtime: i64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub nlink: u32,
    pub link: Option<&'a str>,
    pub xattrs: &'a [(Box<str>, Box<[u8]>)],
}

/// Symlinks followed while resolving one path, at most (as Linux's MAXSYMLINKS).
const MAX_SYMLINKS: u32 = 40;

/// A tree over one or more layers.
pub struct Rootfs {
    layers: Vec<Arc<LayerIndex>>,
    nodes: Vec<Node>,
    /// Names per target, for targets with more than one (hard links). While
    /// building: the targets hard links resolved to.
    nlinks: HashMap<Target, u32>,
    problems: Problems,
}

const ROOT: u32 = 0;

impl Rootfs {
    /// One layer's own tree: whiteout entries are shown as the files they are.
    pub fn layer(layer: Arc<LayerIndex>) -> Rootfs {
        Self::build(vec![layer], false)
    }

    /// An image's root filesystem: `layers` bottom first, whiteouts applied.
    pub fn merged(layers: Vec<Arc<LayerIndex>>) -> Rootfs {
        Self::build(layers, true)
    }

    fn build(layers: Vec<Arc<LayerIndex>>, whiteouts: bool) -> Rootfs {
        let mut fs = Rootfs {
            layers: layers.clone(),
            nodes: vec![Node {
                parent: ROOT,
                target: Target::Implicit,
                children: Some(BTreeMap::new()),
            }],
            nlinks: HashMap::new(),
            problems: Problems::default(),
        };
        for (l, layer) in layers.iter().enumerate() {
            if whiteouts {
                fs.apply_whiteouts(layer);
            }
            for (i, e) in layer.entries.iter().enumerate() {
                if whiteouts && e.name().starts_with(".wh.") {
                    continue;
                }
                fs.add(l as u16, i as u32, e, layer);
            }
        }
        fs.count_links();
        fs.nodes.shrink_to_fit();
        fs
    }

    fn apply_whiteouts(&mut self, layer: &LayerIndex) {
        for e in &layer.entries {
            let Some(hidden) = e.name().strip_prefix(".wh.") else {
                continue;
            };
            let Some(dir) = self.resolve(e.parent(), true) else {
                continue;
            };
            let Some(children) = self.nodes[dir as usize].children.as_mut() else {
                continue;
            };
            if hidden == ".wh..opq" {
                children.clear();
            } else if !hidden.starts_with(".wh.") {
                children.remove(hidden);
            }
        }
    }

    fn add(&mut self, layer: u16, entry: u32, e: &Entry, index: &LayerIndex) {
        let mut target = Target::Entry { layer, entry };
        if e.path.is_empty() {
            if e.kind == Kind::Dir {
                self.nodes[ROOT as usize].target = target;
            }
            return;
        }
        if e.kind == Kind::HardLink {
            let to = e.link.as_deref().unwrap_or("");
            match self.resolve(to, false).map(|n| &self.nodes[n as usize]) {
                Some(n) if n.children.is_none() && n.target != Target::Implicit => {
                    target = n.target;
                    // Marks the target as linked (counted in `count_links`).
                    self.nlinks.insert(target, 0);
                }
                _ => self.problems.push(format!(
                    "{}: hard link {} -> {to}: target missing; reads fail",
                    short(&index.digest),
                    e.path
                )),
            }
        }
        let parent = self.ensure_dir(e.parent());
        let name = e.name();
        let existing = self.nodes[parent as usize]
            .children
            .as_ref()
            .and_then(|c| c.get(name))
            .copied();
        if let Some(n) = existing {
            if e.kind == Kind::Dir && self.nodes[n as usize].children.is_some() {
                self.nodes[n as usize].target = target;
                return;
            }
        }
        let id = self.nodes.len() as u32;
        let children = (e.kind == Kind::Dir).then(BTreeMap::new);
        self.nodes.push(Node {
            parent,
            target,
            children,
        });
        if let Some(c) = self.nodes[parent as usize].children.as_mut() {
            c.insert(name.into(), id);
        }
    }

    /// The node at `path`, following symlinks in the parent components (and in
    /// the last one if `follow_last`).
    fn resolve(&self, path: &str, follow_last: bool) -> Option<u32> {
        let mut budget = MAX_SYMLINKS;
        self.walk(ROOT, path, follow_last, &mut budget)
    }

    fn walk(&self, start: u32, path: &str, follow_last: bool, budget: &mut u32) -> Option<u32> {
        let mut cur = if path.starts_with('/') { ROOT } else { start };
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
        for (k, part) in parts.iter().enumerate() {
            if *part == ".." {
                cur = self.nodes[cur as usize].parent;
                continue;
            }
            let next = *self.nodes[cur as usize].children.as_ref()?.get(*part)?;
            let last = k + 1 == parts.len();
            cur = match self.symlink_target(next) {
                Some(to) if !last || follow_last => {
                    if *budget == 0 {
                        return None;
                    }
                    *budget -= 1;
                    self.walk(cur, to, true, budget)?
                }
                _ => next,
            };
        }
        Some(cur)
    }

    fn entry(&self, t: Target) -> Option<&Entry> {
        match t {
            Target::Entry { layer, entry } => self.layers_entry(layer, entry),
            Target::Implicit => None,
        }
    }

    fn layers_entry(&self, layer: u16, entry: u32) -> Option<&Entry> {
        self.layers.get(layer as usize)?.entries.get(entry as usize)
    }

    fn symlink_target(&self, n: u32) -> Option<&str> {
        let e = self.entry(self.nodes[n as usize].target)?;
        (e.kind == Kind::Symlink).then_some(e.link.as_deref()).flatten()
    }

    /// The directory at `path`, created (implicitly) where missing; a non-directory
    /// in the way is replaced by a directory, as `tar x` would have to.
    fn ensure_dir(&mut self, path: &str) -> u32 {
        let mut cur = ROOT;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            let existing = self.nodes[cur as usize]
                .children
                .as_ref()
                .and_then(|c| c.get(part))
                .copied();
            if let Some(n) = existing {
                if self.nodes[n as usize].children.is_some() {
                    cur = n;
                    continue;
                }
                if self.symlink_target(n).is_some() {
                    let mut budget = MAX_SYMLINKS;
                    if let Some(d) = self.walk(cur, part, true, &mut budget) {
                        if self.nodes[d as usize].children.is_some() {
                            cur = d;
                            continue;
                        }
                    }
                }
            }
            let id = self.nodes.len() as u32;
            self.nodes.push(Node {
                parent: cur,
                target: Target::Implicit,
                children: Some(BTreeMap::new()),
            });
            self.nodes[cur as usize]
                .children
                .as_mut()
                .unwrap()
                .insert(part.into(), id);
            cur = id;
        }
        cur
    }

    fn count_links(&mut self) {
        // Only targets some hard link resolved to can have more than one name:
        // most trees have none, and need no map of every entry.
        if self.nlinks.is_empty() {
            return;
        }
        let linked = std::mem::take(&mut self.nlinks);
        let mut counts: HashMap<Target, u32> = HashMap::new();
        let mut stack = vec![ROOT];
        while let Some(n) = stack.pop() {
            for &c in self.nodes[n as usize].children.iter().flat_map(|m| m.values()) {
                let node = &self.nodes[c as usize];
                if node.children.is_some() {
                    stack.push(c);
                } else if linked.contains_key(&node.target) {
                    *counts.entry(node.target).or_default() += 1;
                }
            }
        }
        counts.retain(|_, n| *n > 1);
        self.nlinks = counts;
    }

    /// The node numbered `index` (as [`NodeId::index`] gave it), if this tree has it.
    /// A tree rebuilt from the same layers numbers its nodes the same way.
    pub fn node(&self, index: u32) -> Option<NodeId> {
        ((index as usize) < self.nodes.len()).then_some(NodeId(index))
    }

    /// Number of layers under the tree.
    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// The index of layer `i` (bottom first).
    pub fn layer_index(&self, i: usize) -> Option<Arc<LayerIndex>> {
        self.layers.get(i).cloned()
    }

    /// The root directory.
    pub fn root(&self) -> NodeId {
        NodeId(ROOT)
    }

    /// The parent directory (the root's parent is the root).
    pub fn parent(&self, node: NodeId) -> NodeId {
        NodeId(self.nodes[node.0 as usize].parent)
    }

    /// The `/`-separated path of `node` from the root (empty for the root),
    /// for log lines: names live in their parent's map, so each level is a
    /// scan of its parent's entries.
    pub fn path(&self, node: NodeId) -> String {
        let mut names = Vec::new();
        let mut cur = node.0;
        while cur != ROOT && names.len() <= self.nodes.len() {
            let parent = self.nodes[cur as usize].parent;
            let name = self.nodes[parent as usize]
                .children
                .iter()
                .flat_map(|c| c.iter())
                .find(|(_, &id)| id == cur)
                .map_or("?", |(name, _)| &**name);
            names.push(name);
            cur = parent;
        }
        names.reverse();
        names.join("/")
    }

    /// The entry `name` of directory `dir`.
    pub fn lookup(&self, dir: NodeId, name: &str) -> Option<NodeId> {
        self.nodes[dir.0 as usize]
            .children
            .as_ref()?
            .get(name)
            .map(|&n| NodeId(n))
    }

    /// The node at a `/`-separated path from the root, without following symlinks.
    pub fn lookup_path(&self, path: &str) -> Option<NodeId> {
        let mut cur = self.root();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            cur = self.lookup(cur, part)?;
        }
        Some(cur)
    }

    /// The entries of directory `dir`, sorted by name (empty for a non-directory).
    pub fn list(&self, dir: NodeId) -> impl Iterator<Item = (&str, NodeId)> + '_ {
        self.nodes[dir.0 as usize]
            .children
            .iter()
            .flat_map(|m| m.iter().map(|(k, &v)| (&**k, NodeId(v))))
    }

    pub fn is_dir(&self, node: NodeId) -> bool {
        self.nodes[node.0 as usize].children.is_some()
    }

    /// The layer entry a node shows, `None` for an implied directory.
    pub fn identity(&self, node: NodeId) -> Option<Identity<'_>> {
        match self.nodes[node.0 as usize].target {
            Target::Entry { layer, entry } => Some(Identity {
                layer_digest: &self.layers[layer as usize].digest,
                entry,
            }),
            Target::Implicit => None,
        }
    }

    pub fn metadata(&self, node: NodeId) -> Metadata<'_> {
        let n = &self.nodes[node.0 as usize];
        let nlink = match &n.children {
            Some(c) => {
                2 + c
                    .values()
                    .filter(|&&v| self.nodes[v as usize].children.is_some())
                    .count() as u32
            }
            None => self.nlinks.get(&n.target).copied().unwrap_or(1),
        };
        let Some(e) = self.entry(n.target) else {
            return Metadata {
                kind: Kind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                size: 0,
                mtime: 0,
                dev_major: 0,
                dev_minor: 0,
                nlink,
                link: None,
                xattrs: &[],
            };
        };
        let kind = match e.kind {
            Kind::HardLink => Kind::File, // a link whose target was missing
            k if n.children.is_some() => {
                debug_assert_eq!(k, Kind::Dir);
                Kind::Dir
            }
            k => k,
        };
        let link = if kind == Kind::Symlink { e.link.as_deref() } else { None };
        Metadata {
            kind,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            size: match kind {
                Kind::File if e.kind == Kind::File => e.size,
                Kind::Symlink => link.map_or(0, |l| l.len() as u64),
                _ => 0,
            },
            mtime: e.mtime,
            dev_major: e.dev_major,
            dev_minor: e.dev_minor,
            nlink,
            link,
            xattrs: &e.xattrs,
        }
    }

    /// The layer entry a node shows as (position of its layer in the tree,
    /// bottom first; entry number), `None` for an implied directory.
    pub fn entry_ref(&self, node: NodeId) -> Option<(usize, u32)> {
        match self.nodes[node.0 as usize].target {
            Target::Entry { layer, entry } => Some((layer as usize, entry)),
            Target::Implicit => None,
        }
    }

    /// Digest of the layer whose blob a read of `node` needs.
    pub fn layer_digest(&self, node: NodeId) -> Option<&str> {
        self.identity(node).map(|i| i.layer_digest)
    }

    /// Reads a regular file. `src` must serve the blob [`layer_digest`](Self::layer_digest) names.
    pub fn read(&self, node: NodeId, offset: u64, len: u64, src: &dyn SpanSource) -> io::Result<Vec<u8>> {
        match self.nodes[node.0 as usize].target {
            Target::Entry { layer, entry } => {
                let index = &self.layers[layer as usize];
                if index.entries[entry as usize].kind == Kind::HardLink {
                    return Err(io::Error::other("hard link to a missing target"));
                }
                index.read(entry as usize, offset, len, src)
            }
            Target::Implicit => Err(io::Error::new(io::ErrorKind::InvalidInput, "a directory")),
        }
    }

    /// Problems found while building the tree (broken hard links).
    pub fn problems(&self) -> &Problems {
        &self.problems
    }

    /// Whether reading `node` is known to fail (its data is unavailable).
    pub fn is_broken(&self, node: NodeId) -> bool {
        self.entry(self.nodes[node.0 as usize].target)
            .is_some_and(|e| e.kind == Kind::HardLink || matches!(e.data, Data::Broken))
    }
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}
