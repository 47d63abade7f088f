//! Media types, manifest/index/descriptor parsing and media-type detection.
//! Parsing never fails a directory: anything unrecognised is `ManifestKind::Unknown`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::registry::Digest;

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
}

impl Descriptor {
    pub fn digest(&self) -> Option<Digest> {
        self.digest.parse().ok()
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
    pub artifact_type: Option<String>,
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
    artifact_type: Option<String>,
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
            artifact_type: raw.artifact_type,
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
            artifact_type: None,
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
        assert_eq!(
            m.manifests[0].platform.as_ref().unwrap().variant.as_deref(),
            Some("v8")
        );
    }

    #[test]
    fn docker_v2_detected_from_config() {
        let j = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{DOCKER_CONFIG}","digest":"{D}","size":1}},"layers":[]}}"#
        );
        let m = Manifest::parse(j.as_bytes(), None);
        assert_eq!(
            (m.kind, m.media_type.as_str()),
            (ManifestKind::Image, DOCKER_V2)
        );
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
