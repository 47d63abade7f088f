//! Turning local writes into registry pushes: blobs (skip what the registry
//! has, mount across repositories, else upload), manifests (validated, exact
//! bytes, held until their references arrive), tags and deletes.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::overlay::Held;
use super::view::View;
use crate::error::{Cause, FsError, FsResult};
use crate::oci::{self, Manifest, ManifestKind};
use crate::oci::{Digest, Reference};
use crate::registry::client::{FileRange, MAX_MANIFEST_SIZE};
use crate::registry::RegistryError;
use crate::stats::Stats;
use crate::store::CachedManifest;

/// Repositories asked (HEAD) for a blob before uploading it, beyond known ones.
const MOUNT_PROBES: usize = 16;

/// How long creating a tag waits for a held manifest to be pushed.
const HELD_WAIT: Duration = Duration::from_secs(60);

/// What a manifest push did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Done(Digest),
    /// Held until its references arrive (only pushes by digest are held).
    Held(Digest),
}

/// Check bytes written as a manifest: JSON, within the size limit, with a media
/// type we can name (from the JSON, or detected from its shape).
pub fn validate_manifest(bytes: &[u8]) -> FsResult<String> {
    if bytes.len() as u64 > MAX_MANIFEST_SIZE {
        return Err(FsError::new(
            Cause::TooLarge,
            format!(
                "manifest of {} bytes exceeds the {MAX_MANIFEST_SIZE}-byte limit",
                bytes.len()
            ),
        ));
    }
    let json: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| FsError::new(Cause::Invalid, format!("not a manifest: invalid JSON: {e}")))?;
    let m = Manifest::parse(bytes, None);
    let declared = json
        .get("mediaType")
        .and_then(|t| t.as_str())
        .is_some_and(|t| !t.is_empty());
    if m.kind == ManifestKind::Unknown && !declared {
        return Err(FsError::new(
            Cause::Invalid,
            "not a manifest: no mediaType and the JSON looks like no known manifest",
        ));
    }
    Ok(m.media_type)
}

fn is_missing_references(e: &RegistryError) -> bool {
    matches!(e, RegistryError::MissingReferences(_))
        || matches!(e, RegistryError::NotFound(m) if m.contains("MANIFEST_UNKNOWN") || m.contains("MANIFEST_BLOB_UNKNOWN"))
}

impl View {
    /// Push the blob in `path` (already verified to hash to `digest`) into `repo`.
    pub async fn push_blob(&self, repo: &str, digest: Digest, src: &FileRange) -> FsResult<()> {
        let size = src.len;
        let client = &self.client;
        if self.is_present(repo, &digest) || client.has_blob(repo, &digest).await? {
            tracing::info!(repo, %digest, "blob already in the registry; nothing uploaded");
        } else if self.mount_from_known(repo, digest).await? {
            tracing::info!(repo, %digest, "blob mounted from another repository; nothing uploaded");
        } else {
            client.upload_blob(repo, &digest, src).await?;
            Stats::add(&self.stats.bytes_pushed, size);
            tracing::info!(repo, %digest, size, "blob pushed");
        }
        self.note_blob_size(digest, size);
        self.mark_present(repo, digest);
        self.retry_held(repo).await;
        Ok(())
    }

