//! A fault-injecting HTTP/1.1 proxy on 127.0.0.1 in front of a plain-HTTP
//! registry.
//!
//! Each client request is forwarded on a fresh upstream connection (the
//! client side stays keep-alive). At runtime a test can:
//! - delay every response by N ms ([`FaultProxy::set_delay_ms`]);
//! - answer the next K (matching) requests with a status of its choice
//!   ([`FaultProxy::fail_next`]): 500, 429 (with `Retry-After: 1`), 401 (with
//!   the challenge the registry itself gives for that request), …;
//! - cut the client connection after N bytes of a response body
//!   ([`FaultProxy::cut_next_body`]; only responses whose body is longer than
//!   N are cut, so a rule waits for a large enough response);
//! - emulate `n=`/`last=` pagination of `tags/list` with `Link` headers
//!   ([`FaultProxy::paginate_tags`]), which distribution 2.8 does not do
//!   itself (it ignores `n` there and returns every tag);
//! - lie like a broken registry: accept a request and never answer
//!   ([`FaultProxy::hang_next`]), send the head and then stall the body
//!   ([`FaultProxy::stall_next_body`]), answer 401 with any `WWW-Authenticate`
//!   ([`FaultProxy::challenge_next`]) or point every upstream challenge's realm
//!   elsewhere ([`FaultProxy::rewrite_realm`]), serve listings whose `Link`
//!   never ends or loops ([`FaultProxy::endless_pages`], [`FaultProxy::looping_pages`]),
//!   flip one byte of a response body ([`FaultProxy::flip_next_body`]).
//!
//! [`TcpRelay`] forwards a second loopback address (127.0.0.2, "another host")
//! to a local server such as the token issuer.
//!
//! Every request is counted and logged ([`FaultProxy::requests`]).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::Value;

use super::http::{self, Head};

/// What to do to a matching request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    /// Answer with this status without contacting the registry.
    Status(u16),
    /// Forward, but close the connection after this many body bytes.
    CutBodyAfter(u64),
    /// Read the request, never answer (the connection stays open until the proxy stops).
    Hang,
    /// Forward the response head and this many body bytes, then send nothing more.
    StallBodyAfter(u64),
    /// Answer 401 with this `WWW-Authenticate` value.
    Challenge(String),
    /// Answer a `tags/list` or `_catalog` GET with a made-up page of this many
    /// names whose `Link` always leads to a new page.
    EndlessPages(usize),
    /// Answer a `tags/list` or `_catalog` GET with a made-up page whose `Link`
    /// points at itself (`true`) or, from the second page, back to the first.
    LoopingPages(bool),
    /// Answer a `tags/list` or `_catalog` GET with a made-up page whose `Link`
    /// is this absolute URL prefix (another host) plus the page's path.
    ForeignLinkPage(String),
    /// Forward, with the body byte at this offset XORed with 0x55.
    FlipBodyByte(u64),
}

impl FaultAction {
    /// Applied when the request arrives, without asking the registry.
    fn answers_request(&self) -> bool {
        !matches!(
            self,
            FaultAction::CutBodyAfter(_) | FaultAction::StallBodyAfter(_) | FaultAction::FlipBodyByte(_)
        )
    }
}

/// Which requests a fault applies to.
#[derive(Debug, Clone, Default)]
pub struct Match {
    /// `GET`, `HEAD`, … (None: any).
    pub method: Option<String>,
    /// Substring of the request target (None: any), e.g. `/blobs/`.
    pub path_contains: Option<String>,
}

impl Match {
    pub fn any() -> Match {
        Match::default()
    }
    pub fn path(s: &str) -> Match {
        Match {
            method: None,
            path_contains: Some(s.to_string()),
        }
    }
    pub fn method_path(m: &str, s: &str) -> Match {
        Match {
            method: Some(m.to_string()),
            path_contains: Some(s.to_string()),
        }
    }
    fn matches(&self, head: &Head) -> bool {
        self.method
            .as_deref()
            .map(|m| m.eq_ignore_ascii_case(head.method()))
            .unwrap_or(true)
            && self
                .path_contains
                .as_deref()
                .map(|p| head.target().contains(p))
                .unwrap_or(true)
    }
}

