//! Registry credentials, found the way docker, podman and skopeo find them.
//!
//! # Search order
//!
//! [`CredentialSources::standard`] lists the files below. [`lookup`] reads them in
//! order and the **first file that yields credentials for the host wins**
//! (containers/image semantics). A file that does not exist is skipped.
//!
//! 1. `$REGISTRY_AUTH_FILE`
//! 2. `$XDG_RUNTIME_DIR/containers/auth.json` (podman's primary file), or
//!    `/run/containers/$UID/auth.json` when `XDG_RUNTIME_DIR` is unset
//! 3. `$XDG_CONFIG_HOME/containers/auth.json` (default `~/.config/containers/auth.json`)
//! 4. `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`)
//! 5. `~/.dockercfg` (legacy docker format: the `auths` map is the whole file)
//!
//! # Within one file
//!
//! 1. `credHelpers[host]`: run `docker-credential-<name> get`. If the helper
//!    reports "credentials not found", the rest of this file is skipped (docker
//!    treats the helper as authoritative for that host) and the next file is tried.
//! 2. an `auths` entry for the host (see "Keys" below) that carries credentials.
//!    Placeholder entries such as `{}` (written by `docker login` when a
//!    `credsStore` is in use) carry none and are passed over.
//! 3. `credsStore`: run `docker-credential-<name> get`. A `credsStore` helper that
//!    is not installed is only a warning (such configs are often copied between
//!    machines); a `credHelpers` helper that is not installed is an error.
//!
//! # Keys
//!
//! An `auths` (or `credHelpers`) key matches when, after stripping any
//! `scheme://` and any `/path`, its host (with port) equals the host looked up,
//! ignoring ASCII case. So `host`, `https://host`, `http://host`,
//! `https://host/v1/` and `host/namespace/repo` all match `host`. Preference
//! among several matching keys: the key spelled exactly like the looked-up
//! host, then registry-level keys (no path, or an API path such as `/v1/`),
//! then repository-scoped keys (shortest first). `docker.io`, `index.docker.io`,
//! `registry-1.docker.io` and `https://index.docker.io/v1/` all name Docker Hub.
//!
//! # Entries
//!
//! * `identitytoken`: an OAuth2 refresh token. Following the docker convention
//!   the result has username [`IDENTITY_TOKEN_USERNAME`] (`<token>`) and the
//!   token as secret (see [`Credentials::is_identity_token`]).
//! * `auth`: base64 of `username:password`, split on the first colon (so the
//!   password may contain colons).
//! * `username` / `password` fields.
//!
//! # Secrets
//!
//! No secret reaches a log line or an error message: [`Secret`] prints as
//! `<redacted>`, JSON and base64 errors are reported by position only (their
//! messages can quote the offending input), and helper output is never echoed
//! when it could contain a credential.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use serde::{Deserialize, Deserializer};

/// The username docker uses to mark an identity (OAuth2 refresh) token.
pub const IDENTITY_TOKEN_USERNAME: &str = "<token>";

/// The server URL docker uses for Docker Hub, in config files and with helpers.
const DOCKER_HUB_SERVER_URL: &str = "https://index.docker.io/v1/";
/// The canonical name this module uses for Docker Hub when matching.
const DOCKER_HUB: &str = "docker.io";
const HELPER_PREFIX: &str = "docker-credential-";
/// A credential helper that has not answered by then is killed.
const HELPER_TIMEOUT: Duration = Duration::from_secs(10);
/// Helpers answer with a few hundred bytes; never buffer more than this.
const HELPER_OUTPUT_LIMIT: u64 = 1 << 20;

/// A password, token or other secret. `Debug` and `Display` print `<redacted>`;
/// use [`Secret::expose`] at the single place the value is actually needed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself. Never log or format the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A username/password pair, or an identity token (username `<token>`).
/// `Debug` shows the username but never the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub secret: Secret,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            secret: Secret::new(password),
        }
    }

    /// The password (or identity token). Never log or format the result.
    pub fn password(&self) -> &str {
        self.secret.expose()
    }

    /// True when the secret is an identity token (an OAuth2 refresh token, to be
    /// exchanged at the token endpoint with `grant_type=refresh_token`) rather
    /// than a password.
    pub fn is_identity_token(&self) -> bool {
        self.username == IDENTITY_TOKEN_USERNAME
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("secret", &self.secret)
            .finish()
    }
}

/// Where to look for credentials. Injected so tests can use temporary
/// directories instead of `$HOME` and the real `PATH`.
#[derive(Clone, Debug, Default)]
pub struct CredentialSources {
    /// Auth files in search order; missing files are skipped. A file named
    /// `.dockercfg` is read in the legacy format (the `auths` map alone).
    pub auth_files: Vec<PathBuf>,
    /// Directories searched for `docker-credential-*` helpers before `PATH`.
    /// They are also put in front of `PATH` for the helper process only.
    pub helper_dirs: Vec<PathBuf>,
}

impl CredentialSources {
    /// The standard search order of docker, podman and skopeo (see the module docs).
    pub fn standard() -> Self {
        let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        // SAFETY: getuid cannot fail and has no preconditions.
        let uid = unsafe { libc::getuid() };
        CredentialSources {
            auth_files: standard_auth_files(&env, home_dir().as_deref(), uid),
            helper_dirs: Vec::new(),
        }
    }
}

