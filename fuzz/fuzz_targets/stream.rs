//! The buffered reader end to end: a writer thread sends a scripted byte stream (with write
//! boundaries, pauses and attached descriptors) into one end of a `UnixStream::pair()` and
//! closes it; a `Connection` on the other end, with a small maximum message size (or none:
//! `u64::MAX`), runs a scripted series of receives until an error ends it.
//!
//! Checked for every receive, against a model that decodes the same bytes with CPython's
//! framing: the payload (or the error: Eof, EofDuringMessage, TooLarge, CorruptHeader,
//! BadMessageLength, BufferTooShort with the whole message) is the model's; a timed-out
//! receive consumes nothing; `recv_bytes_into` writes nothing outside the message; decoded
//! values are what the codec makes of the model's payload. Also: no panic, no hang (libFuzzer
//! `-timeout`), no single allocation beyond the maximum message size (at most the 256 MiB the
//! library trusts an announced length with) plus fixed slack (none beyond the read buffer
//! when a length is refused), and no descriptor leaked.
//!
//! Input: `[max] [n] [op; n] script...` (`max` picks one of `MAXES`), where the script is literal bytes except for these
//! tags: `F0 n bytes[n]` (escaped literal), `F1 len:u16 payload` (a framed message, cut short
//! if the input is), `F2 byte count:u24` (a run of one byte), `F3 len:u24 byte` (a framed
//! message of one repeated byte), `F4 len:u64` (a long header), `F5 k` (the next write
//! carries k+1 descriptors), `F6` (the writer pauses until the reader times out), `F7` (a
//! write boundary).
#![no_main]

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use multiproc::Connection;
use multiproc::codec::{Codec, Descriptor, Pickle, Postcard};
use multiproc::connection::ConnectionError;
use multiproc_fuzz::model::{self, Header};
use multiproc_fuzz::{Cursor, measure, open_fds, send_all, spare_fd};
use serde::Deserialize;

const MAXES: [u64; 11] = [
    1 << 20,
    0,
    1,
    12,
    100,
    65_531,
    65_532,
    65_536,
    70_000,
    300_000,
    u64::MAX,
];
const LIMITS: [usize; 11] = [
    0,
    1,
    3,
    16,
    255,
    4096,
    65_531,
    65_532,
    65_537,
    1 << 20,
    usize::MAX,
];
const SIZES: [usize; 10] = [
    0,
    1,
    4,
    100,
    4096,
    65_532,
    65_536,
    70_000,
    1 << 20,
    (1 << 20) + 100,
];
/// The read buffer's size in the library, for the allocation bounds.
const READ_BUF: usize = 64 * 1024;
/// The most the library allocates up front for a message on its announced length alone.
const TRUSTED_LEN: usize = 256 << 20;
/// What serde preallocates at most for a sequence whose length the input claims.
const SERDE_CAUTIOUS: usize = 1 << 20;
const MAX_STREAM: usize = 4 << 20;
const MAX_OPS: usize = 2000;
const MAX_TIMEOUTS: usize = 16;

// -------------------------------------------------------------------------------------------
// The writer's script

enum Event {
    Cut,
    Fds(usize),
    Pause,
}

struct Stream {
    bytes: Vec<u8>,
    /// Offsets where a write ends and what happens there, in order.
    events: Vec<(usize, Event)>,
}

impl Stream {
    fn push(&mut self, b: &[u8]) {
        let room = MAX_STREAM - self.bytes.len();
        self.bytes.extend_from_slice(&b[..b.len().min(room)]);
    }
    fn fill(&mut self, byte: u8, n: usize) {
        let n = n.min(MAX_STREAM - self.bytes.len());
        self.bytes.resize(self.bytes.len() + n, byte);
    }
    fn event(&mut self, e: Event) {
        self.events.push((self.bytes.len(), e));
    }
}

