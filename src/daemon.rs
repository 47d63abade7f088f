//! Mounting: checks, the background/foreground split, logging, and clean
//! unmounts on SIGINT/SIGTERM or `fusermount3 -u`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::config::Config;
use crate::core::view::View;
use crate::core::Options;
use crate::fuse::RegFs;

/// How long the mount waits for the first catalog page after the ping (see `run`).
const FIRST_PAGE_WAIT: Duration = Duration::from_secs(2);
use crate::registry::client::ClientOptions;
use crate::registry::Client;
use crate::stats::Stats;
use crate::store::{BlobStore, ManifestStore};

/// Set in the daemon a background `regfs mount` starts: it reports readiness on stdout.
const READY_ENV: &str = "REGFS_NOTIFY_READY";
const READY_LINE: &str = "ready";
const FUSE_THREADS: usize = 4;

pub fn run(cfg: Config) -> anyhow::Result<()> {
    let recovered = check_mountpoint(&cfg.mountpoint, cfg.allow_non_empty)?;
    set_private_umask(&cfg);
    let notify_ready = std::env::var_os(READY_ENV).is_some();
    if !cfg.foreground && !notify_ready {
        if let Some(note) = &recovered {
            eprintln!("regfs: {note}");
        }
        return start_background(&cfg);
    }
    init_logging(&cfg)?;
    if let Some(note) = &recovered {
        tracing::warn!("{note}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("regfs-io")
        .build()?;
    let stats = Arc::new(Stats::default());
    let client = Arc::new(Client::new(
        ClientOptions {
            registry: cfg.registry.clone(),
            credentials: cfg.credentials.clone(),
            ca_cert: cfg.ca_cert.clone(),
            insecure: cfg.insecure,
            page_size: cfg.page_size,
        },
        stats.clone(),
    )?);
    {
        let _guard = rt.enter();
        crate::metrics::install(cfg.metrics_addr)?;
    }
    // The first catalog page goes out with the ping (two requests, one round
    // trip): the names on it are known before the first lookup, so entering
    // a namespace among them costs no tag list and no catalog scan. Waited
    // for at most FIRST_PAGE_WAIT (a slow catalog must not hold the mount).
    let (pinged, first_page) = rt.block_on(async {
        tokio::join!(
            client.ping(),
            tokio::time::timeout(FIRST_PAGE_WAIT, client.catalog_first_page())
        )
    });
    if let Err(e) = pinged {
        bail!(
            "cannot use registry {}: {e}{}",
            cfg.registry,
            plain_http_hint(&e.to_string(), &cfg.registry)
        );
    }

    make_cache_dir_private(&cfg)?;
    let in_cache = |what: &str| format!("cannot use the cache dir {} ({what})", cfg.cache_dir.display());
    let manifests = ManifestStore::new(&cfg.cache_dir, stats.clone()).with_context(|| in_cache("manifests"))?;
    let blobs = {
        let _guard = rt.enter();
        let blobs = BlobStore::new(&cfg.cache_dir, cfg.cache_size, client.clone(), stats.clone())
            .with_context(|| in_cache("blobs"))?;
        crate::metrics::keep_in_sync(stats.clone(), blobs.clone());
        blobs
    };
    let blob_store = blobs.clone();
    let view = View::new(
        client,
        manifests,
        blobs,
        stats,
        cfg.repos.clone(),
        cfg.metadata_ttl,
        &cfg.cache_dir,
    )
    .with_context(|| in_cache("staging"))?;
    match first_page {
        Ok(page) => view.learn_first_catalog_page(page),
        Err(_) => tracing::info!(
            "the first catalog page took over {} s; names are asked when looked up",
            FIRST_PAGE_WAIT.as_secs()
        ),
    }
    let fs = RegFs::new(
        rt.handle().clone(),
        view,
        Options {
            uid: cfg.uid,
            gid: cfg.gid,
            name_ttl: cfg.metadata_ttl.unwrap_or(Duration::from_secs(365 * 24 * 3600)),
            description: cfg.describe(),
            read_only: cfg.read_only,
            allow_delete: cfg.allow_delete,
        },
    );

    let mut options = fuser::Config::default();
    options.mount_options = vec![
        fuser::MountOption::FSName(fs_name(&cfg)),
        fuser::MountOption::Subtype("regfs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoAtime,
    ];
    if cfg.read_only {
        options.mount_options.push(fuser::MountOption::RO);
    }
    if cfg.allow_other {
        options.acl = fuser::SessionACL::All;
    }
    options.n_threads = Some(FUSE_THREADS);
    options.clone_fd = true;
    let mut session = fuser::Session::new(fs, &cfg.mountpoint, &options)
        .with_context(|| format!("cannot mount at {}", cfg.mountpoint.display()))?;
    let notifier = session.notifier();
    // Content found wrong after the kernel cached some of it: drop those pages
    // and the size it was told, so no later read is served from them.
    blob_store.set_on_bad_content(Box::new(move |digest| {
        let ino = fuser::INodeNo(crate::core::inodes::blob_ino(digest));
        if let Err(e) = notifier.inval_inode(ino, 0, -1) {
            tracing::debug!(%digest, "kernel cache invalidation: {e}");
        }
    }));
    let mut unmounter = session.unmount_callable();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("fuse-session".into()).spawn(move || {
        let r = session.run();
        let _ = done_tx.send(r);
    })?;
    tracing::info!(registry = %cfg.registry, mountpoint = %cfg.mountpoint.display(), "mounted");
    if notify_ready {
        println!("{READY_LINE}");
        let _ = std::io::stdout().flush();
    }

    let ended = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            r = done_rx => Ok::<_, std::io::Error>(Some(r)),
            _ = term.recv() => Ok(None),
            _ = int.recv() => Ok(None),
        }
    })?;
    match ended {
        Some(r) => {
            tracing::info!("unmounted");
            r.unwrap_or(Ok(())).context("FUSE session failed")?;
        }
        None => {
            tracing::info!("signal received; unmounting");
            if let Err(e) = unmounter.unmount() {
                // Busy (a file open, a shell inside): detach it so the
                // mountpoint is clean at once; the kernel finishes when the
                // last user lets go. Never leave a dead mount behind.
                tracing::warn!("unmount failed ({e}); detaching the mount lazily");
                lazy_unmount(&cfg.mountpoint).context("lazy unmount failed")?;
            }
        }
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

/// Detach a mount that is busy: `umount2(MNT_DETACH)` as root, else
/// `fusermount3 -u -z` (the setuid helper does it for the user who mounted).
pub fn lazy_unmount(mountpoint: &Path) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path; umount2 has no memory effects.
    if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let status = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mountpoint)
        .status()
        .context("cannot run fusermount3")?;
    anyhow::ensure!(status.success(), "fusermount3 -u -z exited with {status}");
    Ok(())
}

