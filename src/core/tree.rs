//! What exists, what each directory holds, and where each link points — the
//! tree of the README ("The tree") computed from the view (registry + caches).

use super::attr::Attr;
use super::node::{self, Node, StatusFile};
use super::Core;
use crate::error::{Cause, FsError, FsResult};
use crate::oci::{self, ChildTarget, ManifestKind};
use crate::store::CachedManifest;

impl Core {
    /// Check that `node` exists and compute its attributes (a request at most,
    /// usually none: sizes come from descriptors and caches).
    pub(crate) async fn attr(&self, node: &Node) -> FsResult<Attr> {
        if let Some(attr) = self.contents_attr(node).await? {
            return Ok(attr);
        }
        let v = &self.view;
        if let Node::Tag(r, _) | Node::TagsDir(r) = node {
            v.note_tag_interest(r);
        }
        if let Node::Tag(r, _) = node {
            v.note_tag_look(r);
        }
        let size = match node {
            Node::Root | Node::StatusDir => 0,
            Node::Status(f) => self.status_text(*f).len() as u64,
            Node::Dir(p) => {
                if !v.dir_exists(p).await? {
                    return Err(not_found(node));
                }
                0
            }
            Node::TagsDir(r)
            | Node::ManifestsDir(r)
            | Node::BlobsDir(r)
            | Node::UploadsDir(r)
            | Node::OciDir(r)
            | Node::OciBlobsDir(r)
            | Node::OciAlgDir(r)
            | Node::ExportDir(r) => {
                if !v.repo_exists(r).await? {
                    return Err(not_found(node));
                }
                0
            }
            Node::ManifestDir(r, d) => {
                if !self.view.overlay.is_pending_dir(r, d) {
                    v.manifest_known(r, *d).await?;
                }
                0
            }
            Node::Staged(id) => {
                // Pushed and forgotten: ESTALE makes the kernel look the name
                // up again, and find what the file became.
                let f = self
                    .staging()
                    .get(*id)
                    .ok_or_else(|| FsError::new(Cause::Stale, "the file was pushed; look it up again"))?;
                let size = f.lock().unwrap().size;
                size
            }
            Node::ManifestFile(r, d) => v.manifest(r, *d).await?.bytes.len() as u64,
            // rsync made these inside a manifest directory that is not pushed yet.
            n @ (Node::LayersDir(..) | Node::ChildrenDir(..) | Node::ReferrersDir(..))
                if super::write::pending_manifest_dir(v, n) =>
            {
                0
            }
            Node::LayersDir(r, d) | Node::ChildrenDir(r, d) | Node::ReferrersDir(r, d) => {
                let m = v.manifest(r, *d).await?;
                if !manifest_entries(&m).contains(&node_name(node)) {
                    return Err(not_found(node));
                }
                0
            }
            Node::Blob(r, d) => v.blob_size(r, *d).await?,
            Node::OciLayout(_) => super::archive::OCI_LAYOUT_BYTES.len() as u64,
            Node::OciIndex(r) => v.oci_index(r).await?.len() as u64,
            Node::ExportTar(r, t) => v.export(r, t).await?.layout.size(),
            // Resolved to ManifestFile or Blob by `resolve` before use.
            Node::OciBlob(r, d) => {
                return Box::pin(self.attr(&self.resolve(Node::OciBlob(r.clone(), *d)).await?)).await
            }
            // A symlink's size is the length of its target.
            Node::Tag(..)
            | Node::Config(..)
            | Node::Layer(..)
            | Node::Child(..)
            | Node::Subject(..)
            | Node::Referrer(..)
            | Node::Upload(..) => self.link_target(node).await?.len() as u64,
            // Answered by contents_attr above.
            Node::Rootfs(..)
            | Node::LayerTreesDir(..)
            | Node::LayerTree(..)
            | Node::ContentsDir(..)
            | Node::ContentsEntry(..) => {
                unreachable!("contents nodes have their own attributes")
            }
        };
        Ok(self.make_attr(node, size))
    }

