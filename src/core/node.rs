//! Every kind of entry in the tree (the README's "The tree"),
//! and the one place where names map to nodes and back.
//!
//! ```text
//!     MOUNT/
//!     ├── .regfs/{stats,version,errors}            StatusDir, StatusFile
//!     └── <namespace>/…/<repository>/              Dir (namespace and/or repository)
//!         ├── _tags/<tag>                          TagsDir, Tag (symlink)
//!         ├── _manifests/sha256:<hex>/             ManifestsDir, ManifestDir
//!         │   ├── manifest.json                    ManifestFile
//!         │   ├── config.json → ../../_blobs/…     Config (image manifests, artifacts)
//!         │   ├── layers/<NN> → ../../../_blobs/…  LayersDir, Layer
//!         │   ├── manifests/<name> → ../../sha256:…  ChildrenDir, Child (indexes)
//!         │   ├── subject → ../sha256:…            Subject
//!         │   └── referrers/<name> → ../../sha256:…  ReferrersDir, Referrer
//!         ├── _blobs/sha256:<hex>                  BlobsDir, Blob
//!         └── _uploads/<name>                      UploadsDir, Upload (→ ../_blobs/… once pushed)
//! ```
//!
//! Reachable by name only (not listed, so copying a repository copies no data twice):
//!
//! ```text
//!         ├── _oci/{oci-layout,index.json,blobs/sha256/<hex>}   Oci* (an OCI image layout)
//!         └── _export/<tag>.tar                                  ExportDir, ExportTar
//! ```
//!
//! Files being written live as `Staged(id)` nodes until they are committed.
//!
//! `_`-prefixed names and `.regfs` can never be repository components, so a
//! directory can hold both a repository's entries and nested repositories.

use crate::oci::reference::{is_valid_component, is_valid_tag};
use crate::oci::Digest;

pub const STATUS_DIR: &str = ".regfs";
pub const TAGS: &str = "_tags";
pub const MANIFESTS: &str = "_manifests";
pub const BLOBS: &str = "_blobs";
pub const UPLOADS: &str = "_uploads";
pub const OCI: &str = "_oci";
pub const EXPORT: &str = "_export";
pub const OCI_LAYOUT: &str = "oci-layout";
pub const OCI_INDEX_JSON: &str = "index.json";
pub const OCI_BLOBS: &str = "blobs";
pub const OCI_ALG: &str = "sha256";
pub const TAR_SUFFIX: &str = ".tar";
pub const MANIFEST_JSON: &str = "manifest.json";
pub const CONFIG_JSON: &str = "config.json";
pub const LAYERS: &str = "layers";
pub const CHILDREN: &str = "manifests";
pub const SUBJECT: &str = "subject";
pub const REFERRERS: &str = "referrers";
pub const ROOTFS: &str = "rootfs";
pub const LAYER_TREES: &str = "_layers";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusFile {
    Stats,
    Version,
    Errors,
    Config,
    Held,
    Transfers,
    Metrics,
}

