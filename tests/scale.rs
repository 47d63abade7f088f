//! Metadata at scale (issue 13 item 5): what a lookup or a listing asks of the
//! registry, read from the fault proxy's request log. Entering a repository
//! asks its tag list, never the catalog (a registry of 10,000 repositories
//! takes seconds to walk it); `ls -l _tags` asks one manifest request per tag.
//! Speed itself is measured by `scripts/bench.sh` (section `scale`), not here.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::process::Command;

use common::*;

/// Seeds `count` repositories named by `name(i)`, each with one tiny image
/// tagged `latest` (one config blob, cross-repository mounted). Returns the
/// manifest digest they all point at.
fn seed_repos(c: &RegistryClient, count: usize, name: impl Fn(usize) -> String) -> String {
    let first = name(0);
    let img = c.push_image(
        &first,
        Some("latest"),
        OCI_MANIFEST,
        image_config("amd64", "scale"),
        vec![],
    );
    for i in 1..count {
        let repo = name(i);
        // ferro-oci-server ignores `?mount=` but serves every blob under every name.
        let mounted = c.mount_blob(&repo, &img.config.digest, &first);
        assert!(
            mounted || c.get_blob(&repo, &img.config.digest).len() as u64 == img.config.size(),
            "blob mount into {repo}"
        );
        c.push_manifest(&repo, "latest", OCI_MANIFEST, &img.manifest);
    }
    img.digest
}

fn catalog_requests(proxy: &FaultProxy) -> Vec<String> {
    catalog_requests_from(proxy, 0)
}

/// The `_catalog` requests the proxy saw from its `from`-th request on.
fn catalog_requests_from(proxy: &FaultProxy, from: usize) -> Vec<String> {
    proxy
        .requests()
        .into_iter()
        .skip(from)
        .filter(|r| r.target.starts_with("/v2/_catalog"))
        .map(|r| r.target)
        .collect()
}

on_both_registries! {
/// 150 repositories (more than one 100-name catalog page) plus a namespace:
/// after the mount (whose first catalog page, here of 100 names, goes out
/// with its ping), `ls MOUNT/<repo>/_tags` sends no `_catalog` request at
/// all; a namespace and a missing name are told by a few pages after the
/// name (`?last=`), never by reading the whole catalog.
fn entering_a_repository_does_not_read_the_catalog(kind) {
    let reg = Registry::start_kind(kind);
    let c = reg.client();
    seed_repos(&c, 150, |i| format!("repo-{i:03}"));
    seed_repos(&c, 3, |i| format!("zns/sub-{i}"));
    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::builder(&proxy.url()).args(["--page-size", "100"]).start();
    let at_mount = proxy.requests().len();
    assert_eq!(
        catalog_requests(&proxy),
        ["/v2/_catalog?n=100"],
        "the mount reads the first catalog page, once"
    );
    assert_eq!(ls(&m.join("repo-123/_tags")), ["latest"]);
    assert!(fs::symlink_metadata(m.join("repo-045/_tags/latest")).unwrap().file_type().is_symlink());
    assert_eq!(catalog_requests_from(&proxy, at_mount), Vec::<String>::new(), "entering repositories read the catalog");
    // `repo-123` is not on the mount's page: its tag list tells it exists
    // (and lists it); `repo-045` is on it: entered without a request, its
    // link resolved by one manifest request.
    let tag_lists: Vec<String> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.target.contains("/tags/list"))
        .map(|r| r.target)
        .collect();
    assert_eq!(tag_lists, ["/v2/repo-123/tags/list?n=100"], "{:?}", proxy.requests());

    // A namespace: its tag list is 404, a scan after the name finds `zns/…`.
    assert_eq!(ls(&m.join("zns/sub-1/_tags")), ["latest"]);
    // Names that do not exist: ENOENT, by the same scan.
    let err = fs::symlink_metadata(m.join("nosuch")).unwrap_err();
    assert_eq!(errno_of(&err), libc::ENOENT);
    let err = fs::symlink_metadata(m.join("zns/nosuch")).unwrap_err();
    assert_eq!(errno_of(&err), libc::ENOENT);
    let scans = catalog_requests_from(&proxy, at_mount);
    assert!(!scans.is_empty(), "the namespace was told without the catalog?");
    match kind {
        // distribution honours `last`: every request is a scan after a name,
        // and the 153 names are never read in full (two pages of 100).
        RegistryKind::Distribution => {
            assert!(scans.iter().all(|t| t.contains("last=")), "catalog requests: {scans:?}");
            assert!(scans.len() <= 3 * 3, "catalog requests: {scans:?}");
        }
        // ferro-oci-server: whatever it does with `last`, the answers above are right.
        RegistryKind::Ferro => {}
    }
    // A repository's listing names what is nested below it: that one reads the catalog.
    assert_eq!(ls(&m.join("repo-007")), ["_blobs", "_manifests", "_tags", "_uploads"]);
}
}

