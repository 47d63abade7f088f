//! Image archives written to `_uploads/`: an OCI layout tar (`oci-layout`,
//! `index.json`, `blobs/sha256/…`, e.g. from `skopeo copy … oci-archive:`) or a
//! `docker save` archive (`manifest.json` with Config/Layers/RepoTags, e.g.
//! from `skopeo copy … docker-archive:`) is imported on close: blobs first
//! (uploaded straight from their place in the staged tar, skipped when the
//! registry has them), then manifests children-first, then tags (ref names
//! or RepoTags, else the file's name). Anything else is a plain blob upload.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;
use futures_util::stream::{self, TryStreamExt};
use serde::Deserialize;

use super::early::Prepushed;
use super::view::View;
use crate::error::{Cause, FsError, FsResult};
use crate::oci::reference::is_valid_tag;
use crate::oci::{self, Manifest, ManifestKind};
use crate::oci::{Digest, Reference};
use crate::registry::client::{FileRange, MAX_MANIFEST_SIZE};

/// Blobs of one archive uploaded at once: a far registry serves each upload
/// at one connection's rate, so an image's layers go up side by side.
pub(crate) const UPLOAD_CONCURRENCY: usize = 4;

/// Configs and manifests are read into memory; nothing this size is one.
const MAX_JSON_MEMBER: u64 = 16 << 20;

/// A regular file inside the staged tar.
#[derive(Clone, Copy, Debug)]
struct Member {
    offset: u64,
    size: u64,
}

pub enum Format {
    Oci,
    Docker,
}

pub struct Archive {
    pub format: Format,
    members: HashMap<String, Member>,
    path: std::path::PathBuf,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// What an import tagged: the manifest `_uploads/<name>` then links to.
pub struct Imported {
    pub first: Digest,
    pub tags: Vec<String>,
}

impl Archive {
    /// Recognise an image archive; `Ok(None)` for anything else (not a tar, or
    /// a tar without an image layout at its root). A file that reads as a tar
    /// and then breaks (a bogus header, cut short) is an error, not a blob:
    /// what was meant as an archive is never pushed as something else.
    pub fn open(path: &Path) -> FsResult<Option<Archive>> {
        let file = std::fs::File::open(path)?;
        let mut tar = tar::Archive::new(file);
        let mut members = HashMap::new();
        // Seeking over members' data: only the headers are read.
        let Ok(entries) = tar.entries_with_seek() else {
            return Ok(None);
        };
        for (i, entry) in entries.enumerate() {
            let entry = match entry {
                Ok(e) => e,
                Err(_) if i == 0 => return Ok(None), // not a tar at all
                Err(e) => {
                    return Err(FsError::new(
                        Cause::Invalid,
                        format!("damaged tar after {i} entries ({e}); nothing pushed"),
                    ))
                }
            };
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let Ok(name) = entry.path() else { continue };
            let name = name.to_string_lossy().trim_start_matches("./").to_string();
            members.insert(
                name,
                Member {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                },
            );
        }
        let format = if members.contains_key("oci-layout") && members.contains_key("index.json") {
            Format::Oci
        } else if members.contains_key("manifest.json") {
            Format::Docker
        } else {
            return Ok(None);
        };
        Ok(Some(Archive {
            format,
            members,
            path: path.to_path_buf(),
        }))
    }

    fn member(&self, name: &str) -> FsResult<Member> {
        self.members
            .get(name)
            .copied()
            .ok_or_else(|| FsError::new(Cause::Invalid, format!("archive has no member {name:?}")))
    }

    fn read(&self, m: Member) -> FsResult<Bytes> {
        if m.size > MAX_JSON_MEMBER {
            return Err(FsError::new(Cause::TooLarge, "archive member too large to be JSON"));
        }
        let file = std::fs::File::open(&self.path)?;
        let mut buf = vec![0u8; m.size as usize];
        file.read_exact_at(&mut buf, m.offset)?;
        Ok(Bytes::from(buf))
    }

