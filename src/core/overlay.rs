//! What the user wrote that the registry does not have yet, in one home:
//! files being written (`Staging`), repositories made with mkdir, manifest
//! directories made with mkdir and not written yet, manifests held until
//! their references arrive, and tags waiting for their manifests. The tree
//! shows all of it as if it were in the registry; pushes (push.rs) move it
//! there. Each part is changed only through the methods here.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;

use super::names::{self, Family};
use super::write::Staging;
use crate::oci::Digest;
use crate::store::CachedManifest;

pub struct Overlay {
    /// Files being written, `_uploads/` names pushed, tag links not pushed yet.
    pub staging: Staging,
    repos: Mutex<LocalRepos>,
    /// Manifest directories made with mkdir whose manifest.json is not pushed yet.
    pending_dirs: Mutex<HashSet<(String, Digest)>>,
    /// Manifest pushes waiting for their references (see push.rs).
    held: Mutex<Vec<Held>>,
    /// Signalled whenever a held manifest leaves `held` (pushed or abandoned).
    held_changed: tokio::sync::Notify,
    /// Tags waiting for their manifest to be pushed.
    deferred_tags: Mutex<Vec<DeferredTag>>,
}

/// Repository names this run made, which the registry may not know yet.
#[derive(Default)]
struct LocalRepos {
    /// Made with `mkdir` (or pushed to) during this run.
    created: BTreeSet<String>,
    /// Whose `_tags`/`_blobs`/… were made with mkdir (rsync restores): a
    /// repository for good, not a namespace on the way to a nested one.
    declared: BTreeSet<String>,
}

/// A manifest pushed by digest whose blobs or children are not in the registry yet.
pub struct Held {
    pub repo: String,
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
    pub since: Instant,
}

/// A tag to push once its manifest is in the registry.
struct DeferredTag {
    repo: String,
    tag: String,
    digest: Digest,
}

impl Overlay {
    pub fn new(cache_dir: &std::path::Path) -> std::io::Result<Self> {
        Ok(Overlay {
            staging: Staging::new(cache_dir)?,
            repos: Mutex::default(),
            pending_dirs: Mutex::default(),
            held: Mutex::default(),
            held_changed: tokio::sync::Notify::new(),
            deferred_tags: Mutex::default(),
        })
    }

    // --- repositories made here ---

    /// `path` was made with mkdir, or pushed to.
    pub fn create_repo(&self, path: &str) {
        self.repos.lock().unwrap().created.insert(path.to_string());
    }

    /// `repo`'s own directories were made with mkdir.
    pub fn declare_repo(&self, repo: &str) {
        self.repos.lock().unwrap().declared.insert(repo.to_string());
    }

    pub fn is_created(&self, path: &str) -> bool {
        self.repos.lock().unwrap().created.contains(path)
    }

    pub fn is_declared(&self, path: &str) -> bool {
        self.repos.lock().unwrap().declared.contains(path)
    }

    /// Forget a directory made with mkdir (rmdir before any push).
    pub fn uncreate_repo(&self, path: &str) {
        self.repos.lock().unwrap().created.remove(path);
    }

    /// `path` among the names made here.
    pub fn repo_family(&self, path: &str) -> Family {
        let repos = self.repos.lock().unwrap();
        names::family_in_all([&repos.created, &repos.declared], path)
    }

    /// First components of the names made here below `prefix` (see `names::children_in_set`).
    pub fn repo_children(&self, prefix: &str, out: &mut BTreeSet<String>) {
        let repos = self.repos.lock().unwrap();
        let mut found = BTreeSet::new();
        for s in [&repos.created, &repos.declared] {
            names::children_in_set(s, prefix, &mut found);
        }
        out.extend(found.into_iter().map(str::to_string));
    }

    // --- manifest directories made with mkdir ---

    pub fn add_pending_dir(&self, repo: &str, digest: Digest) {
        self.pending_dirs.lock().unwrap().insert((repo.to_string(), digest));
    }

    /// Forget a pending directory (its manifest was pushed, or rmdir); false
    /// when there was none.
    pub fn remove_pending_dir(&self, repo: &str, digest: Digest) -> bool {
        self.pending_dirs.lock().unwrap().remove(&(repo.to_string(), digest))
    }

    pub fn is_pending_dir(&self, repo: &str, digest: &Digest) -> bool {
        self.pending_dirs.lock().unwrap().contains(&(repo.to_string(), *digest))
    }

