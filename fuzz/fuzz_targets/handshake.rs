//! The handshake end to end, both roles: the library connects with a `Client` to a raw
//! socket, or accepts with a `Listener` a raw client; a thread plays the peer, driven by the
//! input, sending at each step the right message, a wrong one, arbitrary framed bytes,
//! arbitrary unframed bytes (then shutting its writing side), or nothing (closing).
//!
//! Checked against the reference model of CPython's handshake: the library's answer to the
//! peer's challenge is byte for byte CPython's; its own challenge is `#CHALLENGE#{sha256}`
//! and 40 bytes; it welcomes exactly the answers CPython accepts; it refuses (closing, with the
//! right `AuthenticationError`) everything else; it succeeds only when the peer played right.
//! Never a panic, never a timeout (the peer never leaves it waiting), no descriptor leaked.
//!
//! Input: `[role+key length] [key] steps...`; each step reads what it needs from the rest.
#![no_main]

use std::io::{self, Read};
use std::net::Shutdown;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use multiproc::Connection;
use multiproc::codec::Postcard;
use multiproc::connection::{AuthenticationError, Client, ConnectionError, Listener};
use multiproc_fuzz::model::{self, CHALLENGE, FAILURE, Verdict, WELCOME};
use multiproc_fuzz::{Cursor, open_fds, send_all};

/// The library's handshake timeout; the peer never makes it wait, so reaching it is a bug.
const HANDSHAKE: Duration = Duration::from_secs(5);
/// How long the peer waits for the library before declaring it hung.
const PEER_WAIT: Duration = Duration::from_secs(10);
/// The library reads handshake messages with this limit.
const LIMIT: usize = 256;

/// How the library's handshake must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Connected,
    Protocol,
    DigestWrong,
    DigestRejected,
    PeerClosed,
    /// The peer sent unframed bytes: any ending but a timeout.
    Unknown,
}

/// Why the peer stopped playing.
struct Stop(Outcome);

struct Peer<'a> {
    sock: UnixStream,
    cur: Cursor<'a>,
    key: Vec<u8>,
}

