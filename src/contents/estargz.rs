//! eStargz layers (containerd/stargz-snapshotter `estargz/`): every file chunk
//! is its own gzip member, and the table of contents (`stargz.index.json`, in a
//! tar inside the last gzip member before the footer) lists entries with the
//! compressed offset of each chunk and its sha256. The footer — a 51-byte empty
//! gzip member whose extra field holds `%016x` of the TOC offset and `STARGZ`
//! (47 bytes in the legacy stargz format) — is read by Range, then the TOC: no
//! pass over the layer.
//!
//! What is trusted: with the layer descriptor's
//! `containerd.io/snapshot/stargz/toc.digest` annotation, the TOC is checked
//! against it (the annotation is part of the manifest, which is verified by
//! digest), and every chunk against the TOC's `chunkDigest`, so every byte
//! served is verified. Without the annotation the TOC is taken as the source
//! served it: chunk bytes still match the TOC's digests, but nothing ties the
//! TOC to the layer digest (a lying registry could describe other files). A
//! caller that wants full verification then serves the footer and TOC from a
//! blob it has verified whole, or builds a [`LayerIndex::build`] pass instead
//! (an eStargz blob is also an ordinary gzip tar).

use std::collections::HashMap;
use std::io;

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::entry::{normalize_path, Chunk, Data, Entry, Kind};
use super::gzip::gunzip_member;
use super::index::{Compression, LayerIndex};
use super::tarscan::{Limits, Problems};
use super::{ContentsError, SpanSource};

/// Size of the eStargz footer.
pub const FOOTER_SIZE: u64 = 51;
/// Largest TOC accepted: compressed, and decoded.
const MAX_TOC_COMPRESSED: u64 = 64 << 20;
const MAX_TOC: u64 = 512 << 20;
/// Annotation on the layer descriptor holding the TOC's digest.
pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";

