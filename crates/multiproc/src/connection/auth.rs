//! CPython's mutual challenge-response handshake, message for message.
//!
//! The side that accepts delivers a challenge and checks the answer, then answers the
//! other side's challenge; the side that connects does the reverse.
//!
//! ```text
//! challenger                                   answerer
//!   #CHALLENGE#{sha256}<40 random bytes>  ->
//!                                         <-   {sha256}<HMAC-SHA256(key, {sha256}<40 bytes>)>
//!   #WELCOME#  or  #FAILURE#              ->
//! ```
//!
//! - The MAC covers the whole message after `#CHALLENGE#`, digest prefix included, so a
//!   peer cannot downgrade the digest of a prefixed challenge.
//! - Legacy (CPython 3.11 and older): the challenge is 20 bare random bytes and the answer
//!   16 bytes of bare HMAC-MD5. A message of exactly 20 or 16 bytes means legacy; anything
//!   else must start with `{name}` naming md5, sha256, sha384, sha3_256 or sha3_384 within
//!   its first 10 bytes. A 3.11 peer answers a modern challenge with bare HMAC-MD5 over the
//!   whole message, which is accepted, as CPython 3.12+ does.
//! - Every handshake message is read with a 256-byte limit, and the whole handshake has a
//!   deadline (CPython has none: a silent peer hangs it).
//! - Answers are compared in constant time (`hmac`'s `verify_slice`).

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};

use super::ConnectionError;
use super::endpoint::Endpoint;

/// How long a handshake may take by default, from the first byte to the last.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

const CHALLENGE: &[u8] = b"#CHALLENGE#";
const WELCOME: &[u8] = b"#WELCOME#";
const FAILURE: &[u8] = b"#FAILURE#";
/// Random bytes in a modern challenge.
const MESSAGE_LENGTH: usize = 40;
/// Lengths that mean the legacy protocol: a 3.11 challenge, a bare HMAC-MD5 answer.
const LEGACY_CHALLENGE_LENGTH: usize = 20;
const MD5_LENGTH: usize = 16;
/// The longest digest name, `sha3_384`.
const MAX_DIGEST_NAME: usize = 8;
/// Handshake messages are read with this limit.
pub(crate) const MAX_HANDSHAKE_MESSAGE: u64 = 256;

/// Why a handshake failed. The messages of the two CPython failures are CPython's.
///
/// # Examples
///
/// ```
/// use multiproc::connection::{AuthenticationError, Client, ConnectionError, Listener};
///
/// let mut listener = Listener::builder().authkey(b"right").bind()?;
/// let address = listener.address().clone();
/// let client = std::thread::spawn(move || {
///     Client::new(address).authkey(b"wrong").connect::<(), multiproc::codec::Postcard>()
/// });
/// let server_side = listener.accept::<(), multiproc::codec::Postcard>().unwrap_err();
/// assert_eq!(server_side.to_string(), "digest received was wrong");
/// let client_side = client.join().unwrap().unwrap_err();
/// assert!(matches!(
///     client_side,
///     ConnectionError::Authentication(AuthenticationError::DigestRejected)
/// ));
/// # Ok::<(), ConnectionError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthenticationError {
    /// The peer's answer to our challenge was wrong (it holds another key).
    #[error("digest received was wrong")]
    DigestWrong,
    /// The peer did not welcome our answer (it holds another key).
    #[error("digest sent was rejected")]
    DigestRejected,
    /// The peer does not speak the handshake (garbage, an unknown digest, a message too
    /// long or too short).
    #[error("authentication failed: {0}")]
    Protocol(String),
    /// The handshake did not finish in time (the peer is silent, or expects no handshake).
    #[error(
        "authentication did not finish within {0:?} (is the peer silent, or using no authkey?)"
    )]
    Timeout(Duration),
    /// The peer closed the connection during the handshake.
    #[error("the peer closed the connection during authentication")]
    PeerClosed,
}

/// The digests CPython accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Digest {
    Md5,
    Sha256,
    Sha384,
    Sha3_256,
    Sha3_384,
}

macro_rules! with_hmac {
    ($digest:expr, $mac:ident => $body:expr) => {
        match $digest {
            Digest::Md5 => {
                type $mac = Hmac<md5::Md5>;
                $body
            }
            Digest::Sha256 => {
                type $mac = Hmac<sha2::Sha256>;
                $body
            }
            Digest::Sha384 => {
                type $mac = Hmac<sha2::Sha384>;
                $body
            }
            Digest::Sha3_256 => {
                type $mac = Hmac<sha3::Sha3_256>;
                $body
            }
            Digest::Sha3_384 => {
                type $mac = Hmac<sha3::Sha3_384>;
                $body
            }
        }
    };
}

