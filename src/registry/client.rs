//! One pooled HTTP client for one registry: catalog, tags, manifests and blobs,
//! with auth, retries with backoff, `Link` pagination and deadlines on every request.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};

use super::auth::Auth;
use super::credentials::Credentials;
use super::error::{RegistryError, Result};
use super::flight::SingleFlight;
use crate::oci;
use crate::oci::{Digest, Reference};
use crate::stats::{Direction, Stats, Transfers};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A request whose whole body is small (JSON, HEAD) errors within this, every
/// attempt, token fetch and backoff included, whatever the registry does.
pub const METADATA_BUDGET: Duration = Duration::from_secs(25);
/// A blob range fetch errors once no byte of it arrived for this long, every
/// attempt and resume in between included (see `StallClock`). The kernel may
/// ask twice for a failed read, so a user waits at most about twice this.
pub const BLOB_STALL_LIMIT: Duration = Duration::from_secs(20);
/// Any response (an upload's answer included) may never stall this long
/// between two reads.
const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_ATTEMPTS: u32 = 4;
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A `Retry-After` longer than this is treated as "give up now".
const RETRY_AFTER_MAX: Duration = Duration::from_secs(30);
/// Distribution refuses manifests over 4 MiB; so do we, before reading them whole.
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// One page of a listing (catalog, tag list) is refused beyond this size.
const MAX_PAGE_SIZE: u64 = 64 << 20;
/// A listing (catalog, tag list) fails with `EIO` beyond this many pages, names
/// or bytes of names, or when a `Link` leads back to a page already read or to
/// another host: a registry whose `Link` never ends cannot grow memory or hold
/// `ls` forever, and a `Link` elsewhere never gets our token.
pub const MAX_LISTING_PAGES: usize = 10_000;
pub const MAX_LISTING_NAMES: usize = 1_000_000;
pub const MAX_LISTING_BYTES: usize = 64 << 20;
/// Names asked per `_catalog` page when `--page-size` is not given.
/// distribution serves every page by walking its repository tree from the
/// first name (the names before `last` are walked and skipped), so reading
/// the whole catalog costs one walk per page: at its default of 100 names,
/// `ls /` of 10,000 repositories is 101 walks, at 1000 it is 11. 1000 is
/// distribution's own maximum (`catalog.maxentries`); a registry refusing it
/// (400, PAGINATION_NUMBER_INVALID) is asked without `n` from then on.
pub const CATALOG_PAGE: u32 = 1000;

/// How long a request may take in all (see `send_body`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Budget {
    /// The whole request, body included, with every retry: `METADATA_BUDGET`.
    Metadata,
    /// The response head, every retry included, before the stall clock of
    /// the blob fetch runs out; the body is read through `BlobBody::chunk`.
    BlobOpen(Instant),
    /// Uploads: no overall limit (a 64 MiB chunk on a slow link takes long);
    /// the connect and idle timeouts still apply.
    Upload,
}

/// Which counter a request bumps in `.regfs/stats`.
#[derive(Clone, Copy, Debug)]
pub enum RequestKind {
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
    /// `n=` of catalog requests: `page_size`, else `CATALOG_PAGE` until the
    /// registry refuses it, then `None` (the registry's own page).
    catalog_n: std::sync::Mutex<Option<u32>>,
    /// Identical requests in flight share one HTTP request.
    manifest_gets: SingleFlight<(String, String), Result<FetchedManifest>>,
    manifest_heads: SingleFlight<(String, String), Result<Digest>>,
    blob_heads: SingleFlight<(String, Digest), Result<u64>>,
}

/// A manifest as served: exact bytes, the media type the registry declared, its digest.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub bytes: Bytes,
    pub media_type: Option<String>,
    pub digest: Digest,
}

/// An open blob body: `start` is where its bytes begin in the blob (a 200 to a
/// ranged request starts at 0). Read it with `chunk`.
pub struct BlobBody {
    pub start: u64,
    /// The blob's whole length as the registry states it (the total of a
    /// `Content-Range`, or the `Content-Length` of a 200), when it states one.
    pub total: Option<u64>,
    source: BodySource,
}

enum BodySource {
    Http {
        response: reqwest::Response,
        stall: StallClock,
    },
    /// Bytes already in memory (an in-memory registry in tests), handed out
    /// in the pieces given.
    Memory(std::collections::VecDeque<Bytes>),
}

