//! regfs as a system tool (issue 14): fstab and `mount -t fuse.regfs` through
//! Debian's `mount.fuse3`, dead-mountpoint recovery, `regfs status`,
//! metrics, `regfs unmount`, completions and the man page, and the rough
//! edges a new user meets (log colour, one log per mount, `.regfs/errors`,
//! `df`, the plain-HTTP hint, `touch`, exported tar names, docs true to `--help`).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::mount::{regfs_bin, EXIT_DEADLINE};
use common::registry::free_port;
use common::*;

const MIB: usize = 1 << 20;

// ---------------------------------------------------------------- helpers

/// A private HOME / XDG environment and work dir for commands run here.
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Work {
        let dir = tempfile::Builder::new().prefix("regfs-ops-").tempdir().unwrap();
        fs::create_dir_all(dir.path().join("home/run")).unwrap();
        Work { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        fs::canonicalize(self.dir.path()).unwrap().join(rel)
    }

    /// An empty directory `rel` under the work dir.
    fn dir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        fs::create_dir_all(&p).unwrap();
        p
    }

    fn env(&self, cmd: &mut Command) {
        let home = self.path("home");
        cmd.env_remove("REGFS_PASSWORD")
            .env_remove("NO_COLOR")
            .env("HOME", &home)
            .env("DOCKER_CONFIG", home.join(".docker"))
            .env("REGISTRY_AUTH_FILE", home.join("auth.json"))
            .env("XDG_RUNTIME_DIR", home.join("run"))
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"));
    }

    /// `regfs ARGS` with the private environment, stdin closed.
    fn regfs(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(regfs_bin());
        cmd.args(args).stdin(Stdio::null());
        self.env(&mut cmd);
        with_deadline(Duration::from_secs(90), "regfs command", move || cmd.output().unwrap())
    }

    /// Any program with the private environment.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null());
        self.env(&mut cmd);
        let what = format!("{program} {args:?}");
        with_deadline(Duration::from_secs(90), &what.clone(), move || {
            cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"))
        })
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `.regfs/config` of a mount, as name → value.
fn mount_config(mnt: &Path) -> BTreeMap<String, String> {
    fs::read_to_string(mnt.join(".regfs/config"))
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap_or((l, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn pid_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// A daemon started by a background `regfs mount` (or mount(8)) at `mnt`:
/// unmounted on drop, its daemon (pid from `.regfs/config`) waited for and,
/// if it hangs, killed.
struct Detached {
    mnt: PathBuf,
    pid: u32,
}

impl Detached {
    fn new(mnt: &Path) -> Detached {
        assert!(is_fuse_mounted(mnt), "{} is mounted", mnt.display());
        let pid = mount_config(mnt)["pid"].parse().unwrap();
        Detached {
            mnt: mnt.to_path_buf(),
            pid,
        }
    }

    fn wait_exit(&self) -> bool {
        wait_until(Duration::from_secs(15), || !pid_alive(self.pid))
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        if is_fuse_mounted(&self.mnt) {
            common::mount::fusermount(&self.mnt, false);
        }
        if !self.wait_exit() {
            // SAFETY: kill(2) on the daemon this test started.
            unsafe {
                libc::kill(self.pid as libc::pid_t, libc::SIGKILL);
            }
        }
        if is_fuse_mounted(&self.mnt) {
            common::mount::fusermount(&self.mnt, true);
        }
    }
}

/// mount(8) runs `mount.fuse3`, which runs the `regfs` it finds in a fixed
/// PATH (/usr/local/bin, /usr/bin, …): point /usr/local/bin/regfs at the
/// binary under test. Returns a lock held while mount(8) runs, so parallel
/// tests never swap the link under each other.
fn install_mount_helper() -> fs::File {
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/regfs-mount-helper.lock")
        .unwrap();
    // SAFETY: flock on our own descriptor; released when the File is dropped.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
        0
    );
    let link = Path::new("/usr/local/bin/regfs");
    let target = fs::canonicalize(regfs_bin()).unwrap();
    if fs::read_link(link).ok().as_deref() != Some(target.as_path()) {
        let tmp = PathBuf::from(format!("/usr/local/bin/.regfs-link-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp).unwrap();
        fs::rename(&tmp, link).unwrap();
    }
    lock
}

/// Prometheus text → `name{labels}` → value (comments skipped).
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn metric(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

// ---------------------------------------------------------------- 1. fstab

#[test]
fn mount_t_fuse_regfs_with_o_options_through_mount_fuse3() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("team/app", "v1", &[300_000]);
    let w = Work::new();
    let mnt = w.dir("mnt");
    let cache = w.dir("cache");
    let log = w.path("daemon.log");
    let opts = format!(
        "_netdev,read_only,cache-size=64M,metadata_ttl=indefinite,cache_dir={},log_file={},nofail,x-systemd.automount",
        cache.display(),
        log.display()
    );
    let out = {
        let _helper = install_mount_helper();
        w.run(
            "mount",
            &["-t", "fuse.regfs", &reg.url(), mnt.to_str().unwrap(), "-o", &opts],
        )
    };
    ok(&out, "mount -t fuse.regfs");
    let d = Detached::new(&mnt);
    let cfg = mount_config(&mnt);
    assert_eq!(cfg["read_only"], "true", "-o read_only reached regfs");
    assert_eq!(cfg["cache_size"], (64 * MIB).to_string(), "-o cache-size=64M");
    assert_eq!(cfg["metadata_ttl"], "indefinite");
    assert_eq!(cfg["cache_dir"], cache.display().to_string());
    let layer = &img.layers[0];
    assert_eq!(
        fs::read(mnt.join(format!("team/app/_blobs/{}", layer.digest))).unwrap(),
        layer.bytes
    );
    let err = fs::write(mnt.join("team/app/_uploads/x"), b"x").unwrap_err();
    assert_eq!(errno_of(&err), libc::EROFS, "read_only mount refuses writes");
    assert!(
        fs::read_to_string(&log).unwrap().contains("mounted"),
        "log went to log_file"
    );

    ok(&w.run("umount", &[mnt.to_str().unwrap()]), "umount");
    assert!(!is_fuse_mounted(&mnt));
    assert!(d.wait_exit(), "the daemon exits after umount");
}

#[test]
fn mount_a_with_an_fstab_line() {
    let reg = Registry::start();
    reg.client().push_random_image("team/app", "v1", &[1000]);
    let w = Work::new();
    let mnt = w.dir("mnt");
    let cache = w.dir("cache");
    let fstab = w.path("fstab");
    fs::write(
        &fstab,
        format!(
            "# a test fstab\n{url} {mnt} fuse.regfs _netdev,allow_other,read_only,cache_dir={cache} 0 0\n",
            url = reg.url(),
            mnt = mnt.display(),
            cache = cache.display()
        ),
    )
    .unwrap();
    let out = {
        let _helper = install_mount_helper();
        w.run("mount", &["-a", "-T", fstab.to_str().unwrap()])
    };
    ok(&out, "mount -a -T fstab");
    let d = Detached::new(&mnt);
    assert_eq!(list_dir(&mnt.join("team/app/_tags")).unwrap(), vec!["v1"]);
    assert_eq!(mount_config(&mnt)["read_only"], "true");
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info.lines().find(|l| l.contains(mnt.to_str().unwrap())).unwrap();
    assert!(line.contains("allow_other"), "allow_other reached the kernel: {line}");
    assert!(
        line.contains(&format!(" - fuse {} ", reg.url())) || line.contains(&format!(" - fuse.regfs {} ", reg.url())),
        "the mount's source is the fstab source: {line}"
    );
    // A second `mount -a` sees the line mounted already and does nothing.
    let again = {
        let _helper = install_mount_helper();
        w.run("mount", &["-a", "-T", fstab.to_str().unwrap()])
    };
    ok(&again, "second mount -a");
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert_eq!(info.lines().filter(|l| l.contains(mnt.to_str().unwrap())).count(), 1);
    assert_eq!(mount_config(&mnt)["pid"], d.pid.to_string(), "the same daemon");
    // The per-mount log is named after the mountpoint.
    let log_name = format!(
        "{}.log",
        mnt.to_str().unwrap().trim_start_matches('/').replace('/', "-")
    );
    assert!(cache.join("logs").join(&log_name).exists(), "log {log_name}");

    ok(&w.run("umount", &[mnt.to_str().unwrap()]), "umount");
    assert!(d.wait_exit());
}

#[test]
fn unknown_o_option_is_named_in_the_error() {
    let w = Work::new();
    let mnt = w.dir("mnt");
    let out = w.regfs(&["http://127.0.0.1:1", mnt.to_str().unwrap(), "-o", "rw,cache_sise=1G"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("unknown mount option \"cache_sise\""), "{err}");
    assert!(!is_fuse_mounted(&mnt));
}

// ---------------------------------------------------------------- 2. mountpoints

#[test]
fn a_dead_mountpoint_is_recovered_and_a_live_one_refused() {
    let reg = Registry::start();
    reg.client().push_random_image("team/app", "v1", &[1000]);
    let mut m = Mount::start(&reg.url());
    let mnt = m.path().to_path_buf();
    let w = Work::new();
    let cache = w.dir("cache");
    let log = w.path("second.log");
    let args = [
        "mount",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--log-file",
        log.to_str().unwrap(),
        &reg.url(),
        mnt.to_str().unwrap(),
    ];

    let out = w.regfs(&args);
    assert_eq!(out.status.code(), Some(1), "a live mount is refused");
    let err = text(&out.stderr);
    assert!(
        err.contains("is busy") && err.contains("regfs unmount"),
        "says what to do: {err}"
    );

    m.signal(libc::SIGKILL);
    assert!(m.wait_exit(EXIT_DEADLINE).is_some());
    let dead = fs::read_dir(&mnt).unwrap_err();
    assert_eq!(errno_of(&dead), libc::ENOTCONN, "the daemon is gone, the mount stays");
    let out = w.regfs(&["status", mnt.to_str().unwrap()]);
    assert!(
        text(&out.stderr).contains("dead regfs mount"),
        "status says the mount is dead: {}",
        text(&out.stderr)
    );

    let out = w.regfs(&args);
    ok(&out, "regfs mount on a dead mountpoint");
    let err = text(&out.stderr);
    assert_eq!(
        err.matches("dead FUSE mount").count(),
        1,
        "one line says what was done: {err}"
    );
    let _d = Detached::new(&mnt);
    assert_eq!(list_dir(&mnt.join("team/app/_tags")).unwrap(), vec!["v1"]);
}

#[test]
fn a_non_empty_mountpoint_is_refused_unless_allowed() {
    let reg = Registry::start();
    reg.client().push_random_image("team/app", "v1", &[1000]);
    let w = Work::new();
    let mnt = w.dir("full");
    fs::write(mnt.join("precious.txt"), b"mine").unwrap();
    let cache = w.dir("cache");
    let base = ["mount", "--cache-dir", cache.to_str().unwrap()];
    let url = reg.url();

    let mut args = base.to_vec();
    args.extend([url.as_str(), mnt.to_str().unwrap()]);
    let out = w.regfs(&args);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("not empty") && err.contains("--allow-non-empty"), "{err}");
    assert!(!is_fuse_mounted(&mnt));

    let mut args = base.to_vec();
    args.extend(["--allow-non-empty", url.as_str(), mnt.to_str().unwrap()]);
    ok(&w.regfs(&args), "mount --allow-non-empty");
    let d = Detached::new(&mnt);
    let listed = list_dir(&mnt).unwrap();
    assert!(
        listed.contains(&"team".to_string()) && !listed.contains(&"precious.txt".to_string()),
        "{listed:?}"
    );
    drop(d);
    assert_eq!(
        fs::read(mnt.join("precious.txt")).unwrap(),
        b"mine",
        "files are back after unmount"
    );
}

// ---------------------------------------------------------------- 3. status

#[test]
fn status_shows_a_slow_transfer_then_the_cache() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("team/app", "v1", &[3 * MIB]);
    let layer = img.layers[0].clone();
    let proxy = FaultProxy::start(&reg.host_port());
    let m = Mount::start(&proxy.url());
    let w = Work::new();
    let mnt = m.path().to_path_buf();

    let idle = ok(&w.regfs(&["status", mnt.to_str().unwrap()]), "status");
    assert!(idle.contains("transfers in flight: 0"), "{idle}");
    assert!(idle.contains(&format!("registry {}", proxy.url())), "{idle}");

    proxy.set_delay_ms(4000);
    let path = m.join(format!("team/app/_blobs/{}", layer.digest));
    let reader = std::thread::spawn(move || fs::read(path).unwrap());
    let short = &layer.digest[..19];
    let mut seen = String::new();
    let found = wait_until(Duration::from_secs(30), || {
        seen = ok(&w.regfs(&["status", mnt.to_str().unwrap()]), "status");
        seen.contains("transfers in flight: 1") && seen.contains(&format!("fetch team/app {short}"))
    });
    assert!(found, "status during the read shows the transfer:\n{seen}");
    assert!(seen.contains("/ 3.00 MiB"), "total size shown: {seen}");
    let raw = fs::read_to_string(mnt.join(".regfs/transfers")).unwrap();
    assert!(
        raw.starts_with(&format!("fetch team/app {} ", layer.digest)) && raw.contains(&format!(" {} ", 3 * MIB)),
        ".regfs/transfers: {raw}"
    );
    proxy.set_delay_ms(0);
    assert_eq!(reader.join().unwrap(), layer.bytes);

    let found = wait_until(Duration::from_secs(30), || {
        seen = ok(&w.regfs(&["status", mnt.to_str().unwrap()]), "status");
        seen.contains("transfers in flight: 0") && seen.contains("cache: 1 blobs, 3.00 MiB of 10.00 GiB")
    });
    assert!(found, "after the read, status shows the cache use:\n{seen}");
    assert!(seen.contains("fetched 3.00 MiB"), "{seen}");

    // --watch without a terminal prints snapshots until the mount goes away.
    let mut watch = Command::new(regfs_bin());
    watch
        .args(["status", "--watch", "--interval", "0.2", mnt.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = watch.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(800));
    drop(m);
    let out = with_deadline(Duration::from_secs(30), "status --watch", move || {
        child.wait_with_output().unwrap()
    });
    let printed = ok(&out, "status --watch");
    assert!(printed.contains("cache: 1 blobs"), "{printed}");
    assert!(printed.trim_end().ends_with("is no longer mounted"), "{printed}");
}

// ---------------------------------------------------------------- 4. metrics

#[test]
fn metrics_over_http_and_in_dot_regfs_move_with_reads() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("team/app", "v1", &[MIB, 2000]);
    let proxy = FaultProxy::start(&reg.host_port());
    proxy.add_response_header("RateLimit-Limit", "100;w=21600");
    proxy.add_response_header("RateLimit-Remaining", "76;w=21600");
    let port = free_port();
    let m = Mount::builder(&proxy.url())
        .arg("--metrics-addr")
        .arg(port.to_string())
        .start();
    let w = Work::new();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let scrape = || parse_prometheus(&ok(&w.run("curl", &["-sf", &url]), "curl metrics"));

    let before = scrape();
    let fetched = "regfs_bytes_fetched_total";
    assert_eq!(metric(&before, fetched), 0.0);
    assert_eq!(metric(&before, "regfs_cache_limit_bytes"), (10u64 << 30) as f64);

    let layer = &img.layers[0];
    proxy.fail_next(1, 429, Match::method_path("GET", &format!("/blobs/{}", layer.digest)));
    assert_eq!(
        fs::read(m.join(format!("team/app/_blobs/{}", layer.digest))).unwrap(),
        layer.bytes
    );
    let small = &img.layers[1];
    assert_eq!(
        fs::read(m.join(format!("team/app/_blobs/{}", small.digest))).unwrap(),
        small.bytes
    );
    let want = (layer.bytes.len() + small.bytes.len()) as f64;
    let mut after = BTreeMap::new();
    let moved = wait_until(Duration::from_secs(10), || {
        after = scrape();
        metric(&after, fetched) == want
    });
    assert!(moved, "bytes fetched {} != {want}", metric(&after, fetched));
    let blob_gets: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("regfs_registry_requests_total{kind=\"blob_get\",status=\"20"))
        .map(|(_, v)| v)
        .sum();
    assert!(blob_gets >= 2.0, "successful blob GETs counted by status: {after:?}");
    assert_eq!(
        metric(
            &after,
            "regfs_registry_requests_total{kind=\"blob_get\",status=\"429\"}"
        ),
        1.0
    );
    assert_eq!(metric(&after, "regfs_registry_throttled_total"), 1.0);
    assert!(metric(&after, "regfs_retries_total") >= 1.0);
    assert!(
        metric(
            &after,
            "regfs_registry_request_duration_seconds_count{kind=\"blob_get\"}"
        ) >= 3.0,
        "latency histogram observed every blob GET"
    );
    assert!(after.contains_key("regfs_registry_request_duration_seconds_bucket{kind=\"blob_get\",le=\"+Inf\"}"));
    assert_eq!(metric(&after, "regfs_registry_ratelimit_limit"), 100.0);
    assert_eq!(metric(&after, "regfs_registry_ratelimit_remaining"), 76.0);

    // The same text is in .regfs/metrics, with the counters up to date.
    let file = parse_prometheus(&fs::read_to_string(m.join(".regfs/metrics")).unwrap());
    assert_eq!(metric(&file, fetched), want);
    assert_eq!(
        metric(&file, "regfs_blob_cache_misses_total"),
        m.stat("blob_cache_misses") as f64
    );
    assert!(metric(&file, "regfs_cache_bytes") <= want);
}

#[test]
fn a_metrics_address_in_use_fails_the_mount_clearly() {
    let reg = Registry::start();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let err = Mount::builder(&reg.url())
        .arg("--metrics-addr")
        .arg(format!("127.0.0.1:{port}"))
        .try_start()
        .err()
        .expect("mount fails");
    assert!(
        err.stderr
            .contains(&format!("cannot serve metrics on 127.0.0.1:{port}")),
        "{}",
        err.stderr
    );
}

// ---------------------------------------------------------------- 5. CLI

#[test]
fn completions_for_bash_zsh_fish() {
    let w = Work::new();
    let bash = ok(&w.regfs(&["completions", "bash"]), "completions bash");
    for word in [
        "mount",
        "status",
        "unmount",
        "completions",
        "--allow-non-empty",
        "--metrics-addr",
    ] {
        assert!(bash.contains(word), "bash completion knows {word}");
    }
    // bash itself loads it and registers the completion.
    let script = w.path("regfs.bash");
    fs::write(&script, &bash).unwrap();
    let out = w.run(
        "bash",
        &["-c", &format!("source {} && complete -p regfs", script.display())],
    );
    assert!(ok(&out, "bash loads the completion").contains("regfs"));
    let zsh = ok(&w.regfs(&["completions", "zsh"]), "completions zsh");
    assert!(zsh.starts_with("#compdef regfs"), "{}", &zsh[..zsh.len().min(80)]);
    assert!(zsh.contains("unmount"));
    let fish = ok(&w.regfs(&["completions", "fish"]), "completions fish");
    assert!(fish.contains("complete -c regfs") && fish.contains("status"));
    let bad = w.regfs(&["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn man_page_is_roff() {
    let w = Work::new();
    let man = ok(&w.regfs(&["man"]), "regfs man");
    assert!(
        man.contains(".TH regfs 1"),
        "a roff title header: {}",
        &man[..man.len().min(300)]
    );
    assert!(man.contains(".SH NAME") && man.contains(".SH SYNOPSIS") && man.contains(".SH SUBCOMMANDS"));
    assert!(man.contains("regfs\\-unmount(1)"), "subcommands are listed");
    assert!(man.contains("fusermount3 \\-u"), "the unmount story is in the man page");
}

#[test]
fn help_covers_every_argument_and_unmounting() {
    let w = Work::new();
    let help = ok(&w.regfs(&["mount", "--help"]), "mount --help");
    for arg in ["<MOUNTPOINT>  ", "--gid <GID>  ", "--uid <UID>  ", "-o <OPT"] {
        let line = help
            .lines()
            .find(|l| l.contains(arg))
            .unwrap_or_else(|| panic!("{arg} in {help}"));
        assert!(
            line.split(arg).nth(1).is_some_and(|h| !h.trim().is_empty()),
            "{arg} has help: {line}"
        );
    }
    assert!(help.contains("regfs unmount MOUNTPOINT") && help.contains("fusermount3 -u"));
    // docs/cli.md lists every option --help shows.
    let docs = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md")).unwrap();
    for word in help.split_whitespace() {
        let flag = word.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-');
        if flag.starts_with("--") && flag.len() > 3 && flag != "--help" {
            assert!(docs.contains(flag), "docs/cli.md mentions {flag}");
        }
    }
    assert!(
        !docs.contains("on by default"),
        "docs/cli.md must not claim --read-only is on by default"
    );
}

#[test]
fn unmount_of_a_busy_mount_is_lazy_and_waits_for_the_daemon() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("team/app", "v1", &[100_000]);
    let mut m = Mount::start(&reg.url());
    let mnt = m.path().to_path_buf();
    let pid = m.pid().unwrap();
    let open = fs::File::open(m.join(format!("team/app/_blobs/{}", img.layers[0].digest))).unwrap();

    let mut cmd = Command::new(regfs_bin());
    cmd.args(["unmount", mnt.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || !is_fuse_mounted(&mnt)),
        "the busy mount is detached at once"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(pid_alive(pid), "the daemon serves the open file until it is closed");
    let deadline = Instant::now();
    drop(open);
    let out = with_deadline(Duration::from_secs(60), "regfs unmount", move || {
        child.wait_with_output().unwrap()
    });
    let printed = ok(&out, "regfs unmount");
    assert!(deadline.elapsed() < Duration::from_secs(60));
    assert!(printed.contains("is busy") && printed.contains("lazily"), "{printed}");
    assert!(printed.contains(&format!("waiting for daemon {pid}")), "{printed}");
    assert!(printed.contains(&format!("daemon {pid} has finished")), "{printed}");
    assert!(m.wait_exit(EXIT_DEADLINE).is_some(), "the daemon exited");
}

#[test]
fn unmount_of_an_idle_mount() {
    let reg = Registry::start();
    let mut m = Mount::start(&reg.url());
    let w = Work::new();
    let printed = ok(&w.regfs(&["unmount", m.path().to_str().unwrap()]), "regfs unmount");
    assert!(
        printed.starts_with(&format!("unmounted {}", m.path().display())),
        "{printed}"
    );
    assert!(m.wait_exit(EXIT_DEADLINE).unwrap().success());
    let out = w.regfs(&["unmount", m.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is not a regfs mount"),
        "{}",
        text(&out.stderr)
    );
}

// ---------------------------------------------------------------- 6. rough edges

#[test]
fn foreground_logs_to_a_file_have_no_colour() {
    let reg = Registry::start();
    let w = Work::new();
    let mnt = w.dir("mnt");
    let cache = w.dir("cache");
    let stderr = fs::File::create(w.path("stderr.txt")).unwrap();
    let mut cmd = Command::new(regfs_bin());
    cmd.args(["mount", "--foreground", "--cache-dir", cache.to_str().unwrap()])
        .args([reg.url().as_str(), mnt.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    w.env(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    assert!(wait_until(Duration::from_secs(15), || is_fuse_mounted(&mnt)));
    let _ = fs::read(mnt.join("no/such/_tags/x"));
    common::mount::fusermount(&mnt, false);
    assert!(wait_until(Duration::from_secs(15), || child
        .try_wait()
        .unwrap()
        .is_some()));
    let log = fs::read_to_string(w.path("stderr.txt")).unwrap();
    assert!(log.contains("mounted"), "{log}");
    assert!(!log.contains('\u{1b}'), "no ANSI escapes in a redirected log: {log:?}");
}

#[test]
fn two_mounts_sharing_a_cache_dir_log_to_their_own_files() {
    let reg = Registry::start();
    let w = Work::new();
    let cache = w.dir("cache");
    let (a, b) = (w.dir("mnt-a"), w.dir("mnt-b"));
    for mnt in [&a, &b] {
        ok(
            &w.regfs(&[
                "mount",
                "--cache-dir",
                cache.to_str().unwrap(),
                &reg.url(),
                mnt.to_str().unwrap(),
            ]),
            "background mount",
        );
    }
    let (da, db) = (Detached::new(&a), Detached::new(&b));
    let mut logs = list_dir(&cache.join("logs")).unwrap();
    logs.sort();
    let name = |p: &Path| format!("{}.log", p.to_str().unwrap().trim_start_matches('/').replace('/', "-"));
    let mut want = vec![name(&a), name(&b)];
    want.sort();
    assert_eq!(logs, want);
    for (mnt, d) in [(&a, da), (&b, db)] {
        let text = fs::read_to_string(cache.join("logs").join(name(mnt))).unwrap();
        assert!(text.contains(&format!("mountpoint={}", mnt.display())), "{text}");
        assert!(!text.contains('\u{1b}'));
        drop(d);
    }
    assert!(!cache.join("regfs.log").exists(), "no shared log");
}

#[test]
fn errors_have_iso_times_and_paths_and_touch_is_refused() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("team/app", "v1", &[1000]);
    let m = Mount::start(&reg.url());

    let err = fs::write(m.join("team/app/_blobs/foo.txt"), b"x").unwrap_err();
    assert_eq!(errno_of(&err), libc::EINVAL);
    let manifest = m.join(format!("team/app/_manifests/{}/manifest.json", img.digest));
    let out = Command::new("touch").arg(&manifest).output().unwrap();
    assert!(!out.status.success(), "touch of an immutable file fails");
    assert!(
        text(&out.stderr).contains("Operation not permitted"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(fs::read(&manifest).unwrap(), img.manifest, "and changes nothing");

    let errors = fs::read_to_string(m.join(".regfs/errors")).unwrap();
    let line = errors
        .lines()
        .find(|l| l.contains(" create "))
        .unwrap_or_else(|| panic!("{errors}"));
    let (time, rest) = line.split_once(' ').unwrap();
    let b = time.as_bytes();
    assert!(
        time.len() == 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && time.ends_with('Z'),
        "ISO 8601 UTC time: {line}"
    );
    let year: u32 = time[..4].parse().unwrap();
    assert!(year >= 2024, "{line}");
    assert!(rest.starts_with("create /team/app/_blobs/foo.txt: "), "{line}");
    assert!(
        errors
            .lines()
            .any(|l| l.contains(&format!("setattr /team/app/_manifests/{}/manifest.json", img.digest))),
        "{errors}"
    );
    // .regfs/stats: every line in the documented format (a literal
    // backslash-n once joined the cache lines), the errors above counted.
    let stats = m.stats();
    assert_eq!(stats["errors"], errors.lines().count() as u64, "{stats:?}\n{errors}");
    assert!(stats["cache_limit"] > 0, "{stats:?}");
}

#[test]
fn df_shows_the_cache_use_and_limit() {
    let reg = Registry::start();
    let img = reg.client().push_random_image("team/app", "v1", &[2 * MIB]);
    let m = Mount::builder(&reg.url()).arg("--cache-size").arg("64M").start();
    let df = |m: &Mount| -> (u64, u64, u64) {
        let out = Command::new("df")
            .args(["-B1", "--output=size,used,avail"])
            .arg(m.path())
            .output()
            .unwrap();
        let s = ok(&out, "df");
        let nums: Vec<u64> = s
            .lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        (nums[0], nums[1], nums[2])
    };
    assert_eq!(df(&m), (64 << 20, 0, 64 << 20), "an empty cache of 64 MiB");
    let layer = &img.layers[0];
    assert_eq!(
        fs::read(m.join(format!("team/app/_blobs/{}", layer.digest))).unwrap(),
        layer.bytes
    );
    let used = (2 * MIB) as u64;
    assert!(
        wait_until(Duration::from_secs(20), || df(&m).1 == used),
        "df counts the cached blob: {:?}",
        df(&m)
    );
    assert_eq!(df(&m), (64 << 20, used, (64 << 20) - used));
}

#[test]
fn https_to_a_plain_http_registry_hints_at_http() {
    let reg = Registry::start();
    let w = Work::new();
    let mnt = w.dir("mnt");
    let out = w.regfs(&["mount", &reg.host_port(), mnt.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("mount http://{}", reg.host_port())), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(!is_fuse_mounted(&mnt));
}

#[test]
fn podman_load_names_an_exported_tar_after_registry_repo_and_tag() {
    let reg = Registry::start();
    let layer = RealLayer::new(&[("etc/hello", b"hello\n".as_slice())]);
    reg.client()
        .push_real_image("team/app", Some("v1"), OCI_MANIFEST, host_arch(), None, &[&layer]);
    let m = Mount::start(&reg.url());
    let tar = m.join("team/app/_export/v1.tar");
    let w = Work::new();
    let (root, runroot) = (w.dir("podman-root"), w.dir("podman-run"));
    let podman = |args: &[&str]| {
        let mut all = vec![
            "--root",
            root.to_str().unwrap(),
            "--runroot",
            runroot.to_str().unwrap(),
            "--storage-driver",
            "vfs",
        ];
        all.extend_from_slice(args);
        w.run("podman", &all)
    };
    let loaded = ok(&podman(&["load", "-i", tar.to_str().unwrap()]), "podman load");
    let name = format!("{}/team/app:v1", reg.host_port());
    assert!(loaded.contains(&format!("Loaded image: {name}")), "{loaded}");
    let images = ok(
        &podman(&["images", "--format", "{{.Repository}}:{{.Tag}}"]),
        "podman images",
    );
    assert_eq!(images.trim(), name);
}
