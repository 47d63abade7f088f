//! zstd and uncompressed layers in the indexing pass.
//!
//! zstd: a decoder can only start at a frame boundary, so frames are the seek
//! points (one every [`SPAN_SIZE`] of output at most). A layer written as a
//! single frame — what `zstd` and most image builders produce — has one span:
//! a cold read decompresses it from its start (documented in docs/contents.md).
//!
//! Uncompressed tar: the seek points are simply every [`PLAIN_SPAN_SIZE`] bytes.

use std::io::{self, Read};

use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};

use super::spans::{Recorder, Span, PLAIN_SPAN_SIZE, SPAN_SIZE};

const IN_BUF: usize = 64 << 10;

/// The indexing pass over a zstd stream.
pub struct ZstdPass<R> {
    inner: R,
    dec: Decoder<'static>,
    inbuf: Box<[u8]>,
    in_pos: usize,
    in_len: usize,
    eof: bool,
    /// Between frames (at the start, or the last frame fully decoded and flushed).
    at_boundary: bool,
    rec: Recorder,
    out_total: u64,
    last_point: Option<u64>,
}

impl<R: Read> ZstdPass<R> {
    pub fn new(inner: R) -> io::Result<Self> {
        Ok(ZstdPass {
            inner,
            dec: Decoder::new()?,
            inbuf: vec![0; IN_BUF].into_boxed_slice(),
            in_pos: 0,
            in_len: 0,
            eof: false,
            at_boundary: true,
            rec: Recorder::new(),
            out_total: 0,
            last_point: None,
        })
    }

    pub fn finish(mut self) -> io::Result<(Vec<Span>, u64, R)> {
        loop {
            self.rec.consume(&self.inbuf[self.in_pos..self.in_len]);
            self.in_pos = self.in_len;
            if self.eof {
                break;
            }
            let n = self.inner.read(&mut self.inbuf)?;
            self.in_len = n;
            self.in_pos = 0;
            self.eof = n == 0;
        }
        let total = self.out_total;
        Ok((self.rec.finish(), total, self.inner))
    }
}

impl<R: Read> Read for ZstdPass<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.in_pos == self.in_len && !self.eof {
                self.in_len = self.inner.read(&mut self.inbuf)?;
                self.in_pos = 0;
                self.eof = self.in_len == 0;
            }
            if self.in_pos == self.in_len && self.eof {
                if self.at_boundary {
                    return Ok(0);
                }
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "zstd stream is truncated"));
            }
            if self.at_boundary && self.last_point.is_none_or(|last| self.out_total - last >= SPAN_SIZE) {
                self.rec.seek_point(self.out_total, 0, Box::default());
                self.last_point = Some(self.out_total);
            }
            let mut input = InBuffer::around(&self.inbuf[self.in_pos..self.in_len]);
            let mut output = OutBuffer::around(buf);
            let hint = self
                .dec
                .run(&mut input, &mut output)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}")))?;
            let used = input.pos();
            let produced = output.pos();
            self.rec.consume(&self.inbuf[self.in_pos..self.in_pos + used]);
            self.in_pos += used;
            self.out_total += produced as u64;
            self.at_boundary = hint == 0;
            if produced > 0 {
                return Ok(produced);
            }
        }
    }
}

/// Decodes zstd from a frame boundary.
pub fn replay<'a, R: Read + 'a>(inner: R) -> io::Result<Box<dyn Read + 'a>> {
    Ok(Box::new(zstd::stream::read::Decoder::new(inner)?))
}

/// The indexing pass over an uncompressed tar: bytes pass through, a span every
/// [`PLAIN_SPAN_SIZE`].
pub struct PlainPass<R> {
    inner: R,
    rec: Recorder,
    eof: bool,
}

impl<R: Read> PlainPass<R> {
    pub fn new(inner: R) -> Self {
        let mut rec = Recorder::new();
        rec.seek_point(0, 0, Box::default());
        PlainPass { inner, rec, eof: false }
    }

    pub fn finish(mut self) -> io::Result<(Vec<Span>, u64, R)> {
        io::copy(&mut self, &mut io::sink())?;
        let total = self.rec.consumed();
        Ok((self.rec.finish(), total, self.inner))
    }
}

impl<R: Read> Read for PlainPass<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.eof || buf.is_empty() {
            return Ok(0);
        }
        let pos = self.rec.consumed();
        let to_boundary = PLAIN_SPAN_SIZE - pos % PLAIN_SPAN_SIZE;
        let want = buf.len().min(to_boundary as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            self.eof = true;
            return Ok(0);
        }
        self.rec.consume(&buf[..n]);
        let pos = self.rec.consumed();
        if pos.is_multiple_of(PLAIN_SPAN_SIZE) {
            self.rec.seek_point(pos, 0, Box::default());
        }
        Ok(n)
    }
}
