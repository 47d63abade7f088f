//! The fast layer: the core driven through `core::ops` by an in-memory
//! registry (`registry::fake`): no kernel, no process, no socket. Each test
//! walks paths as the kernel would (lookup from the root), reads through open
//! file handles, writes through create/write/close, and checks what the
//! registry ends up holding.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::attr::FileKind;
use super::ops::OpenMode;
use super::view::View;
use super::{inodes, Core, Options};
use crate::error::Failed;
use crate::oci::Digest;
use crate::registry::fake::{FakeRegistry, Lie};
use crate::stats::Stats;
use crate::store::{BlobStore, ManifestStore};

struct Fixture {
    core: Arc<Core>,
    reg: Arc<FakeRegistry>,
    _dir: tempfile::TempDir,
}

fn mount(reg: &Arc<FakeRegistry>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let stats = Arc::new(Stats::default());
    let manifests = ManifestStore::new(dir.path(), stats.clone()).unwrap();
    let blobs = BlobStore::new(dir.path(), 1 << 30, reg.clone(), stats.clone()).unwrap();
    let view = View::new(reg.clone(), manifests, blobs, stats, Vec::new(), None, dir.path()).unwrap();
    let opts = Options {
        uid: 0,
        gid: 0,
        name_ttl: Duration::from_secs(60),
        description: String::new(),
        read_only: false,
        allow_delete: true,
    };
    Fixture {
        core: Arc::new(Core::new(view, opts)),
        reg: reg.clone(),
        _dir: dir,
    }
}

impl Fixture {
    /// The inode of a path below the mount, looked up one name at a time.
    async fn ino(&self, path: &str) -> Result<u64, Failed> {
        let mut ino = inodes::ROOT;
        for name in path.split('/').filter(|n| !n.is_empty()) {
            ino = self.core.lookup(ino, Some(name)).await?.attr.ino;
        }
        Ok(ino)
    }

    async fn kind(&self, path: &str) -> Result<FileKind, Failed> {
        let ino = self.ino(path).await?;
        Ok(self.core.getattr(ino).await?.attr.kind)
    }

    async fn size(&self, path: &str) -> Result<u64, Failed> {
        let ino = self.ino(path).await?;
        Ok(self.core.getattr(ino).await?.attr.size)
    }

    async fn read(&self, path: &str) -> Result<Vec<u8>, Failed> {
        let ino = self.ino(path).await?;
        let (fh, _) = self.core.open(ino, OpenMode::default()).await?;
        let mut out = Vec::new();
        let result = loop {
            match self.core.read(ino, fh, out.len() as u64, 1 << 17).await {
                Ok(b) if b.is_empty() => break Ok(out),
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => break Err(e),
            }
        };
        self.core.release(fh);
        result
    }

    async fn readlink(&self, path: &str) -> Result<String, Failed> {
        let ino = self.ino(path).await?;
        self.core.readlink(ino).await
    }

    async fn ls(&self, path: &str) -> Result<Vec<String>, Failed> {
        let ino = self.ino(path).await?;
        let mut names: Vec<String> = self
            .core
            .list_dir(ino)
            .await?
            .into_iter()
            .map(|l| l.name)
            .filter(|n| n != "." && n != "..")
            .collect();
        names.sort();
        Ok(names)
    }

    /// create + write + close, as `cp` does: the close's answer is the push's.
    async fn write(&self, dir: &str, name: &str, bytes: &[u8]) -> Result<(), Failed> {
        let parent = self.ino(dir).await?;
        let (entry, fh) = self.core.create(parent, name)?;
        let ino = entry.attr.ino;
        for (i, piece) in bytes.chunks(1 << 16).enumerate() {
            self.core.write(ino, fh, (i << 16) as u64, piece)?;
        }
        let closed = self.core.commit_fh("close", ino, fh).await;
        if let Some(id) = self.core.release(fh) {
            self.core.finish_release(id).await;
        }
        closed
    }

    async fn symlink(&self, dir: &str, name: &str, target: &str) -> Result<(), Failed> {
        let parent = self.ino(dir).await?;
        self.core.symlink_op(parent, name, target).await.map(|_| ())
    }

    fn gets_of(&self, what: &str) -> usize {
        self.reg.requests().iter().filter(|r| r.starts_with(what)).count()
    }
}

