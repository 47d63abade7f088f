//! Manifests by digest: a memory LRU in front of `<cache>/manifests/sha256/<hex>`.
//! Content is immutable; what comes off disk is re-hashed before it is trusted.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use lru::LruCache;

use crate::oci::Digest;
use crate::oci::Manifest;
use crate::stats::Stats;

/// Manifests are small (≤ 4 MiB, usually ≤ 10 KiB): a count bound keeps memory bounded.
const MEMORY_ENTRIES: usize = 4096;

pub struct CachedManifest {
    pub digest: Digest,
    pub bytes: Bytes,
    pub parsed: Manifest,
}

impl CachedManifest {
    pub fn new(digest: Digest, bytes: Bytes, declared_type: Option<String>) -> Self {
        let parsed = Manifest::parse(&bytes, declared_type.as_deref());
        CachedManifest { digest, bytes, parsed }
    }
}

pub struct ManifestStore {
    dir: PathBuf,
    memory: Mutex<LruCache<Digest, Arc<CachedManifest>>>,
    stats: Arc<Stats>,
}

impl ManifestStore {
    pub fn new(cache_dir: &std::path::Path, stats: Arc<Stats>) -> std::io::Result<Self> {
        let dir = super::dir::manifests(cache_dir);
        std::fs::create_dir_all(&dir)?;
        Ok(ManifestStore {
            dir,
            memory: Mutex::new(LruCache::new(NonZeroUsize::new(MEMORY_ENTRIES).unwrap())),
            stats,
        })
    }

    /// From memory, else from disk (verified), else `None`.
    pub fn get(&self, digest: &Digest) -> Option<Arc<CachedManifest>> {
        if let Some(m) = self.memory.lock().unwrap().get(digest) {
            Stats::inc(&self.stats.manifest_cache_hits);
            return Some(m.clone());
        }
        let path = self.dir.join(digest.hex());
        let bytes = std::fs::read(&path).ok()?;
        if Digest::of(&bytes) != *digest {
            tracing::warn!(%digest, path = %path.display(), "cached manifest is corrupt; removing it and fetching again");
            self.stats
                .record_error(format!("cached manifest {digest} failed verification"));
            let _ = std::fs::remove_file(&path);
            return None;
        }
        let declared = std::fs::read_to_string(self.dir.join(format!("{}.type", digest.hex()))).ok();
        let m = Arc::new(CachedManifest::new(*digest, Bytes::from(bytes), declared));
        self.memory.lock().unwrap().put(*digest, m.clone());
        Stats::inc(&self.stats.manifest_cache_hits);
        Some(m)
    }

    /// Keep a verified manifest (the caller checked `digest` against the bytes).
    pub fn put(&self, digest: Digest, bytes: Bytes, declared_type: Option<String>) -> Arc<CachedManifest> {
        if let Err(e) = self.write_disk(&digest, &bytes, declared_type.as_deref()) {
            // The memory copy still serves; a full or read-only disk is not fatal.
            tracing::warn!(%digest, "cannot write manifest to the disk cache: {e}");
        }
        let m = Arc::new(CachedManifest::new(digest, bytes, declared_type));
        self.memory.lock().unwrap().put(digest, m.clone());
        m
    }

    fn write_disk(&self, digest: &Digest, bytes: &[u8], declared: Option<&str>) -> std::io::Result<()> {
        let hex = digest.hex();
        if let Some(t) = declared {
            super::dir::atomic_write(&self.dir.join(format!("{hex}.type")), t.as_bytes())?;
        }
        super::dir::atomic_write(&self.dir.join(&hex), bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_restart_and_rejects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let bytes = Bytes::from_static(br#"{"schemaVersion":2,"manifests":[]}"#);
        let d = Digest::of(&bytes);
        ManifestStore::new(dir.path(), stats.clone()).unwrap().put(
            d,
            bytes.clone(),
            Some(crate::oci::DOCKER_LIST.into()),
        );

        let store = ManifestStore::new(dir.path(), stats.clone()).unwrap();
        let m = store.get(&d).unwrap();
        assert_eq!(m.bytes, bytes);
        // The declared type survives a restart (detection alone would say OCI index).
        assert_eq!(m.parsed.media_type, crate::oci::DOCKER_LIST);

        let path = dir.path().join("manifests/sha256").join(d.hex());
        std::fs::write(&path, b"{}").unwrap();
        let fresh = ManifestStore::new(dir.path(), stats).unwrap();
        assert!(fresh.get(&d).is_none(), "corrupt file must not be trusted");
        assert!(!path.exists(), "corrupt file is removed");
    }
}