impl Peer<'_> {
    /// Reads one message of the library's, `None` at end of file.
    fn read(&mut self, step: &str) -> Option<Vec<u8>> {
        let mut header = [0u8; 4];
        match read_exact_or_eof(&mut self.sock, &mut header, step) {
            Some(true) => {}
            _ => return None,
        }
        let len = i32::from_be_bytes(header);
        assert!(
            (0..=LIMIT as i32).contains(&len),
            "{step}: the library sent a message of length {len}"
        );
        let mut body = vec![0u8; len as usize];
        match read_exact_or_eof(&mut self.sock, &mut body, step) {
            Some(true) => Some(body),
            _ => panic!("{step}: the library closed in the middle of its message"),
        }
    }

    /// Reads until the library closes; it must send nothing more.
    fn expect_close(&mut self, step: &str) {
        if let Some(m) = self.read(step) {
            panic!("{step}: the library should have closed, but sent {m:02x?}");
        }
    }

    /// Reads whatever the library sends until it closes.
    fn drain(&mut self) {
        while self.read("draining").is_some() {}
    }

    fn send(&mut self, bytes: &[u8]) {
        // The library may have closed already (its error is checked at the end).
        let _ = send_all(&self.sock, bytes, &[]);
    }

    /// Sends a message the input chose, or arbitrary bytes, or closes. `right` is the correct
    /// message; returns the message sent (framed), or stops.
    fn choose(
        &mut self,
        right: Vec<u8>,
        wrong: impl FnOnce(&mut Self) -> Vec<u8>,
    ) -> Result<Vec<u8>, Stop> {
        let c = self.cur.byte();
        let body = match c % 8 {
            0..=3 => right,
            4 => wrong(self),
            5 => {
                let n = self.cur.uint(2) as usize % 400;
                self.cur.bytes(n).to_vec()
            }
            6 => {
                let n = self.cur.byte() as usize;
                let raw = self.cur.bytes(n).to_vec();
                self.send(&raw);
                let _ = self.sock.shutdown(Shutdown::Write);
                self.drain();
                return Err(Stop(Outcome::Unknown));
            }
            _ => {
                // Close: the library, waiting for this message, sees end of file.
                return Err(Stop(Outcome::PeerClosed));
            }
        };
        self.send(&model::frame(&body));
        Ok(body)
    }

    /// The peer challenges, the library answers, the peer gives its verdict.
    fn challenge_library(&mut self) -> Result<(), Stop> {
        let digest = model::DIGESTS[self.cur.byte() as usize % 5];
        let mut right = CHALLENGE.to_vec();
        right.extend(format!("{{{digest}}}").bytes());
        right.extend(self.cur.padded(40));
        let challenge = self.choose(right, |p| {
            let mut m = CHALLENGE.to_vec();
            if p.cur.byte() % 2 == 0 {
                m.extend(p.cur.padded(20)); // legacy
            } else {
                let n = p.cur.byte() as usize;
                m.extend(p.cur.bytes(n));
            }
            m
        })?;
        let expected = if challenge.len() > LIMIT {
            None
        } else {
            model::challenge(&challenge).and_then(|c| model::response(&self.key, c))
        };
        let Some(expected) = expected else {
            self.expect_close("after a challenge CPython refuses");
            return Err(Stop(Outcome::Protocol));
        };
        match self.read("the library's answer") {
            Some(answer) => assert_eq!(
                answer, expected,
                "the library's answer to {challenge:02x?} is not CPython's"
            ),
            None => panic!("the library refused the challenge {challenge:02x?}"),
        }
        let verdict = self.choose(WELCOME.to_vec(), |_| FAILURE.to_vec())?;
        if verdict != WELCOME {
            self.expect_close("after a refusal");
            return Err(Stop(if verdict.len() > LIMIT {
                Outcome::Protocol
            } else {
                Outcome::DigestRejected
            }));
        }
        Ok(())
    }

    /// The library challenges, the peer answers, the library gives its verdict.
    fn answer_library(&mut self) -> Result<(), Stop> {
        let Some(message) = self.read("the library's challenge") else {
            panic!("the library closed instead of challenging");
        };
        let challenge = message
            .strip_prefix(CHALLENGE)
            .unwrap_or_else(|| panic!("not a challenge: {message:02x?}"))
            .to_vec();
        assert!(
            challenge.starts_with(b"{sha256}") && challenge.len() == 48,
            "the library's challenge is not {{sha256}} and 40 bytes: {challenge:02x?}"
        );
        let digest = self.cur.byte() as usize % 6;
        let right = if digest == 5 {
            model::mac("md5", &self.key, &challenge) // a 3.11 peer's bare MD5
        } else {
            let d = model::DIGESTS[digest];
            let mut a = format!("{{{d}}}").into_bytes();
            a.extend(model::mac(d, &self.key, &challenge));
            a
        };
        let answer = self.choose(right.clone(), |p| {
            let mut bad = right.clone();
            let bit = p.cur.byte() as usize % (bad.len() * 8);
            bad[bit / 8] ^= 1 << (bit % 8);
            bad
        })?;
        let verdict = if answer.len() > LIMIT {
            Verdict::Protocol
        } else {
            model::verify(&self.key, &challenge, &answer)
        };
        let said = self.read("the library's verdict");
        if verdict == Verdict::Accepted {
            assert_eq!(
                said.as_deref(),
                Some(WELCOME),
                "answer {answer:02x?} not welcomed"
            );
            return Ok(());
        }
        if answer.len() <= LIMIT {
            assert_eq!(
                said.as_deref(),
                Some(FAILURE),
                "answer {answer:02x?} not refused"
            );
        }
        self.expect_close("after refusing an answer");
        Err(Stop(match verdict {
            Verdict::Wrong => Outcome::DigestWrong,
            _ => Outcome::Protocol,
        }))
    }
}

/// `Some(true)` when `buf` is filled, `Some(false)`/`None` at end of file (before/inside).
fn read_exact_or_eof(sock: &mut UnixStream, buf: &mut [u8], step: &str) -> Option<bool> {
    let mut got = 0;
    while got < buf.len() {
        match sock.read(&mut buf[got..]) {
            Ok(0) => return if got == 0 { Some(false) } else { None },
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Some(false),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                panic!("{step}: the library neither sent nor closed for {PEER_WAIT:?}")
            }
            Err(e) => panic!("{step}: {e}"),
        }
    }
    Some(true)
}

