//! The core's own attribute, file-type and open-mode types: what fuser's
//! would carry, without fuser (`crate::fuse` converts at the edge).

use std::time::SystemTime;

/// The type of a file, as a directory entry or stat reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    Directory,
    RegularFile,
    Symlink,
    CharDevice,
    BlockDevice,
    NamedPipe,
}

/// What stat says of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub crtime: SystemTime,
    pub kind: FileKind,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
    pub flags: u32,
}

/// How the kernel may cache an open file's pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caching {
    /// Content-addressed: keep pages across opens.
    Keep,
    /// Changes between reads (status text, files being written): no page cache.
    Direct,
    /// The kernel's default (pages dropped at open).
    Default,
    /// A blob not cached yet, read as it arrives: no page cache when the
    /// kernel allows mmap of such files (FUSE_DIRECT_IO_ALLOW_MMAP), so a cold
    /// read costs one copy less (the pages would be a second in-memory copy
    /// beside the cache file's); else `Keep`. Later opens of the verified
    /// blob use `Keep` (or passthrough).
    Stream,
}

/// An answer to lookup/getattr: the attributes and how long the kernel may trust them.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub attr: Attr,
    pub ttl: std::time::Duration,
}

/// One name in a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub ino: u64,
    pub kind: FileKind,
    pub name: String,
}