#[derive(Debug, Clone)]
struct Rule {
    action: FaultAction,
    remaining: u32,
    matcher: Match,
}

/// One request as seen by the proxy.
#[derive(Debug, Clone)]
pub struct ProxiedRequest {
    pub method: String,
    pub target: String,
    pub range: Option<String>,
    pub authorization: bool,
    /// Status sent to the client (0 if the upstream failed).
    pub status: u16,
    /// The fault applied, if any.
    pub fault: Option<FaultAction>,
    /// Response body bytes sent to the client so far (counted as they are
    /// written, so a cut body shows how far it got).
    pub body_bytes: u64,
    /// The response is over: sent whole, cut, stalled or failed.
    pub done: bool,
}

impl ProxiedRequest {
    /// The `Range: bytes=FIRST-LAST` asked for, as `(first, Some(last))`
    /// (`bytes=FIRST-` gives `(first, None)`); panics on any other form, so a
    /// test never passes on a header it did not understand.
    pub fn byte_range(&self) -> Option<(u64, Option<u64>)> {
        let r = self.range.as_deref()?;
        let spec = r
            .strip_prefix("bytes=")
            .unwrap_or_else(|| panic!("Range without bytes=: {r:?}"));
        let (a, b) = spec
            .split_once('-')
            .unwrap_or_else(|| panic!("Range without '-': {r:?}"));
        let first = a.parse().unwrap_or_else(|_| panic!("Range start in {r:?}"));
        let last = (!b.is_empty()).then(|| b.parse().unwrap_or_else(|_| panic!("Range end in {r:?}")));
        Some((first, last))
    }

    /// A blob GET (`/v2/<name>/blobs/<digest>`).
    pub fn is_blob_get(&self) -> bool {
        self.method == "GET" && self.target.contains("/blobs/sha256:")
    }
}

struct Shared {
    upstream: String,
    delay_ms: AtomicU64,
    rules: Mutex<Vec<Rule>>,
    count: AtomicU64,
    log: Mutex<Vec<ProxiedRequest>>,
    paginate_tags: AtomicBool,
    tag_page_max: AtomicUsize,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
    realm_rewrite: Mutex<Option<String>>,
    /// Headers added to every forwarded response (e.g. `RateLimit-Remaining`).
    extra_headers: Mutex<Vec<(String, String)>>,
}

