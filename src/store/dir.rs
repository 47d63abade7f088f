//! The cache directory's layout, and the only code that makes names in it.
//!
//! ```text
//! <cache>/
//!   blobs/sha256/<hex>            whole, verified blobs
//!   partial/<hex>.<pid>.<n>       blobs being read (sparse, with a chunk map in memory)
//!   manifests/sha256/<hex>        manifest bytes, verified ([.type]: the media type the registry sent)
//!   staging/staged.<pid>.<id>     files being written through the mount
//!   locations/<host>              repositories a blob is known to be in (for cross-repo mounts)
//!   contents/<hex>.idx            layer tables of contents (see crate::contents::store)
//! ```
//!
//! Files that belong to one running process (partial blobs, staged files)
//! carry its pid as the second-to-last dot-separated part of their name
//! (`process_file_name`); `sweep_dead_processes` is the one parser of that.
//! A cache dir may be shared by several mounts: only a dead owner's files go.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub fn blobs(cache_dir: &Path) -> PathBuf {
    cache_dir.join("blobs").join("sha256")
}

pub fn partial(cache_dir: &Path) -> PathBuf {
    cache_dir.join("partial")
}

pub fn manifests(cache_dir: &Path) -> PathBuf {
    cache_dir.join("manifests").join("sha256")
}

pub fn staging(cache_dir: &Path) -> PathBuf {
    cache_dir.join("staging")
}

pub fn locations(cache_dir: &Path) -> PathBuf {
    cache_dir.join("locations")
}

pub fn contents(cache_dir: &Path) -> PathBuf {
    cache_dir.join("contents")
}

/// A number never handed out twice by this process.
pub fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// `<stem>.<pid>.<n>`: a file owned by this process, found again by
/// `sweep_dead_processes` after a crash.
pub fn process_file_name(stem: &str, n: u64) -> String {
    format!("{stem}.{}.{n}", std::process::id())
}

/// The pid in a `process_file_name`.
fn owner_pid(name: &str) -> Option<u32> {
    name.rsplit('.').nth(1)?.parse().ok()
}

/// Write to a unique temporary name, then rename: readers never see half a file.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}.{}", std::process::id(), unique()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Remove the files in `dir` whose owning process is no longer running (this
/// process's own leftovers too: it cannot be an earlier run's owner and still
/// hold them); names without a pid go too.
pub fn sweep_dead_processes(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let pid = name.to_str().and_then(owner_pid);
        let alive = pid.is_some_and(|p| p != std::process::id() && Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_of_dead_processes_are_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let mine = process_file_name("abc", 1);
        let parent = format!("abc.{}.1", std::os::unix::process::parent_id());
        for name in [mine.as_str(), parent.as_str(), "abc.999999999.1", "junk"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        sweep_dead_processes(dir.path());
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        // Our own leftovers go (a new run of this process), a live one's stay.
        assert_eq!(left, vec![parent]);
    }

    #[test]
    fn atomic_write_replaces_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary left");
    }
}
