//! A real registry on a free loopback port: Debian's `docker-registry` (CNCF
//! distribution 2.8) or `ferro-oci-server` (an independent OCI distribution
//! 1.1 implementation), chosen by [`RegistryKind`].
//!
//! What ferro-oci-server 1.0.0 does differently from distribution 2.8 (seen
//! with curl and in its source; the suites that run on both state where it
//! matters):
//! - referrers API (`GET /v2/<name>/referrers/<digest>`), distribution has none;
//! - tag lists and the catalog honour `n`/`last` and send a relative `Link`;
//! - `DELETE` of a manifest by tag answers 405 `UNSUPPORTED`; manifest delete by
//!   digest always works (no `delete.enabled` switch);
//! - blob GETs ignore `Range` (200 with the whole blob);
//! - blobs are global: any repository name serves any stored blob, and a
//!   cross-repository mount (`?mount=&from=`) is ignored (202, a new upload);
//! - manifests and tags live in memory: a restart forgets everything but blob
//!   bytes, so stop/start tests run on distribution only;
//! - no auth and no TLS (put a proxy in front for those).

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::client::RegistryClient;
use super::pki::{self, KeyPair};
use super::token::{self, TokenIssuer, TokenIssuerOptions};
use super::{TEST_PASSWORD, TEST_USER};

/// How clients authenticate to the registry.
#[derive(Debug, Clone, Default)]
pub enum AuthMode {
    /// No authentication.
    #[default]
    None,
    /// `auth: htpasswd` with one bcrypt user (`TEST_USER` / `TEST_PASSWORD`).
    Htpasswd,
    /// `auth: token` backed by a [`TokenIssuer`] started with these options.
    Token(TokenIssuerOptions),
}

/// Which registry implementation a test runs against (see the module docs
/// for how they differ; [`crate::on_both_registries`] runs a body on each).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RegistryKind {
    /// Debian's `docker-registry`: CNCF distribution 2.8.
    #[default]
    Distribution,
    /// `ferro-oci-server` from crates.io (installed by `scripts/lib.sh ensure_ferro`).
    Ferro,
}

impl RegistryKind {
    /// Whether `GET /v2/<name>/referrers/<digest>` exists.
    pub fn has_referrers_api(self) -> bool {
        self == RegistryKind::Ferro
    }
    /// Whether `DELETE /v2/<name>/manifests/<tag>` can succeed (ferro: 405).
    pub fn deletes_tags(self) -> bool {
        false
    }
    /// Whether blob GETs answer a `Range` with 206.
    pub fn serves_ranges(self) -> bool {
        self == RegistryKind::Distribution
    }
    /// Whether `?mount=<digest>&from=<repo>` mounts without data (distribution)
    /// or is ignored with a fresh upload session (ferro).
    pub fn mounts_blobs(self) -> bool {
        self == RegistryKind::Distribution
    }
}

/// What registry to start.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// The implementation; auth, TLS and the delete switch are distribution's.
    pub kind: RegistryKind,
    pub auth: AuthMode,
    /// Serve HTTPS with a certificate for 127.0.0.1 signed by a fresh test CA.
    pub tls: bool,
    /// `storage.delete.enabled: true` (manifest and blob DELETE).
    pub delete_enabled: bool,
    /// distribution's pull-through cache mode (`proxy.remoteurl`): this
    /// registry serves what the origin at this URL holds, caching as it goes,
    /// and refuses pushes.
    pub proxy_remote: Option<String>,
    /// Accept foreign layers' `urls` (distribution allows none by default):
    /// `validation.manifests.urls.allow: ['^https?://']`.
    pub allow_foreign_urls: bool,
}

impl RegistryOptions {
    pub fn htpasswd() -> Self {
        RegistryOptions {
            auth: AuthMode::Htpasswd,
            ..Default::default()
        }
    }
    pub fn token() -> Self {
        RegistryOptions {
            auth: AuthMode::Token(TokenIssuerOptions::default()),
            ..Default::default()
        }
    }
    pub fn tls() -> Self {
        RegistryOptions {
            tls: true,
            ..Default::default()
        }
    }
    pub fn with_delete(mut self) -> Self {
        self.delete_enabled = true;
        self
    }
    /// A pull-through cache in front of `origin` (`http://host:port`).
    pub fn pull_through(origin: &str) -> Self {
        RegistryOptions {
            proxy_remote: Some(origin.to_string()),
            ..Default::default()
        }
    }
    pub fn of_kind(kind: RegistryKind) -> Self {
        RegistryOptions {
            kind,
            ..Default::default()
        }
    }
}