/// A running proxy; stops and closes its connections on drop.
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Proxies to `upstream` = `host:port` of a plain-HTTP registry.
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            delay_ms: AtomicU64::new(0),
            rules: Mutex::new(Vec::new()),
            count: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            paginate_tags: AtomicBool::new(false),
            tag_page_max: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            realm_rewrite: Mutex::new(None),
            extra_headers: Mutex::new(Vec::new()),
        });
        let s2 = shared.clone();
        thread::Builder::new()
            .name(format!("fault-proxy-{port}"))
            .spawn(move || {
                for conn in listener.incoming() {
                    if s2.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    // Small answers (synthetic pages, faults) go out at once,
                    // not after a delayed ACK: thousands of pages stay fast.
                    let _ = conn.set_nodelay(true);
                    if let Ok(c) = conn.try_clone() {
                        s2.conns.lock().unwrap().push(c);
                    }
                    let s3 = s2.clone();
                    thread::spawn(move || {
                        let _ = serve_client(&s3, conn);
                    });
                }
            })
            .unwrap();
        FaultProxy { port, shared }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Add `name: value` to every response forwarded from now on, the way
    /// hosted registries add `RateLimit-Limit` / `RateLimit-Remaining`.
    pub fn add_response_header(&self, name: &str, value: &str) {
        self.shared
            .extra_headers
            .lock()
            .unwrap()
            .push((name.to_string(), value.to_string()));
    }

    /// Delays every response (before its first byte) by `ms`.
    pub fn set_delay_ms(&self, ms: u64) {
        self.shared.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Answers the next `k` requests matching `m` with `status`.
    pub fn fail_next(&self, k: u32, status: u16, m: Match) {
        self.add_rule(FaultAction::Status(status), k, m);
    }

    /// Cuts the next `k` matching responses whose body exceeds `after_bytes`
    /// after `after_bytes` body bytes.
    pub fn cut_next_body(&self, k: u32, after_bytes: u64, m: Match) {
        self.add_rule(FaultAction::CutBodyAfter(after_bytes), k, m);
    }

    /// The next `k` matching requests are read and never answered.
    pub fn hang_next(&self, k: u32, m: Match) {
        self.add_rule(FaultAction::Hang, k, m);
    }

    /// The next `k` matching responses with a body longer than `at` get the
    /// body byte at offset `at` flipped (a registry serving damaged bytes).
    pub fn flip_next_body(&self, k: u32, at: u64, m: Match) {
        self.add_rule(FaultAction::FlipBodyByte(at), k, m);
    }

    /// The next `k` matching responses send their head and `after_bytes` body
    /// bytes, then stall (the connection stays open, nothing more comes).
    pub fn stall_next_body(&self, k: u32, after_bytes: u64, m: Match) {
        self.add_rule(FaultAction::StallBodyAfter(after_bytes), k, m);
    }

    /// Answers the next `k` matching requests with 401 and this `WWW-Authenticate`.
    pub fn challenge_next(&self, k: u32, www_authenticate: &str, m: Match) {
        self.add_rule(FaultAction::Challenge(www_authenticate.to_string()), k, m);
    }

    /// Answers the next `k` matching listing GETs (`tags/list`, `_catalog`) with
    /// made-up pages of `per_page` names, each linking to a new page.
    pub fn endless_pages(&self, k: u32, per_page: usize, m: Match) {
        self.add_rule(FaultAction::EndlessPages(per_page), k, m);
    }

    /// Answers the next `k` matching listing GETs with made-up pages whose
    /// `Link` points at the page itself (`to_self`) or back to the first page.
    pub fn looping_pages(&self, k: u32, to_self: bool, m: Match) {
        self.add_rule(FaultAction::LoopingPages(to_self), k, m);
    }

    /// Answers the next `k` matching listing GETs with a made-up page whose
    /// `Link` is absolute, to `origin` (e.g. `http://127.0.0.2:PORT`).
    pub fn foreign_link_pages(&self, k: u32, origin: &str, m: Match) {
        self.add_rule(FaultAction::ForeignLinkPage(origin.to_string()), k, m);
    }

    /// Replaces the `realm` of every challenge the registry sends (401 answers
    /// passed through, and those of [`FaultProxy::fail_next`]) with `realm`.
    pub fn rewrite_realm(&self, realm: Option<&str>) {
        *self.shared.realm_rewrite.lock().unwrap() = realm.map(String::from);
    }

    fn add_rule(&self, action: FaultAction, remaining: u32, matcher: Match) {
        self.shared.rules.lock().unwrap().push(Rule {
            action,
            remaining,
            matcher,
        });
    }

    /// Drops every pending fault rule.
    pub fn clear_faults(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    /// How many injected faults are still pending (sum of remaining counts).
    pub fn pending_faults(&self) -> u32 {
        self.shared.rules.lock().unwrap().iter().map(|r| r.remaining).sum()
    }

    /// Turns `tags/list` pagination emulation on or off.
    pub fn paginate_tags(&self, on: bool) {
        self.shared.paginate_tags.store(on, Ordering::SeqCst);
    }

    /// With tag pagination on, serve at most `max` tags per page even when
    /// `n` is larger (short pages that still carry a `Link`); 0 = no cap.
    pub fn set_tag_page_max(&self, max: usize) {
        self.shared.tag_page_max.store(max, Ordering::SeqCst);
    }

    /// Number of requests received from clients (faulted ones included).
    pub fn request_count(&self) -> u64 {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// Every request so far, in completion order.
    pub fn requests(&self) -> Vec<ProxiedRequest> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Waits (up to `limit`) until every request logged so far has its
    /// response over, so byte counts are final; returns whether they are.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        super::wait_until(limit, || self.shared.log.lock().unwrap().iter().all(|r| r.done))
    }

    /// Closes every client connection currently open (keeps listening).
    pub fn drop_connections(&self) {
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        self.drop_connections();
    }
}

/// Takes a rule for `head` applied at request time (all but body rules).
fn take_request_rule(shared: &Shared, head: &Head) -> Option<FaultAction> {
    let mut rules = shared.rules.lock().unwrap();
    for r in rules.iter_mut() {
        if r.remaining > 0 && r.matcher.matches(head) && r.action.answers_request() {
            r.remaining -= 1;
            return Some(r.action.clone());
        }
    }
    None
}

/// Takes a cut or stall rule for a response of `body_len` bytes to `head`.
fn take_body_rule(shared: &Shared, head: &Head, body_len: Option<u64>) -> Option<FaultAction> {
    let mut rules = shared.rules.lock().unwrap();
    for r in rules.iter_mut() {
        if r.remaining > 0 && r.matcher.matches(head) {
            if let FaultAction::CutBodyAfter(n) | FaultAction::StallBodyAfter(n) | FaultAction::FlipBodyByte(n) =
                r.action
            {
                // Unknown length (chunked / until EOF): cut as well.
                if body_len.map(|l| l > n).unwrap_or(true) {
                    r.remaining -= 1;
                    return Some(r.action.clone());
                }
            }
        }
    }
    None
}

/// Holds a connection open without a word until the proxy stops.
fn hold_until_stopped(shared: &Shared) {
    while !shared.stop.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(100));
    }
}

