//! Registry authentication: the `WWW-Authenticate` challenge, then Basic or
//! Bearer. Bearer tokens are cached per scope and refreshed on 401 or expiry.
//! Secrets never reach a log line: only scopes and realms are logged.
//!
//! A challenge is only learned when it is usable (Basic, or Bearer with an
//! absolute http(s) realm): a malformed one fails the request that got it and
//! changes nothing else. A token request that fails forgets the challenge, so
//! the next request learns it afresh from the registry's 401. Credentials go to
//! a token realm on another host than the registry only over HTTPS (or with
//! `--insecure`); the log names every host they are sent to.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::header::HeaderValue;
use tokio::sync::Mutex;

use super::credentials::Credentials;
use super::error::{RegistryError, Result};
use crate::stats::Stats;

/// Tokens are dropped this long before the registry would reject them.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// The token spec's default when the issuer sends no `expires_in`.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

/// What the registry asked for in its `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        /// The scope named in the challenge, if any (used when it differs from ours).
        scope: Option<String>,
    },
}

/// Parse `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
/// `None` for anything unusable: another scheme, or a Bearer challenge whose
/// realm is missing, empty or not an absolute http(s) URL with a host.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let params = parse_auth_params(rest);
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => {
            let realm = params.get("realm")?.trim();
            let url = reqwest::Url::parse(realm).ok()?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
                return None;
            }
            Some(Challenge::Bearer {
                realm: realm.to_string(),
                service: params.get("service").cloned(),
                scope: params.get("scope").cloned(),
            })
        }
        _ => None,
    }
}

/// `key=value` pairs separated by commas; values may be quoted and contain commas.
fn parse_auth_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        out.insert(key, value);
    }
    out
}

struct Token {
    header: HeaderValue,
    expires: Instant,
}

#[derive(Default)]
struct State {
    /// Learned from the last usable 401; `None` while the registry has not
    /// asked for auth, or after a token request with it failed.
    challenge: Option<Challenge>,
    tokens: HashMap<String, Token>,
    /// Token realm hosts credentials were sent to (logged once each).
    credentials_sent_to: HashSet<String>,
}

/// Authentication state shared by every request of one registry client.
pub struct Auth {
    http: reqwest::Client,
    credentials: Option<Credentials>,
    /// The registry's host: credentials go to a realm elsewhere only over HTTPS.
    registry_host: Option<String>,
    insecure: bool,
    state: Mutex<State>,
    stats: Arc<Stats>,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl Auth {
    pub fn new(
        http: reqwest::Client,
        credentials: Option<Credentials>,
        registry: &reqwest::Url,
        insecure: bool,
        stats: Arc<Stats>,
    ) -> Self {
        Auth {
            http,
            credentials,
            registry_host: registry.host_str().map(str::to_ascii_lowercase),
            insecure,
            state: Mutex::new(State::default()),
            stats,
        }
    }

    /// May credentials go to this token realm? Over HTTPS, to the registry's
    /// own host, or with `--insecure`; not in clear text to another host.
    fn may_send_credentials(&self, realm: &reqwest::Url) -> bool {
        let same_host = realm.host_str().map(str::to_ascii_lowercase) == self.registry_host;
        realm.scheme() == "https" || same_host || self.insecure
    }

    pub fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    fn basic_header(&self) -> Option<HeaderValue> {
        let c = self.credentials.as_ref().filter(|c| !c.is_identity_token())?;
        let raw = format!("{}:{}", c.username, c.password());
        let mut v = HeaderValue::from_str(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        ))
        .ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// The `Authorization` header to send for `scope`, if the registry wants one
    /// and we can make it. Fetches a token when none is cached.
    pub async fn header_for(&self, scope: &str) -> Result<Option<HeaderValue>> {
        let mut state = self.state.lock().await;
        match state.challenge.clone() {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.basic_header()),
            Some(Challenge::Bearer { realm, service, .. }) => {
                if let Some(t) = state.tokens.get(scope) {
                    if t.expires > Instant::now() {
                        return Ok(Some(t.header.clone()));
                    }
                }
                match self.fetch_token(&mut state, &realm, service.as_deref(), scope).await {
                    Ok(token) => {
                        let header = token.header.clone();
                        state.tokens.insert(scope.to_string(), token);
                        Ok(Some(header))
                    }
                    Err(e) => {
                        // Learn the challenge again from the registry's next 401
                        // rather than keep asking a realm that failed.
                        tracing::warn!(
                            scope,
                            realm,
                            "token request failed ({e}); the challenge will be learned again"
                        );
                        state.challenge = None;
                        Err(e)
                    }
                }
            }
        }
    }

    /// Handle a 401 to `request`: learn the challenge, drop the stale token for
    /// `scope`. Returns false when retrying cannot help; an unusable challenge
    /// fails only this request and leaves what was learned before as it was.
    pub async fn on_unauthorized(&self, www_authenticate: Option<&str>, scope: &str, request: &str) -> bool {
        let Some(challenge) = www_authenticate.and_then(parse_challenge) else {
            tracing::warn!(
                request,
                scope,
                challenge = www_authenticate.unwrap_or("(none)"),
                "401 with no usable WWW-Authenticate challenge; this request fails"
            );
            return false;
        };
        let mut state = self.state.lock().await;
        state.tokens.remove(scope);
        if challenge == Challenge::Basic && self.credentials.is_none() {
            state.challenge = Some(challenge);
            return false;
        }
        state.challenge = Some(challenge);
        true
    }

