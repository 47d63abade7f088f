//! The one errno table. Errors below this floor (`registry/`, `oci/`) are
//! domain errors that know nothing of errno; each says its errno here, through
//! `ToErrno` (as in mountpoint-s3's `fs/error.rs`). `FsError` is what the core
//! and the store return: a `Cause` (named, no errno) and a message, cloneable
//! so one failed fetch can answer every caller that waited on it;
//! `Cause::errno` is the only place a cause becomes a number. `report` is the one place a failed
//! operation is logged and counted in `.regfs/stats`; the FUSE adapter replies
//! with the errno it returns.

use crate::registry::RegistryError;
use crate::stats::Stats;

/// The errno a filesystem caller sees for an error.
pub trait ToErrno {
    fn to_errno(&self) -> i32;
}

/// Why an operation failed, in the filesystem's own words. The core and the
/// store choose a cause; only `Cause::errno` turns it into a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    /// No such entry: a name the registry does not have, a missing member.
    NotFound,
    /// The inode or handle is no longer known (pushed, tree changed): look it up again.
    Stale,
    /// A name, tag, link target or content that cannot be valid here.
    Invalid,
    /// Not allowed on this entry: immutable content, a directory that takes
    /// no files, a delete without `--allow-delete`.
    NotPermitted,
    /// The registry refused us access.
    Denied,
    /// The registry asks us to slow down.
    RateLimited,
    /// Larger than the limit for its kind (manifests, JSON members).
    TooLarge,
    /// The entry exists already.
    Exists,
    /// A rename across directories.
    CrossDirectory,
    NotADirectory,
    IsADirectory,
    /// A foreign layer: its bytes live elsewhere (its URLs), not in the registry.
    Remote,
    /// The registry cannot do this (e.g. delete a tag).
    Unsupported,
    /// The cache's disk is full.
    NoSpace,
    /// The mount is read-only.
    ReadOnly,
    /// An unknown file handle.
    BadHandle,
    /// Wrong or missing bytes: from the registry, the cache, or a push that
    /// could not complete (digest mismatch, held too long, refused mount).
    Io,
    /// Local I/O failed with this OS error, passed on as it is.
    Os(i32),
}

impl Cause {
    /// The one errno table.
    pub const fn errno(self) -> i32 {
        match self {
            Cause::NotFound => libc::ENOENT,
            Cause::Stale => libc::ESTALE,
            Cause::Invalid => libc::EINVAL,
            Cause::NotPermitted => libc::EPERM,
            Cause::Denied => libc::EACCES,
            Cause::RateLimited => libc::EAGAIN,
            Cause::TooLarge => libc::EFBIG,
            Cause::Exists => libc::EEXIST,
            Cause::CrossDirectory => libc::EXDEV,
            Cause::NotADirectory => libc::ENOTDIR,
            Cause::IsADirectory => libc::EISDIR,
            Cause::Remote => libc::EREMOTE,
            Cause::Unsupported => libc::ENOTSUP,
            Cause::NoSpace => libc::ENOSPC,
            Cause::ReadOnly => libc::EROFS,
            Cause::BadHandle => libc::EBADF,
            Cause::Io => libc::EIO,
            Cause::Os(n) => n,
        }
    }

    /// An OS error as a cause: a named one when the table has its errno (so
    /// a full disk is `NoSpace` wherever it comes from).
    pub fn from_os(errno: i32) -> Cause {
        const NAMED: [Cause; 17] = [
            Cause::NotFound,
            Cause::Stale,
            Cause::Invalid,
            Cause::NotPermitted,
            Cause::Denied,
            Cause::RateLimited,
            Cause::TooLarge,
            Cause::Exists,
            Cause::CrossDirectory,
            Cause::NotADirectory,
            Cause::IsADirectory,
            Cause::Remote,
            Cause::Unsupported,
            Cause::NoSpace,
            Cause::ReadOnly,
            Cause::BadHandle,
            Cause::Io,
        ];
        NAMED
            .into_iter()
            .find(|c| c.errno() == errno)
            .unwrap_or(Cause::Os(errno))
    }
}

impl ToErrno for Cause {
    fn to_errno(&self) -> i32 {
        self.errno()
    }
}

