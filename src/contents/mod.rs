//! Inside the layers: what an image's files are, read lazily and verified
//! (docs/contents.md; README, "Image contents"). Nothing here knows about FUSE or HTTP: the
//! caller hands in the blob bytes (a `Read` for the one pass that builds an
//! index, a [`SpanSource`] for ranged reads afterwards) and maps errors to errnos.
//!
//! - [`LayerIndex`]: one layer's table of contents and seek points, built in one
//!   streaming pass that hashes the blob and is trusted only if the hash is the
//!   layer digest. gzip (zran-style checkpoints every ~4 MiB of output, with the
//!   32 KiB window), zstd (frames as seek points) and uncompressed tar (1 MiB
//!   spans); a sha256 per compressed span, so a span fetched later by Range is
//!   verified on its own before a byte of it is served. Saved to and loaded from
//!   disk ([`LayerIndex::save`], [`LayerIndex::load`]).
//! - [`estargz`]: eStargz layers, whose TOC is read from the end of the blob by
//!   Range, with no pass.
//! - [`Rootfs`]: a tree over one layer (as its tar holds it) or over an image's
//!   layers merged with the OCI whiteout rules, with stable identities
//!   (layer digest, entry index) for inode numbers.
//! - [`IndexStore`]: indexes kept in the cache dir, built once (in parallel for
//!   an image's layers), loaded back on later mounts, damaged files rebuilt.

pub mod entry;
pub mod estargz;
mod gzip;
mod index;
pub mod rootfs;
mod spans;
pub mod store;
pub mod tarscan;
mod zstd;

#[cfg(test)]
mod tests;

use std::io;

pub use entry::{Data, Entry, Kind};
pub use index::{Compression, LayerIndex};
pub use rootfs::{Identity, Metadata, NodeId, Rootfs};
pub use store::{FileSource, IndexStore, LayerBlob, LayerRef};
pub use tarscan::{Limits, Problems};

/// Ranged reads of one layer blob. The caller implements it over the blob
/// cache (a verified local file) or a registry Range GET. It need not verify
/// anything: every span read through it is checked against a digest recorded
/// by the verified pass.
pub trait SpanSource {
    /// Exactly `len` bytes at `offset` of the blob (fewer is an error).
    fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>>;

    /// The bytes `offset..offset + len` it served failed their digest: a
    /// source that keeps what it fetched (the blob cache) drops them, so the
    /// next `read_at` fetches them again. Sources that keep nothing ignore it.
    fn discard(&self, _offset: u64, _len: u64) {}
}

/// A whole blob in memory (tests, small layers).
impl SpanSource for [u8] {
    fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start.checked_add(len as usize).filter(|&e| e <= self.len());
        match end {
            Some(end) => Ok(self[start..end].to_vec()),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the blob",
            )),
        }
    }
}

impl SpanSource for io::Cursor<Vec<u8>> {
    fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        self.get_ref().as_slice().read_at(offset, len)
    }
}

impl SpanSource for Vec<u8> {
    fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        self.as_slice().read_at(offset, len)
    }
}

/// Why an index could not be built or loaded. Problems *inside* a layer (not
/// a tar, truncated, bad entries) are not errors: the index shows what it can
/// and lists them in [`LayerIndex::problems`].
#[derive(Debug, thiserror::Error)]
pub enum ContentsError {
    #[error("layer blob does not match its digest {expected} (sha256 of the bytes read: {actual})")]
    DigestMismatch { expected: String, actual: String },
    #[error("digest {0:?} is not sha256:<64 hex>")]
    UnsupportedDigest(String),
    #[error("layer index file rejected: {0}")]
    BadIndexFile(String),
    #[error("not an eStargz layer: {0}")]
    NotEstargz(String),
    #[error("eStargz TOC: {0}")]
    BadToc(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}