/// Reads an image's first layer by its path below `repo` and checks every byte.
fn read_first_layer_by_path<'a>(m: &Mount, repo: &str, img: &'a ImageInfo) -> &'a BlobInfo {
    let layer = &img.layers[0];
    let got = fs::read(m.join(format!("{repo}/_blobs/{}", layer.digest))).unwrap();
    assert_eq!(sha256_digest(&got), layer.digest);
    assert_eq!(got, layer.bytes);
    layer
}

on_both_registries! {
/// The first catalog page goes out with the mount's ping: every name on it
/// is known before the first lookup. Reading a blob by its path below a
/// namespace then asks no tag list and no catalog page, only the blob (one
/// round trip before the first byte from far away, as `curl -r` pays);
/// names missing from the page are still ENOENT.
fn a_mount_knows_the_names_on_the_first_catalog_page(kind) {
    let reg = Registry::start_kind(kind);
    let c = reg.client();
    let img = c.push_random_image("ns/app", "v1", &[3000]);
    seed_repos(&c, 20, |i| format!("other-{i:02}"));
    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::start(&proxy.url());
    assert_eq!(
        catalog_requests(&proxy),
        ["/v2/_catalog?n=1000"],
        "the mount reads one catalog page of 1000 names"
    );
    let at_mount = proxy.requests().len();
    let layer = read_first_layer_by_path(&m, "ns/app", &img);
    let after: Vec<String> = proxy.requests().into_iter().skip(at_mount).map(|r| r.target).collect();
    assert!(
        after.iter().all(|t| t == &format!("/v2/ns/app/blobs/{}", layer.digest)),
        "a read by path asked more than the blob: {after:?}"
    );
    assert!(!after.is_empty());

    // Not on the page: still ENOENT (asked of the registry, not assumed).
    for missing in ["nosuch", "ns/nosuch", "ns/app/nosuch", "other-00/nosuch"] {
        let err = fs::symlink_metadata(m.join(missing)).unwrap_err();
        assert_eq!(errno_of(&err), libc::ENOENT, "{missing}");
    }
}
}

on_both_registries! {
/// `ls /` asks 1000 names per catalog page (distribution walks its whole
/// repository tree up to the page for every page: fewer pages, fewer walks).
/// 1,030 names: two pages, each with `n=1000`, plus the mount's first page.
fn the_root_listing_asks_1000_names_per_catalog_page(kind) {
    let reg = Registry::start_kind(kind);
    let c = reg.client();
    seed_repos(&c, 1030, |i| format!("r{i:04}"));
    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::start(&proxy.url());
    let at_mount = proxy.requests().len();
    assert_eq!(ls(m.path()).len(), 1030);
    let pages = catalog_requests_from(&proxy, at_mount);
    assert_eq!(pages.len(), 2, "catalog requests: {pages:?}");
    assert!(pages.iter().all(|t| t.contains("n=1000")), "catalog requests: {pages:?}");
}
}

