//! Spans: the seek points of a compressed layer and the digests that let a
//! ranged read of the blob be verified on its own.
//!
//! Span `i` is the compressed byte range `[comp_start, comp_end)` that, decoded
//! from its seek point (uncompressed offset `uncomp_start`, plus for gzip the
//! bit offset and the 32 KiB window), yields the uncompressed bytes up to the
//! next span's `uncomp_start`. Its sha256 is recorded while the verified pass
//! over the whole blob reads those bytes, so a span fetched later by Range is
//! trusted exactly when it hashes to the recorded value.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Decoded output between seek points, about (gzip: at least) this much.
pub const SPAN_SIZE: u64 = 4 << 20;
/// Uncompressed layers need no decoder state: smaller spans make small reads cheaper.
pub const PLAIN_SPAN_SIZE: u64 = 1 << 20;
/// Size of a deflate window.
pub const WINDOW: usize = 32 << 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// First compressed byte needed (for gzip with `bits > 0`, the partly used byte).
    pub comp_start: u64,
    /// One past the last compressed byte of the span.
    pub comp_end: u64,
    /// Uncompressed offset where decoding from this span starts.
    pub uncomp_start: u64,
    /// gzip: bits of the byte at `comp_start` still to be used (0..=7).
    pub bits: u8,
    /// gzip: the 32 KiB of output before `uncomp_start` (less at the start).
    #[serde(with = "serde_bytes_box")]
    pub window: Box<[u8]>,
    pub sha256: [u8; 32],
}

/// Records spans while a pass consumes the compressed stream.
pub struct Recorder {
    spans: Vec<Span>,
    current: Option<(Span, Sha256)>,
    consumed: u64,
    last_byte: u8,
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            spans: Vec::new(),
            current: None,
            consumed: 0,
            last_byte: 0,
        }
    }

    /// Compressed bytes consumed so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The decoder has taken `bytes` from the compressed stream.
    pub fn consume(&mut self, bytes: &[u8]) {
        if let Some((_, h)) = &mut self.current {
            h.update(bytes);
        }
        self.consumed += bytes.len() as u64;
        if let Some(&b) = bytes.last() {
            self.last_byte = b;
        }
    }

    /// A seek point at the current position: closes the span in progress and starts one.
    pub fn seek_point(&mut self, uncomp_start: u64, bits: u8, window: Box<[u8]>) {
        self.close();
        let mut h = Sha256::new();
        let mut comp_start = self.consumed;
        if bits > 0 {
            comp_start -= 1;
            h.update([self.last_byte]);
        }
        let span = Span {
            comp_start,
            comp_end: 0,
            uncomp_start,
            bits,
            window,
            sha256: [0; 32],
        };
        self.current = Some((span, h));
    }

    fn close(&mut self) {
        if let Some((mut span, h)) = self.current.take() {
            span.comp_end = self.consumed;
            span.sha256 = h.finalize().into();
            self.spans.push(span);
        }
    }

    pub fn finish(mut self) -> Vec<Span> {
        self.close();
        self.spans
    }
}

/// The last [`WINDOW`] bytes of output.
pub struct WindowRing {
    buf: Vec<u8>,
    /// Next write position once the ring is full.
    head: usize,
}

impl WindowRing {
    pub fn new() -> Self {
        WindowRing {
            buf: Vec::with_capacity(WINDOW),
            head: 0,
        }
    }

    pub fn push(&mut self, mut data: &[u8]) {
        if data.len() >= WINDOW {
            data = &data[data.len() - WINDOW..];
            self.buf.clear();
            self.buf.extend_from_slice(data);
            self.head = 0;
            return;
        }
        if self.buf.len() < WINDOW {
            let room = WINDOW - self.buf.len();
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        for chunk in [data] {
            let mut rest = chunk;
            while !rest.is_empty() {
                let n = (WINDOW - self.head).min(rest.len());
                self.buf[self.head..self.head + n].copy_from_slice(&rest[..n]);
                self.head = (self.head + n) % WINDOW;
                rest = &rest[n..];
            }
        }
    }

    pub fn snapshot(&self) -> Box<[u8]> {
        if self.buf.len() < WINDOW {
            return self.buf.clone().into_boxed_slice();
        }
        let mut v = Vec::with_capacity(WINDOW);
        v.extend_from_slice(&self.buf[self.head..]);
        v.extend_from_slice(&self.buf[..self.head]);
        v.into_boxed_slice()
    }
}

/// serde for `Box<[u8]>` as one byte string (postcard: length + bytes).
mod serde_bytes_box {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Box<[u8]>, D::Error> {
        let v: Vec<u8> = serde::de::Deserialize::deserialize(d).map(|b: ByteBuf| b.0)?;
        Ok(v.into_boxed_slice())
    }

    struct ByteBuf(Vec<u8>);

    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<ByteBuf, A::Error> {
                    let mut v = Vec::new();
                    while let Some(b) = seq.next_element()? {
                        v.push(b);
                    }
                    Ok(ByteBuf(v))
                }
            }
            d.deserialize_bytes(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_last_window() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut ring = WindowRing::new();
        for piece in data.chunks(7_777) {
            ring.push(piece);
        }
        assert_eq!(&ring.snapshot()[..], &data[data.len() - WINDOW..]);
        let mut small = WindowRing::new();
        small.push(&data[..100]);
        assert_eq!(&small.snapshot()[..], &data[..100]);
    }
}
