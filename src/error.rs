//! The one errno table. Errors below this floor (`registry/`, `oci/`) are
//! domain errors that know nothing of errno; each says its errno here, through
//! `ToErrno` (as in mountpoint-s3's `fs/error.rs`). `FsError` is what the core
//! returns: an errno and a message, cloneable so one failed fetch can answer
//! every caller that waited on it. `report` is the one place a failed
//! operation is logged and counted in `.regfs/stats`; the FUSE adapter replies
//! with the errno it returns.

use crate::registry::RegistryError;
use crate::stats::Stats;

/// The errno a filesystem caller sees for an error.
pub trait ToErrno {
    fn to_errno(&self) -> i32;
}

impl ToErrno for RegistryError {
    fn to_errno(&self) -> i32 {
        match self {
            RegistryError::NotFound(_) => libc::ENOENT,
            RegistryError::Denied(_) => libc::EACCES,
            RegistryError::RateLimited(_) => libc::EAGAIN,
            RegistryError::InvalidName(_) | RegistryError::Rejected(_) => libc::EINVAL,
            RegistryError::Unsupported(_) => libc::ENOTSUP,
            RegistryError::Server(_)
            | RegistryError::Network(_)
            | RegistryError::DigestMismatch { .. }
            | RegistryError::Invalid(_)
            | RegistryError::MissingReferences(_)
            | RegistryError::Io(_) => libc::EIO,
        }
    }
}

impl ToErrno for std::io::Error {
    fn to_errno(&self) -> i32 {
        self.raw_os_error().unwrap_or(libc::EIO)
    }
}

impl ToErrno for FsError {
    fn to_errno(&self) -> i32 {
        self.errno
    }
}

/// An error as the filesystem needs it: the errno and a message for the log.
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

impl From<RegistryError> for FsError {
    fn from(e: RegistryError) -> Self {
        FsError {
            errno: e.to_errno(),
            message: e.to_string(),
        }
    }
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> Self {
        FsError {
            errno: e.to_errno(),
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
    if e.errno == libc::ENOENT || e.errno == libc::ESTALE {
        tracing::debug!(op, path, "{e}");
    } else {
        tracing::warn!(op, path, errno = e.errno, "{e}");
        stats.record_error(format!("{op} {path}: {e}"));
    }
    e.errno
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
}
