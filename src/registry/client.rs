//! One pooled HTTP client for one registry: catalog, tags, manifests and blobs,
//! with auth, retries with backoff, `Link` pagination and deadlines on every request.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};

use super::auth::Auth;
use super::credentials::Credentials;
use super::error::{RegistryError, Result};
use super::reference::{Digest, Reference};
use crate::oci;
use crate::stats::Stats;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for requests whose whole body is small (JSON, HEAD).
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);
/// A blob body may take long, but never stall this long between two reads.
const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_ATTEMPTS: u32 = 4;
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A `Retry-After` longer than this is treated as "give up now".
const RETRY_AFTER_MAX: Duration = Duration::from_secs(30);
/// Distribution refuses manifests over 4 MiB; so do we, before reading them whole.
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// Which counter a request bumps in `.regfs/stats`.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Ping,
    Catalog,
    Tags,
    ManifestGet,
    ManifestHead,
    BlobGet,
    BlobHead,
    Referrers,
    /// Upload session requests: POST, PATCH, PUT, status GET, cancel DELETE.
    BlobPush,
    ManifestPut,
    Delete,
}

pub struct ClientOptions {
    pub registry: Url,
    pub credentials: Option<Credentials>,
    pub ca_cert: Option<std::path::PathBuf>,
    pub insecure: bool,
    pub page_size: Option<u32>,
}

pub struct Client {
    http: reqwest::Client,
    base: Url,
    auth: Auth,
    stats: Arc<Stats>,
    page_size: Option<u32>,
}

/// A manifest as served: exact bytes, the media type the registry declared, its digest.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub bytes: Bytes,
    pub media_type: Option<String>,
    pub digest: Digest,
}

/// An open blob body: `start` is where its bytes begin in the blob (a 200 to a
/// ranged request starts at 0).
pub struct BlobBody {
    pub start: u64,
    pub response: reqwest::Response,
}

impl Client {
    pub fn new(opts: ClientOptions, stats: Arc<Stats>) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("regfs/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_IDLE_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(32)
            // reqwest drops Authorization when a redirect leaves the host (blob
            // storage backends redirect to S3/CDN URLs that must not see our token).
            .redirect(reqwest::redirect::Policy::limited(10));
        if let Some(path) = &opts.ca_cert {
            let pem =
                std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read --ca-cert {}: {e}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| anyhow::anyhow!("--ca-cert {}: not a PEM certificate: {e}", path.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        if opts.insecure {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder.build()?;
        Ok(Client {
            auth: Auth::new(http.clone(), opts.credentials, stats.clone()),
            http,
            base: opts.registry,
            stats,
            page_size: opts.page_size,
        })
    }

    /// `host[:port]` of the registry.
    pub fn registry_host(&self) -> String {
        crate::config::host_port(&self.base)
    }

    fn url(&self, path: &str) -> Url {
        self.base.join(path).expect("registry paths are valid URLs")
    }

    /// `GET /v2/`: is this a registry, and do our credentials work?
    pub async fn ping(&self) -> Result<()> {
        let resp = self
            .send(Method::GET, self.url("/v2/"), "", Kind::Ping, HeaderMap::new(), true)
            .await?;
        drop(resp);
        // With credentials and a Bearer challenge, a token for no scope proves the login.
        if self.auth.has_credentials() {
            self.auth.header_for("").await?;
        }
        Ok(())
    }

    /// Every repository from `_catalog`, following `Link` until there is none.
    pub async fn catalog(&self) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            repositories: Option<Vec<String>>,
        }
        let first = self.paged_url("/v2/_catalog");
        self.paginate(first, "registry:catalog:*", Kind::Catalog, |body| {
            let p: Page =
                serde_json::from_slice(body).map_err(|e| RegistryError::Invalid(format!("catalog JSON: {e}")))?;
            Ok(p.repositories.unwrap_or_default())
        })
        .await
    }

    /// Every tag of `repo`, following `Link` (never stopping at a short page).
    pub async fn tags(&self, repo: &str) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let first = self.paged_url(&format!("/v2/{repo}/tags/list"));
        let mut tags = self
            .paginate(first, &pull_scope(repo), Kind::Tags, |body| {
                let p: Page =
                    serde_json::from_slice(body).map_err(|e| RegistryError::Invalid(format!("tag list JSON: {e}")))?;
                Ok(p.tags.unwrap_or_default())
            })
            .await?;
        tags.sort();
        tags.dedup();
        Ok(tags)
    }

