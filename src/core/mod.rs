//! The filesystem without the kernel: nodes, the inode table, the read-side
//! view of the registry, the overlay of local writes, pushes, exports and
//! imports. `crate::fuse` links fuser's calls to the methods here.

pub(crate) mod archive;
pub mod attr;
pub(crate) mod contents;
pub(crate) mod early;
pub(crate) mod import;
pub mod inodes;
pub(crate) mod locations;
pub mod names;
pub mod node;
pub mod ops;
pub(crate) mod overlay;
pub(crate) mod push;
pub(crate) mod tree;
pub mod view;
pub(crate) mod write;

#[cfg(test)]
mod tests;

pub use write::Staging;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use attr::{Attr, Caching, FileKind, Listed};
use bytes::Bytes;

use crate::error::{Cause, Failed, FsError, FsResult};
use crate::store::{BlobFile, ReadState};
use inodes::Inodes;
use node::{FileType, Node, StatusFile};
use view::View;

/// Kernel TTL for content-addressed entries: they never change.
const IMMUTABLE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Kernel readahead: large enough for streaming, the prefetcher does the rest.
pub const MAX_READAHEAD: u32 = 1 << 20;
/// Every entry has this mtime: stable across mounts and machines, so a second
/// `rsync -a` sees nothing changed. (Content-addressed data never changes;
/// names carry no trustworthy time.)
pub(crate) const STABLE_MTIME: SystemTime = UNIX_EPOCH;

pub struct Options {
    pub uid: u32,
    pub gid: u32,
    /// Kernel TTL for entries named by tags and listings (`--metadata-ttl`).
    pub name_ttl: Duration,
    /// `name value` lines for `.regfs/config` (never a secret).
    pub description: String,
    pub read_only: bool,
    pub allow_delete: bool,
}

pub(crate) enum Handle {
    Blob {
        file: Arc<BlobFile>,
        state: Mutex<ReadState>,
    },
    Bytes(Bytes),
    /// A file being written: the staging id.
    Staged(u64),
    /// A file being written, opened for reading only: closing it pushes nothing.
    StagedRead(u64),
    /// `_export/<tag>.tar`, made on the fly.
    Export(Arc<archive::Export>),
    /// A regular file inside `rootfs/` or `_layers/`.
    Contents(Arc<contents::ContentsFile>),
}

pub struct Core {
    pub(crate) view: View,
    pub(crate) inodes: Inodes,
    pub(crate) opts: Options,
    pub(crate) handles: Handles,
}

/// Open files and directory listings, by the handle number the kernel was given.
#[derive(Default)]
pub(crate) struct Handles {
    next: AtomicU64,
    files: Mutex<HashMap<u64, Arc<Handle>>>,
    dirs: Mutex<HashMap<u64, Arc<Vec<Listed>>>>,
}

impl Handles {
    fn next(&self) -> u64 {
        // Starts at 1: 0 is what the kernel passes when there is no handle.
        self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }

    pub(crate) fn open_file(&self, handle: Handle) -> u64 {
        let fh = self.next();
        self.files.lock().unwrap().insert(fh, Arc::new(handle));
        fh
    }

    pub(crate) fn file(&self, fh: u64) -> Option<Arc<Handle>> {
        self.files.lock().unwrap().get(&fh).cloned()
    }

    pub(crate) fn close_file(&self, fh: u64) -> Option<Arc<Handle>> {
        self.files.lock().unwrap().remove(&fh)
    }

    pub(crate) fn open_dir(&self, entries: Vec<Listed>) -> u64 {
        let fh = self.next();
        self.dirs.lock().unwrap().insert(fh, Arc::new(entries));
        fh
    }

    pub(crate) fn dir(&self, fh: u64) -> Option<Arc<Vec<Listed>>> {
        self.dirs.lock().unwrap().get(&fh).cloned()
    }

    pub(crate) fn close_dir(&self, fh: u64) {
        self.dirs.lock().unwrap().remove(&fh);
    }
}

impl Core {
    pub fn new(view: View, opts: Options) -> Self {
        Core {
            view,
            inodes: Inodes::new(),
            opts,
            handles: Handles::default(),
        }
    }

    /// Files being written (part of the view's overlay).
    pub(crate) fn staging(&self) -> &write::Staging {
        &self.view.overlay.staging
    }

    pub(crate) fn node(&self, ino: u64) -> FsResult<Node> {
        self.inodes
            .get(ino)
            .ok_or_else(|| FsError::new(Cause::Stale, format!("unknown inode {ino}")))
    }

    /// Log a failed operation once, with the registry's message; ENOENT is
    /// a normal answer and only logged at debug.
    pub(crate) fn fail(&self, op: &str, node: Option<&Node>, e: &FsError) -> Failed {
        self.fail_at(op, &node.map(|n| self.log_path(n)).unwrap_or_default(), e)
    }

    /// `fail` for an inode number the kernel gave (the node may be gone).
    pub(crate) fn fail_ino(&self, op: &str, ino: u64, e: &FsError) -> Failed {
        let node = self.inodes.get(ino);
        self.fail(op, node.as_ref(), e)
    }

