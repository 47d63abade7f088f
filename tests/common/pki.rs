//! Certificates and signatures made with the `openssl` command-line tool.
//!
//! Nothing here uses a crypto crate: keys, certificates and RS256 signatures
//! all come from `openssl`, which keeps the dev-dependencies light.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A private key and the certificate for it, as PEM files on disk.
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub key: PathBuf,
    pub cert: PathBuf,
}

impl KeyPair {
    /// The certificate as DER, base64 (standard alphabet, padded): the form a
    /// JWT `x5c` header entry takes.
    pub fn cert_der_base64(&self) -> String {
        let out = run_openssl(&["x509", "-in", path_str(&self.cert), "-outform", "DER"]);
        base64_std(&out)
    }
}

/// Runs `openssl ARGS...`, panics with its stderr on failure, returns stdout.
pub fn run_openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {:?} failed: {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A self-signed certificate authority (RSA 2048, `CA:TRUE`) named `name` in `dir`.
pub fn make_ca(dir: &Path, name: &str) -> KeyPair {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.pem"));
    run_openssl(&["genrsa", "-out", path_str(&key), "2048"]);
    run_openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        path_str(&key),
        "-sha256",
        "-days",
        "30",
        "-subj",
        &format!("/CN=regfs test {name}"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        "-out",
        path_str(&cert),
    ]);
    KeyPair { key, cert }
}

/// A leaf certificate signed by `ca`. `extensions` are x509v3 config lines
/// (e.g. `subjectAltName=IP:127.0.0.1`).
pub fn make_leaf(dir: &Path, name: &str, ca: &KeyPair, extensions: &[&str]) -> KeyPair {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let cert = dir.join(format!("{name}.pem"));
    let ext = dir.join(format!("{name}.ext"));
    run_openssl(&["genrsa", "-out", path_str(&key), "2048"]);
    run_openssl(&[
        "req",
        "-new",
        "-key",
        path_str(&key),
        "-subj",
        &format!("/CN={name}"),
        "-out",
        path_str(&csr),
    ]);
    fs::write(&ext, extensions.join("\n") + "\n").unwrap();
    run_openssl(&[
        "x509",
        "-req",
        "-in",
        path_str(&csr),
        "-CA",
        path_str(&ca.cert),
        "-CAkey",
        path_str(&ca.key),
        "-CAcreateserial",
        "-days",
        "30",
        "-sha256",
        "-extfile",
        path_str(&ext),
        "-out",
        path_str(&cert),
    ]);
    KeyPair { key, cert }
}

/// A TLS server certificate for `127.0.0.1` / `::1` / `localhost` signed by `ca`.
pub fn make_server_cert(dir: &Path, ca: &KeyPair) -> KeyPair {
    make_leaf(
        dir,
        "server",
        ca,
        &[
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            "extendedKeyUsage=serverAuth",
            "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost",
        ],
    )
}

/// Signs `data` with RSA PKCS#1 v1.5 / SHA-256 (JWS `RS256`) using the PEM key.
pub fn sign_rs256(key: &Path, data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign", path_str(key)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running openssl dgst");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl dgst -sign failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

const B64_STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_std(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64_STD[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Base64url without padding (the JOSE encoding).
pub fn base64_url(data: &[u8]) -> String {
    base64_std(data)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

/// Decodes standard base64 (padding optional). Panics on bad input.
pub fn base64_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => panic!("bad base64 byte {c}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
