//! The filesystem operations, one method each, taking inode numbers and file
//! handles and answering the core's own types. Every failure is reported
//! once (`Core::fail*` → `crate::error::report`) and comes back as `Failed`,
//! so `crate::fuse` only has to reply.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::attr::{Attr, Caching, Entry, FileKind, Listed};
use super::node::{FileType, Node};
use super::{contents, write, Core, Handle, STABLE_MTIME};
use crate::error::{Cause, Failed, FsError, OpResult};

/// How `open` was asked to open a file.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenMode {
    pub write: bool,
    pub truncate: bool,
}

impl OpenMode {
    /// From open(2) flags.
    pub fn from_flags(flags: i32) -> Self {
        OpenMode {
            write: flags & libc::O_ACCMODE != libc::O_RDONLY,
            truncate: flags & libc::O_TRUNC != 0,
        }
    }
}

fn kind_of(k: FileType) -> FileKind {
    match k {
        FileType::Directory => FileKind::Directory,
        FileType::File => FileKind::RegularFile,
        FileType::Symlink => FileKind::Symlink,
    }
}

impl Core {
    /// Image contents (`rootfs/`, `_layers/`) are read-only views: any change there is EROFS.
    pub fn in_contents(&self, inos: &[u64]) -> bool {
        inos.iter()
            .any(|i| self.inodes.get(*i).is_some_and(|n| n.is_contents()))
    }

    fn entry(&self, node: &Node, attr: Attr) -> Entry {
        Entry {
            attr,
            ttl: self.ttl(node),
        }
    }

    /// An entry handed to the kernel: it counts one more reference to the
    /// inode until it sends `forget` (see inodes.rs).
    fn given(&self, node: &Node, entry: Entry) -> Entry {
        self.inodes.looked_up(node, entry.attr.ino);
        entry
    }

