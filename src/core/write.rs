//! Writes: files are staged on local disk (any size, any write order, memory
//! bounded) and committed — pushed — on close, fsync or rename into their final
//! name. What a commit means depends on where the file lives:
//!
//! | where                              | commit                                         |
//! |------------------------------------|------------------------------------------------|
//! | `_uploads/<name>`                  | blob push; the name then links to the blob     |
//! | `_blobs/sha256:<hex>`              | blob push, refused (EIO) unless the bytes hash to the name |
//! | `_tags/<tag>`                      | manifest PUT by tag                            |
//! | `_manifests/sha256:<hex>/manifest.json` | manifest PUT by digest (held until its references arrive) |
//!
//! Names starting with `.` (rsync's and editors' temporary files) are staged
//! and only committed when renamed to a final name. Tag symlinks (`ln -s
//! ../_manifests/sha256:… _tags/<tag>`) are checked at once and pushed when
//! they settle: renamed, or left alone for a moment (so `ln -sfn`'s temporary
//! link never becomes a tag).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::node::{self, Node};
use super::push::Pushed;
use super::Core;
use crate::error::{Cause, FsError, FsResult};
use crate::oci::reference::is_valid_tag;
use crate::oci::{Digest, Reference};
use crate::registry::client::{FileRange, MAX_MANIFEST_SIZE};

/// How long a new tag symlink may wait for a rename before it is pushed as it is.
const LINK_SETTLE: Duration = Duration::from_millis(500);

pub struct StagedFile {
    pub parent: Node,
    pub name: String,
    path: PathBuf,
    file: File,
    pub size: u64,
    /// Written since the last commit.
    pub(crate) dirty: bool,
    /// Outcome of the last commit, returned to later flushes of the same data.
    last: Option<FsResult<()>>,
    commit_gate: Arc<tokio::sync::Mutex<()>>,
    /// `_uploads/<name>`: layers of an image archive pushed as they are written.
    pub(crate) early: Option<super::early::Early>,
}

/// What a file written to `_uploads/` became.
#[derive(Clone, Copy, Debug)]
pub enum UploadTarget {
    Blob(Digest),
    /// An imported image archive: the (first) manifest it tagged.
    Manifest(Digest),
}

struct PendingLink {
    digest: Digest,
    /// Bumped on every change, so a settle timer knows whether it is still current.
    generation: u64,
}

pub struct Staging {
    dir: PathBuf,
    next_id: AtomicU64,
    files: Mutex<HashMap<u64, Arc<Mutex<StagedFile>>>>,
    names: Mutex<HashMap<(Node, String), u64>>,
    /// `_uploads/<name>` pushed during this run → the blob it became.
    uploads: Mutex<HashMap<(String, String), UploadTarget>>,
    /// Tag symlinks not pushed yet: (repo, name) → target.
    links: Mutex<HashMap<(String, String), PendingLink>>,
    link_generation: AtomicU64,
    /// Links rsync creates inside manifest directories not pushed yet: they are
    /// derived from manifest.json, so they are only remembered, to be shown back.
    ghosts: Mutex<HashMap<Node, String>>,
}

/// What committing a staged file under (parent, name) means; `None`: nothing yet.
enum Commit {
    UploadBlob(String),
    Blob(String, Digest),
    Tag(String, String),
    Manifest(String, Digest),
    /// `_oci/blobs/sha256/<hex>`: a manifest (pushed by digest) or a blob.
    OciBlob(String, Digest),
    /// `_oci/index.json`: one tag per entry with a ref name.
    OciIndex(String),
    /// `_oci/oci-layout`: nothing to push.
    Nothing,
}

fn commit_kind(parent: &Node, name: &str) -> Option<Commit> {
    if node::is_temp_name(name) {
        return None;
    }
    match parent {
        Node::UploadsDir(r) => Some(Commit::UploadBlob(r.clone())),
        Node::BlobsDir(r) => name.parse().ok().map(|d| Commit::Blob(r.clone(), d)),
        Node::TagsDir(r) if is_valid_tag(name) => Some(Commit::Tag(r.clone(), name.to_string())),
        Node::ManifestDir(r, d) if name == node::MANIFEST_JSON => Some(Commit::Manifest(r.clone(), *d)),
        Node::OciAlgDir(r) => Digest::from_hex(name).map(|d| Commit::OciBlob(r.clone(), d)),
        Node::OciDir(r) if name == node::OCI_INDEX_JSON => Some(Commit::OciIndex(r.clone())),
        Node::OciDir(_) if name == node::OCI_LAYOUT => Some(Commit::Nothing),
        _ => None,
    }
}