/// Every file and directory the daemon creates (cache, log, staging) is
/// 0600 / 0700, unless the cache is shared on purpose.
fn set_private_umask(cfg: &Config) {
    if !cfg.shared_cache {
        // SAFETY: umask only changes this process's file creation mask.
        unsafe { libc::umask(0o077) };
    }
}

/// The cache holds a private registry's blobs, the log and where images were
/// seen: only its owner may read it. A directory the user opened up on purpose
/// keeps its mode with `--shared-cache`.
fn make_cache_dir_private(cfg: &Config) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    set_private_umask(cfg);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.cache_dir)
        .with_context(|| format!("cannot create cache dir {}", cfg.cache_dir.display()))?;
    let meta = std::fs::metadata(&cfg.cache_dir)
        .with_context(|| format!("cannot use cache dir {}", cfg.cache_dir.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if !cfg.shared_cache && mode & 0o077 != 0 {
        std::fs::set_permissions(&cfg.cache_dir, std::fs::Permissions::from_mode(0o700)).with_context(|| {
            format!(
                "cache dir {} is readable by others (mode {mode:o}) and cannot be made private",
                cfg.cache_dir.display()
            )
        })?;
        tracing::warn!(
            cache_dir = %cfg.cache_dir.display(),
            "cache dir was mode {mode:o}; made it 0700 (use --shared-cache to keep a shared cache open)"
        );
    }
    Ok(())
}

/// The mountpoint must be an existing, empty (unless `allow_non_empty`)
/// directory that nothing live is mounted on. A FUSE mount whose daemon is
/// gone (ENOTCONN) is detached lazily first; the note saying so is returned
/// for the log.
fn check_mountpoint(path: &Path, allow_non_empty: bool) -> anyhow::Result<Option<String>> {
    let mut note = None;
    if is_dead_mount(path) {
        lazy_unmount(path)?;
        note = Some(format!(
            "{} was a dead FUSE mount (its daemon is gone); detached it (lazy unmount) and mounting afresh",
            path.display()
        ));
    }
    let meta = std::fs::metadata(path).with_context(|| format!("mountpoint {}", path.display()))?;
    if !meta.is_dir() {
        bail!("mountpoint {} is not a directory", path.display());
    }
    let canonical = std::fs::canonicalize(path)?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if let Some((fstype, source)) = mounted_at(&mountinfo, &canonical) {
        bail!(
            "mountpoint {0} is busy: {source} ({fstype}) is mounted there already; unmount it first \
             (`regfs unmount {0}`, `fusermount3 -u {0}` or `umount {0}`)",
            path.display()
        );
    }
    if !allow_non_empty && std::fs::read_dir(path)?.next().is_some() {
        bail!(
            "mountpoint {} is not empty: mounting there would hide its files; use an empty directory \
             or pass --allow-non-empty",
            path.display()
        );
    }
    Ok(note)
}

/// (fstype, source) of the topmost (last listed) mount at `path`, from /proc/self/mountinfo.
pub fn mounted_at(mountinfo: &str, path: &Path) -> Option<(String, String)> {
    mountinfo
        .lines()
        .rev()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|m| Path::new(&unescape_mountinfo(m)) == path)
        })
        .filter_map(|l| {
            let (_, after) = l.split_once(" - ")?;
            let mut f = after.split(' ');
            Some((f.next()?.to_string(), unescape_mountinfo(f.next()?)))
        })
        .next()
}