/// The standard file list, from an environment lookup (returning `None` for
/// unset or empty variables), the home directory and the user id.
fn standard_auth_files(env: &dyn Fn(&str) -> Option<OsString>, home: Option<&Path>, uid: u32) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(f) = env("REGISTRY_AUTH_FILE") {
        files.push(PathBuf::from(f));
    }
    match env("XDG_RUNTIME_DIR") {
        Some(dir) => files.push(Path::new(&dir).join("containers/auth.json")),
        None => files.push(PathBuf::from(format!("/run/containers/{uid}/auth.json"))),
    }
    match (env("XDG_CONFIG_HOME"), home) {
        (Some(dir), _) => files.push(Path::new(&dir).join("containers/auth.json")),
        (None, Some(home)) => files.push(home.join(".config/containers/auth.json")),
        (None, None) => {}
    }
    match (env("DOCKER_CONFIG"), home) {
        (Some(dir), _) => files.push(Path::new(&dir).join("config.json")),
        (None, Some(home)) => files.push(home.join(".docker/config.json")),
        (None, None) => {}
    }
    if let Some(home) = home {
        files.push(home.join(".dockercfg"));
    }
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(f.clone()));
    files
}

/// `$HOME`, else the home directory in the password database.
fn home_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(home));
    }
    use std::os::unix::ffi::OsStrExt;
    let mut buf: Vec<libc::c_char> = vec![0; 4096];
    loop {
        // SAFETY: zeroed is a valid `passwd` (integers and null pointers).
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and `buf.len()` is its size.
        let rc = unsafe { libc::getpwuid_r(libc::getuid(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || result.is_null() || pwd.pw_dir.is_null() {
            return None;
        }
        // SAFETY: pw_dir points to a NUL-terminated string inside `buf`.
        let dir = unsafe { std::ffi::CStr::from_ptr(pwd.pw_dir) };
        let dir = dir.to_bytes();
        return (!dir.is_empty()).then(|| PathBuf::from(OsStr::from_bytes(dir)));
    }
}

/// Look up credentials for `host` (e.g. `127.0.0.1:5000`, `ghcr.io`,
/// `registry-1.docker.io`; a `scheme://` prefix and a path are ignored).
///
/// Returns `Ok(None)` when nothing is configured for the host. Errors
/// (unreadable or malformed file, failing helper) name the file or helper but
/// never contain a secret. Blocking: it may run credential helpers (each killed
/// after 10 s), so call it once, at startup or from `spawn_blocking`.
pub fn lookup(sources: &CredentialSources, host: &str) -> anyhow::Result<Option<Credentials>> {
    lookup_with_timeout(sources, host, HELPER_TIMEOUT)
}

fn lookup_with_timeout(
    sources: &CredentialSources,
    host: &str,
    helper_timeout: Duration,
) -> anyhow::Result<Option<Credentials>> {
    let target = registry_name(host).ok_or_else(|| anyhow!("invalid registry host {host:?}"))?;
    let helpers = HelperRunner {
        dirs: &sources.helper_dirs,
        timeout: helper_timeout,
    };
    for path in &sources.auth_files {
        let Some(config) = read_config(path)? else {
            continue;
        };
        if let Some(creds) = lookup_in_file(&config, path, host, &target, &helpers)? {
            return Ok(Some(creds));
        }
    }
    tracing::debug!(host, "no registry credentials configured");
    Ok(None)
}

/// The registry a key or host names: lowercase `host[:port]` with any
/// `scheme://` and `/path` removed, Docker Hub aliases folded to `docker.io`.
fn registry_name(s: &str) -> Option<String> {
    let s = s.trim();
    let rest = match s.find("://") {
        Some(i) => &s[i + 3..],
        None => s,
    };
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return None;
    }
    let host = host.to_ascii_lowercase();
    Some(match host.as_str() {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
        _ => host,
    })
}

/// How well a config key that names the right registry matches: lower is better.
fn key_rank(key: &str, host: &str) -> u8 {
    if key == host {
        return 0;
    }
    let has_scheme = key.contains("://");
    let rest = key.find("://").map_or(key, |i| &key[i + 3..]);
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let api_path = matches!(path, "" | "/" | "/v1" | "/v1/" | "/v2" | "/v2/");
    if api_path || (has_scheme && path.is_empty()) {
        1
    } else {
        2
    }
}

/// Keys of `map` naming `target`, best first.
fn matching_keys<'a, V>(map: &'a BTreeMap<String, V>, host: &str, target: &str) -> Vec<&'a str> {
    let mut keys: Vec<&str> = map
        .keys()
        .filter(|k| registry_name(k).as_deref() == Some(target))
        .map(String::as_str)
        .collect();
    keys.sort_by_key(|k| (key_rank(k, host), k.len(), *k));
    keys
}

// ---------------------------------------------------------------------------
// Auth files

#[derive(Default, Deserialize)]
struct ConfigFile {
    #[serde(default, deserialize_with = "null_as_default")]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers", deserialize_with = "null_as_default")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    #[serde(alias = "identityToken")]
    identitytoken: Option<String>,
}

