//! A small Docker token issuer (the `realm` of `auth: token`).
//!
//! It serves `GET /token?service=..&scope=..` (and the OAuth2 `POST /token`
//! form) on `127.0.0.1`, checks HTTP Basic credentials, and answers
//! `{"token", "access_token", "expires_in", "issued_at"}` with a JWT signed
//! RS256 by a key whose certificate is chained to a test CA.
//!
//! What distribution 2.8 (`registry/auth/token`) needs from the JWT:
//! - header `alg` it can verify (`RS256` = PKCS#1 v1.5 SHA-256 here) and a way
//!   to find the key: `x5c` (certificate chain verified against
//!   `rootcertbundle`), `jwk`, or `kid` (a libtrust key fingerprint of a key in
//!   the bundle). We send `x5c` = [signing certificate], and the bundle holds
//!   the CA that signed it;
//! - `iss` == the configured `issuer`, `aud` == the configured `service` (a
//!   plain string in 2.8), `exp`/`nbf` valid with 60 s leeway;
//! - `access`: `[{"type":"repository","name":..,"actions":[..]}]` covering
//!   what the request needs (`registry:catalog:*` for `/v2/_catalog`).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use tempfile::TempDir;

use super::http::{self, Head};
use super::pki::{self, KeyPair};

/// The `issuer` claim and registry setting.
pub const ISSUER: &str = "regfs-test-issuer";
/// The `service` (audience) the registry is configured with.
pub const SERVICE: &str = "regfs-test-registry";

/// How the issuer behaves.
#[derive(Debug, Clone)]
pub struct TokenIssuerOptions {
    /// Accepted `(username, password)` pairs; they get every action asked for.
    pub users: Vec<(String, String)>,
    /// Whether a request without credentials gets a token granting `pull`
    /// (and catalog) access. Requests with wrong credentials always get 401.
    pub anonymous_pull: bool,
    /// `expires_in` of issued tokens, in seconds.
    pub expires_in: u64,
}

impl Default for TokenIssuerOptions {
    fn default() -> Self {
        TokenIssuerOptions {
            users: vec![(super::TEST_USER.to_string(), super::TEST_PASSWORD.to_string())],
            anonymous_pull: false,
            expires_in: 300,
        }
    }
}

/// One request the issuer saw.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// Basic username, `None` for anonymous.
    pub user: Option<String>,
    /// Scopes asked for (each `type:name:actions`).
    pub scopes: Vec<String>,
    pub service: Option<String>,
    /// Whether a token was issued.
    pub granted: bool,
}

struct Shared {
    opts: Mutex<TokenIssuerOptions>,
    signer: KeyPair,
    x5c: String,
    requests: Mutex<Vec<TokenRequest>>,
    count: AtomicU64,
    stop: AtomicBool,
    jti: AtomicU64,
}

/// A running token issuer; stops (its accept loop) on drop.
pub struct TokenIssuer {
    port: u16,
    shared: Arc<Shared>,
    ca: KeyPair,
    _dir: TempDir,
}

