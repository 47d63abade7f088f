//! Every kind of entry in the tree (docs/layout: `../shared/design/layout.md`),
//! and the one place where names map to nodes and back.
//!
//!     MOUNT/
//!     ├── .regfs/{stats,version,errors}            StatusDir, StatusFile
//!     └── <namespace>/…/<repository>/              Dir (namespace and/or repository)
//!         ├── _tags/<tag>                          TagsDir, Tag (symlink)
//!         ├── _manifests/sha256:<hex>/             ManifestsDir, ManifestDir
//!         │   └── manifest.json                    ManifestFile
//!         └── _blobs/sha256:<hex>                  BlobsDir, Blob
//!
//! `_`-prefixed names and `.regfs` can never be repository components, so a
//! directory can hold both a repository's entries and nested repositories.

use crate::registry::reference::{is_valid_component, is_valid_tag};
use crate::registry::Digest;

pub const STATUS_DIR: &str = ".regfs";
pub const TAGS: &str = "_tags";
pub const MANIFESTS: &str = "_manifests";
pub const BLOBS: &str = "_blobs";
pub const MANIFEST_JSON: &str = "manifest.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusFile {
    Stats,
    Version,
    Errors,
}

impl StatusFile {
    pub const ALL: [StatusFile; 3] = [StatusFile::Stats, StatusFile::Version, StatusFile::Errors];

    pub fn name(self) -> &'static str {
        match self {
            StatusFile::Stats => "stats",
            StatusFile::Version => "version",
            StatusFile::Errors => "errors",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    Root,
    StatusDir,
    Status(StatusFile),
    /// A repository path: a namespace, a repository, or both.
    Dir(String),
    TagsDir(String),
    Tag(String, String),
    ManifestsDir(String),
    ManifestDir(String, Digest),
    ManifestFile(String, Digest),
    BlobsDir(String),
    Blob(String, Digest),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Directory,
    File,
    Symlink,
}

impl Node {
    /// The child called `name`, by syntax alone (whether it exists is the view's question).
    pub fn child(&self, name: &str) -> Option<Node> {
        match self {
            Node::Root if name == STATUS_DIR => Some(Node::StatusDir),
            Node::Root => is_valid_component(name).then(|| Node::Dir(name.to_string())),
            Node::StatusDir => StatusFile::ALL
                .into_iter()
                .find(|f| f.name() == name)
                .map(Node::Status),
            Node::Dir(repo) => match name {
                TAGS => Some(Node::TagsDir(repo.clone())),
                MANIFESTS => Some(Node::ManifestsDir(repo.clone())),
                BLOBS => Some(Node::BlobsDir(repo.clone())),
                n if is_valid_component(n) && repo.len() + 1 + n.len() <= 255 => {
                    Some(Node::Dir(format!("{repo}/{n}")))
                }
                _ => None,
            },
            Node::TagsDir(repo) => {
                is_valid_tag(name).then(|| Node::Tag(repo.clone(), name.to_string()))
            }
            Node::ManifestsDir(repo) => name
                .parse()
                .ok()
                .map(|d| Node::ManifestDir(repo.clone(), d)),
            Node::ManifestDir(repo, d) if name == MANIFEST_JSON => {
                Some(Node::ManifestFile(repo.clone(), *d))
            }
            Node::BlobsDir(repo) => name.parse().ok().map(|d| Node::Blob(repo.clone(), d)),
            _ => None,
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Node::Status(_) | Node::ManifestFile(..) | Node::Blob(..) => Kind::File,
            Node::Tag(..) => Kind::Symlink,
            _ => Kind::Directory,
        }
    }

    /// The path below the mount point, for log lines.
    pub fn path(&self) -> String {
        match self {
            Node::Root => "/".into(),
            Node::StatusDir => format!("/{STATUS_DIR}"),
            Node::Status(f) => format!("/{STATUS_DIR}/{}", f.name()),
            Node::Dir(r) => format!("/{r}"),
            Node::TagsDir(r) => format!("/{r}/{TAGS}"),
            Node::Tag(r, t) => format!("/{r}/{TAGS}/{t}"),
            Node::ManifestsDir(r) => format!("/{r}/{MANIFESTS}"),
            Node::ManifestDir(r, d) => format!("/{r}/{MANIFESTS}/{d}"),
            Node::ManifestFile(r, d) => format!("/{r}/{MANIFESTS}/{d}/{MANIFEST_JSON}"),
            Node::BlobsDir(r) => format!("/{r}/{BLOBS}"),
            Node::Blob(r, d) => format!("/{r}/{BLOBS}/{d}"),
        }
    }

    /// Content-addressed entries: immutable, long kernel TTLs, inode from the digest.
    pub fn digest_identity(&self) -> Option<(u8, Digest)> {
        match self {
            Node::ManifestFile(_, d) => Some((1, *d)),
            Node::Blob(_, d) => Some((2, *d)),
            _ => None,
        }
    }

    pub fn is_immutable(&self) -> bool {
        matches!(
            self,
            Node::ManifestDir(..) | Node::ManifestFile(..) | Node::Blob(..)
        )
    }
}

/// Target of a tag symlink: relative, so it stays right when copied.
pub fn tag_target(digest: &Digest) -> String {
    format!("../{MANIFESTS}/{digest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn names_map_to_nodes() {
        let lib = Node::Root.child("library").unwrap();
        let alpine = lib.child("alpine").unwrap();
        assert_eq!(alpine, Node::Dir("library/alpine".into()));
        assert_eq!(
            alpine.child("extras"),
            Some(Node::Dir("library/alpine/extras".into()))
        );
        assert_eq!(
            alpine.child("_tags"),
            Some(Node::TagsDir("library/alpine".into()))
        );
        assert_eq!(alpine.child("_nope"), None);
        assert_eq!(alpine.child("Upper"), None);
        let d: Digest = format!("sha256:{HEX}").parse().unwrap();
        let m = alpine
            .child(MANIFESTS)
            .unwrap()
            .child(&format!("sha256:{HEX}"))
            .unwrap();
        assert_eq!(m, Node::ManifestDir("library/alpine".into(), d));
        assert_eq!(
            m.child("manifest.json").unwrap().path(),
            format!("/library/alpine/_manifests/sha256:{HEX}/manifest.json")
        );
        assert_eq!(alpine.child(BLOBS).unwrap().child("sha256:short"), None);
        assert_eq!(Node::TagsDir("a".into()).child(".hidden"), None);
        assert_eq!(Node::Root.child(".regfs"), Some(Node::StatusDir));
        assert_eq!(
            Node::StatusDir.child("stats"),
            Some(Node::Status(StatusFile::Stats))
        );
    }

    #[test]
    fn tag_targets_are_relative() {
        let d: Digest = format!("sha256:{HEX}").parse().unwrap();
        assert_eq!(tag_target(&d), format!("../_manifests/sha256:{HEX}"));
    }
}
