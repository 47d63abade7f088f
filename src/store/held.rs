//! Bytes of a blob being fetched, held in memory between their arrival from
//! the registry and the cache file (issue 13, cold reads under disk pressure).
//!
//! A body's bytes are handed to readers and to the hash from here as soon as
//! they arrive; a writer thread puts them in the cache file behind them. So a
//! cache filesystem slowed by dirty pages (or a slow disk) no longer stands
//! between the registry and the reader, and the hash does not read back from
//! the file what it could take from memory.
//!
//! Rules that keep the cache file, the hash and the readers seeing the same
//! bytes:
//! - The first bytes that arrive for a byte range stand: a later copy of the
//!   same range (a registry that ignored `Range` and resent from 0, or a
//!   refetch over the edge of a failed part) is dropped here, never written.
//! - A byte that arrived is in memory (`unwritten` or `kept`) or in the file:
//!   a piece leaves `unwritten` only once it is written, in the same step
//!   that moves it to `kept` or drops it. So whatever a plan reads from the
//!   file was written before the plan was made.
//! - Memory is bounded: fetches wait while `LAG_LIMIT` bytes are unwritten
//!   (`BlobFile::room`), and a written piece is kept for the hash only within
//!   `KEEP_AHEAD` bytes of the hash's position (else the hash reads it back).

use std::collections::BTreeMap;
use std::ops::Range;

use bytes::Bytes;
use rangemap::RangeSet;

/// Unwritten bytes a blob may hold before its fetches wait for the writer.
/// Small: a writer far behind copies cold bytes, and a lead over a disk
/// slowed by dirty pages bought nothing measurable (docs/performance.md).
pub const LAG_LIMIT: u64 = 8 << 20;
/// How far past the hash's position written bytes stay in memory for it.
pub const KEEP_AHEAD: u64 = 32 << 20;
/// The most a writer puts in the file with one system call. Small on
/// purpose: 4 MiB `pwritev`s made ext4 fill large folios, and with 2 GiB of
/// dirty pages on the machine the writer then spent twice the CPU in
/// `copy_folio_from_iter_atomic` (perf, issue 13).
const WRITE_BATCH: u64 = 128 << 10;
/// The most pieces in one `pwritev` (well below IOV_MAX).
const WRITE_BATCH_PIECES: usize = 256;

/// Where the bytes of a range are: in memory (a shared slice), or in the file.
pub enum Segment {
    Memory(Bytes),
    File(Range<u64>),
}

#[derive(Default)]
pub struct Held {
    /// Byte ranges that arrived (in memory or written).
    arrived: RangeSet<u64>,
    /// Arrived, not yet in the file; by offset, never overlapping.
    unwritten: BTreeMap<u64, Bytes>,
    unwritten_bytes: u64,
    /// Written, kept for the hash; by offset, never overlapping.
    kept: BTreeMap<u64, Bytes>,
}

impl Held {
    /// Take `bytes` that arrived at `off`; the parts of them that arrived
    /// before are dropped. Returns whether anything new is to be written.
    pub fn arrive(&mut self, off: u64, bytes: Bytes) -> bool {
        let end = off + bytes.len() as u64;
        if bytes.is_empty() {
            return false;
        }
        let gaps: Vec<Range<u64>> = self.arrived.gaps(&(off..end)).collect();
        for g in &gaps {
            let piece = bytes.slice((g.start - off) as usize..(g.end - off) as usize);
            self.unwritten_bytes += piece.len() as u64;
            self.unwritten.insert(g.start, piece);
        }
        self.arrived.insert(off..end);
        !gaps.is_empty()
    }

    pub fn unwritten_bytes(&self) -> u64 {
        self.unwritten_bytes
    }

    /// The next run of contiguous unwritten pieces to write (they stay
    /// unwritten, so readers find them, until `written` is called).
    pub fn next_batch(&self) -> Vec<(u64, Bytes)> {
        let mut batch: Vec<(u64, Bytes)> = Vec::new();
        let mut size = 0;
        for (&off, piece) in &self.unwritten {
            if let Some((last, prev)) = batch.last() {
                if last + prev.len() as u64 != off {
                    break;
                }
            }
            if size >= WRITE_BATCH || batch.len() >= WRITE_BATCH_PIECES {
                break;
            }
            size += piece.len() as u64;
            batch.push((off, piece.clone()));
        }
        batch
    }