/// Plays the peer; returns how the library's handshake must end.
fn play(sock: UnixStream, input: &[u8], key: Vec<u8>, library_connects: bool) -> Outcome {
    sock.set_read_timeout(Some(PEER_WAIT)).expect("timeout");
    let mut peer = Peer {
        sock,
        cur: Cursor::new(input),
        key,
    };
    // The side that accepts challenges first.
    let r = if library_connects {
        peer.challenge_library()
            .and_then(|()| peer.answer_library())
    } else {
        peer.answer_library()
            .and_then(|()| peer.challenge_library())
    };
    match r {
        Ok(()) => Outcome::Connected,
        Err(Stop(o)) => o,
    }
}

fn outcome(r: &Result<Connection<(), Postcard>, ConnectionError>) -> Outcome {
    use AuthenticationError as A;
    match r {
        Ok(_) => Outcome::Connected,
        Err(ConnectionError::Authentication(a)) => match a {
            A::Protocol(_) => Outcome::Protocol,
            A::DigestWrong => Outcome::DigestWrong,
            A::DigestRejected => Outcome::DigestRejected,
            A::PeerClosed => Outcome::PeerClosed,
            other => panic!("handshake ended with {other:?}"),
        },
        Err(e) => panic!("handshake ended with {e:?}"),
    }
}

/// The library's outcome, its connection closed (so a peer still reading sees end of file).
fn report(r: Result<Connection<(), Postcard>, ConnectionError>) -> (Outcome, String) {
    (outcome(&r), format!("{r:?}"))
}

fn join(peer: std::thread::JoinHandle<Outcome>) -> Outcome {
    peer.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// The raw listening socket the library's `Client` connects to (one per process).
fn raw_listener() -> &'static (UnixListener, String) {
    static L: OnceLock<(UnixListener, String)> = OnceLock::new();
    L.get_or_init(|| {
        let name = format!("multiproc-fuzz-peer-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
        let l = UnixListener::bind_addr(&addr).expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        (l, format!("@{name}"))
    })
}

fn accept_raw(l: &UnixListener) -> UnixStream {
    let until = Instant::now() + PEER_WAIT;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).expect("blocking");
                return s;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < until => {
                std::thread::sleep(Duration::from_micros(50));
            }
            Err(e) => panic!("the library's Client never connected: {e}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut cur = Cursor::new(data);
    let first = cur.byte();
    let library_connects = first & 1 == 0;
    let key = cur.bytes((first >> 1) as usize % 80).to_vec();
    let script = cur.rest().to_vec();
    let listener = raw_listener();
    let fds_before = open_fds();
    let started = Instant::now();

    let (result, expected) = if library_connects {
        let (key2, script) = (key.clone(), script.clone());
        let peer = std::thread::spawn(move || play(accept_raw(&listener.0), &script, key2, true));
        let r = Client::new(listener.1.as_str())
            .authkey(&key)
            .handshake_timeout(HANDSHAKE)
            .connect_timeout(PEER_WAIT)
            .connect::<(), Postcard>();
        (report(r), join(peer))
    } else {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "multiproc-fuzz-lib-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut lib = Listener::builder()
            .address(format!("@{name}"))
            .authkey(&key)
            .handshake_timeout(HANDSHAKE)
            .bind()
            .expect("bind");
        let (key2, script) = (key.clone(), script.clone());
        let peer = std::thread::spawn(move || {
            let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
            let sock = UnixStream::connect_addr(&addr).expect("connect to the Listener");
            play(sock, &script, key2, false)
        });
        let r = lib.accept_timeout::<(), Postcard>(PEER_WAIT);
        (report(r), join(peer))
    };
    let elapsed = started.elapsed();
    let (got, said) = result;
    if expected != Outcome::Unknown {
        assert_eq!(
            got, expected,
            "the library ended with {said} (library connects: {library_connects})"
        );
    }
    assert!(elapsed < HANDSHAKE, "the handshake took {elapsed:?}");
    assert_eq!(open_fds(), fds_before, "descriptors leaked");
});