/// May a file called `name` be created in `parent`? (EINVAL for a bad name,
/// EPERM for a directory that takes no files.)
pub fn check_create(parent: &Node, name: &str) -> FsResult<()> {
    let writable = matches!(
        parent,
        Node::UploadsDir(_)
            | Node::BlobsDir(_)
            | Node::TagsDir(_)
            | Node::ManifestDir(..)
            | Node::OciDir(_)
            | Node::OciAlgDir(_)
    );
    if !writable {
        return Err(FsError::new(
            Cause::NotPermitted,
            format!("cannot create {name:?} in {}: files are written only under _uploads, _blobs, _tags and _manifests/<digest>/", parent.path()),
        ));
    }
    if node::is_temp_name(name) || (matches!(parent, Node::UploadsDir(_)) && node::is_file_name(name)) {
        return Ok(());
    }
    if commit_kind(parent, name).is_none() {
        let want = match parent {
            Node::BlobsDir(_) => "a digest sha256:<64 hex>",
            Node::TagsDir(_) => "a valid tag",
            Node::OciAlgDir(_) => "64 hex digits",
            Node::OciDir(_) => "index.json or oci-layout",
            _ => "manifest.json",
        };
        return Err(FsError::new(
            Cause::Invalid,
            format!("{}/{name}: the name must be {want}", parent.path()),
        ));
    }
    Ok(())
}

impl Staging {
    pub fn new(cache_dir: &std::path::Path) -> std::io::Result<Self> {
        let dir = crate::store::dir::staging(cache_dir);
        std::fs::create_dir_all(&dir)?;
        // Staged files of a daemon that died were never committed: drop them
        // (another mount sharing this cache dir keeps its own).
        crate::store::dir::sweep_dead_processes(&dir);
        Ok(Staging {
            dir,
            next_id: AtomicU64::new(1),
            files: Mutex::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            uploads: Mutex::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            link_generation: AtomicU64::new(0),
            ghosts: Mutex::new(HashMap::new()),
        })
    }

