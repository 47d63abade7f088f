//! Command line → `Config` → mount, and the small commands around a mount
//! (status, unmount, completions, man page). Nothing else lives here.

use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

use regfs::config::{self, Config};
use regfs::registry::credentials::{self, CredentialSources, Credentials};
use regfs::{daemon, status};

const UNMOUNT_HELP: &str = "\
Unmounting: `regfs unmount MOUNTPOINT` (detaches lazily when files are still open and waits
for the daemon to finish), or `fusermount3 -u MOUNTPOINT`, or `umount MOUNTPOINT` as root.
SIGTERM or SIGINT to the daemon unmounts too. See docs/operations.md for fstab and systemd.";

#[derive(Parser)]
#[command(
    name = "regfs",
    version,
    about = "Mount a container registry as a filesystem",
    long_about = "Mount a container registry (OCI / Docker Distribution v2) as a filesystem: repositories, \
                  tags, manifests and blobs appear as directories and files, fetched lazily through a \
                  verified disk cache; files written under upload areas become pushes.",
    after_help = UNMOUNT_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount REGISTRY at MOUNTPOINT (returns once the mount is ready unless --foreground).
    #[command(after_help = UNMOUNT_HELP)]
    Mount(Box<MountArgs>),
    /// Show what a mount's daemon is doing: transfers, held pushes, cache use, recent errors.
    Status(StatusArgs),
    /// Unmount MOUNTPOINT: lazily when files are still open; waits for the daemon to finish.
    Unmount(UnmountArgs),
    /// Print a shell completion script, e.g. `regfs completions bash > /etc/bash_completion.d/regfs`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `regfs man > /usr/local/share/man/man1/regfs.1`.
    Man,
}

#[derive(clap::Args)]
struct MountArgs {
    /// `host[:port]` (HTTPS), or a URL such as `http://127.0.0.1:5000`; `docker.io` is Docker Hub.
    registry: String,
    /// Existing empty directory to mount on. A dead mount left there by a killed daemon is detached first.
    mountpoint: PathBuf,
    /// Options in mount(8) style, comma-separated: every long option below with `_` or `-`,
    /// e.g. `-o read_only,cache_size=20G,allow_other`; `ro` means --read-only, and mount's
    /// generic options (`rw`, `_netdev`, `nofail`, `x-systemd.*`, …) are ignored. This is how
    /// /etc/fstab lines (type `fuse.regfs`) reach regfs.
    #[arg(short = 'o', value_name = "OPT[=VALUE],...")]
    options: Vec<String>,
    /// Stay attached to the terminal; log to stderr unless --log-file is given.
    #[arg(long)]
    foreground: bool,
    /// Refuse every write with EROFS [default: writes become pushes].
    #[arg(long)]
    read_only: bool,
    /// Allow `rm` of tags and manifests (registry DELETE).
    #[arg(long)]
    allow_delete: bool,
    /// Disk cache for blobs and manifests [default: $XDG_CACHE_HOME/regfs, ~/.cache/regfs; /var/cache/regfs for root without a home].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Keep the cache dir's permissions as they are (a cache shared on purpose);
    /// by default it is made private (0700, files 0600).
    #[arg(long)]
    shared_cache: bool,
    /// Disk cache limit, e.g. 500M, 10G (`df` on the mount shows its use).
    #[arg(long, default_value = "10G", value_parser = config::parse_size)]
    cache_size: u64,
    /// Seconds that tags, listings and tag digests are trusted, or `indefinite`.
    #[arg(long, default_value = "60")]
    metadata_ttl: String,
    /// Let other users see the mount (needs user_allow_other in /etc/fuse.conf for non-root).
    #[arg(long)]
    allow_other: bool,
    /// Mount over a directory that has files in it (they are hidden while mounted).
    #[arg(long)]
    allow_non_empty: bool,
    /// Owner (user id) shown for every entry [default: the caller's].
    #[arg(long)]
    uid: Option<u32>,
    /// Group id shown for every entry [default: the caller's].
    #[arg(long)]
    gid: Option<u32>,
    /// Extra CA certificate (PEM) to trust for the registry's TLS.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Do not verify the registry's TLS certificate.
    #[arg(long)]
    insecure: bool,
    /// Repository to show when the registry has no catalog (repeatable).
    #[arg(long = "repo")]
    repos: Vec<String>,
    /// error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Log file [default: stderr in the foreground, <cache-dir>/logs/<mountpoint>.log otherwise].
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (`PORT` alone means 127.0.0.1:PORT).
    /// The same text is always in MOUNTPOINT/.regfs/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<String>,
    /// Log in as USER; the password comes from --password-stdin or $REGFS_PASSWORD.
    #[arg(long)]
    username: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    password_stdin: bool,
    /// Page size (`n=`) for catalog and tag lists [default: the registry's].
    #[arg(long, hide = true)]
    page_size: Option<u32>,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// A regfs mountpoint.
    mountpoint: PathBuf,
    /// Keep showing, with progress bars for transfers, until interrupted or unmounted.
    #[arg(long)]
    watch: bool,
    /// Seconds between updates with --watch.
    #[arg(long, default_value = "1")]
    interval: f64,
}

