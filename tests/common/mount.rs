//! Running the real `regfs` binary against a test registry.
//!
//! [`MountBuilder::start`] runs
//! `regfs mount --foreground --cache-dir C --log-file L [args] URL MNT` as a
//! child process and returns once `/proc/self/mountinfo` lists a FUSE mount
//! at `MNT`. Dropping the [`Mount`] runs `fusermount3 -u` (then `-uz`), waits
//! for the child and kills it (by its pid) if it does not exit.
//!
//! The child gets a private `HOME`, `DOCKER_CONFIG`, `REGISTRY_AUTH_FILE`
//! and XDG directories inside the mount's work directory, so credentials on
//! the machine never leak into a test.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a mount may take to appear.
pub const MOUNT_DEADLINE: Duration = Duration::from_secs(15);
/// How long the daemon may take to exit after an unmount or a signal.
pub const EXIT_DEADLINE: Duration = Duration::from_secs(15);

/// Path of the binary under test.
pub fn regfs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_regfs")
}

/// Options for one `regfs mount`.
pub struct MountBuilder {
    registry: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cache_dir: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    log_level: Option<String>,
}

/// Why a mount did not come up.
#[derive(Debug)]
pub struct MountFailure {
    /// Exit status, if the process exited (None: still running at the deadline, killed).
    pub status: Option<ExitStatus>,
    pub stderr: String,
    pub log: String,
}

impl std::fmt::Display for MountFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "regfs mount failed: status {:?}\n--- stderr ---\n{}\n--- log ---\n{}",
            self.status, self.stderr, self.log
        )
    }
}

impl MountBuilder {
    /// `registry` is what is passed as `<REGISTRY>` (e.g. `http://127.0.0.1:PORT`).
    pub fn new(registry: &str) -> MountBuilder {
        MountBuilder {
            registry: registry.to_string(),
            args: Vec::new(),
            env: Vec::new(),
            cache_dir: None,
            stdin: None,
            log_level: Some("debug".into()),
        }
    }