    /// A new, empty staged file at (parent, name), replacing any staged there.
    pub fn create(&self, parent: &Node, name: &str) -> FsResult<u64> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(crate::store::dir::process_file_name("staged", id));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let staged = StagedFile {
            parent: parent.clone(),
            name: name.to_string(),
            path,
            file,
            size: 0,
            dirty: true,
            last: None,
            commit_gate: Arc::new(tokio::sync::Mutex::new(())),
            early: (matches!(parent, Node::UploadsDir(_)) && !node::is_temp_name(name))
                .then(super::early::Early::default),
        };
        if let Some(old) = self
            .names
            .lock()
            .unwrap()
            .insert((parent.clone(), name.to_string()), id)
        {
            self.forget(old);
        }
        self.files.lock().unwrap().insert(id, Arc::new(Mutex::new(staged)));
        Ok(id)
    }

    /// Pushed, and not written since: what it became is served by the tree
    /// (from the moment close() returns, before the kernel releases the file).
    pub fn is_settled(&self, id: u64) -> bool {
        self.get(id).is_some_and(|f| {
            let f = f.lock().unwrap();
            !f.dirty && matches!(f.last, Some(Ok(()))) && commit_kind(&f.parent, &f.name).is_some()
        })
    }

    /// Its last push failed and nothing was written since.
    pub fn push_failed(&self, id: u64) -> bool {
        self.get(id).is_some_and(|f| {
            let f = f.lock().unwrap();
            !f.dirty && matches!(f.last, Some(Err(_)))
        })
    }

    pub fn get(&self, id: u64) -> Option<Arc<Mutex<StagedFile>>> {
        self.files.lock().unwrap().get(&id).cloned()
    }

    pub fn find(&self, parent: &Node, name: &str) -> Option<u64> {
        self.names
            .lock()
            .unwrap()
            .get(&(parent.clone(), name.to_string()))
            .copied()
    }

    /// Names staged in `parent` and not settled, for listings.
    pub fn names_in(&self, parent: &Node) -> Vec<String> {
        let names = names_under(&self.names.lock().unwrap(), parent);
        names
            .into_iter()
            .filter(|n| self.find(parent, n).is_some_and(|id| !self.is_settled(id)))
            .collect()
    }

    /// Drop a staged file and its data.
    pub fn forget(&self, id: u64) {
        if let Some(f) = self.files.lock().unwrap().remove(&id) {
            let f = f.lock().unwrap();
            let _ = std::fs::remove_file(&f.path);
            let mut names = self.names.lock().unwrap();
            if names.get(&(f.parent.clone(), f.name.clone())) == Some(&id) {
                names.remove(&(f.parent.clone(), f.name.clone()));
            }
        }
    }

    pub fn rename(&self, id: u64, new_name: &str) {
        let Some(f) = self.get(id) else { return };
        let mut f = f.lock().unwrap();
        let mut names = self.names.lock().unwrap();
        names.remove(&(f.parent.clone(), f.name.clone()));
        if let Some(old) = names.insert((f.parent.clone(), new_name.to_string()), id) {
            if old != id {
                drop(names);
                self.files.lock().unwrap().remove(&old);
            }
        }
        f.name = new_name.to_string();
    }

    pub fn upload_target(&self, repo: &str, name: &str) -> Option<UploadTarget> {
        self.uploads
            .lock()
            .unwrap()
            .get(&(repo.to_string(), name.to_string()))
            .copied()
    }

    pub fn uploads_in(&self, repo: &str) -> Vec<String> {
        names_under(&self.uploads.lock().unwrap(), &repo.to_string())
    }

    pub fn remove_upload(&self, repo: &str, name: &str) -> bool {
        self.uploads
            .lock()
            .unwrap()
            .remove(&(repo.to_string(), name.to_string()))
            .is_some()
    }

    /// `_uploads/<name>` of `repo` was pushed and became `target`.
    pub fn record_upload(&self, repo: &str, name: &str, target: UploadTarget) {
        self.uploads
            .lock()
            .unwrap()
            .insert((repo.to_string(), name.to_string()), target);
    }

    /// Remember a link rsync made inside a pending manifest directory, to show it back.
    pub fn add_ghost(&self, node: &Node, target: &str) {
        self.ghosts.lock().unwrap().insert(node.clone(), target.to_string());
    }

    pub fn ghost_target(&self, node: &Node) -> Option<String> {
        self.ghosts.lock().unwrap().get(node).cloned()
    }

    pub fn pending_link(&self, repo: &str, name: &str) -> Option<Digest> {
        self.links
            .lock()
            .unwrap()
            .get(&(repo.to_string(), name.to_string()))
            .map(|l| l.digest)
    }

    pub fn links_in(&self, repo: &str) -> Vec<String> {
        names_under(&self.links.lock().unwrap(), &repo.to_string())
    }

    fn add_link(&self, repo: &str, name: &str, digest: Digest) -> u64 {
        let generation = self.link_generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.links
            .lock()
            .unwrap()
            .insert((repo.to_string(), name.to_string()), PendingLink { digest, generation });
        generation
    }

    /// Take a pending link out if it is still the one of `generation` (or any, for `None`).
    fn take_link(&self, repo: &str, name: &str, generation: Option<u64>) -> Option<Digest> {
        let mut links = self.links.lock().unwrap();
        let key = (repo.to_string(), name.to_string());
        match links.get(&key) {
            Some(l) if generation.is_none_or(|g| g == l.generation) => links.remove(&key).map(|l| l.digest),
            _ => None,
        }
    }
}

impl StagedFile {
    pub fn write(&mut self, offset: u64, data: &[u8]) -> FsResult<()> {
        let end = offset + data.len() as u64;
        let manifest_like = matches!(self.parent, Node::TagsDir(_) | Node::ManifestDir(..));
        if manifest_like && end > MAX_MANIFEST_SIZE {
            return Err(FsError::new(
                Cause::TooLarge,
                format!("a manifest may not exceed {MAX_MANIFEST_SIZE} bytes"),
            ));
        }
        self.file.write_all_at(data, offset)?;
        self.size = self.size.max(end);
        self.dirty = true;
        if let Some(early) = &mut self.early {
            early.wrote(offset, data);
        }
        Ok(())
    }

    pub fn truncate(&mut self, size: u64) -> FsResult<()> {
        if let Some(early) = &mut self.early {
            early.truncated(size);
        }
        self.file.set_len(size)?;
        self.size = size;
        self.dirty = true;
        Ok(())
    }

