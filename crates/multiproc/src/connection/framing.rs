//! CPython's message framing, byte for byte. Pure functions, no I/O (fuzzed by
//! `fuzz/fuzz_targets/frame.rs`).
//!
//! | payload length `n`     | header                                   |
//! |------------------------|------------------------------------------|
//! | `n <= 0x7fff_ffff`     | `n` as 4-byte big-endian signed          |
//! | `n >  0x7fff_ffff`     | `ff ff ff ff`, then `n` as 8-byte big-endian unsigned |
//!
//! CPython reads any other negative 4-byte length as an empty message (its read loop simply
//! does not run); here it is refused as a corrupt header.

/// The largest length a short header can hold.
pub(crate) const SHORT_MAX: u64 = 0x7fff_ffff;

/// The longest header.
pub(crate) const HEADER_MAX: usize = 12;

/// Writes the header for a payload of `len` bytes at the *end* of `out` and returns where it
/// starts, so that a payload placed right after `out` follows it with no copy.
pub(crate) fn write_header(len: u64, out: &mut [u8; HEADER_MAX]) -> usize {
    if len <= SHORT_MAX {
        out[8..].copy_from_slice(&(len as u32).to_be_bytes());
        8
    } else {
        out[..4].copy_from_slice(&[0xff; 4]);
        out[4..].copy_from_slice(&len.to_be_bytes());
        0
    }
}

/// What the start of a buffer says about the next message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    /// More bytes are needed to know the length.
    Incomplete,
    /// The header takes `size` bytes and announces `len` payload bytes.
    Complete { size: usize, len: u64 },
}

/// A header that no CPython sender writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("corrupt message header (length {0})")]
pub(crate) struct CorruptHeader(pub(crate) i32);

/// Parses the header at the start of `buf`.
///
/// # Errors
///
/// A negative length other than the long-header marker `-1`.
pub(crate) fn parse_header(buf: &[u8]) -> Result<Header, CorruptHeader> {
    let Some(short) = buf.first_chunk::<4>() else {
        return Ok(Header::Incomplete);
    };
    match i32::from_be_bytes(*short) {
        -1 => match buf.get(4..HEADER_MAX) {
            Some(long) => {
                let len = u64::from_be_bytes(long.try_into().unwrap_or([0; 8]));
                Ok(Header::Complete {
                    size: HEADER_MAX,
                    len,
                })
            }
            None => Ok(Header::Incomplete),
        },
        n if n < 0 => Err(CorruptHeader(n)),
        n => Ok(Header::Complete {
            size: 4,
            len: n as u64,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: u64) -> Vec<u8> {
        let mut h = [0; HEADER_MAX];
        let at = write_header(len, &mut h);
        h[at..].to_vec()
    }

    #[test]
    fn short_and_long_headers_are_cpythons() {
        assert_eq!(header(0), [0, 0, 0, 0]);
        assert_eq!(header(5), [0, 0, 0, 5]);
        assert_eq!(header(0x7fff_ffff), [0x7f, 0xff, 0xff, 0xff]);
        assert_eq!(
            header(0x8000_0000),
            [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0x80, 0, 0, 0]
        );
    }

    #[test]
    fn parse_inverts_write() {
        for len in [0, 1, 255, 0x7fff_ffff, 0x8000_0000, u64::MAX] {
            let h = header(len);
            assert_eq!(
                parse_header(&h),
                Ok(Header::Complete { size: h.len(), len })
            );
            for cut in 0..h.len() {
                assert_eq!(parse_header(&h[..cut]), Ok(Header::Incomplete));
            }
        }
    }

    #[test]
    fn other_negative_lengths_are_corrupt() {
        assert_eq!(
            parse_header(&[0xff, 0xff, 0xff, 0xfe]),
            Err(CorruptHeader(-2))
        );
        assert_eq!(parse_header(&[0x80, 0, 0, 0]), Err(CorruptHeader(i32::MIN)));
    }
}
