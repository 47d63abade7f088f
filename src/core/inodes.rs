//! The inode table. Content-addressed entries get inode numbers derived from
//! their digest (the same blob is one inode everywhere in the mount, so
//! `rsync -H` and `cp -a` keep one copy); every other node gets the next number.
//!
//! Bounded for the life of a mount: the kernel counts every entry it is given
//! (lookup, create, mkdir, symlink, link) and sends `forget` with that count
//! when it drops the inode; a node whose count reaches 0 leaves the table. Nodes
//! the kernel holds no count for (numbered for a directory listing, whose
//! `d_ino` the kernel does not keep) wait in `unpinned`, at most
//! `UNPINNED_MAX`, oldest dropped first: such a node looked up later gets a new
//! number (its `d_ino` in an old listing then differs from `st_ino`; tools that
//! compare inodes use `stat`).
//!
//! Open files do not refer to inode numbers (a file handle holds its bytes,
//! blob file or staging id), and the kernel does not forget an inode with an
//! open file, so nothing here can pull a node from under a reader.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use lru::LruCache;

use super::node::Node;

pub const ROOT: u64 = 1;
/// Digest-derived numbers have the top bit set; sequential ones never reach it.
const DIGEST_BIT: u64 = 1 << 63;
/// Nodes numbered without a kernel reference, kept at most (about 200 bytes
/// each): enough for `ls -i` of a large directory to agree with `stat`, small
/// next to the daemon's other memory.
pub const UNPINNED_MAX: usize = 16_384;

pub struct Inodes {
    inner: RwLock<Table>,
    unpinned_max: usize,
}

/// One inode: the node it means, the kernel's lookup count, and the other
/// nodes numbered the same (a digest seen in several repositories).
struct Slot {
    node: Arc<Node>,
    lookups: u64,
    aliases: Vec<Arc<Node>>,
}

struct Table {
    by_ino: HashMap<u64, Slot>,
    by_node: HashMap<Arc<Node>, u64>,
    next: u64,
    /// Inodes with no kernel lookup count, least recently numbered first.
    unpinned: LruCache<u64, ()>,
}

/// Two bits of kind below the top bit keep a manifest file and a blob with the
/// same digest (possible: a manifest pushed as a blob) apart.
fn digest_ino(kind: u8, digest: &crate::oci::Digest) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest.bytes()[..8]);
    let low = u64::from_be_bytes(b) >> 3;
    DIGEST_BIT | (u64::from(kind & 3) << 61) | low
}

/// The inode number of a blob file (`_blobs/<digest>` in any repository).
pub fn blob_ino(digest: &crate::oci::Digest) -> u64 {
    digest_ino(2, digest)
}

impl Default for Inodes {
    fn default() -> Self {
        Self::new()
    }
}

impl Table {
    /// `node` means `ino` from now on (a new slot, or one more name of it).
    fn attach(&mut self, node: &Node, ino: u64) -> &mut Slot {
        let node = match self.by_node.get_key_value(node) {
            Some((n, &i)) if i == ino => n.clone(),
            Some(_) => Arc::new(node.clone()),
            None => {
                let n = Arc::new(node.clone());
                self.by_node.insert(n.clone(), ino);
                n
            }
        };
        let slot = self.by_ino.entry(ino).or_insert_with(|| Slot {
            node: node.clone(),
            lookups: 0,
            aliases: Vec::new(),
        });
        if slot.node != node && !slot.aliases.contains(&node) {
            slot.aliases.push(node);
        }
        slot
    }

    /// `ino` leaves the table, with every name that still means it.
    fn drop_ino(&mut self, ino: u64) {
        self.unpinned.pop(&ino);
        if let Some(slot) = self.by_ino.remove(&ino) {
            for n in std::iter::once(&slot.node).chain(&slot.aliases) {
                if self.by_node.get(&**n) == Some(&ino) {
                    self.by_node.remove(&**n);
                }
            }
        }
    }
}

impl Inodes {
    pub fn new() -> Self {
        Self::with_unpinned_max(UNPINNED_MAX)
    }