/// Go's encoding/json reads `null` as the zero value; so do we.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A JSON error without its message: serde messages may quote the input
/// ("invalid type: string \"hunter2\""), which here may be a secret.
fn describe_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "read error",
        Category::Syntax => "syntax error",
        Category::Eof => "unexpected end of input",
        Category::Data => "unexpected value or type",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// Read and parse one auth file; `None` if it does not exist.
fn read_config(path: &Path) -> anyhow::Result<Option<ConfigFile>> {
    let raw = match fs::read(path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading registry credentials file {}", path.display())),
    };
    // docker accepts an empty config file; treat it as having no entries.
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(Some(ConfigFile::default()));
    }
    let legacy = path.file_name() == Some(OsStr::new(".dockercfg"));
    let parsed = if legacy {
        serde_json::from_slice::<Option<BTreeMap<String, AuthEntry>>>(&raw).map(|auths| ConfigFile {
            auths: auths.unwrap_or_default(),
            ..ConfigFile::default()
        })
    } else {
        serde_json::from_slice::<Option<ConfigFile>>(&raw).map(Option::unwrap_or_default)
    };
    match parsed {
        Ok(config) => Ok(Some(config)),
        Err(e) => bail!(
            "malformed registry credentials file {}: {}",
            path.display(),
            describe_json_error(&e)
        ),
    }
}

fn lookup_in_file(
    config: &ConfigFile,
    path: &Path,
    host: &str,
    target: &str,
    helpers: &HelperRunner<'_>,
) -> anyhow::Result<Option<Credentials>> {
    let file = path.display();

    if let Some(key) = matching_keys(&config.cred_helpers, host, target).first() {
        let helper = &config.cred_helpers[*key];
        tracing::debug!(%file, key, helper, "using credential helper from credHelpers");
        let creds = helpers
            .get(helper, target, false)
            .with_context(|| format!("credHelpers entry {key:?} in {file}"))?;
        if creds.is_some() {
            tracing::debug!(%file, helper, "credentials found by credential helper");
        }
        // The helper is authoritative for this host within this file.
        return Ok(creds);
    }

    for key in matching_keys(&config.auths, host, target) {
        if let Some(creds) = decode_entry(&config.auths[key], path, key)? {
            tracing::debug!(%file, key, "credentials found in auth file");
            return Ok(Some(creds));
        }
    }

    if let Some(store) = config.creds_store.as_deref().filter(|s| !s.is_empty()) {
        tracing::debug!(%file, helper = store, "asking the credsStore helper");
        let creds = helpers
            .get(store, target, true)
            .with_context(|| format!("credsStore in {file}"))?;
        if creds.is_some() {
            tracing::debug!(%file, helper = store, "credentials found by credential helper");
        }
        return Ok(creds);
    }
    Ok(None)
}

/// The credentials in one `auths` entry, `None` for a placeholder entry.
fn decode_entry(entry: &AuthEntry, path: &Path, key: &str) -> anyhow::Result<Option<Credentials>> {
    fn non_empty(s: &Option<String>) -> Option<&str> {
        s.as_deref().map(str::trim).filter(|s| !s.is_empty())
    }
    let bad = |what: &str| {
        anyhow!(
            "registry credentials file {}: the \"auth\" value for {key:?} {what}",
            path.display()
        )
    };

    if let Some(token) = non_empty(&entry.identitytoken) {
        return Ok(Some(Credentials::new(IDENTITY_TOKEN_USERNAME, token)));
    }
    if let Some(auth) = non_empty(&entry.auth) {
        // Accept padded and unpadded base64; the decoder's error text is not
        // used because it quotes the offending byte.
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let decoded = engine.decode(auth).map_err(|_| bad("is not valid base64"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad("is not UTF-8"))?;
        let Some((user, password)) = decoded.split_once(':') else {
            return Err(bad("does not decode to \"username:password\""));
        };
        if user.is_empty() {
            return Err(bad("has an empty username"));
        }
        return Ok(Some(Credentials::new(user, password.trim_matches('\0'))));
    }
    let user = entry.username.as_deref().unwrap_or("");
    let password = entry.password.as_deref().unwrap_or("");
    if user.is_empty() && password.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials::new(user, password)))
}

// ---------------------------------------------------------------------------
// Credential helpers

struct HelperRunner<'a> {
    dirs: &'a [PathBuf],
    timeout: Duration,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct HelperResponse {
    #[serde(rename = "Username", deserialize_with = "null_as_default")]
    username: String,
    #[serde(rename = "Secret", deserialize_with = "null_as_default")]
    secret: String,
}

enum RunOutcome {
    Finished {
        status: ExitStatus,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
    TimedOut,
}

impl HelperRunner<'_> {
    /// Ask helper `name` for `registry` (a [`registry_name`]). `Ok(None)` when
    /// the helper has nothing for it, or when `missing_ok` and it is not installed.
    fn get(&self, name: &str, registry: &str, missing_ok: bool) -> anyhow::Result<Option<Credentials>> {
        if name.is_empty() || name.contains(['/', '\\', '\0']) || name == ".." {
            bail!("invalid credential helper name {name:?}");
        }
        let program = format!("{HELPER_PREFIX}{name}");
        if registry != DOCKER_HUB {
            return self.get_one(&program, registry, missing_ok);
        }
        // Docker keys Docker Hub as its v1 URL, podman and skopeo as `docker.io`.
        match self.get_one(&program, DOCKER_HUB_SERVER_URL, missing_ok)? {
            Some(creds) => Ok(Some(creds)),
            None if self.resolve(&program).is_some() || which_in_path(&program) => {
                self.get_one(&program, DOCKER_HUB, missing_ok)
            }
            None => Ok(None),
        }
    }

