//! A blocking registry client for seeding and checking test registries
//! (independent of the crate under test).
//!
//! Authentication: on a 401 it reads `WWW-Authenticate`; `Basic` is answered
//! with the configured credentials, `Bearer realm=..,service=..,scope=..` by
//! fetching a token from the realm (with Basic credentials if configured),
//! cached per scope. The last working `Authorization` is reused optimistically.
//!
//! Uploads are monolithic: `POST /v2/<name>/blobs/uploads/` then
//! `PUT <location>&digest=sha256:..` with the whole body.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::sha256_digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Every manifest media type, for `Accept`.
pub const ALL_MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v1+prettyjws";

/// A blob as pushed.
#[derive(Debug, Clone)]
pub struct BlobInfo {
    pub digest: String,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

impl BlobInfo {
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    /// The hex part of the digest.
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size()})
    }
}

/// An image manifest as pushed, with its config and layers.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub repo: String,
    pub tag: Option<String>,
    pub media_type: String,
    pub manifest: Vec<u8>,
    pub digest: String,
    pub config: BlobInfo,
    pub layers: Vec<BlobInfo>,
}

impl ImageInfo {
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.manifest.len()})
    }
}

/// An index / manifest list as pushed.
#[derive(Debug, Clone)]
pub struct IndexInfo {
    pub media_type: String,
    pub manifest: Vec<u8>,
    pub digest: String,
}

impl IndexInfo {
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }
}

/// A platform for index children.
#[derive(Debug, Clone)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
        }
    }
    pub fn to_json(&self) -> Value {
        let mut v = json!({"os": self.os, "architecture": self.architecture});
        if let Some(var) = &self.variant {
            v["variant"] = json!(var);
        }
        v
    }
}

/// Which index format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    Oci,
    DockerList,
}

/// A blocking client for one registry.
pub struct RegistryClient {
    base: String,
    http: Client,
    creds: Option<(String, String)>,
    tokens: Mutex<HashMap<String, String>>,
    last_auth: Mutex<Option<String>>,
}

