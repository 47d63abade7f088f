//! One entry of a layer's table of contents: what a tar header (or an eStargz
//! TOC line) says about a path, plus where its bytes live.

use serde::{Deserialize, Serialize};

/// The type of an entry, as the tar header gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// A hard link; `link` names the target path (normalized). In a tree it is
    /// resolved to the target's entry, so it never reaches the caller as a kind.
    HardLink,
    Char,
    Block,
    Fifo,
}

/// Where an entry's bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Data {
    /// No data (directories, links, devices, empty files).
    None,
    /// `size` bytes at `offset` of the uncompressed layer stream.
    Contiguous { offset: u64 },
    /// A GNU sparse file: the stored chunks follow each other from `offset`;
    /// `map` holds (logical offset, length) of each chunk, holes read as zeros.
    Sparse { offset: u64, map: Box<[(u64, u64)]> },
    /// eStargz: each chunk is its own gzip member, verified by its own digest.
    Chunks(Box<[Chunk]>),
    /// The bytes cannot be served (truncated layer, unsupported encoding, a
    /// hard link whose target is missing): reads fail with EIO.
    Broken,
}

/// One eStargz chunk of a regular file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Offset of the chunk within the file.
    pub file_offset: u64,
    /// Uncompressed length.
    pub len: u64,
    /// The compressed bytes of the gzip member holding the chunk: `[start, end)` of the blob.
    pub start: u64,
    pub end: u64,
    /// sha256 of the chunk's uncompressed bytes.
    pub sha256: [u8; 32],
}

/// One extended attribute: name, value.
pub type Xattr = (Box<str>, Box<[u8]>);

/// One table-of-contents entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Normalized path inside the layer: no leading `/` or `./`, no `.` or empty
    /// components, no trailing `/`. The layer's root (`./`) is the empty path.
    pub path: Box<str>,
    pub kind: Kind,
    /// Permission bits (including setuid/setgid/sticky), `0o7777` at most.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Logical size of a regular file (a sparse file's full size); 0 otherwise.
    pub size: u64,
    /// Seconds since the epoch.
    pub mtime: i64,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Symlink target as written, or the normalized path of a hard link's target.
    pub link: Option<Box<str>>,
    /// Extended attributes from PAX `SCHILY.xattr.*` records, in header order.
    pub xattrs: Box<[Xattr]>,
    pub data: Data,
}

impl Entry {
    /// The last path component (empty for the root).
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or("")
    }

    /// The parent directory's path (empty for top-level entries).
    pub fn parent(&self) -> &str {
        match self.path.rfind('/') {
            Some(i) => &self.path[..i],
            None => "",
        }
    }
}

/// Normalizes a path from a tar header or TOC. `None` for paths that must not be
/// applied: absolute, or with a `..` component (the caller logs them).
pub fn normalize_path(raw: &str) -> Option<String> {
    if raw.starts_with('/') {
        return None;
    }
    let mut out = String::with_capacity(raw.len());
    for part in raw.split('/') {
        match part {
            "" | "." => continue,
            ".." => return None,
            _ => {
                if !out.is_empty() {
                    out.push('/');
                }
                out.push_str(part);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_and_escapes_refused() {
        assert_eq!(normalize_path("./etc/passwd").as_deref(), Some("etc/passwd"));
        assert_eq!(normalize_path("etc//x/./y/").as_deref(), Some("etc/x/y"));
        assert_eq!(normalize_path("./").as_deref(), Some(""));
        assert_eq!(normalize_path("/etc/passwd"), None);
        assert_eq!(normalize_path("a/../../b"), None);
        assert_eq!(normalize_path(".."), None);
    }
}
