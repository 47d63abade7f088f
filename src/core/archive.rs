//! Two read-only views of a repository made from its manifests:
//! `_oci/` — an OCI image layout (`oci-layout`, `index.json` with one entry
//! per tag, `blobs/sha256/<hex>`), and `_export/<tag>.tar` — one tag as a tar
//! (OCI layout plus a Docker `manifest.json`) streamed on the fly by
//! `tarstream`. Both are computed from descriptors: no blob is downloaded to
//! know their names or sizes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::json;

use super::view::View;
use crate::error::{Cause, FsError, FsResult};
use crate::oci::tarstream::{Member, TarError, TarLayout};
use crate::oci::Digest;
use crate::oci::{self, ManifestKind};
use crate::store::{CachedManifest, ReadState};

pub const OCI_LAYOUT_BYTES: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Where an exported tar member's bytes come from.
#[derive(Clone, Debug)]
pub enum Source {
    Manifest(Digest),
    Blob(Digest, u64),
}

/// A tag's tar: its layout and the repository its blobs are read from.
pub struct Export {
    pub repo: String,
    pub layout: TarLayout<Source>,
    /// Per-blob sequential-read state, so each member streams with readahead.
    states: Mutex<HashMap<Digest, Arc<Mutex<ReadState>>>>,
}

/// Export tars laid out so far, by (repository, tag, tag digest): a tag
/// moved to another digest gets a new layout. At most
/// `super::view::EXPORTS_MAX`, least recently used dropped first: a dropped
/// one is laid out again from the cached manifests; open files keep theirs.
pub struct Exports(Mutex<lru::LruCache<(String, String, Digest), Arc<Export>>>);

impl Default for Exports {
    fn default() -> Self {
        let max = std::num::NonZeroUsize::new(super::view::EXPORTS_MAX).expect("a capacity");
        Exports(Mutex::new(lru::LruCache::new(max)))
    }
}

impl Exports {
    fn get(&self, repo: &str, tag: &str, digest: Digest) -> Option<Arc<Export>> {
        let key = (repo.to_string(), tag.to_string(), digest);
        self.0.lock().unwrap().get(&key).cloned()
    }

    fn insert(&self, repo: &str, tag: &str, digest: Digest, export: Arc<Export>) {
        let key = (repo.to_string(), tag.to_string(), digest);
        self.0.lock().unwrap().put(key, export);
    }
}

impl From<TarError> for FsError {
    fn from(e: TarError) -> Self {
        FsError::new(Cause::Io, format!("tar: {e}"))
    }
}

/// Everything a set of manifests references: the manifests themselves and
/// their blobs, by digest (sorted), with sizes and whether each is a manifest.
fn content(manifests: &[Arc<CachedManifest>]) -> BTreeMap<Digest, (u64, bool)> {
    let mut out = BTreeMap::new();
    for m in manifests {
        out.insert(m.digest, (m.bytes.len() as u64, true));
    }
    for m in manifests {
        let blob_children = oci::child_names(&m.parsed).into_iter().filter_map(|(_, t)| match t {
            oci::ChildTarget::Blob(d) => Some(d),
            oci::ChildTarget::Manifest(_) => None,
        });
        let sizes: HashMap<Digest, u64> = m
            .parsed
            .manifests
            .iter()
            .filter_map(|d| Some((d.digest()?, d.size)))
            .collect();
        for d in blob_children {
            out.entry(d).or_insert((sizes.get(&d).copied().unwrap_or(0), false));
        }
        // Foreign layers are left out, as OCI layouts allow (never fetched).
        for desc in m.parsed.blobs().filter(|d| !d.is_foreign()) {
            if let Some(d) = desc.digest() {
                out.entry(d).or_insert((desc.size, false));
            }
        }
    }
    out
}

fn descriptor(m: &CachedManifest, tag: &str) -> serde_json::Value {
    json!({
        "mediaType": m.parsed.media_type,
        "digest": m.digest.to_string(),
        "size": m.bytes.len(),
        "annotations": { REF_NAME: tag },
    })
}

/// The `index.json` entry of `_export/<tag>.tar`, annotated as `docker save`
/// does: `ref.name` is the tag, `io.containerd.image.name` the full
/// `<registry>/<repo>:<tag>`, which podman, containerd and docker name the
/// loaded image after (with the tag alone podman says `localhost/<tag>:latest`).
fn export_descriptor(m: &CachedManifest, tag: &str, full_name: &str) -> serde_json::Value {
    let mut d = descriptor(m, tag);
    d["annotations"][CONTAINERD_NAME] = json!(full_name);
    d
}

/// The image `manifest.json` of `docker save` describes: for an index, the
/// child for this machine's platform (linux/<arch>), if the index has one.
fn docker_image<'a>(root: &'a Arc<CachedManifest>, all: &'a [Arc<CachedManifest>]) -> Option<&'a CachedManifest> {
    match root.parsed.kind {
        ManifestKind::Image => Some(root),
        ManifestKind::Index => {
            let arch = match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                other => other,
            };
            let child = root.parsed.manifests.iter().find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == arch)
            })?;
            let digest = child.digest()?;
            all.iter()
                .find(|m| m.digest == digest && m.parsed.kind == ManifestKind::Image)
                .map(|m| &**m)
        }
        _ => None,
    }
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