impl BlobBody {
    /// A body whose bytes are already in memory, starting at `start` of a blob
    /// of `total` bytes (what an in-memory registry answers).
    pub fn from_pieces(start: u64, total: Option<u64>, pieces: Vec<Bytes>) -> Self {
        BlobBody {
            start,
            total,
            source: BodySource::Memory(pieces.into()),
        }
    }

    /// The next bytes of the body (`None` at its end). Fails when no byte came
    /// before the fetch's stall clock ran out.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>> {
        let (response, stall) = match &mut self.source {
            BodySource::Http { response, stall } => (response, stall),
            BodySource::Memory(pieces) => return Ok(pieces.pop_front()),
        };
        match tokio::time::timeout(stall.remaining(), response.chunk()).await {
            Err(_) => Err(RegistryError::Network(format!(
                "blob body stalled: no byte for {} s",
                BLOB_STALL_LIMIT.as_secs()
            ))),
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(Some(bytes))) => {
                stall.progressed();
                Ok(Some(bytes))
            }
            Ok(Ok(None)) => Ok(None),
        }
    }
}

/// When a blob range fetch last made progress. One clock spans the fetch's
/// attempts and resumes, so a registry that answers and then stalls, again and
/// again, still fails the read within `BLOB_STALL_LIMIT`.
#[derive(Clone, Debug)]
pub struct StallClock(Arc<std::sync::Mutex<Instant>>);

impl Default for StallClock {
    fn default() -> Self {
        StallClock(Arc::new(std::sync::Mutex::new(Instant::now())))
    }
}

impl StallClock {
    fn progressed(&self) {
        *self.0.lock().unwrap() = Instant::now();
    }

    fn deadline(&self) -> Instant {
        *self.0.lock().unwrap() + BLOB_STALL_LIMIT
    }

    fn remaining(&self) -> Duration {
        self.deadline().saturating_duration_since(Instant::now())
    }
}

