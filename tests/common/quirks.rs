//! A proxy in front of a plain-HTTP registry that behaves like a big hosted
//! registry, one habit at a time ([`Quirk`]), reproduced from their public
//! documentation and issue trackers:
//!
//! - [`Quirk::DockerHub`]: every request needs a Bearer token from a realm on
//!   another host (`127.0.0.2`) with `service=registry.docker.io`; `_catalog`
//!   is refused even with a token; manifest answers carry
//!   `RateLimit-Limit: 100;w=21600` and `RateLimit-Remaining: N;w=21600`, and
//!   only manifest GETs use up the limit (HEADs are free).
//! - [`Quirk::Ghcr`]: an anonymous Bearer token is needed even for public
//!   images; a manifest GET for an index whose `Accept` lists no index type is
//!   answered 404 (`OCI index found, but accept header does not support OCI indexes`).
//! - [`Quirk::Ecr`]: `WWW-Authenticate: Basic realm=…,service="ecr.amazonaws.com"`.
//! - [`Quirk::Quay`]: tag lists in pages of 2 with a relative `Link` carrying an
//!   opaque `next_page` token (no `last=`), whatever `n` asks.
//! - [`Quirk::Delete405`]: DELETE answered 405 with no error body.
//! - [`Quirk::RedirectBlobs`]: blob GETs answered 307 to a "CDN" on another
//!   host (`127.0.0.2`) that serves `Range` and records whether it was sent an
//!   `Authorization` header.
//!
//! Requests and token requests are recorded for assertions.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use base64::Engine;

use super::http::{self, Head};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quirk {
    DockerHub,
    Ghcr,
    Ecr,
    Quay,
    Delete405,
    RedirectBlobs,
}

/// One request as the proxy (or its token realm / CDN) saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub target: String,
    pub authorization: Option<String>,
    pub range: Option<String>,
    pub accept: Option<String>,
    pub status: u16,
}

/// The Docker Hub limit the proxy starts from.
pub const RATE_LIMIT: u64 = 100;
pub const RATE_WINDOW: u64 = 21600;
pub const ECR_USER: &str = "AWS";
pub const ECR_PASSWORD: &str = "ecr-token-password";

struct Shared {
    quirk: Quirk,
    upstream: String,
    /// `host:port` of the token realm / CDN listener (on 127.0.0.2).
    side: String,
    tokens: Mutex<Vec<String>>,
    remaining: AtomicU64,
    pages: Mutex<HashMap<String, (String, usize)>>,
    seen: Mutex<Vec<SeenRequest>>,
    side_seen: Mutex<Vec<SeenRequest>>,
    next_id: AtomicU64,
    stop: AtomicBool,
}

pub struct QuirkProxy {
    port: u16,
    shared: Arc<Shared>,
}

impl QuirkProxy {
    /// Proxies to `upstream` (`host:port` of a plain-HTTP registry).
    pub fn start(upstream: &str, quirk: Quirk) -> QuirkProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let side = TcpListener::bind("127.0.0.2:0").expect("binding 127.0.0.2 (loopback)");
        let shared = Arc::new(Shared {
            quirk,
            upstream: upstream.to_string(),
            side: side.local_addr().unwrap().to_string(),
            tokens: Mutex::new(Vec::new()),
            remaining: AtomicU64::new(RATE_LIMIT),
            pages: Mutex::new(HashMap::new()),
            seen: Mutex::new(Vec::new()),
            side_seen: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            stop: AtomicBool::new(false),
        });
        for (l, is_side) in [(listener, false), (side, true)] {
            let s = shared.clone();
            thread::spawn(move || {
                for conn in l.incoming() {
                    if s.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let s2 = s.clone();
                    thread::spawn(move || {
                        let _ = serve(&s2, conn, is_side);
                    });
                }
            });
        }
        QuirkProxy { port, shared }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests to the registry side, in order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Requests to the token realm or the CDN (the other host), in order.
    pub fn side_requests(&self) -> Vec<SeenRequest> {
        self.shared.side_seen.lock().unwrap().clone()
    }

    /// What Docker Hub would say is left of the pull limit.
    pub fn rate_remaining(&self) -> u64 {
        self.shared.remaining.load(Ordering::SeqCst)
    }
}

impl Drop for QuirkProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        let _ = TcpStream::connect(&self.shared.side);
    }
}

/// An answer to send back: status, headers, body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn new(status: u16, headers: &[(&str, String)], body: &[u8]) -> Answer {
        Answer {
            status,
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            body: body.to_vec(),
        }
    }
    fn error(status: u16, code: &str, message: &str) -> Answer {
        let body = format!(r#"{{"errors":[{{"code":"{code}","message":"{message}"}}]}}"#);
        Answer::new(status, &[("Content-Type", "application/json".into())], body.as_bytes())
    }
}

