//! Helpers for backup / export tests: real image layers (gzip tar with the
//! matching uncompressed `diff_id`), images whose config lists those
//! `rootfs.diff_ids` (so docker-archive consumers accept them), running the
//! external tools (`rsync`, `skopeo`, `umoci`, `tar`) with their output in the
//! panic message, checking a backup's content addresses, and comparing a
//! repository's tags and digests over the HTTP API.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{json, Value};

use super::client::{
    BlobInfo, ImageInfo, RegistryClient, ALL_MANIFEST_TYPES, DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST,
    OCI_CONFIG, OCI_LAYER_GZIP,
};
use super::{sha256_digest, sha256_hex};

/// A real layer: a gzip tar and the digest of the tar inside it.
#[derive(Debug, Clone)]
pub struct RealLayer {
    /// The gzip-compressed tar (what is pushed).
    pub gz: Vec<u8>,
    /// `sha256:<hex>` of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: String,
}

impl RealLayer {
    /// A layer holding `files` (relative paths; parents created), made with
    /// GNU tar (sorted, mtime 0, owner 0) and `gzip -n`, so the same files
    /// give the same bytes.
    pub fn new(files: &[(&str, &[u8])]) -> RealLayer {
        let dir = tempfile::Builder::new().prefix("regfs-reallayer-").tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(&root).unwrap();
        for (name, content) in files {
            let p = root.join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, content).unwrap();
        }
        let tar_path = dir.path().join("layer.tar");
        let out = Command::new("tar")
            .args([
                "--sort=name",
                "--mtime=@0",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "-cf",
            ])
            .arg(&tar_path)
            .arg("-C")
            .arg(&root)
            .args(files.iter().map(|(n, _)| *n))
            .output()
            .expect("running tar");
        assert!(out.status.success(), "tar cf: {}", String::from_utf8_lossy(&out.stderr));
        let tar = fs::read(&tar_path).unwrap();
        let gz = Command::new("gzip")
            .args(["-n", "-1", "-c"])
            .arg(&tar_path)
            .output()
            .expect("running gzip");
        assert!(gz.status.success(), "gzip failed");
        RealLayer {
            gz: gz.stdout,
            diff_id: sha256_digest(&tar),
        }
    }

    pub fn digest(&self) -> String {
        sha256_digest(&self.gz)
    }
}

/// An image config as docker and skopeo expect it: platform, a runtime
/// config with a unique label, `rootfs.diff_ids` matching `layers`, one
/// history entry per layer.
pub fn real_image_config(arch: &str, variant: Option<&str>, label: &str, layers: &[&RealLayer]) -> Vec<u8> {
    let mut cfg = json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": {"regfs.test": label},
        },
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
        "history": layers
            .iter()
            .enumerate()
            .map(|(i, _)| json!({"created": "2024-01-01T00:00:00Z", "created_by": format!("regfs test layer {i}")}))
            .collect::<Vec<_>>(),
    });
    if let Some(v) = variant {
        cfg["variant"] = json!(v);
    }
    serde_json::to_vec(&cfg).unwrap()
}

/// `GOARCH` of this machine (`amd64`, `arm64`, …), as image platforms name it.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

impl RegistryClient {
    /// Pushes a real image: the layers (skipped by the registry when present),
    /// a config from [`real_image_config`] and an image manifest of
    /// `media_type` (OCI or Docker schema 2), under `tag` or by digest.
    pub fn push_real_image(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        arch: &str,
        variant: Option<&str>,
        layers: &[&RealLayer],
    ) -> ImageInfo {
        let config_bytes = real_image_config(arch, variant, &super::random_hex(6), layers);
        self.push_image(
            repo,
            tag,
            media_type,
            config_bytes,
            layers.iter().map(|l| l.gz.clone()).collect(),
        )
    }

    /// `tag -> digest` for every tag of `repo` (GET of each manifest; the
    /// digest is the sha256 of the bytes served; `missing (HTTP n)` when the
    /// GET fails). Empty when the repository has no tags or does not exist.
    pub fn tag_digests(&self, repo: &str) -> BTreeMap<String, String> {
        let resp = self.send(
            reqwest::Method::GET,
            &format!("/v2/{repo}/tags/list"),
            reqwest::header::HeaderMap::new(),
            None,
        );
        if !resp.status().is_success() {
            return BTreeMap::new();
        }
        let v: Value = resp.json().unwrap_or(Value::Null);
        let tags: Vec<String> = v["tags"]
            .as_array()
            .map(|a| a.iter().filter_map(|t| t.as_str().map(String::from)).collect())
            .unwrap_or_default();
        // A tag can be listed a moment before its manifest answers (distribution
        // creates the tag's directory before its link): report it as missing
        // rather than failing, so `wait_for_tags` polls again.
        tags.into_iter()
            .map(|t| {
                let mut h = reqwest::header::HeaderMap::new();
                h.insert(reqwest::header::ACCEPT, ALL_MANIFEST_TYPES.parse().unwrap());
                let resp = self.send(reqwest::Method::GET, &format!("/v2/{repo}/manifests/{t}"), h, None);
                let d = if resp.status().is_success() {
                    sha256_digest(&resp.bytes().unwrap())
                } else {
                    format!("missing (HTTP {})", resp.status().as_u16())
                };
                (t, d)
            })
            .collect()
    }

