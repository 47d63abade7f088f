//! The fuser `Filesystem`: a thin dispatcher. Each request is resolved to a
//! `Node`, handed to a tokio task (no FUSE thread ever waits on the network),
//! and answered from there.

use std::ffi::OsStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, Request,
};

use crate::core::node::{Kind, Node};
use crate::core::view::View;
use crate::core::{contents, write, Core, DirEntry, Handle, Options, Staging, MAX_READAHEAD, STABLE_MTIME};
use crate::error::FsError;

pub struct RegFs {
    rt: tokio::runtime::Handle,
    inner: Arc<Core>,
}

impl RegFs {
    pub fn new(rt: tokio::runtime::Handle, view: View, staging: Staging, opts: Options) -> Self {
        RegFs {
            rt,
            inner: Arc::new(Core::new(view, staging, opts)),
        }
    }

    /// Image contents (`rootfs/`, `_layers/`) are read-only views: any change there is EROFS.
    fn in_contents(&self, inos: &[INodeNo]) -> bool {
        inos.iter()
            .any(|i| self.inner.inodes.get(i.0).is_some_and(|n| n.is_contents()))
    }

    /// Run `f` on the runtime with the shared state.
    fn spawn<F, Fut>(&self, f: F)
    where
        F: FnOnce(Arc<Core>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(f(self.inner.clone()));
    }
}