impl RegistryClient {
    /// `base` like `http://127.0.0.1:5000`; `ca` adds a trusted root (PEM).
    pub fn new(base: &str, creds: Option<(String, String)>, ca: Option<&Path>) -> RegistryClient {
        let mut b = Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::limited(5));
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).expect("reading CA");
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA pem"));
        }
        RegistryClient {
            base: base.trim_end_matches('/').to_string(),
            http: b.build().expect("building reqwest client"),
            creds,
            tokens: Mutex::new(HashMap::new()),
            last_auth: Mutex::new(None),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn abs(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_string()
        } else {
            format!("{}{}", self.base, path_or_url)
        }
    }

    /// Status of an unauthenticated GET (no auth flow), e.g. for `/v2/` probes.
    pub fn get_status(&self, path: &str) -> Result<u16, String> {
        self.http
            .get(self.abs(path))
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    }

    /// Sends a request, doing the Basic/Bearer dance on 401 (one retry).
    pub fn send(&self, method: Method, path_or_url: &str, headers: HeaderMap, body: Option<&[u8]>) -> Response {
        let url = self.abs(path_or_url);
        let build = |auth: Option<&str>| -> RequestBuilder {
            let mut rb = self.http.request(method.clone(), &url).headers(headers.clone());
            if let Some(a) = auth {
                rb = rb.header(AUTHORIZATION, a);
            }
            if let Some(b) = body {
                rb = rb.body(b.to_vec());
            }
            rb
        };
        let last = self.last_auth.lock().unwrap().clone();
        let resp = build(last.as_deref())
            .send()
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        if resp.status() != StatusCode::UNAUTHORIZED {
            return resp;
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let Some(auth) = self.authorize(&challenge) else {
            return resp;
        };
        *self.last_auth.lock().unwrap() = Some(auth.clone());
        build(Some(&auth))
            .send()
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
    }

    /// An `Authorization` value answering `challenge`, if we can.
    fn authorize(&self, challenge: &str) -> Option<String> {
        let (scheme, params) = parse_challenge(challenge);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                let (u, p) = self.creds.as_ref()?;
                Some(format!(
                    "Basic {}",
                    super::pki::base64_std(format!("{u}:{p}").as_bytes())
                ))
            }
            "bearer" => {
                let realm = params.get("realm")?.clone();
                let service = params.get("service").cloned().unwrap_or_default();
                let scope = params.get("scope").cloned().unwrap_or_default();
                if let Some(t) = self.tokens.lock().unwrap().get(&scope) {
                    return Some(format!("Bearer {t}"));
                }
                let mut q: Vec<(&str, &str)> = vec![("service", &service)];
                for s in scope.split(' ').filter(|s| !s.is_empty()) {
                    q.push(("scope", s));
                }
                let mut rb = self.http.get(&realm).query(&q);
                if let Some((u, p)) = &self.creds {
                    rb = rb.basic_auth(u, Some(p));
                }
                let resp = rb.send().ok()?;
                if !resp.status().is_success() {
                    return None;
                }
                let v: Value = resp.json().ok()?;
                let token = v.get("token").or_else(|| v.get("access_token"))?.as_str()?.to_string();
                self.tokens.lock().unwrap().insert(scope, token.clone());
                Some(format!("Bearer {token}"))
            }
            _ => None,
        }
    }

    fn expect_ok(resp: Response, what: &str) -> Response {
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().unwrap_or_default();
            panic!("{what}: HTTP {status}: {body}");
        }
        resp
    }

    /// Uploads `bytes` as a blob of `repo` (monolithic); returns its digest.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        let resp = self.send(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/"),
            HeaderMap::new(),
            Some(&[]),
        );
        let resp = Self::expect_ok(resp, &format!("starting upload to {repo}"));
        let location = resp
            .headers()
            .get(LOCATION)
            .expect("upload Location")
            .to_str()
            .unwrap()
            .to_string();
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{}{sep}digest={digest}", self.abs(&location));
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, "application/octet-stream".parse().unwrap());
        let resp = self.send(Method::PUT, &url, h, Some(bytes));
        let resp = Self::expect_ok(resp, &format!("finishing upload to {repo}"));
        assert_eq!(resp.status(), StatusCode::CREATED, "blob PUT status");
        digest
    }

    /// Cross-repository mount of `digest` from `from` into `repo`; true if the
    /// registry mounted it (201), false if it fell back to an upload session.
    pub fn mount_blob(&self, repo: &str, digest: &str, from: &str) -> bool {
        let resp = self.send(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?mount={digest}&from={from}"),
            HeaderMap::new(),
            Some(&[]),
        );
        resp.status() == StatusCode::CREATED
    }

    /// `PUT /v2/<repo>/manifests/<reference>`; returns the digest of `bytes`
    /// (checked against `Docker-Content-Digest`).
    pub fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, media_type.parse().unwrap());
        let resp = self.send(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            h,
            Some(bytes),
        );
        let resp = Self::expect_ok(resp, &format!("pushing manifest {repo}:{reference}"));
        if let Some(d) = resp.headers().get("docker-content-digest") {
            assert_eq!(d.to_str().unwrap(), digest, "registry digest of pushed manifest");
        }
        digest
    }

    /// `GET /v2/<repo>/manifests/<reference>` → (bytes, content type, digest).
    pub fn get_manifest(&self, repo: &str, reference: &str) -> (Vec<u8>, String, String) {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, ALL_MANIFEST_TYPES.parse().unwrap());
        let resp = self.send(Method::GET, &format!("/v2/{repo}/manifests/{reference}"), h, None);
        let resp = Self::expect_ok(resp, &format!("getting manifest {repo}:{reference}"));
        let ct = resp
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let bytes = resp.bytes().unwrap().to_vec();
        let digest = sha256_digest(&bytes);
        (bytes, ct, digest)
    }

    /// Status of `GET /v2/<repo>/manifests/<reference>` (with auth).
    pub fn manifest_status(&self, repo: &str, reference: &str) -> u16 {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, ALL_MANIFEST_TYPES.parse().unwrap());
        self.send(Method::HEAD, &format!("/v2/{repo}/manifests/{reference}"), h, None)
            .status()
            .as_u16()
    }

    /// `GET /v2/<repo>/blobs/<digest>` (whole blob).
    pub fn get_blob(&self, repo: &str, digest: &str) -> Vec<u8> {
        let resp = self.send(
            Method::GET,
            &format!("/v2/{repo}/blobs/{digest}"),
            HeaderMap::new(),
            None,
        );
        let resp = Self::expect_ok(resp, &format!("getting blob {repo}@{digest}"));
        resp.bytes().unwrap().to_vec()
    }

    /// Every tag of `repo` (follows `Link` pages).
    pub fn list_tags(&self, repo: &str) -> Vec<String> {
        self.paged(&format!("/v2/{repo}/tags/list"), "tags")
    }

    /// Every repository in `_catalog` (follows `Link` pages).
    pub fn catalog(&self) -> Vec<String> {
        self.paged("/v2/_catalog", "repositories")
    }

    /// GETs `first` and every `Link: <..>; rel="next"` after it, collecting `key`.
    pub fn paged(&self, first: &str, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut next = Some(first.to_string());
        while let Some(url) = next.take() {
            let resp = self.send(Method::GET, &url, HeaderMap::new(), None);
            let resp = Self::expect_ok(resp, &format!("GET {url}"));
            next = resp
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_next_link);
            let v: Value = resp.json().unwrap();
            if let Some(items) = v.get(key).and_then(|t| t.as_array()) {
                out.extend(items.iter().filter_map(|t| t.as_str().map(String::from)));
            }
        }
        out
    }

    /// `DELETE /v2/<repo>/manifests/<digest>` → status.
    pub fn delete_manifest(&self, repo: &str, digest: &str) -> u16 {
        self.send(
            Method::DELETE,
            &format!("/v2/{repo}/manifests/{digest}"),
            HeaderMap::new(),
            None,
        )
        .status()
        .as_u16()
    }

    /// Pushes config + layers and an image manifest (`OCI` or Docker v2
    /// schema 2 per `media_type`) under `tag` (or by digest when `tag` is None).
    pub fn push_image(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        config_bytes: Vec<u8>,
        layers: Vec<Vec<u8>>,
    ) -> ImageInfo {
        let docker = media_type == DOCKER_MANIFEST;
        let config = BlobInfo {
            digest: self.push_blob(repo, &config_bytes),
            media_type: if docker { DOCKER_CONFIG } else { OCI_CONFIG }.to_string(),
            bytes: config_bytes,
        };
        let layers: Vec<BlobInfo> = layers
            .into_iter()
            .map(|bytes| BlobInfo {
                digest: self.push_blob(repo, &bytes),
                media_type: if docker { DOCKER_LAYER_GZIP } else { OCI_LAYER_GZIP }.to_string(),
                bytes,
            })
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": config.descriptor(),
            "layers": layers.iter().map(BlobInfo::descriptor).collect::<Vec<_>>(),
        });
        let bytes = serde_json::to_vec_pretty(&manifest).unwrap();
        let digest = sha256_digest(&bytes);
        let reference = tag.map(String::from).unwrap_or_else(|| digest.clone());
        self.push_manifest(repo, &reference, media_type, &bytes);
        ImageInfo {
            repo: repo.to_string(),
            tag: tag.map(String::from),
            media_type: media_type.to_string(),
            manifest: bytes,
            digest,
            config,
            layers,
        }
    }

    /// An OCI image whose layers are random bytes of the given sizes (not
    /// valid gzip: use [`make_tar_gz`] layers where a real layer matters).
    pub fn push_random_image(&self, repo: &str, tag: &str, layer_sizes: &[usize]) -> ImageInfo {
        let layers = layer_sizes.iter().map(|&n| random_bytes(n)).collect();
        self.push_image(
            repo,
            Some(tag),
            OCI_MANIFEST,
            image_config("amd64", &random_hex(8)),
            layers,
        )
    }

    /// An index (OCI index or Docker manifest list) over already-pushed
    /// children, each with a platform, under `tag`.
    pub fn push_index(&self, repo: &str, tag: &str, kind: IndexKind, children: &[(&ImageInfo, Platform)]) -> IndexInfo {
        let media_type = match kind {
            IndexKind::Oci => OCI_INDEX,
            IndexKind::DockerList => DOCKER_LIST,
        };
        let manifests: Vec<Value> = children
            .iter()
            .map(|(img, p)| {
                let mut d = img.descriptor();
                d["platform"] = p.to_json();
                d
            })
            .collect();
        let index = json!({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests});
        let bytes = serde_json::to_vec_pretty(&index).unwrap();
        let digest = self.push_manifest(repo, tag, media_type, &bytes);
        IndexInfo {
            media_type: media_type.to_string(),
            manifest: bytes,
            digest,
        }
    }

    /// Tags an existing manifest: GET it by digest and PUT it under `tag`.
    pub fn tag_manifest(&self, repo: &str, digest: &str, tag: &str) {
        let (bytes, ct, _) = self.get_manifest(repo, digest);
        self.push_manifest(repo, tag, &ct, &bytes);
    }
}