    /// Adds one command-line argument (before `<REGISTRY> <MOUNTPOINT>`).
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the daemon.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Uses this cache directory instead of a fresh one (to share a cache
    /// between mounts).
    pub fn cache_dir(mut self, dir: &Path) -> Self {
        self.cache_dir = Some(dir.to_path_buf());
        self
    }

    /// Bytes written to the daemon's stdin (then closed), e.g. for `--password-stdin`.
    pub fn stdin(mut self, bytes: &[u8]) -> Self {
        self.stdin = Some(bytes.to_vec());
        self
    }

    /// `--log-level` (default `debug`); `None` passes no flag.
    pub fn log_level(mut self, level: Option<&str>) -> Self {
        self.log_level = level.map(Into::into);
        self
    }

    fn command(&self, work: &Path, foreground: bool) -> (Command, PathBuf, PathBuf, PathBuf) {
        let work = fs::canonicalize(work).unwrap();
        let work = work.as_path();
        let mnt = work.join("mnt");
        let cache = self.cache_dir.clone().unwrap_or_else(|| work.join("cache"));
        let log = work.join("regfs.log");
        let home = work.join("home");
        fs::create_dir_all(&mnt).unwrap();
        fs::create_dir_all(&cache).unwrap();
        fs::create_dir_all(&home).unwrap();
        let mut cmd = Command::new(regfs_bin());
        cmd.arg("mount");
        if foreground {
            cmd.arg("--foreground");
        }
        cmd.arg("--cache-dir").arg(&cache).arg("--log-file").arg(&log);
        if let Some(l) = &self.log_level {
            cmd.arg("--log-level").arg(l);
        }
        cmd.args(&self.args).arg(&self.registry).arg(&mnt);
        cmd.env_remove("REGFS_PASSWORD")
            .env("HOME", &home)
            .env("DOCKER_CONFIG", home.join(".docker"))
            .env("REGISTRY_AUTH_FILE", home.join("auth.json"))
            .env("XDG_RUNTIME_DIR", home.join("run"))
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("RUST_BACKTRACE", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        (cmd, mnt, cache, log)
    }

    /// Foreground mount; panics with the daemon's output if it does not come up.
    pub fn start(self) -> Mount {
        match self.try_start() {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        }
    }

    /// Foreground mount; `Err` when the daemon exits or no mount appears
    /// within [`MOUNT_DEADLINE`].
    pub fn try_start(self) -> Result<Mount, MountFailure> {
        let work = tempfile::Builder::new().prefix("regfs-mount-").tempdir().unwrap();
        let (mut cmd, mnt, cache, log) = self.command(work.path(), true);
        let stderr_path = work.path().join("stderr.txt");
        let stderr = fs::File::create(&stderr_path).unwrap();
        cmd.stdout(stderr.try_clone().unwrap()).stderr(stderr);
        let mut child = cmd.spawn().expect("spawning regfs");
        if let Some(bytes) = &self.stdin {
            let mut si = child.stdin.take().unwrap();
            let _ = si.write_all(bytes);
        }
        let deadline = Instant::now() + MOUNT_DEADLINE;
        loop {
            if is_fuse_mounted(&mnt) {
                return Ok(Mount {
                    child: Some(child),
                    mnt,
                    cache,
                    log,
                    stderr: stderr_path,
                    work,
                    exit_status: None,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(MountFailure {
                    status: Some(status),
                    stderr: fs::read_to_string(&stderr_path).unwrap_or_default(),
                    log: fs::read_to_string(&log).unwrap_or_default(),
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                if is_fuse_mounted(&mnt) {
                    fusermount(&mnt, true);
                }
                return Err(MountFailure {
                    status: None,
                    stderr: fs::read_to_string(&stderr_path).unwrap_or_default(),
                    log: fs::read_to_string(&log).unwrap_or_default(),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Background mode: runs `regfs mount` without `--foreground` and waits
    /// for the command to exit. `Ok` when it exited 0 (and the mount is
    /// there), `Err` with its status and output otherwise.
    pub fn start_background(self) -> Result<BackgroundMount, MountFailure> {
        let work = tempfile::Builder::new().prefix("regfs-bgmount-").tempdir().unwrap();
        let (mut cmd, mnt, cache, log) = self.command(work.path(), false);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning regfs");
        if let Some(bytes) = &self.stdin {
            let mut si = child.stdin.take().unwrap();
            let _ = si.write_all(bytes);
        }
        // The daemonized grandchild may keep our pipes open; read them on
        // threads and wait for the direct child's exit only.
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let t_out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut out, &mut s);
            s
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut s);
            let _ = tx.send(s);
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Ok(Some(st)) = child.try_wait() {
                break Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(25));
        };
        // Give the pipes a moment; a daemon holding them open must not hang us.
        let stderr = rx.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
        drop(t_out);
        let log_text = fs::read_to_string(&log).unwrap_or_default();
        match status {
            Some(st) if st.success() => {
                let bg = BackgroundMount {
                    mnt,
                    cache,
                    log,
                    work,
                    stderr: stderr.clone(),
                };
                if !is_fuse_mounted(&bg.mnt) {
                    return Err(MountFailure {
                        status: Some(st),
                        stderr: format!("exit 0 but nothing mounted\n{stderr}"),
                        log: log_text,
                    });
                }
                Ok(bg)
            }
            status => Err(MountFailure {
                status,
                stderr,
                log: log_text,
            }),
        }
    }
}

/// A foreground `regfs` daemon with its mount.
pub struct Mount {
    child: Option<Child>,
    mnt: PathBuf,
    cache: PathBuf,
    log: PathBuf,
    stderr: PathBuf,
    work: TempDir,
    exit_status: Option<ExitStatus>,
}

impl Mount {
    /// A foreground mount of `registry` with default options.
    pub fn start(registry: &str) -> Mount {
        MountBuilder::new(registry).start()
    }

    pub fn builder(registry: &str) -> MountBuilder {
        MountBuilder::new(registry)
    }

    /// The mountpoint.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// `MOUNT/<rel>`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    /// The mount's private work directory (holds mnt/, cache/, logs).
    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    /// Daemon pid (while running).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The log file so far, followed by whatever went to stderr/stdout.
    pub fn log(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let err = fs::read_to_string(&self.stderr).unwrap_or_default();
        if err.is_empty() {
            log
        } else {
            format!("{log}\n--- stderr ---\n{err}")
        }
    }

    /// `.regfs/stats` parsed strictly into `name -> value` ([`super::stats`]:
    /// any line not in the documented format fails the test).
    pub fn stats(&self) -> BTreeMap<String, u64> {
        let text =
            fs::read_to_string(self.mnt.join(".regfs/stats")).unwrap_or_else(|e| panic!("reading .regfs/stats: {e}"));
        super::stats::parse_stats(&text)
    }

    /// One counter from `.regfs/stats`; panics on a name the file does not have.
    pub fn stat(&self, name: &str) -> u64 {
        let stats = self.stats();
        *stats
            .get(name)
            .unwrap_or_else(|| panic!("no {name:?} in .regfs/stats: {stats:?}"))
    }

    pub fn is_mounted(&self) -> bool {
        is_fuse_mounted(&self.mnt)
    }

    /// Exit status if the daemon has exited.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit_status.is_none() {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.exit_status = Some(st);
                }
            }
        }
        self.exit_status
    }

    /// Waits up to `deadline` for the daemon to exit.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + deadline;
        loop {
            if let Some(st) = self.try_exit_status() {
                return Some(st);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `fusermount3 -u MNT` (not lazy) and the daemon's exit status (None if
    /// it did not exit within [`EXIT_DEADLINE`]). Returns `Err` with
    /// fusermount's message if the unmount itself failed.
    pub fn unmount(&mut self) -> Result<Option<ExitStatus>, String> {
        let out = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mnt)
            .output()
            .expect("running fusermount3");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(self.wait_exit(EXIT_DEADLINE))
    }

    /// Sends `sig` (e.g. `libc::SIGTERM`) to the daemon's pid.
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            if self.exit_status.is_none() {
                // SAFETY: kill(2) on the pid of our own child.
                unsafe {
                    libc::kill(pid as libc::pid_t, sig);
                }
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if is_fuse_mounted(&self.mnt) {
            fusermount(&self.mnt, false);
        }
        if self.wait_exit(EXIT_DEADLINE).is_none() {
            if let Some(c) = self.child.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if is_fuse_mounted(&self.mnt) {
            fusermount(&self.mnt, true);
        }
        if std::env::var_os("REGFS_TEST_KEEP_LOGS").is_some() {
            eprintln!("regfs log for {}:\n{}", self.mnt.display(), self.log());
        }
    }
}

/// A daemon started in background mode.
pub struct BackgroundMount {
    mnt: PathBuf,
    cache: PathBuf,
    log: PathBuf,
    work: TempDir,
    /// What the foreground part of `regfs mount` printed to stderr.
    pub stderr: String,
}

impl BackgroundMount {
    pub fn path(&self) -> &Path {
        &self.mnt
    }
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mnt.join(rel)
    }
    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }
    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn is_mounted(&self) -> bool {
        is_fuse_mounted(&self.mnt)
    }
    /// Pids of `regfs` processes serving this mountpoint (found by the
    /// unique mountpoint path in their command line).
    pub fn daemon_pids(&self) -> Vec<u32> {
        pids_with_arg(&self.mnt)
    }
}

impl Drop for BackgroundMount {
    fn drop(&mut self) {
        let pids = self.daemon_pids();
        if is_fuse_mounted(&self.mnt) {
            fusermount(&self.mnt, false);
        }
        let end = Instant::now() + EXIT_DEADLINE;
        while Instant::now() < end && pids.iter().any(|p| pid_alive(*p)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        for p in pids {
            if pid_alive(p) {
                // SAFETY: kill(2) on a daemon this test started (matched by its
                // unique mountpoint argument).
                unsafe {
                    libc::kill(p as libc::pid_t, libc::SIGKILL);
                }
            }
        }
        if is_fuse_mounted(&self.mnt) {
            fusermount(&self.mnt, true);
        }
    }
}

/// Whether `/proc/self/mountinfo` lists a `fuse*` filesystem at `mnt`.
pub fn is_fuse_mounted(mnt: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = mnt.to_string_lossy();
    info.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(point) = fields.get(4) else {
            return false;
        };
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            return false;
        };
        let fstype = fields.get(dash + 1).copied().unwrap_or("");
        unescape_mountinfo(point) == want && fstype.starts_with("fuse")
    })
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `fusermount3 -u` (or `-uz` when `lazy`); returns success.
pub fn fusermount(mnt: &Path, lazy: bool) -> bool {
    let flag = if lazy { "-uz" } else { "-u" };
    let ok = Command::new("fusermount3")
        .arg(flag)
        .arg(mnt)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok && !lazy {
        return fusermount(mnt, true);
    }
    ok
}

fn pid_alive(pid: u32) -> bool {
    // A zombie still has /proc/PID; treat state Z as gone.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Pids of processes running the regfs binary with `arg` among their arguments.
fn pids_with_arg(arg: &Path) -> Vec<u32> {
    let want = arg.as_os_str().as_encoded_bytes().to_vec();
    let bin = fs::canonicalize(regfs_bin()).unwrap_or_else(|_| PathBuf::from(regfs_bin()));
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let exe_ok = fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p == bin)
            .unwrap_or(false);
        if exe_ok && args.contains(&want.as_slice()) {
            out.push(pid);
        }
    }
    out
}

/// The daemon's log file of a mount (readable from a watchdog thread).
pub fn log_path(m: &Mount) -> PathBuf {
    m.work_dir().join("regfs.log")
}

/// The last `lines` lines of a text file (empty when it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