fn serve(s: &Shared, conn: TcpStream, is_side: bool) -> io::Result<()> {
    let mut reader = http::buffered(&conn)?;
    let mut out = conn.try_clone()?;
    while let Some(head) = http::read_head(&mut reader)? {
        let body = http::read_body(&mut reader, &head, false)?;
        let answer = if is_side {
            side(s, &head)
        } else {
            registry(s, &head, &body)?
        };
        let seen = SeenRequest {
            method: head.method().to_string(),
            target: head.target().to_string(),
            authorization: head.header("authorization").map(str::to_string),
            range: head.header("range").map(str::to_string),
            accept: head.header("accept").map(str::to_string),
            status: answer.status,
        };
        if is_side { &s.side_seen } else { &s.seen }.lock().unwrap().push(seen);
        let mut h = Head {
            start_line: format!("HTTP/1.1 {} X", answer.status),
            headers: answer.headers,
        };
        if head.method() != "HEAD" || h.header("content-length").is_none() {
            h.set_header("Content-Length", &answer.body.len().to_string());
        }
        out.write_all(&h.to_bytes())?;
        if head.method() != "HEAD" {
            out.write_all(&answer.body)?;
        }
        out.flush()?;
    }
    Ok(())
}

/// Sends `head` + `body` to the upstream registry; returns its answer.
fn forward(s: &Shared, head: &Head, body: &[u8]) -> io::Result<Answer> {
    let up = TcpStream::connect(&s.upstream)?;
    let mut h = head.clone();
    h.set_header("Host", &s.upstream);
    h.set_header("Connection", "close");
    h.remove_header("authorization");
    let mut w = up.try_clone()?;
    w.write_all(&h.to_bytes())?;
    w.write_all(body)?;
    let mut r = http::buffered(&up)?;
    let resp = http::read_head(&mut r)?.ok_or_else(|| io::Error::other("no upstream answer"))?;
    let body = if head.method() == "HEAD" {
        Vec::new()
    } else {
        http::read_body(&mut r, &resp, true)?
    };
    let headers = resp
        .headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("content-length") && !k.eq_ignore_ascii_case("transfer-encoding"))
        .cloned()
        .collect();
    let mut a = Answer {
        status: resp.status(),
        headers,
        body,
    };
    if head.method() == "HEAD" {
        if let Some(n) = resp.content_length() {
            // A HEAD answer keeps the upstream length (no body is sent).
            a.headers.push(("Content-Length".into(), n.to_string()));
        }
    }
    Ok(a)
}

fn bearer_ok(s: &Shared, head: &Head) -> bool {
    let tokens = s.tokens.lock().unwrap();
    head.header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .is_some_and(|t| tokens.iter().any(|k| k == t))
}

fn repo_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/")?;
    ["/manifests/", "/blobs/", "/tags/list", "/referrers/"]
        .iter()
        .find_map(|k| rest.find(k).map(|i| &rest[..i]))
}