    fn resolve(&self, program: &str) -> Option<PathBuf> {
        self.dirs.iter().map(|d| d.join(program)).find(|p| p.is_file())
    }

    fn get_one(&self, program: &str, server_url: &str, missing_ok: bool) -> anyhow::Result<Option<Credentials>> {
        let mut cmd = Command::new(self.resolve(program).unwrap_or_else(|| program.into()));
        cmd.arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !self.dirs.is_empty() {
            let mut path: Vec<PathBuf> = self.dirs.to_vec();
            if let Some(old) = std::env::var_os("PATH") {
                path.extend(std::env::split_paths(&old));
            }
            // A directory containing ':' cannot go in PATH; it was resolved above anyway.
            if let Ok(joined) = std::env::join_paths(path) {
                cmd.env("PATH", joined);
            }
        }

        let started = Instant::now();
        let outcome = match run_with_timeout(&mut cmd, server_url.as_bytes(), self.timeout) {
            Ok(outcome) => outcome,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if missing_ok {
                    tracing::warn!(helper = program, "credential helper not installed; ignoring it");
                    return Ok(None);
                }
                bail!("credential helper {program} not found in PATH");
            }
            Err(e) => return Err(e).with_context(|| format!("running credential helper {program}")),
        };
        let (status, stdout, stderr) = match outcome {
            RunOutcome::Finished { status, stdout, stderr } => (status, stdout, stderr),
            RunOutcome::TimedOut => bail!(
                "credential helper {program} timed out after {:.1} s",
                started.elapsed().as_secs_f64()
            ),
        };

        if !status.success() {
            let out = String::from_utf8_lossy(&stdout);
            let err = String::from_utf8_lossy(&stderr);
            if out.contains("credentials not found") || err.contains("credentials not found") {
                tracing::debug!(helper = program, server_url, "credential helper has no entry");
                return Ok(None);
            }
            bail!(
                "credential helper {program} failed ({status}){}",
                safe_excerpt(&out, &err)
            );
        }
        if stdout.iter().all(u8::is_ascii_whitespace) {
            tracing::debug!(helper = program, server_url, "credential helper returned nothing");
            return Ok(None);
        }
        let resp: HelperResponse = serde_json::from_slice(&stdout).map_err(|e| {
            anyhow!(
                "credential helper {program} returned malformed output ({})",
                describe_json_error(&e)
            )
        })?;
        if resp.username.is_empty() && resp.secret.is_empty() {
            return Ok(None);
        }
        Ok(Some(Credentials::new(resp.username, resp.secret)))
    }
}

/// Is `program` somewhere on `$PATH`?
fn which_in_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// The first line a failed helper printed, as `: line`, unless it might hold a
/// credential (JSON, or mentions of secrets), in which case nothing.
fn safe_excerpt(stdout: &str, stderr: &str) -> String {
    let Some(line) = stdout
        .lines()
        .chain(stderr.lines())
        .map(str::trim)
        .find(|l| !l.is_empty())
    else {
        return String::new();
    };
    let lower = line.to_ascii_lowercase();
    if line.contains(['{', '"']) || ["secret", "password", "token"].iter().any(|w| lower.contains(w)) {
        return String::new();
    }
    let mut excerpt: String = line.chars().take(200).collect();
    if excerpt.len() < line.len() {
        excerpt.push('…');
    }
    format!(": {excerpt}")
}