    /// A table keeping at most `max` nodes the kernel holds no count for.
    pub fn with_unpinned_max(max: usize) -> Self {
        let mut t = Table {
            by_ino: HashMap::new(),
            by_node: HashMap::new(),
            next: ROOT + 1,
            unpinned: LruCache::unbounded(),
        };
        t.attach(&Node::Root, ROOT);
        Inodes {
            inner: RwLock::new(t),
            unpinned_max: max.max(1),
        }
    }

    pub fn get(&self, ino: u64) -> Option<Node> {
        if let Some(node) = super::contents::unpack_ino(ino) {
            return Some(node);
        }
        self.inner.read().unwrap().by_ino.get(&ino).map(|s| (*s.node).clone())
    }

    /// Inodes in the table (`inodes` in `.regfs/stats`).
    pub fn len(&self) -> usize {
        self.inner.read().unwrap().by_ino.len()
    }

    pub fn is_empty(&self) -> bool {
        false // the root is always there
    }

    /// A rename: the kernel keeps the inode it knows under the new name, so
    /// that inode must now mean `to` (e.g. `ln -sfn`'s temporary link renamed
    /// over a tag).
    pub fn rename(&self, from: &Node, to: Node) {
        let mut t = self.inner.write().unwrap();
        if let Some(ino) = t.by_node.remove(from) {
            let to = Arc::new(to);
            if let Some(slot) = t.by_ino.get_mut(&ino) {
                if *slot.node == *from {
                    slot.node = to.clone();
                } else {
                    slot.aliases.retain(|n| **n != *from);
                    slot.aliases.push(to.clone());
                }
            }
            // An inode `to` had before keeps its slot (the kernel may still hold
            // it); `drop_ino` leaves `to`'s new number alone.
            t.by_node.insert(to, ino);
        }
    }

    /// The inode number for `node`, registering it on first sight (with no
    /// kernel count: see `looked_up`).
    pub fn ino(&self, node: &Node) -> u64 {
        // Image contents (possibly millions of files) are never stored here.
        if let Some(ino) = super::contents::packed_ino(node) {
            return ino;
        }
        if let Some(&i) = self.inner.read().unwrap().by_node.get(node) {
            return i;
        }
        let mut t = self.inner.write().unwrap();
        if let Some(&i) = t.by_node.get(node) {
            return i;
        }
        let ino = match node.digest_identity() {
            // Any repository holding the digest serves the same bytes.
            Some((kind, d)) => digest_ino(kind, &d),
            None => {
                t.next += 1;
                t.next - 1
            }
        };
        if t.attach(node, ino).lookups == 0 {
            t.unpinned.put(ino, ());
            while t.unpinned.len() > self.unpinned_max {
                if let Some((old, ())) = t.unpinned.pop_lru() {
                    t.drop_ino(old);
                }
            }
        }
        ino
    }

    /// The kernel was given an entry for `node` as `ino` (a reply to lookup,
    /// create, mkdir, symlink or link): one more reference until `forget`. A
    /// node dropped between numbering and this reply comes back under `ino`.
    pub fn looked_up(&self, node: &Node, ino: u64) {
        if super::contents::packed_ino(node).is_some() {
            return; // computed numbers: nothing to count or keep
        }
        let mut t = self.inner.write().unwrap();
        let slot = t.attach(node, ino);
        slot.lookups += 1;
        t.unpinned.pop(&ino);
    }