    /// The kernel dropped `n` references to `ino` (forget, batch_forget).
    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
    }

    /// A change asked inside image contents (`rootfs/`, `_layers/`): EROFS,
    /// logged and counted like every other failure.
    /// The path logged is the node's, or `<parent>/<name>` for a change of a name.
    fn read_only_contents(&self, op: &str, ino: u64, name: Option<&str>) -> Failed {
        let e = FsError::new(Cause::ReadOnly, "image contents are read-only");
        match name {
            Some(name) => self.fail_in(op, ino, name, &e),
            None => self.fail_ino(op, ino, &e),
        }
    }

    /// A file handle the kernel gave that this mount does not know (a bug
    /// somewhere): EBADF, logged and counted.
    fn bad_handle(&self, op: &str, ino: u64, fh: u64) -> Failed {
        let e = FsError::new(Cause::BadHandle, format!("no open file handle {fh}"));
        self.fail_ino(op, ino, &e)
    }

    fn new_fh(&self, handle: Handle) -> u64 {
        self.handles.open_file(handle)
    }

    fn staged_id(&self, fh: u64) -> Option<u64> {
        self.handles.file(fh).and_then(|h| match *h {
            Handle::Staged(id) => Some(id),
            _ => None,
        })
    }

    pub async fn lookup(&self, parent_ino: u64, name: Option<&str>) -> OpResult<Entry> {
        let parent = self.node(parent_ino).map_err(|e| self.fail("lookup", None, &e))?;
        let Some(name) = name else {
            let e = FsError::new(Cause::NotFound, "a name that is not UTF-8 (no registry name is)");
            return Err(self.fail("lookup", Some(&parent), &e));
        };
        if matches!(parent, Node::ContentsDir(..)) {
            let child = self
                .contents_lookup(&parent, name)
                .await
                .map_err(|e| self.fail("lookup", Some(&parent), &e))?;
            let attr = self
                .attr(&child)
                .await
                .map_err(|e| self.fail("lookup", Some(&child), &e))?;
            return Ok(self.given(&child, self.entry(&child, attr)));
        }
        // A file being written hides whatever the registry has under its name.
        let child = match self.staging().find(&parent, name) {
            Some(id) if !self.staging().is_settled(id) => Node::Staged(id),
            _ => parent.child(name).ok_or_else(|| {
                self.fail_in(
                    "lookup",
                    parent_ino,
                    name,
                    &FsError::new(Cause::NotFound, "no such name"),
                )
            })?,
        };
        let child = self
            .resolve(child)
            .await
            .map_err(|e| self.fail_in("lookup", parent_ino, name, &e))?;
        let attr = self
            .attr(&child)
            .await
            .map_err(|e| self.fail("lookup", Some(&child), &e))?;
        Ok(self.given(&child, self.entry(&child, attr)))
    }

    pub async fn getattr(&self, ino: u64) -> OpResult<Entry> {
        let node = self.node(ino).map_err(|e| self.fail("getattr", None, &e))?;
        let attr = self
            .attr(&node)
            .await
            .map_err(|e| self.fail("getattr", Some(&node), &e))?;
        Ok(self.entry(&node, attr))
    }

    pub async fn readlink(&self, ino: u64) -> OpResult<String> {
        let node = self.node(ino).map_err(|e| self.fail("readlink", None, &e))?;
        self.link_target(&node)
            .await
            .map_err(|e| self.fail("readlink", Some(&node), &e))
    }

    /// Open a file; the file handle and how the kernel may cache it.
    pub async fn open(&self, ino: u64, mode: OpenMode) -> OpResult<(u64, Caching)> {
        if mode.write && self.in_contents(&[ino]) {
            return Err(self.read_only_contents("open", ino, None));
        }
        let node = self.node(ino).map_err(|e| self.fail("open", None, &e))?;
        let opened = if mode.write {
            self.open_for_write(&node, mode.truncate)
                .map(|id| (Handle::Staged(id), Caching::Direct))
        } else {
            self.open_node(&node).await
        };
        let (handle, caching) = opened.map_err(|e| self.fail("open", Some(&node), &e))?;
        Ok((self.new_fh(handle), caching))
    }

    /// A read answered without waiting: bytes in memory or already on local
    /// disk. `None` when the read must wait (call `read`).
    pub fn read_now(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Option<OpResult<Bytes>> {
        let Some(handle) = self.handles.file(fh) else {
            return Some(Err(self.bad_handle("read", ino, fh)));
        };
        let fail = |e: &FsError| self.fail_ino("read", ino, e);
        match &*handle {
            Handle::Bytes(b) => {
                let start = (offset as usize).min(b.len());
                let end = start.saturating_add(size as usize).min(b.len());
                Some(Ok(b.slice(start..end)))
            }
            Handle::Staged(id) | Handle::StagedRead(id) => Some(match self.staging().get(*id) {
                Some(f) => f
                    .lock()
                    .unwrap()
                    .read(offset, u64::from(size))
                    .map(Bytes::from)
                    .map_err(|e| fail(&e)),
                None => Err(self.bad_handle("read", ino, fh)),
            }),
            Handle::Blob { file, state } => match file.try_read(offset, u64::from(size), state) {
                Ok(Some(data)) => Some(Ok(Bytes::from(data))),
                Ok(None) => None,
                Err(e) => Some(Err(fail(&e))),
            },
            // Image contents: from decoded spans kept in memory, else off this thread.
            Handle::Contents(file) => file.read_kept(offset, u64::from(size)).map(|d| Ok(Bytes::from(d))),
            Handle::Export(_) => None,
        }
    }

    /// Read `size` bytes at `offset` of an open file, waiting for the network if needed.
    pub async fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> OpResult<Bytes> {
        match self.read_now(ino, fh, offset, size) {
            Some(answer) => answer,
            None => self.read_wait(ino, fh, offset, size).await,
        }
    }

    /// The rest of a read `read_now` could not answer.
    pub async fn read_wait(&self, ino: u64, fh: u64, offset: u64, size: u32) -> OpResult<Bytes> {
        let Some(handle) = self.handles.file(fh) else {
            return Err(self.bad_handle("read", ino, fh));
        };
        let result = match &*handle {
            Handle::Contents(file) => file.clone().read(offset, u64::from(size)).await.map(Bytes::from),
            Handle::Export(export) => self
                .view
                .read_export(export, offset, u64::from(size))
                .await
                .map(Bytes::from),
            Handle::Blob { file, state } => {
                let end = offset.saturating_add(u64::from(size));
                file.wait_and_read(offset, end, state).await.map(Bytes::from)
            }
            Handle::Bytes(_) | Handle::Staged(_) | Handle::StagedRead(_) => unreachable!("answered by read_now"),
        };
        result.map_err(|e| self.fail_ino("read", ino, &e))
    }

    /// Write into a file being written; the count written.
    /// (On the runtime: a write may start pushing an archive's layers.)
    pub fn write(self: &Arc<Self>, ino: u64, fh: u64, offset: u64, data: &[u8]) -> OpResult<u32> {
        let id = self.staged_id(fh).ok_or_else(|| self.bad_handle("write", ino, fh))?;
        let f = self
            .staging()
            .get(id)
            .ok_or_else(|| self.bad_handle("write", ino, fh))?;
        let result = {
            let mut f = f.lock().unwrap();
            let result = f.write(offset, data);
            self.start_early_pushes(&mut f);
            result
        };
        result
            .map(|()| data.len() as u32)
            .map_err(|e| self.fail_ino("write", ino, &e))
    }

    /// A new file being written at (parent, name), opened: its entry and file handle.
    pub fn create(&self, parent: u64, name: &str) -> OpResult<(Entry, u64)> {
        if self.in_contents(&[parent]) {
            return Err(self.read_only_contents("create", parent, Some(name)));
        }
        let id = self
            .node(parent)
            .and_then(|parent| {
                self.check_manifest_dir_writable(&parent)?;
                write::check_create(&parent, name)?;
                self.staging().create(&parent, name)
            })
            .map_err(|e| self.fail_in("create", parent, name, &e))?;
        let node = Node::Staged(id);
        let attr = self.make_attr(&node, 0);
        let fh = self.new_fh(Handle::Staged(id));
        Ok((
            self.given(
                &node,
                Entry {
                    attr,
                    ttl: Duration::ZERO,
                },
            ),
            fh,
        ))
    }

    /// flush/fsync of a file being written: commit it (push), and say how that went.
    pub async fn commit_fh(&self, op: &str, ino: u64, fh: u64) -> OpResult<()> {
        let Some(id) = self.staged_id(fh) else { return Ok(()) };
        self.commit(id).await.map_err(|e| self.fail_ino(op, ino, &e))
    }

    /// The last close of a file handle. A file being written that no flush
    /// committed is committed now (errors can only be logged), then the tree
    /// serves it. Returns whether a commit is left to `finish_release`.
    pub fn release(&self, fh: u64) -> Option<u64> {
        let handle = self.handles.close_file(fh);
        let staged = match handle.as_deref() {
            Some(Handle::Staged(id)) => Some(*id),
            _ => None,
        };
        let blob = matches!(handle.as_deref(), Some(Handle::Blob { .. }));
        drop(handle);
        if blob {
            // Eviction skips blobs open at the time; the kernel sends this
            // release after close() returned, often after the next blob was
            // committed. Without a look now, a cache over its limit would stay
            // so until the next commit.
            self.view.blobs.fit();
        }
        staged
    }

    /// The commit `release` left.
    pub async fn finish_release(&self, id: u64) {
        let _ = self.commit(id).await;
        self.settle_staged(id);
    }

    /// Modes, owners and times (rsync -a sets them on everything it writes)
    /// change nothing that matters: accepted, ignored. A size change is only
    /// possible on a file being written. A new mtime on a read-only file
    /// (`touch manifest.json`) is refused as its open for writing was: the
    /// file cannot change, and saying so beats a silent success (setting the
    /// mtime it already has is fine). `mtime` is `Some(None)` for "now".
    pub async fn setattr(&self, ino: u64, size: Option<u64>, mtime: Option<Option<SystemTime>>) -> OpResult<Entry> {
        if self.in_contents(&[ino]) {
            return Err(self.read_only_contents("setattr", ino, None));
        }
        let node = self.node(ino).map_err(|e| self.fail("setattr", None, &e))?;
        let new_mtime = match mtime {
            Some(Some(t)) if t == STABLE_MTIME => None,
            other => other,
        };
        if new_mtime.is_some() && node.file_type() == FileType::File && !matches!(node, Node::Staged(_)) {
            let e = FsError::new(Cause::NotPermitted, "read-only file: its time cannot change");
            return Err(self.fail("setattr", Some(&node), &e));
        }
        if let Some(size) = size {
            let result = match &node {
                Node::Staged(id) => match self.staging().get(*id) {
                    Some(f) => f.lock().unwrap().truncate(size),
                    None => Err(FsError::new(Cause::NotFound, "file being written is gone")),
                },
                n => Err(FsError::new(Cause::NotPermitted, format!("{} is immutable", n.path()))),
            };
            result.map_err(|e| self.fail("truncate", Some(&node), &e))?;
        }
        let attr = self
            .attr(&node)
            .await
            .map_err(|e| self.fail("setattr", Some(&node), &e))?;
        Ok(self.entry(&node, attr))
    }

    pub async fn mkdir_op(&self, parent: u64, name: &str) -> OpResult<Entry> {
        if self.in_contents(&[parent]) {
            return Err(self.read_only_contents("mkdir", parent, Some(name)));
        }
        let node = self
            .mkdir(parent, name)
            .await
            .map_err(|e| self.fail_in("mkdir", parent, name, &e))?;
        let entry = Entry {
            attr: self.make_attr(&node, 0),
            ttl: Duration::ZERO,
        };
        Ok(self.given(&node, entry))
    }

    /// rmdir (`dir`) or unlink.
    pub async fn remove_op(&self, parent: u64, name: &str, dir: bool) -> OpResult<()> {
        if self.in_contents(&[parent]) {
            return Err(self.read_only_contents(if dir { "rmdir" } else { "unlink" }, parent, Some(name)));
        }
        let op = if dir { "rmdir" } else { "unlink" };
        self.remove(parent, name, dir)
            .await
            .map_err(|e| self.fail_in(op, parent, name, &e))
    }

    pub async fn symlink_op(self: &Arc<Self>, parent: u64, name: &str, target: &str) -> OpResult<Entry> {
        if self.in_contents(&[parent]) {
            return Err(self.read_only_contents("symlink", parent, Some(name)));
        }
        let node = self
            .symlink(parent, name, target)
            .await
            .map_err(|e| self.fail_in("symlink", parent, name, &e))?;
        let entry = Entry {
            attr: self.make_attr(&node, target.len() as u64),
            ttl: Duration::ZERO,
        };
        Ok(self.given(&node, entry))
    }

    pub async fn rename_op(&self, parent: u64, name: &str, newparent: u64, newname: &str) -> OpResult<()> {
        if self.in_contents(&[parent, newparent]) {
            let (dir, name) = if self.in_contents(&[parent]) {
                (parent, name)
            } else {
                (newparent, newname)
            };
            return Err(self.read_only_contents("rename", dir, Some(name)));
        }
        self.rename(parent, name, newparent, newname)
            .await
            .map_err(|e| self.fail_in("rename", parent, name, &e))
    }

    pub async fn link_op(&self, ino: u64, newparent: u64, newname: &str) -> OpResult<Entry> {
        if self.in_contents(&[ino, newparent]) {
            let failed = if self.in_contents(&[ino]) {
                self.read_only_contents("link", ino, None)
            } else {
                self.read_only_contents("link", newparent, Some(newname))
            };
            return Err(failed);
        }
        let node = async {
            let (src, dst) = (self.node(ino)?, self.node(newparent)?);
            self.hard_link(&src, &dst, newname).await
        }
        .await
        .map_err(|e| self.fail_in("link", newparent, newname, &e))?;
        let attr = self.attr(&node).await.map_err(|e| self.fail("link", Some(&node), &e))?;
        Ok(self.given(&node, self.entry(&node, attr)))
    }

    /// Extended attributes of a node, as (name, value) pairs.
    pub async fn xattrs_op(&self, op: &str, ino: u64) -> OpResult<Vec<(String, Vec<u8>)>> {
        if let Some(attrs) = self.contents_xattrs(ino).await {
            return attrs.map_err(|e| self.fail_ino(op, ino, &e));
        }
        let node = self.node(ino).map_err(|e| self.fail_ino(op, ino, &e))?;
        let attrs = self.xattrs(&node).await.map_err(|e| self.fail_ino(op, ino, &e))?;
        Ok(attrs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_bytes()))
            .collect())
    }

    /// Everything in a directory, `.` and `..` first.
    pub async fn list_dir(self: &Arc<Self>, ino: u64) -> OpResult<Vec<Listed>> {
        let node = self.node(ino).map_err(|e| self.fail("opendir", None, &e))?;
        let children = self
            .list(&node)
            .await
            .map_err(|e| self.fail("opendir", Some(&node), &e))?;
        let mut entries = vec![
            Listed {
                ino,
                kind: FileKind::Directory,
                name: ".".into(),
            },
            Listed {
                ino,
                kind: FileKind::Directory,
                name: "..".into(),
            },
        ];
        entries.extend(children.into_iter().map(|(name, child)| Listed {
            ino: self.inodes.ino(&child),
            kind: contents::special_file_type(&child).unwrap_or(kind_of(child.file_type())),
            name,
        }));
        // `ls -l _tags` reads every link: once it looks at the first one,
        // resolve the tags in the background, with bounded concurrency, so
        // those reads find their answers cached.
        if let Node::TagsDir(repo) = &node {
            if let Some(tags) = self.view.peek_tags(repo) {
                let look = self.view.expect_tag_look(repo);
                let core = self.clone();
                let repo = repo.clone();
                tokio::spawn(async move {
                    core.view.prefetch_after_a_look(&repo, &tags, look).await;
                });
            }
        }
        Ok(entries)
    }

    /// opendir: list the directory once, keep the listing under a handle.
    pub async fn opendir(self: &Arc<Self>, ino: u64) -> OpResult<u64> {
        let entries = self.list_dir(ino).await?;
        Ok(self.handles.open_dir(entries))
    }

    /// The listing kept by `opendir`.
    pub fn listing(&self, fh: u64) -> OpResult<Arc<Vec<Listed>>> {
        self.handles.dir(fh).ok_or_else(|| {
            let e = FsError::new(Cause::BadHandle, format!("no open directory handle {fh}"));
            self.fail_at("readdir", "", &e)
        })
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.close_dir(fh);
    }

    /// `df` on the mount: (cached blobs, bytes used, limit) of the disk cache.
    pub fn cache_use(&self) -> (u64, u64, u64) {
        self.view.blobs.cache_use()
    }
}