fn serve_client(shared: &Shared, client: TcpStream) -> io::Result<()> {
    let mut reader = http::buffered(&client)?;
    let mut out = client.try_clone()?;
    loop {
        let Some(mut head) = http::read_head(&mut reader)? else {
            return Ok(());
        };
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        shared.count.fetch_add(1, Ordering::SeqCst);
        if head
            .header("expect")
            .map(|v| v.eq_ignore_ascii_case("100-continue"))
            .unwrap_or(false)
        {
            head.remove_header("expect");
            out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let client_close = head
            .header("connection")
            .map(|v| v.eq_ignore_ascii_case("close"))
            .unwrap_or(false);
        let mut record = ProxiedRequest {
            method: head.method().to_string(),
            target: head.target().to_string(),
            range: head.header("range").map(String::from),
            authorization: head.header("authorization").is_some(),
            status: 0,
            fault: None,
            body_bytes: 0,
            done: false,
        };

        if let Some(action) = take_request_rule(shared, &head) {
            let _ = http::read_body(&mut reader, &head, false)?;
            record.status = match &action {
                FaultAction::Status(s) => *s,
                FaultAction::Challenge(_) => 401,
                FaultAction::Hang => 0,
                _ => 200,
            };
            record.fault = Some(action.clone());
            record.done = !matches!(action, FaultAction::Hang);
            shared.log.lock().unwrap().push(record);
            sleep_delay(shared);
            match action {
                FaultAction::Status(status) => write_fault(shared, &head, &mut out, status, None)?,
                FaultAction::Challenge(c) => write_fault(shared, &head, &mut out, 401, Some(&c))?,
                FaultAction::Hang => {
                    hold_until_stopped(shared);
                    return Ok(());
                }
                FaultAction::EndlessPages(n) => write_page(&head, &mut out, PageKind::Endless(n))?,
                FaultAction::LoopingPages(to_self) => write_page(&head, &mut out, PageKind::Looping(to_self))?,
                FaultAction::ForeignLinkPage(origin) => write_page(&head, &mut out, PageKind::Foreign(origin))?,
                FaultAction::CutBodyAfter(_) | FaultAction::StallBodyAfter(_) | FaultAction::FlipBodyByte(_) => {
                    unreachable!("body rules")
                }
            }
            if client_close {
                return Ok(());
            }
            continue;
        }

        // Logged before anything is answered, so a client that got its
        // response always finds its request in the log.
        let idx = {
            let mut log = shared.log.lock().unwrap();
            log.push(record);
            log.len() - 1
        };
        let keep_alive = forward(shared, &head, &mut reader, &mut out, idx);
        if let Some(r) = shared.log.lock().unwrap().get_mut(idx) {
            r.done = true;
        }
        match keep_alive {
            Ok(true) if !client_close => continue,
            Ok(_) => {
                let _ = out.flush();
                let _ = client.shutdown(Shutdown::Both);
                return Ok(());
            }
            Err(e) => {
                let _ = client.shutdown(Shutdown::Both);
                return Err(e);
            }
        }
    }
}

fn sleep_delay(shared: &Shared) {
    let ms = shared.delay_ms.load(Ordering::SeqCst);
    if ms > 0 {
        thread::sleep(Duration::from_millis(ms));
    }
}

/// Answers `status` with a registry error body; a 401 carries `challenge`, or
/// the registry's own challenge for the request.
fn write_fault(
    shared: &Shared,
    head: &Head,
    out: &mut TcpStream,
    status: u16,
    challenge: Option<&str>,
) -> io::Result<()> {
    let (reason, code) = match status {
        401 => ("Unauthorized", "UNAUTHORIZED"),
        403 => ("Forbidden", "DENIED"),
        404 => ("Not Found", "NAME_UNKNOWN"),
        429 => ("Too Many Requests", "TOOMANYREQUESTS"),
        500 => ("Internal Server Error", "UNKNOWN"),
        502 => ("Bad Gateway", "UNKNOWN"),
        503 => ("Service Unavailable", "UNAVAILABLE"),
        _ => ("Error", "UNKNOWN"),
    };
    let body = format!(
        "{{\"errors\":[{{\"code\":\"{code}\",\"message\":\"injected by the regfs test fault proxy\",\"detail\":null}}]}}\n"
    );
    let mut headers: Vec<(&str, String)> = vec![
        ("Content-Type", "application/json".into()),
        ("Docker-Distribution-Api-Version", "registry/2.0".into()),
    ];
    if status == 429 || status == 503 {
        headers.push(("Retry-After", "1".into()));
    }
    if status == 401 {
        let c = match challenge {
            Some(c) => c.to_string(),
            None => rewrite_challenge(shared, &upstream_challenge(shared, head)),
        };
        headers.push(("WWW-Authenticate", c));
    }
    let hdrs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    http::write_response(out, status, reason, &hdrs, body.as_bytes())
}

/// The challenge the registry itself gives for this request without
/// credentials (same method and target, so a Bearer challenge carries the
/// right `scope`), or a Basic one when the registry has no auth.
fn upstream_challenge(shared: &Shared, head: &Head) -> String {
    let fetched = (|| -> io::Result<Option<String>> {
        let mut up = TcpStream::connect(&shared.upstream)?;
        up.set_read_timeout(Some(Duration::from_secs(10)))?;
        let method = head.method();
        let len = if method == "GET" || method == "HEAD" {
            ""
        } else {
            "Content-Length: 0\r\n"
        };
        write!(
            up,
            "{method} {} HTTP/1.1\r\nHost: {}\r\n{len}Connection: close\r\n\r\n",
            head.target(),
            head.header("host").unwrap_or(&shared.upstream)
        )?;
        let mut r = BufReader::new(up);
        let head = http::read_head(&mut r)?;
        Ok(head.and_then(|h| h.header("www-authenticate").map(String::from)))
    })()
    .ok()
    .flatten();
    fetched.unwrap_or_else(|| "Basic realm=\"regfs-fault-proxy\"".to_string())
}

/// Forwards one request and its response. `Ok(true)` if the client
/// connection can carry another request.
fn forward(
    shared: &Shared,
    head: &Head,
    reader: &mut BufReader<TcpStream>,
    out: &mut TcpStream,
    idx: usize,
) -> io::Result<bool> {
    let set = |f: &dyn Fn(&mut ProxiedRequest)| {
        if let Some(r) = shared.log.lock().unwrap().get_mut(idx) {
            f(r);
        }
    };
    let upstream = match TcpStream::connect(&shared.upstream) {
        Ok(s) => s,
        Err(_) => {
            // Registry down: consume the request and answer 502 like a gateway.
            let _ = http::read_body(reader, head, false);
            set(&|r| r.status = 502);
            http::write_response(out, 502, "Bad Gateway", &[], b"upstream unreachable\n")?;
            return Ok(true);
        }
    };
    upstream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut up_w = upstream.try_clone()?;
    let mut up_r = BufReader::with_capacity(64 * 1024, upstream);

    // Request head + body.
    let mut fwd = head.clone();
    fwd.set_header("Connection", "close");
    up_w.write_all(&fwd.to_bytes())?;
    if head.is_chunked() {
        http::copy_chunked(reader, &mut up_w, None)?;
    } else if let Some(n) = head.content_length() {
        let copied = io::copy(&mut reader.by_ref().take(n), &mut up_w)?;
        if copied != n {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short request body"));
        }
    }
    up_w.flush()?;

    // Response head (skipping interim 1xx responses).
    let mut resp = loop {
        let Some(h) = http::read_head(&mut up_r)? else {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "upstream closed"));
        };
        if (100..200).contains(&h.status()) && h.status() != 101 {
            continue;
        }
        break h;
    };
    let status = resp.status();
    set(&|r| r.status = status);
    if status == 401 {
        if let Some(c) = resp.header("www-authenticate").map(String::from) {
            resp.set_header("WWW-Authenticate", &rewrite_challenge(shared, &c));
        }
    }
    resp.remove_header("Connection");
    resp.remove_header("Keep-Alive");

    let no_body = head.method().eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&resp.status())
        || resp.status() == 204
        || resp.status() == 304;

    // Tag pagination emulation rewrites the whole body.
    if !no_body
        && resp.status() == 200
        && shared.paginate_tags.load(Ordering::SeqCst)
        && head.method().eq_ignore_ascii_case("GET")
        && http::split_target(head.target()).0.ends_with("/tags/list")
    {
        let body = http::read_body(&mut up_r, &resp, true)?;
        let cap = shared.tag_page_max.load(Ordering::SeqCst);
        let (new_body, link) = paginate(head.target(), &body, cap);
        resp.remove_header("Transfer-Encoding");
        resp.set_header("Content-Length", &new_body.len().to_string());
        if let Some(l) = link {
            resp.set_header("Link", &l);
        }
        sleep_delay(shared);
        out.write_all(&resp.to_bytes())?;
        out.write_all(&new_body)?;
        out.flush()?;
        set(&|r| r.body_bytes = new_body.len() as u64);
        return Ok(true);
    }

    let body_len = if no_body {
        Some(0)
    } else if resp.is_chunked() {
        None
    } else {
        resp.content_length()
    };
    let until_eof = !no_body && !resp.is_chunked() && resp.content_length().is_none();
    if until_eof {
        resp.set_header("Connection", "close");
    }
    let rule = if no_body {
        None
    } else {
        take_body_rule(shared, head, body_len)
    };
    if let Some(action) = &rule {
        set(&|r| r.fault = Some(action.clone()));
    }
    let (cut, stall) = match rule {
        Some(FaultAction::CutBodyAfter(n)) => (Some(n), false),
        Some(FaultAction::StallBodyAfter(n)) => (Some(n), true),
        _ => (None, false),
    };
    let flip = match rule {
        Some(FaultAction::FlipBodyByte(n)) => Some(n),
        _ => None,
    };
    for (k, v) in shared.extra_headers.lock().unwrap().iter() {
        resp.set_header(k, v);
    }

    sleep_delay(shared);
    out.write_all(&resp.to_bytes())?;
    if no_body {
        out.flush()?;
        return Ok(true);
    }
    let mut w = CutWriter {
        inner: &mut *out,
        remaining: cut,
        shared,
        idx,
        flip,
        written: 0,
    };
    let result = if resp.is_chunked() {
        http::copy_chunked(&mut up_r, &mut w, None)
    } else if let Some(n) = resp.content_length() {
        io::copy(&mut (&mut up_r).take(n), &mut w).map(|_| ())
    } else {
        io::copy(&mut up_r, &mut w).map(|_| ())
    };
    match result {
        Ok(()) => {
            out.flush()?;
            Ok(!until_eof)
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionAborted && stall => {
            // The injected stall: the client has its bytes, and nothing more comes.
            let _ = out.flush();
            set(&|r| r.done = true);
            hold_until_stopped(shared);
            Ok(false)
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionAborted && cut.is_some() => {
            // The injected cut: close the client connection mid-body.
            let _ = out.flush();
            let _ = out.shutdown(Shutdown::Both);
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// A writer that fails with `ConnectionAborted` once `remaining` bytes went
/// through, counts what it sent in the request's log entry, and flips the
/// byte at offset `flip` of what it writes.
struct CutWriter<'a> {
    inner: &'a mut TcpStream,
    remaining: Option<u64>,
    shared: &'a Shared,
    idx: usize,
    flip: Option<u64>,
    written: u64,
}

impl Write for CutWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(at) = self.flip {
            if (self.written..self.written + buf.len() as u64).contains(&at) {
                let mut copy = buf.to_vec();
                copy[(at - self.written) as usize] ^= 0x55;
                self.flip = None;
                self.inner.write_all(&copy)?;
                self.written += buf.len() as u64;
                if let Some(r) = self.shared.log.lock().unwrap().get_mut(self.idx) {
                    r.body_bytes += buf.len() as u64;
                }
                return Ok(buf.len());
            }
        }
        let written = match self.remaining {
            None => self.inner.write(buf)?,
            Some(0) => return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "injected cut")),
            Some(r) => {
                let n = (buf.len() as u64).min(r) as usize;
                let written = self.inner.write(&buf[..n])?;
                self.remaining = Some(r - written as u64);
                written
            }
        };
        self.written += written as u64;
        if let Some(r) = self.shared.log.lock().unwrap().get_mut(self.idx) {
            r.body_bytes += written as u64;
        }
        Ok(written)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `realm="…"` of a challenge replaced by the configured rewrite, if any.
fn rewrite_challenge(shared: &Shared, challenge: &str) -> String {
    let Some(realm) = shared.realm_rewrite.lock().unwrap().clone() else {
        return challenge.to_string();
    };
    let lower = challenge.to_ascii_lowercase();
    let Some(start) = lower.find("realm=\"") else {
        return challenge.to_string();
    };
    let value_start = start + "realm=\"".len();
    let Some(len) = challenge[value_start..].find('"') else {
        return challenge.to_string();
    };
    format!(
        "{}{realm}{}",
        &challenge[..value_start],
        &challenge[value_start + len..]
    )
}

enum PageKind {
    /// This many names, `Link` to a page never seen before.
    Endless(usize),
    /// `Link` to this page itself (`true`) or to the first page.
    Looping(bool),
    /// An absolute `Link` to this origin.
    Foreign(String),
}

/// A made-up `tags/list` or `_catalog` page with a `Link` that never ends.
fn write_page(head: &Head, out: &mut TcpStream, kind: PageKind) -> io::Result<()> {
    let (path, query) = http::split_target(head.target());
    let get = |k: &str| query.iter().find(|(qk, _)| qk == k).map(|(_, v)| v.clone());
    let n = get("n").unwrap_or_else(|| "100".into());
    // Pages are numbered by `last=p<number>`; the first page has no `last`.
    let page: u64 = get("last")
        .and_then(|l| l.strip_prefix('p').and_then(|x| x.split('-').next().map(String::from)))
        .and_then(|x| x.parse().ok())
        .map(|p: u64| p + 1)
        .unwrap_or(0);
    let (names, next_last) = match kind {
        PageKind::Endless(per_page) => {
            // Long valid names (tags allow 128 characters) so memory shows.
            let names: Vec<String> = (0..per_page).map(|i| format!("p{page}-{i:0>100}")).collect();
            let last = names.last().cloned().unwrap_or_else(|| format!("p{page}-"));
            (names, Some(last))
        }
        PageKind::Foreign(_) => (vec![format!("p{page}-a")], Some(format!("p{page}-a"))),
        PageKind::Looping(to_self) => {
            let names = vec![format!("p{page}-a"), format!("p{page}-b")];
            let next = if to_self {
                get("last")
            } else if page == 0 {
                Some(format!("p{page}-b"))
            } else {
                None // back to the first page
            };
            (names, next)
        }
    };
    let body = if path.ends_with("/_catalog") {
        serde_json::json!({ "repositories": names })
    } else {
        let repo = path.trim_start_matches("/v2/").trim_end_matches("/tags/list");
        serde_json::json!({ "name": repo, "tags": names })
    };
    let origin = match &kind {
        PageKind::Foreign(o) => o.as_str(),
        _ => "",
    };
    let mut link = format!("<{origin}{path}?n={n}");
    if let Some(l) = next_last {
        link.push_str(&format!("&last={}", http::percent_encode(&l)));
    }
    link.push_str(">; rel=\"next\"");
    http::write_response(
        out,
        200,
        "OK",
        &[("Content-Type", "application/json"), ("Link", &link)],
        body.to_string().as_bytes(),
    )
}

/// Applies `n`/`last` to a tags/list body (tags sorted, as distribution 3
/// does); returns the new body and `Link`. `cap` > 0 limits a page below `n`.
fn paginate(target: &str, body: &[u8], cap: usize) -> (Vec<u8>, Option<String>) {
    let (path, query) = http::split_target(target);
    let get = |k: &str| query.iter().find(|(qk, _)| qk == k).map(|(_, v)| v.clone());
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return (body.to_vec(), None);
    };
    let Some(n) = get("n").and_then(|n| n.parse::<usize>().ok()) else {
        return (body.to_vec(), None);
    };
    let last = get("last");
    let mut tags: Vec<String> = v
        .get("tags")
        .and_then(|t| t.as_array())
        .map(|a| a.iter().filter_map(|t| t.as_str().map(String::from)).collect())
        .unwrap_or_default();
    tags.sort();
    let rest: Vec<String> = tags
        .into_iter()
        .filter(|t| last.as_deref().map(|l| t.as_str() > l).unwrap_or(true))
        .collect();
    let take = if cap > 0 { n.min(cap) } else { n };
    let page: Vec<String> = rest.iter().take(take).cloned().collect();
    let link = (rest.len() > take && take > 0).then(|| {
        format!(
            "<{path}?last={}&n={n}>; rel=\"next\"",
            http::percent_encode(page.last().unwrap())
        )
    });
    v["tags"] = Value::from(page);
    (serde_json::to_vec(&v).unwrap(), link)
}

/// Reads a response fully from a raw stream (head + body), for tests of the proxy.
pub fn read_response<R: BufRead>(r: &mut R) -> io::Result<(Head, Vec<u8>)> {
    let head = http::read_head(r)?.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no response"))?;
    let body = http::read_body(r, &head, true)?;
    Ok((head, body))
}

/// Forwards TCP connections from `ip`:port to `target` (`host:port`), so a
/// server on 127.0.0.1 is also reachable as another host (127.0.0.2 is a
/// different address of the same loopback interface). Stops on drop.
pub struct TcpRelay {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
}

impl TcpRelay {
    pub fn start(ip: &str, target: &str) -> TcpRelay {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, target) = (stop.clone(), target.to_string());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let (Ok(client), Ok(server)) = (conn, TcpStream::connect(&target)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    thread::spawn(move || {
                        let _ = io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        TcpRelay { addr, stop }
    }

    /// `ip:port` the relay listens on.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}