    /// `fail` for operations on a name in a directory (create, mkdir, unlink,
    /// rename …): the path logged is `<parent>/<name>`.
    pub(crate) fn fail_in(&self, op: &str, parent: u64, name: &str, e: &FsError) -> Failed {
        let path = match self.inodes.get(parent).map(|p| self.log_path(&p)) {
            Some(p) if p.ends_with('/') => format!("{p}{name}"),
            Some(p) => format!("{p}/{name}"),
            None => name.to_string(),
        };
        self.fail_at(op, &path, e)
    }

    pub(crate) fn fail_at(&self, op: &str, path: &str, e: &FsError) -> Failed {
        Failed(crate::error::report(&self.view.stats, op, path, e))
    }

    pub(crate) fn ttl(&self, node: &Node) -> Duration {
        match node {
            // Files being written change size and become links when pushed.
            Node::Status(_) | Node::Staged(_) => Duration::ZERO,
            n if n.is_immutable() => IMMUTABLE_TTL,
            _ => self.opts.name_ttl,
        }
    }

    pub(crate) fn make_attr(&self, node: &Node, size: u64) -> Attr {
        // Directories that take writes say so (the kernel checks modes: the
        // mount uses default_permissions); content is never writable in place.
        let writable = !self.opts.read_only;
        let (kind, perm, nlink) = match node.file_type() {
            FileType::Directory if writable => (FileKind::Directory, 0o755, 2),
            FileType::Directory => (FileKind::Directory, 0o555, 2),
            FileType::File if writable && matches!(node, Node::Staged(_)) => (FileKind::RegularFile, 0o644, 1),
            // Content-addressed files are reachable at least twice (`_blobs/…` or
            // `manifest.json`, and `_oci/blobs/sha256/…`) under one inode: saying
            // so lets `rsync -H` and `cp -a` keep one copy.
            FileType::File if node.digest_identity().is_some() => (FileKind::RegularFile, 0o444, 2),
            FileType::File => (FileKind::RegularFile, 0o444, 1),
            FileType::Symlink => (FileKind::Symlink, 0o777, 1),
        };
        Attr {
            ino: self.inodes.ino(node),
            size,
            blocks: size.div_ceil(512),
            atime: STABLE_MTIME,
            mtime: STABLE_MTIME,
            ctime: STABLE_MTIME,
            crtime: STABLE_MTIME,
            kind,
            perm,
            nlink,
            uid: self.opts.uid,
            gid: self.opts.gid,
            rdev: 0,
            blksize: 1 << 20,
            flags: 0,
        }
    }

    pub(crate) fn status_text(&self, f: StatusFile) -> String {
        match f {
            StatusFile::Stats => format!(
                "{}{}inodes {}\n",
                self.view.stats.render(),
                self.view.blobs.usage(),
                self.inodes.len()
            ),
            StatusFile::Version => format!("regfs {}\n", env!("CARGO_PKG_VERSION")),
            StatusFile::Errors => self.view.stats.render_errors(),
            StatusFile::Config => self.opts.description.clone(),
            StatusFile::Held => self.view.overlay.render_held(),
            StatusFile::Transfers => self.view.stats.transfers.render(),
            StatusFile::Metrics => crate::metrics::render(&self.view.stats, &self.view.blobs),
        }
    }

    pub(crate) async fn open_node(&self, node: &Node) -> FsResult<(Handle, Caching)> {
        let v = &self.view;
        Ok(match node {
            Node::Blob(r, d) => {
                if let Some(urls) = v.foreign_urls(d) {
                    return Err(crate::error::FsError::new(
                        Cause::Remote,
                        format!("foreign layer {d}: not in the registry, download it from {urls:?}"),
                    ));
                }
                let size = v.blob_size(r, *d).await?;
                let file = v.blobs.open(r, *d, size).await?;
                let caching = if file.is_complete() {
                    Caching::Keep
                } else {
                    Caching::Stream
                };
                (
                    Handle::Blob {
                        file,
                        state: Mutex::new(ReadState::default()),
                    },
                    caching,
                )
            }
            Node::ManifestFile(r, d) => (Handle::Bytes(v.manifest(r, *d).await?.bytes.clone()), Caching::Keep),
            Node::OciLayout(_) => (
                Handle::Bytes(Bytes::from_static(archive::OCI_LAYOUT_BYTES)),
                Caching::Default,
            ),
            Node::OciIndex(r) => (Handle::Bytes(v.oci_index(r).await?), Caching::Direct),
            Node::ExportTar { repo, tag } => (Handle::Export(v.export(repo, tag).await?), Caching::Default),
            Node::Staged(id) => (Handle::StagedRead(*id), Caching::Direct),
            Node::ContentsEntry(..) => (
                Handle::Contents(Arc::new(self.contents_open(node).await?)),
                Caching::Keep,
            ),
            // Status text changes between reads: no page cache, sizes from the snapshot.
            Node::Status(f) => (Handle::Bytes(Bytes::from(self.status_text(*f))), Caching::Direct),
            n if n.file_type() == FileType::Directory => {
                return Err(FsError::new(
                    Cause::IsADirectory,
                    format!("{} is a directory", n.path()),
                ))
            }
            n => return Err(FsError::new(Cause::Invalid, format!("{} cannot be opened", n.path()))),
        })
    }
}
