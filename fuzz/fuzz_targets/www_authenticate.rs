//! `WWW-Authenticate` parsing: never a panic, and a Bearer challenge is only
//! accepted with an absolute http(s) realm.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regfs::registry::auth::{parse_challenge, Challenge};

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(Challenge::Bearer { realm, .. }) = parse_challenge(header) {
        let url = reqwest::Url::parse(&realm).expect("an accepted realm is a URL");
        assert!(matches!(url.scheme(), "http" | "https"), "{realm}");
    }
});