    pub fn pending_dirs_in(&self, repo: &str) -> Vec<Digest> {
        let pending = self.pending_dirs.lock().unwrap();
        pending.iter().filter(|(r, _)| r == repo).map(|(_, d)| *d).collect()
    }

    /// Is this manifest on its way (held, or its directory made and not yet written)?
    pub fn is_arriving(&self, repo: &str, digest: &Digest) -> bool {
        self.is_held(repo, digest) || self.is_pending_dir(repo, digest)
    }

    // --- held manifests ---

    /// Hold a manifest until its references arrive (once per repository and digest).
    pub fn hold(&self, held: Held) {
        let mut all = self.held.lock().unwrap();
        if !all.iter().any(|h| h.repo == held.repo && h.digest == held.digest) {
            all.push(held);
        }
    }

    /// The held manifests of `repo`: (digest, media type, bytes).
    pub fn held_in(&self, repo: &str) -> Vec<(Digest, String, Bytes)> {
        let held = self.held.lock().unwrap();
        held.iter()
            .filter(|h| h.repo == repo)
            .map(|h| (h.digest, h.media_type.clone(), h.bytes.clone()))
            .collect()
    }

    /// Stop holding these manifests of `repo` (pushed, failed for good, or
    /// abandoned) and wake whoever waits for them.
    pub fn release(&self, repo: &str, digests: &HashSet<Digest>) {
        self.held
            .lock()
            .unwrap()
            .retain(|h| !(h.repo == repo && digests.contains(&h.digest)));
        self.held_changed.notify_waiters();
    }

    pub fn is_held(&self, repo: &str, digest: &Digest) -> bool {
        let held = self.held.lock().unwrap();
        held.iter().any(|h| h.repo == repo && h.digest == *digest)
    }

    /// A held manifest's bytes (hashed to its digest when written), served
    /// like any manifest's.
    pub fn held_manifest(&self, repo: &str, digest: &Digest) -> Option<Arc<CachedManifest>> {
        let held = self.held.lock().unwrap();
        let h = held.iter().find(|h| h.repo == repo && h.digest == *digest)?;
        Some(Arc::new(CachedManifest::new(
            h.digest,
            h.bytes.clone(),
            Some(h.media_type.clone()),
        )))
    }

    /// Wait until `digest` is no longer held in `repo`; false at `deadline`.
    pub async fn wait_released(&self, repo: &str, digest: &Digest, deadline: Instant) -> bool {
        loop {
            // Registered before the check, so a release in between is not missed.
            let changed = self.held_changed.notified();
            if !self.is_held(repo, digest) {
                return true;
            }
            if tokio::time::timeout_at(deadline.into(), changed).await.is_err() {
                return !self.is_held(repo, digest);
            }
        }
    }

    // --- tags waiting for their manifests ---

    /// Push `repo:tag` → `digest` once the manifest is in (replaces an earlier wait for that tag).
    pub fn defer_tag(&self, repo: &str, tag: &str, digest: Digest) {
        let mut deferred = self.deferred_tags.lock().unwrap();
        deferred.retain(|t| !(t.repo == repo && t.tag == tag));
        deferred.push(DeferredTag {
            repo: repo.to_string(),
            tag: tag.to_string(),
            digest,
        });
    }

    /// Take the deferred tags of `repo` whose manifest is `ready`: (tag, digest).
    pub fn take_ready_tags(&self, repo: &str, ready: impl Fn(&Digest) -> bool) -> Vec<(String, Digest)> {
        let mut deferred = self.deferred_tags.lock().unwrap();
        let mut out = Vec::new();
        deferred.retain(|t| {
            if t.repo == repo && ready(&t.digest) {
                out.push((t.tag.clone(), t.digest));
                false
            } else {
                true
            }
        });
        out
    }

    /// `.regfs/held`: `manifest <repo>@<digest> <seconds waiting>` for held
    /// manifests, `tag <repo>:<tag> <digest>` for tags waiting for them.
    pub fn render_held(&self) -> String {
        let mut out: String = self
            .held
            .lock()
            .unwrap()
            .iter()
            .map(|h| format!("manifest {}@{} {}\n", h.repo, h.digest, h.since.elapsed().as_secs()))
            .collect();
        for t in self.deferred_tags.lock().unwrap().iter() {
            out.push_str(&format!("tag {}:{} {}\n", t.repo, t.tag, t.digest));
        }
        out
    }
}
