//! One typed error for everything the registry client can fail with. The errno
//! each maps to is decided in `crate::error` (the table in README.md mirrors it).

use reqwest::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// 404, or a registry error code such as NAME_UNKNOWN / MANIFEST_UNKNOWN / BLOB_UNKNOWN.
    #[error("not found: {0}")]
    NotFound(String),
    /// 401 after a fresh token, or 403: the credentials are refused or lack access.
    #[error("access denied: {0}")]
    Denied(String),
    /// 429 still returned after the retries.
    #[error("rate limited by the registry: {0}")]
    RateLimited(String),
    /// 5xx still returned after the retries, or another unexpected status.
    #[error("registry error: {0}")]
    Server(String),
    /// Connection refused / reset / timed out, after the retries.
    #[error("network error: {0}")]
    Network(String),
    /// Content did not hash to the digest it was asked for.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    /// The registry answered something we cannot use (bad JSON, missing header...).
    #[error("invalid response: {0}")]
    Invalid(String),
    /// A name from a path that is not valid per the distribution grammar.
    #[error("invalid name: {0}")]
    InvalidName(String),
    /// The registry does not offer this API (e.g. no `_catalog`).
    #[error("unsupported by the registry: {0}")]
    Unsupported(String),
    /// The registry refused the request as invalid (a 4xx such as MANIFEST_INVALID).
    #[error("refused by the registry: {0}")]
    Rejected(String),
    /// A manifest PUT refused because blobs or manifests it references are not
    /// in the repository yet.
    #[error("references not in the registry yet: {0}")]
    MissingReferences(String),
    /// Local I/O (cache directory) failed.
    #[error("local I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl RegistryError {
    /// Worth another attempt with backoff?
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RegistryError::RateLimited(_) | RegistryError::Server(_) | RegistryError::Network(_)
        )
    }

    /// Build the error for an unsuccessful HTTP status, using the registry's
    /// error JSON (`{"errors":[{"code","message","detail"}]}`) when it sent one.
    pub fn from_status(status: StatusCode, what: &str, body: &[u8]) -> Self {
        let message = describe_body(body);
        let text = if message.is_empty() {
            format!("{what}: HTTP {status}")
        } else {
            format!("{what}: HTTP {status}: {message}")
        };
        let code = first_error_code(body);
        match status.as_u16() {
            404 => RegistryError::NotFound(text),
            // A range the registry cannot serve: it disagrees with us about the
            // blob's size, which is the registry's answer being wrong, not our request.
            416 => RegistryError::Invalid(text),
            401 | 403 => RegistryError::Denied(text),
            429 => RegistryError::RateLimited(text),
            // Method Not Allowed, with or without an UNSUPPORTED code (a tag
            // DELETE on ferro-oci-server or Quay, any write to a pull-through cache).
            405 => RegistryError::Unsupported(text),
            s if s >= 500 => RegistryError::Server(text),
            s if !(400..500).contains(&s) => RegistryError::Invalid(text),
            // Any other 4xx is the registry refusing this request: final, not retried.
            _ => match code.as_deref() {
                Some("NAME_UNKNOWN" | "MANIFEST_UNKNOWN" | "BLOB_UNKNOWN" | "TAG_INVALID") => {
                    RegistryError::NotFound(text)
                }
                Some("MANIFEST_BLOB_UNKNOWN") => RegistryError::MissingReferences(text),
                Some("DENIED" | "UNAUTHORIZED") => RegistryError::Denied(text),
                Some("TOOMANYREQUESTS") => RegistryError::RateLimited(text),
                Some("UNSUPPORTED") => RegistryError::Unsupported(text),
                Some(
                    "MANIFEST_INVALID" | "NAME_INVALID" | "DIGEST_INVALID" | "SIZE_INVALID" | "BLOB_UPLOAD_INVALID",
                ) => RegistryError::Rejected(text),
                _ => RegistryError::Rejected(text),
            },
        }
    }
}

/// One failed request can answer every caller that shared it (see `flight.rs`).
impl Clone for RegistryError {
    fn clone(&self) -> Self {
        use RegistryError::*;
        match self {
            NotFound(m) => NotFound(m.clone()),
            Denied(m) => Denied(m.clone()),
            RateLimited(m) => RateLimited(m.clone()),
            Server(m) => Server(m.clone()),
            Network(m) => Network(m.clone()),
            DigestMismatch { expected, actual } => DigestMismatch {
                expected: expected.clone(),
                actual: actual.clone(),
            },
            Invalid(m) => Invalid(m.clone()),
            InvalidName(m) => InvalidName(m.clone()),
            Unsupported(m) => Unsupported(m.clone()),
            Rejected(m) => Rejected(m.clone()),
            MissingReferences(m) => MissingReferences(m.clone()),
            Io(e) => Io(match e.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::new(e.kind(), e.to_string()),
            }),
        }
    }
}

impl From<reqwest::Error> for RegistryError {
    fn from(e: reqwest::Error) -> Self {
        // Include the source chain: reqwest's top-level message alone says little.
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        RegistryError::Network(msg)
    }
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(serde::Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

fn first_error_code(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.errors.into_iter().next())
        .map(|e| e.code)
}

/// A short, single-line description of an error body: the registry's error
/// messages when it is JSON, else the first bytes of the text.
fn describe_body(body: &[u8]) -> String {
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) {
        if !parsed.errors.is_empty() {
            return parsed
                .errors
                .iter()
                .map(|e| format!("{} {}", e.code, e.message).trim().to_string())
                .collect::<Vec<_>>()
                .join("; ");
        }
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub type Result<T> = std::result::Result<T, RegistryError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_json_picks_the_variant() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        let e = RegistryError::from_status(StatusCode::NOT_FOUND, "GET manifest a:b", body);
        assert!(matches!(e, RegistryError::NotFound(_)));
        assert!(e.to_string().contains("MANIFEST_UNKNOWN manifest unknown"));
        let e = RegistryError::from_status(StatusCode::BAD_REQUEST, "x", br#"{"errors":[{"code":"NAME_UNKNOWN"}]}"#);
        assert!(matches!(e, RegistryError::NotFound(_)));
    }

    #[test]
    fn plain_bodies_and_statuses() {
        let e = RegistryError::from_status(StatusCode::BAD_GATEWAY, "x", b"<html>\n bad gateway </html>");
        assert!(matches!(e, RegistryError::Server(_)));
        assert!(e.is_transient());
        assert!(e.to_string().contains("<html> bad gateway </html>"));
        assert!(matches!(
            RegistryError::from_status(StatusCode::FORBIDDEN, "x", b""),
            RegistryError::Denied(_)
        ));
        assert!(matches!(
            RegistryError::from_status(StatusCode::TOO_MANY_REQUESTS, "x", b""),
            RegistryError::RateLimited(_)
        ));
        let e = RegistryError::from_status(StatusCode::RANGE_NOT_SATISFIABLE, "GET blob", b"");
        assert!(
            matches!(e, RegistryError::Invalid(_)),
            "a 416 is a wrong answer, not a bad request"
        );
        assert!(!e.is_transient());
    }
}