    /// The pieces of `batch` are in the file now: keep those the hash has not
    /// reached yet if they are near it (`hashed` is its position), drop the rest.
    pub fn written(&mut self, batch: &[(u64, Bytes)], hashed: u64) {
        for (off, sent) in batch {
            // Only the very piece that was written leaves: one `forget` may have
            // dropped while the batch was being written, and the fresh copy
            // that arrived in its place is still to be written.
            if !self.unwritten.get(off).is_some_and(|p| same_piece(p, sent)) {
                continue;
            }
            let piece = self.unwritten.remove(off).expect("just seen");
            self.unwritten_bytes -= piece.len() as u64;
            let end = off + piece.len() as u64;
            if end > hashed && *off < hashed + KEEP_AHEAD {
                self.kept.insert(*off, piece);
            }
        }
    }

    /// The bytes of `range` turned out wrong (a caller's digest did not
    /// match): they leave memory and no longer count as arrived, so the next
    /// copy fetched for the range stands. What the file holds there is
    /// overwritten when that copy is written; until then nobody reads it
    /// (the units are missing in the chunk map).
    pub fn forget(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        self.arrived.remove(range.clone());
        self.unwritten_bytes -= cut(&mut self.unwritten, &range);
        cut(&mut self.kept, &range);
    }

    /// The hash reached `hashed`: written bytes before it are not needed any more.
    pub fn hashed(&mut self, hashed: u64) {
        let later = self.kept.split_off(&hashed);
        let mut before = std::mem::replace(&mut self.kept, later);
        // A piece that straddles `hashed` is still needed for its tail.
        if let Some((&off, piece)) = before.iter().next_back() {
            if off + piece.len() as u64 > hashed {
                let (off, piece) = before.pop_last().expect("just seen");
                self.kept.insert(off, piece);
            }
        }
    }

    /// Where to find the bytes `start..end` (all arrived): memory slices and
    /// file ranges, in order.
    pub fn plan(&self, start: u64, end: u64) -> Vec<Segment> {
        let mut out = Vec::new();
        let mut pos = start;
        while pos < end {
            match self.piece_at(pos) {
                Some((off, piece)) => {
                    let to = (off + piece.len() as u64).min(end);
                    out.push(Segment::Memory(piece.slice((pos - off) as usize..(to - off) as usize)));
                    pos = to;
                }
                None => {
                    let next = [&self.unwritten, &self.kept]
                        .iter()
                        .filter_map(|m| m.range(pos..end).next().map(|(o, _)| *o))
                        .min()
                        .unwrap_or(end);
                    out.push(Segment::File(pos..next));
                    pos = next;
                }
            }
        }
        out
    }

    fn piece_at(&self, pos: u64) -> Option<(u64, &Bytes)> {
        [&self.unwritten, &self.kept].into_iter().find_map(|m| {
            m.range(..=pos)
                .next_back()
                .filter(|(o, p)| *o + p.len() as u64 > pos)
                .map(|(o, p)| (*o, p))
        })
    }

    /// Everything held is let go (the cache copy was given up).
    pub fn clear(&mut self) {
        self.unwritten.clear();
        self.unwritten_bytes = 0;
        self.kept.clear();
    }

    #[cfg(test)]
    pub fn memory_bytes(&self) -> u64 {
        self.unwritten_bytes + self.kept.values().map(|p| p.len() as u64).sum::<u64>()
    }
}

/// Two handles on the same bytes (not merely equal bytes).
fn same_piece(a: &Bytes, b: &Bytes) -> bool {
    a.as_ptr() == b.as_ptr() && a.len() == b.len()
}