/// A running registry. Killed (by the pid started here) on drop; its storage
/// lives in a temporary directory removed with it.
pub struct Registry {
    opts: RegistryOptions,
    port: u16,
    child: Option<Child>,
    dir: TempDir,
    config: PathBuf,
    tls: Option<(KeyPair, KeyPair)>,
    issuer: Option<TokenIssuer>,
}

impl Registry {
    /// Plain HTTP, no auth.
    pub fn start() -> Registry {
        Registry::start_with(RegistryOptions::default())
    }

    /// Plain HTTP, no auth, of the given implementation.
    pub fn start_kind(kind: RegistryKind) -> Registry {
        Registry::start_with(RegistryOptions::of_kind(kind))
    }

    pub fn start_with(opts: RegistryOptions) -> Registry {
        if opts.kind == RegistryKind::Ferro {
            assert!(
                matches!(opts.auth, AuthMode::None) && !opts.tls && opts.proxy_remote.is_none(),
                "ferro-oci-server has no auth or TLS: put a proxy in front"
            );
        }
        let dir = tempfile::Builder::new().prefix("regfs-registry-").tempdir().unwrap();
        fs::create_dir_all(dir.path().join("storage")).unwrap();

        let tls = opts.tls.then(|| {
            let ca = pki::make_ca(dir.path(), "ca");
            let server = pki::make_server_cert(dir.path(), &ca);
            (ca, server)
        });
        let issuer = match &opts.auth {
            AuthMode::Token(o) => Some(TokenIssuer::start(o.clone())),
            _ => None,
        };
        if matches!(opts.auth, AuthMode::Htpasswd) {
            let out = Command::new("htpasswd")
                .args(["-Bbn", TEST_USER, TEST_PASSWORD])
                .output()
                .expect("running htpasswd");
            assert!(out.status.success(), "htpasswd failed");
            fs::write(dir.path().join("htpasswd"), out.stdout).unwrap();
        }

        let mut reg = Registry {
            opts,
            port: 0,
            child: None,
            config: dir.path().join("config.yml"),
            dir,
            tls,
            issuer,
        };
        // A port picked by binding :0 can be taken again before the registry
        // binds it; retry with another one if the registry dies at start.
        let mut last_err = String::new();
        for _ in 0..5 {
            reg.port = free_port();
            reg.write_config();
            match reg.spawn_and_wait() {
                Ok(()) => return reg,
                Err(e) => last_err = e,
            }
        }
        panic!("{} did not start: {last_err}", reg.program());
    }

