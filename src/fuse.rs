//! Links fuser's method calls to the core (`crate::core::ops`): each request
//! becomes one core call, polled once on the FUSE thread and moved to a tokio
//! task only if it has to wait (no FUSE thread ever waits on the network;
//! what is already known, in memory or on local disk is answered inline),
//! and its answer becomes one reply. The core has already logged and counted
//! any failure (`crate::error::report`); here it only becomes an errno.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, Request,
};

use crate::core::attr::{Attr, Caching, Entry, FileKind};
use crate::core::ops::OpenMode;
use crate::core::view::View;
use crate::core::Handle;
use crate::core::{Core, Options, MAX_READAHEAD};
use crate::error::Failed;
use crate::passthrough::Passthrough;

pub struct RegFs {
    rt: tokio::runtime::Handle,
    inner: Arc<Core>,
    passthrough: Arc<Passthrough>,
    /// The kernel lets direct-I/O files be mmapped (`Caching::Stream`).
    direct_io_mmap: bool,
}

impl RegFs {
    pub fn new(rt: tokio::runtime::Handle, view: View, opts: Options) -> Self {
        RegFs {
            rt,
            inner: Arc::new(Core::new(view, opts)),
            passthrough: Arc::default(),
            direct_io_mmap: false,
        }
    }

    /// Run `f` with the core: polled once right here on the FUSE thread, and
    /// only if it waits (a registry request, a fetch, a lock) handed to the
    /// runtime, which polls it again with a real waker and finishes it. Most
    /// requests of a walk (`find`, `ls -l`) are answered from what is known
    /// and never wait: answering them here saves the hand-off to a runtime
    /// thread and back (two context switches per request; on 2 busy cores
    /// those switches were most of the daemon's share of `find`).
    fn spawn<F, Fut>(&self, f: F)
    where
        F: FnOnce(Arc<Core>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        // Timers, spawns and I/O created by the first poll belong to the runtime.
        let _in_runtime = self.rt.enter();
        let mut fut = Box::pin(f(self.inner.clone()));
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        if fut.as_mut().poll(&mut cx).is_pending() {
            // Whatever it waits for is asked again on the runtime's first
            // poll, which registers the runtime's waker (the noop one is never
            // the only one told).
            self.rt.spawn(fut);
        }
    }
}

fn errno(f: Failed) -> Errno {
    Errno::from_i32(f.0)
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::Directory => FileType::Directory,
        FileKind::RegularFile => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::NamedPipe => FileType::NamedPipe,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.crtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: a.flags,
    }
}

fn open_flags(c: Caching, direct_io_mmap: bool) -> FopenFlags {
    match c {
        Caching::Keep => FopenFlags::FOPEN_KEEP_CACHE,
        Caching::Stream if direct_io_mmap => FopenFlags::FOPEN_DIRECT_IO,
        Caching::Stream => FopenFlags::FOPEN_KEEP_CACHE,
        Caching::Direct => FopenFlags::FOPEN_DIRECT_IO,
        Caching::Default => FopenFlags::empty(),
    }
}

fn reply_entry(reply: ReplyEntry, r: Result<Entry, Failed>) {
    match r {
        Ok(e) => reply.entry(&e.ttl, &file_attr(&e.attr), Generation(0)),
        Err(f) => reply.error(errno(f)),
    }
}

fn reply_attr(reply: ReplyAttr, r: Result<Entry, Failed>) {
    match r {
        Ok(e) => reply.attr(&e.ttl, &file_attr(&e.attr)),
        Err(f) => reply.error(errno(f)),
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), Failed>) {
    match r {
        Ok(()) => reply.ok(),
        Err(f) => reply.error(errno(f)),
    }
}