impl StatusFile {
    pub const ALL: [StatusFile; 7] = [
        StatusFile::Held,
        StatusFile::Transfers,
        StatusFile::Metrics,
        StatusFile::Stats,
        StatusFile::Version,
        StatusFile::Errors,
        StatusFile::Config,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StatusFile::Stats => "stats",
            StatusFile::Version => "version",
            StatusFile::Errors => "errors",
            StatusFile::Config => "config",
            StatusFile::Held => "held",
            StatusFile::Transfers => "transfers",
            StatusFile::Metrics => "metrics",
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
    /// `config.json` of the manifest `Digest`.
    Config(String, Digest),
    LayersDir(String, Digest),
    /// `layers/<NN>`: the name as written (validated against the manifest by the view).
    Layer(String, Digest, String),
    ChildrenDir(String, Digest),
    Child(String, Digest, String),
    Subject(String, Digest),
    ReferrersDir(String, Digest),
    Referrer(String, Digest, String),
    BlobsDir(String),
    Blob(String, Digest),
    UploadsDir(String),
    /// `_uploads/<name>` after its push: a link to the blob.
    Upload(String, String),
    /// A file being written (see write.rs); the number is its staging id.
    Staged(u64),
    OciDir(String),
    OciLayout(String),
    OciIndex(String),
    OciBlobsDir(String),
    OciAlgDir(String),
    /// `_oci/blobs/sha256/<hex>` before lookup tells whether it is a manifest
    /// (then it is served as `ManifestFile`) or a blob (`Blob`): one inode per digest.
    OciBlob(String, Digest),
    ExportDir(String),
    /// `_export/<tag>.tar`: the tag as a tar made on the fly.
    ExportTar(String, String),
    /// `rootfs` of a manifest directory: an image's tree (resolved to its
    /// `ContentsDir` root), or for an index a link to this platform's child.
    Rootfs(String, Digest),
    /// `<repo>/_layers/`: lists nothing; `sha256:<hex>` names a layer's tree.
    LayerTreesDir(String),
    /// `<repo>/_layers/sha256:<hex>` by name: resolved to its tree's root `ContentsDir`.
    LayerTree(String, Digest),
    /// A directory inside a tree (see contents.rs): the tree's slot and the node
    /// number. Slots are small numbers standing for (repository, tree), so a
    /// contents node is a few integers and its inode number is computed from
    /// them (`contents::packed_ino`): no inode table entry per file.
    ContentsDir(u32, u32),
    /// Any other entry of a tree, named by its layer entry (same entry, same
    /// inode): the slot of (repository, layer), the entry number, its kind.
    ContentsEntry(u32, u32, crate::contents::Kind),
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
            Node::StatusDir => StatusFile::ALL.into_iter().find(|f| f.name() == name).map(Node::Status),
            Node::Dir(repo) => match name {
                TAGS => Some(Node::TagsDir(repo.clone())),
                MANIFESTS => Some(Node::ManifestsDir(repo.clone())),
                BLOBS => Some(Node::BlobsDir(repo.clone())),
                UPLOADS => Some(Node::UploadsDir(repo.clone())),
                OCI => Some(Node::OciDir(repo.clone())),
                EXPORT => Some(Node::ExportDir(repo.clone())),
                LAYER_TREES => Some(Node::LayerTreesDir(repo.clone())),
                n if is_valid_component(n) && repo.len() + 1 + n.len() <= 255 => Some(Node::Dir(format!("{repo}/{n}"))),
                _ => None,
            },
            Node::TagsDir(repo) => is_valid_tag(name).then(|| Node::Tag(repo.clone(), name.to_string())),
            Node::ManifestsDir(repo) => name.parse().ok().map(|d| Node::ManifestDir(repo.clone(), d)),
            Node::ManifestDir(repo, d) => {
                let (r, d) = (repo.clone(), *d);
                match name {
                    MANIFEST_JSON => Some(Node::ManifestFile(r, d)),
                    CONFIG_JSON => Some(Node::Config(r, d)),
                    LAYERS => Some(Node::LayersDir(r, d)),
                    CHILDREN => Some(Node::ChildrenDir(r, d)),
                    SUBJECT => Some(Node::Subject(r, d)),
                    REFERRERS => Some(Node::ReferrersDir(r, d)),
                    ROOTFS => Some(Node::Rootfs(r, d)),
                    _ => None,
                }
            }
            Node::LayersDir(repo, d) if !name.is_empty() && name.bytes().all(|c| c.is_ascii_digit()) => {
                Some(Node::Layer(repo.clone(), *d, name.to_string()))
            }
            Node::ChildrenDir(repo, d) => Some(Node::Child(repo.clone(), *d, name.to_string())),
            Node::UploadsDir(repo) if is_file_name(name) => Some(Node::Upload(repo.clone(), name.to_string())),
            Node::OciDir(repo) => match name {
                OCI_LAYOUT => Some(Node::OciLayout(repo.clone())),
                OCI_INDEX_JSON => Some(Node::OciIndex(repo.clone())),
                OCI_BLOBS => Some(Node::OciBlobsDir(repo.clone())),
                _ => None,
            },
            Node::OciBlobsDir(repo) if name == OCI_ALG => Some(Node::OciAlgDir(repo.clone())),
            Node::OciAlgDir(repo) => Digest::from_hex(name).map(|d| Node::OciBlob(repo.clone(), d)),
            Node::ExportDir(repo) => name
                .strip_suffix(TAR_SUFFIX)
                .filter(|t| is_valid_tag(t))
                .map(|t| Node::ExportTar(repo.clone(), t.to_string())),
            Node::ReferrersDir(repo, d) => Some(Node::Referrer(repo.clone(), *d, name.to_string())),
            Node::BlobsDir(repo) => name.parse().ok().map(|d| Node::Blob(repo.clone(), d)),
            Node::LayerTreesDir(repo) => name.parse().ok().map(|d| Node::LayerTree(repo.clone(), d)),
            _ => None,
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Node::Status(_)
            | Node::ManifestFile(..)
            | Node::Blob(..)
            | Node::Staged(_)
            | Node::OciLayout(_)
            | Node::OciIndex(_)
            | Node::OciBlob(..)
            | Node::ExportTar(..) => Kind::File,
            Node::Tag(..)
            | Node::Config(..)
            | Node::Layer(..)
            | Node::Child(..)
            | Node::Subject(..)
            | Node::Referrer(..)
            | Node::Upload(..) => Kind::Symlink,
            Node::ContentsEntry(.., crate::contents::Kind::Symlink) => Kind::Symlink,
            Node::ContentsEntry(..) => Kind::File,
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
            Node::Config(r, d) => format!("/{r}/{MANIFESTS}/{d}/{CONFIG_JSON}"),
            Node::LayersDir(r, d) => format!("/{r}/{MANIFESTS}/{d}/{LAYERS}"),
            Node::Layer(r, d, n) => format!("/{r}/{MANIFESTS}/{d}/{LAYERS}/{n}"),
            Node::ChildrenDir(r, d) => format!("/{r}/{MANIFESTS}/{d}/{CHILDREN}"),
            Node::Child(r, d, n) => format!("/{r}/{MANIFESTS}/{d}/{CHILDREN}/{n}"),
            Node::Subject(r, d) => format!("/{r}/{MANIFESTS}/{d}/{SUBJECT}"),
            Node::ReferrersDir(r, d) => format!("/{r}/{MANIFESTS}/{d}/{REFERRERS}"),
            Node::Referrer(r, d, n) => format!("/{r}/{MANIFESTS}/{d}/{REFERRERS}/{n}"),
            Node::BlobsDir(r) => format!("/{r}/{BLOBS}"),
            Node::UploadsDir(r) => format!("/{r}/{UPLOADS}"),
            Node::Upload(r, n) => format!("/{r}/{UPLOADS}/{n}"),
            Node::Staged(id) => format!("(file being written #{id})"),
            Node::OciDir(r) => format!("/{r}/{OCI}"),
            Node::OciLayout(r) => format!("/{r}/{OCI}/{OCI_LAYOUT}"),
            Node::OciIndex(r) => format!("/{r}/{OCI}/{OCI_INDEX_JSON}"),
            Node::OciBlobsDir(r) => format!("/{r}/{OCI}/{OCI_BLOBS}"),
            Node::OciAlgDir(r) => format!("/{r}/{OCI}/{OCI_BLOBS}/{OCI_ALG}"),
            Node::OciBlob(r, d) => format!("/{r}/{OCI}/{OCI_BLOBS}/{OCI_ALG}/{}", d.hex()),
            Node::ExportDir(r) => format!("/{r}/{EXPORT}"),
            Node::ExportTar(r, t) => format!("/{r}/{EXPORT}/{t}{TAR_SUFFIX}"),
            Node::Blob(r, d) => format!("/{r}/{BLOBS}/{d}"),
            Node::Rootfs(r, d) => format!("/{r}/{MANIFESTS}/{d}/{ROOTFS}"),
            Node::LayerTreesDir(r) => format!("/{r}/{LAYER_TREES}"),
            Node::LayerTree(r, d) => format!("/{r}/{LAYER_TREES}/{d}"),
            Node::ContentsDir(slot, n) => format!("(image contents: tree #{slot}, directory #{n})"),
            Node::ContentsEntry(slot, e, _) => format!("(image contents: layer #{slot}, entry #{e})"),
        }
    }

    /// For an entry inside a manifest directory (not manifest.json): that
    /// directory's repository and digest.
    pub fn manifest_dir(&self) -> Option<(&str, &Digest)> {
        match self {
            Node::Config(r, d)
            | Node::LayersDir(r, d)
            | Node::Layer(r, d, _)
            | Node::ChildrenDir(r, d)
            | Node::Child(r, d, _)
            | Node::Subject(r, d)
            | Node::ReferrersDir(r, d)
            | Node::Referrer(r, d, _) => Some((r, d)),
            _ => None,
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

    /// Entries of image contents (`rootfs/`, `_layers/`): read-only views.
    pub fn is_contents(&self) -> bool {
        matches!(
            self,
            Node::Rootfs(..)
                | Node::LayerTreesDir(..)
                | Node::LayerTree(..)
                | Node::ContentsDir(..)
                | Node::ContentsEntry(..)
        )
    }

    /// Everything inside a manifest directory is derived from immutable bytes
    /// (referrers excepted: new ones can be pushed at any time).
    pub fn is_immutable(&self) -> bool {
        matches!(
            self,
            Node::ManifestDir(..)
                | Node::ManifestFile(..)
                | Node::Config(..)
                | Node::LayersDir(..)
                | Node::Layer(..)
                | Node::ChildrenDir(..)
                | Node::Child(..)
                | Node::Subject(..)
                | Node::Blob(..)
                | Node::Rootfs(..)
                | Node::LayerTreesDir(..)
                | Node::LayerTree(..)
                | Node::ContentsDir(..)
                | Node::ContentsEntry(..)
        )
    }
}

// Relative symlink targets, so links stay right when the tree is copied.

/// A manifest directory seen from `depth` levels below the repository.
pub fn manifest_target(depth: usize, digest: &Digest) -> String {
    format!("{}{MANIFESTS}/{digest}", "../".repeat(depth))
}

/// A sibling manifest directory seen from `depth` levels below `_manifests/`.
pub fn sibling_manifest_target(depth: usize, digest: &Digest) -> String {
    format!("{}{digest}", "../".repeat(depth))
}

/// A blob seen from `depth` levels below the repository.
pub fn blob_target(depth: usize, digest: &Digest) -> String {
    format!("{}{BLOBS}/{digest}", "../".repeat(depth))
}

/// Where a link whose descriptor has no valid digest points: a name that can
/// never exist in `_blobs/` (not a digest), so the link dangles inside the mount.
/// Link targets are built only from parsed `Digest`s (the functions above take
/// nothing else), so no registry string ever becomes a path.
pub fn invalid_digest_target(depth: usize) -> String {
    format!("{}{BLOBS}/invalid-digest", "../".repeat(depth))
}

/// A name a file may have: not empty, no `/`, not `.` or `..`, at most 255 bytes.
pub fn is_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && name.len() <= 255
}