/// Wait until `f` holds: tag links settle in the background (the contract
/// says within ~500 ms); this bound is a watchdog, not a timing assertion.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..400 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never happened: {what}");
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn bytes_of(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn lookups_listings_and_links_follow_the_registry() {
    rt().block_on(async {
        let reg = Arc::new(FakeRegistry::new());
        let layer = bytes_of(3 << 20, 1);
        let img = reg.push_image("team/app", "v1", &[&layer]);
        let f = mount(&reg);
        assert_eq!(f.ls("").await.unwrap(), vec![".regfs", "team"]);
        assert_eq!(f.ls("team").await.unwrap(), vec!["app"]);
        assert_eq!(f.ls("team/app/_tags").await.unwrap(), vec!["v1"]);
        assert_eq!(f.kind("team/app/_tags/v1").await.unwrap(), FileKind::Symlink);
        assert_eq!(
            f.readlink("team/app/_tags/v1").await.unwrap(),
            format!("../_manifests/{}", img.manifest)
        );
        let layers = format!("team/app/_manifests/{}/layers", img.manifest);
        let names = f.ls(&layers).await.unwrap();
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(
            f.readlink(&format!("{layers}/{}", names[0])).await.unwrap(),
            format!("../../../_blobs/{}", img.layers[0])
        );
        assert_eq!(
            f.size(&format!("team/app/_blobs/{}", img.layers[0])).await.unwrap(),
            layer.len() as u64
        );
        // Unknown names are ENOENT, and invalid ones never reach the registry.
        assert_eq!(f.ino("team/app/_tags/v2").await, Err(Failed(libc::ENOENT)));
        let before = f.reg.requests().len();
        assert_eq!(f.ino("team/app/_tags/.bad").await, Err(Failed(libc::ENOENT)));
        assert_eq!(f.reg.requests().len(), before, "an invalid tag is not asked for");
    });
}

/// The `inodes` line of `.regfs/stats`.
async fn stats_inodes(f: &Fixture) -> usize {
    let text = String::from_utf8(f.read(".regfs/stats").await.unwrap()).unwrap();
    let line = text.lines().find(|l| l.starts_with("inodes ")).expect("an inodes line");
    line["inodes ".len()..].parse().unwrap()
}

#[test]
fn forgotten_inodes_leave_the_table_and_come_back_on_lookup() {
    rt().block_on(async {
        let reg = Arc::new(FakeRegistry::new());
        let layer = bytes_of(1 << 20, 3);
        let img = reg.push_image("team/app", "v1", &[&layer]);
        reg.push_image("team/other", "v1", &[&layer]);
        let f = mount(&reg);
        let base = f.core.inodes.len();
        let paths = [
            "team/app/_tags/v1".to_string(),
            format!("team/app/_blobs/{}", img.layers[0]),
            format!("team/other/_blobs/{}", img.layers[0]),
        ];
        const N: u64 = 5;
        // Every inode the walks were given, with how many times (the kernel's count).
        let mut counts: std::collections::HashMap<u64, u64> = Default::default();
        let mut walk = async |p: &str| {
            let mut ino = inodes::ROOT;
            for name in p.split('/') {
                ino = f.core.lookup(ino, Some(name)).await.unwrap().attr.ino;
                *counts.entry(ino).or_default() += 1;
            }
            ino
        };
        for _ in 0..N {
            for p in &paths {
                walk(p).await;
            }
        }
        let blob = walk(&paths[1]).await;
        assert_eq!(
            walk(&paths[2]).await,
            blob,
            "one inode for the digest in both repositories"
        );
        let (fh, _) = f.core.open(blob, OpenMode::default()).await.unwrap();
        let looked_up = f.core.inodes.len();
        assert!(looked_up >= base + 8, "{base} -> {looked_up}");
        // The kernel forgets all but one of each count: nothing leaves.
        for (&ino, &n) in &counts {
            f.core.forget(ino, n - 1);
        }
        assert_eq!(f.core.inodes.len(), looked_up);
        for &ino in counts.keys() {
            f.core.forget(ino, 1);
        }
        for &ino in counts.keys() {
            assert!(f.core.inodes.get(ino).is_none(), "inode {ino} forgotten");
            assert!(matches!(f.core.getattr(ino).await, Err(Failed(libc::ESTALE))));
        }
        // (The walk also leaves `.regfs`/`stats` nodes, read below, and
        // nothing else the kernel was not given.)
        let after = f.core.inodes.len();
        assert!(
            after <= base + 2,
            "{base} before, {looked_up} looked up, {after} after forget"
        );
        let before_stats = stats_inodes(&f).await;
        assert!(before_stats <= base + 4, "stats says {before_stats}");
        // The open handle still reads: it does not refer to the inode table.
        let mut got = Vec::new();
        while let Ok(b) = f.core.read(blob, fh, got.len() as u64, 1 << 17).await {
            if b.is_empty() {
                break;
            }
            got.extend_from_slice(&b);
        }
        assert_eq!(got, layer);
        f.core.release(fh);
        // A later lookup gives a working entry (the same digest inode).
        assert_eq!(f.ino(&paths[1]).await.unwrap(), blob);
        assert_eq!(f.read(&paths[2]).await.unwrap(), layer);
        assert_eq!(
            f.readlink(&paths[0]).await.unwrap(),
            format!("../_manifests/{}", img.manifest)
        );
    });
}

/// The memory of which repository holds which digest is bounded
/// (`view::PRESENT_MAX`): filled past the bound, the oldest pairs are lost,
/// and a lost one costs one request to the registry when next needed, with
/// the same answer as before.
#[test]
fn a_forgotten_presence_costs_one_request_never_a_wrong_answer() {
    rt().block_on(async {
        let reg = Arc::new(FakeRegistry::new());
        let layer = bytes_of(100_000, 5);
        let img = reg.push_image("team/app", "v1", &[&layer]);
        let f = mount(&reg);
        let blob = format!("team/app/_blobs/{}", img.layers[0]);
        let manifest = format!("team/app/_manifests/{}/manifest.json", img.manifest);
        assert_eq!(f.read(&manifest).await.unwrap(), img.manifest_bytes.to_vec());
        assert_eq!(f.size(&blob).await.unwrap(), layer.len() as u64);
        let v = &f.core.view;
        assert!(v.is_present("team/app", &img.layers[0]) && v.is_present("team/app", &img.manifest));
        // Known: asking again costs nothing.
        let before = f.reg.requests().len();
        assert_eq!(f.size(&blob).await.unwrap(), layer.len() as u64);
        assert_eq!(f.read(&manifest).await.unwrap(), img.manifest_bytes.to_vec());
        assert_eq!(f.reg.requests().len(), before, "{:?}", &f.reg.requests()[before..]);
        for i in 0..super::view::PRESENT_MAX as u64 {
            v.mark_present("other/repo", Digest::of(&i.to_le_bytes()));
        }
        assert!(!v.is_present("team/app", &img.layers[0]) && !v.is_present("team/app", &img.manifest));
        // Lost: one request each, the same answers.
        assert_eq!(f.size(&blob).await.unwrap(), layer.len() as u64);
        assert_eq!(f.read(&manifest).await.unwrap(), img.manifest_bytes.to_vec());
        let asked = f.reg.requests()[before..].to_vec();
        assert_eq!(asked.len(), 2, "one blob and one manifest request: {asked:?}");
        assert!(v.is_present("team/app", &img.layers[0]) && v.is_present("team/app", &img.manifest));
    });
}

#[test]
fn reads_return_the_registry_bytes_and_the_manifest_exactly() {
    rt().block_on(async {
        let reg = Arc::new(FakeRegistry::new());
        let layer = bytes_of((5 << 20) + 123, 7);
        let img = reg.push_image("lib/x", "latest", &[&layer]);
        let f = mount(&reg);
        assert_eq!(f.read(&format!("lib/x/_blobs/{}", img.layers[0])).await.unwrap(), layer);
        assert_eq!(
            f.read(&format!("lib/x/_manifests/{}/manifest.json", img.manifest))
                .await
                .unwrap(),
            img.manifest_bytes.to_vec()
        );
        // A second read is served from the verified cache: no new blob GET.
        let gets = f.gets_of("GET blob");
        assert_eq!(f.read(&format!("lib/x/_blobs/{}", img.layers[0])).await.unwrap(), layer);
        assert_eq!(f.gets_of("GET blob"), gets);
    });
}

#[test]
fn a_blob_whose_bytes_lie_fails_with_eio_at_its_end() {
    rt().block_on(async {
        let reg = Arc::new(FakeRegistry::new());
        let layer = bytes_of(2 << 20, 3);
        let img = reg.push_image("lib/x", "latest", &[&layer]);
        let mut wrong = layer.clone();
        wrong[1000] ^= 0xff;
        reg.lie(img.layers[0], Lie::Bytes(Bytes::from(wrong)));
        let f = mount(&reg);
        assert_eq!(
            f.read(&format!("lib/x/_blobs/{}", img.layers[0])).await,
            Err(Failed(libc::EIO)),
            "bytes that do not hash to the digest are never served whole"
        );
    });
}

#[test]
fn a_blob_whose_size_lies_is_refused() {
    rt().block_on(async {
        let reg = Arc::new(FakeRegistry::new());
        let layer = bytes_of(1 << 20, 9);
        let img = reg.push_image("lib/y", "latest", &[&layer]);
        reg.lie(img.layers[0], Lie::Size(3 << 20));
        let f = mount(&reg);
        let read = f.read(&format!("lib/y/_blobs/{}", img.layers[0])).await;
        assert_eq!(
            read,
            Err(Failed(libc::EIO)),
            "the registry's length disagrees with the descriptor"
        );
    });
}

#[test]
fn an_upload_is_pushed_on_close_and_becomes_a_link_to_its_blob() {
    rt().block_on(async {
        let reg = Arc::new(FakeRegistry::new());
        reg.push_image("team/app", "base", &[b"base layer"]);
        let f = mount(&reg);
        let bytes = bytes_of((3 << 20) + 17, 5);
        let digest = Digest::of(&bytes);
        f.write("team/app/_uploads", "layer.bin", &bytes).await.unwrap();
        assert_eq!(reg.blob("team/app", &digest).as_deref(), Some(&bytes[..]));
        assert_eq!(
            f.readlink("team/app/_uploads/layer.bin").await.unwrap(),
            format!("../_blobs/{digest}")
        );
        assert_eq!(f.read(&format!("team/app/_blobs/{digest}")).await.unwrap(), bytes);
        // The same bytes again: the registry has them, nothing is uploaded twice.
        let puts = f.gets_of("PUT blob");
        f.write("team/app/_uploads", "again.bin", &bytes).await.unwrap();
        assert_eq!(f.gets_of("PUT blob"), puts);
    });
}

#[test]
fn a_manifest_copied_to_a_tag_is_put_with_its_exact_bytes() {
    rt().block_on(async {
        let reg = Arc::new(FakeRegistry::new());
        let img = reg.push_image("team/app", "v1", &[b"one layer"]);
        let f = mount(&reg);
        f.write("team/app/_tags", "v2", &img.manifest_bytes).await.unwrap();
        assert_eq!(reg.tag("team/app", "v2"), Some(img.manifest));
        assert_eq!(
            f.readlink("team/app/_tags/v2").await.unwrap(),
            format!("../_manifests/{}", img.manifest)
        );
        // Bytes that are not a manifest are refused, and nothing is tagged.
        assert_eq!(
            f.write("team/app/_tags", "junk", b"not a manifest").await,
            Err(Failed(libc::EINVAL))
        );
        assert_eq!(reg.tag("team/app", "junk"), None);
    });
}

#[test]
fn ln_s_retags_with_one_put() {
    rt().block_on(async {
        let reg = Arc::new(FakeRegistry::new());
        let one = reg.push_image("team/app", "one", &[b"1"]);
        let two = reg.push_image("team/app", "two", &[b"2"]);
        let f = mount(&reg);
        f.symlink("team/app/_tags", "three", &format!("../_manifests/{}", two.manifest))
            .await
            .unwrap();
        eventually("tag three pushed", || {
            reg.tag("team/app", "three") == Some(two.manifest)
        })
        .await;
        assert_eq!(reg.tag("team/app", "one"), Some(one.manifest));
        assert_eq!(f.gets_of("PUT manifest"), 1);
    });
}

#[test]
fn a_manifest_by_digest_is_held_until_its_blobs_arrive() {
    rt().block_on(async {
        // The image exists elsewhere; this repository gets its manifest first.
        let src = Arc::new(FakeRegistry::new());
        let layer = bytes_of(100_000, 11);
        let img = src.push_image("other/app", "v1", &[&layer]);
        let config = src.blob("other/app", &img.config).unwrap();
        let reg = Arc::new(FakeRegistry::new());
        reg.push_image("team/app", "base", &[b"x"]);
        let f = mount(&reg);
        let dir = format!("team/app/_manifests/{}", img.manifest);
        let manifests = f.ino("team/app/_manifests").await.unwrap();
        f.core.mkdir_op(manifests, &img.manifest.to_string()).await.unwrap();
        f.write(&dir, "manifest.json", &img.manifest_bytes).await.unwrap();
        assert_eq!(
            reg.manifest("team/app", &img.manifest),
            None,
            "held: its blobs are missing"
        );
        let held = f.read(".regfs/held").await.unwrap();
        assert!(
            String::from_utf8_lossy(&held).contains(&img.manifest.to_string()),
            "{}",
            String::from_utf8_lossy(&held)
        );
        f.write("team/app/_uploads", "config", &config).await.unwrap();
        f.write("team/app/_uploads", "layer", &layer).await.unwrap();
        // The held manifest is pushed in the background once its blobs are in.
        eventually("held manifest pushed", || {
            reg.manifest("team/app", &img.manifest).is_some()
        })
        .await;
        assert_eq!(
            reg.manifest("team/app", &img.manifest).as_deref(),
            Some(&img.manifest_bytes[..])
        );
    });
}

mod overlay_model {
    //! Property: after any sequence of uploads (files written into
    //! `_uploads/`) and retags (`ln -s` in `_tags/`), the mount and the
    //! registry agree with a plain map of what was written last.

    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Upload { name: usize, content: usize },
        Retag { tag: usize, image: usize },
    }

    const NAMES: [&str; 3] = ["a.bin", "b.bin", "c.bin"];
    const TAGS: [&str; 3] = ["t1", "t2", "latest"];

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..NAMES.len(), 0..4usize).prop_map(|(name, content)| Op::Upload { name, content }),
            (0..TAGS.len(), 0..2usize).prop_map(|(tag, image)| Op::Retag { tag, image }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn uploads_and_retags_match_a_reference_model(ops in proptest::collection::vec(op(), 1..8)) {
            rt().block_on(async {
                let reg = Arc::new(FakeRegistry::new());
                let images = [
                    reg.push_image("m/app", "base0", &[b"zero"]),
                    reg.push_image("m/app", "base1", &[b"one"]),
                ];
                let f = mount(&reg);
                let contents: Vec<Vec<u8>> = (0..4).map(|i| bytes_of(1000 + i * 70_000, i as u8)).collect();
                let mut uploads: BTreeMap<&str, Digest> = BTreeMap::new();
                let mut tags: BTreeMap<String, Digest> =
                    [("base0".to_string(), images[0].manifest), ("base1".to_string(), images[1].manifest)].into();
                for op in &ops {
                    match *op {
                        Op::Upload { name, content } => {
                            f.write("m/app/_uploads", NAMES[name], &contents[content]).await.unwrap();
                            uploads.insert(NAMES[name], Digest::of(&contents[content]));
                        }
                        Op::Retag { tag, image } => {
                            let target = format!("../_manifests/{}", images[image].manifest);
                            if tags.contains_key(TAGS[tag]) {
                                let dir = f.ino("m/app/_tags").await.unwrap();
                                f.core.remove_op(dir, TAGS[tag], false).await.unwrap();
                            }
                            f.symlink("m/app/_tags", TAGS[tag], &target).await.unwrap();
                            tags.insert(TAGS[tag].to_string(), images[image].manifest);
                        }
                    }
                }
                for (name, d) in &uploads {
                    assert_eq!(f.readlink(&format!("m/app/_uploads/{name}")).await.unwrap(), format!("../_blobs/{d}"));
                    assert!(reg.blob("m/app", d).is_some(), "{name} in the registry");
                }
                let listed = f.ls("m/app/_tags").await.unwrap();
                assert_eq!(listed, tags.keys().cloned().collect::<Vec<_>>());
                for (tag, d) in &tags {
                    eventually(&format!("registry tag {tag}"), || reg.tag("m/app", tag) == Some(*d)).await;
                    assert_eq!(f.readlink(&format!("m/app/_tags/{tag}")).await.unwrap(), format!("../_manifests/{d}"));
                }
            });
        }
    }
}
