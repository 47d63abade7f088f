//! The sha256 content digest: parsing, printing, and hashing bytes and files.

use std::fmt;
use std::str::FromStr;

/// A sha256 content digest, always written `sha256:<64 lowercase hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    pub fn of(data: &[u8]) -> Self {
        use sha2::Digest as _;
        Digest(sha2::Sha256::digest(data).into())
    }

    /// The digest of `len` bytes of `f` from `offset` (to its end when `len`
    /// is `None`, or when the file is shorter), read in 1 MiB pieces: the one
    /// sha256-of-a-file loop (cached blobs, staged files, archive members).
    pub fn of_file_range(f: &std::fs::File, offset: u64, len: Option<u64>) -> std::io::Result<Self> {
        use sha2::Digest as _;
        use std::os::unix::fs::FileExt;
        let end = len.map_or(u64::MAX, |l| offset.saturating_add(l));
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut off = offset;
        while off < end {
            let want = (end - off).min(buf.len() as u64) as usize;
            let n = f.read_at(&mut buf[..want], off)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            off += n as u64;
        }
        Ok(Digest(h.finalize().into()))
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parse the bare 64-hex form (as used in `blobs/sha256/<hex>`).
    pub fn from_hex(hex_str: &str) -> Option<Self> {
        if hex_str.len() != 64 || !hex_str.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_str, &mut out).ok()?;
        Some(Digest(out))
    }
}

impl FromStr for Digest {
    type Err = InvalidDigest;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix("sha256:")
            .and_then(Digest::from_hex)
            .ok_or_else(|| InvalidDigest(s.to_string()))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a sha256 digest: {0:?}")]
pub struct InvalidDigest(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        let d = Digest::of(b"hello");
        let s = d.to_string();
        assert_eq!(
            s,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(s.parse::<Digest>().unwrap(), d);
        assert!(
            "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824"
                .parse::<Digest>()
                .is_err()
        );
        assert!("sha512:abc".parse::<Digest>().is_err());
        assert!("sha256:abc".parse::<Digest>().is_err());
    }

    #[test]
    fn file_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..(3 << 20) + 5).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        assert_eq!(Digest::of_file_range(&f, 0, None).unwrap(), Digest::of(&data));
        assert_eq!(
            Digest::of_file_range(&f, 10, Some(1 << 20)).unwrap(),
            Digest::of(&data[10..10 + (1 << 20)])
        );
        assert_eq!(
            Digest::of_file_range(&f, 7, Some(u64::MAX)).unwrap(),
            Digest::of(&data[7..]),
            "a range past the end stops at the end"
        );
    }
}