    /// Where a symlink node points (relative, as the README's "The tree" draws it).
    pub(crate) async fn link_target(&self, node: &Node) -> FsResult<String> {
        if node.is_contents() {
            return self.contents_link(node).await;
        }
        let v = &self.view;
        if super::write::pending_manifest_dir(v, node) {
            return self.staging().ghost_target(node).ok_or_else(|| not_found(node));
        }
        if let Node::Tag(r, _) = node {
            v.note_tag_interest(r);
            v.note_tag_look(r);
        }
        let target = match node {
            Node::Tag(r, t) => match self.staging().pending_link(r, t) {
                Some(d) => Some(node::tag_target(&d)),
                None => Some(node::tag_target(&v.tag_digest(r, t).await?)),
            },
            Node::Upload(r, n) => self.staging().upload_target(r, n).map(|t| match t {
                super::write::UploadTarget::Blob(d) => node::blob_target(1, &d),
                super::write::UploadTarget::Manifest(d) => node::manifest_target(1, &d),
            }),
            Node::Config(r, d) => {
                let m = v.manifest(r, *d).await?;
                m.parsed
                    .config
                    .as_ref()
                    .filter(|_| m.parsed.kind == ManifestKind::Image)
                    .map(|c| descriptor_target(node, c, |d| node::blob_target(2, d), 2))
            }
            Node::Layer(r, d, name) => {
                let m = v.manifest(r, *d).await?;
                let n = m.parsed.layers.len();
                name.parse::<usize>()
                    .ok()
                    .filter(|&i| i < n && oci::layer_name(i, n) == *name)
                    .map(|i| descriptor_target(node, &m.parsed.layers[i], |d| node::blob_target(3, d), 3))
            }
            Node::Child(r, d, name) => {
                let m = v.manifest(r, *d).await?;
                oci::child_names(&m.parsed)
                    .into_iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, t)| match t {
                        ChildTarget::Manifest(c) => node::sibling_manifest_target(2, &c),
                        ChildTarget::Blob(b) => node::blob_target(3, &b),
                    })
            }
            Node::Subject(r, d) => {
                let m = v.manifest(r, *d).await?;
                m.parsed
                    .subject
                    .as_ref()
                    .filter(|_| has_tree(&m))
                    .map(|s| descriptor_target(node, s, |d| node::sibling_manifest_target(1, d), 2))
            }
            Node::Referrer(r, d, name) => {
                v.manifest(r, *d).await?;
                let refs = v.referrers(r, *d).await?;
                refs.iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, t)| node::sibling_manifest_target(2, t))
            }
            n => return Err(FsError::new(Cause::Invalid, format!("{} is not a symlink", n.path()))),
        };
        target.ok_or_else(|| not_found(node))
    }

    /// The entries of a directory node, by name.
    pub(crate) async fn list(&self, node: &Node) -> FsResult<Vec<(String, Node)>> {
        if matches!(node, Node::ContentsDir(..) | Node::LayerTreesDir(..)) {
            return self.contents_list(node).await;
        }
        let v = &self.view;
        let names: Vec<String> = match node {
            Node::Root => {
                let mut names = v.child_names("").await?;
                names.insert(0, node::STATUS_DIR.to_string());
                names
            }
            Node::StatusDir => StatusFile::ALL.iter().map(|f| f.name().to_string()).collect(),
            Node::Dir(p) => {
                let nested = v.child_names(p).await?;
                let mut names = Vec::new();
                // A directory made by `mkdir -p a/b` on the way to `b` lists as a
                // namespace; its repository entries still resolve by name.
                let only_made_on_the_way = v.is_only_created(p) && !nested.is_empty();
                if !only_made_on_the_way && v.repo_exists(p).await? {
                    names.extend([node::TAGS, node::MANIFESTS, node::BLOBS, node::UPLOADS].map(String::from));
                }
                names.extend(nested);
                names
            }
            Node::TagsDir(r) => {
                let mut names = self.existing_or_new(v.tags(r).await.map(|t| t.to_vec()))?;
                names.extend(self.staging().links_in(r));
                names
            }
            Node::UploadsDir(r) => self.staging().uploads_in(r),
            Node::OciDir(_) => vec![
                node::OCI_BLOBS.into(),
                node::OCI_INDEX_JSON.into(),
                node::OCI_LAYOUT.into(),
            ],
            Node::OciBlobsDir(_) => vec![node::OCI_ALG.into()],
            Node::OciAlgDir(r) => {
                // Named by hex, served as the manifest file or blob of that digest.
                let mut out: Vec<(String, Node)> = self
                    .existing_or_new(v.oci_blobs(r).await)?
                    .iter()
                    .map(|(&d, &(_, is_manifest))| {
                        let n = if is_manifest {
                            Node::ManifestFile(r.clone(), d)
                        } else {
                            Node::Blob(r.clone(), d)
                        };
                        (d.hex(), n)
                    })
                    .collect();
                self.add_staged(node, &mut out);
                return Ok(out);
            }
            Node::ExportDir(r) => self
                .existing_or_new(v.tags(r).await.map(|t| t.to_vec()))?
                .into_iter()
                .map(|t| format!("{t}{}", node::TAR_SUFFIX))
                .collect(),
            Node::ManifestsDir(r) => self
                .existing_or_new(v.reachable_manifests(r).await)?
                .iter()
                .map(|m| m.digest.to_string())
                .collect(),
            Node::BlobsDir(r) => self
                .existing_or_new(v.reachable_blobs(r).await)?
                .iter()
                .map(|(d, _)| d.to_string())
                .collect(),
            Node::ManifestDir(r, d) => {
                if self.view.overlay.is_pending_dir(r, d) {
                    Vec::new()
                } else {
                    let m = v.manifest(r, *d).await?;
                    manifest_entries(&m).iter().map(|s| s.to_string()).collect()
                }
            }
            Node::LayersDir(r, d) => {
                let m = v.manifest(r, *d).await?;
                let n = m.parsed.layers.len();
                (0..n).map(|i| oci::layer_name(i, n)).collect()
            }
            Node::ChildrenDir(r, d) => {
                let m = v.manifest(r, *d).await?;
                oci::child_names(&m.parsed).into_iter().map(|(n, _)| n).collect()
            }
            Node::ReferrersDir(r, d) => v.referrers(r, *d).await?.iter().map(|(n, _)| n.clone()).collect(),
            _ => {
                return Err(FsError::new(
                    Cause::NotADirectory,
                    format!("{} is not a directory", node.path()),
                ))
            }
        };
        let mut out: Vec<(String, Node)> = names
            .into_iter()
            .filter_map(|n| match node.child(&n) {
                Some(child) => Some((n, child)),
                None => {
                    // A registry listed a name no entry can have (`../x`, a newline…).
                    tracing::warn!(dir = node.path(), name = ?n, "not a valid name; not listed");
                    None
                }
            })
            .collect();
        if let Node::ManifestsDir(r) = node {
            for d in self.view.overlay.pending_dirs_in(r) {
                out.push((d.to_string(), Node::ManifestDir(r.clone(), d)));
            }
        }
        self.add_staged(node, &mut out);
        Ok(out)
    }

    /// Files being written show under their current names.
    fn add_staged(&self, dir: &Node, out: &mut Vec<(String, Node)>) {
        for name in self.staging().names_in(dir) {
            if let Some(id) = self.staging().find(dir, &name) {
                out.retain(|(n, _)| *n != name);
                out.push((name, Node::Staged(id)));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
    }

    /// Placeholders become the node that serves them: `_oci/blobs/sha256/<hex>`
    /// is the manifest file or the blob of that digest (one inode per digest).
    pub(crate) async fn resolve(&self, node: Node) -> FsResult<Node> {
        match node {
            Node::OciBlob(r, d) => Ok(if self.view.manifest_or_blob(&r, d).await? {
                Node::ManifestFile(r, d)
            } else {
                Node::Blob(r, d)
            }),
            n @ (Node::Rootfs(..) | Node::LayerTree(..)) => self.contents_resolve(n).await,
            n => Ok(n),
        }
    }

    /// A repository made with `mkdir` has no tags in the registry yet: list it empty.
    fn existing_or_new<T: Default>(&self, r: FsResult<T>) -> FsResult<T> {
        match r {
            Err(e) if e.cause == Cause::NotFound => Ok(T::default()),
            other => other,
        }
    }
}

impl Core {
    /// Extended attributes of manifest and blob entries (`user.regfs.*`).
    pub(crate) async fn xattrs(&self, node: &Node) -> FsResult<Vec<(&'static str, String)>> {
        let v = &self.view;
        Ok(match node {
            Node::ManifestDir(r, d) | Node::ManifestFile(r, d) => {
                let m = v.manifest(r, *d).await?;
                vec![
                    (XATTR_DIGEST, d.to_string()),
                    (XATTR_MEDIA_TYPE, m.parsed.media_type.clone()),
                    (XATTR_SIZE, m.bytes.len().to_string()),
                ]
            }
            Node::Blob(r, d) => {
                let mut attrs = vec![
                    (XATTR_DIGEST, d.to_string()),
                    (XATTR_SIZE, v.blob_size(r, *d).await?.to_string()),
                ];
                if let Some(t) = v.blob_media_type(d) {
                    attrs.insert(1, (XATTR_MEDIA_TYPE, t));
                }
                if let Some(urls) = v.foreign_urls(d) {
                    attrs.push((XATTR_URLS, urls.join("\n")));
                }
                attrs
            }
            _ => Vec::new(),
        })
    }
}

const XATTR_DIGEST: &str = "user.regfs.digest";
const XATTR_MEDIA_TYPE: &str = "user.regfs.mediatype";
const XATTR_SIZE: &str = "user.regfs.size";
/// A foreign layer's download URLs, one per line.
const XATTR_URLS: &str = "user.regfs.urls";

/// Schema1 and unknown media types are shown raw: `manifest.json` only.
fn has_tree(m: &CachedManifest) -> bool {
    matches!(m.parsed.kind, ManifestKind::Image | ManifestKind::Index)
}

/// The names inside a manifest directory.
fn manifest_entries(m: &CachedManifest) -> Vec<&'static str> {
    let p = &m.parsed;
    let mut out = vec![node::MANIFEST_JSON];
    if !has_tree(m) {
        return out;
    }
    if p.config.is_some() {
        out.push(node::CONFIG_JSON);
    }
    match p.kind {
        ManifestKind::Image => out.push(node::LAYERS),
        ManifestKind::Index => out.push(node::CHILDREN),
        _ => {}
    }
    if p.subject.is_some() {
        out.push(node::SUBJECT);
    }
    out.push(node::REFERRERS);
    out
}

/// The last path component of a node inside a manifest directory.
fn node_name(node: &Node) -> &'static str {
    match node {
        Node::LayersDir(..) => node::LAYERS,
        Node::ChildrenDir(..) => node::CHILDREN,
        Node::ReferrersDir(..) => node::REFERRERS,
        _ => "",
    }
}

fn not_found(node: &Node) -> FsError {
    FsError::new(Cause::NotFound, format!("{} does not exist", node.path()))
}

/// The link target for a descriptor: built from its parsed digest, or, when
/// the registry sent something that is not a valid digest (`../../etc/passwd`),
/// a link that dangles inside the mount, with a log line.
fn descriptor_target(
    node: &Node,
    desc: &oci::Descriptor,
    target: impl Fn(&crate::oci::Digest) -> String,
    depth_to_repo: usize,
) -> String {
    match desc.digest() {
        Some(d) => target(&d),
        None => {
            tracing::warn!(path = node.path(), digest = ?desc.digest, "descriptor has an invalid digest; the link dangles");
            node::invalid_digest_target(depth_to_repo)
        }
    }
}
