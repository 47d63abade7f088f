//! An in-memory registry behind the `Registry` trait, for fast tests of the
//! core: no process, no socket. It keeps repositories, tags, manifests and
//! blobs in maps, logs every call (`requests`), and can lie about a blob
//! (`lie`): serve other bytes, or claim another size. It follows what
//! distribution 2.8 does where registries differ: no referrers API, no tag
//! DELETE, a manifest PUT refused while a blob it names is missing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bytes::Bytes;

use super::client::{BlobBody, FetchedManifest, FileRange, StallClock};
use super::error::{RegistryError, Result};
use super::Registry;
use crate::oci::{self, Digest, Reference};

/// How the fake misreports a blob.
#[derive(Clone, Debug)]
pub enum Lie {
    /// Serve these bytes instead of the blob's (sizes stay the blob's).
    Bytes(Bytes),
    /// Say the blob has this many bytes (HEAD, and the total of each GET).
    Size(u64),
}

#[derive(Default)]
struct Repo {
    tags: BTreeMap<String, Digest>,
    manifests: HashMap<Digest, (Bytes, String)>,
    blobs: HashMap<Digest, Bytes>,
}

#[derive(Default)]
struct State {
    repos: BTreeMap<String, Repo>,
    lies: HashMap<Digest, Lie>,
    log: Vec<String>,
}

impl State {
    /// A repository, or the registry's NAME_UNKNOWN.
    fn repo(&self, repo: &str) -> Result<&Repo> {
        self.repos
            .get(repo)
            .ok_or_else(|| RegistryError::NotFound(format!("repository {repo}")))
    }

    /// A blob of a repository, or BLOB_UNKNOWN.
    fn blob(&self, repo: &str, digest: &Digest) -> Result<&Bytes> {
        self.repos
            .get(repo)
            .and_then(|r| r.blobs.get(digest))
            .ok_or_else(|| RegistryError::NotFound(format!("blob {repo}@{digest}")))
    }
}

#[derive(Default)]
pub struct FakeRegistry {
    state: Mutex<State>,
}

/// What `push_image` made.
#[derive(Clone, Debug)]
pub struct FakeImage {
    pub manifest: Digest,
    pub manifest_bytes: Bytes,
    pub config: Digest,
    pub layers: Vec<Digest>,
}

impl FakeRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Store a blob in `repo` (creating the repository); its digest.
    pub fn put_blob(&self, repo: &str, bytes: impl Into<Bytes>) -> Digest {
        let bytes = bytes.into();
        let d = Digest::of(&bytes);
        let mut s = self.state.lock().unwrap();
        s.repos.entry(repo.to_string()).or_default().blobs.insert(d, bytes);
        d
    }

    /// Store manifest bytes in `repo`, tagged when `tag` is given; its digest.
    pub fn put_manifest_bytes(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: impl Into<Bytes>,
    ) -> Digest {
        let bytes = bytes.into();
        let d = Digest::of(&bytes);
        let mut s = self.state.lock().unwrap();
        let r = s.repos.entry(repo.to_string()).or_default();
        r.manifests.insert(d, (bytes, media_type.to_string()));
        if let Some(t) = tag {
            r.tags.insert(t.to_string(), d);
        }
        d
    }

    /// An OCI image with these layers and a small config, tagged `tag`.
    pub fn push_image(&self, repo: &str, tag: &str, layers: &[&[u8]]) -> FakeImage {
        let config_bytes = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"tag":"{tag}"}}"#
        );
        let config = self.put_blob(repo, config_bytes.clone().into_bytes());
        let mut descs = Vec::new();
        let mut digests = Vec::new();
        for l in layers {
            let d = self.put_blob(repo, l.to_vec());
            digests.push(d);
            descs.push(format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{}}}"#,
                l.len()
            ));
        }
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{}}},"layers":[{}]}}"#,
            oci::OCI_MANIFEST,
            config_bytes.len(),
            descs.join(",")
        );
        let d = self.put_manifest_bytes(repo, Some(tag), oci::OCI_MANIFEST, manifest.clone().into_bytes());
        FakeImage {
            manifest: d,
            manifest_bytes: Bytes::from(manifest),
            config,
            layers: digests,
        }
    }

    /// From now on, misreport this blob.
    pub fn lie(&self, digest: Digest, lie: Lie) {
        self.state.lock().unwrap().lies.insert(digest, lie);
    }

    /// From now on, tell the truth about this blob again.
    pub fn stop_lying(&self, digest: &Digest) {
        self.state.lock().unwrap().lies.remove(digest);
    }

    /// Every call so far, as `METHOD what` lines.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    /// The digest a tag points at, as the registry has it.
    pub fn tag(&self, repo: &str, tag: &str) -> Option<Digest> {
        self.state.lock().unwrap().repos.get(repo)?.tags.get(tag).copied()
    }

    /// A blob's bytes, as the registry has them.
    pub fn blob(&self, repo: &str, digest: &Digest) -> Option<Bytes> {
        self.state.lock().unwrap().repos.get(repo)?.blobs.get(digest).cloned()
    }

    /// A manifest's bytes, as the registry has them.
    pub fn manifest(&self, repo: &str, digest: &Digest) -> Option<Bytes> {
        let s = self.state.lock().unwrap();
        s.repos.get(repo)?.manifests.get(digest).map(|(b, _)| b.clone())
    }

    /// Every (tag, digest) of a repository.
    pub fn tags_of(&self, repo: &str) -> Vec<(String, Digest)> {
        let s = self.state.lock().unwrap();
        s.repos
            .get(repo)
            .map(|r| r.tags.iter().map(|(t, d)| (t.clone(), *d)).collect())
            .unwrap_or_default()
    }

    fn log(&self, line: String) {
        self.state.lock().unwrap().log.push(line);
    }

    fn resolve(r: &Repo, reference: &Reference) -> Option<Digest> {
        match reference {
            Reference::Tag(t) => r.tags.get(t).copied(),
            Reference::Digest(d) => r.manifests.contains_key(d).then_some(*d),
        }
    }

    fn not_found(what: String) -> RegistryError {
        RegistryError::NotFound(what)
    }
}