/// Spawn, retrying briefly on ETXTBSY (an executable just written while
/// another thread forks still has it open for writing in that child).
fn spawn(cmd: &mut Command) -> io::Result<Child> {
    let mut attempts = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 50 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Run `cmd` with `input` on stdin, collecting stdout and stderr, killing it
/// after `timeout`. Never waits past the deadline, even if a grandchild keeps
/// the output pipes open.
fn run_with_timeout(cmd: &mut Command, input: &[u8], timeout: Duration) -> io::Result<RunOutcome> {
    let deadline = Instant::now() + timeout;
    let mut child = spawn(cmd)?;

    let (tx, rx) = mpsc::channel::<(bool, Vec<u8>)>();
    let readers: [(bool, Option<Box<dyn Read + Send>>); 2] = [
        (true, child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>)),
        (false, child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>)),
    ];
    for (is_stdout, reader) in readers {
        let Some(mut reader) = reader else { continue };
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = (&mut reader).take(HELPER_OUTPUT_LIMIT).read_to_end(&mut buf);
            // Drain the rest so the helper never blocks on a full pipe.
            let _ = io::copy(&mut reader, &mut io::sink());
            let _ = tx.send((is_stdout, buf));
        });
    }
    drop(tx);

    if let Some(mut stdin) = child.stdin.take() {
        // The input is tiny (fits in the pipe buffer); a helper that exits
        // without reading it is not an error.
        if let Err(e) = stdin.write_all(input) {
            if e.kind() != io::ErrorKind::BrokenPipe {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        }
    }

    let (mut stdout, mut stderr) = (None, None);
    while stdout.is_none() || stderr.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((true, buf)) => stdout = Some(buf),
            Ok((false, buf)) => stderr = Some(buf),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(RunOutcome::TimedOut);
            }
        }
    }
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(RunOutcome::Finished {
                status,
                stdout: stdout.unwrap_or_default(),
                stderr: stderr.unwrap_or_default(),
            });
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(RunOutcome::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    /// Write `json` to `dir/name` and return the path.
    fn write_file(dir: &Path, name: &str, json: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, json).unwrap();
        path
    }

    fn sources(files: Vec<PathBuf>) -> CredentialSources {
        CredentialSources {
            auth_files: files,
            helper_dirs: Vec::new(),
        }
    }

    fn auths_file(dir: &Path, name: &str, key: &str, user: &str, pass: &str) -> PathBuf {
        let json = format!(
            r#"{{"auths": {{"{key}": {{"auth": "{}"}}}}}}"#,
            b64(&format!("{user}:{pass}"))
        );
        write_file(dir, name, &json)
    }

    /// Install `docker-credential-<name>` (a shell script) in `dir`.
    fn write_helper(dir: &Path, name: &str, body: &str) {
        let path = dir.join(format!("{HELPER_PREFIX}{name}"));
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Answers for `ghcr.io` and Docker Hub's v1 URL, "not found" otherwise.
    const FAKE_HELPER: &str = r#"[ "$1" = get ] || { echo "unknown command $1" >&2; exit 3; }
url=$(cat)
case "$url" in
  ghcr.io) printf '{"ServerURL":"%s","Username":"helper-user","Secret":"helper-secret"}\n' "$url" ;;
  https://index.docker.io/v1/) printf '{"ServerURL":"%s","Username":"hub-user","Secret":"hub-secret"}\n' "$url" ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac"#;

    fn with_helpers(files: Vec<PathBuf>, dir: &Path) -> CredentialSources {
        CredentialSources {
            auth_files: files,
            helper_dirs: vec![dir.to_path_buf()],
        }
    }

    #[test]
    fn every_key_form_matches_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("127.0.0.1:5000", "127.0.0.1:5000"),
            ("https://127.0.0.1:5000", "127.0.0.1:5000"),
            ("http://127.0.0.1:5000", "127.0.0.1:5000"),
            ("https://127.0.0.1:5000/v1/", "127.0.0.1:5000"),
            ("127.0.0.1:5000/team/app", "127.0.0.1:5000"),
            ("GHCR.io", "ghcr.io"),
            ("ghcr.io", "https://ghcr.io/"),
        ];
        for (i, (key, host)) in cases.iter().enumerate() {
            let f = auths_file(dir.path(), &format!("{i}.json"), key, "alice", "pw");
            let creds = lookup(&sources(vec![f]), host).unwrap();
            let creds = creds.unwrap_or_else(|| panic!("key {key:?} should match {host:?}"));
            assert_eq!(creds.username, "alice");
            assert_eq!(creds.password(), "pw");
        }
    }

    #[test]
    fn other_hosts_and_ports_do_not_match() {
        let dir = tempfile::tempdir().unwrap();
        let f = auths_file(dir.path(), "a.json", "https://127.0.0.1:5000", "alice", "pw");
        let s = sources(vec![f]);
        assert!(lookup(&s, "127.0.0.1").unwrap().is_none());
        assert!(lookup(&s, "127.0.0.1:5001").unwrap().is_none());
        assert!(lookup(&s, "127.0.0.10:5000").unwrap().is_none());
    }

    #[test]
    fn exact_and_registry_level_keys_beat_repository_keys() {
        let dir = tempfile::tempdir().unwrap();
        let json = format!(
            r#"{{"auths": {{
                "quay.io/org/repo": {{"auth": "{}"}},
                "https://quay.io": {{"auth": "{}"}},
                "quay.io/org": {{"auth": "{}"}}
            }}}}"#,
            b64("repo:1"),
            b64("url:2"),
            b64("org:3")
        );
        let f = write_file(dir.path(), "a.json", &json);
        assert_eq!(
            lookup(&sources(vec![f.clone()]), "quay.io").unwrap().unwrap().username,
            "url"
        );

        // Only repository keys: the broadest one wins.
        let json = format!(
            r#"{{"auths": {{"quay.io/org/repo": {{"auth": "{}"}}, "quay.io/org": {{"auth": "{}"}}}}}}"#,
            b64("repo:1"),
            b64("org:3")
        );
        let f = write_file(dir.path(), "b.json", &json);
        assert_eq!(lookup(&sources(vec![f]), "quay.io").unwrap().unwrap().username, "org");
    }

    #[test]
    fn first_file_with_an_entry_wins() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let other = auths_file(dir.path(), "other.json", "example.com", "x", "y");
        let first = auths_file(dir.path(), "first.json", "ghcr.io", "first", "1");
        let second = auths_file(dir.path(), "second.json", "https://ghcr.io", "second", "2");
        let s = sources(vec![missing, other, first, second]);
        let creds = lookup(&s, "ghcr.io").unwrap().unwrap();
        assert_eq!((creds.username.as_str(), creds.password()), ("first", "1"));
    }

    #[test]
    fn placeholder_entries_are_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let placeholder = write_file(dir.path(), "p.json", r#"{"auths": {"ghcr.io": {}}}"#);
        let real = auths_file(dir.path(), "r.json", "ghcr.io", "real", "pw");
        let creds = lookup(&sources(vec![placeholder, real]), "ghcr.io").unwrap().unwrap();
        assert_eq!(creds.username, "real");
    }

    #[test]
    fn nothing_configured_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let empty = write_file(dir.path(), "empty.json", "");
        let bare = write_file(dir.path(), "bare.json", r#"{"auths": null, "credHelpers": null}"#);
        let s = sources(vec![dir.path().join("nope.json"), empty, bare]);
        assert!(lookup(&s, "ghcr.io").unwrap().is_none());
        assert!(lookup(&CredentialSources::default(), "ghcr.io").unwrap().is_none());
    }

    #[test]
    fn auth_splits_on_the_first_colon() {
        let dir = tempfile::tempdir().unwrap();
        let f = auths_file(dir.path(), "a.json", "ghcr.io", "bob", "pa:ss:word");
        let creds = lookup(&sources(vec![f]), "ghcr.io").unwrap().unwrap();
        assert_eq!(creds.username, "bob");
        assert_eq!(creds.password(), "pa:ss:word");
    }

    #[test]
    fn unpadded_auth_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let auth = b64("bob:pw").trim_end_matches('=').to_string();
        let json = format!(r#"{{"auths": {{"ghcr.io": {{"auth": "{auth}"}}}}}}"#);
        let f = write_file(dir.path(), "a.json", &json);
        assert_eq!(lookup(&sources(vec![f]), "ghcr.io").unwrap().unwrap().password(), "pw");
    }

    #[test]
    fn username_and_password_fields() {
        let dir = tempfile::tempdir().unwrap();
        let f = write_file(
            dir.path(),
            "a.json",
            r#"{"auths": {"ghcr.io": {"username": "carol", "password": "pw:1"}}}"#,
        );
        let creds = lookup(&sources(vec![f]), "ghcr.io").unwrap().unwrap();
        assert_eq!((creds.username.as_str(), creds.password()), ("carol", "pw:1"));
        assert!(!creds.is_identity_token());
    }

    #[test]
    fn identity_token() {
        let dir = tempfile::tempdir().unwrap();
        let json = format!(
            r#"{{"auths": {{"myacr.azurecr.io": {{"auth": "{}", "identitytoken": "refresh-xyz"}}}}}}"#,
            b64("00000000-0000-0000-0000-000000000000:")
        );
        let f = write_file(dir.path(), "a.json", &json);
        let creds = lookup(&sources(vec![f]), "myacr.azurecr.io").unwrap().unwrap();
        assert_eq!(creds.username, IDENTITY_TOKEN_USERNAME);
        assert_eq!(creds.password(), "refresh-xyz");
        assert!(creds.is_identity_token());
    }

    #[test]
    fn docker_hub_aliases() {
        let dir = tempfile::tempdir().unwrap();
        for (i, key) in [
            "https://index.docker.io/v1/",
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
        ]
        .iter()
        .enumerate()
        {
            let f = auths_file(dir.path(), &format!("{i}.json"), key, "hubber", "pw");
            for host in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
                let creds = lookup(&sources(vec![f.clone()]), host).unwrap();
                assert_eq!(creds.map(|c| c.username).as_deref(), Some("hubber"), "{key} / {host}");
            }
            assert!(lookup(&sources(vec![f]), "quay.io").unwrap().is_none());
        }
    }

    #[test]
    fn legacy_dockercfg() {
        let dir = tempfile::tempdir().unwrap();
        let json = format!(
            r#"{{"https://index.docker.io/v1/": {{"auth": "{}", "email": "a@b.c"}}}}"#,
            b64("old:timer")
        );
        let f = write_file(dir.path(), ".dockercfg", &json);
        let creds = lookup(&sources(vec![f]), "docker.io").unwrap().unwrap();
        assert_eq!((creds.username.as_str(), creds.password()), ("old", "timer"));
    }

    #[test]
    fn malformed_json_names_the_file_not_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let truncated = write_file(
            dir.path(),
            "truncated.json",
            r#"{"auths": {"ghcr.io": {"auth": "c2VjcmV0"#,
        );
        let err = lookup(&sources(vec![truncated.clone()]), "ghcr.io").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(&truncated.display().to_string()), "{msg}");
        assert!(!msg.contains("c2VjcmV0"), "{msg}");

        // serde's own message would quote the value; ours must not.
        let wrong_type = write_file(dir.path(), "type.json", r#"{"auths": {"ghcr.io": "hunter2-secret"}}"#);
        let err = lookup(&sources(vec![wrong_type.clone()]), "ghcr.io").unwrap_err();
        let msg = format!("{err:#} {err:?}");
        assert!(msg.contains(&wrong_type.display().to_string()), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn bad_auth_value_is_an_error_without_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let json = format!(r#"{{"auths": {{"ghcr.io": {{"auth": "{}"}}}}}}"#, b64("nocolonsecret"));
        let f = write_file(dir.path(), "a.json", &json);
        let msg = format!("{:#}", lookup(&sources(vec![f.clone()]), "ghcr.io").unwrap_err());
        assert!(
            msg.contains(&f.display().to_string()) && msg.contains("ghcr.io"),
            "{msg}"
        );
        assert!(
            !msg.contains("nocolonsecret") && !msg.contains(&b64("nocolonsecret")),
            "{msg}"
        );

        let f = write_file(
            dir.path(),
            "b.json",
            r#"{"auths": {"ghcr.io": {"auth": "not*base64!"}}}"#,
        );
        let msg = format!("{:#}", lookup(&sources(vec![f]), "ghcr.io").unwrap_err());
        assert!(msg.contains("base64") && !msg.contains("not*base64!"), "{msg}");
    }

    #[test]
    fn unreadable_path_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where a file is expected: not "missing", so an error.
        let msg = format!(
            "{:#}",
            lookup(&sources(vec![dir.path().to_path_buf()]), "x.io").unwrap_err()
        );
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    }

    #[test]
    fn fake_credential_helper() {
        let dir = tempfile::tempdir().unwrap();
        write_helper(dir.path(), "fake", FAKE_HELPER);
        let f = write_file(dir.path(), "a.json", r#"{"credsStore": "fake"}"#);
        let s = with_helpers(vec![f], dir.path());

        let creds = lookup(&s, "ghcr.io").unwrap().unwrap();
        assert_eq!(
            (creds.username.as_str(), creds.password()),
            ("helper-user", "helper-secret")
        );
        // Docker Hub is asked for by its v1 URL, whatever alias is looked up.
        for host in ["docker.io", "registry-1.docker.io", "https://index.docker.io/v1/"] {
            let creds = lookup(&s, host).unwrap().unwrap();
            assert_eq!(creds.username, "hub-user");
        }
    }

    #[test]
    fn helper_receives_the_server_url_and_path() {
        let dir = tempfile::tempdir().unwrap();
        // Echo back what it was given; prove the helper dir leads the child's PATH.
        let body = format!(
            r#"url=$(cat)
case "$PATH" in {}:*) ;; *) exit 9 ;; esac
printf '{{"Username":"%s","Secret":"s"}}' "$url""#,
            dir.path().display()
        );
        write_helper(dir.path(), "echo", &body);
        let f = write_file(dir.path(), "a.json", r#"{"credsStore": "echo"}"#);
        let s = with_helpers(vec![f], dir.path());
        assert_eq!(
            lookup(&s, "127.0.0.1:5000").unwrap().unwrap().username,
            "127.0.0.1:5000"
        );
        assert_eq!(lookup(&s, "https://GHCR.io/x").unwrap().unwrap().username, "ghcr.io");
        assert_eq!(
            lookup(&s, "index.docker.io").unwrap().unwrap().username,
            DOCKER_HUB_SERVER_URL
        );
    }

    #[test]
    fn docker_hub_falls_back_to_the_podman_key() {
        let dir = tempfile::tempdir().unwrap();
        let body = r#"url=$(cat)
if [ "$url" = docker.io ]; then printf '{"Username":"podman-hub","Secret":"s"}'; exit 0; fi
echo "credentials not found in native keychain"; exit 1"#;
        write_helper(dir.path(), "podmanish", body);
        let f = write_file(dir.path(), "a.json", r#"{"credHelpers": {"docker.io": "podmanish"}}"#);
        let s = with_helpers(vec![f], dir.path());
        assert_eq!(
            lookup(&s, "registry-1.docker.io").unwrap().unwrap().username,
            "podman-hub"
        );
    }

    #[test]
    fn cred_helpers_take_precedence() {
        let dir = tempfile::tempdir().unwrap();
        write_helper(dir.path(), "fake", FAKE_HELPER);
        let json = format!(
            r#"{{"credHelpers": {{"ghcr.io": "fake"}},
                "auths": {{"ghcr.io": {{"auth": "{}"}}, "quay.io": {{"auth": "{}"}}}},
                "credsStore": "nonexistent-store-{}"}}"#,
            b64("file-user:file-pw"),
            b64("quay-user:quay-pw"),
            std::process::id()
        );
        let f = write_file(dir.path(), "a.json", &json);
        let s = with_helpers(vec![f], dir.path());
        // credHelpers beats auths...
        assert_eq!(lookup(&s, "ghcr.io").unwrap().unwrap().username, "helper-user");
        // ...auths beats credsStore...
        assert_eq!(lookup(&s, "quay.io").unwrap().unwrap().username, "quay-user");
        // ...and a credsStore helper that is not installed is not an error.
        assert!(lookup(&s, "example.com").unwrap().is_none());
    }

    #[test]
    fn helper_not_found_moves_to_the_next_file() {
        let dir = tempfile::tempdir().unwrap();
        write_helper(dir.path(), "fake", FAKE_HELPER);
        let json = format!(
            r#"{{"credHelpers": {{"quay.io": "fake"}}, "auths": {{"quay.io": {{"auth": "{}"}}}}}}"#,
            b64("stale:pw")
        );
        let first = write_file(dir.path(), "first.json", &json);
        let second = auths_file(dir.path(), "second.json", "quay.io", "second", "pw");
        let s = with_helpers(vec![first.clone()], dir.path());
        assert!(lookup(&s, "quay.io").unwrap().is_none());
        let s = with_helpers(vec![first, second], dir.path());
        assert_eq!(lookup(&s, "quay.io").unwrap().unwrap().username, "second");
    }

    #[test]
    fn missing_cred_helper_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("nonexistent-{}", std::process::id());
        let json = format!(r#"{{"credHelpers": {{"ghcr.io": "{name}"}}}}"#);
        let f = write_file(dir.path(), "a.json", &json);
        let msg = format!(
            "{:#}",
            lookup(&with_helpers(vec![f.clone()], dir.path()), "ghcr.io").unwrap_err()
        );
        assert!(msg.contains(&format!("docker-credential-{name}")), "{msg}");
        assert!(msg.contains(&f.display().to_string()), "{msg}");
    }

    #[test]
    fn invalid_helper_name_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let f = write_file(dir.path(), "a.json", r#"{"credHelpers": {"ghcr.io": "../../bin/sh"}}"#);
        let msg = format!("{:#}", lookup(&sources(vec![f]), "ghcr.io").unwrap_err());
        assert!(msg.contains("invalid credential helper name"), "{msg}");
    }

    #[test]
    fn failing_helper_errors_name_the_helper_but_not_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        write_helper(
            dir.path(),
            "broken",
            r#"cat >/dev/null; echo "keychain is locked" >&2; exit 2"#,
        );
        write_helper(
            dir.path(),
            "leaky",
            r#"cat >/dev/null; echo '{"Username":"u","Secret":"leaked-secret"}'; exit 1"#,
        );
        write_helper(dir.path(), "garbage", r#"cat >/dev/null; echo 'Secret=garbage-secret'"#);
        for (helper, must_contain) in [
            ("broken", "keychain is locked"),
            ("leaky", "docker-credential-leaky"),
            ("garbage", "malformed output"),
        ] {
            let json = format!(r#"{{"credHelpers": {{"ghcr.io": "{helper}"}}}}"#);
            let f = write_file(dir.path(), &format!("{helper}.json"), &json);
            let err = lookup(&with_helpers(vec![f], dir.path()), "ghcr.io").unwrap_err();
            let msg = format!("{err:#} {err:?}");
            assert!(msg.contains(&format!("docker-credential-{helper}")), "{msg}");
            assert!(msg.contains(must_contain), "{msg}");
            assert!(
                !msg.contains("leaked-secret") && !msg.contains("garbage-secret"),
                "{msg}"
            );
        }
    }

    #[test]
    fn hanging_helper_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        // Not `exec sleep`: the grandchild keeps the pipes open after the kill.
        write_helper(dir.path(), "slow", "sleep 5; echo '{}'");
        let f = write_file(dir.path(), "a.json", r#"{"credsStore": "slow"}"#);
        let s = with_helpers(vec![f], dir.path());
        let started = Instant::now();
        let err = lookup_with_timeout(&s, "ghcr.io", Duration::from_millis(300)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        let msg = format!("{err:#}");
        assert!(
            msg.contains("docker-credential-slow") && msg.contains("timed out"),
            "{msg}"
        );
    }

    #[test]
    fn debug_and_display_never_show_the_secret() {
        let creds = Credentials::new("dave", "correct-horse-battery");
        let shown = format!("{creds:?} {creds:#?} {:?} {}", creds.secret, creds.secret);
        assert!(!shown.contains("correct-horse"), "{shown}");
        assert!(shown.contains("dave") && shown.contains("<redacted>"), "{shown}");
        assert_eq!(creds.password(), "correct-horse-battery");
        assert_eq!(creds.secret.expose(), "correct-horse-battery");
    }

    #[test]
    fn standard_search_order() {
        let home = Path::new("/home/u");
        let env_of = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| OsString::from(v))
        };
        let all = env_of(&[
            ("REGISTRY_AUTH_FILE", "/etc/regfs/auth.json"),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
            ("XDG_CONFIG_HOME", "/cfg"),
            ("DOCKER_CONFIG", "/dockercfg"),
        ]);
        assert_eq!(
            standard_auth_files(&all, Some(home), 1000),
            [
                "/etc/regfs/auth.json",
                "/run/user/1000/containers/auth.json",
                "/cfg/containers/auth.json",
                "/dockercfg/config.json",
                "/home/u/.dockercfg",
            ]
            .map(PathBuf::from)
        );
        let none = env_of(&[]);
        assert_eq!(
            standard_auth_files(&none, Some(home), 1000),
            [
                "/run/containers/1000/auth.json",
                "/home/u/.config/containers/auth.json",
                "/home/u/.docker/config.json",
                "/home/u/.dockercfg",
            ]
            .map(PathBuf::from)
        );
        assert_eq!(
            standard_auth_files(&none, None, 0),
            [PathBuf::from("/run/containers/0/auth.json")]
        );
        // Duplicates are listed once.
        let dup = env_of(&[("REGISTRY_AUTH_FILE", "/home/u/.docker/config.json")]);
        assert_eq!(standard_auth_files(&dup, Some(home), 1).len(), 4);
    }
}