    fn hash(&self, m: Member) -> FsResult<Digest> {
        let file = std::fs::File::open(&self.path)?;
        Ok(Digest::of_file_range(&file, m.offset, Some(m.size))?)
    }

    fn range(&self, m: Member) -> FileRange {
        FileRange {
            path: self.path.clone(),
            offset: m.offset,
            len: m.size,
        }
    }

    /// The first bytes of a member, to tell gzip and zstd layers apart.
    fn magic(&self, m: Member) -> FsResult<[u8; 4]> {
        let mut b = [0u8; 4];
        if m.size >= 4 {
            std::fs::File::open(&self.path)?.read_exact_at(&mut b, m.offset)?;
        }
        Ok(b)
    }
}

/// `host/repo:tag` or `repo:tag` → `tag` (the repository is the one written to).
fn tag_of(reference: &str) -> Option<String> {
    let (name, tag) = reference.rsplit_once(':')?;
    (!tag.contains('/') && !name.is_empty() && is_valid_tag(tag)).then(|| tag.to_string())
}

/// The tag a file name suggests: `app-v1.tar` → `app-v1`.
fn tag_from_file_name(name: &str) -> Option<String> {
    let stem = name.strip_suffix(".tar").unwrap_or(name);
    is_valid_tag(stem).then(|| stem.to_string())
}

impl View {
    /// Upload blobs `UPLOAD_CONCURRENCY` at a time (each once); fails with
    /// the first error.
    async fn push_blobs(&self, repo: &str, mut uploads: Vec<(Digest, FileRange)>) -> FsResult<()> {
        let mut seen = std::collections::HashSet::new();
        uploads.retain(|(d, _)| seen.insert(*d));
        stream::iter(uploads.into_iter().map(Ok))
            .try_for_each_concurrent(UPLOAD_CONCURRENCY, |(digest, range)| async move {
                self.push_blob(repo, digest, &range).await
            })
            .await
    }

    /// Import `archive`; members pushed while it was written (`pre`) are
    /// taken as they are (their digests were checked), once those pushes succeed.
    pub async fn import(&self, repo: &str, archive: &Archive, file_name: &str, pre: &Prepushed) -> FsResult<Imported> {
        if !pre.is_empty() {
            tracing::info!(
                repo,
                file = file_name,
                "layers were pushed while the archive was written"
            );
        }
        match archive.format {
            Format::Oci => self.import_oci(repo, archive, file_name, pre).await,
            Format::Docker => self.import_docker(repo, archive, file_name, pre).await,
        }
    }

    /// Upload `uploads` while the early pushes `waits` finish; the digests of
    /// the latter, in their order.
    async fn push_blobs_and_wait(
        &self,
        repo: &str,
        uploads: Vec<(Digest, FileRange)>,
        waits: Vec<super::early::Pushing>,
    ) -> FsResult<Vec<Digest>> {
        let (digests, ()) = futures_util::future::try_join(
            futures_util::future::try_join_all(waits),
            self.push_blobs(repo, uploads),
        )
        .await?;
        Ok(digests)
    }

