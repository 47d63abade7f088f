//! The bottom floor: what OCI content *is*, with no I/O and nothing from the
//! rest of the crate. Digests (`digest.rs`), the name grammar (`reference.rs`),
//! the tar layout of an export (`tarstream.rs`), the tar rules every reader
//! shares (`tarheader.rs`), and here media types, manifest/index/descriptor
//! parsing and media-type detection.
//! Parsing never fails a directory: anything unrecognised is `ManifestKind::Unknown`.

pub mod digest;
pub mod reference;
pub mod tarheader;
pub mod tarstream;

pub use digest::{Digest, InvalidDigest};
pub use reference::Reference;

use std::collections::BTreeMap;

use serde::Deserialize;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_V1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Everything we can read, best first (sent as `Accept` on manifest requests).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.5, \
application/vnd.docker.distribution.manifest.v1+json;q=0.5, \
application/json;q=0.1";

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default, rename = "os.version")]
    pub os_version: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    /// Kept as text: a non-sha256 digest is shown raw rather than failing the parse.
    #[serde(default)]
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub artifact_type: Option<String>,
    /// Where a foreign (non-distributable) layer is downloaded from.
    #[serde(default)]
    pub urls: Option<Vec<String>>,
}

/// Docker's foreign layer type (Windows base layers).
pub const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// OCI's non-distributable layer types share this prefix.
pub const OCI_NONDISTRIBUTABLE_PREFIX: &str = "application/vnd.oci.image.layer.nondistributable.";

impl Descriptor {
    pub fn digest(&self) -> Option<Digest> {
        self.digest.parse().ok()
    }

    /// A foreign / non-distributable layer: registries need not hold it
    /// (clients download it from its `urls`), so it is never fetched from one.
    pub fn is_foreign(&self) -> bool {
        self.media_type == DOCKER_FOREIGN_LAYER || self.media_type.starts_with(OCI_NONDISTRIBUTABLE_PREFIX)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestKind {
    /// OCI index or Docker manifest list.
    Index,
    /// OCI image manifest, Docker v2 manifest, or an artifact manifest with config + layers.
    Image,
    /// Docker schema1: shown raw.
    Schema1,
    /// Anything else: shown raw.
    Unknown,
}

/// The parts of a manifest the tree is built from.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub kind: ManifestKind,
    /// The effective media type: from the JSON, else the registry's Content-Type, else detected.
    pub media_type: String,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    subject: Option<Descriptor>,
    #[serde(default)]
    fs_layers: Option<serde_json::Value>,
}

impl Manifest {
    /// Parse manifest bytes. `declared` is the registry's Content-Type.
    pub fn parse(bytes: &[u8], declared: Option<&str>) -> Manifest {
        let raw: Raw = match serde_json::from_slice(bytes) {
            Ok(r) => r,
            Err(_) => return Manifest::unknown(declared.unwrap_or("application/octet-stream")),
        };
        let in_json = raw.media_type.clone().filter(|m| !m.is_empty());
        let media_type = in_json
            .clone()
            .or_else(|| declared.filter(|d| is_manifest_type(d)).map(str::to_string))
            .unwrap_or_else(|| detect(&raw).to_string());
        let kind = match media_type.as_str() {
            OCI_INDEX | DOCKER_LIST => ManifestKind::Index,
            OCI_MANIFEST | DOCKER_V2 => ManifestKind::Image,
            DOCKER_V1 | DOCKER_V1_SIGNED => ManifestKind::Schema1,
            // A wrong or unknown media type: trust the JSON's shape.
            _ => match detect(&raw) {
                OCI_INDEX | DOCKER_LIST if raw.manifests.is_some() => ManifestKind::Index,
                OCI_MANIFEST | DOCKER_V2 if raw.config.is_some() => ManifestKind::Image,
                DOCKER_V1 => ManifestKind::Schema1,
                _ => ManifestKind::Unknown,
            },
        };
        Manifest {
            kind,
            media_type,
            config: raw.config.filter(|_| kind == ManifestKind::Image),
            layers: if kind == ManifestKind::Image {
                raw.layers.unwrap_or_default()
            } else {
                vec![]
            },
            manifests: if kind == ManifestKind::Index {
                raw.manifests.unwrap_or_default()
            } else {
                vec![]
            },
            subject: raw.subject,
        }
    }