#[async_trait::async_trait]
impl Registry for FakeRegistry {
    fn registry_host(&self) -> String {
        "fake.invalid".into()
    }

    async fn ping(&self) -> Result<()> {
        self.log("GET /v2/".into());
        Ok(())
    }

    async fn catalog(&self) -> Result<Vec<String>> {
        self.log("GET catalog".into());
        Ok(self.state.lock().unwrap().repos.keys().cloned().collect())
    }

    async fn catalog_page(
        &self,
        last: &str,
        n: usize,
        next: Option<url::Url>,
    ) -> Result<(Vec<String>, Option<url::Url>)> {
        self.log(format!("GET catalog page after {last:?}"));
        let last = match &next {
            Some(u) => u
                .query_pairs()
                .find(|(k, _)| k == "last")
                .map(|(_, v)| v.to_string())
                .unwrap_or_default(),
            None => last.to_string(),
        };
        let s = self.state.lock().unwrap();
        let after: Vec<String> = s.repos.keys().filter(|r| **r > last).cloned().collect();
        let page: Vec<String> = after.iter().take(n).cloned().collect();
        let link = (after.len() > n)
            .then(|| page.last())
            .flatten()
            .map(|l| url::Url::parse(&format!("http://fake.invalid/v2/_catalog?n={n}&last={l}")).expect("url"));
        Ok((page, link))
    }

    async fn tags(&self, repo: &str) -> Result<Vec<String>> {
        self.log(format!("GET tags {repo}"));
        let s = self.state.lock().unwrap();
        let r = s.repo(repo)?;
        Ok(r.tags.keys().cloned().collect())
    }

    async fn get_manifest(&self, repo: &str, reference: &Reference) -> Result<FetchedManifest> {
        self.log(format!("GET manifest {repo}:{reference}"));
        let s = self.state.lock().unwrap();
        let r = s.repo(repo)?;
        let d = Self::resolve(r, reference).ok_or_else(|| Self::not_found(format!("manifest {repo}:{reference}")))?;
        let (bytes, media_type) = &r.manifests[&d];
        Ok(FetchedManifest {
            bytes: bytes.clone(),
            media_type: Some(media_type.clone()),
            digest: d,
        })
    }

    async fn head_manifest(&self, repo: &str, reference: &Reference) -> Result<Digest> {
        self.log(format!("HEAD manifest {repo}:{reference}"));
        let s = self.state.lock().unwrap();
        let r = s.repo(repo)?;
        Self::resolve(r, reference).ok_or_else(|| Self::not_found(format!("manifest {repo}:{reference}")))
    }

    async fn referrers(&self, repo: &str, digest: &Digest) -> Result<Option<Bytes>> {
        self.log(format!("GET referrers {repo}@{digest}"));
        Ok(None)
    }

    async fn head_blob(&self, repo: &str, digest: &Digest) -> Result<u64> {
        self.log(format!("HEAD blob {repo}@{digest}"));
        let s = self.state.lock().unwrap();
        let b = s.blob(repo, digest)?;
        Ok(match s.lies.get(digest) {
            Some(Lie::Size(n)) => *n,
            _ => b.len() as u64,
        })
    }