impl View {
    /// `_oci/index.json`: one entry per tag, in tag order.
    pub async fn oci_index(&self, repo: &str) -> FsResult<Bytes> {
        let tags = self.tags(repo).await?;
        let mut resolved = self.resolve_tags(repo, &tags).await;
        resolved.sort();
        let mut entries = Vec::new();
        for (tag, digest) in resolved {
            let m = self.manifest(repo, digest).await?;
            entries.push(descriptor(&m, &tag));
        }
        let index = json!({ "schemaVersion": 2, "mediaType": oci::OCI_INDEX, "manifests": entries });
        Ok(Bytes::from(serde_json::to_vec(&index).expect("JSON values serialize")))
    }

    /// `_oci/blobs/sha256/`: every manifest and blob reachable from the tags
    /// (cached for the metadata TTL, like the tags it follows from).
    pub async fn oci_blobs(&self, repo: &str) -> FsResult<Arc<super::view::LayoutContent>> {
        self.oci_content
            .get_or_fetch(repo.to_string(), || async {
                Ok(Arc::new(content(&self.reachable_manifests(repo).await?)))
            })
            .await
    }

    /// Is `digest` a manifest (true) or a blob (false) of `repo`'s layout?
    /// Decided from the reachable set: the registry cannot tell (manifests are
    /// blobs too, and distribution answers 500 to a blob fetched as a manifest).
    pub async fn manifest_or_blob(&self, repo: &str, digest: Digest) -> FsResult<bool> {
        match self.oci_blobs(repo).await?.get(&digest) {
            Some((_, is_manifest)) => Ok(*is_manifest),
            None => Err(FsError::new(
                Cause::NotFound,
                format!("{digest} is not reachable from the tags of {repo}"),
            )),
        }
    }

    /// The tar of `repo:tag`, laid out from descriptors (cached per tag digest).
    pub async fn export(&self, repo: &str, tag: &str) -> FsResult<Arc<Export>> {
        let digest = self.tag_digest(repo, tag).await?;
        if let Some(e) = self.exports.get(repo, tag, digest) {
            return Ok(e);
        }
        let all = self.manifests_from(repo, vec![digest]).await?;
        let root = all
            .iter()
            .find(|m| m.digest == digest)
            .ok_or_else(|| FsError::new(Cause::NotFound, format!("{repo}:{tag}: manifest {digest} is missing")))?;
        let mut members: Vec<Member<Source>> = content(&all)
            .into_iter()
            .map(|(d, (size, is_manifest))| {
                let src = if is_manifest {
                    Source::Manifest(d)
                } else {
                    Source::Blob(d, size)
                };
                Member::external(blob_path(&d), size, src)
            })
            .collect();
        let full_name = format!("{}/{repo}:{tag}", self.registry_host);
        let index = json!({ "schemaVersion": 2, "mediaType": oci::OCI_INDEX, "manifests": [export_descriptor(root, tag, &full_name)] });
        members.push(Member::inline("index.json", serde_json::to_vec(&index).expect("JSON")));
        if let Some(image) = docker_image(root, &all) {
            let config = image.parsed.config.as_ref().and_then(|c| c.digest());
            if let Some(config) = config {
                let layers: Vec<String> = image
                    .parsed
                    .layers
                    .iter()
                    .filter_map(|l| Some(blob_path(&l.digest()?)))
                    .collect();
                let docker = json!([{ "Config": blob_path(&config), "RepoTags": [&full_name], "Layers": layers }]);
                members.push(Member::inline(
                    "manifest.json",
                    serde_json::to_vec(&docker).expect("JSON"),
                ));
            }
        }
        members.push(Member::inline("oci-layout", Bytes::from_static(OCI_LAYOUT_BYTES)));
        let export = Arc::new(Export {
            repo: repo.to_string(),
            layout: TarLayout::new(members)?,
            states: Mutex::new(HashMap::new()),
        });
        self.exports.insert(repo, tag, digest, export.clone());
        Ok(export)
    }

    /// Read `len` bytes of an export at `offset`: headers are generated, member
    /// data comes from the manifest cache and the blob store.
    pub async fn read_export(&self, export: &Export, offset: u64, len: u64) -> FsResult<Vec<u8>> {
        crate::oci::tarstream::read_at(&export.layout, offset, len, |src, start, n| async move {
            match src {
                Source::Manifest(d) => {
                    let m = self.manifest(&export.repo, d).await?;
                    let end = (start + n) as usize;
                    if end > m.bytes.len() {
                        return Err(FsError::new(
                            Cause::Io,
                            format!("manifest {d} is shorter than its descriptor"),
                        ));
                    }
                    Ok(m.bytes.slice(start as usize..end).to_vec())
                }
                Source::Blob(d, size) => {
                    let file = self.blobs.open(&export.repo, d, size).await?;
                    let state = export.states.lock().unwrap().entry(d).or_default().clone();
                    file.read(start, n, &state).await
                }
            }
        })
        .await
    }
}