impl Digest {
    const ALL: [Digest; 5] = [
        Digest::Md5,
        Digest::Sha256,
        Digest::Sha384,
        Digest::Sha3_256,
        Digest::Sha3_384,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Digest::Md5 => "md5",
            Digest::Sha256 => "sha256",
            Digest::Sha384 => "sha384",
            Digest::Sha3_256 => "sha3_256",
            Digest::Sha3_384 => "sha3_384",
        }
    }

    fn from_name(name: &[u8]) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name().as_bytes() == name)
    }

    fn mac(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        with_hmac!(self, M => keyed::<M>(key, message).finalize().into_bytes().to_vec())
    }

    fn output_len(self) -> usize {
        with_hmac!(self, M => <M as hmac::digest::OutputSizeUser>::output_size())
    }

    /// Constant-time check of `tag` against the MAC of `message`.
    fn verify(self, key: &[u8], message: &[u8], tag: &[u8]) -> bool {
        with_hmac!(self, M => keyed::<M>(key, message).verify_slice(tag).is_ok())
    }
}

/// An HMAC under `key` that has taken in `message`.
fn keyed<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8]) -> M {
    // HMAC takes keys of any length; this cannot fail.
    let mut m = <M as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(message);
    m
}

/// Splits a handshake message into its digest (`None`: legacy, bare MD5) and payload, as
/// CPython's `_get_digest_name_and_payload`.
pub(crate) fn digest_and_payload(
    message: &[u8],
) -> Result<(Option<Digest>, &[u8]), AuthenticationError> {
    if message.len() == LEGACY_CHALLENGE_LENGTH || message.len() == MD5_LENGTH {
        return Ok((None, message));
    }
    if message.first() == Some(&b'{') {
        let window = &message[1..message.len().min(MAX_DIGEST_NAME + 2)];
        if let Some(curly) = window.iter().position(|&b| b == b'}') {
            if let Some(d) = Digest::from_name(&window[..curly]) {
                return Ok((Some(d), &message[curly + 2..]));
            }
        }
    }
    Err(AuthenticationError::Protocol(format!(
        "unsupported message length, missing digest prefix, or unsupported digest ({} bytes)",
        message.len()
    )))
}

/// The answer to a challenge `message` (what follows `#CHALLENGE#`), as CPython's
/// `_create_response`.
pub(crate) fn response(authkey: &[u8], message: &[u8]) -> Result<Vec<u8>, AuthenticationError> {
    match digest_and_payload(message)?.0 {
        None => Ok(Digest::Md5.mac(authkey, message)),
        Some(d) => {
            let mut out = format!("{{{}}}", d.name()).into_bytes();
            out.extend_from_slice(&d.mac(authkey, message));
            Ok(out)
        }
    }
}

/// Checks an answer to our challenge `message`, as CPython's `_verify_challenge`.
pub(crate) fn verify(
    authkey: &[u8],
    message: &[u8],
    answer: &[u8],
) -> Result<(), AuthenticationError> {
    let (digest, mac) = digest_and_payload(answer)?;
    let digest = digest.unwrap_or(Digest::Md5);
    if mac.len() != digest.output_len() {
        return Err(AuthenticationError::Protocol(format!(
            "expected {:?} of length {} got {}",
            digest.name(),
            digest.output_len(),
            mac.len()
        )));
    }
    if digest.verify(authkey, message, mac) {
        Ok(())
    } else {
        Err(AuthenticationError::DigestWrong)
    }
}

/// A fresh challenge: `{sha256}` and 40 random bytes.
pub(crate) fn new_challenge() -> Vec<u8> {
    let mut m = b"{sha256}".to_vec();
    m.extend_from_slice(&crate::sys::random_bytes::<MESSAGE_LENGTH>());
    m
}

/// Reads one handshake message, mapping what can go wrong to authentication errors.
fn recv_handshake(
    end: &mut Endpoint,
    deadline: Instant,
    budget: Duration,
) -> Result<Vec<u8>, ConnectionError> {
    match end.recv(Some(deadline), Some(MAX_HANDSHAKE_MESSAGE)) {
        Ok(m) => Ok(m.payload.into_vec()),
        Err(e) => Err(handshake_error(e, budget)),
    }
}

fn send_handshake(
    end: &Endpoint,
    first: &[u8],
    second: &[u8],
    deadline: Instant,
    budget: Duration,
) -> Result<(), ConnectionError> {
    end.send(first, second, &[], Some(deadline))
        .map_err(|e| handshake_error(e, budget))
}

fn handshake_error(e: ConnectionError, budget: Duration) -> ConnectionError {
    let auth = match e {
        ConnectionError::Timeout => AuthenticationError::Timeout(budget),
        ConnectionError::Eof | ConnectionError::EofDuringMessage => AuthenticationError::PeerClosed,
        ConnectionError::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            AuthenticationError::PeerClosed
        }
        ConnectionError::BadMessageLength
        | ConnectionError::TooLarge { .. }
        | ConnectionError::CorruptHeader(_) => AuthenticationError::Protocol(
            "handshake message longer than 256 bytes or malformed".into(),
        ),
        other => return other,
    };
    ConnectionError::Authentication(auth)
}

