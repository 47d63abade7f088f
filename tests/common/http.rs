//! Just enough HTTP/1.1 for the test servers (token issuer, fault proxy):
//! reading a message head, headers, bodies by `Content-Length` or chunked
//! encoding, and query strings.

use std::io::{self, BufRead, BufReader, Read, Write};

/// A parsed message head (request or response).
#[derive(Debug, Clone, Default)]
pub struct Head {
    /// `GET /v2/ HTTP/1.1` or `HTTP/1.1 200 OK`.
    pub start_line: String,
    /// Header names as sent, in order.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn remove_header(&mut self, name: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    pub fn set_header(&mut self, name: &str, value: &str) {
        self.remove_header(name);
        self.headers.push((name.to_string(), value.to_string()));
    }

    /// Request method (first word of the start line).
    pub fn method(&self) -> &str {
        self.start_line.split(' ').next().unwrap_or("")
    }

    /// Request target (second word of the start line), e.g. `/v2/a/tags/list?n=2`.
    pub fn target(&self) -> &str {
        self.start_line.split(' ').nth(1).unwrap_or("")
    }

    /// Response status code (second word of the start line).
    pub fn status(&self) -> u16 {
        self.start_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length").and_then(|v| v.trim().parse().ok())
    }

    pub fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .map(|v| v.to_ascii_lowercase().contains("chunked"))
            .unwrap_or(false)
    }

    /// Serializes the head, including the blank line that ends it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = String::new();
        s.push_str(&self.start_line);
        s.push_str("\r\n");
        for (k, v) in &self.headers {
            s.push_str(k);
            s.push_str(": ");
            s.push_str(v);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s.into_bytes()
    }
}

/// Reads a message head. `Ok(None)` on a clean EOF before any byte.
pub fn read_head<R: BufRead>(r: &mut R) -> io::Result<Option<Head>> {
    let mut head = Head::default();
    let mut first = true;
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line)?;
        if n == 0 {
            if first {
                return Ok(None);
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF inside an HTTP head"));
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if first {
            if line.is_empty() {
                // Tolerate stray CRLF between messages.
                continue;
            }
            head.start_line = line;
            first = false;
            continue;
        }
        if line.is_empty() {
            return Ok(Some(head));
        }
        if let Some((k, v)) = line.split_once(':') {
            head.headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
}

/// Reads a whole body described by `head` (`Content-Length`, chunked, or, when
/// `until_eof_allowed`, everything up to EOF). For requests pass `false`.
pub fn read_body<R: BufRead>(r: &mut R, head: &Head, until_eof_allowed: bool) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if head.is_chunked() {
        let mut raw = Vec::new();
        copy_chunked(r, &mut raw, Some(&mut body))?;
    } else if let Some(n) = head.content_length() {
        r.take(n).read_to_end(&mut body)?;
        if body.len() as u64 != n {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short body"));
        }
    } else if until_eof_allowed {
        r.read_to_end(&mut body)?;
    }
    Ok(body)
}

/// Copies a chunked body verbatim (framing included) from `r` to `w`; when
/// `decoded` is given, also appends the de-chunked payload to it.
pub fn copy_chunked<R: BufRead, W: Write>(r: &mut R, w: &mut W, mut decoded: Option<&mut Vec<u8>>) -> io::Result<()> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF in chunk size"));
        }
        w.write_all(line.as_bytes())?;
        let size_str = line.trim().split(';').next().unwrap_or("").trim().to_string();
        let size = u64::from_str_radix(&size_str, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let mut t = String::new();
                if r.read_line(&mut t)? == 0 {
                    return Ok(());
                }
                w.write_all(t.as_bytes())?;
                if t.trim().is_empty() {
                    return Ok(());
                }
            }
        }
        let mut chunk = Vec::with_capacity(size as usize);
        r.take(size).read_to_end(&mut chunk)?;
        if chunk.len() as u64 != size {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short chunk"));
        }
        w.write_all(&chunk)?;
        if let Some(d) = decoded.as_deref_mut() {
            d.extend_from_slice(&chunk);
        }
        let mut crlf = String::new();
        r.read_line(&mut crlf)?;
        w.write_all(crlf.as_bytes())?;
    }
}

/// Writes a complete response with a `Content-Length` body.
pub fn write_response<W: Write>(
    w: &mut W,
    status: u16,
    reason: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    let mut head = Head {
        start_line: format!("HTTP/1.1 {status} {reason}"),
        headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    };
    head.set_header("Content-Length", &body.len().to_string());
    w.write_all(&head.to_bytes())?;
    w.write_all(body)?;
    w.flush()
}

/// Splits a request target into path and decoded query pairs (repeated keys kept).
pub fn split_target(target: &str) -> (String, Vec<(String, String)>) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    (percent_decode(path), parse_query(query))
}

/// Parses `a=1&b=2` (also `application/x-www-form-urlencoded` bodies).
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Decodes `%XX` escapes and `+` (as space).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes everything but unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A buffered reader over a cloned stream, so the writer half stays usable.
pub fn buffered(stream: &std::net::TcpStream) -> io::Result<BufReader<std::net::TcpStream>> {
    Ok(BufReader::with_capacity(64 * 1024, stream.try_clone()?))
}