#[derive(clap::Args)]
struct UnmountArgs {
    /// A regfs mountpoint.
    mountpoint: PathBuf,
}

fn main() {
    let args = match normalize_args(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("regfs: {e:#}");
            std::process::exit(2);
        }
    };
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Command::Mount(args) => build_config(*args).and_then(daemon::run),
        Command::Status(a) => status::run(&a.mountpoint, a.watch, a.interval),
        Command::Unmount(a) => status::unmount(&a.mountpoint),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "regfs", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map_err(Into::into),
    };
    if let Err(e) = result {
        eprintln!("regfs: {e:#}");
        std::process::exit(1);
    }
}

/// Options of mount(8) that are for mount itself or the kernel's defaults:
/// accepted in `-o` and ignored.
const GENERIC_MOUNT_OPTIONS: &[&str] = &[
    "rw",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "async",
    "sync",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "norelatime",
    "diratime",
    "nodiratime",
    "lazytime",
    "nolazytime",
    "silent",
    "loud",
];

/// Accept mount(8)'s calling convention as well as our own: `mount.fuse3`
/// runs `regfs SOURCE MOUNTPOINT -o OPTS` (no subcommand), and every `-o`
/// list is turned into the long options it names.
fn normalize_args(mut args: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let command = Cli::command();
    let is_subcommand = |a: &OsString| {
        a.to_str()
            .is_some_and(|s| s == "help" || command.find_subcommand(s).is_some())
    };
    match args.get(1) {
        Some(first) if !first.to_string_lossy().starts_with('-') && !is_subcommand(first) => {
            args.insert(1, "mount".into());
        }
        _ => {}
    }
    if args.get(1).and_then(|a| a.to_str()) != Some("mount") {
        return Ok(args);
    }
    let mount = command.find_subcommand("mount").expect("mount subcommand");
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let list = match a.to_str() {
            Some("-o") => it
                .next()
                .ok_or_else(|| anyhow::anyhow!("-o needs a list of options, e.g. -o read_only,cache_size=20G"))?,
            Some(s) if s.starts_with("-o") && !s.starts_with("--") => OsString::from(&s[2..]),
            _ => {
                out.push(a);
                continue;
            }
        };
        let list = list
            .into_string()
            .map_err(|_| anyhow::anyhow!("-o options must be UTF-8"))?;
        for opt in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            out.extend(expand_option(mount, opt)?.into_iter().map(OsString::from));
        }
    }
    Ok(out)
}

/// One `-o` item as long options: `cache_size=20G` → `--cache-size 20G`.
fn expand_option(mount: &clap::Command, opt: &str) -> anyhow::Result<Vec<String>> {
    let (name, value) = match opt.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (opt, None),
    };
    if GENERIC_MOUNT_OPTIONS.contains(&name) || name.starts_with("x-") || name == "comment" {
        return Ok(Vec::new());
    }
    if name == "ro" {
        return Ok(vec!["--read-only".into()]);
    }
    if name == "password_stdin" || name == "password-stdin" {
        anyhow::bail!(
            "password_stdin cannot be a mount option (mount gives regfs no stdin): \
             pass --password-stdin, or set $REGFS_PASSWORD with -o username=USER"
        );
    }
    let long = name.replace('_', "-");
    let arg = mount
        .get_arguments()
        .find(|a| a.get_long() == Some(long.as_str()) && !a.is_hide_set())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "unknown mount option {name:?} in -o: use the long options of `regfs mount --help` \
                 with `_` or `-`, e.g. -o read_only,cache_size=20G"
            )
        })?;
    let takes_value = arg.get_action().takes_values();
    match (takes_value, value) {
        (true, Some(v)) => Ok(vec![format!("--{long}"), v.to_string()]),
        (true, None) => anyhow::bail!("mount option {name} needs a value: -o {name}=VALUE"),
        (false, None) => Ok(vec![format!("--{long}")]),
        (false, Some(_)) => anyhow::bail!("mount option {name} takes no value: -o {name}"),
    }
}