    fn unknown(media_type: &str) -> Manifest {
        Manifest {
            kind: ManifestKind::Unknown,
            media_type: media_type.to_string(),
            config: None,
            layers: vec![],
            manifests: vec![],
            subject: None,
        }
    }

    /// Blobs this manifest references directly (config first, then layers).
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(self.layers.iter())
    }
}

fn is_manifest_type(m: &str) -> bool {
    matches!(
        m,
        OCI_INDEX | OCI_MANIFEST | DOCKER_LIST | DOCKER_V2 | DOCKER_V1 | DOCKER_V1_SIGNED
    )
}

/// Media type from the JSON's shape, for manifests that do not say (or lie).
fn detect(raw: &Raw) -> &'static str {
    if raw.schema_version == Some(1) || raw.fs_layers.is_some() {
        return DOCKER_V1_SIGNED;
    }
    // Every v2 manifest and index says schemaVersion 2; an image config (which
    // has a `config` key of its own) never does.
    if raw.schema_version != Some(2) {
        return "application/octet-stream";
    }
    if let Some(ms) = &raw.manifests {
        let docker = ms.iter().any(|d| d.media_type == DOCKER_V2);
        return if docker { DOCKER_LIST } else { OCI_INDEX };
    }
    if let Some(c) = &raw.config {
        return if c.media_type == DOCKER_CONFIG {
            DOCKER_V2
        } else {
            OCI_MANIFEST
        };
    }
    "application/octet-stream"
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn image_manifest() {
        let j = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D}","size":7}},"layers":[{{"mediaType":"x","digest":"{D}","size":9}}]}}"#
        );
        let m = Manifest::parse(j.as_bytes(), None);
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(m.blobs().map(|d| d.size).collect::<Vec<_>>(), vec![7, 9]);
    }

    #[test]
    fn index_without_media_type_is_oci_index() {
        let j = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":3,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#
        );
        let m = Manifest::parse(j.as_bytes(), Some("application/json"));
        assert_eq!(m.kind, ManifestKind::Index);
        assert_eq!(m.media_type, OCI_INDEX);
        assert_eq!(m.manifests[0].platform.as_ref().unwrap().variant.as_deref(), Some("v8"));
    }

    #[test]
    fn docker_v2_detected_from_config() {
        let j = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{DOCKER_CONFIG}","digest":"{D}","size":1}},"layers":[]}}"#
        );
        let m = Manifest::parse(j.as_bytes(), None);
        assert_eq!((m.kind, m.media_type.as_str()), (ManifestKind::Image, DOCKER_V2));
    }

    #[test]
    fn image_configs_are_not_manifests() {
        let config = br#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        assert_eq!(Manifest::parse(config, None).kind, ManifestKind::Unknown);
    }

    #[test]
    fn schema1_and_garbage_are_raw() {
        let m = Manifest::parse(br#"{"schemaVersion":1,"fsLayers":[]}"#, None);
        assert_eq!(m.kind, ManifestKind::Schema1);
        let m = Manifest::parse(b"not json", None);
        assert_eq!(m.kind, ManifestKind::Unknown);
        let m = Manifest::parse(br#"{"mediaType":"application/x-weird"}"#, None);
        assert_eq!(m.kind, ManifestKind::Unknown);
    }
}

/// Where an index entry leads: another manifest, or (buildx cache indexes) a blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildTarget {
    Manifest(Digest),
    Blob(Digest),
}

impl ChildTarget {
    pub fn blob(self) -> Option<Digest> {
        match self {
            ChildTarget::Blob(d) => Some(d),
            ChildTarget::Manifest(_) => None,
        }
    }

    pub fn manifest(self) -> Option<Digest> {
        match self {
            ChildTarget::Manifest(d) => Some(d),
            ChildTarget::Blob(_) => None,
        }
    }
}