impl Filesystem for RegFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(MAX_READAHEAD);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_str().map(str::to_string);
        let parent_ino = parent;
        self.spawn(move |fs| async move {
            let parent = match fs.node(parent) {
                Ok(n) => n,
                Err(e) => return reply.error(fs.fail("lookup", None, &e)),
            };
            let Some(name) = name else {
                return reply.error(Errno::ENOENT);
            };
            // A file being written hides whatever the registry has under its name.
            if matches!(parent, Node::ContentsDir(..)) {
                let child = match fs.contents_lookup(&parent, &name).await {
                    Ok(c) => c,
                    Err(e) => return reply.error(fs.fail("lookup", Some(&parent), &e)),
                };
                return match fs.attr(&child).await {
                    Ok(attr) => reply.entry(&fs.ttl(&child), &attr, Generation(0)),
                    Err(e) => reply.error(fs.fail("lookup", Some(&child), &e)),
                };
            }
            let child = match fs.staging.find(&parent, &name) {
                Some(id) if !fs.staging.is_settled(id) => Node::Staged(id),
                Some(_) => match parent.child(&name) {
                    Some(c) => c,
                    None => return reply.error(Errno::ENOENT),
                },
                None => match parent.child(&name) {
                    Some(c) => c,
                    None => return reply.error(Errno::ENOENT),
                },
            };
            let child = match fs.resolve(child).await {
                Ok(c) => c,
                Err(e) => return reply.error(fs.fail_in("lookup", parent_ino, &name, &e)),
            };
            match fs.attr(&child).await {
                Ok(attr) => reply.entry(&fs.ttl(&child), &attr, Generation(0)),
                Err(e) => reply.error(fs.fail("lookup", Some(&child), &e)),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.spawn(move |fs| async move {
            let node = match fs.node(ino) {
                Ok(n) => n,
                Err(e) => return reply.error(fs.fail("getattr", None, &e)),
            };
            match fs.attr(&node).await {
                Ok(attr) => reply.attr(&fs.ttl(&node), &attr),
                Err(e) => reply.error(fs.fail("getattr", Some(&node), &e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn(move |fs| async move {
            let node = match fs.node(ino) {
                Ok(n) => n,
                Err(e) => return reply.error(fs.fail("readlink", None, &e)),
            };
            match fs.link_target(&node).await {
                Ok(target) => reply.data(target.as_bytes()),
                Err(e) => reply.error(fs.fail("readlink", Some(&node), &e)),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let writing = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        let truncate = flags.0 & libc::O_TRUNC != 0;
        if writing && self.in_contents(&[ino]) {
            return reply.error(Errno::EROFS);
        }
        self.spawn(move |fs| async move {
            let node = match fs.node(ino) {
                Ok(n) => n,
                Err(e) => return reply.error(fs.fail("open", None, &e)),
            };
            let opened = if writing {
                fs.open_for_write(&node, truncate)
                    .map(|id| (Handle::Staged(id), FopenFlags::FOPEN_DIRECT_IO))
            } else {
                fs.open(&node).await
            };
            match opened {
                Ok((handle, flags)) => {
                    let fh = fs.next_fh.fetch_add(1, Ordering::Relaxed);
                    fs.files.lock().unwrap().insert(fh, Arc::new(handle));
                    reply.opened(FileHandle(fh), flags);
                }
                Err(e) => reply.error(fs.fail("open", Some(&node), &e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(handle) = self.inner.files.lock().unwrap().get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        match &*handle {
            Handle::Contents(file) => {
                let file = file.clone();
                self.spawn(move |fs| async move {
                    match file.read(offset, u64::from(size)).await {
                        Ok(data) => reply.data(&data),
                        Err(e) => {
                            let node = fs.node(ino).ok();
                            reply.error(fs.fail("read", node.as_ref(), &e))
                        }
                    }
                })
            }
            Handle::Export(export) => {
                let export = export.clone();
                self.spawn(move |fs| async move {
                    match fs.view.read_export(&export, offset, u64::from(size)).await {
                        Ok(data) => reply.data(&data),
                        Err(e) => {
                            let node = fs.node(ino).ok();
                            reply.error(fs.fail("read", node.as_ref(), &e))
                        }
                    }
                })
            }
            Handle::Staged(id) | Handle::StagedRead(id) => match self.inner.staging.get(*id) {
                Some(f) => match f.lock().unwrap().read(offset, u64::from(size)) {
                    Ok(data) => reply.data(&data),
                    Err(e) => {
                        let node = self.inner.node(ino).ok();
                        reply.error(self.inner.fail("read", node.as_ref(), &e))
                    }
                },
                None => reply.error(Errno::EBADF),
            },
            Handle::Bytes(b) => {
                let start = (offset as usize).min(b.len());
                let end = start.saturating_add(size as usize).min(b.len());
                reply.data(&b[start..end]);
            }
            Handle::Blob { file, state } => {
                // Bytes already on disk are answered right here (a page-cache
                // read); only reads that must wait for the network go to a task.
                let _runtime = self.rt.enter();
                match file.try_read(offset, u64::from(size), state) {
                    Ok(Some(data)) => return reply.data(&data),
                    Ok(None) => {}
                    Err(e) => {
                        let node = self.inner.node(ino).ok();
                        return reply.error(self.inner.fail("read", node.as_ref(), &e));
                    }
                }
                let (file, handle) = (file.clone(), handle.clone());
                self.spawn(move |fs| async move {
                    let Handle::Blob { state, .. } = &*handle else {
                        unreachable!()
                    };
                    let end = offset.saturating_add(u64::from(size));
                    match file.wait_and_read(offset, end, state).await {
                        Ok(data) => reply.data(&data),
                        Err(e) => {
                            let node = fs.node(ino).ok();
                            reply.error(fs.fail("read", node.as_ref(), &e))
                        }
                    }
                })
            }
        }
    }

    /// Every close() of a file being written commits it (pushes), and the
    /// push's result is what close() returns.
    fn flush(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        self.commit_handle("close", ino, fh, reply);
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.commit_handle("fsync", ino, fh, reply);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        let id = match self.inner.files.lock().unwrap().get(&fh.0).map(|h| match **h {
            Handle::Staged(id) => Some(id),
            _ => None,
        }) {
            Some(Some(id)) => id,
            _ => return reply.error(Errno::EBADF),
        };
        let Some(f) = self.inner.staging.get(id) else {
            return reply.error(Errno::EBADF);
        };
        let result = f.lock().unwrap().write(offset, data);
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => {
                let node = self.inner.node(ino).ok();
                reply.error(self.inner.fail("write", node.as_ref(), &e))
            }
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        if self.in_contents(&[parent]) {
            return reply.error(Errno::EROFS);
        }
        let name = name.to_string_lossy().to_string();
        let result = self.inner.node(parent).and_then(|parent| {
            self.inner.check_manifest_dir_writable(&parent)?;
            write::check_create(&parent, &name)?;
            self.inner.staging.create(&parent, &name)
        });
        match result {
            Ok(id) => {
                let node = Node::Staged(id);
                let attr = self.inner.make_attr(&node, 0);
                let fh = self.inner.next_fh.fetch_add(1, Ordering::Relaxed);
                self.inner
                    .files
                    .lock()
                    .unwrap()
                    .insert(fh, Arc::new(Handle::Staged(id)));
                reply.created(
                    &Duration::ZERO,
                    &attr,
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::FOPEN_DIRECT_IO,
                );
            }
            Err(e) => reply.error(self.inner.fail_in("create", parent, &name, &e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if self.in_contents(&[ino]) {
            return reply.error(Errno::EROFS);
        }
        self.spawn(move |fs| async move {
            let node = match fs.node(ino) {
                Ok(n) => n,
                Err(e) => return reply.error(fs.fail("setattr", None, &e)),
            };
            // Modes, owners and times (rsync -a sets them on everything it
            // writes) change nothing that matters: accepted, ignored. A size
            // change is only possible on a file being written. A new mtime on
            // a read-only file (`touch manifest.json`) is refused as its open
            // for writing was: the file cannot change, and saying so beats a
            // silent success (setting the mtime it already has is fine).
            let new_mtime = match mtime {
                Some(fuser::TimeOrNow::SpecificTime(t)) if t == STABLE_MTIME => None,
                other => other,
            };
            if new_mtime.is_some() && node.kind() == Kind::File && !matches!(node, Node::Staged(_)) {
                let e = FsError::new(libc::EPERM, "read-only file: its time cannot change");
                return reply.error(fs.fail("setattr", Some(&node), &e));
            }
            if let Some(size) = size {
                let result = match &node {
                    Node::Staged(id) => match fs.staging.get(*id) {
                        Some(f) => f.lock().unwrap().truncate(size),
                        None => Err(FsError::new(libc::ENOENT, "file being written is gone")),
                    },
                    n => Err(FsError::new(libc::EPERM, format!("{} is immutable", n.path()))),
                };
                if let Err(e) = result {
                    return reply.error(fs.fail("truncate", Some(&node), &e));
                }
            }
            match fs.attr(&node).await {
                Ok(attr) => reply.attr(&fs.ttl(&node), &attr),
                Err(e) => reply.error(fs.fail("setattr", Some(&node), &e)),
            }
        });
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        if self.in_contents(&[parent]) {
            return reply.error(Errno::EROFS);
        }
        let name = name.to_string_lossy().to_string();
        self.spawn(move |fs| async move {
            match fs.mkdir(parent, &name).await {
                Ok(node) => {
                    let attr = fs.make_attr(&node, 0);
                    reply.entry(&Duration::ZERO, &attr, Generation(0))
                }
                Err(e) => reply.error(fs.fail_in("mkdir", parent, &name, &e)),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if self.in_contents(&[parent]) {
            return reply.error(Errno::EROFS);
        }
        let name = name.to_string_lossy().to_string();
        self.spawn(move |fs| async move {
            match fs.remove(parent, &name, true).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(fs.fail_in("rmdir", parent, &name, &e)),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if self.in_contents(&[parent]) {
            return reply.error(Errno::EROFS);
        }
        let name = name.to_string_lossy().to_string();
        self.spawn(move |fs| async move {
            match fs.remove(parent, &name, false).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(fs.fail_in("unlink", parent, &name, &e)),
            }
        });
    }

    fn symlink(&self, _req: &Request, parent: INodeNo, link_name: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        if self.in_contents(&[parent]) {
            return reply.error(Errno::EROFS);
        }
        let name = link_name.to_string_lossy().to_string();
        let target = target.to_string_lossy().to_string();
        self.spawn(move |fs| async move {
            match fs.symlink(parent, &name, &target).await {
                Ok(node) => {
                    let attr = fs.make_attr(&node, target.len() as u64);
                    reply.entry(&Duration::ZERO, &attr, Generation(0))
                }
                Err(e) => reply.error(fs.fail_in("symlink", parent, &name, &e)),
            }
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        if self.in_contents(&[parent, newparent]) {
            return reply.error(Errno::EROFS);
        }
        let (name, newname) = (
            name.to_string_lossy().to_string(),
            newname.to_string_lossy().to_string(),
        );
        self.spawn(move |fs| async move {
            match fs.rename(parent, &name, newparent, &newname).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(fs.fail_in("rename", parent, &name, &e)),
            }
        });
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        if self.in_contents(&[ino, newparent]) {
            return reply.error(Errno::EROFS);
        }
        let newname = newname.to_string_lossy().to_string();
        self.spawn(move |fs| async move {
            let result = async {
                let (src, dst) = (fs.node(ino)?, fs.node(newparent)?);
                fs.hard_link(&src, &dst, &newname).await
            };
            match result.await {
                Ok(node) => match fs.attr(&node).await {
                    Ok(attr) => reply.entry(&fs.ttl(&node), &attr, Generation(0)),
                    Err(e) => reply.error(fs.fail("link", Some(&node), &e)),
                },
                Err(e) => reply.error(fs.fail_in("link", newparent, &newname, &e)),
            }
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: fuser::ReplyXattr) {
        let name = name.to_str().unwrap_or_default().to_string();
        self.spawn(move |fs| async move {
            if let Some(attrs) = fs.contents_xattrs(ino).await {
                return match attrs {
                    Ok(attrs) => match attrs.into_iter().find(|(k, _)| *k == name) {
                        Some((_, value)) => reply_xattr(reply, size, &value),
                        None => reply.error(Errno::from_i32(libc::ENODATA)),
                    },
                    Err(e) => reply.error(fs.fail_ino("getxattr", ino, &e)),
                };
            }
            let attrs = match fs.node(ino) {
                Ok(node) => fs.xattrs(&node).await,
                Err(e) => Err(e),
            };
            match attrs {
                Ok(attrs) => match attrs.into_iter().find(|(k, _)| *k == name) {
                    Some((_, value)) => reply_xattr(reply, size, value.as_bytes()),
                    None => reply.error(Errno::from_i32(libc::ENODATA)),
                },
                Err(e) => reply.error(fs.fail_ino("getxattr", ino, &e)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        self.spawn(move |fs| async move {
            if let Some(attrs) = fs.contents_xattrs(ino).await {
                return match attrs {
                    Ok(attrs) => {
                        let names: Vec<u8> = attrs.iter().flat_map(|(k, _)| k.bytes().chain([0])).collect();
                        reply_xattr(reply, size, &names)
                    }
                    Err(e) => reply.error(fs.fail_ino("listxattr", ino, &e)),
                };
            }
            let attrs = match fs.node(ino) {
                Ok(node) => fs.xattrs(&node).await,
                Err(e) => Err(e),
            };
            match attrs {
                Ok(attrs) => {
                    let names: Vec<u8> = attrs.iter().flat_map(|(k, _)| k.bytes().chain([0])).collect();
                    reply_xattr(reply, size, &names)
                }
                Err(e) => reply.error(fs.fail_ino("listxattr", ino, &e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let handle = self.inner.files.lock().unwrap().remove(&fh.0);
        reply.ok();
        if let Some(Handle::Staged(id)) = handle.as_deref() {
            // Normally flush committed already; commit what a writer left
            // unflushed (errors can only be logged here), then let the tree serve it.
            let id = *id;
            self.spawn(move |fs| async move {
                let _ = fs.commit(id).await;
                fs.settle_staged(id);
            });
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.spawn(move |fs| async move {
            let node = match fs.node(ino) {
                Ok(n) => n,
                Err(e) => return reply.error(fs.fail("opendir", None, &e)),
            };
            match fs.list(&node).await {
                Ok(children) => {
                    let mut entries = vec![
                        DirEntry {
                            ino: ino.0,
                            kind: Kind::Directory,
                            name: ".".into(),
                            special: None,
                        },
                        DirEntry {
                            ino: ino.0,
                            kind: Kind::Directory,
                            name: "..".into(),
                            special: None,
                        },
                    ];
                    entries.extend(children.into_iter().map(|(name, child)| DirEntry {
                        ino: fs.inodes.ino(&child),
                        kind: child.kind(),
                        special: contents::special_file_type(&child),
                        name,
                    }));
                    if let Node::TagsDir(repo) = &node {
                        prefetch_tag_digests(&fs, repo);
                    }
                    let fh = fs.next_fh.fetch_add(1, Ordering::Relaxed);
                    fs.dirs.lock().unwrap().insert(fh, Arc::new(entries));
                    reply.opened(FileHandle(fh), FopenFlags::empty());
                }
                Err(e) => reply.error(fs.fail("opendir", Some(&node), &e)),
            }
        });
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Some(entries) = self.inner.dirs.lock().unwrap().get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            let kind = e.special.unwrap_or(match e.kind {
                Kind::Directory => fuser::FileType::Directory,
                Kind::File => fuser::FileType::RegularFile,
                Kind::Symlink => fuser::FileType::Symlink,
            });
            if reply.add(INodeNo(e.ino), (i + 1) as u64, kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    /// `df` on the mount: the disk cache's use against its limit (what a
    /// reader of this mount can run out of); files are the cached blobs.
    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: fuser::ReplyStatfs) {
        const BSIZE: u64 = 4096;
        let (blobs, used, limit) = self.inner.view.blobs.cache_use();
        let blocks = limit.div_ceil(BSIZE);
        let free = blocks.saturating_sub(used.div_ceil(BSIZE));
        reply.statfs(
            blocks,
            free,
            free,
            blobs,
            u64::from(u32::MAX),
            BSIZE as u32,
            255,
            BSIZE as u32,
        );
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.inner.dirs.lock().unwrap().remove(&fh.0);
        reply.ok();
    }
}

/// Answer a getxattr/listxattr: the size when asked for it (size 0), ERANGE
/// when the caller's buffer is too small, else the bytes.
fn reply_xattr(reply: fuser::ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(value);
    }
}

/// `ls -l _tags` reads every link: resolve the tags in the background, with
/// bounded concurrency, so those reads find their answers cached.
fn prefetch_tag_digests(fs: &Arc<Core>, repo: &str) {
    let Some(tags) = fs.view.peek_tags(repo) else {
        return;
    };
    let fs = fs.clone();
    let repo = repo.to_string();
    tokio::spawn(async move {
        fs.view.prefetch_tag_digests(&repo, &tags).await;
    });
}

impl RegFs {
    /// flush/fsync of a file being written: commit it and answer with the result.
    fn commit_handle(&self, op: &'static str, ino: INodeNo, fh: FileHandle, reply: ReplyEmpty) {
        let id = self.inner.files.lock().unwrap().get(&fh.0).and_then(|h| match **h {
            Handle::Staged(id) => Some(id),
            _ => None,
        });
        let Some(id) = id else { return reply.ok() };
        self.spawn(move |fs| async move {
            match fs.commit(id).await {
                Ok(()) => reply.ok(),
                Err(e) => {
                    let node = fs.node(ino).ok();
                    reply.error(fs.fail(op, node.as_ref(), &e))
                }
            }
        });
    }
}