fn reply_data(reply: ReplyData, r: Result<impl AsRef<[u8]>, Failed>) {
    match r {
        Ok(d) => reply.data(d.as_ref()),
        Err(f) => reply.error(errno(f)),
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

fn name_of(name: &OsStr) -> String {
    name.to_string_lossy().to_string()
}

impl Filesystem for RegFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(MAX_READAHEAD);
        // Without it an mmap of a direct-I/O file fails (ENODEV): cold blobs
        // then keep the page cache (`Caching::Stream`).
        self.direct_io_mmap = config
            .add_capabilities(fuser::InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_ok();
        if Passthrough::wanted() {
            match config.add_capabilities(fuser::InitFlags::FUSE_PASSTHROUGH) {
                // Depth 1: backing files live on a plain filesystem, and this
                // mount can still be a lower layer of an overlayfs.
                Ok(()) if config.set_max_stack_depth(1).is_ok() => {
                    self.passthrough.enable();
                    tracing::info!("FUSE passthrough on: verified cached blobs are read by the kernel directly");
                }
                _ => tracing::info!("the kernel offers no FUSE passthrough; every read goes through the daemon"),
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_str().map(str::to_string);
        self.spawn(move |fs| async move { reply_entry(reply, fs.lookup(parent.0, name.as_deref()).await) });
    }

    /// The kernel dropped inodes: the table forgets them (bounded memory).
    /// `batch_forget` is fuser's default, one `forget` per inode (fuser 0.18
    /// does not export the type its slice holds).
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inner.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.spawn(move |fs| async move { reply_attr(reply, fs.getattr(ino.0).await) });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn(move |fs| async move { reply_data(reply, fs.readlink(ino.0).await) });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mode = OpenMode::from_flags(flags.0);
        let passthrough = self.passthrough.clone();
        let dio_mmap = self.direct_io_mmap;
        self.spawn(move |fs| async move {
            match fs.open(ino.0, mode).await {
                Ok((fh, caching)) => {
                    let handle = fs.handles.file(fh);
                    let backing = match handle.as_deref() {
                        Some(Handle::Blob { file, .. }) => passthrough.open(ino.0, fh, file, &reply, &fs.view.stats),
                        _ => None,
                    };
                    match backing {
                        // The kernel refuses a passthrough open with any flag
                        // outside its mask (FOPEN_KEEP_CACHE among them): EIO.
                        Some(b) => reply.opened_passthrough(
                            FileHandle(fh),
                            open_flags(caching, dio_mmap) - FopenFlags::FOPEN_KEEP_CACHE,
                            &b,
                        ),
                        None => reply.opened(FileHandle(fh), open_flags(caching, dio_mmap)),
                    }
                }
                Err(f) => reply.error(errno(f)),
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
        // Bytes already in memory or on disk are answered right here (a
        // page-cache read); only reads that must wait for the network go to a task.
        let answer = {
            let _runtime = self.rt.enter();
            self.inner.read_now(ino.0, fh.0, offset, size)
        };
        match answer {
            Some(r) => reply_data(reply, r),
            None => {
                self.spawn(move |fs| async move { reply_data(reply, fs.read_wait(ino.0, fh.0, offset, size).await) })
            }
        }
    }

    /// Every close() of a file being written commits it (pushes), and the
    /// push's result is what close() returns.
    fn flush(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        self.spawn(move |fs| async move { reply_empty(reply, fs.commit_fh("close", ino.0, fh.0).await) });
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.spawn(move |fs| async move { reply_empty(reply, fs.commit_fh("fsync", ino.0, fh.0).await) });
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
        let written = {
            let _runtime = self.rt.enter();
            self.inner.write(ino.0, fh.0, offset, data)
        };
        match written {
            Ok(n) => reply.written(n),
            Err(f) => reply.error(errno(f)),
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
        match self.inner.create(parent.0, &name_of(name)) {
            Ok((e, fh)) => reply.created(
                &e.ttl,
                &file_attr(&e.attr),
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(f) => reply.error(errno(f)),
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
        let mtime = mtime.map(|t| match t {
            fuser::TimeOrNow::SpecificTime(t) => Some(t),
            fuser::TimeOrNow::Now => None,
        });
        self.spawn(move |fs| async move { reply_attr(reply, fs.setattr(ino.0, size, mtime).await) });
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        let name = name_of(name);
        self.spawn(move |fs| async move { reply_entry(reply, fs.mkdir_op(parent.0, &name).await) });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_of(name);
        self.spawn(move |fs| async move { reply_empty(reply, fs.remove_op(parent.0, &name, true).await) });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_of(name);
        self.spawn(move |fs| async move { reply_empty(reply, fs.remove_op(parent.0, &name, false).await) });
    }

    fn symlink(&self, _req: &Request, parent: INodeNo, link_name: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        let (name, target) = (name_of(link_name), target.to_string_lossy().to_string());
        self.spawn(move |fs| async move { reply_entry(reply, fs.symlink_op(parent.0, &name, &target).await) });
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
        let (name, newname) = (name_of(name), name_of(newname));
        self.spawn(
            move |fs| async move { reply_empty(reply, fs.rename_op(parent.0, &name, newparent.0, &newname).await) },
        );
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let newname = name_of(newname);
        self.spawn(move |fs| async move { reply_entry(reply, fs.link_op(ino.0, newparent.0, &newname).await) });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: fuser::ReplyXattr) {
        let name = name.to_str().unwrap_or_default().to_string();
        self.spawn(move |fs| async move {
            match fs.xattrs_op("getxattr", ino.0).await {
                Ok(attrs) => match attrs.into_iter().find(|(k, _)| *k == name) {
                    Some((_, value)) => reply_xattr(reply, size, &value),
                    None => reply.error(Errno::from_i32(libc::ENODATA)),
                },
                Err(f) => reply.error(errno(f)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        self.spawn(move |fs| async move {
            match fs.xattrs_op("listxattr", ino.0).await {
                Ok(attrs) => {
                    let names: Vec<u8> = attrs.iter().flat_map(|(k, _)| k.bytes().chain([0])).collect();
                    reply_xattr(reply, size, &names)
                }
                Err(f) => reply.error(errno(f)),
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
        let pending = self.inner.release(fh.0);
        self.passthrough.release(fh.0);
        reply.ok();
        if let Some(id) = pending {
            self.spawn(move |fs| async move { fs.finish_release(id).await });
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.spawn(move |fs| async move {
            match fs.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(f) => reply.error(errno(f)),
            }
        });
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let entries = match self.inner.listing(fh.0) {
            Ok(e) => e,
            Err(f) => return reply.error(errno(f)),
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(e.ino), (i + 1) as u64, file_type(e.kind), &e.name) {
                break;
            }
        }
        reply.ok();
    }

    /// `df` on the mount: the disk cache's use against its limit (what a
    /// reader of this mount can run out of); files are the cached blobs.
    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: fuser::ReplyStatfs) {
        const BSIZE: u64 = 4096;
        let (blobs, used, limit) = self.inner.cache_use();
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
        self.inner.releasedir(fh.0);
        reply.ok();
    }
}
