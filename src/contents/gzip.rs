//! gzip with random access, zran.c's method (as SOCI's zTOC uses it): while the
//! verified pass inflates the layer, stop at deflate block boundaries
//! (`Z_BLOCK`) and, every [`SPAN_SIZE`] of output, record a seek point — the
//! compressed position down to the bit and the last 32 KiB of output. Decoding
//! from a seek point later is a raw inflate primed with the leftover bits
//! (`inflatePrime`) and the window (`inflateSetDictionary`). zlib-rs exposes
//! both (flate2 does not).
//!
//! Multi-member gzip streams (pigz, concatenated files) are followed across
//! member boundaries in both directions; bytes after the last member that are
//! not a gzip member are ignored, as `gzip -d` does.

use std::io::{self, Read};

use libz_rs_sys::{
    inflate, inflateEnd, inflateInit2_, inflatePrime, inflateReset2, inflateSetDictionary, z_stream, zlibVersion,
    Z_BLOCK, Z_BUF_ERROR, Z_NO_FLUSH, Z_OK, Z_STREAM_END,
};

use super::spans::{Recorder, Span, WindowRing, SPAN_SIZE};

const GZIP_BITS: i32 = 31;
const RAW_BITS: i32 = -15;
const IN_BUF: usize = 64 << 10;

/// One zlib-rs inflate stream. Boxed: zlib keeps a pointer back to the stream.
struct Inflater {
    strm: Box<z_stream>,
}

fn zerr(what: &str, code: i32, strm: &z_stream) -> io::Error {
    let msg = if strm.msg.is_null() {
        String::new()
    } else {
        // SAFETY: zlib sets msg to a static NUL-terminated string or leaves it null.
        unsafe { std::ffi::CStr::from_ptr(strm.msg) }
            .to_string_lossy()
            .into_owned()
    };
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("gzip: {what} failed ({code}) {msg}"),
    )
}

impl Inflater {
    fn new(window_bits: i32) -> io::Result<Self> {
        let mut strm = Box::<z_stream>::default();
        // SAFETY: a default (zeroed, null allocator) stream, the library's own version string and struct size.
        let ret = unsafe {
            inflateInit2_(
                &mut *strm,
                window_bits,
                zlibVersion(),
                std::mem::size_of::<z_stream>() as i32,
            )
        };
        if ret != Z_OK {
            return Err(zerr("inflateInit2", ret, &strm));
        }
        Ok(Inflater { strm })
    }

    fn reset(&mut self, window_bits: i32) -> io::Result<()> {
        // SAFETY: the stream was initialized by inflateInit2_.
        let ret = unsafe { inflateReset2(&mut *self.strm, window_bits) };
        if ret != Z_OK {
            return Err(zerr("inflateReset2", ret, &self.strm));
        }
        Ok(())
    }

    fn prime(&mut self, bits: u8, value: u8) -> io::Result<()> {
        // SAFETY: initialized stream; bits <= 7.
        let ret = unsafe { inflatePrime(&mut *self.strm, bits as i32, value as i32) };
        if ret != Z_OK {
            return Err(zerr("inflatePrime", ret, &self.strm));
        }
        Ok(())
    }

    fn set_dictionary(&mut self, window: &[u8]) -> io::Result<()> {
        if window.is_empty() {
            return Ok(());
        }
        // SAFETY: initialized raw stream; the pointer and length describe `window`.
        let ret = unsafe { inflateSetDictionary(&mut *self.strm, window.as_ptr(), window.len() as u32) };
        if ret != Z_OK {
            return Err(zerr("inflateSetDictionary", ret, &self.strm));
        }
        Ok(())
    }

    /// One inflate call: (return code, bytes consumed, bytes produced, data_type).
    fn run(&mut self, input: &[u8], output: &mut [u8], flush: i32) -> (i32, usize, usize, i32) {
        let in_len = input.len().min(u32::MAX as usize);
        let out_len = output.len().min(u32::MAX as usize);
        self.strm.next_in = input.as_ptr();
        self.strm.avail_in = in_len as u32;
        self.strm.next_out = output.as_mut_ptr();
        self.strm.avail_out = out_len as u32;
        // SAFETY: next_in/next_out point into live slices of the given lengths for the call.
        let ret = unsafe { inflate(&mut *self.strm, flush) };
        let used = in_len - self.strm.avail_in as usize;
        let produced = out_len - self.strm.avail_out as usize;
        self.strm.next_in = std::ptr::null();
        self.strm.next_out = std::ptr::null_mut();
        (ret, used, produced, self.strm.data_type)
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: initialized stream, ended once.
        unsafe { inflateEnd(&mut *self.strm) };
    }
}