    /// The kernel dropped `n` references to `ino`; at none it leaves the table.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let mut t = self.inner.write().unwrap();
        let Some(slot) = t.by_ino.get_mut(&ino) else { return };
        slot.lookups = slot.lookups.saturating_sub(n);
        if slot.lookups == 0 {
            t.drop_ino(ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Digest;

    #[test]
    fn same_digest_same_inode_across_repositories() {
        let t = Inodes::new();
        let d = Digest::of(b"x");
        let a = t.ino(&Node::Blob("a".into(), d));
        let b = t.ino(&Node::Blob("b/c".into(), d));
        assert_eq!(a, b);
        assert_ne!(a, t.ino(&Node::ManifestFile("a".into(), d)));
        assert_eq!(t.get(a), Some(Node::Blob("a".into(), d)));
        let dir = t.ino(&Node::Dir("a".into()));
        assert!(dir < DIGEST_BIT);
        assert_eq!(t.ino(&Node::Dir("a".into())), dir);
        assert_eq!(t.get(ROOT), Some(Node::Root));
    }

    #[test]
    fn renamed_inode_follows_the_new_name() {
        let t = Inodes::new();
        let tmp = Node::Tag("a".into(), "CuXyZ".into());
        let ino = t.ino(&tmp);
        t.rename(&tmp, Node::Tag("a".into(), "v1".into()));
        assert_eq!(t.get(ino), Some(Node::Tag("a".into(), "v1".into())));
        assert_eq!(t.ino(&Node::Tag("a".into(), "v1".into())), ino);
    }

    #[test]
    fn forgotten_nodes_leave_the_table() {
        let t = Inodes::new();
        let tag = Node::Tag("a".into(), "v1".into());
        let ino = t.ino(&tag);
        t.looked_up(&tag, ino);
        t.looked_up(&tag, ino);
        assert_eq!(t.len(), 2);
        t.forget(ino, 1);
        assert_eq!(t.get(ino), Some(tag.clone()), "one reference left");
        t.forget(ino, 1);
        assert_eq!((t.get(ino), t.len()), (None, 1));
        let again = t.ino(&tag);
        assert_ne!(again, ino, "sequential numbers are never reused");
        t.forget(ROOT, 5);
        assert_eq!(t.get(ROOT), Some(Node::Root));
    }

    #[test]
    fn a_shared_digest_inode_forgets_every_name() {
        let t = Inodes::new();
        let d = Digest::of(b"x");
        let (a, b) = (Node::Blob("a".into(), d), Node::Blob("b".into(), d));
        let ino = t.ino(&a);
        t.looked_up(&a, ino);
        assert_eq!(t.ino(&b), ino);
        t.looked_up(&b, ino);
        t.forget(ino, 2);
        assert_eq!(t.len(), 1);
        let inner = t.inner.read().unwrap();
        assert!(
            inner.by_node.len() == 1 && inner.unpinned.is_empty(),
            "no name of the digest is left"
        );
    }

    #[test]
    fn unpinned_nodes_are_bounded_and_pinned_ones_stay() {
        let t = Inodes::with_unpinned_max(10);
        let kept = Node::Dir("kept".into());
        let kept_ino = t.ino(&kept);
        t.looked_up(&kept, kept_ino);
        let listed: Vec<u64> = (0..100)
            .map(|i| t.ino(&Node::Tag("a".into(), format!("t{i}"))))
            .collect();
        assert_eq!(t.len(), 1 + 1 + 10, "root, the looked-up node, the 10 newest listed");
        assert_eq!(t.get(kept_ino), Some(kept));
        assert_eq!(t.get(listed[99]), Some(Node::Tag("a".into(), "t99".into())));
        assert_eq!(t.get(listed[0]), None);
        // A reply for a node dropped after it was numbered brings it back under that number.
        let t0 = Node::Tag("a".into(), "t0".into());
        t.looked_up(&t0, listed[0]);
        assert_eq!((t.get(listed[0]), t.ino(&t0)), (Some(t0), listed[0]));
    }

    #[test]
    fn a_renamed_inode_is_forgotten_under_its_new_name() {
        let t = Inodes::new();
        let (tmp, v1) = (Node::Tag("a".into(), "tmp".into()), Node::Tag("a".into(), "v1".into()));
        let old = t.ino(&v1);
        t.looked_up(&v1, old);
        let ino = t.ino(&tmp);
        t.looked_up(&tmp, ino);
        t.rename(&tmp, v1.clone());
        assert_eq!(t.ino(&v1), ino);
        t.forget(old, 1);
        assert_eq!(t.ino(&v1), ino, "forgetting the replaced inode keeps the new one");
        t.forget(ino, 1);
        assert_eq!(t.len(), 1);
    }
}
