//! Helpers for manifest-tree tests: manifests of any shape (indexes with
//! annotations, artifacts with `subject`/`artifactType`, buildx cache
//! indexes), the `sha256-<hex>` referrers tag, manifests written straight
//! into the registry's storage (for content distribution refuses to accept
//! over the API, like schema1), and extended attributes.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde_json::{json, Value};

use super::client::{BlobInfo, RegistryClient, OCI_INDEX, OCI_MANIFEST};
use super::registry::Registry;
use super::{sha256_digest, sha256_hex};

/// Media type of the OCI "empty" config (`{}`), used by artifacts.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// Docker schema1 (signed) media type.
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// A manifest of any kind as pushed (or injected): its exact bytes and digest.
#[derive(Debug, Clone)]
pub struct RawManifest {
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub digest: String,
}

impl RawManifest {
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    /// `{mediaType, digest, size}`.
    pub fn descriptor(&self) -> Value {
        descriptor(&self.media_type, &self.digest, self.size())
    }
}

/// `{mediaType, digest, size}`.
pub fn descriptor(media_type: &str, digest: &str, size: u64) -> Value {
    json!({"mediaType": media_type, "digest": digest, "size": size})
}

/// `descriptor` with extra fields merged in (`platform`, `annotations`,
/// `artifactType`, …).
pub fn descriptor_with(base: Value, extra: Value) -> Value {
    let mut d = base;
    if let (Some(d), Some(extra)) = (d.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            d.insert(k.clone(), v.clone());
        }
    }
    d
}

/// The first 12 hex digits of a `sha256:<hex>` digest.
pub fn short_hex(digest: &str) -> &str {
    &digest.trim_start_matches("sha256:")[..12]
}

impl RegistryClient {
    /// Pushes `value` (pretty-printed) as a manifest under `reference` (a tag,
    /// or `None` for by-digest) with `Content-Type: media_type`.
    pub fn push_manifest_json(
        &self,
        repo: &str,
        reference: Option<&str>,
        media_type: &str,
        value: &Value,
    ) -> RawManifest {
        let bytes = serde_json::to_vec_pretty(value).unwrap();
        let digest = sha256_digest(&bytes);
        let reference = reference.map(String::from).unwrap_or_else(|| digest.clone());
        let pushed = self.push_manifest(repo, &reference, media_type, &bytes);
        assert_eq!(pushed, digest);
        RawManifest {
            media_type: media_type.to_string(),
            bytes,
            digest,
        }
    }

    /// Uploads `bytes` and describes them with `media_type`.
    pub fn push_blob_as(&self, repo: &str, media_type: &str, bytes: &[u8]) -> BlobInfo {
        BlobInfo {
            digest: self.push_blob(repo, bytes),
            media_type: media_type.to_string(),
            bytes: bytes.to_vec(),
        }
    }

    /// An OCI index (with `"mediaType"` unless `with_media_type` is false)
    /// over the given descriptors, as they are.
    pub fn push_index_of(
        &self,
        repo: &str,
        tag: Option<&str>,
        manifests: Vec<Value>,
        with_media_type: bool,
    ) -> RawManifest {
        let mut index = json!({"schemaVersion": 2, "manifests": manifests});
        if with_media_type {
            index["mediaType"] = json!(OCI_INDEX);
        }
        self.push_manifest_json(repo, tag, OCI_INDEX, &index)
    }

    /// An OCI artifact manifest (image manifest with `artifactType`, the
    /// empty config `{}` unless `config` is given, one layer per blob, and an
    /// optional `subject`), pushed by digest.
    pub fn push_artifact(
        &self,
        repo: &str,
        artifact_type: Option<&str>,
        config: Option<&BlobInfo>,
        layers: &[BlobInfo],
        subject: Option<Value>,
    ) -> RawManifest {
        let empty;
        let config = match config {
            Some(c) => c,
            None => {
                empty = self.push_blob_as(repo, OCI_EMPTY, b"{}");
                &empty
            }
        };
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": layers.iter().map(BlobInfo::descriptor).collect::<Vec<_>>(),
        });
        if let Some(t) = artifact_type {
            m["artifactType"] = json!(t);
        }
        if let Some(s) = subject {
            m["subject"] = s;
        }
        self.push_manifest_json(repo, None, OCI_MANIFEST, &m)
    }

    /// The OCI 1.1 referrers tag schema for registries without the API:
    /// an index tagged `sha256-<hex of subject>` listing the referrers, each
    /// descriptor carrying its `artifactType` (when it has one).
    pub fn push_referrers_tag(
        &self,
        repo: &str,
        subject_digest: &str,
        referrers: &[(&RawManifest, Option<&str>)],
    ) -> RawManifest {
        let manifests = referrers
            .iter()
            .map(|(m, t)| match t {
                Some(t) => descriptor_with(m.descriptor(), json!({"artifactType": t})),
                None => m.descriptor(),
            })
            .collect();
        let tag = format!("sha256-{}", subject_digest.trim_start_matches("sha256:"));
        self.push_index_of(repo, Some(&tag), manifests, true)
    }
}

