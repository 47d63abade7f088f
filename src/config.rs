//! Every option with its default, in one place. `main.rs` parses the command
//! line into a `Config`; nothing else reads arguments or the environment for options.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use url::Url;

use crate::registry::credentials::Credentials;

#[derive(Clone, Debug)]
pub struct Config {
    /// Base URL of the registry, e.g. `https://ghcr.io` or `http://127.0.0.1:5000`.
    pub registry: Url,
    /// REGISTRY as the user wrote it: the mount's source in /proc/mounts, so
    /// `mount -a` recognises an fstab line as mounted already.
    pub source: String,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub read_only: bool,
    pub allow_delete: bool,
    pub cache_dir: PathBuf,
    /// Keep the cache dir's mode and create files with the caller's umask
    /// (a cache shared on purpose); otherwise everything in it is private.
    pub shared_cache: bool,
    pub cache_size: u64,
    /// How long tags, listings and tag→digest are trusted; `None` = forever.
    pub metadata_ttl: Option<Duration>,
    pub allow_other: bool,
    pub uid: u32,
    pub gid: u32,
    pub ca_cert: Option<PathBuf>,
    pub insecure: bool,
    pub repos: Vec<String>,
    pub log_level: String,
    pub log_file: Option<PathBuf>,
    pub credentials: Option<Credentials>,
    /// `n=` for catalog and tag-list pages; `None`: 1000 for the catalog
    /// (`registry::client::CATALOG_PAGE`), the registry's choice for tag lists.
    pub page_size: Option<u32>,
    /// Mount over a directory that has files (they are hidden while mounted).
    pub allow_non_empty: bool,
    /// Serve Prometheus metrics over HTTP here (`--metrics-addr`).
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// `host[:port]` means HTTPS; a full URL may choose the scheme; `docker.io` means Docker Hub.
pub fn parse_registry(s: &str) -> anyhow::Result<Url> {
    let with_scheme = if s.contains("://") {
        s.to_string()
    } else {
        format!("https://{s}")
    };
    let mut url = Url::parse(&with_scheme).with_context(|| format!("invalid registry {s:?}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("invalid registry {s:?}: scheme must be http or https");
    }
    if url.host_str().is_none() {
        bail!("invalid registry {s:?}: no host");
    }
    if matches!(url.host_str(), Some("docker.io" | "index.docker.io")) {
        url.set_host(Some("registry-1.docker.io"))?;
    }
    url.set_path("");
    url.set_query(None);
    Ok(url)
}

/// `1234`, `512K`, `100M`, `10G`, `1T` (binary units).
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        Some('T' | 't') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let n: u64 = num.parse().with_context(|| format!("invalid size {s:?}"))?;
    n.checked_mul(mult).with_context(|| format!("size {s:?} too large"))
}

/// Seconds, or `indefinite`.
pub fn parse_ttl(s: &str) -> anyhow::Result<Option<Duration>> {
    if s == "indefinite" {
        return Ok(None);
    }
    let secs: u64 = s
        .parse()
        .with_context(|| format!("invalid --metadata-ttl {s:?}: seconds or 'indefinite'"))?;
    Ok(Some(Duration::from_secs(secs)))
}

/// `$XDG_CACHE_HOME/regfs`, `~/.cache/regfs`; for root without a home (an
/// fstab or systemd mount) `/var/cache/regfs`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("regfs");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache").join("regfs"),
        // SAFETY: getuid cannot fail.
        None if unsafe { libc::getuid() } == 0 => PathBuf::from("/var/cache/regfs"),
        None => PathBuf::from("/tmp/.cache/regfs"),
    }
}

/// The log of a background mount: one file per mountpoint, named after it the
/// way systemd names mount units (`/mnt/reg` → `logs/mnt-reg.log`), so mounts
/// sharing a cache dir never share a log.
pub fn default_log_file(cache_dir: &std::path::Path, mountpoint: &std::path::Path) -> PathBuf {
    let abs = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    let path = abs.to_string_lossy();
    let trimmed = path.trim_matches('/');
    let name: String = if trimmed.is_empty() {
        "-".into()
    } else {
        trimmed
            .chars()
            .map(|c| match c {
                '/' => '-',
                c if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') => c,
                _ => '_',
            })
            .collect()
    };
    cache_dir.join("logs").join(format!("{name}.log"))
}

impl Config {
    /// `name value` lines for `.regfs/config`: what an operator needs to know
    /// about this mount. The password is never included.
    pub fn describe(&self) -> String {
        let ttl = self
            .metadata_ttl
            .map(|d| d.as_secs().to_string())
            .unwrap_or_else(|| "indefinite".into());
        let user = self
            .credentials
            .as_ref()
            .map(|c| c.username.clone())
            .unwrap_or_else(|| "(anonymous)".into());
        let mut out = String::new();
        for (k, v) in [
            ("registry", self.registry.to_string()),
            ("mountpoint", self.mountpoint.display().to_string()),
            ("username", user),
            ("read_only", self.read_only.to_string()),
            ("cache_dir", self.cache_dir.display().to_string()),
            ("cache_size", self.cache_size.to_string()),
            ("metadata_ttl", ttl),
            ("insecure", self.insecure.to_string()),
            (
                "ca_cert",
                self.ca_cert
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ),
            ("repos", self.repos.join(",")),
            ("log_level", self.log_level.clone()),
            (
                "metrics_addr",
                self.metrics_addr.map(|a| a.to_string()).unwrap_or_default(),
            ),
            ("pid", std::process::id().to_string()),
        ] {
            out.push_str(&format!("{k} {v}\n"));
        }
        out
    }

    /// Host and port as used for credential lookup and cache directories.
    pub fn registry_host(&self) -> String {
        host_port(&self.registry)
    }
}

/// `host[:port]` of a registry URL (the port only when it is not the scheme's default).
pub use crate::registry::host_port;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries() {
        assert_eq!(parse_registry("ghcr.io").unwrap().as_str(), "https://ghcr.io/");
        assert_eq!(
            parse_registry("http://127.0.0.1:5000").unwrap().as_str(),
            "http://127.0.0.1:5000/"
        );
        assert_eq!(
            parse_registry("docker.io").unwrap().as_str(),
            "https://registry-1.docker.io/"
        );
        assert!(parse_registry("ftp://x").is_err());
    }

    #[test]
    fn sizes_and_ttls() {
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert!(parse_size("x").is_err());
        assert_eq!(parse_ttl("indefinite").unwrap(), None);
        assert_eq!(parse_ttl("5").unwrap(), Some(Duration::from_secs(5)));
        assert!(parse_ttl("-1").is_err());
    }

    #[test]
    fn log_files_are_named_after_the_mountpoint() {
        let cache = std::path::Path::new("/c");
        assert_eq!(
            default_log_file(cache, std::path::Path::new("/nonexistent/mnt/my reg")),
            PathBuf::from("/c/logs/nonexistent-mnt-my_reg.log")
        );
        assert_eq!(
            default_log_file(cache, std::path::Path::new("/")),
            PathBuf::from("/c/logs/-.log")
        );
    }
}
