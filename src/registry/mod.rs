//! The Distribution API v2, hand-written on reqwest: see `client.rs`.

pub mod auth;
pub mod client;
pub mod credentials;
pub mod error;
pub mod flight;
pub mod reference;

pub use client::Client;
pub use error::RegistryError;
pub use reference::{Digest, Reference};