/// Is `path` a FUSE mount whose daemon is gone? `statfs` always asks the
/// daemon (`stat` may be answered from the kernel's attribute cache), and a
/// dead one answers ENOTCONN.
pub fn is_dead_mount(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statfs(c.as_ptr(), &mut buf) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTCONN)
}

/// The mount's source in /proc/mounts and `df`: REGISTRY as given (what an
/// fstab line says, so `mount -a` sees it mounted), unless it cannot travel
/// in the mount options (a comma or space): then `regfs:host[:port]`.
fn fs_name(cfg: &Config) -> String {
    if cfg.source.is_empty() || cfg.source.contains([',', ' ', '\t', '\n', '\\']) {
        format!("regfs:{}", cfg.registry_host())
    } else {
        cfg.source.clone()
    }
}

/// A TLS handshake that met a plain-HTTP server fails with rustls'
/// "corrupt message of type InvalidContentType": say what to write instead.
fn plain_http_hint(error: &str, registry: &url::Url) -> String {
    if registry.scheme() == "https" && (error.contains("InvalidContentType") || error.contains("corrupt message")) {
        let host = crate::config::host_port(registry);
        return format!(". The registry answered in plain HTTP, not HTTPS: mount http://{host} to use it without TLS");
    }
    String::new()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Start the daemon as a detached child and return once it reports the mount
/// ready; its error message otherwise.
fn start_background(cfg: &Config) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let log_file = cfg
        .log_file
        .clone()
        .unwrap_or_else(|| crate::config::default_log_file(&cfg.cache_dir, &cfg.mountpoint));
    make_cache_dir_private(cfg)?;
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    // A password given on the command line's side (stdin or $REGFS_PASSWORD)
    // reaches the daemon through a pipe on its stdin: never its environment,
    // which /proc/PID/environ shows.
    let password = cfg.credentials.as_ref().filter(|_| {
        args.iter()
            .any(|a| a == "--username" || a.to_string_lossy().starts_with("--username="))
    });
    if password.is_some() && !args.iter().any(|a| a == "--password-stdin") {
        args.push("--password-stdin".into());
    }
    if cfg.log_file.is_none() {
        args.push("--log-file".into());
        args.push(log_file.clone().into());
    }
    let mut cmd = Command::new(exe);
    cmd.args(&args)
        .env(READY_ENV, "1")
        .env_remove("REGFS_PASSWORD")
        .stdin(if password.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid is async-signal-safe; it detaches the daemon from our session.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the regfs daemon")?;
    if let (Some(c), Some(mut stdin)) = (password, child.stdin.take()) {
        // Dropping stdin closes the pipe: the daemon reads to its end.
        let _ = stdin.write_all(c.password().as_bytes());
    }
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if line.trim() == READY_LINE {
        return Ok(());
    }
    let output = child.wait_with_output()?;
    let msg = String::from_utf8_lossy(&output.stderr);
    let msg = msg.trim().trim_start_matches("regfs: ");
    if msg.is_empty() {
        bail!(
            "the daemon exited ({}) before mounting; see {}",
            output.status,
            log_file.display()
        );
    }
    bail!("{msg}");
}

fn init_logging(cfg: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(format!(
        "{},fuser=error,hyper=warn,reqwest=warn,rustls=warn",
        cfg.log_level
    ))
    .with_context(|| format!("invalid --log-level {:?}", cfg.log_level))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    match &cfg.log_file {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create log dir {}", dir.display()))?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open log file {}", path.display()))?;
            builder.with_ansi(false).with_writer(std::sync::Mutex::new(file)).init();
        }
        // Colour only for a terminal: `2>file` and journald get plain text.
        None => {
            use std::io::IsTerminal;
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(ansi).with_writer(std::io::stderr).init()
        }
    }
    Ok(())
}
