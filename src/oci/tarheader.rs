//! Two rules of the tar format that every reader here shares: a header's
//! checksum, and the records of a PAX extended header. (Field decoding is
//! `tar::Header`'s.)

/// Does the header's stored checksum match its bytes (the sum of all 512,
/// the checksum field itself counted as spaces)?
pub fn checksum_matches(block: &[u8; 512]) -> bool {
    let sum: u32 = block[..148]
        .iter()
        .chain(&[b' '; 8])
        .chain(&block[156..])
        .map(|&b| u32::from(b))
        .sum();
    tar::Header::from_byte_slice(block).cksum().ok() == Some(sum)
}

/// The `(key, value)` records of a PAX extended header, in order
/// (`"<len> <key>=<value>\n"` each); a malformed record ends the iteration
/// with an error.
pub fn pax_records(data: &[u8]) -> impl Iterator<Item = Result<(&[u8], &[u8]), &'static str>> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let record = next_record(rest);
        rest = match record {
            Ok((_, _, len)) => &rest[len..],
            Err(_) => &[],
        };
        Some(record.map(|(key, value, _)| (key, value)))
    })
}

/// The first record of `rest`: key, value and the record's whole length.
fn next_record(rest: &[u8]) -> Result<(&[u8], &[u8], usize), &'static str> {
    let sp = rest
        .iter()
        .position(|&b| b == b' ')
        .ok_or("PAX record without a length")?;
    let len: usize = std::str::from_utf8(&rest[..sp])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or("PAX record with a bad length")?;
    if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
        return Err("PAX record with a bad length");
    }
    let record = &rest[sp + 1..len - 1];
    let eq = record.iter().position(|&b| b == b'=').ok_or("PAX record without '='")?;
    Ok((&record[..eq], &record[eq + 1..], len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_are_read_in_order_and_a_bad_one_stops_them() {
        let data = b"12 path=a/b\n12 uid=1000\n";
        let got: Vec<_> = pax_records(data).collect();
        assert_eq!(
            got,
            vec![Ok((&b"path"[..], &b"a/b"[..])), Ok((&b"uid"[..], &b"1000"[..]))]
        );
        let bad: Vec<_> = pax_records(b"12 path=a/b\n99 x=y\n12 path=c/d\n").collect();
        assert_eq!(
            bad,
            vec![Ok((&b"path"[..], &b"a/b"[..])), Err("PAX record with a bad length")]
        );
        assert_eq!(
            pax_records(b"5 a\n").collect::<Vec<_>>(),
            vec![Err("PAX record with a bad length")]
        );
        assert_eq!(
            pax_records(b"5 ab\n").collect::<Vec<_>>(),
            vec![Err("PAX record without '='")]
        );
    }

    #[test]
    fn a_header_checksum_is_checked() {
        let mut h = tar::Header::new_ustar();
        h.set_path("x").unwrap();
        h.set_size(3);
        h.set_cksum();
        let mut block = *h.as_bytes();
        assert!(checksum_matches(&block));
        block[0] ^= 1;
        assert!(!checksum_matches(&block));
    }
}