/// Removes `range` from the pieces of `map` (a piece across its edge keeps
/// the part outside); returns the bytes removed.
fn cut(map: &mut BTreeMap<u64, Bytes>, range: &Range<u64>) -> u64 {
    // Pieces never overlap: walking back from the end, they overlap the range
    // until the first that ends at or before its start.
    let hit: Vec<u64> = map
        .range(..range.end)
        .rev()
        .take_while(|(o, p)| *o + p.len() as u64 > range.start)
        .map(|(o, _)| *o)
        .collect();
    let mut removed = 0;
    for off in hit {
        let piece = map.remove(&off).expect("just seen");
        let end = off + piece.len() as u64;
        if off < range.start {
            map.insert(off, piece.slice(..(range.start - off) as usize));
        }
        if end > range.end {
            map.insert(range.end, piece.slice((range.end - off) as usize..));
        }
        removed += end.min(range.end) - off.max(range.start);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(h: &Held, file: &[u8], start: u64, end: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for s in h.plan(start, end) {
            match s {
                Segment::Memory(b) => out.extend_from_slice(&b),
                Segment::File(r) => out.extend_from_slice(&file[r.start as usize..r.end as usize]),
            }
        }
        out
    }

    #[test]
    fn the_first_bytes_for_a_range_stand() {
        let mut h = Held::default();
        assert!(h.arrive(10, Bytes::from_static(b"abcd")));
        // A second copy overlapping the first, with other bytes: only its new tail counts.
        assert!(h.arrive(8, Bytes::from_static(b"XXXXXXef")));
        assert!(!h.arrive(10, Bytes::from_static(b"ZZ")), "nothing new");
        let file = vec![b'.'; 20];
        assert_eq!(bytes_of(&h, &file, 8, 16), b"XXabcdef");
        assert_eq!(h.unwritten_bytes(), 8);
    }

    #[test]
    fn written_bytes_come_from_the_file_unless_kept_for_the_hash() {
        let mut h = Held::default();
        h.arrive(0, Bytes::from_static(b"0123"));
        h.arrive(4, Bytes::from_static(b"4567"));
        h.arrive(100, Bytes::from_static(b"far"));
        let batch = h.next_batch();
        assert_eq!(batch.len(), 2, "contiguous pieces only");
        h.written(&batch, 4); // the hash is at 4: "0123" is done, "4567" is kept
        assert_eq!(h.unwritten_bytes(), 3);
        assert_eq!(h.memory_bytes(), 7);
        let mut file = vec![b'.'; 110];
        file[..8].copy_from_slice(b"0123wxyz"); // what the file holds differs, to tell them apart
        assert_eq!(bytes_of(&h, &file, 0, 8), b"01234567");
        h.hashed(8);
        assert_eq!(bytes_of(&h, &file, 2, 8), b"23wxyz");
        assert_eq!(bytes_of(&h, &file, 99, 103), b".far");
    }

    #[test]
    fn far_ahead_of_the_hash_written_bytes_are_not_kept() {
        let mut h = Held::default();
        h.arrive(KEEP_AHEAD + 10, Bytes::from_static(b"x"));
        let batch = h.next_batch();
        h.written(&batch, 0);
        assert_eq!(h.memory_bytes(), 0);
    }

    #[test]
    fn forgotten_bytes_leave_and_the_next_copy_stands() {
        let mut h = Held::default();
        h.arrive(0, Bytes::from_static(b"aaaaBADBADcccc"));
        let batch = h.next_batch(); // the writer takes the damaged piece...
        h.forget(4..10); // ...while a reader finds the damage
        assert_eq!(h.unwritten_bytes(), 8, "the bytes outside the range stay");
        assert!(
            h.arrive(4, Bytes::from_static(b"goodgo")),
            "the range is open for a new copy"
        );
        h.written(&batch, 0); // the damaged piece reached the file
                              // The fresh copy is still to be written (the writer's batch was the old one).
        let file = b"aaaaBADBADcccc".to_vec();
        assert_eq!(bytes_of(&h, &file, 0, 14), b"aaaagoodgocccc");
        let mut file = file;
        while h.unwritten_bytes() > 0 {
            let batch = h.next_batch();
            for (off, p) in &batch {
                file[*off as usize..*off as usize + p.len()].copy_from_slice(p);
            }
            h.written(&batch, 0);
        }
        assert_eq!(&file[..], b"aaaagoodgocccc", "the file ends with the fresh copy");
        // Kept pieces are cut too.
        h.forget(0..2);
        assert_eq!(bytes_of(&h, &file, 2, 14), b"aagoodgocccc");
        assert!(h.arrive(0, Bytes::from_static(b"zz")));
    }

    #[test]
    fn a_batch_is_bounded() {
        let mut h = Held::default();
        let piece = Bytes::from(vec![0u8; 64 << 10]);
        for i in 0..10u64 {
            h.arrive(i * (64 << 10), piece.clone());
        }
        let batch = h.next_batch();
        assert_eq!(batch.iter().map(|(_, p)| p.len() as u64).sum::<u64>(), WRITE_BATCH);
    }
}