    fn paged_url(&self, path: &str) -> Url {
        let mut url = self.url(path);
        if let Some(n) = self.page_size {
            url.query_pairs_mut().append_pair("n", &n.to_string());
        }
        url
    }

    async fn paginate(
        &self,
        first: Url,
        scope: &str,
        kind: Kind,
        parse: impl Fn(&[u8]) -> Result<Vec<String>>,
    ) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut next = Some(first);
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > 100_000 {
                return Err(RegistryError::Invalid("pagination does not end".into()));
            }
            let resp = self
                .send(Method::GET, url.clone(), scope, kind, HeaderMap::new(), true)
                .await?;
            next = next_link(&url, resp.headers());
            let body = read_limited(resp, 64 << 20).await?;
            out.extend(parse(&body)?);
        }
        Ok(out)
    }

    fn manifest_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static(oci::MANIFEST_ACCEPT));
        h
    }

    pub async fn get_manifest(&self, repo: &str, reference: &Reference) -> Result<FetchedManifest> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let resp = self
            .send(
                Method::GET,
                url,
                &pull_scope(repo),
                Kind::ManifestGet,
                Self::manifest_headers(),
                true,
            )
            .await?;
        let media_type = content_type(resp.headers());
        let header_digest = header_digest(resp.headers());
        let mut bytes = read_limited(resp, MAX_MANIFEST_SIZE).await?;
        let mut digest = Digest::of(&bytes);
        // A manifest is trusted only when its bytes hash to the name we asked for,
        // or, by tag, to the digest the registry claims.
        let expected = match reference {
            Reference::Digest(d) => Some(*d),
            Reference::Tag(_) => header_digest,
        };
        if let Some(exp) = expected {
            // Signed schema1 manifests are re-signed on every request; their
            // digest covers the JWS payload, which is what we keep and show.
            if exp != digest {
                if let Some(payload) = oci::jws_payload(&bytes).filter(|p| Digest::of(p) == exp) {
                    bytes = Bytes::from(payload);
                    digest = exp;
                }
            }
            if exp != digest {
                return Err(RegistryError::DigestMismatch {
                    expected: exp.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// The digest a manifest reference resolves to (HEAD; GET when the
    /// registry sends no `Docker-Content-Digest`).
    pub async fn head_manifest(&self, repo: &str, reference: &Reference) -> Result<Digest> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let resp = self
            .send(
                Method::HEAD,
                url,
                &pull_scope(repo),
                Kind::ManifestHead,
                Self::manifest_headers(),
                true,
            )
            .await?;
        match header_digest(resp.headers()) {
            Some(digest) => Ok(digest),
            // Some registries omit the digest on HEAD: fall back to the body.
            None => Ok(self.get_manifest(repo, reference).await?.digest),
        }
    }

    /// The referrers API (`GET /v2/<repo>/referrers/<digest>`): an OCI index of
    /// the manifests whose subject is `digest`. `None` when the registry does
    /// not offer the API (a plain 404/405/400), so the caller can fall back to
    /// the `sha256-<hex>` tag schema.
    pub async fn referrers(&self, repo: &str, digest: &Digest) -> Result<Option<Bytes>> {
        let url = self.url(&format!("/v2/{repo}/referrers/{digest}"));
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static(oci::OCI_INDEX));
        match self
            .send(Method::GET, url, &pull_scope(repo), Kind::Referrers, h, true)
            .await
        {
            Ok(resp) => Ok(Some(read_limited(resp, MAX_MANIFEST_SIZE).await?)),
            Err(RegistryError::NotFound(_) | RegistryError::Unsupported(_)) => Ok(None),
            Err(RegistryError::Server(m)) if m.contains("HTTP 400") || m.contains("HTTP 405") => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn head_blob(&self, repo: &str, digest: &Digest) -> Result<u64> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let resp = self
            .send(
                Method::HEAD,
                url,
                &pull_scope(repo),
                Kind::BlobHead,
                HeaderMap::new(),
                true,
            )
            .await?;
        content_length(resp.headers())
            .ok_or_else(|| RegistryError::Invalid(format!("HEAD blob {digest}: no Content-Length")))
    }

    /// Open a blob body for bytes `start..end` (end exclusive). The registry may
    /// ignore the range and answer 200 with the whole blob: `BlobBody::start` says.
    /// Retries apply to getting the response; the caller resumes a cut body.
    pub async fn get_blob(&self, repo: &str, digest: &Digest, start: u64, end: u64) -> Result<BlobBody> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let mut h = HeaderMap::new();
        h.insert(
            header::RANGE,
            HeaderValue::from_str(&format!("bytes={}-{}", start, end - 1)).expect("ascii"),
        );
        let resp = self
            .send(Method::GET, url, &pull_scope(repo), Kind::BlobGet, h, false)
            .await?;
        let body_start = if resp.status() == StatusCode::PARTIAL_CONTENT {
            content_range_start(resp.headers()).ok_or_else(|| {
                RegistryError::Invalid(format!("GET blob {digest}: 206 without a valid Content-Range"))
            })?
        } else {
            0
        };
        if body_start > start {
            return Err(RegistryError::Invalid(format!(
                "GET blob {digest}: asked for bytes from {start}, got from {body_start}"
            )));
        }
        Ok(BlobBody {
            start: body_start,
            response: resp,
        })
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        scope: &str,
        kind: Kind,
        headers: HeaderMap,
        whole_body_deadline: bool,
    ) -> Result<reqwest::Response> {
        self.send_body(method, url, scope, kind, headers, whole_body_deadline, None)
            .await
    }

    /// Send one request with auth, retries and backoff. Returns a response with
    /// a success status; anything else becomes a typed error. A body is made
    /// afresh for every attempt (a file body is re-read, never held in memory).
    #[allow(clippy::too_many_arguments)]
    async fn send_body(
        &self,
        method: Method,
        url: Url,
        scope: &str,
        kind: Kind,
        headers: HeaderMap,
        whole_body_deadline: bool,
        body: Option<&Body>,
    ) -> Result<reqwest::Response> {
        let what = format!("{method} {}", url.path());
        let mut attempt = 0;
        let mut refreshed_auth = false;
        loop {
            attempt += 1;
            self.count(kind);
            let mut req = self.http.request(method.clone(), url.clone()).headers(headers.clone());
            if whole_body_deadline {
                req = req.timeout(METADATA_TIMEOUT);
            }
            if let Some(h) = self.auth.header_for(scope).await? {
                req = req.header(header::AUTHORIZATION, h);
            }
            if let Some(b) = body {
                req = req.header(header::CONTENT_LENGTH, b.len()).body(b.to_reqwest()?);
            }
            let sent = req.send().await;
            if let Ok(resp) = &sent {
                self.note_rate_limit(resp.headers());
            }
            let failure = match sent {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !refreshed_auth => {
                    refreshed_auth = true;
                    let challenge = resp
                        .headers()
                        .get(header::WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    if self.auth.on_unauthorized(challenge.as_deref(), scope).await {
                        attempt -= 1; // an auth round trip is not a failed attempt
                        continue;
                    }
                    error_from_response(resp, &what).await
                }
                Ok(resp) => {
                    let retry_after = retry_after(resp.headers());
                    error_from_response(resp, &what).await.with_delay(retry_after)
                }
                Err(e) => Failure::from(RegistryError::from(e)),
            };
            let Failure { error, retry_after } = failure;
            if !error.is_transient() || attempt >= MAX_ATTEMPTS {
                // Expected answers are the caller's to report.
                if matches!(error, RegistryError::NotFound(_) | RegistryError::MissingReferences(_)) {
                    tracing::debug!(request = %what, "{error}");
                } else {
                    tracing::warn!(request = %what, attempts = attempt, "{error}");
                }
                return Err(error);
            }
            let delay = match retry_after {
                Some(d) if d > RETRY_AFTER_MAX => {
                    tracing::warn!(request = %what, "Retry-After {}s is too long; giving up", d.as_secs());
                    return Err(error);
                }
                Some(d) => d,
                None => backoff(attempt),
            };
            Stats::inc(&self.stats.retries);
            tracing::info!(request = %what, attempt, delay_ms = delay.as_millis() as u64, "retrying after: {error}");
            tokio::time::sleep(delay).await;
        }
    }

    /// Docker Hub-style `RateLimit-Limit` / `RateLimit-Remaining` headers, kept for `.regfs/stats`.
    fn note_rate_limit(&self, h: &HeaderMap) {
        let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
        if let (Some(limit), Some(remaining)) = (get("ratelimit-limit"), get("ratelimit-remaining")) {
            if let Some(r) = crate::stats::RateLimit::parse(limit, remaining) {
                self.stats.note_rate_limit(r);
            }
        }
    }

    /// Does `repo` hold the blob? (HEAD; 404 → false.)
    pub async fn has_blob(&self, repo: &str, digest: &Digest) -> Result<bool> {
        match self.head_blob(repo, digest).await {
            Ok(_) => Ok(true),
            Err(RegistryError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Try a cross-repository mount of `digest` from `from` into `repo`.
    /// Returns true when the registry mounted it (201); when it answers with
    /// an upload session instead (202), the session is cancelled and false returned.
    pub async fn mount_blob(&self, repo: &str, digest: &Digest, from: &str) -> Result<bool> {
        let mut url = self.url(&format!("/v2/{repo}/blobs/uploads/"));
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from);
        let scope = format!("{} {}", push_scope(repo), pull_scope(from));
        let resp = self
            .send_body(
                Method::POST,
                url,
                &scope,
                Kind::BlobPush,
                HeaderMap::new(),
                true,
                Some(&Body::Empty),
            )
            .await?;
        if resp.status() == StatusCode::CREATED {
            return Ok(true);
        }
        if let Ok(location) = self.location(&resp) {
            self.cancel_upload(repo, location).await;
        }
        Ok(false)
    }

    /// Upload a blob from a local file: one PUT for small blobs, PATCH chunks
    /// for large ones. The registry verifies `digest`; so did the caller.
    pub async fn upload_blob(&self, repo: &str, digest: &Digest, src: &FileRange) -> Result<()> {
        let size = src.len;
        let url = self.url(&format!("/v2/{repo}/blobs/uploads/"));
        let resp = self
            .send_body(
                Method::POST,
                url,
                &push_scope(repo),
                Kind::BlobPush,
                HeaderMap::new(),
                true,
                Some(&Body::Empty),
            )
            .await?;
        let min_chunk: Option<u64> = resp
            .headers()
            .get("oci-chunk-min-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let location = self.location(&resp)?;
        let result = if size <= MONOLITHIC_MAX {
            self.put_upload(repo, location.clone(), digest, Some(Body::File(src.clone())))
                .await
        } else {
            let chunk = CHUNK_SIZE.max(min_chunk.unwrap_or(0));
            self.upload_chunks(repo, location.clone(), digest, src, chunk).await
        };
        if result.is_err() {
            // Leave the registry as it was: no dangling session.
            self.cancel_upload(repo, location).await;
        }
        result
    }

    async fn upload_chunks(
        &self,
        repo: &str,
        mut location: Url,
        digest: &Digest,
        src: &FileRange,
        chunk: u64,
    ) -> Result<()> {
        let size = src.len;
        let mut offset = 0;
        let mut recoveries = 0;
        while offset < size {
            let len = chunk.min(size - offset);
            let mut h = HeaderMap::new();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("{}-{}", offset, offset + len - 1)).expect("ascii"),
            );
            let body = Body::File(FileRange {
                path: src.path.clone(),
                offset: src.offset + offset,
                len,
            });
            match self
                .send_body(
                    Method::PATCH,
                    location.clone(),
                    &push_scope(repo),
                    Kind::BlobPush,
                    h,
                    false,
                    Some(&body),
                )
                .await
            {
                Ok(resp) => {
                    location = self.location(&resp)?;
                    offset = uploaded_end(resp.headers()).unwrap_or(offset + len);
                }
                // A 416 (or a lost answer) means we disagree on the offset: ask the
                // registry where the upload stands and continue from there.
                Err(e) if recoveries < 3 => {
                    recoveries += 1;
                    tracing::info!(repo, %digest, offset, "chunk upload failed ({e}); asking the registry for the upload status");
                    let resp = self
                        .send(
                            Method::GET,
                            location.clone(),
                            &push_scope(repo),
                            Kind::BlobPush,
                            HeaderMap::new(),
                            true,
                        )
                        .await?;
                    offset = uploaded_end(resp.headers()).unwrap_or(0);
                    location = self.location(&resp).unwrap_or(location);
                }
                Err(e) => return Err(e),
            }
        }
        self.put_upload(repo, location, digest, None).await
    }

    /// Close an upload session with `PUT ?digest=` (with the last bytes, or none).
    async fn put_upload(&self, repo: &str, mut location: Url, digest: &Digest, body: Option<Body>) -> Result<()> {
        location.query_pairs_mut().append_pair("digest", &digest.to_string());
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let body = body.unwrap_or(Body::Empty);
        self.send_body(
            Method::PUT,
            location,
            &push_scope(repo),
            Kind::BlobPush,
            h,
            false,
            Some(&body),
        )
        .await?;
        Ok(())
    }

    async fn cancel_upload(&self, repo: &str, location: Url) {
        if let Err(e) = self
            .send(
                Method::DELETE,
                location,
                &push_scope(repo),
                Kind::BlobPush,
                HeaderMap::new(),
                true,
            )
            .await
        {
            tracing::debug!(repo, "could not cancel an upload session: {e}");
        }
    }

    /// The upload session URL from `Location` (often relative).
    fn location(&self, resp: &reqwest::Response) -> Result<Url> {
        let loc = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Invalid(format!("{}: no Location header", resp.url().path())))?;
        resp.url()
            .join(loc)
            .map_err(|e| RegistryError::Invalid(format!("bad Location {loc:?}: {e}")))
    }

    /// PUT a manifest's exact bytes by tag or digest; returns the digest the registry reports.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &Reference,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<Digest> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(media_type)
                .map_err(|_| RegistryError::InvalidName(format!("media type {media_type:?}")))?,
        );
        let expected = Digest::of(&bytes);
        let resp = self
            .send_body(
                Method::PUT,
                url,
                &push_scope(repo),
                Kind::ManifestPut,
                h,
                true,
                Some(&Body::Bytes(bytes)),
            )
            .await?;
        if let Some(d) = header_digest(resp.headers()) {
            if d != expected {
                return Err(RegistryError::DigestMismatch {
                    expected: expected.to_string(),
                    actual: d.to_string(),
                });
            }
        }
        Ok(expected)
    }

    /// DELETE a manifest by digest, or a tag (where the registry supports it).
    pub async fn delete_manifest(&self, repo: &str, reference: &Reference) -> Result<()> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        self.send(
            Method::DELETE,
            url,
            &format!("repository:{repo}:delete,pull,push"),
            Kind::Delete,
            HeaderMap::new(),
            true,
        )
        .await?;
        Ok(())
    }

    fn count(&self, kind: Kind) {
        let s = &self.stats;
        Stats::inc(&s.requests);
        let c = match kind {
            Kind::Ping => return,
            Kind::Catalog => &s.requests_catalog,
            Kind::Tags => &s.requests_tags,
            Kind::ManifestGet => &s.requests_manifest_get,
            Kind::ManifestHead => &s.requests_manifest_head,
            Kind::BlobGet => &s.requests_blob_get,
            Kind::BlobHead => &s.requests_blob_head,
            Kind::Referrers => &s.requests_referrers,
            Kind::BlobPush => &s.requests_blob_push,
            Kind::ManifestPut => &s.requests_manifest_put,
            Kind::Delete => &s.requests_delete,
        };
        Stats::inc(c);
    }
}

