//! The registry as the tree sees it: which repositories exist, tags and their
//! digests, manifests and blob sizes — each answer cached where it belongs
//! (immutable content by digest forever, names for `--metadata-ttl`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures_util::stream::{self, StreamExt};

use super::names::{self, Family};
use super::overlay::Overlay;
use crate::error::{Cause, FsResult};
use crate::oci::{self, Manifest, ManifestKind};
use crate::oci::{Digest, Reference};
use crate::registry::{Registry, RegistryError};
use crate::stats::Stats;
use crate::store::{BlobStore, CachedManifest, ManifestStore, TtlCache};

/// A name missing from a cached catalog older than this is looked for in a
/// fresh one: a repository pushed by someone else after the mount is reachable
/// by name at once (no negative caching of names beyond this).
const NAME_MISS_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Concurrent registry requests one listing may make (containerd's Dispatch uses a bound too).
const FETCH_CONCURRENCY: usize = 8;
/// Tag resolution (`ls -l _tags`: one manifest HEAD per tag) is latency-bound:
/// a far registry (tens of ms away) needs many requests in flight to be fast,
/// while each costs the registry little (about 1 ms of its CPU). Measured
/// through a 40 ms proxy, 1000 tags: 32 in flight 1.75 s, 64 in flight 1.15 s
/// (then the registry's CPU is the limit). The client's pool keeps that many
/// idle connections per host, so a second listing reuses them.
pub const TAG_CONCURRENCY: usize = 64;
/// Names of `_catalog` asked per page when looking for one path.
const SCAN_PAGE: usize = 100;
/// Pages of a scan for one path before reading the whole catalog instead.
const SCAN_PAGES: usize = 3;
/// Catalog pages read by scans kept to answer later lookups (the newest).
const MAX_SCANNED_PAGES: usize = 32;
/// Tags of one listing resolved in the background, at most.
const MAX_TAG_PREFETCH: usize = 10_000;
/// The background resolution of a listing stops once nobody has looked at the
/// repository's tags (listing, lookup, readlink) for this long.
const TAG_INTEREST_WINDOW: std::time::Duration = std::time::Duration::from_secs(3);

/// (repository, digest) pairs known to exist, kept at most (about 150 bytes
/// each). Losing one costs a HEAD (or the ranged GET that also starts a read)
/// when it is next needed, never a wrong answer: every reader treats "not
/// known" as "ask the registry".
pub const PRESENT_MAX: usize = 65_536;
/// Media types of blobs from the descriptors seen, kept at most. A lost one
/// is as if no descriptor naming the blob had been read yet (the `media_type`
/// xattr of `_blobs/<digest>` is absent until one is read again; never a
/// wrong type). Foreign layers are kept apart in `foreign`, exactly.
pub const MEDIA_TYPES_MAX: usize = 65_536;
/// Export tar layouts kept (each a list of members); a lost one is laid out
/// again from the cached manifests. Open files keep theirs.
pub const EXPORTS_MAX: usize = 64;

fn lru<K: std::hash::Hash + Eq, V>(max: usize) -> Mutex<lru::LruCache<K, V>> {
    Mutex::new(lru::LruCache::new(
        std::num::NonZeroUsize::new(max).expect("a capacity"),
    ))
}

/// Names in a directory and the digests they point at.
pub type NamedDigests = Vec<(String, Digest)>;

pub struct View {
    pub client: Arc<dyn Registry>,
    pub manifests: ManifestStore,
    pub blobs: Arc<BlobStore>,
    pub stats: Arc<Stats>,
    /// Repositories confirmed by a tag list during this run.
    seen_repos: Mutex<BTreeSet<String>>,
    /// What the user wrote that the registry does not have yet.
    pub overlay: Overlay,
    /// `None` inside: the registry has no usable catalog. Sorted by string order.
    catalog: TtlCache<(), Option<Arc<Vec<String>>>>,
    /// One path looked up in a few catalog pages (`None`: the pages could not
    /// tell; see `names::scan_page`). Misses are asked again after `NAME_MISS_RECHECK`.
    catalog_scans: TtlCache<String, Option<super::names::Family>>,
    /// The names of the catalog pages those scans read (each sorted), kept for
    /// the catalog's TTL: they are repositories as surely as a cached catalog's,
    /// so entering one a scan saw (`ls ns/repo/…` after the scan for `ns`)
    /// asks nothing more.
    scanned_pages: Mutex<Vec<(std::time::Instant, Arc<Vec<String>>)>>,
    tags: TtlCache<String, Arc<Vec<String>>>,
    tag_digests: TtlCache<(String, String), Digest>,
    referrers: TtlCache<(String, Digest), Arc<NamedDigests>>,
    /// The registry answered a referrers request as having no such API
    /// (distribution 2.x): the tag schema is used from then on, without asking.
    no_referrers_api: std::sync::atomic::AtomicBool,
    /// Where digests were seen, kept across mounts (mount sources for pushes).
    pub(super) locations: super::locations::Locations,
    /// Pairs remembered from earlier mounts: candidates for a mount, not proof.
    remembered: Mutex<Vec<(String, Digest)>>,
    /// (repository, digest) pairs known to exist in that repository (`PRESENT_MAX`).
    present: Mutex<lru::LruCache<(String, Digest), ()>>,
    /// Descriptors' media types (`MEDIA_TYPES_MAX`).
    media_types: Mutex<lru::LruCache<Digest, String>>,
    /// eStargz TOC digests from layer descriptors' annotations
    /// (`MEDIA_TYPES_MAX`): what lets `_layers/` open such a layer from its
    /// TOC, tied to a manifest, instead of the full pass.
    estargz_tocs: Mutex<lru::LruCache<Digest, String>>,
    /// Foreign layers seen in manifests, with their download URLs.
    foreign: Mutex<HashMap<Digest, Vec<String>>>,
    /// Everything reachable from a repository's tags (for `_oci/`).
    pub(crate) oci_content: TtlCache<String, Arc<super::archive::LayoutContent>>,
    /// Export tars laid out so far.
    pub(super) exports: super::archive::Exports,
    /// `host[:port]`, for `RepoTags` in exported Docker archives.
    pub registry_host: String,
    /// When each repository's tags were last looked at (see `TAG_INTEREST_WINDOW`).
    tag_interest: Mutex<lru::LruCache<String, std::time::Instant>>,
    /// Repositories whose `_tags` was just listed, waiting for a look at one
    /// of its links before their tags are resolved (see `prefetch_after_a_look`).
    tag_looks: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    /// Layer indexes and trees of image contents (`rootfs/`, `_layers/`).
    pub contents: super::contents::ContentsState,
}

impl View {
    pub fn new(
        client: Arc<dyn Registry>,
        manifests: ManifestStore,
        blobs: Arc<BlobStore>,
        stats: Arc<Stats>,
        configured_repos: Vec<String>,
        ttl: Option<std::time::Duration>,
        cache_dir: &std::path::Path,
    ) -> std::io::Result<Self> {
        let registry_host = client.registry_host();
        let (locations, known) = super::locations::Locations::open(cache_dir, &registry_host);
        Ok(View {
            overlay: Overlay::new(cache_dir)?,
            contents: super::contents::ContentsState::new(cache_dir, &blobs),
            locations,
            client,
            manifests,
            blobs,
            stats,
            // `--repo` names: shown even when the registry has no catalog.
            seen_repos: Mutex::new(configured_repos.into_iter().collect()),
            catalog: TtlCache::new(ttl),
            catalog_scans: TtlCache::new(ttl),
            scanned_pages: Mutex::new(Vec::new()),
            tags: TtlCache::new(ttl),
            tag_digests: TtlCache::new(ttl),
            referrers: TtlCache::new(ttl),
            no_referrers_api: std::sync::atomic::AtomicBool::new(false),
            present: lru(PRESENT_MAX),
            remembered: Mutex::new(known),
            media_types: lru(MEDIA_TYPES_MAX),
            estargz_tocs: lru(MEDIA_TYPES_MAX),
            foreign: Mutex::new(HashMap::new()),
            exports: super::archive::Exports::default(),
            oci_content: TtlCache::new(ttl),
            registry_host,
            tag_interest: Mutex::new(lru::LruCache::new(std::num::NonZeroUsize::new(1024).unwrap())),
            tag_looks: Mutex::new(HashMap::new()),
        })
    }

    /// Every repository in `_catalog`, or `None` when the registry offers none
    /// (404, 401/403 for the catalog scope, or UNSUPPORTED).
    pub async fn catalog(&self) -> FsResult<Option<Arc<Vec<String>>>> {
        self.catalog
            .get_or_fetch((), || async {
                match self.client.catalog().await {
                    Ok(mut repos) => {
                        repos.sort();
                        Ok(Some(Arc::new(repos)))
                    }
                    Err(
                        e @ (RegistryError::NotFound(_) | RegistryError::Denied(_) | RegistryError::Unsupported(_)),
                    ) => {
                        tracing::info!("no usable catalog ({e}); listing --repo names and names looked up");
                        Ok(None)
                    }
                    Err(e) => Err(e.into()),
                }
            })
            .await
    }

    /// The names this run knows without the catalog: `--repo`, seen in a tag
    /// list, made with mkdir, declared by rsync.
    fn local_family(&self, path: &str) -> Family {
        let mut f = names::family_in_set(&self.seen_repos.lock().unwrap(), path);
        f.add(self.overlay.repo_family(path));
        f
    }

    /// `path` among the names known without asking: local ones and the
    /// catalog if it is cached (`None`: nothing known).
    fn known_family(&self, path: &str) -> Family {
        let mut f = self.local_family(path);
        if !f.any() {
            if let Some(Some(c)) = self.catalog.peek(&()) {
                f = names::family_in_sorted(&c, path);
            }
        }
        if !f.exact {
            // A page is a window of the catalog: what it shows is there, what
            // it lacks may lie outside it (so it only ever adds).
            let ttl = self.catalog.ttl();
            let mut pages = self.scanned_pages.lock().unwrap();
            pages.retain(|(at, _)| ttl.is_none_or(|t| at.elapsed() < t));
            for (_, page) in pages.iter() {
                let p = names::family_in_sorted(page, path);
                f.exact |= p.exact;
                f.below |= p.below;
            }
        }
        f
    }

    /// `path` in the registry's catalog (`None`: the registry has no usable
    /// catalog). A cached catalog answers; a name it misses, or any name when
    /// none is cached, is looked for in a few pages after it (`?last=`), not by
    /// reading the whole catalog (which a registry of 10,000 repositories takes
    /// seconds to serve); only when those pages cannot tell is every page read.
    async fn catalog_family(&self, path: &str) -> FsResult<Option<Family>> {
        if let Some(cached) = self.catalog.peek(&()) {
            let Some(c) = cached else { return Ok(None) };
            let f = names::family_in_sorted(&c, path);
            if f.any() || !self.catalog.is_older_than(&(), NAME_MISS_RECHECK) {
                return Ok(Some(f));
            }
        }
        let key = path.to_string();
        let mut scanned = self
            .catalog_scans
            .get_or_fetch(key.clone(), || self.scan_catalog(path))
            .await?;
        if scanned.is_some_and(|f| !f.any()) && self.catalog_scans.expire_if_older(&key, NAME_MISS_RECHECK) {
            scanned = self.catalog_scans.get_or_fetch(key, || self.scan_catalog(path)).await?;
        }
        if let Some(f) = scanned {
            return Ok(Some(f));
        }
        self.catalog.expire_if_older(&(), NAME_MISS_RECHECK);
        Ok(self.catalog().await?.map(|c| names::family_in_sorted(&c, path)))
    }

    /// Read up to `SCAN_PAGES` catalog pages from just before `path`.
    async fn scan_catalog(&self, path: &str) -> FsResult<Option<Family>> {
        let mut seen = Family::default();
        let mut next = None;
        for _ in 0..SCAN_PAGES {
            let (page, link) = match self.client.catalog_page(names::scan_start(path), SCAN_PAGE, next).await {
                Ok(p) => p,
                Err(e) => {
                    // No catalog (answered by `catalog()`), or no `last` support.
                    tracing::debug!(path, "catalog scan: {e}");
                    return Ok(None);
                }
            };
            self.remember_page(page.clone());
            match names::scan_page(path, &page, seen) {
                names::Scan::Done(f) => return Ok(Some(f)),
                names::Scan::CannotTell => return Ok(None),
                names::Scan::More(f) if link.is_none() => return Ok(Some(f)),
                names::Scan::More(f) => seen = f,
            }
            next = link;
        }
        Ok(None)
    }

    /// Keep the names of a catalog page for the catalog's TTL (see `scanned_pages`).
    fn remember_page(&self, mut names: Vec<String>) {
        names.sort();
        let mut pages = self.scanned_pages.lock().unwrap();
        if pages.len() >= MAX_SCANNED_PAGES {
            pages.remove(0);
        }
        pages.push((std::time::Instant::now(), Arc::new(names)));
    }

    /// The first catalog page, read while the mount pinged the registry (in
    /// the same round trip): the names on it are known from the start, so
    /// looking up a namespace or repository among them asks nothing (every
    /// name of a registry that fits one page: 1000 on distribution). They are
    /// kept as a scanned page, never as the catalog: a listing still reads
    /// the catalog fresh, and a name missing from the page is asked as before.
    pub fn learn_first_catalog_page(&self, page: Result<(Vec<String>, Option<url::Url>), RegistryError>) {
        match page {
            Ok((names, _)) => self.remember_page(names),
            Err(e @ (RegistryError::NotFound(_) | RegistryError::Denied(_) | RegistryError::Unsupported(_))) => {
                tracing::info!("no usable catalog ({e}); listing --repo names and names looked up");
                self.catalog.insert((), None);
            }
            // Asked again when a lookup or a listing needs it.
            Err(e) => tracing::debug!("first catalog page: {e}"),
        }
    }

    /// Does `path` exist as a directory (a repository or a namespace above one)?
    /// A repository's own tag list answers first: entering a repository never
    /// reads the catalog.
    pub async fn dir_exists(&self, path: &str) -> FsResult<bool> {
        if self.known_family(path).any() || self.is_repo(path).await? {
            return Ok(true);
        }
        // A namespace, a blob-only repository, or one pushed since the catalog was read.
        Ok(match self.catalog_family(path).await? {
            Some(f) => f.any(),
            // Without a catalog a namespace cannot be seen; any valid name can be entered.
            None => true,
        })
    }

    /// Is `path` a known repository or a namespace above one (the whole catalog read)?
    pub(super) async fn dir_known(&self, path: &str) -> FsResult<bool> {
        if self.local_family(path).any() {
            return Ok(true);
        }
        Ok(self
            .catalog()
            .await?
            .is_some_and(|c| names::family_in_sorted(&c, path).any()))
    }

    /// Is `repo` a repository? (Its tag list answers. An empty list counts only
    /// for a name the catalog lists, or when there is no catalog: some
    /// registries, e.g. ferro-oci-server, answer `{"tags":[]}` for any name.)
    pub async fn is_repo(&self, repo: &str) -> FsResult<bool> {
        match self.tags(repo).await {
            Ok(tags) if tags.is_empty() => {
                if self.is_known_repo(repo) {
                    return Ok(true);
                }
                Ok(self.catalog_family(repo).await?.is_none_or(|f| f.exact))
            }
            Ok(_) => Ok(true),
            Err(e) if e.cause == Cause::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Is `repo` a repository: known, its tag list answers, or (no tags: a
    /// blob-only repository) the catalog lists it?
    pub async fn repo_exists(&self, repo: &str) -> FsResult<bool> {
        if self.is_known_repo(repo) || self.is_repo(repo).await? {
            return Ok(true);
        }
        Ok(self.catalog_family(repo).await?.is_some_and(|f| f.exact))
    }

    /// Is `repo` known to be a repository without asking the registry?
    pub fn is_known_repo(&self, repo: &str) -> bool {
        self.known_family(repo).exact
    }

    /// The entries below `path` (`""`: the root) that are repositories or
    /// namespaces: first components of every name known, the whole catalog read.
    pub async fn child_names(&self, path: &str) -> FsResult<Vec<String>> {
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        // Below the root, a catalog up to two TTLs old serves: `find` over
        // 10,000 repositories outlasts one TTL, and re-reading the catalog
        // (seconds to minutes) for each of them would dominate; the root
        // listing, where new repositories show first, is never older than one.
        let lagging = match self.catalog.ttl() {
            Some(ttl) if !path.is_empty() => self.catalog.peek_within(&(), ttl * 2),
            _ => None,
        };
        let catalog = match lagging {
            Some(c) => c,
            None => self.catalog().await?,
        };
        let mut out = BTreeSet::new();
        {
            let seen = self.seen_repos.lock().unwrap();
            let mut found = BTreeSet::new();
            names::children_in_set(&seen, &prefix, &mut found);
            if let Some(c) = &catalog {
                names::children_in_sorted(c, &prefix, &mut found);
            }
            out.extend(found.into_iter().map(str::to_string));
        }
        self.overlay.repo_children(&prefix, &mut out);
        Ok(out.into_iter().collect())
    }

    pub async fn tags(&self, repo: &str) -> FsResult<Arc<Vec<String>>> {
        let tags = self
            .tags
            .get_or_fetch(repo.to_string(), || async {
                Ok(Arc::new(self.client.tags(repo).await?))
            })
            .await?;
        // An empty list proves nothing on registries that answer it for any
        // name, and is not kept: the first tag pushed shows at once.
        if tags.is_empty() {
            self.tags.invalidate(&repo.to_string());
        } else {
            self.seen_repos.lock().unwrap().insert(repo.to_string());
        }
        Ok(tags)
    }

    /// Made with mkdir and nothing more: no push, no `_tags`/`_blobs`/… made in
    /// it, not seen in the registry.
    pub fn is_only_created(&self, path: &str) -> bool {
        self.overlay.is_created(path)
            && !self.overlay.is_declared(path)
            && !self.seen_repos.lock().unwrap().contains(path)
            && !self
                .catalog
                .peek(&())
                .flatten()
                .is_some_and(|c| names::family_in_sorted(&c, path).exact)
    }

    /// Forget cached names after a push or delete changed them.
    pub fn invalidate_tags(&self, repo: &str, tag: Option<&str>) {
        self.tags.invalidate(&repo.to_string());
        if let Some(t) = tag {
            self.tag_digests.invalidate(&(repo.to_string(), t.to_string()));
        }
        self.catalog.invalidate(&());
        self.catalog_scans.clear();
        self.scanned_pages.lock().unwrap().clear();
        self.oci_content.invalidate(&repo.to_string());
    }

    pub fn set_tag_digest(&self, repo: &str, tag: &str, digest: Digest) {
        self.tag_digests.insert((repo.to_string(), tag.to_string()), digest);
    }

    /// Repositories holding `digest`, as far as this run has seen (mount sources).
    /// Seen in this run first, then remembered from earlier mounts.
    pub(crate) fn repos_holding(&self, digest: &Digest) -> Vec<String> {
        let mut repos: Vec<String> = self
            .present
            .lock()
            .unwrap()
            .iter()
            .filter(|((_, d), ())| d == digest)
            .map(|((r, _), ())| r.clone())
            .collect();
        for (r, d) in self.remembered.lock().unwrap().iter() {
            if d == digest && !repos.contains(r) {
                repos.push(r.clone());
            }
        }
        repos
    }

    /// A blob of `size` bytes was pushed or checked by us: its size is known.
    pub(crate) fn note_blob_size(&self, digest: Digest, size: u64) {
        self.blobs.confirm_size(digest, size);
    }

    pub fn peek_tags(&self, repo: &str) -> Option<Arc<Vec<String>>> {
        self.tags.peek(&repo.to_string())
    }

    /// The digest a tag points at (HEAD, cached for the metadata TTL).
    pub async fn tag_digest(&self, repo: &str, tag: &str) -> FsResult<Digest> {
        let d = self
            .tag_digests
            .get_or_fetch((repo.to_string(), tag.to_string()), || async {
                Ok(self
                    .client
                    .head_manifest(repo, &Reference::Tag(tag.to_string()))
                    .await?)
            })
            .await?;
        self.mark_present(repo, d);
        Ok(d)
    }

    /// Resolve many tags at once with bounded concurrency (so `ls -l _tags`
    /// finds them ready). Failures are left for the individual lookups to report.
    pub async fn resolve_tags(&self, repo: &str, tags: &[String]) -> Vec<(String, Digest)> {
        stream::iter(tags.iter().cloned())
            .map(|t| async move { self.tag_digest(repo, &t).await.ok().map(|d| (t, d)) })
            .buffer_unordered(TAG_CONCURRENCY)
            .filter_map(|x| async move { x })
            .collect()
            .await
    }

    /// Someone is looking at `repo`'s tags (a listing, a lookup, a readlink).
    pub fn note_tag_interest(&self, repo: &str) {
        self.tag_interest
            .lock()
            .unwrap()
            .put(repo.to_string(), std::time::Instant::now());
    }

    /// A tag link of `repo` was looked up or read: if its `_tags` was just
    /// listed, that listing's background resolution starts now.
    pub fn note_tag_look(&self, repo: &str) {
        if let Some(n) = self.tag_looks.lock().unwrap().remove(repo) {
            // A permit is kept when the waiter has not started waiting yet.
            n.notify_one();
        }
    }

    /// The `look` that `prefetch_after_a_look` waits for, registered before
    /// the listing is answered so that a look right after it is never missed.
    pub fn expect_tag_look(&self, repo: &str) -> Arc<tokio::sync::Notify> {
        let look = Arc::new(tokio::sync::Notify::new());
        self.tag_looks.lock().unwrap().insert(repo.to_string(), look.clone());
        look
    }

    /// After a listing of `_tags`: resolve its tags in the background once a
    /// link of it is looked at (`ls -l` stats the first entry right after the
    /// listing; a plain `ls` or a walk of names never does, and then no
    /// manifest request is made). Gives up after `TAG_INTEREST_WINDOW`
    /// without a look.
    pub async fn prefetch_after_a_look(&self, repo: &str, tags: &[String], look: Arc<tokio::sync::Notify>) {
        if tokio::time::timeout(TAG_INTEREST_WINDOW, look.notified())
            .await
            .is_err()
        {
            let mut looks = self.tag_looks.lock().unwrap();
            if looks.get(repo).is_some_and(|n| Arc::ptr_eq(n, &look)) {
                looks.remove(repo);
            }
            return;
        }
        self.prefetch_tag_digests(repo, tags).await;
    }

    fn tags_still_wanted(&self, repo: &str) -> bool {
        self.tag_interest
            .lock()
            .unwrap()
            .peek(repo)
            .is_some_and(|t| t.elapsed() < TAG_INTEREST_WINDOW)
    }

    /// After a listing of `_tags`: resolve its tags in the background so that
    /// `ls -l` finds the link targets ready. Bounded: at most `MAX_TAG_PREFETCH`
    /// tags, and it stops once nobody looks at the tags any more (`ls` returned
    /// or was killed), so a 100k-tag listing does not keep the registry busy.
    pub async fn prefetch_tag_digests(&self, repo: &str, tags: &[String]) {
        self.note_tag_interest(repo);
        let mut skipped = 0usize;
        let resolved = stream::iter(tags.iter().take(MAX_TAG_PREFETCH).cloned())
            .map(|t| async move {
                if !self.tags_still_wanted(repo) {
                    return false;
                }
                let _ = self.tag_digest(repo, &t).await;
                true
            })
            .buffer_unordered(TAG_CONCURRENCY)
            .fold(0usize, |n, done| {
                if !done {
                    skipped += 1;
                }
                async move { n + usize::from(done) }
            })
            .await;
        if skipped > 0 || tags.len() > MAX_TAG_PREFETCH {
            tracing::debug!(
                repo,
                resolved,
                of = tags.len(),
                "stopped resolving tags in the background"
            );
        }
    }

    pub(crate) fn mark_present(&self, repo: &str, d: Digest) {
        if self.present.lock().unwrap().put((repo.to_string(), d), ()).is_none() {
            self.locations.record(repo, &d);
        }
    }

    pub(crate) fn is_present(&self, repo: &str, d: &Digest) -> bool {
        self.present.lock().unwrap().get(&(repo.to_string(), *d)).is_some()
    }

    /// A manifest of `repo` by digest: cached bytes when the repository is known
    /// to hold it, else a HEAD (cached content) or a GET (verified, then cached).
    pub async fn manifest(&self, repo: &str, digest: Digest) -> FsResult<Arc<CachedManifest>> {
        let reference = Reference::Digest(digest);
        if let Some(m) = self.overlay.held_manifest(repo, &digest) {
            return Ok(m);
        }
        if let Some(m) = self.manifests.get(&digest) {
            if !self.is_present(repo, &digest) {
                self.client.head_manifest(repo, &reference).await?;
                self.mark_present(repo, digest);
            }
            self.note_blob_sizes(repo, &m);
            return Ok(m);
        }
        Stats::inc(&self.stats.manifest_cache_misses);
        let fetched = self.client.get_manifest(repo, &reference).await?;
        let m = self.manifests.put(fetched.digest, fetched.bytes, fetched.media_type);
        self.mark_present(repo, digest);
        self.note_blob_sizes(repo, &m);
        Ok(m)
    }

    /// A manifest's blobs and children exist in its repository (the registry
    /// refuses manifests whose references are missing), with the sizes it gives.
    pub(crate) fn note_blob_sizes(&self, repo: &str, m: &CachedManifest) {
        let mut present = self.present.lock().unwrap();
        let mut types = self.media_types.lock().unwrap();
        let blob_children: HashSet<Digest> = oci::child_blobs(&m.parsed).into_iter().collect();
        let descriptors = m.parsed.blobs().chain(
            m.parsed
                .manifests
                .iter()
                .filter(|d| d.digest().is_some_and(|d| blob_children.contains(&d))),
        );
        for desc in descriptors {
            if let Some(d) = desc.digest() {
                if desc.is_foreign() {
                    let urls = desc.urls.clone().unwrap_or_default();
                    let mut foreign = self.foreign.lock().unwrap();
                    if let std::collections::hash_map::Entry::Vacant(e) = foreign.entry(d) {
                        tracing::info!(repo, digest = %d, media_type = %desc.media_type, urls = ?urls,
                            "foreign layer: not fetched from the registry (download it from its URLs)");
                        e.insert(urls);
                    }
                    self.blobs.note_claimed_size(d, desc.size);
                    types.put(d, desc.media_type.clone());
                    continue;
                }
                self.blobs.note_claimed_size(d, desc.size);
                if present.put((repo.to_string(), d), ()).is_none() {
                    self.locations.record(repo, &d);
                }
                if !desc.media_type.is_empty() {
                    types.put(d, desc.media_type.clone());
                }
                if let Some(toc) = oci::annotation(desc, crate::contents::estargz::TOC_DIGEST_ANNOTATION) {
                    self.estargz_tocs.lock().unwrap().put(d, toc.to_string());
                }
            }
        }
    }

    /// Named referrers of a manifest: the referrers API, else the
    /// `sha256-<hex>` tag schema (distribution 2.x has no API); plus cosign's
    /// digest tags `sha256-<hex>.sig` / `.att` / `.sbom`, named `cosign-sig`, ….
    /// Tags are looked for in the (cached) tag list, so a registry without the
    /// API costs no request per manifest.
    pub async fn referrers(&self, repo: &str, digest: Digest) -> FsResult<Arc<NamedDigests>> {
        self.referrers
            .get_or_fetch((repo.to_string(), digest), || async {
                let tags = match self.tags(repo).await {
                    Ok(t) => t,
                    Err(e) if e.cause == Cause::NotFound => Arc::new(Vec::new()),
                    Err(e) => return Err(e),
                };
                let fallback_tag = oci::referrers_tag(&digest);
                let index = match self.referrers_api(repo, digest).await? {
                    Some(bytes) => Some(Manifest::parse(&bytes, Some(oci::OCI_INDEX))),
                    None if tags.contains(&fallback_tag) => {
                        match self.client.get_manifest(repo, &Reference::Tag(fallback_tag)).await {
                            Ok(m) => Some(Manifest::parse(&m.bytes, m.media_type.as_deref())),
                            Err(RegistryError::NotFound(_)) => None,
                            Err(e) => return Err(e.into()),
                        }
                    }
                    None => None,
                };
                let descriptors = index.map(|m| m.manifests).unwrap_or_default();
                let mut named = oci::referrer_names(&descriptors);
                for suffix in oci::COSIGN_TAG_SUFFIXES {
                    let tag = format!("{}.{suffix}", oci::referrers_tag(&digest));
                    if tags.contains(&tag) {
                        match self.tag_digest(repo, &tag).await {
                            Ok(d) => named.push((format!("cosign-{suffix}"), d)),
                            Err(e) => tracing::info!(repo, tag, "cosign tag does not resolve: {e}"),
                        }
                    }
                }
                named.sort();
                Ok(Arc::new(named))
            })
            .await
    }

    /// The referrers API's index for `digest`, or `None` when the registry
    /// has no referrers API (asked once per mount).
    pub async fn referrers_api(&self, repo: &str, digest: Digest) -> FsResult<Option<bytes::Bytes>> {
        use std::sync::atomic::Ordering;
        if self.no_referrers_api.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let answer = self.client.referrers(repo, &digest).await?;
        if answer.is_none() {
            tracing::info!("the registry has no referrers API: using the sha256-<hex> tag schema");
            self.no_referrers_api.store(true, Ordering::Relaxed);
        }
        Ok(answer)
    }

    /// Forget the referrers of `subject` (a referrer was pushed).
    pub fn invalidate_referrers(&self, repo: &str, subject: Digest) {
        self.referrers.invalidate(&(repo.to_string(), subject));
    }

    /// What is known about a blob without asking: its size and media type
    /// from the descriptors seen so far.
    pub fn blob_media_type(&self, digest: &Digest) -> Option<String> {
        self.media_types.lock().unwrap().get(digest).cloned()
    }

    /// The eStargz TOC digest a layer descriptor seen so far carries.
    pub fn blob_estargz_toc(&self, digest: &Digest) -> Option<String> {
        self.estargz_tocs.lock().unwrap().get(digest).cloned()
    }

    /// The download URLs of a foreign layer (`None`: not a foreign layer).
    pub fn foreign_urls(&self, digest: &Digest) -> Option<Vec<String>> {
        self.foreign.lock().unwrap().get(digest).cloned()
    }

    /// Size of a blob in `repo`, from descriptors seen so far (a claim, checked
    /// against the registry's length when the blob is read), else from a GET
    /// of its first chunk that also starts reading it (`BlobStore::probe`: no
    /// extra round trip before the first byte), else HEAD (a blob in the
    /// cache is not fetched again for its size).
    pub async fn blob_size(&self, repo: &str, digest: Digest) -> FsResult<u64> {
        if self.foreign_urls(&digest).is_some() {
            // Never asked of the registry: the descriptor's size is all there is.
            if let Some(s) = self.blobs.known_size(&digest) {
                return Ok(s);
            }
        }
        if self.is_present(repo, &digest) {
            if let Some(s) = self.blobs.known_size(&digest) {
                return Ok(s);
            }
        }
        let probed = if self.blobs.has_complete(&digest) {
            None
        } else {
            match self.blobs.probe(repo, digest).await {
                Ok(size) => size,
                // The registry says it has no such blob: that is the answer.
                Err(e) if e.cause == Cause::NotFound => return Err(e),
                // Anything else (an empty blob answers a range with 416): the
                // HEAD decides, with its own errno.
                Err(e) => {
                    tracing::debug!(repo, %digest, "ranged GET for the size failed ({e}); asking with HEAD");
                    None
                }
            }
        };
        let size = match probed {
            Some(size) => size,
            None => self.client.head_blob(repo, &digest).await?,
        };
        self.blobs.confirm_size(digest, size);
        self.mark_present(repo, digest);
        Ok(size)
    }

    /// Every manifest reachable from the tags (indexes followed), fetched
    /// concurrently through the caches.
    pub async fn reachable_manifests(&self, repo: &str) -> FsResult<Vec<Arc<CachedManifest>>> {
        let tags = self.tags(repo).await?;
        let roots = self
            .resolve_tags(repo, &tags)
            .await
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        self.manifests_from(repo, roots).await
    }

    /// The manifests `roots` and everything below them (index children) and
    /// referring to them (referrers: signatures, SBOMs, attestations — untagged
    /// where the registry has the referrers API), fetched concurrently; a
    /// missing child is skipped, not an error.
    pub async fn manifests_from(&self, repo: &str, roots: Vec<Digest>) -> FsResult<Vec<Arc<CachedManifest>>> {
        let mut frontier = roots;
        let mut seen: HashSet<Digest> = HashSet::new();
        let mut out = Vec::new();
        while !frontier.is_empty() {
            frontier.retain(|d| seen.insert(*d));
            let fetched: Vec<(FsResult<Arc<CachedManifest>>, Vec<Digest>)> = stream::iter(frontier.drain(..))
                .map(|d| async move {
                    let m = self.manifest(repo, d).await;
                    let referrers = match &m {
                        Ok(_) => self.referrer_digests(repo, d).await,
                        Err(_) => Vec::new(),
                    };
                    (m, referrers)
                })
                .buffer_unordered(FETCH_CONCURRENCY)
                .collect()
                .await;
            for (m, referrers) in fetched {
                frontier.extend(referrers);
                match m {
                    Ok(m) => {
                        if m.parsed.kind == ManifestKind::Index {
                            // Only manifest entries: a buildx cache index lists blobs too.
                            frontier.extend(oci::child_manifests(&m.parsed));
                        }
                        out.push(m);
                    }
                    // A dangling reference must not hide the rest of the repository.
                    Err(e) if e.cause == Cause::NotFound => {
                        tracing::info!(repo, "a referenced manifest is missing: {e}");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        out.sort_by_key(|m| m.digest);
        Ok(out)
    }

    /// Digests of the referrers of `digest` (a failure is logged, not fatal:
    /// referrers must not hide the images they refer to).
    async fn referrer_digests(&self, repo: &str, digest: Digest) -> Vec<Digest> {
        match self.referrers(repo, digest).await {
            Ok(r) => r.iter().map(|(_, d)| *d).collect(),
            Err(e) => {
                tracing::info!(repo, %digest, "referrers not listed: {e}");
                Vec::new()
            }
        }
    }

    /// Configs and layers of every reachable manifest, with their sizes.
    pub async fn reachable_blobs(&self, repo: &str) -> FsResult<Vec<(Digest, u64)>> {
        let mut blobs: Vec<(Digest, u64)> = self
            .reachable_manifests(repo)
            .await?
            .iter()
            .flat_map(|m| {
                // Foreign layers are not in the registry: not listed, so
                // rsync and find never try to read them.
                m.parsed
                    .blobs()
                    .filter(|d| !d.is_foreign())
                    .filter_map(|d| Some((d.digest()?, d.size)))
                    .collect::<Vec<_>>()
            })
            .collect();
        blobs.sort();
        blobs.dedup_by_key(|b| b.0);
        Ok(blobs)
    }
}