    pub fn read(&self, offset: u64, len: u64) -> FsResult<Vec<u8>> {
        let end = offset.saturating_add(len).min(self.size);
        let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn hash(&self) -> std::io::Result<Digest> {
        Digest::of_file_range(&self.file, 0, Some(self.size))
    }

    fn bytes(&self) -> std::io::Result<Bytes> {
        let mut buf = vec![0u8; self.size as usize];
        self.file.read_exact_at(&mut buf, 0)?;
        Ok(Bytes::from(buf))
    }
}

impl Core {
    /// Start pushing the archive members whose headers `f`'s last write
    /// completed (see early.rs): hashed as they are written, pushed once whole.
    pub(crate) fn start_early_pushes(self: &Arc<Self>, f: &mut StagedFile) {
        let (Some(early), Node::UploadsDir(repo)) = (&mut f.early, &f.parent) else {
            return;
        };
        for m in early.take_found() {
            let file = match f.file.try_clone() {
                Ok(file) => file,
                Err(e) => {
                    tracing::debug!(member = m.name, "not pushed early: {e}");
                    continue;
                }
            };
            let (core, repo, path) = (self.clone(), repo.clone(), f.path.clone());
            let (progress, limit, member) = (early.progress(), early.limit(), m.clone());
            let pushing = super::early::share(async move {
                let hashed = {
                    let member = member.clone();
                    tokio::task::spawn_blocking(move || progress.hash_as_written(&file, &member)).await
                };
                let digest = hashed.map_err(|e| FsError::new(Cause::Io, format!("hashing {}: {e}", member.name)))??;
                if let Some(named) = member.named.filter(|n| *n != digest) {
                    return Err(FsError::new(
                        Cause::Io,
                        format!(
                            "archive member {} hashes to {digest}, not to its name {named}",
                            member.name
                        ),
                    ));
                }
                let _turn = limit.acquire().await;
                let range = FileRange {
                    path,
                    offset: member.offset,
                    len: member.size,
                };
                core.view.push_blob(&repo, digest, &range).await?;
                tracing::info!(repo, member = member.name, %digest, "archive member pushed while the archive is written");
                Ok(digest)
            });
            early.started(&m, pushing);
        }
    }