fn script(cur: &mut Cursor<'_>) -> Stream {
    let mut s = Stream {
        bytes: Vec::new(),
        events: Vec::new(),
    };
    while !cur.is_empty() {
        match cur.byte() {
            0xF0 => {
                let n = cur.byte() as usize;
                let b = cur.bytes(n);
                s.push(b);
            }
            0xF1 => {
                let len = cur.uint(2);
                s.event(Event::Cut);
                s.push(&model::encode_header(len));
                let p = cur.bytes(len as usize);
                s.push(p);
            }
            0xF2 => {
                let b = cur.byte();
                let n = cur.uint(3) as usize;
                s.fill(b, n);
            }
            0xF3 => {
                let len = cur.uint(3);
                let b = cur.byte();
                s.event(Event::Cut);
                s.push(&model::encode_header(len));
                s.fill(b, len as usize);
            }
            0xF4 => {
                let len = cur.uint(8);
                s.push(&[0xff; 4]);
                s.push(&len.to_be_bytes());
            }
            0xF5 => {
                let k = (cur.byte() % 3) as usize + 1;
                s.event(Event::Fds(k));
            }
            0xF6 => s.event(Event::Pause),
            0xF7 => s.event(Event::Cut),
            b => s.push(&[b]),
        }
    }
    s
}

fn write(sock: UnixStream, s: &Stream, resume: mpsc::Receiver<()>, done: &AtomicBool) {
    let mut at = 0;
    let mut fds = 0;
    let mut send = |to: usize, fds: &mut usize| -> bool {
        if to <= at && *fds == 0 {
            return true;
        }
        let attach: Vec<_> = (0..*fds).map(|_| spare_fd()).collect();
        *fds = 0;
        let ok = send_all(&sock, &s.bytes[at..to.max(at)], &attach).is_ok();
        at = to.max(at);
        ok
    };
    for (offset, e) in &s.events {
        if !send(*offset, &mut fds) {
            break;
        }
        match e {
            Event::Cut => {}
            Event::Fds(k) => fds = *k,
            // A closed channel (the reader is done, or blocking) means go on.
            Event::Pause => {
                let _ = resume.recv();
            }
        }
    }
    send(s.bytes.len(), &mut fds);
    drop(sock);
    done.store(true, Ordering::SeqCst);
}

// -------------------------------------------------------------------------------------------
// Values to decode

#[derive(Debug, PartialEq, Deserialize)]
enum Kind {
    Unit,
    New(u16),
    Tuple(i8, bool),
    Struct { a: Option<u8>, b: String },
}

/// A Postcard value without descriptors (so it can be decoded outside the connection too).
type Plain = (
    u8,
    i64,
    String,
    Vec<u8>,
    Option<Vec<u32>>,
    Kind,
    char,
    BTreeMap<u16, bool>,
    u128,
);

/// A Postcard value holding descriptors (and a connection end).
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct WithFds {
    one: Option<Descriptor>,
    many: Vec<Descriptor>,
    conn: Option<Connection<(), Postcard>>,
}

/// Anything a self-describing format holds (floats compared by their bits).
#[derive(Debug, PartialEq)]
enum Any {
    Unit,
    Bool(bool),
    I(i64),
    U(u64),
    I128(i128),
    U128(u128),
    F(u64),
    Str(String),
    Bytes(Vec<u8>),
    Opt(Option<Box<Any>>),
    Seq(Vec<Any>),
    Map(Vec<(Any, Any)>),
}