    async fn fetch_token(&self, state: &mut State, realm: &str, service: Option<&str>, scope: &str) -> Result<Token> {
        Stats::inc(&self.stats.requests);
        Stats::inc(&self.stats.requests_token);
        let mut url =
            reqwest::Url::parse(realm).map_err(|e| RegistryError::Invalid(format!("token realm {realm:?}: {e}")))?;
        let realm_host = url.host_str().unwrap_or_default().to_string();
        let credentials = match &self.credentials {
            Some(c) if self.may_send_credentials(&url) => {
                if state.credentials_sent_to.insert(realm_host.clone()) {
                    tracing::info!(
                        realm_host,
                        scheme = url.scheme(),
                        "sending credentials to the token realm"
                    );
                }
                Some(c)
            }
            Some(_) => {
                tracing::warn!(
                    realm,
                    "not sending credentials to a token realm on another host over plain HTTP \
                     (use an https realm, or --insecure to allow it); asking anonymously"
                );
                None
            }
            None => None,
        };
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            // Several scopes (a push with a cross-repository mount) are sent as
            // repeated `scope` parameters.
            for s in scope.split(' ').filter(|s| !s.is_empty()) {
                q.append_pair("scope", s);
            }
        }
        let req = match credentials {
            // An identity token (docker login with an IdP) is exchanged with the
            // OAuth2 refresh-token grant, never sent as a password.
            Some(c) if c.is_identity_token() => {
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", c.password()),
                    ("client_id", "regfs"),
                ];
                if let Some(s) = service {
                    form.push(("service", s));
                }
                for s in scope.split(' ').filter(|s| !s.is_empty()) {
                    form.push(("scope", s));
                }
                let mut plain = url.clone();
                plain.set_query(None);
                self.http.post(plain).form(&form)
            }
            Some(_) => {
                let req = self.http.get(url);
                match self.basic_header() {
                    Some(h) => req.header(reqwest::header::AUTHORIZATION, h),
                    None => req,
                }
            }
            None => self.http.get(url),
        };
        let resp = req.timeout(TOKEN_TIMEOUT).send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
            let e = RegistryError::from_status(status, &format!("token for scope {scope:?} from {realm}"), &body);
            return Err(match e {
                // A refused login at the token server is an auth failure whatever its status.
                RegistryError::NotFound(m) | RegistryError::Invalid(m) => RegistryError::Denied(m),
                other => other,
            });
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::Invalid(format!("token response from {realm}: {e}")))?;
        let value = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| RegistryError::Invalid(format!("token response from {realm} has no token")))?;
        let mut header = HeaderValue::from_str(&format!("Bearer {value}"))
            .map_err(|_| RegistryError::Invalid(format!("token from {realm} is not a valid header")))?;
        header.set_sensitive(true);
        let lifetime = parsed
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        tracing::debug!(scope, realm, lifetime = lifetime.as_secs(), "got a registry token");
        Ok(Token {
            header,
            expires: Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into()),
                scope: Some("repository:a/b:pull,push".into()),
            }
        );
    }

    #[test]
    fn basic_and_unknown() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None, "realm is required");
    }

    #[test]
    fn unusable_bearer_realms_are_refused() {
        for bad in [
            "Bearer realm=",
            "Bearer realm=\"\"",
            "Bearer realm=\"  \",service=\"x\"",
            "Bearer realm=\"not a url\"",
            "Bearer realm=\"/relative/token\"",
            "Bearer realm=\"ftp://host/token\"",
            "Bearer realm=\"file:///etc/passwd\"",
            "Bearer",
            "%%garbage%% ,,=",
            "",
        ] {
            assert_eq!(parse_challenge(bad), None, "{bad:?}");
        }
    }

    fn auth_for(registry: &str, insecure: bool) -> Auth {
        Auth::new(
            reqwest::Client::new(),
            None,
            &reqwest::Url::parse(registry).unwrap(),
            insecure,
            Arc::new(Stats::default()),
        )
    }

    #[test]
    fn credentials_go_elsewhere_in_clear_text_only_with_insecure() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        let a = auth_for("http://127.0.0.1:5000", false);
        assert!(
            a.may_send_credentials(&url("http://127.0.0.1:9999/token")),
            "same host, other port"
        );
        assert!(a.may_send_credentials(&url("https://auth.example/token")));
        assert!(!a.may_send_credentials(&url("http://127.0.0.2:5000/token")));
        assert!(!a.may_send_credentials(&url("http://auth.example/token")));
        let insecure = auth_for("http://127.0.0.1:5000", true);
        assert!(insecure.may_send_credentials(&url("http://auth.example/token")));
        let hub = auth_for("https://Registry.Example", false);
        assert!(
            hub.may_send_credentials(&url("http://registry.example/token")),
            "host names ignore case"
        );
    }

    #[test]
    fn unquoted_and_escaped_params() {
        let p = parse_auth_params(r#"realm=https://x/t, service="a\"b", scope="x,y""#);
        assert_eq!(p["realm"], "https://x/t");
        assert_eq!(p["service"], "a\"b");
        assert_eq!(p["scope"], "x,y");
    }
}
