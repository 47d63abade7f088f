//! The cache directory and what lives in it: immutable content by digest (manifests in memory + disk, blobs on disk),
//! and mutable metadata by name with a TTL.

pub mod blobs;
pub mod dir;
mod held;
pub mod manifests;
pub mod ttl;

pub use blobs::{BlobFile, BlobStore, CacheTenant, ReadState};
pub use manifests::{CachedManifest, ManifestStore};
pub use ttl::TtlCache;