    fn write_config(&self) {
        let d = self.dir.path();
        let mut y = String::new();
        y.push_str("version: 0.1\n");
        y.push_str("log:\n  level: info\n  formatter: text\n");
        y.push_str("storage:\n");
        y.push_str(&format!(
            "  filesystem:\n    rootdirectory: {}\n",
            d.join("storage").display()
        ));
        if self.opts.delete_enabled {
            y.push_str("  delete:\n    enabled: true\n");
        }
        y.push_str("  maintenance:\n    uploadpurging:\n      enabled: false\n");
        if self.opts.allow_foreign_urls {
            y.push_str("validation:\n  manifests:\n    urls:\n      allow:\n        - ^https?://\n");
        }
        if let Some(origin) = &self.opts.proxy_remote {
            y.push_str(&format!("proxy:\n  remoteurl: {origin}\n"));
        }
        y.push_str("http:\n");
        y.push_str(&format!("  addr: 127.0.0.1:{}\n", self.port));
        y.push_str("  secret: regfs-test-secret\n");
        if let Some((_, server)) = &self.tls {
            y.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                server.cert.display(),
                server.key.display()
            ));
        }
        match &self.opts.auth {
            AuthMode::None => {}
            AuthMode::Htpasswd => {
                y.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: regfs-test\n    path: {}\n",
                    d.join("htpasswd").display()
                ));
            }
            AuthMode::Token(_) => {
                let issuer = self.issuer.as_ref().unwrap();
                y.push_str(&format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    issuer.realm(),
                    token::SERVICE,
                    token::ISSUER,
                    issuer.root_cert_bundle().display()
                ));
            }
        }
        fs::write(&self.config, y).unwrap();
    }

    /// The program started for this registry's kind.
    pub fn program(&self) -> String {
        match self.opts.kind {
            RegistryKind::Distribution => "docker-registry".to_string(),
            RegistryKind::Ferro => ferro_program(),
        }
    }

    pub fn kind(&self) -> RegistryKind {
        self.opts.kind
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(self.program());
        match self.opts.kind {
            RegistryKind::Distribution => {
                // distribution reads REGISTRY_* variables as config overrides (e.g.
                // podman's REGISTRY_AUTH_FILE would become `auth.file`): drop them.
                for (k, _) in std::env::vars_os() {
                    if k.to_string_lossy().starts_with("REGISTRY_") {
                        cmd.env_remove(k);
                    }
                }
                cmd.arg("serve").arg(&self.config);
            }
            RegistryKind::Ferro => {
                cmd.env("FERRO_OCI_LISTEN", self.host_port())
                    .env("FERRO_OCI_STORAGE_DIR", self.storage_dir())
                    .env("RUST_LOG", "info");
            }
        }
        cmd
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let program = self.program();
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawning {program}: {e} (ferro-oci-server: scripts/lib.sh ensure_ferro)"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "{program} exited ({status}) on port {}; log:\n{}",
                    self.port,
                    self.log()
                ));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() && self.v2_answers() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("/v2/ did not answer; log:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `GET /v2/` gets an HTTP answer (200, or 401 with auth).
    fn v2_answers(&self) -> bool {
        let client = self.client_anonymous();
        matches!(client.get_status("/v2/"), Ok(200) | Ok(401))
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme(), self.host_port())
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Pid of the running registry process, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The test CA that signed the TLS certificate (TLS registries only).
    pub fn ca_cert(&self) -> Option<&Path> {
        self.tls.as_ref().map(|(ca, _)| ca.cert.as_path())
    }

    /// The token issuer (token-auth registries only).
    pub fn issuer(&self) -> Option<&TokenIssuer> {
        self.issuer.as_ref()
    }

    /// Credentials the registry accepts, if it needs any.
    pub fn credentials(&self) -> Option<(&'static str, &'static str)> {
        match self.opts.auth {
            AuthMode::None => None,
            _ => Some((TEST_USER, TEST_PASSWORD)),
        }
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.opts
    }

    /// Registry storage root (the filesystem driver's `rootdirectory`).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The registry's own log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A seeding client with the test credentials (and CA) configured.
    pub fn client(&self) -> RegistryClient {
        RegistryClient::new(
            &self.url(),
            self.credentials().map(|(u, p)| (u.to_string(), p.to_string())),
            self.ca_cert(),
        )
    }

    /// A seeding client without credentials.
    pub fn client_anonymous(&self) -> RegistryClient {
        RegistryClient::new(&self.url(), None, self.ca_cert())
    }

    /// Kills the registry (SIGKILL to its pid) and waits for it; the storage
    /// and port stay reserved for [`Registry::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the registry again on the same port with the same storage.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "registry already running");
        let mut last = String::new();
        // The old socket may linger briefly; retry for a while.
        for _ in 0..20 {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("{} did not start again: {last}", self.program());
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `ferro-oci-server` from `$REGFS_FERRO`, PATH, or `~/.cargo/bin` (where
/// `cargo install` puts it).
pub fn ferro_program() -> String {
    if let Ok(p) = std::env::var("REGFS_FERRO") {
        return p;
    }
    let in_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("ferro-oci-server").is_file()))
        .unwrap_or(false);
    if in_path {
        return "ferro-oci-server".to_string();
    }
    let cargo_home =
        std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap()));
    format!("{cargo_home}/bin/ferro-oci-server")
}

/// Runs one test body against each registry implementation: expands to a
/// module `NAME` holding `#[test] fn distribution()` and `#[test] fn ferro()`,
/// each calling the body with its [`RegistryKind`]. Filter one with
/// `-E 'test(/::ferro$/)'`.
///
/// ```ignore
/// on_both_registries! {
///     /// doc
///     fn tags_listed(kind) {
///         let reg = Registry::start_kind(kind);
///         ...
///     }
/// }
/// ```
#[macro_export]
macro_rules! on_both_registries {
    ($(#[$attr:meta])* fn $name:ident($kind:ident) $body:block) => {
        $(#[$attr])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn body($kind: $crate::common::RegistryKind) $body
            #[test]
            fn distribution() {
                body($crate::common::RegistryKind::Distribution)
            }
            #[test]
            fn ferro() {
                body($crate::common::RegistryKind::Ferro)
            }
        }
    };
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
