//! File helpers the test files share: listings, links, errno of a failed
//! `lstat`, close(2) with its errno (pushes report there), a recursive walk
//! and one member of a tar.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{errno_of, list_dir, run_ok};

/// Sorted names in a directory of the mount, without dot entries (`.regfs`).
pub fn ls(path: &Path) -> Vec<String> {
    list_dir(path)
        .unwrap_or_else(|e| panic!("listing {}: {e}", path.display()))
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect()
}

/// Sorted names in a directory, dot entries included.
pub fn ls_all(path: &Path) -> Vec<String> {
    list_dir(path).unwrap_or_else(|e| panic!("listing {}: {e}", path.display()))
}

/// The target of a symlink, as a string.
pub fn readlink(p: &Path) -> String {
    fs::read_link(p)
        .unwrap_or_else(|e| panic!("readlink {}: {e}", p.display()))
        .to_string_lossy()
        .into_owned()
}

/// What a `_tags/<tag>` or `_uploads/<name>` link points at (README, "The tree").
pub fn manifest_link(digest: &str) -> String {
    format!("../_manifests/{digest}")
}

/// `errno` of a failed `lstat`, panicking if it succeeded.
pub fn lstat_errno(p: &Path) -> i32 {
    match fs::symlink_metadata(p) {
        Ok(m) => panic!("{} exists ({:?}), expected an error", p.display(), m.file_type()),
        Err(e) => errno_of(&e),
    }
}

/// close(2) on the file's descriptor, returning its errno (a `File` drop
/// ignores it, and a push's result is reported there).
pub fn close_file(f: File) -> Result<(), i32> {
    let fd = f.into_raw_fd();
    // SAFETY: `fd` was just taken out of the File (into_raw_fd) and is closed exactly once.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(errno_of(&io::Error::last_os_error()))
    }
}

/// create + write + close(2), each checked; the errno of the step that
/// failed (`fs::write` would ignore close's).
pub fn write_and_close(path: &Path, bytes: &[u8]) -> Result<(), i32> {
    let mut f = File::create(path).map_err(|e| errno_of(&e))?;
    f.write_all(bytes).map_err(|e| errno_of(&e))?;
    close_file(f)
}

/// `dir` and every entry below it, without following links, breadth first.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if fs::symlink_metadata(&p)
            .unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
            .is_dir()
        {
            let mut names: Vec<PathBuf> = fs::read_dir(&p)
                .unwrap_or_else(|e| panic!("listing {}: {e}", p.display()))
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            out.extend(names);
        }
        i += 1;
    }
    out
}

/// One member of a tar (`tar -xOf`).
pub fn tar_member(tar: &Path, member: &str) -> Vec<u8> {
    run_ok(Command::new("tar").arg("-xOf").arg(tar).arg(member)).stdout
}

/// `find DIR -mindepth 1 -printf FORMAT`, sorted.
pub fn find_printf(dir: &Path, args: &[&str], format: &str) -> Vec<String> {
    let out = run_ok(
        Command::new("find")
            .arg(dir)
            .args(["-mindepth", "1"])
            .args(args)
            .args(["-printf", format]),
    );
    let mut lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    lines
}
