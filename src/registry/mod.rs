//! The Distribution API v2, hand-written on reqwest: see `client.rs`.

pub mod auth;
pub mod client;
pub mod credentials;
pub mod error;
pub mod flight;

pub use client::Client;
pub use error::RegistryError;

/// `host[:port]` of a registry URL: the name credentials and logs use.
pub fn host_port(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}