/// rsync, cp and editors write to a temporary name starting with `.` and rename
/// it into place; such names are staged without being pushed.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && is_file_name(name)
}

/// Target of a tag symlink: relative, so it stays right when copied.
pub fn tag_target(digest: &Digest) -> String {
    manifest_target(1, digest)
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
        assert_eq!(alpine.child("extras"), Some(Node::Dir("library/alpine/extras".into())));
        assert_eq!(alpine.child("_tags"), Some(Node::TagsDir("library/alpine".into())));
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
        assert_eq!(Node::StatusDir.child("stats"), Some(Node::Status(StatusFile::Stats)));
        let layers = m.child("layers").unwrap();
        assert_eq!(
            layers.child("03"),
            Some(Node::Layer("library/alpine".into(), d, "03".into()))
        );
        assert_eq!(layers.child("x3"), None);
        assert_eq!(
            m.child("manifests").unwrap().child("linux-amd64").unwrap().kind(),
            Kind::Symlink
        );
        assert_eq!(m.child("config.json").unwrap().kind(), Kind::Symlink);
        assert_eq!(m.child("other"), None);
    }

    #[test]
    fn tag_targets_are_relative() {
        let d: Digest = format!("sha256:{HEX}").parse().unwrap();
        assert_eq!(tag_target(&d), format!("../_manifests/sha256:{HEX}"));
        assert_eq!(blob_target(3, &d), format!("../../../_blobs/sha256:{HEX}"));
        assert_eq!(manifest_target(2, &d), format!("../../_manifests/sha256:{HEX}"));
    }
}
