//! Which repositories hold which digests, remembered across mounts in
//! `<cache-dir>/locations/<registry>`: a later mount can then push a blob the
//! registry already has by cross-repository mount instead of uploading it again
//! (a restore through a fresh mount). One `<hex> <repository>` line per pair,
//! appended as pairs are learned; trimmed to the newest lines when it grows.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::sync::Mutex;

use crate::oci::Digest;

/// Past this many lines the file is rewritten with the newest half.
const MAX_LINES: usize = 400_000;

pub struct Locations {
    file: Mutex<Option<File>>,
    /// The repository the last cross-repository mount came from (asked first
    /// next time: pushes of one image come from one place). This run only.
    last_mount_source: Mutex<Option<String>>,
}

impl Locations {
    /// Open (creating) the file for `registry_host`; returns the pairs it holds.
    /// Any I/O problem only disables the memory: it is an optimisation.
    pub fn open(cache_dir: &std::path::Path, registry_host: &str) -> (Self, Vec<(String, Digest)>) {
        let dir = crate::store::dir::locations(cache_dir);
        let name: String = registry_host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(name);
        let pairs = load(&path);
        let file = std::fs::create_dir_all(&dir)
            .and_then(|_| {
                if pairs.len() > MAX_LINES {
                    rewrite(&path, &pairs[pairs.len() - MAX_LINES / 2..])?;
                }
                std::fs::OpenOptions::new().create(true).append(true).open(&path)
            })
            .map_err(|e| tracing::warn!("cannot keep blob locations in {}: {e}", path.display()))
            .ok();
        let locations = Locations {
            file: Mutex::new(file),
            last_mount_source: Mutex::new(None),
        };
        (locations, pairs)
    }

    pub fn last_mount_source(&self) -> Option<String> {
        self.last_mount_source.lock().unwrap().clone()
    }

    pub fn note_mount_source(&self, repo: &str) {
        *self.last_mount_source.lock().unwrap() = Some(repo.to_string());
    }

    pub fn record(&self, repo: &str, digest: &Digest) {
        if let Some(f) = self.file.lock().unwrap().as_mut() {
            let _ = writeln!(f, "{} {repo}", digest.hex());
        }
    }
}

fn load(path: &std::path::Path) -> Vec<(String, Digest)> {
    let Ok(f) = File::open(path) else { return Vec::new() };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for line in BufReader::new(f).lines().map_while(Result::ok) {
        let Some((hex, repo)) = line.split_once(' ') else {
            continue;
        };
        let (Some(d), true) = (Digest::from_hex(hex), crate::oci::reference::is_valid_repository(repo)) else {
            continue;
        };
        if seen.insert((repo.to_string(), d)) {
            out.push((repo.to_string(), d));
        }
    }
    out
}

fn rewrite(path: &std::path::Path, pairs: &[(String, Digest)]) -> std::io::Result<()> {
    let text: String = pairs.iter().map(|(r, d)| format!("{} {r}\n", d.hex())).collect();
    crate::store::dir::atomic_write(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_survive_a_restart_and_junk_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::of(b"x");
        {
            let (locs, pairs) = Locations::open(dir.path(), "127.0.0.1:5000");
            assert!(pairs.is_empty());
            locs.record("a/b", &d);
            locs.record("a/b", &d);
        }
        let path = dir.path().join("locations/127.0.0.1_5000");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("garbage\nzz Not/Valid\n");
        std::fs::write(&path, text).unwrap();
        let (_, pairs) = Locations::open(dir.path(), "127.0.0.1:5000");
        assert_eq!(pairs, vec![("a/b".to_string(), d)]);
    }
}
