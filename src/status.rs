//! `regfs status` and `regfs unmount`: they read a mount's `.regfs/` files,
//! so they work for anyone who can see the mount, with no socket or daemon
//! protocol of their own.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};

/// What `.regfs/` says about a mount at one moment.
struct Snapshot {
    config: BTreeMap<String, String>,
    stats: BTreeMap<String, u64>,
    transfers: Vec<Transfer>,
    held: Vec<String>,
    errors: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
struct Transfer {
    direction: String,
    repo: String,
    digest: String,
    done: u64,
    total: u64,
    rate: u64,
    active: bool,
}

impl Transfer {
    fn parse(line: &str) -> Option<Transfer> {
        let f: Vec<&str> = line.split(' ').collect();
        let [direction, repo, digest, done, total, rate, state] = f[..] else {
            return None;
        };
        Some(Transfer {
            direction: direction.into(),
            repo: repo.into(),
            digest: digest.into(),
            done: done.parse().ok()?,
            total: total.parse().ok()?,
            rate: rate.parse().ok()?,
            active: state == "active",
        })
    }

    fn key(&self) -> String {
        format!("{} {} {}", self.direction, self.repo, self.digest)
    }

    /// `fetch team/app sha256:0123456789ab…`
    fn label(&self) -> String {
        let short: String = self.digest.chars().take("sha256:".len() + 12).collect();
        format!("{:<5} {} {short}…", self.direction, self.repo)
    }
}

fn read_status(mnt: &Path, name: &str) -> anyhow::Result<String> {
    let path = mnt.join(".regfs").join(name);
    std::fs::read_to_string(&path).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTCONN) => anyhow::anyhow!(
            "{} is a dead regfs mount: its daemon is gone. Detach it with `regfs unmount {0}` \
             (or mount again there: that detaches it too)",
            mnt.display()
        ),
        Some(libc::ENOENT) => anyhow::anyhow!("{} is not a regfs mount (no {} there)", mnt.display(), path.display()),
        _ => anyhow::anyhow!("cannot read {}: {e}", path.display()),
    })
}

fn pairs(text: &str) -> impl Iterator<Item = (String, String)> + '_ {
    text.lines().filter_map(|l| {
        let (k, v) = l.split_once(' ').unwrap_or((l, ""));
        (!k.is_empty()).then(|| (k.to_string(), v.to_string()))
    })
}

impl Snapshot {
    fn read(mnt: &Path) -> anyhow::Result<Snapshot> {
        let config = pairs(&read_status(mnt, "config")?).collect();
        let stats = pairs(&read_status(mnt, "stats")?)
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect();
        let transfers = read_status(mnt, "transfers")?
            .lines()
            .filter_map(Transfer::parse)
            .collect();
        let held = read_status(mnt, "held")?.lines().map(describe_held).collect();
        let errors = read_status(mnt, "errors")?.lines().map(str::to_string).collect();
        Ok(Snapshot {
            config,
            stats,
            transfers,
            held,
            errors,
        })
    }

    fn stat(&self, name: &str) -> u64 {
        self.stats.get(name).copied().unwrap_or(0)
    }

    fn header(&self, mnt: &Path) -> String {
        let get = |k: &str| self.config.get(k).map(String::as_str).unwrap_or("?");
        format!(
            "{} — registry {}, daemon pid {}{}",
            mnt.display(),
            get("registry"),
            get("pid"),
            if get("read_only") == "true" { ", read-only" } else { "" }
        )
    }

    fn cache_line(&self) -> String {
        let (bytes, limit) = (self.stat("cache_bytes"), self.stat("cache_limit"));
        let pct = (bytes * 100).checked_div(limit).unwrap_or(0);
        format!(
            "cache: {} blobs, {} of {} ({pct}%); {} blob(s) being fetched",
            self.stat("cache_blobs"),
            HumanBytes(bytes),
            HumanBytes(limit),
            self.stat("blobs_being_fetched")
        )
    }

    fn traffic_line(&self) -> String {
        format!(
            "registry: {} requests, {} retries; fetched {}, pushed {}; blob cache hits {}, misses {}",
            self.stat("requests"),
            self.stat("retries"),
            HumanBytes(self.stat("bytes_fetched")),
            HumanBytes(self.stat("bytes_pushed")),
            self.stat("blob_cache_hits"),
            self.stat("blob_cache_misses"),
        )
    }

    fn render(&self, mnt: &Path) -> String {
        let mut out = format!("{}\n", self.header(mnt));
        let active: Vec<&Transfer> = self.transfers.iter().filter(|t| t.active).collect();
        out.push_str(&format!("transfers in flight: {}\n", active.len()));
        for t in active {
            out.push_str(&format!(
                "  {}  {} / {}  {}/s\n",
                t.label(),
                HumanBytes(t.done),
                HumanBytes(t.total),
                HumanBytes(t.rate)
            ));
        }
        out.push_str(&format!("pushes held: {}\n", self.held.len()));
        for h in &self.held {
            out.push_str(&format!("  {h}\n"));
        }
        out.push_str(&self.cache_line());
        out.push('\n');
        out.push_str(&self.traffic_line());
        out.push('\n');
        const SHOWN: usize = 5;
        out.push_str(&format!("recent errors: {}\n", self.errors.len()));
        for e in &self.errors[self.errors.len().saturating_sub(SHOWN)..] {
            out.push_str(&format!("  {e}\n"));
        }
        out
    }
}