/// The indexing pass: a `Read` of the decompressed layer that records spans.
pub struct GzipPass<R> {
    inner: R,
    inf: Inflater,
    inbuf: Box<[u8]>,
    in_pos: usize,
    in_len: usize,
    eof: bool,
    done: bool,
    members: u64,
    rec: Recorder,
    ring: WindowRing,
    out_total: u64,
    last_point: Option<u64>,
    /// Set when bytes after the last member were ignored.
    pub trailing_garbage: bool,
}

impl<R: Read> GzipPass<R> {
    pub fn new(inner: R) -> io::Result<Self> {
        Ok(GzipPass {
            inner,
            inf: Inflater::new(GZIP_BITS)?,
            inbuf: vec![0; IN_BUF].into_boxed_slice(),
            in_pos: 0,
            in_len: 0,
            eof: false,
            done: false,
            members: 0,
            rec: Recorder::new(),
            ring: WindowRing::new(),
            out_total: 0,
            last_point: None,
            trailing_garbage: false,
        })
    }

    fn refill(&mut self) -> io::Result<()> {
        if self.in_pos == self.in_len && !self.eof {
            let n = loop {
                match self.inner.read(&mut self.inbuf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r?,
                }
            };
            self.in_pos = 0;
            self.in_len = n;
            self.eof = n == 0;
        }
        Ok(())
    }

    /// Reads the rest of the compressed stream (hashing it into the last span)
    /// and returns the spans, the uncompressed size and the inner reader.
    pub fn finish(mut self) -> io::Result<(Vec<Span>, u64, R)> {
        loop {
            let rest = &self.inbuf[self.in_pos..self.in_len];
            self.rec.consume(rest);
            self.in_pos = self.in_len;
            if self.eof {
                break;
            }
            self.refill()?;
        }
        let total = self.out_total;
        Ok((self.rec.finish(), total, self.inner))
    }
}

impl<R: Read> Read for GzipPass<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        loop {
            self.refill()?;
            let input = &self.inbuf[self.in_pos..self.in_len];
            let (ret, used, produced, data_type) = self.inf.run(input, buf, Z_BLOCK);
            self.rec.consume(&self.inbuf[self.in_pos..self.in_pos + used]);
            self.in_pos += used;
            self.ring.push(&buf[..produced]);
            self.out_total += produced as u64;
            match ret {
                Z_OK | Z_BUF_ERROR => {}
                Z_STREAM_END => {
                    self.members += 1;
                    self.refill()?;
                    if self.in_pos == self.in_len {
                        self.done = true;
                    } else {
                        self.inf.reset(GZIP_BITS)?; // another member follows (or garbage: seen below)
                    }
                    if produced > 0 || self.done {
                        return Ok(produced);
                    }
                    continue;
                }
                _ if self.members > 0 => {
                    // Not a gzip member after a complete one: trailing garbage, ignored like gzip -d.
                    self.trailing_garbage = true;
                    self.done = true;
                    return Ok(produced);
                }
                code => return Err(zerr("inflate", code, &self.inf.strm)),
            }
            // zran.c: a block boundary, not inside the last block, far enough from the previous point.
            if data_type & 128 != 0
                && data_type & 64 == 0
                && self.last_point.is_none_or(|last| self.out_total - last >= SPAN_SIZE)
            {
                self.rec
                    .seek_point(self.out_total, (data_type & 7) as u8, self.ring.snapshot());
                self.last_point = Some(self.out_total);
            }
            if produced > 0 {
                return Ok(produced);
            }
            if used == 0 && self.eof {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "gzip stream is truncated"));
            }
        }
    }
}

/// Decodes from a seek point: a `Read` of the uncompressed bytes from
/// `span.uncomp_start` on, given the compressed bytes from `span.comp_start`.
pub struct GzipReplay<R> {
    inner: R,
    inf: Inflater,
    inbuf: Box<[u8]>,
    in_pos: usize,
    in_len: usize,
    eof: bool,
    done: bool,
    /// Still decoding the raw deflate data of the member the seek point is in.
    raw: bool,
    /// gzip trailer bytes still to skip (the raw inflater does not read them).
    skip: usize,
}

impl<R: Read> GzipReplay<R> {
    pub fn new(mut inner: R, span: &Span) -> io::Result<Self> {
        let mut inf = Inflater::new(RAW_BITS)?;
        if span.bits > 0 {
            let mut b = [0u8];
            inner.read_exact(&mut b)?;
            inf.prime(span.bits, b[0] >> (8 - span.bits))?;
        }
        inf.set_dictionary(&span.window)?;
        Ok(GzipReplay {
            inner,
            inf,
            inbuf: vec![0; IN_BUF].into_boxed_slice(),
            in_pos: 0,
            in_len: 0,
            eof: false,
            done: false,
            raw: true,
            skip: 0,
        })
    }