/// The index entries of `index` that lead to blobs (buildx cache indexes list layers).
pub fn child_blobs(index: &Manifest) -> Vec<Digest> {
    child_names(index).into_iter().filter_map(|(_, t)| t.blob()).collect()
}

/// The index entries of `index` that lead to manifests.
pub fn child_manifests(index: &Manifest) -> Vec<Digest> {
    child_names(index)
        .into_iter()
        .filter_map(|(_, t)| t.manifest())
        .collect()
}

/// Annotation buildx puts on attestation manifests, and the digest they describe.
const REFERENCE_TYPE: &str = "vnd.docker.reference.type";
const REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";

fn is_manifest_media_type(m: &str) -> bool {
    is_manifest_type(m) || m == "application/vnd.oci.artifact.manifest.v1+json"
}

/// `os-arch[-variant][-os.version]`, with anything unsafe in a file name replaced.
pub fn platform_name(p: &Platform) -> Option<String> {
    if p.os.is_empty() && p.architecture.is_empty() {
        return None;
    }
    if p.os == "unknown" && p.architecture == "unknown" {
        return None;
    }
    let mut parts = vec![p.os.as_str(), p.architecture.as_str()];
    parts.extend(p.variant.as_deref().filter(|v| !v.is_empty()));
    parts.extend(p.os_version.as_deref().filter(|v| !v.is_empty()));
    Some(sanitize(&parts.join("-")))
}

/// Longest name made from registry strings: room for a `~N` suffix within
/// the 255 bytes a file name may have.
const MAX_MADE_NAME: usize = 240;

/// A file name from untrusted text (platforms, annotations, artifact types):
/// no `/`, no control characters, not `.`/`..`, not empty, at most 240 bytes.
pub fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_MADE_NAME));
    for c in s.chars() {
        let c = if c == '/' || c.is_control() { '_' } else { c };
        if out.len() + c.len_utf8() > MAX_MADE_NAME {
            break;
        }
        out.push(c);
    }
    match out.as_str() {
        "" | "." | ".." => format!("_{out}"),
        _ => out,
    }
}

/// Names for the entries of an index's `manifests/` directory, in index order.
///
/// The rule (stable: an index never changes, so neither do its names):
/// - an entry with a platform is `os-arch[-variant][-os.version]`;
/// - a buildx attestation manifest is `attestation-<name of the entry it describes>`
///   (or `attestation-sha256-<12 hex>` when that entry is not in the index);
/// - an entry without a platform, or a blob entry (buildx cache indexes), is its
///   digest `sha256:<hex>`;
/// - when a name is taken already, later entries get `~2`, `~3`, … appended.
pub fn child_names(index: &Manifest) -> Vec<(String, ChildTarget)> {
    let mut plain: Vec<Option<String>> = Vec::with_capacity(index.manifests.len());
    for d in &index.manifests {
        let is_attestation = annotation(d, REFERENCE_TYPE) == Some("attestation-manifest");
        plain.push(if is_attestation {
            None
        } else {
            d.platform.as_ref().and_then(platform_name)
        });
    }
    let mut out = Vec::new();
    let mut taken = std::collections::HashSet::new();
    for (i, d) in index.manifests.iter().enumerate() {
        let Some(digest) = d.digest() else {
            tracing::warn!(digest = ?d.digest, "index entry without a valid digest; not shown");
            continue;
        };
        let is_blob = !d.media_type.is_empty() && !is_manifest_media_type(&d.media_type);
        let target = if is_blob {
            ChildTarget::Blob(digest)
        } else {
            ChildTarget::Manifest(digest)
        };
        let base = if is_blob {
            digest.to_string()
        } else if annotation(d, REFERENCE_TYPE) == Some("attestation-manifest") {
            let described = annotation(d, REFERENCE_DIGEST).unwrap_or_default();
            let sibling = index
                .manifests
                .iter()
                .position(|s| s.digest == described)
                .and_then(|j| plain[j].clone());
            match sibling {
                Some(name) => format!("attestation-{name}"),
                None => format!("attestation-{}", short_digest(described)),
            }
        } else {
            plain[i].clone().unwrap_or_else(|| digest.to_string())
        };
        let mut name = base.clone();
        let mut n = 1;
        while !taken.insert(name.clone()) {
            n += 1;
            name = format!("{base}~{n}");
        }
        out.push((name, target));
    }
    out
}