/// Parses `Scheme k="v",k2="v2"` into the scheme and parameters.
pub fn parse_challenge(h: &str) -> (String, HashMap<String, String>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (v, remaining) = if let Some(stripped) = after.strip_prefix('"') {
            let end = stripped.find('"').unwrap_or(stripped.len());
            (&stripped[..end], stripped.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(k, v.to_string());
        rest = remaining.trim_start_matches([',', ' ']);
    }
    (scheme.to_string(), params)
}

/// The target of `rel="next"` in a `Link` header.
pub fn parse_next_link(h: &str) -> Option<String> {
    h.split(',').find_map(|part| {
        let part = part.trim();
        if !part.contains("rel=\"next\"") && !part.contains("rel=next") {
            return None;
        }
        let start = part.find('<')? + 1;
        let end = part.find('>')?;
        Some(part[start..end].to_string())
    })
}

/// A minimal image config JSON (valid for skopeo/umoci) with a unique label.
pub fn image_config(arch: &str, label: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Labels": {"regfs.test": label}},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [],
    }))
    .unwrap()
}

/// A gzip tar (made by `tar czf`) holding `files` (relative paths; parent
/// directories are created), deterministic (sorted, mtime 0, owner 0).
pub fn make_tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let dir = tempfile::Builder::new().prefix("regfs-layer-").tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    for (name, content) in files {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
    }
    let out = dir.path().join("layer.tar.gz");
    let status = Command::new("tar")
        .args([
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-czf",
        ])
        .arg(&out)
        .arg("-C")
        .arg(&root)
        .args(files.iter().map(|(n, _)| *n))
        .status()
        .expect("running tar");
    assert!(status.success(), "tar czf failed");
    std::fs::read(out).unwrap()
}

/// Pseudo-random bytes (splitmix64 seeded from the clock and a counter):
/// fast, different on every call, not cryptographic.
pub fn random_bytes(n: usize) -> Vec<u8> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut state = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        ^ (u64::from(std::process::id()) << 32);
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    hex::encode(random_bytes(n))
}