/// A failed attempt: the error and how long the registry asked us to wait.
struct Failure {
    error: RegistryError,
    retry_after: Option<Duration>,
}

impl From<RegistryError> for Failure {
    fn from(error: RegistryError) -> Self {
        Failure {
            error,
            retry_after: None,
        }
    }
}

impl Failure {
    fn with_delay(mut self, d: Option<Duration>) -> Self {
        self.retry_after = d;
        self
    }
}

async fn error_from_response(resp: reqwest::Response, what: &str) -> Failure {
    let status = resp.status();
    // Bodies of errors are small; never read more than 64 KiB of one.
    let body = read_limited(resp, 64 << 10).await.unwrap_or_default();
    Failure::from(RegistryError::from_status(status, what, &body))
}

/// Exponential backoff with jitter: 250 ms, 500 ms, 1 s … capped at 5 s.
fn backoff(attempt: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1 << (attempt - 1).min(10));
    let capped = exp.min(BACKOFF_MAX);
    // Jitter from the clock's low bits: enough to spread retries of parallel requests.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    capped + Duration::from_millis(u64::from(nanos % 100))
}

pub fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

pub fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

/// Blobs up to this size go in one PUT; larger ones in PATCH chunks.
const MONOLITHIC_MAX: u64 = 64 << 20;
/// Chunk size for chunked uploads (raised to the registry's `OCI-Chunk-Min-Length`).
const CHUNK_SIZE: u64 = 64 << 20;

