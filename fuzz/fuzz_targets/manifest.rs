//! Manifest / index / referrers parsing of untrusted registry bytes: never a
//! panic, and every name made from them is a single path component.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regfs::oci::{self, Manifest};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the media type the registry declared.
    let (declared, bytes) = match data.split_first() {
        Some((b, rest)) => (
            match b % 6 {
                0 => None,
                1 => Some(oci::OCI_INDEX),
                2 => Some(oci::OCI_MANIFEST),
                3 => Some("application/vnd.docker.distribution.manifest.list.v2+json"),
                4 => Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
                _ => Some("application/octet-stream"),
            },
            rest,
        ),
        None => (None, data),
    };
    let manifest = Manifest::parse(bytes, declared);
    let _ = manifest.blobs().count();
    for (name, _) in oci::child_names(&manifest) {
        assert!(!name.is_empty() && !name.contains('/') && name != "." && name != "..", "{name:?}");
    }
    for (name, _) in oci::referrer_names(&manifest.manifests) {
        assert!(!name.is_empty() && !name.contains('/') && name != "." && name != "..", "{name:?}");
    }
    let _ = oci::jws_payload(bytes);
});