    fn refill(&mut self) -> io::Result<()> {
        if self.in_pos == self.in_len && !self.eof {
            let n = self.inner.read(&mut self.inbuf)?;
            self.in_pos = 0;
            self.in_len = n;
            self.eof = n == 0;
        }
        Ok(())
    }
}

impl<R: Read> Read for GzipReplay<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        loop {
            self.refill()?;
            if self.skip > 0 {
                let n = self.skip.min(self.in_len - self.in_pos);
                self.in_pos += n;
                self.skip -= n;
                if self.eof {
                    self.done = true;
                    return Ok(0);
                }
                continue;
            }
            let (ret, used, produced, _) = self.inf.run(&self.inbuf[self.in_pos..self.in_len], buf, Z_NO_FLUSH);
            self.in_pos += used;
            match ret {
                Z_OK => {}
                Z_BUF_ERROR if produced == 0 && used == 0 && self.eof => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "gzip span ends early"));
                }
                Z_BUF_ERROR => {}
                Z_STREAM_END => {
                    if self.raw {
                        self.skip = 8; // CRC32 + ISIZE
                        self.raw = false;
                    }
                    self.inf.reset(GZIP_BITS)?;
                }
                code => return Err(zerr("inflate", code, &self.inf.strm)),
            }
            if produced > 0 {
                return Ok(produced);
            }
        }
    }
}

/// Decompresses the first gzip member of `bytes`, refusing more than `max_out` bytes of output.
pub fn gunzip_member(bytes: &[u8], max_out: u64) -> io::Result<Vec<u8>> {
    let mut inf = Inflater::new(GZIP_BITS)?;
    let mut out = Vec::new();
    let mut input = bytes;
    let mut buf = vec![0u8; IN_BUF];
    loop {
        let (ret, used, produced, _) = inf.run(input, &mut buf, Z_NO_FLUSH);
        input = &input[used..];
        out.extend_from_slice(&buf[..produced]);
        if out.len() as u64 > max_out {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "gzip member decompresses to more than expected",
            ));
        }
        match ret {
            Z_STREAM_END => return Ok(out),
            Z_OK => {}
            Z_BUF_ERROR if used == 0 && produced == 0 => {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "gzip member is truncated"))
            }
            Z_BUF_ERROR => {}
            code => return Err(zerr("inflate", code, &inf.strm)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut child = std::process::Command::new("gzip")
            .arg("-c")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("gzip is installed");
        let mut stdin = child.stdin.take().unwrap();
        let data = data.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&data));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success());
        out.stdout
    }

    fn sample(n: usize) -> Vec<u8> {
        // Compressible but not trivially: a text-like stream with varying numbers.
        let mut v = Vec::with_capacity(n);
        let mut i = 0u64;
        while v.len() < n {
            v.extend_from_slice(format!("line {i} value {}\n", i.wrapping_mul(2654435761) % 1000003).as_bytes());
            i += 1;
        }
        v.truncate(n);
        v
    }

    #[test]
    fn pass_records_points_and_every_span_replays_exactly() {
        let data = sample(20 << 20);
        let mut gz = gzip(&data[..12 << 20]);
        gz.extend(gzip(&data[12 << 20..])); // two members
        let mut pass = GzipPass::new(&gz[..]).unwrap();
        let mut out = Vec::new();
        pass.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        let (spans, total, _) = pass.finish().unwrap();
        assert_eq!(total, data.len() as u64);
        assert!(spans.len() >= 4, "{} spans", spans.len());
        assert_eq!(spans.last().unwrap().comp_end, gz.len() as u64);
        for (i, s) in spans.iter().enumerate() {
            let end = spans.get(i + 1).map_or(total, |n| n.uncomp_start);
            let comp = &gz[s.comp_start as usize..s.comp_end as usize];
            let mut replay = GzipReplay::new(comp, s).unwrap();
            let mut got = vec![0; (end - s.uncomp_start) as usize];
            replay.read_exact(&mut got).unwrap();
            assert_eq!(got, &data[s.uncomp_start as usize..end as usize], "span {i}");
            let sha: [u8; 32] = sha2::Sha256::digest(comp).into();
            assert_eq!(sha, s.sha256);
        }
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let gz = gzip(&sample(1 << 20));
        let mut pass = GzipPass::new(&gz[..gz.len() / 2]).unwrap();
        let err = pass.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    use sha2::Digest as _;
}