    /// Commit staged file `id` if it has a final name and new data; the result
    /// is what the writer's close/fsync/rename returns.
    pub(crate) async fn commit(&self, id: u64) -> FsResult<()> {
        let Some(staged) = self.staging().get(id) else {
            return Ok(());
        };
        // One commit at a time per file: a close() that arrives while a push is
        // under way (a dup'd descriptor) waits for it and returns its result.
        let gate = staged.lock().unwrap().commit_gate.clone();
        let _one_at_a_time = gate.lock().await;
        let (kind, path, size, digest, bytes, prepushed) = {
            let mut f = staged.lock().unwrap();
            let Some(kind) = commit_kind(&f.parent, &f.name) else {
                return Ok(());
            };
            if !f.dirty {
                return f.last.clone().unwrap_or(Ok(()));
            }
            f.dirty = false;
            let small = matches!(kind, Commit::Tag(..) | Commit::Manifest(..) | Commit::OciIndex(_))
                || (matches!(kind, Commit::OciBlob(..)) && f.size <= MAX_MANIFEST_SIZE);
            let bytes = if small { Some(f.bytes()?) } else { None };
            let prepushed = f.early.as_mut().and_then(|e| e.finish()).unwrap_or_default();
            // An upload is hashed whole only when it turns out to be one blob.
            let digest = match kind {
                Commit::UploadBlob(_) => None,
                _ => Some(f.hash()?),
            };
            (kind, f.path.clone(), f.size, digest, bytes, prepushed)
        };
        let v = &self.view;
        let result = match kind {
            Commit::UploadBlob(repo) => {
                let name = staged.lock().unwrap().name.clone();
                // An image archive is imported; anything else is one blob.
                let target = match super::import::Archive::open(&path) {
                    Err(e) => Err(e),
                    Ok(Some(archive)) => v.import(&repo, &archive, &name, &prepushed).await.map(|i| {
                        tracing::info!(repo, file = name, tags = ?i.tags, "image archive imported");
                        UploadTarget::Manifest(i.first)
                    }),
                    Ok(None) => match Digest::of_file_range(&File::open(&path)?, 0, Some(size)) {
                        Err(e) => Err(e.into()),
                        Ok(digest) => v
                            .push_blob(&repo, digest, &FileRange::whole(&path, size))
                            .await
                            .map(|_| UploadTarget::Blob(digest)),
                    },
                };
                target.map(|t| {
                    self.staging().record_upload(&repo, &name, t);
                })
            }
            Commit::Blob(repo, name) if Some(name) != digest => Err(FsError::new(
                Cause::Io,
                format!(
                    "{}/_blobs/{name}: the bytes written hash to {}; nothing pushed",
                    digest.map(|d| d.to_string()).unwrap_or_default(),
                    repo
                ),
            )),
            Commit::Blob(repo, name) => v.push_blob(&repo, name, &FileRange::whole(&path, size)).await,
            Commit::Tag(repo, tag) => v
                .push_manifest(&repo, Reference::Tag(tag), bytes.unwrap_or_default())
                .await
                .map(|_| ()),
            Commit::Nothing => Ok(()),
            Commit::OciBlob(repo, name) if Some(name) != digest => Err(FsError::new(
                Cause::Io,
                format!(
                    "{repo}/_oci/blobs/sha256/{}: the bytes written hash to {}; nothing pushed",
                    name.hex(),
                    digest.map(|d| d.to_string()).unwrap_or_default(),
                ),
            )),
            Commit::OciBlob(repo, digest) => {
                // A layout's blobs/ holds manifests and blobs alike: what parses
                // as an image manifest or index is pushed as one (by digest).
                let is_manifest = bytes.as_ref().is_some_and(|b| {
                    matches!(
                        crate::oci::Manifest::parse(b, None).kind,
                        crate::oci::ManifestKind::Image | crate::oci::ManifestKind::Index
                    )
                });
                match bytes {
                    Some(b) if is_manifest => v.push_manifest(&repo, Reference::Digest(digest), b).await.map(|_| ()),
                    _ => v.push_blob(&repo, digest, &FileRange::whole(&path, size)).await,
                }
            }
            Commit::OciIndex(repo) => self.restore_oci_index(&repo, &bytes.unwrap_or_default()).await,
            Commit::Manifest(repo, d) => {
                match v
                    .push_manifest(&repo, Reference::Digest(d), bytes.unwrap_or_default())
                    .await
                {
                    Ok(Pushed::Done(_)) => {
                        self.view.overlay.remove_pending_dir(&repo, d);
                        Ok(())
                    }
                    Ok(Pushed::Held(_)) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = &result {
            tracing::warn!(path = %staged.lock().unwrap().name, "push failed: {e}");
            self.view.stats.record_error(format!("push: {e}"));
        }
        staged.lock().unwrap().last = Some(result.clone());
        result
    }

    /// A committed staged file is done: what it became is served by the tree.
    /// One whose push failed is dropped: the writer got the error from close(),
    /// and nothing that did not reach the registry stays listed.
    pub(crate) fn settle_staged(&self, id: u64) {
        if self.staging().is_settled(id) || self.staging().push_failed(id) {
            self.staging().forget(id);
        }
    }

    /// `ln -s ../_manifests/sha256:<hex> _tags/<name>`: check the target now,
    /// push when the link settles.
    pub(crate) async fn create_tag_link(self: &Arc<Self>, repo: &str, name: &str, target: &str) -> FsResult<()> {
        if !is_valid_tag(name) && !node::is_temp_name(name) {
            return Err(FsError::new(Cause::Invalid, format!("{name:?} is not a valid tag")));
        }
        let digest = parse_tag_target(target).ok_or_else(|| {
            FsError::new(
                Cause::Invalid,
                format!("tag link target {target:?} is not ../_manifests/sha256:<hex>"),
            )
        })?;
        if !self.view.overlay.is_arriving(repo, &digest) {
            self.view.manifest_known(repo, digest).await?;
        }
        let generation = self.staging().add_link(repo, name, digest);
        if !node::is_temp_name(name) {
            let (fs, repo, name) = (self.clone(), repo.to_string(), name.to_string());
            tokio::spawn(async move {
                tokio::time::sleep(LINK_SETTLE).await;
                if let Some(d) = fs.staging().take_link(&repo, &name, Some(generation)) {
                    if let Err(e) = fs.view.push_tag_when_ready(&repo, &name, d).await {
                        tracing::warn!(repo, tag = name, "tag push failed: {e}");
                        fs.view.stats.record_error(format!("tag {repo}:{name}: {e}"));
                    }
                }
            });
        }
        Ok(())
    }

    /// Rename a pending tag link: the tag is pushed now, under its new name.
    pub(crate) async fn rename_tag_link(&self, repo: &str, from: &str, to: &str) -> Option<FsResult<()>> {
        let digest = self.staging().take_link(repo, from, None)?;
        if !is_valid_tag(to) {
            return Some(Err(FsError::new(Cause::Invalid, format!("{to:?} is not a valid tag"))));
        }
        Some(self.view.push_tag(repo, to, digest).await)
    }

    pub(crate) fn drop_tag_link(&self, repo: &str, name: &str) -> bool {
        self.staging().take_link(repo, name, None).is_some()
    }
}

fn eperm(msg: impl Into<String>) -> FsError {
    FsError::new(Cause::NotPermitted, msg)
}

impl Core {
    /// Only a manifest directory made with mkdir (the restore path) takes files:
    /// the others are the registry's immutable manifests (`cp x _tags/<tag>`
    /// onto an existing tag lands here, through the link).
    pub(crate) fn check_manifest_dir_writable(&self, parent: &Node) -> FsResult<()> {
        match parent {
            Node::ManifestDir(r, d) if !self.view.overlay.is_pending_dir(r, d) => {
                Err(eperm(format!(
                    "{} is an immutable manifest; to point a tag at another manifest use: ln -sfn ../_manifests/sha256:<hex> _tags/<tag>",
                    parent.path()
                )))
            }
            _ => Ok(()),
        }
    }

    /// Open an existing entry for writing: content-addressed entries are
    /// written afresh (and verified against their name); anything else is immutable.
    pub(crate) fn open_for_write(&self, node: &Node, truncate: bool) -> FsResult<u64> {
        match node {
            Node::Staged(id) => {
                if truncate {
                    if let Some(f) = self.staging().get(*id) {
                        f.lock().unwrap().truncate(0)?;
                    }
                }
                Ok(*id)
            }
            Node::Blob(r, d) => self.staging().create(&Node::BlobsDir(r.clone()), &d.to_string()),
            Node::ManifestFile(r, d) if self.view.overlay.is_pending_dir(r, d) => self
                .staging()
                .create(&Node::ManifestDir(r.clone(), *d), node::MANIFEST_JSON),
            Node::ManifestFile(..) => Err(eperm(format!(
                "{} is immutable; to point a tag elsewhere use: ln -sfn ../_manifests/sha256:<hex> _tags/<tag>",
                node.path()
            ))),
            n => Err(eperm(format!("{} cannot be written", n.path()))),
        }
    }

    /// The directory a request names and its child called `name` (EINVAL when
    /// the name cannot exist there).
    fn parent_and_child(&self, parent: u64, name: &str) -> FsResult<(Node, Node)> {
        let parent = self.node(parent)?;
        let child = parent.child(name).ok_or_else(|| {
            FsError::new(
                Cause::Invalid,
                format!("{name:?} is not a valid name in {}", parent.path()),
            )
        })?;
        Ok((parent, child))
    }

    pub(crate) async fn mkdir(&self, parent: u64, name: &str) -> FsResult<Node> {
        let (parent, child) = self.parent_and_child(parent, name)?;
        let v = &self.view;
        match (&parent, &child) {
            // A new repository (or namespace) path, or a repository's own
            // directories (rsync recreating a backup): remembered locally
            // until a push makes it real.
            (Node::Root | Node::Dir(_), Node::Dir(path)) => {
                if v.dir_exists(path).await.unwrap_or(false) && v.dir_known(path).await? {
                    return Err(FsError::new(Cause::Exists, format!("{} exists", child.path())));
                }
                v.overlay.create_repo(path);
                Ok(child)
            }
            (
                Node::Dir(repo),
                Node::TagsDir(_) | Node::ManifestsDir(_) | Node::BlobsDir(_) | Node::UploadsDir(_) | Node::OciDir(_),
            ) => {
                // A repository's own directories declare it one for good (a
                // nested mkdir no longer makes it a plain namespace).
                v.overlay.declare_repo(repo);
                Ok(child)
            }
            // The restore path: mkdir _manifests/sha256:<hex>, then write manifest.json.
            (Node::ManifestsDir(r), Node::ManifestDir(_, d)) => {
                if v.manifest_known(r, *d).await.is_ok() {
                    return Err(FsError::new(Cause::Exists, format!("{} exists", child.path())));
                }
                v.overlay.add_pending_dir(r, *d);
                Ok(child)
            }
            // rsync recreating the derived directories of a manifest: nothing to do.
            (Node::ManifestDir(..), Node::LayersDir(..) | Node::ChildrenDir(..) | Node::ReferrersDir(..)) => Ok(child),
            // An OCI layout being restored: its directories are implied.
            (Node::OciDir(_), Node::OciBlobsDir(_)) | (Node::OciBlobsDir(_), Node::OciAlgDir(_)) => Ok(child),
            _ => Err(eperm(format!("cannot create a directory at {}", child.path()))),
        }
    }

    /// unlink (`dir` false) and rmdir (`dir` true).
    pub(crate) async fn remove(&self, parent: u64, name: &str, dir: bool) -> FsResult<()> {
        let parent = self.node(parent)?;
        if let Some(id) = self.staging().find(&parent, name) {
            self.staging().forget(id);
            return Ok(());
        }
        let allow = self.opts.allow_delete;
        let denied = |what: &str| eperm(format!("{what}: deleting needs --allow-delete"));
        let v = &self.view;
        match &parent {
            Node::TagsDir(r) if !dir => {
                if self.drop_tag_link(r, name) {
                    return Ok(());
                }
                if !allow {
                    return Err(denied(&format!("{}/{name}", parent.path())));
                }
                v.delete(r, Reference::Tag(name.to_string())).await
            }
            Node::UploadsDir(r) if !dir => {
                if self.staging().remove_upload(r, name) {
                    Ok(())
                } else {
                    Err(FsError::new(
                        Cause::NotFound,
                        format!("{}/{name} does not exist", parent.path()),
                    ))
                }
            }
            Node::ManifestsDir(r) if dir => {
                let d: Digest = name
                    .parse()
                    .map_err(|_| FsError::new(Cause::NotFound, format!("no {name:?}")))?;
                if v.overlay.remove_pending_dir(r, d) {
                    return Ok(());
                }
                if !allow {
                    return Err(denied(&format!("{}/{name}", parent.path())));
                }
                v.delete(r, Reference::Digest(d)).await
            }
            // `rm -r` of a manifest directory empties it first: the entries are
            // derived, so removing them alone means nothing; the rmdir deletes.
            Node::ManifestDir(..) | Node::LayersDir(..) | Node::ChildrenDir(..) | Node::ReferrersDir(..) => {
                if allow {
                    Ok(())
                } else {
                    Err(denied(&format!("{}/{name}", parent.path())))
                }
            }
            Node::Root | Node::Dir(_) if dir => {
                let path = match &parent {
                    Node::Dir(p) => format!("{p}/{name}"),
                    _ => name.to_string(),
                };
                // Only a directory made here and never pushed to can go.
                let made_here = v.overlay.is_created(&path);
                if made_here && !v.is_repo(&path).await.unwrap_or(true) {
                    v.overlay.uncreate_repo(&path);
                    Ok(())
                } else {
                    Err(eperm(format!(
                        "/{path}: repositories are removed by deleting their tags and manifests"
                    )))
                }
            }
            _ => Err(eperm(format!("{}/{name} cannot be removed", parent.path()))),
        }
    }

    pub(crate) async fn symlink(self: &Arc<Self>, parent: u64, name: &str, target: &str) -> FsResult<Node> {
        let (parent, child) = self.parent_and_child(parent, name)?;
        match &parent {
            Node::TagsDir(r) => {
                self.create_tag_link(r, name, target).await?;
                Ok(child)
            }
            // rsync recreating the derived links of a manifest directory:
            // they follow from manifest.json, nothing to do.
            Node::ManifestDir(..) | Node::LayersDir(..) | Node::ChildrenDir(..) | Node::ReferrersDir(..)
                if child.file_type() == node::FileType::Symlink =>
            {
                if pending_manifest_dir(&self.view, &child) {
                    self.staging().add_ghost(&child, target);
                }
                Ok(child)
            }
            _ => Err(eperm(format!("cannot create a symlink at {}", child.path()))),
        }
    }

    pub(crate) async fn rename(&self, parent: u64, name: &str, newparent: u64, newname: &str) -> FsResult<()> {
        if parent != newparent {
            return Err(FsError::new(Cause::CrossDirectory, "renames only within one directory"));
        }
        let parent = self.node(parent)?;
        if let Some(id) = self.staging().find(&parent, name) {
            if !node::is_temp_name(newname) && commit_kind(&parent, newname).is_none() {
                return Err(FsError::new(
                    Cause::Invalid,
                    format!("{newname:?} is not a valid name in {}", parent.path()),
                ));
            }
            self.staging().rename(id, newname);
            if let Some(f) = self.staging().get(id) {
                f.lock().unwrap().dirty = true;
            }
            self.commit(id).await?;
            self.settle_staged(id);
            return Ok(());
        }
        if let Node::TagsDir(r) = &parent {
            if let Some(result) = self.rename_tag_link(r, name, newname).await {
                if result.is_ok() {
                    self.inodes.rename(
                        &Node::Tag {
                            repo: r.clone(),
                            tag: name.to_string(),
                        },
                        Node::Tag {
                            repo: r.clone(),
                            tag: newname.to_string(),
                        },
                    );
                }
                return result;
            }
        }
        Err(eperm(format!("{}/{name} cannot be renamed", parent.path())))
    }

    /// `ln a/_blobs/sha256:<hex> b/_blobs/`: a cross-repository mount.
    pub(crate) async fn hard_link(&self, src: &Node, dst: &Node, name: &str) -> FsResult<Node> {
        let (Node::Blob(from, d), Node::BlobsDir(to)) = (src, dst) else {
            return Err(eperm(
                "hard links make cross-repository blob mounts: ln REPO/_blobs/sha256:<hex> OTHER/_blobs/",
            ));
        };
        if name != d.to_string() {
            return Err(FsError::new(
                Cause::Invalid,
                format!("the link must keep the blob's name {d}"),
            ));
        }
        let v = &self.view;
        let size = v.blob_size(from, *d).await?;
        let already = v.is_present(to, d) || v.client.has_blob(to, d).await?;
        if !already && !v.client.mount_blob(to, d, from).await? {
            return Err(FsError::new(
                Cause::Io,
                format!("the registry refused to mount {d} from {from} into {to}"),
            ));
        }
        v.note_blob_size(*d, size);
        v.mark_present(to, *d);
        v.overlay.create_repo(to);
        v.retry_held(to).await;
        Ok(Node::Blob(to.clone(), *d))
    }
}

impl Core {
    /// `_oci/index.json` written: tag every entry that has a ref name, once
    /// its manifest is in (held manifests are waited for).
    async fn restore_oci_index(&self, repo: &str, bytes: &[u8]) -> FsResult<()> {
        let index = crate::oci::Manifest::parse(bytes, Some(crate::oci::OCI_INDEX));
        if index.kind != crate::oci::ManifestKind::Index {
            return Err(FsError::new(Cause::Invalid, "index.json is not an OCI index"));
        }
        for entry in &index.manifests {
            let Some(digest) = entry.digest() else { continue };
            let Some(tag) = entry
                .annotations
                .as_ref()
                .and_then(|a| a.get("org.opencontainers.image.ref.name"))
            else {
                continue;
            };
            // A ref name may be a full reference (`host/repo:tag`): keep the tag.
            let tag = tag.rsplit(':').next().unwrap_or(tag);
            if !is_valid_tag(tag) {
                return Err(FsError::new(
                    Cause::Invalid,
                    format!("index.json: {tag:?} is not a valid tag"),
                ));
            }
            self.view.push_tag_when_ready(repo, tag, digest).await?;
        }
        Ok(())
    }
}

/// Is `node` inside a manifest directory that was made with mkdir and whose
/// manifest is not pushed yet? (Its entries are then ghosts.)
pub fn pending_manifest_dir(view: &super::view::View, node: &Node) -> bool {
    node.manifest_dir().is_some_and(|(r, d)| view.overlay.is_arriving(r, d))
}

/// The names kept under `owner` in a map keyed by (owner, name).
fn names_under<K: PartialEq, V>(map: &HashMap<(K, String), V>, owner: &K) -> Vec<String> {
    map.keys().filter(|(o, _)| o == owner).map(|(_, n)| n.clone()).collect()
}

/// `../_manifests/sha256:<hex>` (with or without a trailing `/`) → the digest.
pub fn parse_tag_target(target: &str) -> Option<Digest> {
    let t = target.trim_end_matches('/');
    t.strip_prefix(&format!("../{}/", node::MANIFESTS))?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creation_rules() {
        let d = Digest::of(b"x");
        let repo = "a/b".to_string();
        assert!(check_create(&Node::UploadsDir(repo.clone()), "layer.tar.gz").is_ok());
        assert!(check_create(&Node::BlobsDir(repo.clone()), &d.to_string()).is_ok());
        assert!(check_create(&Node::BlobsDir(repo.clone()), ".sha256:abc.XyZ123").is_ok());
        assert_eq!(
            check_create(&Node::BlobsDir(repo.clone()), "foo").unwrap_err().cause,
            Cause::Invalid
        );
        assert!(check_create(&Node::TagsDir(repo.clone()), "v1.0").is_ok());
        assert_eq!(
            check_create(&Node::TagsDir(repo.clone()), "-bad").unwrap_err().cause,
            Cause::Invalid
        );
        assert!(check_create(&Node::ManifestDir(repo.clone(), d), "manifest.json").is_ok());
        assert_eq!(
            check_create(&Node::ManifestDir(repo.clone(), d), "other")
                .unwrap_err()
                .cause,
            Cause::Invalid
        );
        assert_eq!(
            check_create(&Node::Dir(repo.clone()), "x").unwrap_err().cause,
            Cause::NotPermitted
        );
        assert_eq!(check_create(&Node::Root, "x").unwrap_err().cause, Cause::NotPermitted);
    }

    #[test]
    fn tag_targets() {
        let d = Digest::of(b"x");
        assert_eq!(parse_tag_target(&format!("../_manifests/{d}")), Some(d));
        assert_eq!(parse_tag_target(&format!("../_manifests/{d}/")), Some(d));
        assert_eq!(parse_tag_target(&format!("../_blobs/{d}")), None);
        assert_eq!(parse_tag_target("/etc/passwd"), None);
    }
}