    /// Polls [`tag_digests`](Self::tag_digests) until it equals `expected`
    /// or `limit` passes; returns the last answer (for the assertion).
    pub fn wait_for_tags(
        &self,
        repo: &str,
        expected: &BTreeMap<String, String>,
        limit: Duration,
    ) -> BTreeMap<String, String> {
        let end = std::time::Instant::now() + limit;
        loop {
            let got = self.tag_digests(repo);
            if &got == expected || std::time::Instant::now() > end {
                return got;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs `cmd` and returns its output; panics with the command line, status,
/// stdout and stderr unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} exited {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Watchdog for an external command (rsync, skopeo, cp into the mount):
/// it only stops a hung mount from hanging the suite, never a timing assertion.
pub const COMMAND_WATCHDOG: Duration = Duration::from_secs(180);

/// Runs `cmd` under [`COMMAND_WATCHDOG`] and returns its output, whatever the status.
pub fn run_watched(mut cmd: Command) -> Output {
    let what = format!("{cmd:?}");
    let what2 = what.clone();
    super::with_deadline(COMMAND_WATCHDOG, &what, move || cmd.output())
        .unwrap_or_else(|e| panic!("running {what2}: {e}"))
}

/// Runs `cmd` under the watchdog; panics with its output and the last lines
/// of `log` (a daemon's log file, when given) unless it exits 0.
pub fn run_logged(cmd: Command, log: impl Into<Option<PathBuf>>) -> Output {
    let what = format!("{cmd:?}");
    let out = run_watched(cmd);
    if !out.status.success() {
        let log = log.into();
        panic!(
            "{what} exited {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- daemon log ({}) ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            log.as_ref().map(|l| l.display().to_string()).unwrap_or_default(),
            log.map(|l| super::tail(&l, 60)).unwrap_or_default()
        );
    }
    out
}

/// `skopeo --insecure-policy --tmpdir /tmp ARGS…` through [`run_logged`].
pub fn skopeo(args: &[&str], log: impl Into<Option<PathBuf>>) -> Output {
    let mut cmd = Command::new("skopeo");
    cmd.args(["--insecure-policy", "--tmpdir", "/tmp"]).args(args);
    run_logged(cmd, log)
}

/// `DIR/`: the trailing slash rsync needs to copy a directory's contents.
pub fn slash(p: &Path) -> String {
    format!("{}/", p.display())
}

/// `rsync ARGS…`; panics with rsync's output (and `context`, e.g. the
/// daemon's log) unless it exits 0. Returns stdout.
pub fn rsync(args: &[&str], context: impl FnOnce() -> String) -> String {
    let out = Command::new("rsync").args(args).output().expect("running rsync");
    if !out.status.success() {
        panic!(
            "rsync {} exited {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- context ---\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            context()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A number from `rsync --stats` output, e.g. "Number of regular files
/// transferred" (commas removed).
pub fn rsync_stat(stats: &str, name: &str) -> u64 {
    let line = stats
        .lines()
        .find(|l| l.trim_start().starts_with(name))
        .unwrap_or_else(|| panic!("no {name:?} in rsync --stats output:\n{stats}"));
    let value = line[line.find(':').expect("colon") + 1..].trim();
    let digits: String = value
        .split_whitespace()
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_digit())
        .collect();
    digits.parse().unwrap_or_else(|_| panic!("not a number in {line:?}"))
}

/// Checks every content address in a copied repository directory:
/// `_blobs/sha256:<hex>` hashes to its name, `_manifests/sha256:<hex>/manifest.json`
/// to its directory's name. Returns (manifest digests, blob digests), sorted.
pub fn verify_repo_copy(dir: &Path) -> (Vec<String>, Vec<String>) {
    let mut manifests = Vec::new();
    for name in super::list_dir(&dir.join("_manifests")).unwrap() {
        let bytes = fs::read(dir.join("_manifests").join(&name).join("manifest.json"))
            .unwrap_or_else(|e| panic!("{}/_manifests/{name}/manifest.json: {e}", dir.display()));
        assert_eq!(
            sha256_digest(&bytes),
            name,
            "{}/_manifests/{name}/manifest.json",
            dir.display()
        );
        manifests.push(name);
    }
    let mut blobs = Vec::new();
    for name in super::list_dir(&dir.join("_blobs")).unwrap() {
        let bytes = fs::read(dir.join("_blobs").join(&name)).unwrap();
        assert_eq!(sha256_digest(&bytes), name, "{}/_blobs/{name}", dir.display());
        blobs.push(name);
    }
    (manifests, blobs)
}

/// Checks an OCI image layout directory: `oci-layout`, and every
/// `blobs/sha256/<hex>` hashes to its name. Returns the `index.json` value
/// and the blob digests (`sha256:<hex>`, sorted).
pub fn verify_oci_layout(dir: &Path) -> (Value, Vec<String>) {
    let layout: Value = serde_json::from_slice(&fs::read(dir.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(layout["imageLayoutVersion"], "1.0.0", "{}/oci-layout", dir.display());
    let index: Value = serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let mut digests = Vec::new();
    for hex in super::list_dir(&dir.join("blobs/sha256")).unwrap() {
        let bytes = fs::read(dir.join("blobs/sha256").join(&hex)).unwrap();
        assert_eq!(sha256_hex(&bytes), hex, "{}/blobs/sha256/{hex}", dir.display());
        digests.push(format!("sha256:{hex}"));
    }
    (index, digests)
}

/// `org.opencontainers.image.ref.name -> digest` of an OCI `index.json`.
pub fn index_refs(index: &Value) -> BTreeMap<String, String> {
    index["manifests"]
        .as_array()
        .expect("index.json manifests")
        .iter()
        .map(|d| {
            (
                d["annotations"]["org.opencontainers.image.ref.name"]
                    .as_str()
                    .expect("ref.name annotation")
                    .to_string(),
                d["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}
