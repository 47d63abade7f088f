//! A streaming tar reader that records, for every entry, its metadata and the
//! offset of its data in the (uncompressed) stream — the one thing the `tar`
//! crate's iterator cannot give for a non-seekable stream with bounded memory.
//! Header fields are decoded by `tar::Header` (octal and base-256 numbers, ustar
//! prefixes); the sequence logic (PAX records, GNU long names, GNU sparse maps)
//! is here so every allocation has a cap.
//!
//! Data is skipped by reading it (the caller hashes and checkpoints the stream on
//! the way), so the reader sees every byte exactly once.

use std::io::{self, Read};

use tar::{EntryType, Header};

use super::entry::{normalize_path, Data, Entry, Kind};
use crate::oci::tarheader::{checksum_matches, pax_records};

const BLOCK: u64 = 512;

/// Caps that keep a hostile layer (a tar bomb) from exhausting memory.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Entries kept per layer; the rest of the layer is still read (hashed,
    /// checkpointed) but not listed.
    pub max_entries: usize,
    /// Longest path or link target kept (longer entries are skipped).
    pub max_path: usize,
    /// Largest PAX extended header or GNU long name read into memory.
    pub max_extension: u64,
    /// Total bytes of xattr names and values kept per entry.
    pub max_xattr_bytes: usize,
    /// Sparse map entries kept per file.
    pub max_sparse_chunks: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 1_000_000,
            max_path: 4096,
            max_extension: 1 << 20,
            max_xattr_bytes: 64 << 10,
            max_sparse_chunks: 100_000,
        }
    }
}

/// What went wrong in a layer, summarized for one log line.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problems {
    pub count: u64,
    /// The first few messages.
    pub first: Vec<String>,
}

impl Problems {
    const KEPT: usize = 5;

    pub fn push(&mut self, msg: impl Into<String>) {
        self.count += 1;
        if self.first.len() < Self::KEPT {
            self.first.push(msg.into());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// One line: the count and the first messages.
    pub fn summary(&self) -> String {
        let more = self.count.saturating_sub(self.first.len() as u64);
        let mut s = self.first.join("; ");
        if more > 0 {
            s.push_str(&format!("; and {more} more"));
        }
        s
    }
}

/// A reader that counts how far it is into the stream.
struct Counted<'a, R> {
    inner: &'a mut R,
    pos: u64,
}

impl<R: Read> Counted<'_, R> {
    /// Reads a whole block; `Ok(false)` at a clean end of stream.
    fn block(&mut self, buf: &mut [u8; BLOCK as usize]) -> io::Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "tar stream ends inside a header",
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.pos += BLOCK;
        Ok(true)
    }

    /// Skips `n` bytes plus padding to the next block.
    fn skip_padded(&mut self, n: u64) -> io::Result<()> {
        let padded = n
            .checked_add(BLOCK - 1)
            .map(|v| v & !(BLOCK - 1))
            .ok_or_else(|| bad("size overflow"))?;
        let copied = io::copy(&mut (&mut *self.inner).take(padded), &mut io::sink())?;
        self.pos += copied;
        if copied < padded {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "tar stream ends inside an entry's data",
            ));
        }
        Ok(())
    }

    /// Reads `n` bytes (already known to be small) plus padding.
    fn read_padded(&mut self, n: u64) -> io::Result<Vec<u8>> {
        let padded = (n + BLOCK - 1) & !(BLOCK - 1);
        let mut v = vec![0; padded as usize];
        self.inner.read_exact(&mut v)?;
        self.pos += padded;
        v.truncate(n as usize);
        Ok(v)
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Extension records collected for the next real entry.
#[derive(Default)]
struct Pending {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<i64>,
    xattrs: Vec<(Box<str>, Box<[u8]>)>,
    xattr_bytes: usize,
    pax_sparse: bool,
    /// The entry's extension was too big or malformed: skip the entry.
    unusable: Option<String>,
}

/// Parses PAX records (`"<len> <key>=<value>\n"`) into `pending`.
fn parse_pax(data: &[u8], pending: &mut Pending, limits: &Limits) -> Result<(), String> {
    for record in pax_records(data) {
        let (key, value) = record?;
        let text = || std::str::from_utf8(value).ok();
        let number = || text().and_then(|s| s.parse::<u64>().ok());
        match key {
            b"path" => pending.path = Some(value.to_vec()),
            b"linkpath" => pending.link = Some(value.to_vec()),
            b"size" => pending.size = Some(number().ok_or("PAX size is not a number")?),
            b"uid" => pending.uid = Some(number().ok_or("PAX uid is not a number")?),
            b"gid" => pending.gid = Some(number().ok_or("PAX gid is not a number")?),
            b"mtime" => {
                // Seconds with an optional fraction; keep the whole seconds (floor).
                let s = text().ok_or("PAX mtime is not text")?;
                let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
                let mut secs: i64 = whole.parse().map_err(|_| "PAX mtime is not a number")?;
                if whole.starts_with('-') && frac.bytes().any(|b| b != b'0') {
                    secs -= 1;
                }
                pending.mtime = Some(secs);
            }
            _ if key.starts_with(b"SCHILY.xattr.") => {
                let name = String::from_utf8_lossy(&key[b"SCHILY.xattr.".len()..]);
                pending.xattr_bytes += name.len() + value.len();
                if pending.xattr_bytes > limits.max_xattr_bytes {
                    return Err("xattrs over the per-entry cap".into());
                }
                pending.xattrs.push((name.into(), value.into()));
            }
            _ if key.starts_with(b"GNU.sparse.") => pending.pax_sparse = true,
            _ => {} // atime, ctime, uname, gname, comments, charset: not needed
        }
    }
    Ok(())
}

/// Reads the GNU sparse map of a type `S` header (and its extension blocks).
fn gnu_sparse_map<R: Read>(
    header: &Header,
    r: &mut Counted<'_, R>,
    limits: &Limits,
) -> io::Result<Result<Vec<(u64, u64)>, String>> {
    let gnu = match header.as_gnu() {
        Some(g) => g,
        None => return Ok(Err("sparse entry without a GNU header".into())),
    };
    let mut map = Vec::new();
    let mut overflow = false;
    let mut add = |s: &tar::GnuSparseHeader, map: &mut Vec<(u64, u64)>| -> io::Result<()> {
        if !s.is_empty() {
            if map.len() >= limits.max_sparse_chunks {
                overflow = true;
            } else {
                map.push((s.offset()?, s.length()?));
            }
        }
        Ok(())
    };
    for s in &gnu.sparse {
        add(s, &mut map)?;
    }
    let mut extended = gnu.isextended[0] == 1;
    while extended {
        let mut ext = tar::GnuExtSparseHeader::new();
        if !r.block(ext.as_mut_bytes())? {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "tar ends inside a sparse map",
            ));
        }
        for s in ext.sparse() {
            add(s, &mut map)?;
        }
        extended = ext.isextended[0] == 1;
    }
    if overflow {
        return Ok(Err("sparse map over the cap".into()));
    }
    Ok(Ok(map))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn is_zero(block: &[u8]) -> bool {
    block.iter().all(|&b| b == 0)
}

