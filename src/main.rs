//! Command line → `Config` → mount. Nothing else lives here.

use std::io::Read;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use regfs::config::{self, Config};
use regfs::registry::credentials::{self, CredentialSources, Credentials};
use regfs::{daemon, registry};

#[derive(Parser)]
#[command(name = "regfs", version, about = "Mount a container registry as a filesystem")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount REGISTRY at MOUNTPOINT (returns once the mount is ready unless --foreground).
    Mount(MountArgs),
}

#[derive(clap::Args)]
struct MountArgs {
    /// `host[:port]` (HTTPS), or a URL such as `http://127.0.0.1:5000`; `docker.io` is Docker Hub.
    registry: String,
    mountpoint: PathBuf,
    /// Stay attached to the terminal; log to stderr unless --log-file is given.
    #[arg(long)]
    foreground: bool,
    /// Refuse every write with EROFS.
    #[arg(long)]
    read_only: bool,
    /// Allow `rm` of tags and manifests (registry DELETE).
    #[arg(long)]
    allow_delete: bool,
    /// Disk cache for blobs and manifests [default: $XDG_CACHE_HOME/regfs]
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Disk cache limit, e.g. 500M, 10G.
    #[arg(long, default_value = "10G", value_parser = config::parse_size)]
    cache_size: u64,
    /// Seconds that tags, listings and tag digests are trusted, or `indefinite`.
    #[arg(long, default_value = "60")]
    metadata_ttl: String,
    /// Let other users see the mount (needs user_allow_other in /etc/fuse.conf for non-root).
    #[arg(long)]
    allow_other: bool,
    /// Owner shown for every entry [default: the caller's].
    #[arg(long)]
    uid: Option<u32>,
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
    /// Log file [default: stderr in the foreground, <cache-dir>/regfs.log otherwise].
    #[arg(long)]
    log_file: Option<PathBuf>,
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

fn main() {
    let cli = Cli::parse();
    let Command::Mount(args) = cli.command;
    let result = build_config(args).and_then(daemon::run);
    if let Err(e) = result {
        eprintln!("regfs: {e:#}");
        std::process::exit(1);
    }
}

fn build_config(a: MountArgs) -> anyhow::Result<Config> {
    let registry = config::parse_registry(&a.registry)?;
    for r in &a.repos {
        anyhow::ensure!(
            registry::reference::is_valid_repository(r),
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
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    Ok(Config {
        registry,
        mountpoint: a.mountpoint,
        foreground: a.foreground,
        read_only: a.read_only,
        allow_delete: a.allow_delete,
        cache_dir: a.cache_dir.unwrap_or_else(config::default_cache_dir),
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
    })
}