/// `Range: 0-1234` on an upload session → 1235 bytes received.
fn uploaded_end(h: &HeaderMap) -> Option<u64> {
    let v = h.get(header::RANGE)?.to_str().ok()?;
    let v = v.trim().trim_start_matches("bytes=");
    let end: u64 = v.split('-').nth(1)?.trim().parse().ok()?;
    Some(end + 1)
}

/// A request body that can be made again for a retry.
pub enum Body {
    Empty,
    Bytes(Bytes),
    /// `len` bytes of a local file from `offset`, streamed in 1 MiB reads.
    File(FileRange),
}

/// `len` bytes of a local file from `offset` (a staged upload, or a member
/// inside a staged tar archive).
#[derive(Clone, Debug)]
pub struct FileRange {
    pub path: std::path::PathBuf,
    pub offset: u64,
    pub len: u64,
}

impl FileRange {
    pub fn whole(path: &std::path::Path, len: u64) -> Self {
        FileRange {
            path: path.to_path_buf(),
            offset: 0,
            len,
        }
    }
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::File(r) => r.len,
        }
    }

    fn to_reqwest(&self) -> Result<reqwest::Body> {
        Ok(match self {
            Body::Empty => reqwest::Body::from(Bytes::new()),
            Body::Bytes(b) => reqwest::Body::from(b.clone()),
            Body::File(FileRange { path, offset, len }) => {
                use std::os::unix::fs::FileExt;
                let file = std::fs::File::open(path)?;
                let (offset, end) = (*offset, offset + len);
                let stream = futures_util::stream::unfold((file, offset), move |(file, pos)| async move {
                    if pos >= end {
                        return None;
                    }
                    let n = (end - pos).min(1 << 20) as usize;
                    let mut buf = vec![0u8; n];
                    let r = file.read_exact_at(&mut buf, pos).map(|_| Bytes::from(buf));
                    Some((r, (file, pos + n as u64)))
                });
                reqwest::Body::wrap_stream(stream)
            }
        })
    }
}