    /// Cross-repository mount from a repository known to hold the blob (seen
    /// in this run or remembered from earlier mounts); else, when the registry
    /// has a catalog, from the first of a few repositories that answer a HEAD
    /// for it (the last repository a mount came from is asked first).
    pub async fn mount_from_known(&self, repo: &str, digest: Digest) -> FsResult<bool> {
        let known = self.repos_holding(&digest);
        for from in known.iter().filter(|r| *r != repo) {
            if self.try_mount(repo, digest, from).await {
                return Ok(true);
            }
        }
        let Ok(Some(catalog)) = self.catalog().await else {
            return Ok(false);
        };
        let last = self.locations.last_mount_source();
        let candidates = last
            .iter()
            .chain(catalog.iter())
            .filter(|r| *r != repo && !known.contains(r))
            .take(MOUNT_PROBES)
            .cloned()
            .collect::<Vec<_>>();
        // Asked side by side: one round trip to a far registry, not one per
        // candidate (a fresh layer is in none of them; this is on the path
        // of every push). Mounts are then tried in the candidates' order.
        let holds = futures_util::future::join_all(
            candidates
                .iter()
                .map(|from| async move { matches!(self.client.has_blob(from, &digest).await, Ok(true)) }),
        )
        .await;
        for (from, _) in candidates.iter().zip(holds).filter(|(_, has)| *has) {
            if self.try_mount(repo, digest, from).await {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn try_mount(&self, repo: &str, digest: Digest, from: &str) -> bool {
        match self.client.mount_blob(repo, &digest, from).await {
            Ok(true) => {
                self.locations.note_mount_source(from);
                true
            }
            Ok(false) => {
                tracing::debug!(repo, from, %digest, "registry declined the mount");
                false
            }
            Err(e) => {
                tracing::debug!(repo, from, %digest, "mount failed: {e}");
                false
            }
        }
    }

    /// Push manifest bytes by tag or digest. A push by digest whose references
    /// are missing is held and retried as they arrive; a push by tag is not
    /// (nothing half-pushed is ever tagged).
    pub async fn push_manifest(&self, repo: &str, reference: Reference, bytes: Bytes) -> FsResult<Pushed> {
        let media_type = validate_manifest(&bytes)?;
        let digest = Digest::of(&bytes);
        if let Reference::Digest(name) = &reference {
            if *name != digest {
                return Err(FsError::new(
                    Cause::Io,
                    format!("manifest bytes hash to {digest}, not to the name {name}"),
                ));
            }
        }
        match self
            .client
            .put_manifest(repo, &reference, &media_type, bytes.clone())
            .await
        {
            Ok(_) => {}
            Err(e) if is_missing_references(&e) && matches!(reference, Reference::Digest(_)) => {
                tracing::info!(repo, %digest, "manifest held until its references arrive: {e}");
                self.overlay.hold(Held {
                    repo: repo.to_string(),
                    digest,
                    media_type,
                    bytes,
                    since: Instant::now(),
                });
                return Ok(Pushed::Held(digest));
            }
            Err(e) => return Err(e.into()),
        }
        self.pushed_manifest(repo, &reference, digest, bytes, media_type);
        self.list_in_referrers_tag(repo, digest).await;
        self.release_deferred(repo).await;
        self.retry_held(repo).await;
        Ok(Pushed::Done(digest))
    }

    /// Push the tags that were waiting for manifests now in the registry.
    async fn release_deferred(&self, repo: &str) {
        let ready = self
            .overlay
            .take_ready_tags(repo, |d| self.is_present(repo, d) && !self.overlay.is_held(repo, d));
        for (tag, digest) in ready {
            if let Err(e) = self.push_tag(repo, &tag, digest).await {
                tracing::warn!(repo, tag, %digest, "deferred tag push failed: {e}");
                self.stats.record_error(format!("tag {repo}:{tag}: {e}"));
            }
        }
    }

    /// Tag now if the manifest is in the registry, else as soon as it is pushed
    /// (rsync creates links and writes index.json before the manifests arrive).
    pub async fn push_tag_when_ready(&self, repo: &str, tag: &str, digest: Digest) -> FsResult<()> {
        if !self.overlay.is_arriving(repo, &digest) {
            match self.manifest(repo, digest).await {
                Ok(_) => return self.push_tag(repo, tag, digest).await,
                Err(e) if e.cause != Cause::NotFound => return Err(e),
                Err(_) => {}
            }
        }
        tracing::info!(repo, tag, %digest, "tag deferred until its manifest is pushed");
        self.overlay.defer_tag(repo, tag, digest);
        Ok(())
    }

    fn pushed_manifest(&self, repo: &str, reference: &Reference, digest: Digest, bytes: Bytes, media_type: String) {
        let m = self.manifests.put(digest, bytes, Some(media_type));
        self.mark_present(repo, digest);
        self.overlay.remove_pending_dir(repo, digest);
        self.note_blob_sizes(repo, &m);
        self.overlay.create_repo(repo);
        match reference {
            Reference::Tag(t) => {
                self.invalidate_tags(repo, Some(t));
                self.set_tag_digest(repo, t, digest);
            }
            Reference::Digest(_) => self.invalidate_tags(repo, None),
        }
        tracing::info!(repo, %reference, %digest, "manifest pushed");
    }

    /// A manifest with a `subject` was pushed. Where the registry has the
    /// referrers API it lists it by itself; elsewhere the OCI spec's tag schema
    /// keeps it findable: add it to the index tagged `sha256-<subject hex>`
    /// (made when missing). Failures are logged: the manifest itself is pushed.
    async fn list_in_referrers_tag(&self, repo: &str, digest: Digest) {
        let Some(m) = self.manifests.get(&digest) else { return };
        let Some(subject) = m.parsed.subject.as_ref().and_then(|s| s.digest()) else {
            return;
        };
        self.invalidate_referrers(repo, subject);
        match self.referrers_api(repo, subject).await {
            Ok(Some(_)) => return,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(repo, %digest, "referrers API check failed; referrers tag not updated: {e}");
                return;
            }
        }
        if let Err(e) = self.add_to_referrers_tag(repo, subject, &m).await {
            tracing::warn!(repo, %digest, %subject, "referrers tag not updated: {e}");
            self.stats
                .record_error(format!("referrers tag of {repo}@{subject}: {e}"));
        }
    }

    async fn add_to_referrers_tag(&self, repo: &str, subject: Digest, m: &CachedManifest) -> FsResult<()> {
        let tag = oci::referrers_tag(&subject);
        let reference = Reference::Tag(tag.clone());
        let mut index = match self.client.get_manifest(repo, &reference).await {
            Ok(f) => serde_json::from_slice::<serde_json::Value>(&f.bytes)
                .map_err(|e| FsError::new(Cause::Io, format!("{tag} is not JSON: {e}")))?,
            Err(RegistryError::NotFound(_)) => {
                serde_json::json!({ "schemaVersion": 2, "mediaType": oci::OCI_INDEX, "manifests": [] })
            }
            Err(e) => return Err(e.into()),
        };
        let entries = index
            .get_mut("manifests")
            .and_then(|v| v.as_array_mut())
            .ok_or_else(|| FsError::new(Cause::Io, format!("{tag} is not an index")))?;
        let digest = m.digest.to_string();
        if entries
            .iter()
            .any(|e| e.get("digest").and_then(|d| d.as_str()) == Some(&digest))
        {
            return Ok(());
        }
        entries.push(referrer_descriptor(m));
        let bytes = Bytes::from(serde_json::to_vec(&index).expect("JSON values serialize"));
        self.client
            .put_manifest(repo, &reference, oci::OCI_INDEX, bytes)
            .await?;
        self.invalidate_tags(repo, Some(&tag));
        self.invalidate_referrers(repo, subject);
        tracing::info!(repo, %subject, referrer = %m.digest, "listed in the referrers tag {tag}");
        Ok(())
    }

    /// Try the held manifests of `repo` again until no more go through.
    pub async fn retry_held(&self, repo: &str) {
        loop {
            let candidates = self.overlay.held_in(repo);
            let mut progress = false;
            for (digest, media_type, bytes) in candidates {
                let reference = Reference::Digest(digest);
                let result = self
                    .client
                    .put_manifest(repo, &reference, &media_type, bytes.clone())
                    .await;
                match result {
                    Err(e) if is_missing_references(&e) => continue,
                    Err(e) => {
                        tracing::warn!(repo, %digest, "held manifest push failed: {e}");
                        self.stats.record_error(format!("held manifest {repo}@{digest}: {e}"));
                    }
                    Ok(_) => {
                        self.pushed_manifest(repo, &reference, digest, bytes, media_type);
                        self.list_in_referrers_tag(repo, digest).await;
                    }
                }
                self.overlay.release(repo, &HashSet::from([digest]));
                progress = true;
            }
            if !progress {
                return;
            }
            Box::pin(self.release_deferred(repo)).await;
        }
    }

    /// Forget held pushes of a failed operation (they must not land later).
    pub fn abandon_held(&self, repo: &str, digests: impl Iterator<Item = Digest>) {
        self.overlay.release(repo, &digests.collect());
    }

    /// Point `tag` at an existing manifest of `repo` (a retag: no data copied
    /// beyond the manifest's own bytes). Waits for a held manifest first.
    pub async fn push_tag(&self, repo: &str, tag: &str, digest: Digest) -> FsResult<()> {
        if !self
            .overlay
            .wait_released(repo, &digest, Instant::now() + HELD_WAIT)
            .await
        {
            return Err(FsError::new(
                Cause::Io,
                format!("tag {repo}:{tag}: manifest {digest} is still waiting for its references"),
            ));
        }
        let m = self.manifest(repo, digest).await?;
        let media_type = m.parsed.media_type.clone();
        let reference = Reference::Tag(tag.to_string());
        self.client
            .put_manifest(repo, &reference, &media_type, m.bytes.clone())
            .await?;
        self.pushed_manifest(repo, &reference, digest, m.bytes.clone(), media_type);
        Ok(())
    }

    /// Does `repo` hold this manifest, or is it held for pushing?
    pub async fn manifest_known(&self, repo: &str, digest: Digest) -> FsResult<()> {
        if self.overlay.is_held(repo, &digest) {
            return Ok(());
        }
        self.manifest(repo, digest).await.map(|_| ())
    }

    pub async fn delete(&self, repo: &str, reference: Reference) -> FsResult<()> {
        match self.client.delete_manifest(repo, &reference).await {
            Ok(()) => {}
            // Distribution 2.x cannot delete a tag (it answers 400 DIGEST_INVALID or UNSUPPORTED).
            Err(e @ (RegistryError::Rejected(_) | RegistryError::Unsupported(_))) if matches!(reference, Reference::Tag(_)) => {
                return Err(FsError::new(
                    Cause::Unsupported,
                    format!("this registry cannot delete tags ({e}); delete the manifest instead: rm -r _manifests/<digest>"),
                ))
            }
            Err(e) => return Err(e.into()),
        }
        match &reference {
            Reference::Tag(t) => self.invalidate_tags(repo, Some(t)),
            Reference::Digest(_) => self.invalidate_tags(repo, None),
        }
        tracing::info!(repo, %reference, "deleted");
        Ok(())
    }
}

/// A referrers-index entry for `m` (OCI distribution spec, "Listing Referrers"):
/// its `artifactType`, else its config's media type, and its annotations.
fn referrer_descriptor(m: &CachedManifest) -> serde_json::Value {
    let raw: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap_or_default();
    let artifact_type = raw
        .get("artifactType")
        .and_then(|v| v.as_str())
        .filter(|t| !t.is_empty())
        .or_else(|| raw.pointer("/config/mediaType").and_then(|v| v.as_str()));
    let mut d = serde_json::json!({
        "mediaType": m.parsed.media_type,
        "digest": m.digest.to_string(),
        "size": m.bytes.len(),
    });
    if let Some(t) = artifact_type {
        d["artifactType"] = t.into();
    }
    if let Some(a) = raw.get("annotations").filter(|a| a.is_object()) {
        d["annotations"] = a.clone();
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_validation() {
        assert_eq!(validate_manifest(b"{nope").unwrap_err().cause, Cause::Invalid);
        assert_eq!(validate_manifest(b"{}").unwrap_err().cause, Cause::Invalid);
        let big = vec![b' '; (MAX_MANIFEST_SIZE + 1) as usize];
        assert_eq!(validate_manifest(&big).unwrap_err().cause, Cause::TooLarge);
        let ok = br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824","size":1},"layers":[]}"#;
        assert_eq!(validate_manifest(ok).unwrap(), crate::oci::OCI_MANIFEST);
        let typed = br#"{"schemaVersion":2,"mediaType":"application/vnd.example+json"}"#;
        assert_eq!(validate_manifest(typed).unwrap(), "application/vnd.example+json");
    }
}