    async fn import_oci(&self, repo: &str, a: &Archive, file_name: &str, pre: &Prepushed) -> FsResult<Imported> {
        let index = Manifest::parse(&a.read(a.member("index.json")?)?, Some(oci::OCI_INDEX));
        if index.kind != ManifestKind::Index {
            return Err(FsError::new(Cause::Invalid, "index.json is not an OCI index"));
        }
        // Every manifest index.json names must be in the archive (or the
        // registry) before anything is pushed.
        for entry in &index.manifests {
            let Some(d) = entry.digest() else { continue };
            let name = format!("blobs/sha256/{}", d.hex());
            if !a.members.contains_key(&name) && self.manifest(repo, d).await.is_err() {
                return Err(FsError::new(
                    Cause::Io,
                    format!("index.json names manifest {d}, which is neither in the archive nor in the registry"),
                ));
            }
        }
        // Blobs first, then manifests (pushed by digest: a parent that arrives
        // before its children is held and goes through when they do).
        let mut manifests = Vec::new();
        let mut blobs: Vec<(&String, Member)> = a
            .members
            .iter()
            .filter(|(n, _)| n.starts_with("blobs/sha256/"))
            .map(|(n, m)| (n, *m))
            .collect();
        blobs.sort_by(|x, y| x.0.cmp(y.0));
        let mut uploads = Vec::new();
        let mut waits = Vec::new();
        for (name, m) in blobs {
            let Some(digest) = Digest::from_hex(&name["blobs/sha256/".len()..]) else {
                continue;
            };
            if let Some(pushing) = pre.get(m.offset, m.size) {
                // Checked against its name before it was pushed.
                waits.push(pushing);
                continue;
            }
            if m.size <= MAX_MANIFEST_SIZE {
                let bytes = a.read(m)?;
                if Digest::of(&bytes) != digest {
                    return Err(FsError::new(
                        Cause::Io,
                        format!("archive member {name} does not hash to its name"),
                    ));
                }
                if matches!(
                    Manifest::parse(&bytes, None).kind,
                    ManifestKind::Image | ManifestKind::Index
                ) {
                    manifests.push((digest, bytes));
                    continue;
                }
            } else if a.hash(m)? != digest {
                return Err(FsError::new(
                    Cause::Io,
                    format!("archive member {name} does not hash to its name"),
                ));
            }
            uploads.push((digest, a.range(m)));
        }
        self.push_blobs_and_wait(repo, uploads, waits).await?;
        for (digest, bytes) in &manifests {
            self.push_manifest(repo, Reference::Digest(*digest), bytes.clone())
                .await?;
        }
        if let Some((d, _)) = manifests.iter().find(|(d, _)| self.overlay.is_arriving(repo, d)) {
            // A failed import leaves nothing to go through later, untagged.
            self.abandon_held(repo, manifests.iter().map(|(d, _)| *d));
            return Err(FsError::new(
                Cause::Io,
                format!(
                    "manifest {d} references blobs or manifests that are neither in the archive nor in the registry"
                ),
            ));
        }
        let mut tags = Vec::new();
        let mut first = None;
        for (i, entry) in index.manifests.iter().enumerate() {
            let Some(digest) = entry.digest() else { continue };
            first.get_or_insert(digest);
            let named = entry
                .annotations
                .as_ref()
                .and_then(|a| a.get("org.opencontainers.image.ref.name"));
            let tag = match named {
                Some(n) => tag_of(&format!("x:{n}")).or_else(|| tag_of(n)),
                None if i == 0 => tag_from_file_name(file_name),
                None => None,
            };
            if let Some(tag) = tag {
                self.push_tag(repo, &tag, digest).await?;
                tags.push(tag);
            }
        }
        let first = first.ok_or_else(|| FsError::new(Cause::Invalid, "index.json lists no manifest"))?;
        Ok(Imported { first, tags })
    }