/// The value of annotation `key` on a descriptor.
pub fn annotation<'a>(d: &'a Descriptor, key: &str) -> Option<&'a str> {
    d.annotations.as_ref()?.get(key).map(String::as_str)
}

/// `sha256:abcdef…` → `sha256-abcdef012345` (12 hex digits).
fn short_digest(d: &str) -> String {
    let (alg, hex) = d.split_once(':').unwrap_or(("digest", d));
    let short: String = hex.chars().take(12).collect();
    sanitize(&format!("{alg}-{short}"))
}

/// Names for `referrers/`: what each referrer is (its artifact type, else its
/// config media type, without the `application/` prefix), then `-` and 12 hex
/// digits of its digest, so names stay unique and stable.
/// cosign's digest tags next to the referrers tag: `sha256-<hex>.sig`, ….
pub const COSIGN_TAG_SUFFIXES: [&str; 3] = ["sig", "att", "sbom"];

/// The referrers tag schema's tag for `subject`: `sha256-<hex>`.
pub fn referrers_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

pub fn referrer_names(referrers: &[Descriptor]) -> Vec<(String, Digest)> {
    let mut out: Vec<(String, Digest)> = referrers
        .iter()
        .filter_map(|d| {
            let Some(digest) = d.digest() else {
                tracing::warn!(digest = ?d.digest, "referrer without a valid digest; not shown");
                return None;
            };
            let kind = d
                .artifact_type
                .as_deref()
                .filter(|t| !t.is_empty())
                .unwrap_or("manifest");
            let kind = kind.strip_prefix("application/").unwrap_or(kind);
            Some((sanitize(&format!("{kind}-{}", &digest.hex()[..12])), digest))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Width of layer names: zero-padded to at least two digits.
pub fn layer_name(index: usize, count: usize) -> String {
    let width = count.saturating_sub(1).to_string().len().max(2);
    format!("{index:0width$}")
}

#[cfg(test)]
mod naming_tests {
    use super::*;

    fn digest(n: u8) -> String {
        Digest::of(&[n]).to_string()
    }

    fn index(entries: &[serde_json::Value]) -> Manifest {
        let j = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
        Manifest::parse(j.to_string().as_bytes(), None)
    }

    #[test]
    fn platforms_duplicates_attestations_and_bare_entries() {
        let m = index(&[
            serde_json::json!({"mediaType": OCI_MANIFEST, "digest": digest(1), "size": 1, "platform": {"os": "linux", "architecture": "amd64"}}),
            serde_json::json!({"mediaType": OCI_MANIFEST, "digest": digest(2), "size": 1, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}),
            serde_json::json!({"mediaType": OCI_MANIFEST, "digest": digest(3), "size": 1, "platform": {"os": "linux", "architecture": "amd64"}}),
            serde_json::json!({"mediaType": OCI_MANIFEST, "digest": digest(4), "size": 1, "platform": {"os": "unknown", "architecture": "unknown"},
                "annotations": {"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": digest(2)}}),
            serde_json::json!({"mediaType": OCI_MANIFEST, "digest": digest(5), "size": 1}),
            serde_json::json!({"mediaType": OCI_MANIFEST, "digest": digest(6), "size": 1, "platform": {"os": "windows", "architecture": "amd64", "os.version": "10.0.17763.1"}}),
        ]);
        let names: Vec<String> = child_names(&m).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            vec![
                "linux-amd64".to_string(),
                "linux-arm64-v8".into(),
                "linux-amd64~2".into(),
                "attestation-linux-arm64-v8".into(),
                digest(5),
                "windows-amd64-10.0.17763.1".into(),
            ]
        );
    }

    #[test]
    fn buildx_cache_entries_are_blobs() {
        let m = index(&[
            serde_json::json!({"mediaType": "application/vnd.buildkit.cacheconfig.v0", "digest": digest(1), "size": 1}),
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(2), "size": 1}),
        ]);
        let c = child_names(&m);
        assert_eq!(c[0], (digest(1), ChildTarget::Blob(digest(1).parse().unwrap())));
        assert!(matches!(c[1].1, ChildTarget::Blob(_)));
    }

    #[test]
    fn referrer_and_layer_names() {
        let d: Descriptor = serde_json::from_value(serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": digest(7), "size": 1, "artifactType": "application/vnd.example.sbom.v1+json"}))
        .unwrap();
        let names = referrer_names(&[d]);
        assert_eq!(names[0].0, format!("vnd.example.sbom.v1+json-{}", &digest(7)[7..19]));
        assert_eq!(layer_name(3, 5), "03");
        assert_eq!(layer_name(7, 120), "007");
        assert_eq!(sanitize("a/b"), "a_b");
        assert_eq!(sanitize(".."), "_..");
    }

    #[test]
    fn names_from_registry_text_are_safe_file_names() {
        assert_eq!(sanitize("linux\namd64\t\u{7f}"), "linux_amd64__");
        let long = "é".repeat(300);
        let name = sanitize(&long);
        assert!(name.len() <= 240 && name.chars().all(|c| c == 'é'), "{}", name.len());
        // An index entry with a hostile platform and a crafted attestation annotation.
        let index = Manifest::parse(
            serde_json::json!({
                "schemaVersion": 2, "mediaType": OCI_INDEX,
                "manifests": [
                    {"mediaType": OCI_MANIFEST, "digest": digest(1), "size": 1,
                     "platform": {"os": "linux/../../etc", "architecture": "x".repeat(400)}},
                    {"mediaType": OCI_MANIFEST, "digest": digest(2), "size": 1,
                     "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                                     "vnd.docker.reference.digest": "sha256:ééé\n"}},
                    {"mediaType": OCI_MANIFEST, "digest": "../../../../etc/passwd", "size": 1}
                ]
            })
            .to_string()
            .as_bytes(),
            None,
        );
        let names = child_names(&index);
        assert_eq!(names.len(), 2, "the entry with a path for a digest is not shown");
        for (n, _) in &names {
            assert!(
                n.len() <= 255 && !n.contains('/') && !n.chars().any(char::is_control),
                "{n:?}"
            );
        }
        assert_eq!(names[1].0, "attestation-sha256-ééé_");
    }
}

/// The payload of a signed (prettyjws) schema1 manifest: the bytes its digest
/// covers — the document up to `formatLength`, then the decoded `formatTail`
/// of the first signature's protected header.
pub fn jws_payload(bytes: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    #[derive(Deserialize)]
    struct Signed {
        signatures: Vec<Signature>,
    }
    #[derive(Deserialize)]
    struct Signature {
        protected: String,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Protected {
        format_length: usize,
        format_tail: String,
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signed: Signed = serde_json::from_slice(bytes).ok()?;
    let protected = b64
        .decode(signed.signatures.first()?.protected.trim_end_matches('='))
        .ok()?;
    let protected: Protected = serde_json::from_slice(&protected).ok()?;
    let tail = b64.decode(protected.format_tail.trim_end_matches('=')).ok()?;
    let mut payload = bytes.get(..protected.format_length)?.to_vec();
    payload.extend_from_slice(&tail);
    Some(payload)
}

#[cfg(test)]
mod jws_tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn schema1_payload_is_recovered() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = b"{\n   \"schemaVersion\": 1,\n   \"name\": \"a/b\",\n   \"fsLayers\": []\n}";
        // The signed form cuts the payload before its closing brace and adds signatures.
        let cut = payload.len() - 2;
        let protected = serde_json::json!({"formatLength": cut, "formatTail": b64.encode(&payload[cut..])});
        let mut signed = payload[..cut].to_vec();
        signed.extend_from_slice(
            format!(
                ",\n   \"signatures\": [{{\"protected\": \"{}\"}}]\n}}",
                b64.encode(protected.to_string())
            )
            .as_bytes(),
        );
        assert_eq!(jws_payload(&signed).unwrap(), payload.to_vec());
        assert!(jws_payload(b"{}").is_none());
    }
}
