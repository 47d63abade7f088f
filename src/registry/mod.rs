//! The Distribution API v2, hand-written on reqwest (`client.rs`), behind the
//! `Registry` trait: the core and the blob store hold an `Arc<dyn Registry>`,
//! so fast tests drive them with the in-memory `fake::FakeRegistry`.

pub mod auth;
pub mod client;
pub mod credentials;
pub mod error;
pub mod fake;
pub mod flight;

pub use client::{BlobBody, Client, FetchedManifest, FileRange, StallClock};
pub use error::RegistryError;

/// `host[:port]` of a registry URL: the name credentials and logs use.
pub fn host_port(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

/// What the rest of regfs asks of a registry. `Client` speaks HTTP;
/// `fake::FakeRegistry` keeps everything in memory (and can lie).
#[async_trait::async_trait]
pub trait Registry: Send + Sync {
    /// `host[:port]`, for logs, credentials and `RepoTags` in exports.
    fn registry_host(&self) -> String;
    /// Is this a registry, and do our credentials work?
    async fn ping(&self) -> Result<()>;
    /// Every repository name (`Unsupported` when there is no catalog).
    async fn catalog(&self) -> Result<Vec<String>>;
    /// One page of the catalog: up to `n` names after `last`, or the page
    /// at `next` (a `Link` of an earlier page), and the next page's URL.
    async fn catalog_page(
        &self,
        last: &str,
        n: usize,
        next: Option<url::Url>,
    ) -> Result<(Vec<String>, Option<url::Url>)>;
    /// Every tag of a repository.
    async fn tags(&self, repo: &str) -> Result<Vec<String>>;
    /// A manifest's exact bytes, verified against its digest.
    async fn get_manifest(&self, repo: &str, reference: &oci::Reference) -> Result<FetchedManifest>;
    /// The digest a reference names, without its bytes.
    async fn head_manifest(&self, repo: &str, reference: &oci::Reference) -> Result<oci::Digest>;
    /// The referrers index of a manifest; `None` when the API is not offered.
    async fn referrers(&self, repo: &str, digest: &oci::Digest) -> Result<Option<bytes::Bytes>>;
    /// A blob's length.
    async fn head_blob(&self, repo: &str, digest: &oci::Digest) -> Result<u64>;
    /// Bytes `start..end` of a blob (the body may start earlier: a 200).
    async fn get_blob(
        &self,
        repo: &str,
        digest: &oci::Digest,
        start: u64,
        end: u64,
        stall: &StallClock,
    ) -> Result<BlobBody>;
    /// Is the blob in this repository?
    async fn has_blob(&self, repo: &str, digest: &oci::Digest) -> Result<bool>;
    /// Mount a blob from another repository; `false` when the registry
    /// declined (the caller uploads instead).
    async fn mount_blob(&self, repo: &str, digest: &oci::Digest, from: &str) -> Result<bool>;
    /// Upload a blob from a local file range.
    async fn upload_blob(&self, repo: &str, digest: &oci::Digest, src: &FileRange) -> Result<()>;
    /// PUT a manifest's exact bytes; the digest the registry reports.
    async fn put_manifest(
        &self,
        repo: &str,
        reference: &oci::Reference,
        media_type: &str,
        bytes: bytes::Bytes,
    ) -> Result<oci::Digest>;
    /// DELETE a manifest by digest, or a tag.
    async fn delete_manifest(&self, repo: &str, reference: &oci::Reference) -> Result<()>;
}

use crate::oci;
use error::Result;

#[async_trait::async_trait]
impl Registry for Client {
    fn registry_host(&self) -> String {
        Client::registry_host(self)
    }
    async fn ping(&self) -> Result<()> {
        Client::ping(self).await
    }
    async fn catalog(&self) -> Result<Vec<String>> {
        Client::catalog(self).await
    }
    async fn catalog_page(
        &self,
        last: &str,
        n: usize,
        next: Option<url::Url>,
    ) -> Result<(Vec<String>, Option<url::Url>)> {
        Client::catalog_page(self, last, n, next).await
    }
    async fn tags(&self, repo: &str) -> Result<Vec<String>> {
        Client::tags(self, repo).await
    }
    async fn get_manifest(&self, repo: &str, reference: &oci::Reference) -> Result<FetchedManifest> {
        Client::get_manifest(self, repo, reference).await
    }
    async fn head_manifest(&self, repo: &str, reference: &oci::Reference) -> Result<oci::Digest> {
        Client::head_manifest(self, repo, reference).await
    }
    async fn referrers(&self, repo: &str, digest: &oci::Digest) -> Result<Option<bytes::Bytes>> {
        Client::referrers(self, repo, digest).await
    }
    async fn head_blob(&self, repo: &str, digest: &oci::Digest) -> Result<u64> {
        Client::head_blob(self, repo, digest).await
    }
    async fn get_blob(
        &self,
        repo: &str,
        digest: &oci::Digest,
        start: u64,
        end: u64,
        stall: &StallClock,
    ) -> Result<BlobBody> {
        Client::get_blob(self, repo, digest, start, end, stall).await
    }
    async fn has_blob(&self, repo: &str, digest: &oci::Digest) -> Result<bool> {
        Client::has_blob(self, repo, digest).await
    }
    async fn mount_blob(&self, repo: &str, digest: &oci::Digest, from: &str) -> Result<bool> {
        Client::mount_blob(self, repo, digest, from).await
    }
    async fn upload_blob(&self, repo: &str, digest: &oci::Digest, src: &FileRange) -> Result<()> {
        Client::upload_blob(self, repo, digest, src).await
    }
    async fn put_manifest(
        &self,
        repo: &str,
        reference: &oci::Reference,
        media_type: &str,
        bytes: bytes::Bytes,
    ) -> Result<oci::Digest> {
        Client::put_manifest(self, repo, reference, media_type, bytes).await
    }
    async fn delete_manifest(&self, repo: &str, reference: &oci::Reference) -> Result<()> {
        Client::delete_manifest(self, repo, reference).await
    }
}
