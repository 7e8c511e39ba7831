//! Reference models, written from CPython 3.12's `multiprocessing/connection.py`
//! (`_recv_bytes`, `_send_bytes`, `_get_digest_name_and_payload`, `_create_response`,
//! `_verify_challenge`), independently of the library under test.

use hmac::{Hmac, Mac};

// -------------------------------------------------------------------------------------------
// Framing

/// What the start of a byte string says about the next message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// Fewer bytes than the header needs.
    Incomplete,
    /// A header of `size` bytes announcing `len` payload bytes.
    Message { size: usize, len: u64 },
    /// A negative 4-byte length other than -1 (CPython would read an empty message; the
    /// library refuses it).
    Corrupt(i32),
}

/// CPython's `_recv_bytes`: `!i` length; -1 means a `!Q` length follows.
pub fn header(buf: &[u8]) -> Header {
    if buf.len() < 4 {
        return Header::Incomplete;
    }
    let size = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if size == -1 {
        if buf.len() < 12 {
            return Header::Incomplete;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[4..12]);
        return Header::Message {
            size: 12,
            len: u64::from_be_bytes(b),
        };
    }
    if size < 0 {
        return Header::Corrupt(size);
    }
    Header::Message {
        size: 4,
        len: size as u64,
    }
}

/// CPython's `_send_bytes` header: `!i` up to 0x7fffffff, else `!i` -1 and `!Q`.
pub fn encode_header(len: u64) -> Vec<u8> {
    if len > 0x7fff_ffff {
        let mut h = vec![0xff; 4];
        h.extend_from_slice(&len.to_be_bytes());
        h
    } else {
        (len as u32).to_be_bytes().to_vec()
    }
}

/// A whole message: header and payload.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut m = encode_header(payload.len() as u64);
    m.extend_from_slice(payload);
    m
}

// -------------------------------------------------------------------------------------------
// Handshake

pub const CHALLENGE: &[u8] = b"#CHALLENGE#";
pub const WELCOME: &[u8] = b"#WELCOME#";
pub const FAILURE: &[u8] = b"#FAILURE#";
pub const DIGESTS: [&str; 5] = ["md5", "sha256", "sha384", "sha3_256", "sha3_384"];
/// `max(len(d) for d in _ALLOWED_DIGESTS)`.
const MAX_DIGEST_LEN: usize = 8;

pub fn mac(digest: &str, key: &[u8], message: &[u8]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
        let mut m = <M as Mac>::new_from_slice(key).expect("HMAC takes any key");
        m.update(message);
        m.finalize().into_bytes().to_vec()
    }
    match digest {
        "md5" => run::<Hmac<md5::Md5>>(key, message),
        "sha256" => run::<Hmac<sha2::Sha256>>(key, message),
        "sha384" => run::<Hmac<sha2::Sha384>>(key, message),
        "sha3_256" => run::<Hmac<sha3::Sha3_256>>(key, message),
        "sha3_384" => run::<Hmac<sha3::Sha3_384>>(key, message),
        other => panic!("no digest {other}"),
    }
}

/// `_get_digest_name_and_payload`: `Some(("", message))` for legacy lengths, `Some((name,
/// payload))` for a prefixed message, `None` where CPython raises.
pub fn digest_and_payload(message: &[u8]) -> Option<(&'static str, &[u8])> {
    if message.len() == 20 || message.len() == 16 {
        return Some(("", message));
    }
    if message.first() != Some(&b'{') {
        return None;
    }
    // message.find(b'}', 1, _MAX_DIGEST_LEN + 2)
    let end = message.len().min(MAX_DIGEST_LEN + 2);
    let curly = (1..end).find(|&i| message[i] == b'}')?;
    let name = &message[1..curly];
    let digest = DIGESTS.into_iter().find(|d| d.as_bytes() == name)?;
    Some((digest, &message[curly + 1..]))
}

/// `_create_response` (with MD5 available).
pub fn response(key: &[u8], message: &[u8]) -> Option<Vec<u8>> {
    let (digest, _) = digest_and_payload(message)?;
    if digest.is_empty() {
        return Some(mac("md5", key, message));
    }
    let mut out = format!("{{{digest}}}").into_bytes();
    out.extend(mac(digest, key, message));
    Some(out)
}

/// What `_verify_challenge` does with an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// 'digest received was wrong'.
    Wrong,
    /// Any other `AuthenticationError` (unparsable answer, wrong length).
    Protocol,
}

/// `_verify_challenge`.
pub fn verify(key: &[u8], message: &[u8], answer: &[u8]) -> Verdict {
    let Some((digest, answer_mac)) = digest_and_payload(answer) else {
        return Verdict::Protocol;
    };
    let digest = if digest.is_empty() { "md5" } else { digest };
    let expected = mac(digest, key, message);
    if expected.len() != answer_mac.len() {
        Verdict::Protocol
    } else if expected == answer_mac {
        Verdict::Accepted
    } else {
        Verdict::Wrong
    }
}

/// `answer_challenge`'s checks on the challenge message: the `#CHALLENGE#` prefix, then at
/// least `_MD5ONLY_MESSAGE_LENGTH` (20) bytes.
pub fn challenge(message: &[u8]) -> Option<&[u8]> {
    let rest = message.strip_prefix(CHALLENGE)?;
    (rest.len() >= 20).then_some(rest)
}