impl Client {
    pub fn new(opts: ClientOptions, stats: Arc<Stats>) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("regfs/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_IDLE_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(60))
            // Enough for core::view::TAG_CONCURRENCY (64) tag HEADs in flight
            // plus blob parts: connections to a far registry cost a round trip.
            .pool_max_idle_per_host(128)
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
            auth: Auth::new(
                http.clone(),
                opts.credentials,
                &opts.registry,
                opts.insecure,
                stats.clone(),
            ),
            http,
            base: opts.registry,
            stats,
            page_size: opts.page_size,
            catalog_n: std::sync::Mutex::new(Some(opts.page_size.unwrap_or(CATALOG_PAGE))),
            manifest_gets: SingleFlight::default(),
            manifest_heads: SingleFlight::default(),
            blob_heads: SingleFlight::default(),
        })
    }

    /// `host[:port]` of the registry.
    pub fn registry_host(&self) -> String {
        super::host_port(&self.base)
    }

    fn url(&self, path: &str) -> Url {
        self.base.join(path).expect("registry paths are valid URLs")
    }

    /// `GET /v2/`: is this a registry, and do our credentials work?
    pub async fn ping(&self) -> Result<()> {
        let resp = self
            .send(
                Method::GET,
                self.url("/v2/"),
                "",
                RequestKind::Ping,
                HeaderMap::new(),
                Budget::Metadata,
            )
            .await?;
        // Read the (tiny) body so the connection goes back to the pool: the
        // first blob read then reuses it instead of paying a new handshake.
        let _ = resp.bytes().await;
        // With credentials and a Bearer challenge, a token for no scope proves the login.
        if self.auth.has_credentials() {
            self.auth.header_for("").await?;
        }
        Ok(())
    }

    /// Every repository from `_catalog`, following `Link` until there is none.
    pub async fn catalog(&self) -> Result<Vec<String>> {
        loop {
            let n = self.catalog_n();
            let listed = self
                .paginate(
                    self.catalog_url(n),
                    "registry:catalog:*",
                    RequestKind::Catalog,
                    parse_catalog_page,
                )
                .await;
            match listed {
                Err(RegistryError::Rejected(why)) if self.refused_catalog_n(n, &why) => continue,
                other => return other,
            }
        }
    }

    /// The first page of `_catalog` (as many names as `catalog` asks per
    /// page) and the next page's URL: read while the mount pings the
    /// registry, so the first names are known before the first lookup.
    pub async fn catalog_first_page(&self) -> Result<(Vec<String>, Option<Url>)> {
        loop {
            let n = self.catalog_n();
            match self.catalog_page_at(self.catalog_url(n)).await {
                Err(RegistryError::Rejected(why)) if self.refused_catalog_n(n, &why) => continue,
                other => return other,
            }
        }
    }

    fn catalog_n(&self) -> Option<u32> {
        *self.catalog_n.lock().unwrap()
    }

    fn catalog_url(&self, n: Option<u32>) -> Url {
        let mut url = self.url("/v2/_catalog");
        if let Some(n) = n {
            url.query_pairs_mut().append_pair("n", &n.to_string());
        }
        url
    }

    /// The registry refused a catalog request asked with `n`: when that was
    /// our own `CATALOG_PAGE` (not the user's `--page-size`), ask without `n`
    /// from now on and say so (`true`: ask again).
    fn refused_catalog_n(&self, n: Option<u32>, why: &str) -> bool {
        if self.page_size.is_some() || n.is_none() {
            return false;
        }
        let mut current = self.catalog_n.lock().unwrap();
        if *current == n {
            tracing::info!(
                "the registry refused {} catalog names per page ({why}); using its own page size",
                CATALOG_PAGE
            );
            *current = None;
        }
        true
    }

    /// One page of `_catalog`: the `n` names after `last` in the registry's
    /// order (or the page at `next`, a `Link` from an earlier page), and the
    /// next page's URL. For looking up one name without reading every page.
    pub async fn catalog_page(&self, last: &str, n: usize, next: Option<Url>) -> Result<(Vec<String>, Option<Url>)> {
        let url = match next {
            Some(u) if u.origin() == self.base.origin() => u,
            Some(u) => return Err(RegistryError::Invalid(format!("Link leads to another host ({u})"))),
            None => {
                let mut u = self.url("/v2/_catalog");
                u.query_pairs_mut()
                    .append_pair("n", &n.to_string())
                    .append_pair("last", last);
                u
            }
        };
        self.catalog_page_at(url).await
    }

    async fn catalog_page_at(&self, url: Url) -> Result<(Vec<String>, Option<Url>)> {
        let (headers, body) = self
            .fetch(
                Method::GET,
                url.clone(),
                "registry:catalog:*",
                RequestKind::Catalog,
                HeaderMap::new(),
                MAX_PAGE_SIZE,
            )
            .await?;
        Ok((parse_catalog_page(&body)?, next_link(&url, &headers)))
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
            .paginate(first, &pull_scope(repo), RequestKind::Tags, |body| {
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

    /// Read every page of a listing, following `Link`, within the caps
    /// (`MAX_LISTING_*`) and never reading a page twice.
    async fn paginate(
        &self,
        first: Url,
        scope: &str,
        kind: RequestKind,
        parse: impl Fn(&[u8]) -> Result<Vec<String>>,
    ) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut seen = HashSet::new();
        let mut next = Some(first);
        while let Some(url) = next.take() {
            let refused = if url.origin() != self.base.origin() {
                // Our token for this registry must not go to wherever a Link points.
                Some(format!("Link leads to another host ({url})"))
            } else if !seen.insert(url.to_string()) {
                Some(format!("Link leads back to a page already read ({url})"))
            } else if seen.len() > MAX_LISTING_PAGES {
                Some(format!("more than {MAX_LISTING_PAGES} pages"))
            } else {
                let (headers, body) = self
                    .fetch(Method::GET, url.clone(), scope, kind, HeaderMap::new(), MAX_PAGE_SIZE)
                    .await?;
                next = next_link(&url, &headers);
                let names = parse(&body)?;
                bytes += names.iter().map(String::len).sum::<usize>();
                out.extend(names);
                if out.len() > MAX_LISTING_NAMES {
                    Some(format!("more than {MAX_LISTING_NAMES} names"))
                } else if bytes > MAX_LISTING_BYTES {
                    Some(format!("more than {} MiB of names", MAX_LISTING_BYTES >> 20))
                } else {
                    None
                }
            };
            if let Some(why) = refused {
                tracing::warn!(listing = %url.path(), pages = seen.len(), names = out.len(), "{why}; the listing fails");
                return Err(RegistryError::Invalid(format!("listing {}: {why}", url.path())));
            }
        }
        Ok(out)
    }

    fn manifest_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static(oci::MANIFEST_ACCEPT));
        h
    }

    /// A manifest's exact bytes, verified against the digest asked for (or the
    /// one the registry names). Concurrent identical calls share one GET.
    pub async fn get_manifest(&self, repo: &str, reference: &Reference) -> Result<FetchedManifest> {
        let key = (repo.to_string(), reference.to_string());
        self.manifest_gets
            .run(key, || self.get_manifest_once(repo, reference))
            .await
    }

    async fn get_manifest_once(&self, repo: &str, reference: &Reference) -> Result<FetchedManifest> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let (headers, body) = self
            .fetch(
                Method::GET,
                url,
                &pull_scope(repo),
                RequestKind::ManifestGet,
                Self::manifest_headers(),
                MAX_MANIFEST_SIZE,
            )
            .await?;
        let media_type = content_type(&headers);
        let header_digest = header_digest(&headers);
        let mut bytes = body;
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
        let key = (repo.to_string(), reference.to_string());
        self.manifest_heads
            .run(key, || self.head_manifest_once(repo, reference))
            .await
    }

    async fn head_manifest_once(&self, repo: &str, reference: &Reference) -> Result<Digest> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let resp = self
            .send(
                Method::HEAD,
                url,
                &pull_scope(repo),
                RequestKind::ManifestHead,
                Self::manifest_headers(),
                Budget::Metadata,
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
            .fetch(
                Method::GET,
                url,
                &pull_scope(repo),
                RequestKind::Referrers,
                h,
                MAX_MANIFEST_SIZE,
            )
            .await
        {
            Ok((_, body)) => Ok(Some(body)),
            Err(RegistryError::NotFound(_) | RegistryError::Unsupported(_)) => Ok(None),
            Err(RegistryError::Server(m)) if m.contains("HTTP 400") || m.contains("HTTP 405") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A blob's size (HEAD). Concurrent identical calls share one request.
    pub async fn head_blob(&self, repo: &str, digest: &Digest) -> Result<u64> {
        self.blob_heads
            .run((repo.to_string(), *digest), || self.head_blob_once(repo, digest))
            .await
    }

    async fn head_blob_once(&self, repo: &str, digest: &Digest) -> Result<u64> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let resp = self
            .send(
                Method::HEAD,
                url,
                &pull_scope(repo),
                RequestKind::BlobHead,
                HeaderMap::new(),
                Budget::Metadata,
            )
            .await?;
        content_length(resp.headers())
            .ok_or_else(|| RegistryError::Invalid(format!("HEAD blob {digest}: no Content-Length")))
    }

    /// Open a blob body for bytes `start..end` (end exclusive). The registry may
    /// ignore the range and answer 200 with the whole blob: `BlobBody::start` says.
    /// Retries apply to getting the response; the caller resumes a cut body,
    /// passing the same `stall` clock to every resume of one range.
    pub async fn get_blob(
        &self,
        repo: &str,
        digest: &Digest,
        start: u64,
        end: u64,
        stall: &StallClock,
    ) -> Result<BlobBody> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let mut h = HeaderMap::new();
        h.insert(
            header::RANGE,
            HeaderValue::from_str(&format!("bytes={}-{}", start, end - 1)).expect("ascii"),
        );
        let resp = self
            .send(
                Method::GET,
                url,
                &pull_scope(repo),
                RequestKind::BlobGet,
                h,
                Budget::BlobOpen(stall.deadline()),
            )
            .await?;
        let (body_start, total) = if resp.status() == StatusCode::PARTIAL_CONTENT {
            let start = content_range_start(resp.headers()).ok_or_else(|| {
                RegistryError::Invalid(format!("GET blob {digest}: 206 without a valid Content-Range"))
            })?;
            (start, content_range_total(resp.headers()))
        } else {
            (0, content_length(resp.headers()))
        };
        if body_start > start {
            return Err(RegistryError::Invalid(format!(
                "GET blob {digest}: asked for bytes from {start}, got from {body_start}"
            )));
        }
        Ok(BlobBody {
            start: body_start,
            total,
            source: BodySource::Http {
                response: resp,
                stall: stall.clone(),
            },
        })
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        scope: &str,
        kind: RequestKind,
        headers: HeaderMap,
        budget: Budget,
    ) -> Result<reqwest::Response> {
        self.send_body(method, url, scope, kind, headers, budget, None).await
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
        kind: RequestKind,
        headers: HeaderMap,
        budget: Budget,
        body: Option<&Body>,
    ) -> Result<reqwest::Response> {
        match self
            .attempts(method, url, scope, kind, headers, budget, body, None)
            .await?
        {
            Answer::Streaming(resp) => Ok(resp),
            Answer::Whole(..) => unreachable!("no body limit, no whole body"),
        }
    }

    /// A GET (or other bodiless request) whose whole body, at most `limit`
    /// bytes, is read inside each attempt: a body cut mid-way is retried like
    /// any dropped connection, and the metadata budget covers the body too.
    async fn fetch(
        &self,
        method: Method,
        url: Url,
        scope: &str,
        kind: RequestKind,
        headers: HeaderMap,
        limit: u64,
    ) -> Result<(HeaderMap, Bytes)> {
        match self
            .attempts(method, url, scope, kind, headers, Budget::Metadata, None, Some(limit))
            .await?
        {
            Answer::Whole(h, b) => Ok((h, b)),
            Answer::Streaming(_) => unreachable!("a body limit reads the whole body"),
        }
    }

    /// The retry loop behind `send_body` and `fetch`. The budget is one clock
    /// for every attempt, token fetch and backoff: when it runs out the last
    /// error (or a deadline error) is final, however many attempts remain.
    #[allow(clippy::too_many_arguments)]
    async fn attempts(
        &self,
        method: Method,
        url: Url,
        scope: &str,
        kind: RequestKind,
        headers: HeaderMap,
        budget: Budget,
        body: Option<&Body>,
        read_limit: Option<u64>,
    ) -> Result<Answer> {
        let what = format!("{method} {}", url.path());
        let deadline = match budget {
            Budget::Metadata => Some(Instant::now() + METADATA_BUDGET),
            Budget::BlobOpen(deadline) => Some(deadline),
            Budget::Upload => None,
        };
        let out_of_time = |what: &str| match budget {
            Budget::BlobOpen(_) => {
                RegistryError::Network(format!("{what}: no byte for {} s", BLOB_STALL_LIMIT.as_secs()))
            }
            _ => RegistryError::Network(format!(
                "{what}: no complete answer within {} s",
                METADATA_BUDGET.as_secs()
            )),
        };
        let mut attempt = 0;
        let mut refreshed_auth = false;
        loop {
            attempt += 1;
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let failure = match self
                .attempt(
                    &method, &url, scope, kind, &headers, budget, body, read_limit, remaining,
                )
                .await
            {
                Ok(Attempt::Done(answer)) => return Ok(answer),
                Ok(Attempt::Unauthorized(resp)) if !refreshed_auth => {
                    refreshed_auth = true;
                    let challenge = resp
                        .headers()
                        .get(header::WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    if self.auth.on_unauthorized(challenge.as_deref(), scope, &what).await {
                        attempt -= 1; // an auth round trip is not a failed attempt
                        continue;
                    }
                    error_from_response(resp, &what).await
                }
                Ok(Attempt::Unauthorized(resp)) => error_from_response(resp, &what).await,
                Err(f) if f.timed_out => Failure::from(out_of_time(&what)),
                Err(f) => f,
            };
            let Failure { error, retry_after, .. } = failure;
            let final_error = |error: RegistryError, attempts: u32| {
                // Expected answers are the caller's to report.
                if matches!(error, RegistryError::NotFound(_) | RegistryError::MissingReferences(_)) {
                    tracing::debug!(request = %what, "{error}");
                } else {
                    tracing::warn!(request = %what, attempts, "{error}");
                }
                Err(error)
            };
            if !error.is_transient() || attempt >= MAX_ATTEMPTS {
                return final_error(error, attempt);
            }
            let delay = match retry_after {
                Some(d) if d > RETRY_AFTER_MAX => {
                    tracing::warn!(request = %what, "Retry-After {}s is too long; giving up", d.as_secs());
                    return Err(error);
                }
                Some(d) => d,
                None => backoff(attempt),
            };
            if deadline.is_some_and(|d| Instant::now() + delay >= d) {
                let error = RegistryError::Network(format!("{error} (no time left for another attempt)"));
                return final_error(error, attempt);
            }
            Stats::inc(&self.stats.retries);
            tracing::info!(request = %what, attempt, delay_ms = delay.as_millis() as u64, "retrying after: {error}");
            tokio::time::sleep(delay).await;
        }
    }

    /// One attempt within `remaining` (None: no overall limit).
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        scope: &str,
        kind: RequestKind,
        headers: &HeaderMap,
        budget: Budget,
        body: Option<&Body>,
        read_limit: Option<u64>,
        remaining: Option<Duration>,
    ) -> std::result::Result<Attempt, Failure> {
        let within = |d: Option<Duration>| d.unwrap_or(Duration::MAX);
        let started = Instant::now();
        let left = || remaining.map(|r| r.saturating_sub(started.elapsed()));
        if left() == Some(Duration::ZERO) {
            return Err(Failure::timed_out());
        }
        self.count(kind);
        let mut req = self.http.request(method.clone(), url.clone()).headers(headers.clone());
        let auth = tokio::time::timeout(within(left()), self.auth.header_for(scope))
            .await
            .map_err(|_| Failure::timed_out())??;
        if let Some(h) = auth {
            req = req.header(header::AUTHORIZATION, h);
        }
        if budget == Budget::Metadata {
            // reqwest's timeout covers the body too.
            if let Some(l) = left() {
                req = req.timeout(l.max(Duration::from_millis(1)));
            }
        }
        if let Some(b) = body {
            req = req.header(header::CONTENT_LENGTH, b.len()).body(b.to_reqwest()?);
        }
        let sent = tokio::time::timeout(within(left()), req.send()).await;
        let answer = match &sent {
            Ok(Ok(r)) => Some(r),
            _ => None,
        };
        self.stats.request_done(
            kind.label(),
            answer.map(|r| r.status().as_u16()),
            started,
            answer.map(|r| r.headers()),
        );
        if let Some(r) = answer {
            self.note_rate_limit(r.headers());
        }
        let resp = match sent {
            Err(_) => return Err(Failure::timed_out()),
            Ok(Err(e)) if e.is_timeout() && deadline_hit(left()) => return Err(Failure::timed_out()),
            Ok(Err(e)) => return Err(Failure::from(RegistryError::from(e))),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED {
            return Ok(Attempt::Unauthorized(resp));
        }
        if !status.is_success() {
            let retry_after = retry_after(resp.headers());
            return Err(error_from_response(resp, &format!("{method} {}", url.path()))
                .await
                .with_delay(retry_after));
        }
        let Some(limit) = read_limit else {
            return Ok(Attempt::Done(Answer::Streaming(resp)));
        };
        let headers = resp.headers().clone();
        match read_limited(resp, limit).await {
            Ok(bytes) => Ok(Attempt::Done(Answer::Whole(headers, bytes))),
            Err(RegistryError::Network(_)) if deadline_hit(left()) => Err(Failure::timed_out()),
            Err(e) => Err(Failure::from(e)),
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
                RequestKind::BlobPush,
                HeaderMap::new(),
                Budget::Metadata,
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
        let transfer = Transfers::start(&self.stats, Direction::Push, repo, digest, size);
        let url = self.url(&format!("/v2/{repo}/blobs/uploads/"));
        let resp = self
            .send_body(
                Method::POST,
                url,
                &push_scope(repo),
                RequestKind::BlobPush,
                HeaderMap::new(),
                Budget::Metadata,
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
        if result.is_ok() {
            transfer.finish();
        } else {
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
                    RequestKind::BlobPush,
                    h,
                    Budget::Upload,
                    Some(&body),
                )
                .await
            {
                Ok(resp) => {
                    location = self.location(&resp)?;
                    offset = uploaded_end(resp.headers()).unwrap_or(offset + len);
                    self.stats.transfers.set_done(Direction::Push, repo, digest, offset);
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
                            RequestKind::BlobPush,
                            HeaderMap::new(),
                            Budget::Metadata,
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
            RequestKind::BlobPush,
            h,
            Budget::Upload,
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
                RequestKind::BlobPush,
                HeaderMap::new(),
                Budget::Metadata,
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
                RequestKind::ManifestPut,
                h,
                Budget::Metadata,
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
            RequestKind::Delete,
            HeaderMap::new(),
            Budget::Metadata,
        )
        .await?;
        Ok(())
    }

    fn count(&self, kind: RequestKind) {
        let s = &self.stats;
        Stats::inc(&s.requests);
        let c = match kind {
            RequestKind::Ping => return,
            RequestKind::Catalog => &s.requests_catalog,
            RequestKind::Tags => &s.requests_tags,
            RequestKind::ManifestGet => &s.requests_manifest_get,
            RequestKind::ManifestHead => &s.requests_manifest_head,
            RequestKind::BlobGet => &s.requests_blob_get,
            RequestKind::BlobHead => &s.requests_blob_head,
            RequestKind::Referrers => &s.requests_referrers,
            RequestKind::BlobPush => &s.requests_blob_push,
            RequestKind::ManifestPut => &s.requests_manifest_put,
            RequestKind::Delete => &s.requests_delete,
        };
        Stats::inc(c);
    }
}

/// What a successful request gives back.
enum Answer {
    /// The response, its body still to be read (blobs, uploads).
    Streaming(reqwest::Response),
    /// Headers and the whole body.
    Whole(HeaderMap, Bytes),
}

/// How one attempt ended when it got an answer.
enum Attempt {
    Done(Answer),
    /// A 401: the retry loop decides whether a new token can help.
    Unauthorized(reqwest::Response),
}

/// Did a time limit of `left` run out (within a few milliseconds)?
fn deadline_hit(left: Option<Duration>) -> bool {
    left.is_some_and(|l| l < Duration::from_millis(50))
}

impl RequestKind {
    /// The `kind` label of `.regfs/metrics`.
    fn label(self) -> &'static str {
        match self {
            RequestKind::Ping => "ping",
            RequestKind::Catalog => "catalog",
            RequestKind::Tags => "tags",
            RequestKind::ManifestGet => "manifest_get",
            RequestKind::ManifestHead => "manifest_head",
            RequestKind::BlobGet => "blob_get",
            RequestKind::BlobHead => "blob_head",
            RequestKind::Referrers => "referrers",
            RequestKind::BlobPush => "blob_push",
            RequestKind::ManifestPut => "manifest_put",
            RequestKind::Delete => "delete",
        }
    }
}

/// A failed attempt: the error and how long the registry asked us to wait.
struct Failure {
    error: RegistryError,
    retry_after: Option<Duration>,
    /// The request's budget ran out during this attempt.
    timed_out: bool,
}

impl From<RegistryError> for Failure {
    fn from(error: RegistryError) -> Self {
        Failure {
            error,
            retry_after: None,
            timed_out: false,
        }
    }
}

impl Failure {
    fn timed_out() -> Self {
        Failure {
            error: RegistryError::Network("deadline".into()),
            retry_after: None,
            timed_out: true,
        }
    }

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

/// The total of `Content-Range: bytes a-b/total` (`*` means unknown).
fn content_range_total(h: &HeaderMap) -> Option<u64> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?;
    v.rsplit_once('/')?.1.trim().parse().ok()
}

/// `Retry-After` in seconds (the HTTP-date form is rare on registries; treated as absent).
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let secs: u64 = h.get(header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

/// The `rel="next"` target of a `Link` header, resolved against the current URL
/// (registries send opaque, usually relative, URLs).
/// The names of one `_catalog` page (`{"repositories": [...]}`; absent or null: none).
fn parse_catalog_page(body: &[u8]) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Page {
        #[serde(default)]
        repositories: Option<Vec<String>>,
    }
    let p: Page = serde_json::from_slice(body).map_err(|e| RegistryError::Invalid(format!("catalog JSON: {e}")))?;
    Ok(p.repositories.unwrap_or_default())
}

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
                // Only web URLs: `Link: <file:…>` or another scheme is no page.
                return current
                    .join(target)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https"));
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
        // Found by fuzzing: a Link to another scheme is no next page.
        let mut h = HeaderMap::new();
        h.insert(
            header::LINK,
            HeaderValue::from_static("<htt:sp//other/v2/x/tags/list?last=z>; rel=next"),
        );
        assert!(next_link(&base, &h).is_none());
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