/// `.regfs/held` lines in words: what is held and what it waits for.
fn describe_held(line: &str) -> String {
    let f: Vec<&str> = line.split(' ').collect();
    match f[..] {
        ["manifest", what, secs] => {
            format!("manifest {what}, held {secs}s: waits for the blobs and manifests it references")
        }
        ["tag", what, digest] => format!("tag {what} → {digest}: waits until that manifest is pushed"),
        _ => line.to_string(),
    }
}

/// `regfs status MOUNTPOINT [--watch]`.
pub fn run(mnt: &Path, watch: bool, interval: f64) -> anyhow::Result<()> {
    let snap = Snapshot::read(mnt)?;
    if !watch {
        print!("{}", snap.render(mnt));
        return Ok(());
    }
    let every = Duration::from_secs_f64(interval.max(0.1));
    let multi = MultiProgress::new();
    let header = multi.add(ProgressBar::new_spinner());
    header.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("template"));
    let summary = multi.add(ProgressBar::new_spinner());
    summary.set_style(ProgressStyle::with_template("  {msg}").expect("template"));
    let style = ProgressStyle::with_template(
        "  {prefix:40} [{bar:30}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} eta {eta}",
    )
    .expect("template")
    .progress_chars("=> ");
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    let mut snap = Ok(snap);
    loop {
        let s = match snap {
            Ok(s) => s,
            // The mount went away while watched: that is how a watch ends.
            Err(_) if !is_mounted(mnt) => {
                header.finish_with_message(format!("{} is no longer mounted", mnt.display()));
                summary.finish_and_clear();
                if multi.is_hidden() {
                    println!("{} is no longer mounted", mnt.display());
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        header.set_message(s.header(mnt));
        header.tick();
        summary.set_message(format!(
            "pushes held: {}; {}; recent errors: {}",
            s.held.len(),
            s.cache_line(),
            s.errors.len()
        ));
        for t in &s.transfers {
            let bar = bars.entry(t.key()).or_insert_with(|| {
                let b = multi.add(ProgressBar::new(t.total));
                b.set_style(style.clone());
                b.set_prefix(t.label());
                b
            });
            bar.set_length(t.total);
            bar.set_position(t.done);
        }
        bars.retain(|key, bar| {
            let keep = s.transfers.iter().any(|t| &t.key() == key);
            if !keep {
                bar.finish_and_clear();
                multi.remove(bar);
            }
            keep
        });
        if multi.is_hidden() {
            // Not a terminal (a pipe, a log): no bars are drawn; print snapshots.
            println!("{}", s.render(mnt));
        }
        std::thread::sleep(every);
        snap = Snapshot::read(mnt);
    }
}

/// Whether /proc/self/mountinfo lists a mount at `path`.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(abs) = std::fs::canonicalize(path).or_else(|_| std::path::absolute(path)) else {
        return false;
    };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    crate::daemon::mounted_at(&mountinfo, &abs).is_some()
}

/// `regfs unmount MOUNTPOINT`: unmount; when files are still open there,
/// detach lazily (the path is free at once), then wait until the daemon has
/// finished — the pushes of files still being written end with their close.
pub fn unmount(mnt: &Path) -> anyhow::Result<()> {
    let snapshot = Snapshot::read(mnt);
    let snap = match snapshot {
        Ok(s) => s,
        Err(_) if is_mounted(mnt) && crate::daemon::is_dead_mount(mnt) => {
            crate::daemon::lazy_unmount(mnt)?;
            println!("{} was a dead mount (its daemon is gone): detached", mnt.display());
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let pid: Option<u32> = snap.config.get("pid").and_then(|p| p.parse().ok());
    let out = Command::new("fusermount3")
        .arg("-u")
        .arg(mnt)
        .output()
        .context("cannot run fusermount3 (Debian package fuse3)")?;
    if out.status.success() {
        println!("unmounted {}", mnt.display());
    } else {
        let why = String::from_utf8_lossy(&out.stderr);
        if !why.contains("busy") {
            bail!("cannot unmount {}: {}", mnt.display(), why.trim());
        }
        crate::daemon::lazy_unmount(mnt)?;
        println!(
            "{} is busy (files are open there): detached it lazily; the daemon ends when the last file is closed",
            mnt.display()
        );
    }
    let Some(pid) = pid else { return Ok(()) };
    let pending = snap
        .transfers
        .iter()
        .filter(|t| t.active && t.direction == "push")
        .count()
        + snap.held.len();
    if pending > 0 {
        println!("waiting for daemon {pid} to finish {pending} push(es) in flight…");
    } else {
        println!("waiting for daemon {pid} to finish…");
    }
    let started = Instant::now();
    let mut last_note = Instant::now();
    while pid_alive(pid) {
        std::thread::sleep(Duration::from_millis(100));
        if last_note.elapsed() > Duration::from_secs(10) {
            println!(
                "still waiting for daemon {pid} ({}s): a file is still open or a push is in flight",
                started.elapsed().as_secs()
            );
            last_note = Instant::now();
        }
    }
    println!("daemon {pid} has finished");
    Ok(())
}

fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie has finished.
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_lines() {
        let t = Transfer::parse("fetch team/app sha256:00112233445566778899 5 10 2 active").unwrap();
        assert_eq!((t.done, t.total, t.rate, t.active), (5, 10, 2, true));
        assert_eq!(t.label(), "fetch team/app sha256:001122334455…");
        assert!(Transfer::parse("fetch team/app").is_none());
    }

    #[test]
    fn held_lines_say_why() {
        assert!(describe_held("manifest a/b@sha256:x 12").contains("waits for the blobs"));
        assert!(describe_held("tag a/b:v1 sha256:x").contains("waits until that manifest is pushed"));
    }
}
