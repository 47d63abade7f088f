//! Caches: immutable content by digest (manifests in memory + disk, blobs on disk),
//! and mutable metadata by name with a TTL.

pub mod blobs;
pub mod manifests;
pub mod ttl;

pub use blobs::{BlobFile, BlobStore, CacheTenant, ReadState};
pub use manifests::{CachedManifest, ManifestStore};
pub use ttl::TtlCache;

/// An error as the filesystem needs it: the errno and a message for the log.
/// Cloneable, so one failed fetch can answer every caller that waited on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsError {
    pub errno: i32,
    pub message: String,
}

impl std::fmt::Display for FsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl FsError {
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        FsError {
            errno,
            message: message.into(),
        }
    }
}

impl From<crate::registry::RegistryError> for FsError {
    fn from(e: crate::registry::RegistryError) -> Self {
        FsError {
            errno: e.errno(),
            message: e.to_string(),
        }
    }
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> Self {
        FsError {
            errno: e.raw_os_error().unwrap_or(libc::EIO),
            message: format!("local I/O: {e}"),
        }
    }
}

pub type FsResult<T> = std::result::Result<T, FsError>;