/// Reads tar entries from `r` (positioned at the start of the archive) into
/// `entries` until the end-of-archive marker, the end of the stream, or a
/// structural error. Problems that affect one entry are recorded in `problems`
/// and parsing goes on; a header that does not parse stops the listing (recorded
/// too). An `Err` is an error of the underlying stream (e.g. a truncated gzip);
/// the entry whose data it cut is marked [`Data::Broken`].
pub fn scan<R: Read>(r: &mut R, limits: &Limits, entries: &mut Vec<Entry>, problems: &mut Problems) -> io::Result<()> {
    let mut r = Counted { inner: r, pos: 0 };
    let mut block = [0u8; BLOCK as usize];
    let mut pending = Pending::default();
    let mut capped = false;
    loop {
        let at = r.pos;
        if !r.block(&mut block)? {
            if at == 0 {
                problems.push("empty layer stream (not a tar)");
            } else {
                problems.push(format!("tar stream ends at {at} without an end-of-archive marker"));
            }
            return Ok(());
        }
        if is_zero(&block) {
            return Ok(()); // end of archive (the second zero block and the rest are drained by the caller)
        }
        let header = Header::from_byte_slice(&block);
        if !checksum_matches(&block) {
            if at == 0 {
                problems.push("not a tar archive (first header's checksum does not match)");
            } else {
                problems.push(format!(
                    "tar header at offset {at} has a bad checksum; listing stops there"
                ));
            }
            return Ok(());
        }
        let entry_size = header
            .entry_size()
            .map_err(|e| bad(format!("tar header at {at}: {e}")))?;
        let kind = match header.entry_type() {
            EntryType::XHeader => {
                if entry_size > limits.max_extension {
                    pending.unusable = Some(format!("PAX header of {entry_size} bytes at {at} over the cap"));
                    r.skip_padded(entry_size)?;
                } else {
                    let data = r.read_padded(entry_size)?;
                    if let Err(e) = parse_pax(&data, &mut pending, limits) {
                        pending.unusable = Some(format!("PAX header at {at}: {e}"));
                    }
                }
                continue;
            }
            EntryType::XGlobalHeader => {
                r.skip_padded(entry_size)?; // global defaults: nothing in them changes what we show
                continue;
            }
            t @ (EntryType::GNULongName | EntryType::GNULongLink) => {
                if entry_size > limits.max_extension {
                    pending.unusable = Some(format!("GNU long name of {entry_size} bytes at {at} over the cap"));
                    r.skip_padded(entry_size)?;
                } else {
                    let mut data = r.read_padded(entry_size)?;
                    while data.last() == Some(&0) {
                        data.pop();
                    }
                    if t == EntryType::GNULongName {
                        pending.path = Some(data);
                    } else {
                        pending.link = Some(data);
                    }
                }
                continue;
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink,
            EntryType::Link => Kind::HardLink,
            EntryType::Char => Kind::Char,
            EntryType::Block => Kind::Block,
            EntryType::Fifo => Kind::Fifo,
            other => {
                problems.push(format!(
                    "tar entry at {at} of unsupported type {:?} skipped",
                    other.as_byte() as char
                ));
                r.skip_padded(entry_size)?;
                pending = Pending::default();
                continue;
            }
        };
        let p = std::mem::take(&mut pending);
        let sparse = if header.entry_type() == EntryType::GNUSparse {
            Some(gnu_sparse_map(header, &mut r, limits)?)
        } else {
            None
        };
        // Like Go's archive/tar: only regular files carry data; other types' size is ignored.
        let stored_size = if kind == Kind::File {
            p.size.unwrap_or(entry_size)
        } else {
            0
        };
        let raw_path = p.path.clone().unwrap_or_else(|| header.path_bytes().into_owned());
        let raw_link = p
            .link
            .clone()
            .or_else(|| header.link_name_bytes().map(|c| c.into_owned()));
        let data_offset = r.pos;

        let mut skip_reason = p.unusable.clone();
        if raw_path.len() > limits.max_path || raw_link.as_ref().is_some_and(|l| l.len() > limits.max_path) {
            skip_reason = Some(format!(
                "tar entry at {at} with a path or link over {} bytes",
                limits.max_path
            ));
        }
        let path = normalize_path(&lossy(&raw_path));
        if path.is_none() && skip_reason.is_none() {
            skip_reason = Some(format!(
                "tar entry {:?} escapes the layer root (absolute or '..'): ignored",
                lossy(&raw_path)
            ));
        }
        if entries.len() >= limits.max_entries && skip_reason.is_none() {
            if !capped {
                problems.push(format!(
                    "more than {} entries: the rest of the layer is not listed",
                    limits.max_entries
                ));
                capped = true;
            }
            skip_reason = Some(String::new());
        }
        let link = match (kind, &raw_link) {
            (Kind::Symlink, Some(l)) => Some(lossy(l).into_boxed_str()),
            (Kind::HardLink, Some(l)) => match normalize_path(&lossy(l)) {
                Some(n) => Some(n.into_boxed_str()),
                None => {
                    skip_reason
                        .get_or_insert_with(|| format!("hard link to {:?} escapes the layer root: ignored", lossy(l)));
                    None
                }
            },
            _ => None,
        };
        let (size, data) = match (&sparse, kind) {
            (Some(Ok(map)), _) => {
                let real = header.as_gnu().and_then(|g| g.real_size().ok()).unwrap_or(0);
                (
                    real,
                    Data::Sparse {
                        offset: data_offset,
                        map: map.clone().into_boxed_slice(),
                    },
                )
            }
            (Some(Err(e)), _) => {
                problems.push(format!("tar entry {:?}: {e}; reads fail", lossy(&raw_path)));
                (header.size().unwrap_or(0), Data::Broken)
            }
            (None, Kind::File) if p.pax_sparse => {
                problems.push(format!(
                    "tar entry {:?} is a PAX sparse file (not supported); reads fail",
                    lossy(&raw_path)
                ));
                (stored_size, Data::Broken)
            }
            (None, Kind::File) if stored_size > 0 => (stored_size, Data::Contiguous { offset: data_offset }),
            _ => (0, Data::None),
        };

        let pushed = skip_reason.is_none();
        match skip_reason {
            Some(reason) => {
                if !reason.is_empty() {
                    problems.push(reason);
                }
            }
            None => entries.push(Entry {
                path: path.unwrap_or_default().into_boxed_str(),
                kind,
                mode: header.mode().unwrap_or(0) & 0o7777,
                uid: p.uid.or_else(|| header.uid().ok()).unwrap_or(0) as u32,
                gid: p.gid.or_else(|| header.gid().ok()).unwrap_or(0) as u32,
                size,
                mtime: p.mtime.unwrap_or_else(|| header.mtime().unwrap_or(0) as i64),
                dev_major: if matches!(kind, Kind::Char | Kind::Block) {
                    header.device_major().ok().flatten().unwrap_or(0)
                } else {
                    0
                },
                dev_minor: if matches!(kind, Kind::Char | Kind::Block) {
                    header.device_minor().ok().flatten().unwrap_or(0)
                } else {
                    0
                },
                link,
                xattrs: p.xattrs.into_boxed_slice(),
                data,
            }),
        }
        if let Err(e) = r.skip_padded(stored_size) {
            if stored_size > 0 && pushed {
                if let Some(last) = entries.last_mut() {
                    last.data = Data::Broken;
                }
            }
            return Err(e);
        }
    }
}