/// Sends a challenge and checks the answer (CPython's `deliver_challenge`).
pub(crate) fn deliver_challenge(
    end: &mut Endpoint,
    authkey: &[u8],
    deadline: Instant,
    budget: Duration,
) -> Result<(), ConnectionError> {
    let message = new_challenge();
    send_handshake(end, CHALLENGE, &message, deadline, budget)?;
    let answer = recv_handshake(end, deadline, budget)?;
    match verify(authkey, &message, &answer) {
        Ok(()) => send_handshake(end, WELCOME, &[], deadline, budget),
        Err(e) => {
            let _ = end.send(FAILURE, &[], &[], Some(deadline));
            Err(e.into())
        }
    }
}

/// Answers the peer's challenge (CPython's `answer_challenge`).
pub(crate) fn answer_challenge(
    end: &mut Endpoint,
    authkey: &[u8],
    deadline: Instant,
    budget: Duration,
) -> Result<(), ConnectionError> {
    let message = recv_handshake(end, deadline, budget)?;
    let challenge = parse_challenge(&message)?;
    let answer = response(authkey, challenge)?;
    send_handshake(end, &answer, &[], deadline, budget)?;
    let verdict = recv_handshake(end, deadline, budget)?;
    if verdict == WELCOME {
        Ok(())
    } else {
        Err(AuthenticationError::DigestRejected.into())
    }
}

/// The challenge in a `#CHALLENGE#` message.
pub(crate) fn parse_challenge(message: &[u8]) -> Result<&[u8], AuthenticationError> {
    let challenge = message.strip_prefix(CHALLENGE).ok_or_else(|| {
        AuthenticationError::Protocol("expected a challenge, got something else".into())
    })?;
    if challenge.len() < LEGACY_CHALLENGE_LENGTH {
        return Err(AuthenticationError::Protocol(format!(
            "challenge too short: {} bytes",
            challenge.len()
        )));
    }
    Ok(challenge)
}

/// Both halves, in the order of the side that accepted the connection.
pub(crate) fn as_listener(
    end: &mut Endpoint,
    authkey: &[u8],
    budget: Duration,
) -> Result<(), ConnectionError> {
    let deadline = Instant::now() + budget;
    deliver_challenge(end, authkey, deadline, budget)?;
    answer_challenge(end, authkey, deadline, budget)
}

/// Both halves, in the order of the side that connected.
pub(crate) fn as_client(
    end: &mut Endpoint,
    authkey: &[u8],
    budget: Duration,
) -> Result<(), ConnectionError> {
    let deadline = Instant::now() + budget;
    answer_challenge(end, authkey, deadline, budget)?;
    deliver_challenge(end, authkey, deadline, budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modern_answers_carry_their_digest_and_cover_the_prefix() {
        let challenge = new_challenge();
        let answer = response(b"key", &challenge).unwrap();
        assert!(answer.starts_with(b"{sha256}"));
        assert_eq!(answer.len(), 8 + 32);
        verify(b"key", &challenge, &answer).unwrap();
        assert_eq!(
            verify(b"other", &challenge, &answer),
            Err(AuthenticationError::DigestWrong)
        );
    }

    #[test]
    fn every_allowed_digest_verifies() {
        let challenge = new_challenge();
        for d in Digest::ALL {
            let mut answer = format!("{{{}}}", d.name()).into_bytes();
            answer.extend(d.mac(b"k", &challenge));
            verify(b"k", &challenge, &answer).unwrap();
        }
    }

    #[test]
    fn legacy_challenges_get_bare_md5_and_bare_md5_answers_are_accepted() {
        let legacy = [7u8; 20];
        let answer = response(b"k", &legacy).unwrap();
        assert_eq!(answer.len(), 16);
        verify(b"k", &legacy, &answer).unwrap();
        // A 3.11 peer answering a modern challenge: bare MD5 over all of it.
        let modern = new_challenge();
        verify(b"k", &modern, &Digest::Md5.mac(b"k", &modern)).unwrap();
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        for bad in [
            &b"{sha1}xxxxxxxxxxxxxxxxxxxxxx"[..],
            b"",
            b"{sha256",
            b"plain text here!!?",
        ] {
            assert!(matches!(
                digest_and_payload(bad),
                Err(AuthenticationError::Protocol(_))
            ));
        }
        assert!(parse_challenge(b"#CHALLENGE#short").is_err());
        assert!(parse_challenge(b"HELLO").is_err());
        let c = new_challenge();
        assert!(matches!(
            verify(b"k", &c, b"{sha256}short!"),
            Err(AuthenticationError::Protocol(_))
        ));
    }
}
