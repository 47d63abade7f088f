//! `Link` header parsing (pagination of catalogs and tag lists): never a panic,
//! whatever the registry sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reqwest::header::{HeaderMap, HeaderValue, LINK};
use reqwest::Url;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(LINK, value);
    let current = Url::parse("http://registry.example:5000/v2/some/repo/tags/list?n=100").unwrap();
    if let Some(next) = regfs::registry::client::next_link(&current, &headers) {
        assert!(matches!(next.scheme(), "http" | "https"), "{next}");
    }
});