impl RegistryClient {
    /// `DELETE /v2/<repo>/blobs/<digest>` → status (202 when the registry
    /// has delete enabled).
    pub fn delete_blob(&self, repo: &str, digest: &str) -> u16 {
        self.send(
            reqwest::Method::DELETE,
            &format!("/v2/{repo}/blobs/{digest}"),
            reqwest::header::HeaderMap::new(),
            None,
        )
        .status()
        .as_u16()
    }
}

impl Registry {
    /// Writes `bytes` as a manifest of `repo` straight into the registry's
    /// filesystem storage (blob data, revision link and, with `tag`, the tag
    /// links), the way distribution lays it out. For content the API refuses
    /// (schema1 without a signature, …). Returns `sha256:<hex>` of `bytes`.
    pub fn inject_manifest(&self, repo: &str, tag: Option<&str>, bytes: &[u8]) -> String {
        let hex = sha256_hex(bytes);
        let digest = format!("sha256:{hex}");
        let v2 = self.storage_dir().join("docker/registry/v2");
        let blob = v2.join(format!("blobs/sha256/{}/{hex}", &hex[..2]));
        fs::create_dir_all(&blob).unwrap();
        fs::write(blob.join("data"), bytes).unwrap();
        let repo_dir = v2.join(format!("repositories/{repo}"));
        // `_catalog` lists directories holding `_layers`.
        fs::create_dir_all(repo_dir.join("_layers")).unwrap();
        let manifests = repo_dir.join("_manifests");
        let mut links = vec![manifests.join(format!("revisions/sha256/{hex}"))];
        if let Some(t) = tag {
            links.push(manifests.join(format!("tags/{t}/current")));
            links.push(manifests.join(format!("tags/{t}/index/sha256/{hex}")));
        }
        for dir in links {
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("link"), &digest).unwrap();
        }
        digest
    }
}

/// `readlink` as a string, panicking with the path on failure.
pub fn link_of(path: &Path) -> String {
    fs::read_link(path)
        .unwrap_or_else(|e| panic!("readlink {}: {e}", path.display()))
        .to_string_lossy()
        .into_owned()
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

/// `getxattr(2)` (follows symlinks, like `getfattr` without `-h`).
pub fn get_xattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let p = c_path(path);
    let n = CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings; size 0 asks for the length.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; len as usize];
    // SAFETY: buf has room for `len` bytes.
    let got = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(got as usize);
    Ok(buf)
}

/// `getxattr(2)` as UTF-8, panicking with the path and name on failure.
pub fn xattr_str(path: &Path, name: &str) -> String {
    let v = get_xattr(path, name).unwrap_or_else(|e| panic!("getxattr {} {name}: {e}", path.display()));
    String::from_utf8(v).unwrap()
}

/// `listxattr(2)` (follows symlinks), sorted.
pub fn list_xattrs(path: &Path) -> io::Result<Vec<String>> {
    let p = c_path(path);
    // SAFETY: as above.
    let len = unsafe { libc::listxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; len as usize];
    // SAFETY: buf has room for `len` bytes.
    let got = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(got as usize);
    let mut names: Vec<String> = buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// The JWS payload of a schema1 "pretty JWS" manifest: the bytes before the
/// `signatures` member, as `formatLength`/`formatTail` in the first protected
/// header describe (what containers/image hashes for a schema1 digest).
/// `None` when `bytes` carries no signature.
pub fn schema1_payload(bytes: &[u8]) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let protected = v.get("signatures")?.get(0)?.get("protected")?.as_str()?;
    let header: Value = serde_json::from_slice(&super::pki::base64_decode(protected)).ok()?;
    let len = header.get("formatLength")?.as_u64()? as usize;
    let tail = super::pki::base64_decode(header.get("formatTail")?.as_str()?);
    let mut out = bytes.get(..len)?.to_vec();
    out.extend_from_slice(&tail);
    Some(out)
}