/// Read a whole body, refusing more than `limit` bytes.
pub async fn read_limited(mut resp: reqwest::Response, limit: u64) -> Result<Bytes> {
    if let Some(len) = resp.content_length() {
        if len > limit {
            return Err(RegistryError::Invalid(format!(
                "{}: body of {len} bytes exceeds the limit of {limit}",
                resp.url().path()
            )));
        }
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(RegistryError::Invalid(format!(
                "{}: body exceeds the limit of {limit} bytes",
                resp.url().path()
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

fn content_type(h: &HeaderMap) -> Option<String> {
    let v = h.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let v = v.split(';').next()?.trim();
    (!v.is_empty()).then(|| v.to_string())
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

fn header_digest(h: &HeaderMap) -> Option<Digest> {
    h.get("docker-content-digest")?.to_str().ok()?.trim().parse().ok()
}

/// `Content-Range: bytes 100-199/1000` → 100.
fn content_range_start(h: &HeaderMap) -> Option<u64> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let range = v.trim().strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

/// `Retry-After` in seconds (the HTTP-date form is rare on registries; treated as absent).
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let secs: u64 = h.get(header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

/// The `rel="next"` target of a `Link` header, resolved against the current URL
/// (registries send opaque, usually relative, URLs).
pub fn next_link(current: &Url, h: &HeaderMap) -> Option<Url> {
    for value in h.get_all(header::LINK) {
        let Ok(value) = value.to_str() else { continue };
        for link in value.split(',') {
            let mut parts = link.split(';');
            let target = parts.next()?.trim();
            let is_next = parts.any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            });
            if is_next {
                let target = target.trim_start_matches('<').trim_end_matches('>');
                return current.join(target).ok();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers() {
        let base = Url::parse("http://r:5000/v2/_catalog?n=2").unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::LINK,
            HeaderValue::from_static("</v2/_catalog?last=b&n=2>; rel=\"next\""),
        );
        assert_eq!(
            next_link(&base, &h).unwrap().as_str(),
            "http://r:5000/v2/_catalog?last=b&n=2"
        );
        let mut h = HeaderMap::new();
        h.insert(
            header::LINK,
            HeaderValue::from_static("<https://other/v2/x/tags/list?last=z>; rel=next"),
        );
        assert_eq!(
            next_link(&base, &h).unwrap().as_str(),
            "https://other/v2/x/tags/list?last=z"
        );
        assert!(next_link(&base, &HeaderMap::new()).is_none());
    }

    #[test]
    fn headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_RANGE, HeaderValue::from_static("bytes 100-199/1000"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(content_range_start(&h), Some(100));
        assert_eq!(content_type(&h).as_deref(), Some("application/json"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert!(backoff(1) >= Duration::from_millis(250));
        assert!(backoff(3) >= Duration::from_secs(1));
        assert!(backoff(30) <= BACKOFF_MAX + Duration::from_millis(100));
    }
}