/// A registry that refuses `n=1000` (400, as distribution does above its
/// `catalog.maxentries`) is asked with its own page size from then on.
#[test]
fn a_registry_refusing_1000_names_per_page_is_asked_with_its_own_page_size() {
    let reg = Registry::start();
    let c = reg.client();
    seed_repos(&c, 130, |i| format!("r{i:03}"));
    let proxy = FaultProxy::start(&reg.host_port());
    proxy.fail_next(1, 400, Match::path("/_catalog"));
    let m = Mount::start(&proxy.url());
    assert_eq!(ls(m.path()).len(), 130);
    let pages = catalog_requests(&proxy);
    assert_eq!(pages[0], "/v2/_catalog?n=1000", "catalog requests: {pages:?}");
    // The mount's page again without `n`, then the listing's two pages of
    // 100 (the second by distribution's `Link`, which names its own `n=100`).
    assert_eq!(
        pages,
        [
            "/v2/_catalog?n=1000",
            "/v2/_catalog",
            "/v2/_catalog",
            "/v2/_catalog?last=r099&n=100"
        ]
    );
    assert!(m.log().contains("refused 1000 catalog names per page"), "{}", m.log());
}

on_both_registries! {
/// `ls -l _tags` of 60 tags (on 3 manifests): 60 links with the right
/// targets, and at most one manifest request (HEAD or GET) per tag.
fn ls_l_tags_asks_one_manifest_request_per_tag(kind) {
    let reg = Registry::start_kind(kind);
    let c = reg.client();
    let repo = "many/tags";
    let imgs: Vec<ImageInfo> = (0..3).map(|i| c.push_random_image(repo, &format!("base{i}"), &[100 + i])).collect();
    let mut want = BTreeMap::new();
    for (i, img) in imgs.iter().enumerate() {
        want.insert(format!("base{i}"), img.digest.clone());
    }
    for i in 3..60 {
        let img = &imgs[i % 3];
        let tag = format!("t{i:02}");
        c.push_manifest(repo, &tag, &img.media_type, &img.manifest);
        want.insert(tag, img.digest.clone());
    }
    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::start(&proxy.url());
    let out = Command::new("ls").arg("-l").arg(m.join("many/tags/_tags")).output().unwrap();
    assert!(out.status.success(), "ls -l: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut got = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with('l')) {
        let (left, target) = line.split_once(" -> ").unwrap_or_else(|| panic!("not a link line: {line}"));
        let name = left.rsplit(' ').next().unwrap().to_string();
        let digest = target.strip_prefix("../_manifests/").unwrap_or_else(|| panic!("target {target}"));
        got.insert(name, digest.to_string());
    }
    assert_eq!(got, want, "ls -l output:\n{text}");

    let mut per_tag: BTreeMap<String, usize> = BTreeMap::new();
    for r in proxy.requests() {
        if let Some(reference) = r.target.strip_prefix(&format!("/v2/{repo}/manifests/")) {
            *per_tag.entry(reference.to_string()).or_default() += 1;
        }
    }
    let by_tag: usize = per_tag.iter().filter(|(k, _)| !k.starts_with("sha256:")).map(|(_, n)| n).sum();
    assert!(by_tag <= 60, "{by_tag} manifest requests by tag for 60 tags: {per_tag:?}");
    assert!(per_tag.iter().all(|(_, &n)| n == 1), "a manifest asked twice: {per_tag:?}");
    assert_eq!(per_tag.len(), 60, "every tag resolved: {per_tag:?}");
}
}