/// The TOC offset written in a footer (eStargz or legacy stargz), if `tail`
/// (the last bytes of a blob) ends with one.
pub fn toc_offset(tail: &[u8]) -> Option<u64> {
    let at = tail.windows(6).rposition(|w| w == b"STARGZ")?;
    let hex = tail.get(at.checked_sub(16)?..at)?;
    if !tail.starts_with(&[0x1f, 0x8b]) && !tail[tail.len().saturating_sub(47)..].starts_with(&[0x1f, 0x8b]) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// Reads the footer of a blob of `blob_size` bytes: the TOC offset if it is an eStargz layer.
pub fn probe(src: &dyn SpanSource, blob_size: u64) -> io::Result<Option<u64>> {
    if blob_size < FOOTER_SIZE {
        return Ok(None);
    }
    let tail = src.read_at(blob_size - FOOTER_SIZE, FOOTER_SIZE)?;
    Ok(toc_offset(&tail).filter(|&off| off < blob_size))
}

#[derive(Deserialize)]
struct Toc {
    #[allow(dead_code)]
    version: i64,
    entries: Vec<TocEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TocEntry {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    modtime: Option<String>,
    #[serde(default)]
    link_name: Option<String>,
    #[serde(default)]
    mode: i64,
    #[serde(default)]
    uid: u32,
    #[serde(default)]
    gid: u32,
    #[serde(default)]
    dev_major: u32,
    #[serde(default)]
    dev_minor: u32,
    #[serde(default)]
    xattrs: Option<HashMap<String, String>>,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    chunk_offset: u64,
    #[serde(default)]
    chunk_size: u64,
    #[serde(default)]
    chunk_digest: Option<String>,
}

fn sha256_of(d: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(d.strip_prefix("sha256:")?, &mut out).ok()?;
    Some(out)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// Seconds since the epoch of an RFC 3339 time (`2006-01-02T15:04:05[.frac](Z|±hh:mm)`).
fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let secs =
        days_from_civil(n(0..4)?, n(5..7)?, n(8..10)?) * 86400 + n(11..13)? * 3600 + n(14..16)? * 60 + n(17..19)?;
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        rest = frac.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (rest[1..3].parse::<i64>().ok()? * 3600 + rest[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    Some(secs - offset)
}

/// Opens an eStargz layer: reads its footer and TOC through `src` and returns
/// an index whose regular files read chunk by chunk. `toc_digest` is the
/// layer descriptor's [`TOC_DIGEST_ANNOTATION`], when it has one.
pub fn open(
    digest: &str,
    blob_size: u64,
    src: &dyn SpanSource,
    toc_digest: Option<&str>,
    limits: &Limits,
) -> Result<LayerIndex, ContentsError> {
    let toc_at = probe(src, blob_size)?.ok_or_else(|| ContentsError::NotEstargz("no stargz footer".into()))?;
    let toc_len = blob_size - toc_at;
    if toc_len > MAX_TOC_COMPRESSED {
        return Err(ContentsError::BadToc(format!("TOC of {toc_len} bytes is over the cap")));
    }
    let toc_tar = gunzip_member(&src.read_at(toc_at, toc_len)?, MAX_TOC)?;
    if toc_tar.len() < 512 {
        return Err(ContentsError::BadToc("TOC member holds no tar header".into()));
    }
    let header = tar::Header::from_byte_slice(&toc_tar[..512]);
    let size = header.entry_size().map_err(|e| ContentsError::BadToc(e.to_string()))? as usize;
    if header.path_bytes().as_ref() != b"stargz.index.json" || toc_tar.len() < 512 + size {
        return Err(ContentsError::BadToc("TOC tar does not hold stargz.index.json".into()));
    }
    let json = &toc_tar[512..512 + size];
    if let Some(want) = toc_digest {
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(json)));
        if actual != want {
            return Err(ContentsError::BadToc(format!(
                "TOC digest {actual} is not the annotated {want}"
            )));
        }
    }
    let toc: Toc = serde_json::from_slice(json).map_err(|e| ContentsError::BadToc(e.to_string()))?;
    Ok(entries_from_toc(digest, blob_size, toc_at, toc, limits))
}

fn entries_from_toc(digest: &str, blob_size: u64, toc_at: u64, toc: Toc, limits: &Limits) -> LayerIndex {
    let mut problems = Problems::default();
    // A chunk's gzip member ends where the next member with data starts (or at the TOC).
    let mut starts: Vec<u64> = toc.entries.iter().filter(|e| e.offset > 0).map(|e| e.offset).collect();
    starts.push(toc_at);
    starts.sort_unstable();
    starts.dedup();
    let member_end = |start: u64| {
        starts[starts.partition_point(|&s| s <= start)..]
            .first()
            .copied()
            .unwrap_or(toc_at)
    };

    let mut entries: Vec<Entry> = Vec::new();
    for t in toc.entries {
        if entries.len() >= limits.max_entries {
            problems.push(format!(
                "more than {} entries: the rest is not listed",
                limits.max_entries
            ));
            break;
        }
        let Some(path) = normalize_path(&t.name) else {
            problems.push(format!("TOC entry {:?} escapes the layer root: ignored", t.name));
            continue;
        };
        let chunk = |size: u64| -> Option<Chunk> {
            let len = if t.chunk_size > 0 {
                t.chunk_size
            } else {
                size.saturating_sub(t.chunk_offset)
            };
            let single = t.chunk_offset == 0 && len == t.size;
            let sha = t
                .chunk_digest
                .as_deref()
                .or(if single { t.digest.as_deref() } else { None });
            Some(Chunk {
                file_offset: t.chunk_offset,
                len,
                start: t.offset,
                end: member_end(t.offset),
                sha256: sha256_of(sha?)?,
            })
        };
        if t.kind == "chunk" {
            match entries.last_mut() {
                Some(last) if *last.path == *path && last.kind == Kind::File => {
                    let size = last.size;
                    match (chunk(size), &mut last.data) {
                        (Some(c), Data::Chunks(list)) => {
                            let mut v = std::mem::take(list).into_vec();
                            v.push(c);
                            *list = v.into_boxed_slice();
                        }
                        _ => {
                            problems.push(format!("{path}: chunk without a digest; reads fail"));
                            last.data = Data::Broken;
                        }
                    }
                }
                _ => problems.push(format!("{path}: chunk without its file entry: ignored")),
            }
            continue;
        }
        let kind = match t.kind.as_str() {
            "reg" => Kind::File,
            "dir" => Kind::Dir,
            "symlink" => Kind::Symlink,
            "hardlink" => Kind::HardLink,
            "char" => Kind::Char,
            "block" => Kind::Block,
            "fifo" => Kind::Fifo,
            other => {
                problems.push(format!("{path}: TOC entry type {other:?} skipped"));
                continue;
            }
        };
        let data = match kind {
            Kind::File if t.size > 0 => match chunk(t.size) {
                Some(c) => Data::Chunks(Box::new([c])),
                None => {
                    problems.push(format!("{path}: no chunk digest in the TOC; reads fail"));
                    Data::Broken
                }
            },
            _ => Data::None,
        };
        let link = match kind {
            Kind::Symlink => t.link_name.clone().map(String::into_boxed_str),
            Kind::HardLink => t
                .link_name
                .as_deref()
                .and_then(normalize_path)
                .map(String::into_boxed_str),
            _ => None,
        };
        let mut xattrs = Vec::new();
        for (k, v) in t.xattrs.iter().flatten() {
            if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(v) {
                xattrs.push((k.clone().into_boxed_str(), bytes.into_boxed_slice()));
            }
        }
        xattrs.sort();
        entries.push(Entry {
            path: path.into_boxed_str(),
            kind,
            mode: (t.mode & 0o7777) as u32,
            uid: t.uid,
            gid: t.gid,
            size: if kind == Kind::File { t.size } else { 0 },
            mtime: t.modtime.as_deref().and_then(parse_rfc3339).unwrap_or(0),
            dev_major: t.dev_major,
            dev_minor: t.dev_minor,
            link,
            xattrs: xattrs.into_boxed_slice(),
            data,
        });
    }
    // eStargz lists the TOC itself as a regular file: it is not part of the image.
    entries.retain(|e| &*e.path != "stargz.index.json");
    LayerIndex::from_parts(digest, Compression::Estargz, blob_size, entries, problems)
}

/// Reads `[offset, end)` of a file from its chunks: each chunk's gzip member
/// is fetched, decoded and checked against its sha256 before it is used.
pub(crate) fn read_chunks(chunks: &[Chunk], offset: u64, end: u64, src: &dyn SpanSource) -> io::Result<Vec<u8>> {
    let mut out = vec![0u8; (end - offset) as usize];
    let mut covered = 0u64;
    for c in chunks {
        let (a, b) = (c.file_offset.max(offset), (c.file_offset + c.len).min(end));
        if a >= b {
            continue;
        }
        if c.end <= c.start {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "eStargz chunk with an empty member",
            ));
        }
        let member = src.read_at(c.start, c.end - c.start)?;
        let mut data = gunzip_member(&member, c.len.max(1) + (64 << 10))?;
        if (data.len() as u64) < c.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "eStargz chunk shorter than the TOC says",
            ));
        }
        data.truncate(c.len as usize);
        if Sha256::digest(&data).as_slice() != c.sha256 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "eStargz chunk digest mismatch: refusing the data",
            ));
        }
        let from = (a - c.file_offset) as usize;
        out[(a - offset) as usize..(b - offset) as usize].copy_from_slice(&data[from..from + (b - a) as usize]);
        covered += b - a;
    }
    if covered != end - offset {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "eStargz chunks do not cover the file",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2024-02-29T12:34:56Z"), Some(1709210096));
        assert_eq!(parse_rfc3339("2024-02-29T14:34:56.5+02:00"), Some(1709210096));
        assert_eq!(parse_rfc3339("garbage"), None);
    }
}