fn build_config(a: MountArgs) -> anyhow::Result<Config> {
    let registry = config::parse_registry(&a.registry)?;
    for r in &a.repos {
        anyhow::ensure!(
            regfs::oci::reference::is_valid_repository(r),
            "--repo {r:?} is not a valid repository name"
        );
    }
    let host = config::host_port(&registry);
    let credentials = match &a.username {
        Some(user) => {
            let password = if a.password_stdin {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s.trim_end_matches(['\n', '\r']).to_string()
            } else {
                std::env::var("REGFS_PASSWORD")
                    .map_err(|_| anyhow::anyhow!("--username needs a password: --password-stdin or $REGFS_PASSWORD"))?
            };
            Some(Credentials::new(user.clone(), password))
        }
        None => credentials::lookup(&CredentialSources::standard(), &host)?,
    };
    let metrics_addr = a.metrics_addr.as_deref().map(regfs::metrics::parse_addr).transpose()?;
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    Ok(Config {
        registry,
        source: a.registry.clone(),
        mountpoint: a.mountpoint,
        foreground: a.foreground,
        read_only: a.read_only,
        allow_delete: a.allow_delete,
        cache_dir: a.cache_dir.unwrap_or_else(config::default_cache_dir),
        shared_cache: a.shared_cache,
        cache_size: a.cache_size,
        metadata_ttl: config::parse_ttl(&a.metadata_ttl)?,
        allow_other: a.allow_other,
        uid: a.uid.unwrap_or(uid),
        gid: a.gid.unwrap_or(gid),
        ca_cert: a.ca_cert,
        insecure: a.insecure,
        repos: a.repos,
        log_level: a.log_level,
        log_file: a.log_file,
        credentials,
        page_size: a.page_size,
        allow_non_empty: a.allow_non_empty,
        metrics_addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(args: &[&str]) -> Result<Vec<String>, String> {
        normalize_args(args.iter().map(OsString::from).collect())
            .map(|v| v.into_iter().map(|a| a.into_string().unwrap()).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn mount_helper_convention() {
        assert_eq!(
            norm(&[
                "regfs",
                "http://r:5000",
                "/mnt/x",
                "-o",
                "rw,_netdev,read_only,cache_size=20G,dev,suid"
            ])
            .unwrap(),
            [
                "regfs",
                "mount",
                "http://r:5000",
                "/mnt/x",
                "--read-only",
                "--cache-size",
                "20G"
            ]
        );
        assert_eq!(
            norm(&[
                "regfs",
                "mount",
                "-oro,allow-other,x-systemd.automount,metadata_ttl=5",
                "r",
                "m"
            ])
            .unwrap(),
            [
                "regfs",
                "mount",
                "--read-only",
                "--allow-other",
                "--metadata-ttl",
                "5",
                "r",
                "m"
            ]
        );
        assert_eq!(norm(&["regfs", "status", "m"]).unwrap(), ["regfs", "status", "m"]);
        assert_eq!(norm(&["regfs", "--help"]).unwrap(), ["regfs", "--help"]);
    }

    #[test]
    fn bad_mount_options_are_named() {
        assert!(norm(&["regfs", "r", "m", "-o", "bogus"])
            .unwrap_err()
            .contains("\"bogus\""));
        assert!(norm(&["regfs", "r", "m", "-o", "cache_size"])
            .unwrap_err()
            .contains("needs a value"));
        assert!(norm(&["regfs", "r", "m", "-o", "read_only=1"])
            .unwrap_err()
            .contains("takes no value"));
        assert!(
            norm(&["regfs", "r", "m", "-o", "page_size=3"]).is_err(),
            "hidden options stay hidden"
        );
        assert!(norm(&["regfs", "r", "m", "-o", "password_stdin"])
            .unwrap_err()
            .contains("REGFS_PASSWORD"));
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
