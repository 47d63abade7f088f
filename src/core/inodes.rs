//! The inode table. Content-addressed entries get inode numbers derived from
//! their digest (the same blob is one inode everywhere in the mount, so
//! `rsync -H` and `cp -a` keep one copy); every other node gets the next number.

use std::collections::HashMap;
use std::sync::RwLock;

use super::node::Node;

pub const ROOT: u64 = 1;
/// Digest-derived numbers have the top bit set; sequential ones never reach it.
const DIGEST_BIT: u64 = 1 << 63;

pub struct Inodes {
    inner: RwLock<Table>,
}

struct Table {
    by_ino: HashMap<u64, Node>,
    by_node: HashMap<Node, u64>,
    next: u64,
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

impl Inodes {
    pub fn new() -> Self {
        let mut t = Table {
            by_ino: HashMap::new(),
            by_node: HashMap::new(),
            next: ROOT + 1,
        };
        t.by_ino.insert(ROOT, Node::Root);
        t.by_node.insert(Node::Root, ROOT);
        Inodes { inner: RwLock::new(t) }
    }

    pub fn get(&self, ino: u64) -> Option<Node> {
        if let Some(node) = super::contents::unpack_ino(ino) {
            return Some(node);
        }
        self.inner.read().unwrap().by_ino.get(&ino).cloned()
    }

    /// A rename: the kernel keeps the inode it knows under the new name, so
    /// that inode must now mean `to` (e.g. `ln -sfn`'s temporary link renamed
    /// over a tag).
    pub fn rename(&self, from: &Node, to: Node) {
        let mut t = self.inner.write().unwrap();
        if let Some(ino) = t.by_node.remove(from) {
            t.by_ino.insert(ino, to.clone());
            t.by_node.insert(to, ino);
        }
    }

    /// The inode number for `node`, registering it on first sight.
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
            Some((kind, d)) => {
                let ino = digest_ino(kind, &d);
                // The first repository seen keeps the inode's node; any repository
                // holding the digest serves the same bytes.
                t.by_ino.entry(ino).or_insert_with(|| node.clone());
                ino
            }
            None => {
                let ino = t.next;
                t.next += 1;
                t.by_ino.insert(ino, node.clone());
                ino
            }
        };
        t.by_node.insert(node.clone(), ino);
        ino
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
}