on_both_registries! {
/// A plain listing of `_tags` (names only: `ls`, `find`, rsync's walk of
/// names) sends no manifest request at all, not even in the background; the
/// first look at a link (`ls -l`'s lstat) starts resolving every tag of it,
/// each once.
fn a_plain_tags_listing_resolves_nothing_until_a_link_is_looked_at(kind) {
    let reg = Registry::start_kind(kind);
    let c = reg.client();
    let repo = "plain/tags";
    let img = c.push_random_image(repo, "t00", &[100]);
    for i in 1..40 {
        c.push_manifest(repo, &format!("t{i:02}"), &img.media_type, &img.manifest);
    }
    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::start(&proxy.url());
    let manifest_requests = || proxy.requests().iter().filter(|r| r.target.contains("/manifests/")).count();
    assert_eq!(ls(&m.join(repo).join("_tags")).len(), 40);
    // Longer than the background resolution would need to start (it starts at once when it does).
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(manifest_requests(), 0, "a names-only listing asked manifests: {:?}", proxy.requests());

    assert_eq!(ls(&m.join(repo).join("_tags")).len(), 40);
    assert_eq!(
        fs::read_link(m.join(repo).join("_tags/t05")).unwrap().to_str().unwrap(),
        format!("../_manifests/{}", img.digest)
    );
    // Every tag resolved in the background, each with one request.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while manifest_requests() < 40 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut per_tag: BTreeMap<String, usize> = BTreeMap::new();
    for r in proxy.requests() {
        if let Some(reference) = r.target.strip_prefix(&format!("/v2/{repo}/manifests/")) {
            *per_tag.entry(reference.to_string()).or_default() += 1;
        }
    }
    assert_eq!(per_tag.len(), 40, "every tag resolved after the look: {per_tag:?}");
    assert!(per_tag.values().all(|&n| n == 1), "a tag asked twice: {per_tag:?}");
}
}

on_both_registries! {
/// The catalog page that told a namespace exists also names the repositories
/// under it: reading a blob by its path below a namespace asks no tag list of
/// that repository (a round trip less before the first byte from far away).
/// 110 names sort before it, so the mount's first page (100 names) does not
/// show it.
fn a_namespace_scan_makes_the_repositories_it_saw_known(kind) {
    let reg = Registry::start_kind(kind);
    let c = reg.client();
    let img = c.push_random_image("ns/app", "v1", &[3000]);
    seed_repos(&c, 110, |i| format!("aa-{i:03}"));
    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::builder(&proxy.url()).args(["--page-size", "100"]).start();
    let at_mount = proxy.requests().len();
    read_first_layer_by_path(&m, "ns/app", &img);
    let tag_lists: Vec<String> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.target.contains("/tags/list"))
        .map(|r| r.target)
        .collect();
    assert!(
        tag_lists.iter().all(|t| !t.starts_with("/v2/ns/app/")),
        "the repository the catalog page named was asked again: {tag_lists:?}"
    );
    assert!(
        !catalog_requests_from(&proxy, at_mount).is_empty(),
        "the namespace was told without the catalog?"
    );
}
}

/// Memory bounded for the life of a mount: after `find` has looked up every
/// entry of 40 repositories, dropping the kernel's dentry and inode caches
/// makes it send `forget`s, and the inode table (`inodes` in `.regfs/stats`)
/// shrinks back; the mount then answers the same walk and reads the same
/// bytes as before (the forgotten nodes come back on lookup).
#[test]
fn the_inode_table_shrinks_when_the_kernel_forgets() {
    let reg = Registry::start();
    let c = reg.client();
    seed_repos(&c, 40, |i| format!("forget/r{i:02}"));
    let blob_repo = "forget/data";
    let img = c.push_random_image(blob_repo, "v1", &[7]);
    let m = Mount::start(&reg.url());
    let walk = || files::find_printf(&m.join("forget"), &[], "%y %s %P\n");
    let first = walk();
    assert!(first.len() > 400, "{} entries", first.len());
    let before = m.stat("inodes");
    // Fewer than the entries: a digest is one inode in every repository.
    assert!(before > 300, "{before} inodes for {} entries", first.len());
    fs::write("/proc/sys/vm/drop_caches", "2").expect("write /proc/sys/vm/drop_caches (needs root)");
    // Forgets reach the daemon asynchronously: poll (loosely bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut after = m.stat("inodes");
    while after > before / 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        after = m.stat("inodes");
    }
    assert!(
        after <= before / 4,
        "inodes {before} after the walk, still {after} after drop_caches"
    );
    assert_eq!(walk(), first, "the same walk after the forgets");
    let layer = &img.layers[0];
    assert_eq!(
        fs::read(m.join(format!("{blob_repo}/_blobs/{}", layer.digest))).unwrap(),
        c.get_blob(blob_repo, &layer.digest),
        "a forgotten blob node reads its bytes"
    );
}