impl TokenIssuer {
    /// Makes a CA and a signing certificate, and starts serving on a free port.
    pub fn start(opts: TokenIssuerOptions) -> TokenIssuer {
        let dir = tempfile::Builder::new().prefix("regfs-token-").tempdir().unwrap();
        let ca = pki::make_ca(dir.path(), "token-ca");
        let signer = pki::make_leaf(
            dir.path(),
            "token-signer",
            &ca,
            &[
                "basicConstraints=critical,CA:FALSE",
                "keyUsage=critical,digitalSignature",
            ],
        );
        let x5c = signer.cert_der_base64();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            opts: Mutex::new(opts),
            signer,
            x5c,
            requests: Mutex::new(Vec::new()),
            count: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            jti: AtomicU64::new(1),
        });
        let s2 = shared.clone();
        thread::Builder::new()
            .name(format!("token-issuer-{port}"))
            .spawn(move || {
                for conn in listener.incoming() {
                    if s2.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let s3 = s2.clone();
                    thread::spawn(move || {
                        let _ = serve_conn(&s3, conn);
                    });
                }
            })
            .unwrap();
        TokenIssuer {
            port,
            shared,
            ca,
            _dir: dir,
        }
    }

    /// The `realm` URL: `http://127.0.0.1:PORT/token`.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// PEM bundle for the registry's `rootcertbundle`.
    pub fn root_cert_bundle(&self) -> PathBuf {
        self.ca.cert.clone()
    }

    /// Number of token requests served so far (granted or not).
    pub fn request_count(&self) -> u64 {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// Every request seen so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Changes the behaviour for later requests.
    pub fn set_options(&self, opts: TokenIssuerOptions) {
        *self.shared.opts.lock().unwrap() = opts;
    }

    /// Issues a token directly (as if requested by `user`) for `scopes`.
    pub fn mint(&self, user: &str, scopes: &[&str]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        make_jwt(&self.shared, user, &grants(&scopes, true), 300)
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve_conn(shared: &Shared, stream: TcpStream) -> std::io::Result<()> {
    let mut reader = http::buffered(&stream)?;
    let mut w = stream;
    while let Some(head) = http::read_head(&mut reader)? {
        let body = http::read_body(&mut reader, &head, false)?;
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        handle(shared, &head, &body, &mut w)?;
    }
    Ok(())
}

fn handle(shared: &Shared, head: &Head, body: &[u8], w: &mut TcpStream) -> std::io::Result<()> {
    let (path, mut params) = http::split_target(head.target());
    if head.method() == "POST" {
        params.extend(http::parse_query(&String::from_utf8_lossy(body)));
    }
    if path != "/token" {
        return http::write_response(w, 404, "Not Found", &[], b"not found\n");
    }
    shared.count.fetch_add(1, Ordering::SeqCst);
    let opts = shared.opts.lock().unwrap().clone();

    // Credentials: Basic header (GET), or grant_type=password form (POST).
    let mut creds: Option<(String, String)> = head
        .header("authorization")
        .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
        .map(|b64| {
            let raw = String::from_utf8_lossy(&pki::base64_decode(b64.trim())).into_owned();
            let (u, p) = raw.split_once(':').unwrap_or((&raw, ""));
            (u.to_string(), p.to_string())
        });
    let get = |k: &str| params.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.clone());
    if creds.is_none() && get("grant_type").as_deref() == Some("password") {
        creds = Some((get("username").unwrap_or_default(), get("password").unwrap_or_default()));
    }
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    let service = get("service");

    let (user, authorized_fully) = match &creds {
        Some((u, p)) => {
            let ok = opts.users.iter().any(|(cu, cp)| cu == u && cp == p);
            (Some(u.clone()), Some(ok))
        }
        None => (None, None),
    };
    let granted = match authorized_fully {
        Some(true) => true,
        Some(false) => false,
        None => opts.anonymous_pull,
    };
    shared.requests.lock().unwrap().push(TokenRequest {
        user: user.clone(),
        scopes: scopes.clone(),
        service,
        granted,
    });
    if !granted {
        let body = json!({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required", "detail": null}]});
        return http::write_response(
            w,
            401,
            "Unauthorized",
            &[
                ("Content-Type", "application/json"),
                ("WWW-Authenticate", "Basic realm=\"regfs-test-token\""),
            ],
            body.to_string().as_bytes(),
        );
    }
    let access = grants(&scopes, authorized_fully == Some(true));
    let token = make_jwt(shared, user.as_deref().unwrap_or(""), &access, opts.expires_in);
    let body = json!({
        "token": token,
        "access_token": token,
        "expires_in": opts.expires_in,
        "issued_at": rfc3339_now(),
    });
    http::write_response(
        w,
        200,
        "OK",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )?;
    w.flush()
}

/// The `access` claim for the requested scopes. Authenticated users get every
/// action asked for; anonymous callers only `pull` (and the catalog).
fn grants(scopes: &[String], full: bool) -> serde_json::Value {
    let mut merged: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for scope in scopes {
        // type[(class)]:name:actions — the name may not contain ':' except a
        // registry host:port prefix, so split the type off the front and the
        // actions off the back.
        let Some((typ, rest)) = scope.split_once(':') else {
            continue;
        };
        let Some((name, actions)) = rest.rsplit_once(':') else {
            continue;
        };
        let typ = typ.split('(').next().unwrap_or(typ).to_string();
        let entry = merged.entry((typ.clone(), name.to_string())).or_default();
        for a in actions.split(',') {
            let allowed = full || a == "pull" || (typ == "registry" && name == "catalog");
            if allowed && !entry.iter().any(|e| e == a) {
                entry.push(a.to_string());
            }
        }
    }
    serde_json::Value::Array(
        merged
            .into_iter()
            .map(|((t, n), a)| json!({"type": t, "name": n, "actions": a}))
            .collect(),
    )
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn rfc3339_now() -> String {
    // Days-from-civil conversion, to avoid a date crate.
    let secs = now() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

fn make_jwt(shared: &Shared, sub: &str, access: &serde_json::Value, expires_in: u64) -> String {
    let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [shared.x5c]});
    let now = now();
    let claims = json!({
        "iss": ISSUER,
        "sub": sub,
        "aud": SERVICE,
        "exp": now + expires_in,
        "nbf": now.saturating_sub(5),
        "iat": now,
        "jti": format!("regfs-test-{}", shared.jti.fetch_add(1, Ordering::SeqCst)),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        pki::base64_url(header.to_string().as_bytes()),
        pki::base64_url(claims.to_string().as_bytes())
    );
    let sig = pki::sign_rs256(&shared.signer.key, signing_input.as_bytes());
    format!("{signing_input}.{}", pki::base64_url(&sig))
}
