//! Repository, tag and digest grammar from the OCI distribution spec.
//! Every name that comes from a path is validated here before it reaches the network.

use std::fmt;

use super::Digest;

/// Maximum length of a full repository name (distribution's limit).
const MAX_REPOSITORY_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// One path component of a repository name: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
pub fn is_valid_component(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !is_alnum(b[i]) {
            return false;
        }
    }
    true
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// A full repository path such as `library/alpine`.
pub fn is_valid_repository(s: &str) -> bool {
    s.len() <= MAX_REPOSITORY_LEN && s.split('/').all(is_valid_component)
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn is_valid_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
}

/// What a manifest request names: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => write!(f, "{d}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components() {
        for ok in ["a", "alpine", "a.b", "a_b", "a__b", "a---b", "0x", "my-app.v2"] {
            assert!(is_valid_component(ok), "{ok}");
        }
        for bad in [
            "", "A", "_tags", "-a", "a-", "a..b", "a___b", "a.", ".regfs", "a b", "a/b",
        ] {
            assert!(!is_valid_component(bad), "{bad}");
        }
    }

    #[test]
    fn repositories() {
        assert!(is_valid_repository("library/alpine"));
        assert!(is_valid_repository("library/alpine/extras"));
        assert!(!is_valid_repository("library//alpine"));
        assert!(!is_valid_repository("library/_tags"));
        assert!(!is_valid_repository(&"a".repeat(256)));
    }

    #[test]
    fn tags() {
        assert!(is_valid_tag("latest"));
        assert!(is_valid_tag("_x"));
        assert!(is_valid_tag("v1.2.3-rc_1"));
        assert!(!is_valid_tag(".v1"));
        assert!(!is_valid_tag("-v1"));
        assert!(!is_valid_tag("a/b"));
        assert!(!is_valid_tag(&"a".repeat(129)));
    }
}