impl From<&RegistryError> for Cause {
    fn from(e: &RegistryError) -> Cause {
        match e {
            RegistryError::NotFound(_) => Cause::NotFound,
            RegistryError::Denied(_) => Cause::Denied,
            RegistryError::RateLimited(_) => Cause::RateLimited,
            RegistryError::InvalidName(_) | RegistryError::Rejected(_) => Cause::Invalid,
            RegistryError::Unsupported(_) => Cause::Unsupported,
            RegistryError::Server(_)
            | RegistryError::Network(_)
            | RegistryError::DigestMismatch { .. }
            | RegistryError::Invalid(_)
            | RegistryError::MissingReferences(_)
            | RegistryError::Io(_) => Cause::Io,
        }
    }
}

impl ToErrno for RegistryError {
    fn to_errno(&self) -> i32 {
        Cause::from(self).errno()
    }
}

impl ToErrno for std::io::Error {
    fn to_errno(&self) -> i32 {
        self.raw_os_error().unwrap_or(libc::EIO)
    }
}

impl ToErrno for FsError {
    fn to_errno(&self) -> i32 {
        self.cause.errno()
    }
}

/// An error as the filesystem needs it: why, and a message for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsError {
    pub cause: Cause,
    pub message: String,
}

impl std::fmt::Display for FsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl FsError {
    pub fn new(cause: Cause, message: impl Into<String>) -> Self {
        FsError {
            cause,
            message: message.into(),
        }
    }

    pub fn errno(&self) -> i32 {
        self.cause.errno()
    }
}

impl From<RegistryError> for FsError {
    fn from(e: RegistryError) -> Self {
        FsError {
            cause: Cause::from(&e),
            message: e.to_string(),
        }
    }
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> Self {
        FsError {
            cause: e.raw_os_error().map_or(Cause::Io, Cause::from_os),
            message: format!("local I/O: {e}"),
        }
    }
}

pub type FsResult<T> = std::result::Result<T, FsError>;

/// A failed operation, already logged and counted by `report`: all that is
/// left is to reply with its errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failed(pub i32);

/// The result of a filesystem operation as the core answers it.
pub type OpResult<T> = std::result::Result<T, Failed>;

/// Log a failed operation once, with the registry's message, and count it in
/// `.regfs/stats` / `.regfs/errors`; ENOENT and ESTALE are normal answers and
/// only logged at debug. Returns the errno to reply with.
pub fn report(stats: &Stats, op: &str, path: &str, e: &FsError) -> i32 {
    if matches!(e.cause, Cause::NotFound | Cause::Stale) {
        tracing::debug!(op, path, "{e}");
    } else {
        tracing::warn!(op, path, errno = e.errno(), "{e}");
        stats.record_error(format!("{op} {path}: {e}"));
    }
    e.errno()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn registry_errors_map_to_errno() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        let e = RegistryError::from_status(StatusCode::NOT_FOUND, "GET manifest a:b", body);
        assert_eq!(e.to_errno(), libc::ENOENT);
        let e = RegistryError::from_status(StatusCode::BAD_REQUEST, "x", br#"{"errors":[{"code":"NAME_UNKNOWN"}]}"#);
        assert_eq!(e.to_errno(), libc::ENOENT);
        let e = RegistryError::from_status(StatusCode::BAD_GATEWAY, "x", b"<html>\n bad gateway </html>");
        assert_eq!(e.to_errno(), libc::EIO);
        assert_eq!(
            RegistryError::from_status(StatusCode::FORBIDDEN, "x", b"").to_errno(),
            libc::EACCES
        );
        assert_eq!(
            RegistryError::from_status(StatusCode::TOO_MANY_REQUESTS, "x", b"").to_errno(),
            libc::EAGAIN
        );
        let e = RegistryError::from_status(StatusCode::RANGE_NOT_SATISFIABLE, "GET blob", b"");
        assert_eq!(e.to_errno(), libc::EIO, "a 416 is a wrong answer, not a bad request");
    }

    #[test]
    fn os_errors_take_their_named_cause() {
        let full = FsError::from(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(full.cause, Cause::NoSpace);
        let gone = FsError::from(std::io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(gone.cause, Cause::NotFound);
        let other = FsError::from(std::io::Error::from_raw_os_error(libc::ELOOP));
        assert_eq!((other.cause, other.errno()), (Cause::Os(libc::ELOOP), libc::ELOOP));
        let kindonly = FsError::from(std::io::Error::other("no errno"));
        assert_eq!(kindonly.errno(), libc::EIO);
    }
}