    async fn get_blob(
        &self,
        repo: &str,
        digest: &Digest,
        start: u64,
        end: u64,
        _stall: &StallClock,
    ) -> Result<BlobBody> {
        self.log(format!(
            "GET blob {repo}@{digest} bytes={start}-{}",
            end.saturating_sub(1)
        ));
        let s = self.state.lock().unwrap();
        let b = s.blob(repo, digest)?;
        let (served, total) = match s.lies.get(digest) {
            Some(Lie::Bytes(other)) => (other.clone(), b.len() as u64),
            Some(Lie::Size(n)) => (b.clone(), *n),
            None => (b.clone(), b.len() as u64),
        };
        if start >= total {
            return Err(RegistryError::Invalid(format!(
                "GET blob {digest}: range from {start} past {total}"
            )));
        }
        let from = (start as usize).min(served.len());
        let to = (end as usize).min(served.len());
        let pieces = served
            .slice(from..to)
            .chunks(64 << 10)
            .map(Bytes::copy_from_slice)
            .collect();
        Ok(BlobBody::from_pieces(start, Some(total), pieces))
    }

    async fn has_blob(&self, repo: &str, digest: &Digest) -> Result<bool> {
        match self.head_blob(repo, digest).await {
            Ok(_) => Ok(true),
            Err(RegistryError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn mount_blob(&self, repo: &str, digest: &Digest, from: &str) -> Result<bool> {
        self.log(format!("POST mount {repo}@{digest} from {from}"));
        let mut s = self.state.lock().unwrap();
        let Some(b) = s.repos.get(from).and_then(|r| r.blobs.get(digest)).cloned() else {
            return Ok(false);
        };
        s.repos.entry(repo.to_string()).or_default().blobs.insert(*digest, b);
        Ok(true)
    }

    async fn upload_blob(&self, repo: &str, digest: &Digest, src: &FileRange) -> Result<()> {
        self.log(format!("PUT blob {repo}@{digest}"));
        let mut buf = vec![0u8; src.len as usize];
        let f = std::fs::File::open(&src.path)?;
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, src.offset)?;
        let actual = Digest::of(&buf);
        if actual != *digest {
            return Err(RegistryError::Rejected(format!(
                "DIGEST_INVALID: upload of {digest} hashed to {actual}"
            )));
        }
        let mut s = self.state.lock().unwrap();
        s.repos
            .entry(repo.to_string())
            .or_default()
            .blobs
            .insert(*digest, buf.into());
        Ok(())
    }

    async fn put_manifest(&self, repo: &str, reference: &Reference, media_type: &str, bytes: Bytes) -> Result<Digest> {
        self.log(format!("PUT manifest {repo}:{reference}"));
        let d = Digest::of(&bytes);
        if let Reference::Digest(want) = reference {
            if *want != d {
                return Err(RegistryError::Rejected(format!("DIGEST_INVALID: {want} is not {d}")));
            }
        }
        let parsed = oci::Manifest::parse(&bytes, Some(media_type));
        let mut s = self.state.lock().unwrap();
        let r = s.repos.entry(repo.to_string()).or_default();
        for b in parsed.blobs() {
            match b.digest() {
                Some(bd) if r.blobs.contains_key(&bd) => {}
                _ => {
                    return Err(RegistryError::MissingReferences(format!(
                        "MANIFEST_BLOB_UNKNOWN: {}",
                        b.digest
                    )))
                }
            }
        }
        for m in &parsed.manifests {
            match m.digest() {
                Some(md) if r.manifests.contains_key(&md) => {}
                _ => {
                    return Err(RegistryError::MissingReferences(format!(
                        "MANIFEST_BLOB_UNKNOWN: {}",
                        m.digest
                    )))
                }
            }
        }
        r.manifests.insert(d, (bytes, media_type.to_string()));
        if let Reference::Tag(t) = reference {
            r.tags.insert(t.clone(), d);
        }
        Ok(d)
    }

    async fn delete_manifest(&self, repo: &str, reference: &Reference) -> Result<()> {
        self.log(format!("DELETE manifest {repo}:{reference}"));
        let mut s = self.state.lock().unwrap();
        let r = s
            .repos
            .get_mut(repo)
            .ok_or_else(|| Self::not_found(format!("repository {repo}")))?;
        match reference {
            Reference::Tag(_) => Err(RegistryError::Unsupported(format!("DELETE tag {repo}:{reference}"))),
            Reference::Digest(d) => {
                r.manifests
                    .remove(d)
                    .ok_or_else(|| Self::not_found(format!("manifest {repo}@{d}")))?;
                r.tags.retain(|_, t| t != d);
                Ok(())
            }
        }
    }
}