impl<'de> Deserialize<'de> for Any {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Any;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("anything")
            }
            fn visit_unit<E>(self) -> Result<Any, E> {
                Ok(Any::Unit)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Any, E> {
                Ok(Any::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Any, E> {
                Ok(Any::I(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Any, E> {
                Ok(Any::U(v))
            }
            fn visit_i128<E>(self, v: i128) -> Result<Any, E> {
                Ok(Any::I128(v))
            }
            fn visit_u128<E>(self, v: u128) -> Result<Any, E> {
                Ok(Any::U128(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Any, E> {
                Ok(Any::F(v.to_bits()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Any, E> {
                Ok(Any::Str(v.into()))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Any, E> {
                Ok(Any::Bytes(v.into()))
            }
            fn visit_none<E>(self) -> Result<Any, E> {
                Ok(Any::Opt(None))
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Any, D::Error> {
                Ok(Any::Opt(Some(Box::new(Any::deserialize(d)?))))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Any, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(Any::Seq(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Any, A::Error> {
                let mut v = Vec::new();
                while let Some(kv) = a.next_entry()? {
                    v.push(kv);
                }
                Ok(Any::Map(v))
            }
        }
        d.deserialize_any(V)
    }
}

// -------------------------------------------------------------------------------------------
// The model of the receiving end

/// What the next receive must give, by the model.
#[derive(Debug, PartialEq)]
enum Expect {
    Message(usize, usize),
    Eof,
    EofDuringMessage,
    TooLarge(u64),
    Corrupt(i32),
    BadLength,
}

struct Model<'a> {
    bytes: &'a [u8],
    pos: usize,
    max: u64,
    /// The last receive refused a length (no allocation for it may exceed the read buffer).
    refused: bool,
}

impl Model<'_> {
    fn next(&self, limit: Option<u64>) -> Expect {
        let rest = &self.bytes[self.pos..];
        match model::header(rest) {
            Header::Corrupt(n) => Expect::Corrupt(n),
            Header::Incomplete if rest.is_empty() => Expect::Eof,
            Header::Incomplete => Expect::EofDuringMessage,
            Header::Message { len, .. } if limit.is_some_and(|l| len > l) => Expect::BadLength,
            Header::Message { len, .. } if len > self.max => Expect::TooLarge(len),
            Header::Message { size, len } => {
                if ((rest.len() - size) as u64) < len {
                    Expect::EofDuringMessage
                } else {
                    let from = self.pos + size;
                    Expect::Message(from, from + len as usize)
                }
            }
        }
    }
}

/// How the run goes on after a receive.
enum Then {
    Continue,
    /// The connection can no longer be read; the next read says so.
    Unreadable,
    Stop,
}

/// Checks a receive's outcome (`Ok(payload)`, or the error) against the model and consumes
/// the message from the model if the library did.
fn check(
    m: &mut Model<'_>,
    limit: Option<u64>,
    got: Result<&[u8], &ConnectionError>,
    what: &str,
) -> Then {
    let expect = m.next(limit);
    let ctx = || {
        format!(
            "{what}: model expects {expect:?} at stream offset {}",
            m.pos
        )
    };
    match (&expect, got) {
        (Expect::Message(from, to), Ok(p)) => {
            assert!(p == &m.bytes[*from..*to], "{}: payload differs", ctx());
            m.pos = *to;
            Then::Continue
        }
        (Expect::Message(from, to), Err(ConnectionError::BufferTooShort(whole))) => {
            assert!(
                whole[..] == m.bytes[*from..*to],
                "{}: whole message differs",
                ctx()
            );
            m.pos = *to;
            Then::Continue
        }
        (Expect::Eof, Err(ConnectionError::Eof))
        | (Expect::EofDuringMessage, Err(ConnectionError::EofDuringMessage)) => Then::Stop,
        (Expect::TooLarge(len), Err(ConnectionError::TooLarge { len: l, max })) => {
            assert_eq!((len, &m.max), (l, max), "{}", ctx());
            m.refused = true;
            Then::Stop
        }
        (Expect::Corrupt(n), Err(ConnectionError::CorruptHeader(k))) => {
            assert_eq!(n, k, "{}", ctx());
            m.refused = true;
            Then::Stop
        }
        (Expect::BadLength, Err(ConnectionError::BadMessageLength)) => {
            m.refused = true;
            Then::Unreadable
        }
        (_, got) => panic!("{}, library gave {:?}", ctx(), got.map(|p| p.len())),
    }
}

// -------------------------------------------------------------------------------------------

fuzz_target!(|data: &[u8]| {
    let mut cur = Cursor::new(data);
    let max = MAXES[cur.byte() as usize % MAXES.len()];
    let n_ops = (cur.byte() % 16) as usize + 1;
    let ops = cur.bytes(n_ops).to_vec();
    let ops = if ops.is_empty() { vec![0] } else { ops };
    let stream = Arc::new(script(&mut cur));

    let fds_before = open_fds();
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let (resume, paused) = mpsc::channel::<()>();
    let mut resume = Some(resume);
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stream, done) = (stream.clone(), done.clone());
        std::thread::spawn(move || write(theirs, &stream, paused, &done))
    };

    let mut conn: Connection<(), Postcard> = Connection::from_socket(ours.into());
    conn.set_max_message_size(max);
    // Typed receives take the connection out and put it back retyped.
    let mut slot = Some(conn);
    let mut m = Model {
        bytes: &stream.bytes,
        pos: 0,
        max,
        refused: false,
    };
    let mut into_buf = Vec::new();
    let mut timeouts = 0;
    let mut unreadable = false;

    'run: for i in 0..MAX_OPS {
        let op = ops[i % ops.len()];
        let param = (op >> 4) as usize;
        let mut kind = op & 0x0f;
        // Timed receives: a pause in the writer lets them time out, then resumes it.
        let timed = matches!(kind, 6 | 7) && timeouts < MAX_TIMEOUTS;
        if matches!(kind, 6 | 7) && !timed {
            kind = if kind == 6 { 0 } else { 3 };
        }
        if !timed && kind != 8 {
            resume = None; // the writer must not wait for a receive that blocks
        }
        if unreadable {
            let r = slot.as_mut().unwrap().recv_bytes();
            assert!(
                matches!(r, Err(ConnectionError::WriteOnly)),
                "after 'bad message length' the connection must be unreadable, got {r:?}"
            );
            break;
        }
        let timeout = Duration::from_millis(1);
        if matches!(kind, 2 | 9) {
            // The caller's buffer is the harness's allocation, made before measuring.
            let size = SIZES[(param + if kind == 9 { 7 } else { 0 }) % SIZES.len()];
            if into_buf.len() < size {
                into_buf.resize(size, 0);
            }
        }
        m.refused = false;
        let (then, largest) = measure(|| -> Then {
            let what = format!("op {i} ({op:#04x})");
            match kind {
                1 => {
                    let limit = LIMITS[param % LIMITS.len()];
                    let r = slot.as_mut().unwrap().recv_bytes_max(limit);
                    check(&mut m, Some(limit as u64), r.as_deref(), &what)
                }
                2 | 9 => {
                    let size = SIZES[(param + if kind == 9 { 7 } else { 0 }) % SIZES.len()];
                    let offset = match param % 4 {
                        0 => 0,
                        1 => 1.min(size),
                        2 => size,
                        _ => size + 1,
                    };
                    let buf = &mut into_buf[..size];
                    buf.fill(0xa5);
                    let r = slot.as_mut().unwrap().recv_bytes_into(buf, offset);
                    if offset > size {
                        assert!(
                            matches!(r, Err(ConnectionError::InvalidArgument(_))),
                            "{r:?}"
                        );
                        return Then::Continue;
                    }
                    let (from, written) = (m.pos, r.as_ref().ok().copied());
                    let then = match &r {
                        Ok(n) => {
                            let got = buf[offset..offset + n].to_vec();
                            check(&mut m, None, Ok(&got), &what)
                        }
                        Err(e) => check(&mut m, None, Err(e), &what),
                    };
                    // Nothing written outside the message. (A message cut short by end of
                    // file may leave what did arrive in its room: CPython leaves the buffer
                    // untouched then, but Rust's `read_exact` does the same as this.)
                    let n = match (written, &r) {
                        (Some(n), _) => n,
                        (None, Err(ConnectionError::EofDuringMessage)) => {
                            match model::header(&m.bytes[from..]) {
                                Header::Message { len, .. } => (len as usize).min(size - offset),
                                _ => 0,
                            }
                        }
                        _ => 0,
                    };
                    let outside = buf[..offset].iter().chain(&buf[offset + n..]);
                    assert!(
                        outside.into_iter().all(|&b| b == 0xa5),
                        "{what}: recv_bytes_into wrote outside the message (stream offset {from})"
                    );
                    then
                }
                3 | 7 => {
                    let mut typed: Connection<Plain, Postcard> = slot.take().unwrap().retype();
                    let r = if timed {
                        typed.recv_timeout(timeout)
                    } else {
                        typed.recv()
                    };
                    slot = Some(typed.retype());
                    decoded(&mut m, r, &what, Postcard::decode::<Plain>)
                }
                4 => {
                    let mut typed: Connection<WithFds, Postcard> = slot.take().unwrap().retype();
                    let r = typed.recv();
                    slot = Some(typed.retype());
                    consumed(&mut m, r.map(drop), &what)
                }
                5 => {
                    let mut typed: Connection<Any, Pickle> = slot.take().unwrap().retype();
                    let r = typed.recv();
                    slot = Some(typed.retype());
                    decoded(&mut m, r, &what, Pickle::decode::<Any>)
                }
                6 => {
                    let r = slot.as_mut().unwrap().recv_bytes_timeout(timeout);
                    match r {
                        Err(ConnectionError::Timeout) => Then::Continue,
                        r => check(&mut m, None, r.as_deref(), &what),
                    }
                }
                8 => {
                    let finished = done.load(Ordering::SeqCst);
                    match slot.as_mut().unwrap().poll(Some(Duration::ZERO)) {
                        Ok(ready) => assert!(
                            ready || !finished,
                            "{what}: poll() false with the peer closed"
                        ),
                        Err(e) => panic!("{what}: poll: {e:?}"),
                    }
                    Then::Continue
                }
                _ => {
                    let r = slot.as_mut().unwrap().recv_bytes();
                    check(&mut m, None, r.as_deref(), &what)
                }
            }
        });
        // A refused length costs no more than the read buffer; anything else at most the
        // maximum message (or what the library trusts a length with) plus serde's cautious
        // preallocation and the read buffer.
        let bound = if m.refused {
            READ_BUF + 4096
        } else {
            (max as usize).min(TRUSTED_LEN) + SERDE_CAUTIOUS + READ_BUF + 4096
        };
        assert!(
            largest <= bound,
            "op {i} ({op:#04x}): an allocation of {largest} bytes (max message {max})"
        );
        match then {
            Then::Continue => {}
            Then::Unreadable => unreadable = true,
            Then::Stop => break 'run,
        }
        if timed {
            // Whether or not it timed out, let the writer go on past one pause.
            timeouts += 1;
            if let Some(r) = &resume {
                let _ = r.send(());
            }
        }
    }

    drop(slot);
    drop(resume);
    writer.join().expect("writer thread");
    assert_eq!(open_fds(), fds_before, "descriptors leaked");
});

/// A typed receive: the message is consumed whether or not it decodes, and the value is
/// what the codec makes of the model's payload.
fn decoded<T: PartialEq + std::fmt::Debug, E: std::fmt::Debug>(
    m: &mut Model<'_>,
    r: Result<T, ConnectionError>,
    what: &str,
    decode: impl Fn(&[u8]) -> Result<T, E>,
) -> Then {
    let expect = m.next(None);
    if let Expect::Message(from, to) = expect {
        let reference = decode(&m.bytes[from..to]);
        match &r {
            Ok(v) => assert_eq!(Some(v), reference.as_ref().ok(), "{what}: decoded value"),
            Err(ConnectionError::Codec(_)) => {
                assert!(reference.is_err(), "{what}: refused a value that decodes")
            }
            Err(ConnectionError::Timeout) => return Then::Continue,
            Err(e) => panic!("{what}: model expects a message, library gave {e:?}"),
        }
        m.pos = to;
        return Then::Continue;
    }
    consumed(m, r.map(drop), what)
}

/// A typed receive whose value is not compared.
fn consumed(m: &mut Model<'_>, r: Result<(), ConnectionError>, what: &str) -> Then {
    match r {
        Err(ConnectionError::Timeout) => Then::Continue,
        Ok(()) | Err(ConnectionError::Codec(_)) => match m.next(None) {
            Expect::Message(_, to) => {
                m.pos = to;
                Then::Continue
            }
            e => panic!("{what}: library decoded a message, model expects {e:?}"),
        },
        Err(e) => check(m, None, Err(&e), what),
    }
}