    async fn import_docker(&self, repo: &str, a: &Archive, file_name: &str, pre: &Prepushed) -> FsResult<Imported> {
        let images: Vec<DockerImage> = serde_json::from_slice(&a.read(a.member("manifest.json")?)?)
            .map_err(|e| FsError::new(Cause::Invalid, format!("manifest.json of a docker archive: {e}")))?;
        let mut first = None;
        let mut tags = Vec::new();
        for image in &images {
            let config_member = a.member(&image.config)?;
            let config_bytes = a.read(config_member)?;
            let config_digest = Digest::of(&config_bytes);
            let mut uploads = vec![(config_digest, a.range(config_member))];
            // Each layer's digest: known now, or when its early push is done.
            let mut digests = Vec::new();
            let mut waits = Vec::new();
            for path in &image.layers {
                let m = a.member(path)?;
                if let Some(pushing) = pre.get(m.offset, m.size) {
                    digests.push(None);
                    waits.push(pushing);
                } else {
                    let digest = a.hash(m)?;
                    uploads.push((digest, a.range(m)));
                    digests.push(Some(digest));
                }
            }
            let mut waited = self.push_blobs_and_wait(repo, uploads, waits).await?.into_iter();
            let mut layers = Vec::new();
            for (path, digest) in image.layers.iter().zip(digests) {
                let m = a.member(path)?;
                let digest = digest
                    .or_else(|| waited.next())
                    .expect("one early push per layer without a digest");
                let media_type = match a.magic(m)? {
                    [0x1f, 0x8b, ..] => "application/vnd.oci.image.layer.v1.tar+gzip",
                    [0x28, 0xb5, 0x2f, 0xfd] => "application/vnd.oci.image.layer.v1.tar+zstd",
                    _ => "application/vnd.oci.image.layer.v1.tar",
                };
                layers
                    .push(serde_json::json!({ "mediaType": media_type, "digest": digest.to_string(), "size": m.size }));
            }
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": oci::OCI_MANIFEST,
                "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config_bytes.len() },
                "layers": layers,
            });
            let bytes = Bytes::from(serde_json::to_vec(&manifest).expect("JSON"));
            let digest = Digest::of(&bytes);
            first.get_or_insert(digest);
            let mut image_tags: Vec<String> = image.repo_tags.iter().flatten().filter_map(|t| tag_of(t)).collect();
            if image_tags.is_empty() && images.len() == 1 {
                image_tags.extend(tag_from_file_name(file_name));
            }
            self.push_manifest(repo, Reference::Digest(digest), bytes).await?;
            for tag in image_tags {
                self.push_tag(repo, &tag, digest).await?;
                tags.push(tag);
            }
        }
        let first = first.ok_or_else(|| FsError::new(Cause::Invalid, "manifest.json lists no image"))?;
        Ok(Imported { first, tags })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_from_references_and_names() {
        assert_eq!(tag_of("127.0.0.1:5000/team/app:v1").as_deref(), Some("v1"));
        assert_eq!(tag_of("app:latest").as_deref(), Some("latest"));
        assert_eq!(tag_of("127.0.0.1:5000/team/app"), None, "a port is not a tag");
        assert_eq!(tag_from_file_name("app-v1.tar").as_deref(), Some("app-v1"));
        assert_eq!(tag_from_file_name(".hidden.tar"), None);
    }

    #[test]
    fn plain_files_are_not_archives() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"just some bytes, not a tar").unwrap();
        assert!(Archive::open(&p).unwrap().is_none());
        // A tar without an image layout is a plain blob too.
        let t = dir.path().join("t.tar");
        let status = std::process::Command::new("tar")
            .arg("-cf")
            .arg(&t)
            .arg("-C")
            .arg(dir.path())
            .arg("x")
            .status()
            .unwrap();
        assert!(status.success());
        assert!(Archive::open(&t).unwrap().is_none());
        // A tar whose second header is bogus is an error: never pushed as a blob.
        let two = dir.path().join("two.tar");
        let status = std::process::Command::new("tar")
            .arg("-cf")
            .arg(&two)
            .arg("-C")
            .arg(dir.path())
            .arg("x")
            .arg("t.tar")
            .status()
            .unwrap();
        assert!(status.success());
        let mut bytes = std::fs::read(&two).unwrap();
        // The second header follows the first (512) and x's data (one block).
        bytes[1024 + 148..1024 + 156].copy_from_slice(b"9999999\0");
        std::fs::write(&two, bytes).unwrap();
        let e = Archive::open(&two).err().expect("a damaged tar is an error");
        assert_eq!(e.cause, Cause::Invalid, "{e}");
    }
}