fn registry(s: &Shared, head: &Head, body: &[u8]) -> io::Result<Answer> {
    let (path, query) = http::split_target(head.target());
    let service = match s.quirk {
        Quirk::DockerHub => "registry.docker.io",
        _ => "ghcr.io",
    };
    if matches!(s.quirk, Quirk::DockerHub | Quirk::Ghcr | Quirk::RedirectBlobs) && !bearer_ok(s, head) {
        let mut challenge = format!(r#"Bearer realm="http://{}/token",service="{service}""#, s.side);
        if let Some(repo) = repo_of(&path) {
            challenge.push_str(&format!(r#",scope="repository:{repo}:pull""#));
        }
        return Ok(Answer::new(
            401,
            &[
                ("WWW-Authenticate", challenge),
                ("Content-Type", "application/json".into()),
            ],
            br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        ));
    }
    if s.quirk == Quirk::Ecr {
        let want = base64::engine::general_purpose::STANDARD.encode(format!("{ECR_USER}:{ECR_PASSWORD}"));
        if head.header("authorization") != Some(&format!("Basic {want}")) {
            return Ok(Answer::new(
                401,
                &[(
                    "WWW-Authenticate",
                    r#"Basic realm="https://127.0.0.1/",service="ecr.amazonaws.com""#.to_string(),
                )],
                b"Not Authorized\n",
            ));
        }
    }
    if s.quirk == Quirk::DockerHub && path.starts_with("/v2/_catalog") {
        return Ok(Answer::error(401, "UNAUTHORIZED", "authentication required"));
    }
    if s.quirk == Quirk::Delete405 && head.method() == "DELETE" {
        return Ok(Answer::new(405, &[], b""));
    }
    if s.quirk == Quirk::Quay && path.ends_with("/tags/list") {
        return quay_tags(s, head, &path, &query);
    }
    if s.quirk == Quirk::RedirectBlobs && head.method() == "GET" && path.contains("/blobs/sha256:") {
        let digest = path.rsplit('/').next().unwrap();
        let repo = repo_of(&path).unwrap();
        let location = format!("http://{}/cdn/{repo}/{digest}?X-Amz-Signature=abc", s.side);
        return Ok(Answer::new(307, &[("Location", location)], b""));
    }
    let mut a = forward(s, head, body)?;
    if s.quirk == Quirk::DockerHub && path.contains("/manifests/") {
        if head.method() == "GET" && a.status == 200 {
            let _ = s
                .remaining
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| r.checked_sub(1));
        }
        let left = s.remaining.load(Ordering::SeqCst);
        a.headers
            .push(("RateLimit-Limit".into(), format!("{RATE_LIMIT};w={RATE_WINDOW}")));
        a.headers
            .push(("RateLimit-Remaining".into(), format!("{left};w={RATE_WINDOW}")));
    }
    if s.quirk == Quirk::Ghcr && head.method() == "GET" && path.contains("/manifests/") {
        let ct = a
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let accept = head.header("accept").unwrap_or("");
        let is_index = ct.contains("index") || ct.contains("manifest.list");
        if is_index && !accept.contains(&ct) {
            return Ok(Answer::error(
                404,
                "MANIFEST_UNKNOWN",
                "OCI index found, but accept header does not support OCI indexes",
            ));
        }
    }
    Ok(a)
}

/// Quay's tag pages: 2 tags a page, `Link: </v2/…/tags/list?n=2&next_page=<opaque>>`.
fn quay_tags(s: &Shared, head: &Head, path: &str, query: &[(String, String)]) -> io::Result<Answer> {
    let repo = repo_of(path).unwrap().to_string();
    let offset = match query.iter().find(|(k, _)| k == "next_page") {
        Some((_, token)) => match s.pages.lock().unwrap().get(token) {
            Some((r, o)) if *r == repo => *o,
            _ => return Ok(Answer::error(400, "PAGINATION_NUMBER_INVALID", "invalid page token")),
        },
        None => 0,
    };
    let mut h = head.clone();
    h.start_line = format!("GET /v2/{repo}/tags/list HTTP/1.1");
    let full = forward(s, &h, &[])?;
    if full.status != 200 {
        return Ok(full);
    }
    let v: serde_json::Value = serde_json::from_slice(&full.body).unwrap();
    let mut tags: Vec<String> = v["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    tags.sort();
    let page: Vec<&String> = tags.iter().skip(offset).take(2).collect();
    let body = serde_json::to_vec(&serde_json::json!({"name": repo, "tags": page})).unwrap();
    let mut headers = vec![("Content-Type", "application/json".to_string())];
    if offset + 2 < tags.len() {
        let token = format!("gAAAAAB{}", s.next_id.fetch_add(1, Ordering::SeqCst) * 7919);
        s.pages
            .lock()
            .unwrap()
            .insert(token.clone(), (repo.clone(), offset + 2));
        headers.push((
            "Link",
            format!(r#"</v2/{repo}/tags/list?n=2&next_page={token}>; rel="next""#),
        ));
    }
    Ok(Answer::new(200, &headers, &body))
}

/// The other host: a token realm and a CDN for redirected blobs.
fn side(s: &Shared, head: &Head) -> Answer {
    let (path, query) = http::split_target(head.target());
    if path == "/token" {
        let service = query.iter().find(|(k, _)| k == "service").map(|(_, v)| v.as_str());
        let want = if s.quirk == Quirk::DockerHub {
            "registry.docker.io"
        } else {
            "ghcr.io"
        };
        if service != Some(want) {
            return Answer::error(400, "DENIED", "wrong service");
        }
        let token = format!("tok{}", s.next_id.fetch_add(1, Ordering::SeqCst));
        s.tokens.lock().unwrap().push(token.clone());
        let body = format!(r#"{{"token":"{token}","access_token":"{token}","expires_in":300}}"#);
        return Answer::new(200, &[("Content-Type", "application/json".into())], body.as_bytes());
    }
    if let Some(rest) = path.strip_prefix("/cdn/") {
        let (repo, digest) = rest.rsplit_once('/').unwrap();
        let mut h = Head {
            start_line: format!("GET /v2/{repo}/blobs/{digest} HTTP/1.1"),
            headers: vec![],
        };
        if let Some(r) = head.header("range") {
            h.set_header("Range", r);
        }
        return match forward(s, &h, &[]) {
            Ok(a) => a,
            Err(e) => Answer::new(502, &[], e.to_string().as_bytes()),
        };
    }
    Answer::new(404, &[], b"")
}
