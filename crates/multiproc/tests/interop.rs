//! Interoperability with the real CPython 3.11, 3.12 and 3.13: a Rust [`Listener`] with
//! Python clients and a Python `Listener` with Rust [`Client`]s, over TCP (127.0.0.1 and ::1),
//! Unix socket paths and abstract names; raw bytes and pickles both ways; right and wrong keys;
//! the legacy (3.11) and modern (3.12+) handshakes and every digest 3.12+ allows; empty keys
//! and peers without a key.
//!
//! `python3` (3.11 here) must exist; 3.12 and 3.13 are found with `pyenv prefix 3.12.1` /
//! `pyenv prefix 3.13.0`, and are skipped with a message when pyenv or the version is missing.
//! Interpreters are always run by absolute path (a `python3` started from inside another
//! Python would resolve to that one's version).
//!
//! The Python side is one script ([`SCRIPT`]) that listens or connects and then serves
//! commands the Rust side sends (`bytes`, `pickle`, `ping`, `bye`). It wraps CPython's own
//! `deliver_challenge` / `answer_challenge` to print what went over the wire in each
//! handshake (`DELIVER <challenge sent> -> <answer received>`, `ANSWER <challenge received> ->
//! <answer sent>`, each as `<digest> <bytes after the prefix>` or `legacy <bytes>`), so the
//! tests can assert which protocol each side really spoke.
//!
//! What each CPython version does with the edge cases (asserted below):
//!
//! | case | 3.11 | 3.12 | 3.13 |
//! |---|---|---|---|
//! | Rust Listener, Python client: challenge `{sha256}`+40 | answers bare HMAC-MD5 over all of it (16 bytes) | `{sha256}` + 32 | `{sha256}` + 32 |
//! | Python Listener, Rust client: challenge | legacy 20 bytes, Rust answers bare MD5 (16) | `{sha256}`+40 | `{sha256}`+40 |
//! | Python challenges/answers in md5, sha256, sha384, sha3_256, sha3_384 | (no choice: MD5 only) | Rust answers `{digest}`, verifies `{digest}` | same |
//! | Python Listener `authkey=b''`, Rust client `b''` | no handshake (`if self._authkey:`): Rust times out | same as 3.11 | handshake with the empty key (`is not None`): works |
//! | Python Listener `authkey=b''`, Rust client with a key | Rust times out | Rust times out | digest received was wrong / rejected |
//! | Rust Listener `b''`, Python client `b''` | works (the client handshakes: `is not None`) | works | works |
//! | Python Listener `authkey=None`, Rust client with a key | Rust times out, Python sees EOF | same | same |
//! | Rust Listener without authentication, Python client with a key | Python's `answer_challenge` gets EOF | same | same |
//! | Rust Listener with a key, Python client `authkey=None` | Rust times out; Python received the challenge as a message | same | same |
//!
//! Every blocking step has a deadline: the Rust side uses `accept_timeout`, `recv_*_timeout`
//! and handshake timeouts, Python output is read with a timeout, every Python child is killed
//! by a guard if a test fails, and the script arms `signal.alarm` so that it cannot outlive a
//! lost test run. Synchronisation is by processes and their output, never by sleeping.

mod common;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::python::{Python, python};
use multiproc::Connection;
use multiproc::codec::Pickle;
use multiproc::connection::{AuthenticationError, Client, ConnectionError, Listener};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// The deadline of every step that should succeed.
const IO: Duration = Duration::from_secs(10);
/// The handshake timeout where the handshake is expected never to finish.
const SHORT: Duration = Duration::from_millis(500);
/// The key both sides agree on (not ASCII, not UTF-8: keys are bytes).
const KEY: &[u8] = b"interop key \x00\xff\xfe";
/// Another key.
const WRONG: &[u8] = b"not the key";
/// The digests CPython 3.12+ accepts, with the length of their MACs.
const DIGESTS: [(&str, usize); 5] = [
    ("md5", 16),
    ("sha256", 32),
    ("sha384", 48),
    ("sha3_256", 32),
    ("sha3_384", 48),
];

// -------------------------------------------------------------------------------------------
// The Python side

/// The Python peer.
///
/// - `listen <spec> <key> <session>...`: binds a `Listener` (`spec`: `tcp4`, `tcp6`,
///   `unix:<path>`, `abstract:<name>`), prints `ADDR <address>` (in Rust's notation), then
///   accepts once per session (a session is `-` or, 3.12+, a digest name for the challenge
///   it delivers and the answer it gives) and serves each connection.
/// - `connect <address> <session>...`: connects once per session (`none`, `hex:<key>` or
///   `hex:<key>@<digest>`) and serves each connection.
///
/// A handshake failure prints `ERR <exception type> <message>` and goes on to the next
/// session; any other failure is a traceback and a non-zero exit.
const SCRIPT: &str = r##"
import hmac, math, signal, socket, sys
import multiprocessing.connection as mpc
from multiprocessing import AuthenticationError, BufferTooShort

signal.alarm(60)  # never outlive a lost test run

CHALLENGE = b'#CHALLENGE#'
BIG = bytes(range(256)) * 4096  # 1 MiB
DIGEST = None  # the digest of this session (3.12+), None for CPython's default
SHARED = 'shared string'

# In the order the Rust side expects them (see pickle_exchange in interop.rs).
OBJECTS = [
    0, -1, 2**31, -2**63, 2**64 - 1,
    1.5, -0.0, float('inf'),
    True,
    '', 'h\xe9llo \u2603 \U0001F600',
    b'', b'\x00\xffraw bytes', BIG,
    None,
    [], [1, 2, 3], list(range(2500)), [SHARED, SHARED],
    (1, 'two', 3.0), (None, [b'x', b'']),
    {}, {'a': 1, 'b': 2}, {1: 'one', -2: 'minus two'}, {'outer': {'inner': [1, 2]}},
    [(1, 'a'), (2, 'b')],
    {'name': 'point', 'xy': (1.0, -2.5), 'tags': ['t'], 'extra': None},
]

def log(*parts):
    print(*parts, flush=True)

def describe(m):
    if m is None:
        return '(none)'
    # By length first, as CPython does: a random 20-byte legacy challenge may begin with '{'.
    if len(m) not in (16, 20) and m.startswith(b'{'):
        end = m.find(b'}', 1, 11)
        if end > 0:
            return '%s %d' % (m[1:end].decode('ascii', 'replace'), len(m) - end - 1)
    return 'legacy %d' % len(m)

def first(messages, strip=False):
    if not messages:
        return None
    m = messages[0]
    return m[len(CHALLENGE):] if strip and m.startswith(CHALLENGE) else m

class Spy:
    """A connection that remembers the handshake messages going through it."""
    def __init__(self, conn):
        self.conn, self.sent, self.got = conn, [], []
    def send_bytes(self, buf):
        self.sent.append(bytes(buf))
        self.conn.send_bytes(buf)
    def recv_bytes(self, maxlength=None):
        m = self.conn.recv_bytes(maxlength)
        self.got.append(m)
        return m

ORIG_DELIVER, ORIG_ANSWER = mpc.deliver_challenge, mpc.answer_challenge

def deliver(conn, authkey):
    spy = Spy(conn)
    try:
        if DIGEST is None:
            ORIG_DELIVER(spy, authkey)
        else:
            ORIG_DELIVER(spy, authkey, digest_name=DIGEST)
    finally:
        if spy.sent:
            log('DELIVER', describe(first(spy.sent, True)), '->', describe(first(spy.got)))

def answer(conn, authkey):
    spy = Spy(conn)
    try:
        if DIGEST is None:
            ORIG_ANSWER(spy, authkey)
        else:
            # CPython answers in the challenge's digest; answer in DIGEST instead, which
            # CPython's own _verify_challenge accepts too (an answer names its digest).
            message = spy.recv_bytes(256)
            if not message.startswith(CHALLENGE):
                raise AuthenticationError('expected a challenge')
            mac = hmac.new(authkey, message[len(CHALLENGE):], DIGEST).digest()
            spy.send_bytes(b'{%s}%s' % (DIGEST.encode('ascii'), mac))
            if spy.recv_bytes(256) != b'#WELCOME#':
                raise AuthenticationError('digest sent was rejected')
    finally:
        if spy.got:
            log('ANSWER', describe(first(spy.got, True)), '->', describe(first(spy.sent)))

# Listener.accept and Client look these up at call time.
mpc.deliver_challenge, mpc.answer_challenge = deliver, answer

def check(what, got, want):
    if got != want:
        raise AssertionError('%s: got %.200r, want %.200r' % (what, got, want))

def same(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b

def bytes_exchange(conn):
    conn.send_bytes(b'')
    conn.send_bytes(b'hello from python')
    conn.send_bytes(BIG)
    conn.send_bytes(b'0123456789', 2, 5)
    conn.send_bytes(b'into rust')
    check('empty', conn.recv_bytes(), b'')
    check('small', conn.recv_bytes(), b'hello from rust')
    check('1 MiB', conn.recv_bytes(), BIG)
    buf = bytearray(b'.' * 12)
    check('recv_bytes_into with an offset', (conn.recv_bytes_into(buf, 4), bytes(buf)),
          (5, b'....into!...'))
    big = bytearray(len(BIG))
    check('recv_bytes_into 1 MiB', (conn.recv_bytes_into(big), big == BIG), (len(BIG), True))
    try:
        conn.recv_bytes_into(bytearray(2))
        raise AssertionError('no BufferTooShort')
    except BufferTooShort as e:
        check('BufferTooShort', e.args[0], b'too long for two')
    check('send_bytes_range', conn.recv_bytes(), b'3456')
    conn.send_bytes(b'bytes ok')

def pickle_exchange(conn):
    for obj in OBJECTS:
        conn.send(obj)
    bad = []
    for want in OBJECTS:
        got = conn.recv()
        if not same(got, want):
            bad.append('got %.100r, want %.100r' % (got, want))
    conn.send_bytes(('; '.join(bad) or 'pickle ok').encode())

def serve(conn):
    while True:
        try:
            command = conn.recv_bytes()
        except EOFError:
            log('EOF')
            break
        if command == b'bye':
            log('BYE')
            break
        elif command == b'ping':
            conn.send_bytes(b'pong')
        elif command == b'bytes':
            bytes_exchange(conn)
        elif command == b'pickle':
            pickle_exchange(conn)
        else:
            log('UNKNOWN', repr(command[:19]))
    conn.close()

def parse_key(token):
    if token == 'none':
        return None
    assert token.startswith('hex:'), token
    return bytes.fromhex(token[4:])

def report(e):
    log(('ERR %s %s' % (type(e).__name__, e)).rstrip())

def listen(spec, key, sessions):
    global DIGEST
    if spec == 'tcp4':
        address, family = ('127.0.0.1', 0), 'AF_INET'
    elif spec == 'tcp6':
        address, family = ('::1', 0), 'AF_INET6'
    elif spec.startswith('unix:'):
        address, family = spec[5:], 'AF_UNIX'
    elif spec.startswith('abstract:'):
        address, family = '\0' + spec[9:], 'AF_UNIX'
    else:
        raise ValueError(spec)
    listener = mpc.Listener(address, family=family, authkey=key)
    bound = listener.address
    if family == 'AF_INET':
        shown = '%s:%d' % bound[:2]
    elif family == 'AF_INET6':
        shown = '[%s]:%d' % bound[:2]
    else:
        if isinstance(bound, bytes):
            bound = bound.decode()
        shown = '@' + bound[1:] if bound.startswith('\0') else bound
    log('ADDR', shown)
    for session in sessions:
        DIGEST = None if session == '-' else session
        try:
            conn = listener.accept()
        except (AuthenticationError, EOFError) as e:
            report(e)
            continue
        log('ACCEPTED')
        serve(conn)
    listener.close()

def connect(address, key):
    if isinstance(address, tuple) and ':' in address[0]:
        # Client() makes an AF_INET socket for any tuple: do what SocketClient does, over
        # AF_INET6, then what Client does.
        with socket.socket(socket.AF_INET6) as s:
            s.connect(address)
            conn = mpc.Connection(s.detach())
        if key is not None:
            mpc.answer_challenge(conn, key)
            mpc.deliver_challenge(conn, key)
        return conn
    return mpc.Client(address, authkey=key)

def client(shown, sessions):
    global DIGEST
    if shown.startswith('@'):
        address = '\0' + shown[1:]
    elif shown.startswith('/'):
        address = shown
    else:
        host, port = shown.rsplit(':', 1)
        address = (host.strip('[]'), int(port))
    for session in sessions:
        key, _, digest = session.partition('@')
        DIGEST = digest or None
        try:
            conn = connect(address, parse_key(key))
        except (AuthenticationError, EOFError) as e:
            report(e)
            continue
        log('CONNECTED')
        serve(conn)

if sys.argv[1] == 'listen':
    listen(sys.argv[2], parse_key(sys.argv[3]), sys.argv[4:])
elif sys.argv[1] == 'connect':
    client(sys.argv[2], sys.argv[3:])
else:
    raise ValueError(sys.argv[1])
"##;

impl Python {
    /// 3.12+: `{digest}` challenges and answers.
    fn modern(&self) -> bool {
        self.version >= (3, 12)
    }

    /// What Python prints when it answers a challenge from Rust (always `{sha256}`).
    fn answers_rust(&self) -> &'static str {
        if self.modern() {
            "ANSWER sha256 40 -> sha256 32"
        } else {
            // 3.11 takes the whole prefixed message as the challenge and answers it with bare
            // HMAC-MD5, which Rust (as 3.12+) accepts.
            "ANSWER sha256 40 -> legacy 16"
        }
    }

    /// What Python prints when it delivers its own challenge to Rust.
    fn delivers_to_rust(&self) -> &'static str {
        if self.modern() {
            "DELIVER sha256 40 -> sha256 32"
        } else {
            // 3.11's 20 random bytes; Rust answers bare HMAC-MD5.
            "DELIVER legacy 20 -> legacy 16"
        }
    }
}

/// A running Python script: its output lines come through a channel so that every read has
/// a deadline; dropping it kills the process (and shows its stderr if the test is failing).
struct PyChild {
    what: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<String>>,
    finished: bool,
}

impl PyChild {
    fn spawn(py: &Python, args: &[String]) -> Self {
        let what = format!(
            "python {}.{} {}",
            py.version.0,
            py.version.1,
            args.join(" ")
        );
        let mut child = Command::new(&py.exe)
            .args(["-I", "-c", SCRIPT])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        PyChild {
            what,
            child,
            lines,
            stderr: Some(stderr),
            finished: false,
        }
    }

    fn line(&mut self) -> String {
        match self.lines.recv_timeout(IO) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => panic!("{}: no output within {IO:?}", self.what),
            Err(RecvTimeoutError::Disconnected) => {
                panic!("{}: exited while a line was expected", self.what)
            }
        }
    }

    fn expect(&mut self, want: &[&str]) {
        for want in want {
            let got = self.line();
            assert_eq!(got, *want, "{}", self.what);
        }
    }

    /// The address a `listen` script printed.
    fn address(&mut self) -> String {
        let line = self.line();
        match line.strip_prefix("ADDR ") {
            Some(address) => address.to_string(),
            None => panic!("{}: expected ADDR, got {line:?}", self.what),
        }
    }

    /// No more output, and a clean exit.
    fn finish(mut self) {
        match self.lines.recv_timeout(IO) {
            Ok(line) => panic!("{}: unexpected output {line:?}", self.what),
            Err(RecvTimeoutError::Timeout) => panic!("{}: did not exit", self.what),
            Err(RecvTimeoutError::Disconnected) => {}
        }
        let status = common::wait_until(&mut self.child, Instant::now() + IO, &self.what);
        self.finished = true;
        if !status.success() {
            let stderr = self.stderr.take().map(|h| h.join().unwrap_or_default());
            panic!("{}: {status}\n{}", self.what, stderr.unwrap_or_default());
        }
    }
}

impl Drop for PyChild {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            if let Some(stderr) = self.stderr.take().and_then(|h| h.join().ok()) {
                eprintln!("--- {} stderr:\n{stderr}", self.what);
            }
        }
    }
}

fn hex_key(key: &[u8]) -> String {
    let digits: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("hex:{digits}")
}

// -------------------------------------------------------------------------------------------
// Addresses

#[derive(Debug, Clone, Copy)]
enum Family {
    Tcp4,
    Tcp6,
    Unix,
    Abstract,
}

fn ipv6_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| std::net::TcpListener::bind("[::1]:0").is_ok())
}

fn families() -> Vec<Family> {
    let mut all = vec![Family::Tcp4, Family::Unix, Family::Abstract];
    if ipv6_available() {
        all.insert(1, Family::Tcp6);
    } else {
        eprintln!("skipping TCP over ::1: IPv6 is not available here");
    }
    all
}

/// A socket path or abstract name no other test uses; the path is removed on drop (the
/// listeners remove it already; this is for a killed Python).
struct UniqueName(String);

impl UniqueName {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        UniqueName(format!(
            "multiproc-interop-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }

    fn path(&self) -> String {
        std::env::temp_dir()
            .join(format!("{}.sock", self.0))
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for UniqueName {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.path());
    }
}

/// The address for a Rust listener.
fn rust_address(family: Family, name: &UniqueName) -> String {
    match family {
        Family::Tcp4 => "127.0.0.1:0".into(),
        Family::Tcp6 => "[::1]:0".into(),
        Family::Unix => name.path(),
        Family::Abstract => format!("@{}", name.0),
    }
}

/// The `listen` spec for a Python listener.
fn python_spec(family: Family, name: &UniqueName) -> String {
    match family {
        Family::Tcp4 => "tcp4".into(),
        Family::Tcp6 => "tcp6".into(),
        Family::Unix => format!("unix:{}", name.path()),
        Family::Abstract => format!("abstract:{}", name.0),
    }
}

fn rust_listener(address: &str, key: Option<&[u8]>, handshake: Duration) -> Listener {
    let builder = Listener::builder()
        .address(address)
        .handshake_timeout(handshake);
    let builder = match key {
        Some(key) => builder.authkey(key),
        None => builder.no_authentication(),
    };
    builder
        .bind()
        .unwrap_or_else(|e| panic!("bind {address}: {e}"))
}

fn rust_client(address: &str, key: Option<&[u8]>, handshake: Duration) -> Client {
    let client = Client::new(address)
        .connect_timeout(IO)
        .handshake_timeout(handshake);
    match key {
        Some(key) => client.authkey(key),
        None => client.no_authentication(),
    }
}

type PickleConnection = Connection<(), Pickle>;

fn accept(listener: &mut Listener) -> Result<PickleConnection, ConnectionError> {
    listener.accept_timeout::<(), Pickle>(IO)
}

// -------------------------------------------------------------------------------------------
// The exchanges

/// A connection to a Python peer whose every call has a deadline.
struct Peer {
    conn: Option<PickleConnection>,
    what: String,
}

impl Peer {
    fn new(conn: PickleConnection, what: &str) -> Self {
        Peer {
            conn: Some(conn),
            what: what.to_string(),
        }
    }

    fn send_bytes(&mut self, buf: &[u8]) {
        let conn = self.conn.as_mut().expect("connection");
        conn.send_bytes_timeout(buf, IO)
            .unwrap_or_else(|e| panic!("{}: send_bytes: {e}", self.what));
    }

    fn recv_bytes(&mut self) -> Vec<u8> {
        let conn = self.conn.as_mut().expect("connection");
        conn.recv_bytes_timeout(IO)
            .unwrap_or_else(|e| panic!("{}: recv_bytes: {e}", self.what))
    }

    fn recv_bytes_into(&mut self, buf: &mut [u8], offset: usize) -> usize {
        let conn = self.conn.as_mut().expect("connection");
        assert!(
            conn.poll(Some(IO)).unwrap(),
            "{}: nothing to receive",
            self.what
        );
        conn.recv_bytes_into(buf, offset)
            .unwrap_or_else(|e| panic!("{}: recv_bytes_into: {e}", self.what))
    }

    /// `recv` on the connection typed for `U`.
    fn recv<U: DeserializeOwned>(&mut self) -> U {
        let mut typed: Connection<U, Pickle> = self.conn.take().expect("connection").retype();
        let got = typed.recv_timeout(IO);
        self.conn = Some(typed.retype());
        got.unwrap_or_else(|e| panic!("{}: recv {}: {e}", self.what, std::any::type_name::<U>()))
    }

    /// `send` on the connection typed for `U`.
    fn send<U: Serialize>(&mut self, value: &U) {
        let mut typed: Connection<U, Pickle> = self.conn.take().expect("connection").retype();
        let sent = typed.send_timeout(value, IO);
        self.conn = Some(typed.retype());
        sent.unwrap_or_else(|e| panic!("{}: send {}: {e}", self.what, std::any::type_name::<U>()));
    }

    fn ping(&mut self) {
        self.send_bytes(b"ping");
        assert_eq!(self.recv_bytes(), b"pong", "{}", self.what);
    }
}

/// 1 MiB of `0, 1, ..., 255, 0, 1, ...` (Python's `BIG`).
fn big() -> &'static [u8] {
    static BIG: OnceLock<Vec<u8>> = OnceLock::new();
    BIG.get_or_init(|| (0..1 << 20).map(|i: u32| i as u8).collect())
}

/// Raw bytes both ways (the Python side is `bytes_exchange` in [`SCRIPT`]).
fn bytes_exchange(peer: &mut Peer) {
    peer.send_bytes(b"bytes");
    // Python to Rust.
    assert_eq!(peer.recv_bytes(), b"", "{}", peer.what);
    assert_eq!(peer.recv_bytes(), b"hello from python", "{}", peer.what);
    let got = peer.recv_bytes();
    assert!(
        got == big(),
        "{}: 1 MiB from Python ({} bytes)",
        peer.what,
        got.len()
    );
    assert_eq!(
        peer.recv_bytes(),
        b"23456",
        "{}: send_bytes(b, 2, 5)",
        peer.what
    );
    let mut buf = [b'.'; 16];
    let n = peer.recv_bytes_into(&mut buf, 2);
    assert_eq!((n, &buf), (9, b"..into rust....."), "{}", peer.what);
    // Rust to Python.
    peer.send_bytes(b"");
    peer.send_bytes(b"hello from rust");
    peer.send_bytes(big());
    peer.send_bytes(b"into!");
    peer.send_bytes(big());
    peer.send_bytes(b"too long for two");
    let conn = peer.conn.as_mut().expect("connection");
    conn.send_bytes_range(b"0123456789", 3, Some(4)).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&peer.recv_bytes()),
        "bytes ok",
        "{}",
        peer.what
    );
}

/// An `f64` compared bit for bit (so `-0.0` is not `0.0`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(transparent)]
struct Exact(f64);

impl PartialEq for Exact {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

/// A struct, which is a `dict` of its fields for Python.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    name: String,
    xy: (f64, f64),
    tags: Vec<String>,
    extra: Option<i64>,
}

fn check_value<U: PartialEq + Debug>(what: &str, index: usize, got: &U, want: &U) {
    if got != want {
        let mut got = format!("{got:?}");
        let mut want = format!("{want:?}");
        got.truncate(300);
        want.truncate(300);
        panic!("{what}: object #{index} from Python: got {got}, want {want}");
    }
}

/// Pickles both ways: Python sends `OBJECTS` (in [`SCRIPT`]) and Rust checks each as the Rust
/// type it maps to; then Rust sends the same values and Python checks them, types included
/// (a tuple stays a tuple, a float a float, `-0.0` negative).
fn pickle_exchange(peer: &mut Peer) {
    macro_rules! objects {
        ($($ty:ty = $value:expr),* $(,)?) => {{
            let mut index = 0;
            $(
                let got: $ty = peer.recv();
                check_value(&peer.what, index, &got, &$value);
                index += 1;
            )*
            let _ = index;
            $( peer.send::<$ty>(&$value); )*
        }};
    }
    peer.send_bytes(b"pickle");
    objects! {
        i64 = 0,
        i64 = -1,
        i64 = 1 << 31,
        i64 = i64::MIN,
        u64 = u64::MAX,
        Exact = Exact(1.5),
        Exact = Exact(-0.0),
        Exact = Exact(f64::INFINITY),
        bool = true,
        String = String::new(),
        String = "h\u{e9}llo \u{2603} \u{1F600}".to_string(),
        ByteBuf = ByteBuf::new(),
        ByteBuf = ByteBuf::from(b"\x00\xffraw bytes".to_vec()),
        ByteBuf = ByteBuf::from(big().to_vec()),
        Option<i64> = None,
        Vec<i64> = Vec::new(),
        Vec<i64> = vec![1, 2, 3],
        Vec<i64> = (0..2500).collect::<Vec<i64>>(),
        Vec<String> = vec!["shared string".to_string(); 2],
        (i64, String, f64) = (1, "two".to_string(), 3.0),
        (Option<String>, Vec<ByteBuf>) = (None, vec![ByteBuf::from(b"x".to_vec()), ByteBuf::new()]),
        BTreeMap<String, i64> = BTreeMap::new(),
        BTreeMap<String, i64> = BTreeMap::from([("a".to_string(), 1), ("b".to_string(), 2)]),
        BTreeMap<i64, String> = BTreeMap::from([(1, "one".to_string()), (-2, "minus two".to_string())]),
        BTreeMap<String, BTreeMap<String, Vec<i64>>> =
            BTreeMap::from([("outer".to_string(), BTreeMap::from([("inner".to_string(), vec![1, 2])]))]),
        Vec<(i64, String)> = vec![(1, "a".to_string()), (2, "b".to_string())],
        Record = Record {
            name: "point".into(),
            xy: (1.0, -2.5),
            tags: vec!["t".into()],
            extra: None,
        },
    }
    assert_eq!(
        String::from_utf8_lossy(&peer.recv_bytes()),
        "pickle ok",
        "{}: what Python received",
        peer.what
    );
}

fn bye(peer: &mut Peer, child: &mut PyChild) {
    peer.send_bytes(b"bye");
    child.expect(&["BYE"]);
}

fn assert_auth_error(
    what: &str,
    r: Result<PickleConnection, ConnectionError>,
    want: AuthenticationError,
    message: &str,
) {
    match r {
        Err(ConnectionError::Authentication(e)) if e == want => {
            assert_eq!(e.to_string(), message, "{what}");
        }
        Err(e) => panic!("{what}: expected {want:?}, got {e:?}"),
        Ok(_) => panic!("{what}: expected {want:?}, got a connection"),
    }
}

/// An authentication timeout of [`SHORT`], that came after `SHORT` and well before the
/// longer deadlines (so: not a hang that something else ended).
fn assert_handshake_timeout(
    what: &str,
    r: Result<PickleConnection, ConnectionError>,
    started: Instant,
) {
    let elapsed = started.elapsed();
    match r {
        Err(ConnectionError::Authentication(AuthenticationError::Timeout(d))) => {
            assert_eq!(d, SHORT, "{what}");
        }
        Err(e) => panic!("{what}: expected an authentication timeout, got {e:?}"),
        Ok(_) => panic!("{what}: expected an authentication timeout, got a connection"),
    }
    assert!(
        elapsed >= SHORT && elapsed < SHORT + Duration::from_secs(4),
        "{what}: timed out after {elapsed:?}"
    );
}

// -------------------------------------------------------------------------------------------
// The scenarios, each run against every interpreter

/// A Rust Listener with a Python client on every family: bytes and pickles both ways with
/// the right key; the wrong key fails on both sides with CPython's messages.
fn rust_listener_python_client(py: &Python) {
    for family in families() {
        let name = UniqueName::new();
        let mut listener = rust_listener(&rust_address(family, &name), Some(KEY), IO);
        let address = listener.address().to_string();
        let what = format!(
            "Rust Listener on {address} ({family:?}), Python {:?}",
            py.version
        );
        let mut child = PyChild::spawn(
            py,
            &["connect".into(), address, hex_key(KEY), hex_key(WRONG)],
        );

        let conn = accept(&mut listener).unwrap_or_else(|e| panic!("{what}: accept: {e}"));
        child.expect(&[py.answers_rust(), py.delivers_to_rust(), "CONNECTED"]);
        let mut peer = Peer::new(conn, &what);
        bytes_exchange(&mut peer);
        pickle_exchange(&mut peer);
        bye(&mut peer, &mut child);

        assert_auth_error(
            &what,
            accept(&mut listener),
            AuthenticationError::DigestWrong,
            "digest received was wrong",
        );
        child.expect(&[
            py.answers_rust(),
            "ERR AuthenticationError digest sent was rejected",
        ]);
        child.finish();
    }
}

/// A Python Listener with Rust clients on every family: the mirror of
/// [`rust_listener_python_client`].
fn python_listener_rust_client(py: &Python) {
    for family in families() {
        let name = UniqueName::new();
        let mut child = PyChild::spawn(
            py,
            &[
                "listen".into(),
                python_spec(family, &name),
                hex_key(KEY),
                "-".into(),
                "-".into(),
            ],
        );
        let address = child.address();
        let what = format!("Python {:?} Listener on {address} ({family:?})", py.version);

        let conn = rust_client(&address, Some(KEY), IO)
            .connect::<(), Pickle>()
            .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        child.expect(&[py.delivers_to_rust(), py.answers_rust(), "ACCEPTED"]);
        let mut peer = Peer::new(conn, &what);
        bytes_exchange(&mut peer);
        pickle_exchange(&mut peer);
        bye(&mut peer, &mut child);

        assert_auth_error(
            &what,
            rust_client(&address, Some(WRONG), IO).connect(),
            AuthenticationError::DigestRejected,
            "digest sent was rejected",
        );
        child.expect(&[
            py.delivers_to_rust(),
            "ERR AuthenticationError digest received was wrong",
        ]);
        child.finish();
    }
}

/// 3.12+ with each allowed digest: a Python Listener delivering `{digest}` challenges (Rust
/// must answer in that digest) and answering Rust's challenges in that digest (Rust must
/// verify it), and a Python client doing the same; right and wrong keys for each.
fn every_digest(py: &Python) {
    if !py.modern() {
        // 3.11 knows only HMAC-MD5 (its legacy exchange with Rust, both ways, is asserted in
        // rust_listener_python_client and python_listener_rust_client).
        eprintln!(
            "CPython {:?} has no digest choice: nothing to do",
            py.version
        );
        return;
    }
    let name = UniqueName::new();

    // Python Listener.
    let mut args = vec![
        "listen".into(),
        python_spec(Family::Unix, &name),
        hex_key(KEY),
    ];
    for (digest, _) in DIGESTS {
        args.extend([digest.to_string(), digest.to_string()]);
    }
    let mut child = PyChild::spawn(py, &args);
    let address = child.address();
    for (digest, len) in DIGESTS {
        let what = format!("Python {:?} Listener with {digest}", py.version);
        let delivered = format!("DELIVER {digest} 40 -> {digest} {len}");
        let answered = format!("ANSWER sha256 40 -> {digest} {len}");
        let conn = rust_client(&address, Some(KEY), IO)
            .connect::<(), Pickle>()
            .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        child.expect(&[&delivered, &answered, "ACCEPTED"]);
        let mut peer = Peer::new(conn, &what);
        peer.ping();
        bye(&mut peer, &mut child);
        assert_auth_error(
            &what,
            rust_client(&address, Some(WRONG), IO).connect(),
            AuthenticationError::DigestRejected,
            "digest sent was rejected",
        );
        child.expect(&[
            &delivered,
            "ERR AuthenticationError digest received was wrong",
        ]);
    }
    child.finish();

    // Python client.
    let mut listener = rust_listener(&rust_address(Family::Unix, &name), Some(KEY), IO);
    let mut args = vec!["connect".into(), listener.address().to_string()];
    for (digest, _) in DIGESTS {
        args.push(format!("{}@{digest}", hex_key(KEY)));
        args.push(format!("{}@{digest}", hex_key(WRONG)));
    }
    let mut child = PyChild::spawn(py, &args);
    for (digest, len) in DIGESTS {
        let what = format!(
            "Rust Listener, Python {:?} client with {digest}",
            py.version
        );
        let answered = format!("ANSWER sha256 40 -> {digest} {len}");
        let delivered = format!("DELIVER {digest} 40 -> {digest} {len}");
        let conn = accept(&mut listener).unwrap_or_else(|e| panic!("{what}: accept: {e}"));
        child.expect(&[&answered, &delivered, "CONNECTED"]);
        let mut peer = Peer::new(conn, &what);
        peer.ping();
        bye(&mut peer, &mut child);
        assert_auth_error(
            &what,
            accept(&mut listener),
            AuthenticationError::DigestWrong,
            "digest received was wrong",
        );
        child.expect(&[
            &answered,
            "ERR AuthenticationError digest sent was rejected",
        ]);
    }
    child.finish();
}

/// A Python Listener with `authkey=b''` and Rust clients with an empty key, then with a key.
///
/// 3.13 handshakes with the empty key (`if self._authkey is not None`), so the empty key works
/// and another key is rejected. 3.11 and 3.12 skip the handshake for a false key (`if
/// self._authkey:`) while a client with `b''` still expects one (CPython's own client hangs
/// there, gh-88118): the Rust client times out instead of hanging, whatever its key.
fn empty_key_python_listener(py: &Python) {
    let name = UniqueName::new();
    let spec = python_spec(Family::Unix, &name);
    let mut child = PyChild::spawn(
        py,
        &["listen".into(), spec, hex_key(b""), "-".into(), "-".into()],
    );
    let address = child.address();
    let what = format!("Python {:?} Listener with b''", py.version);
    let handshakes = py.version >= (3, 13);

    let started = Instant::now();
    let r = rust_client(&address, Some(b""), SHORT).connect::<(), Pickle>();
    if handshakes {
        let conn = r.unwrap_or_else(|e| panic!("{what}: connect with b'': {e}"));
        child.expect(&[
            "DELIVER sha256 40 -> sha256 32",
            py.answers_rust(),
            "ACCEPTED",
        ]);
        let mut peer = Peer::new(conn, &what);
        peer.ping();
        bye(&mut peer, &mut child);
    } else {
        assert_handshake_timeout(&what, r, started);
        child.expect(&["ACCEPTED", "EOF"]);
    }

    let started = Instant::now();
    let r = rust_client(&address, Some(KEY), SHORT).connect::<(), Pickle>();
    if handshakes {
        assert_auth_error(
            &what,
            r,
            AuthenticationError::DigestRejected,
            "digest sent was rejected",
        );
        child.expect(&[
            "DELIVER sha256 40 -> sha256 32",
            "ERR AuthenticationError digest received was wrong",
        ]);
    } else {
        assert_handshake_timeout(&what, r, started);
        child.expect(&["ACCEPTED", "EOF"]);
    }
    child.finish();
}

/// A Rust Listener with an empty key and Python clients with `b''` (every version's client
/// handshakes with it: `if authkey is not None`), then with another key.
fn empty_key_rust_listener(py: &Python) {
    let name = UniqueName::new();
    let mut listener = rust_listener(&rust_address(Family::Unix, &name), Some(b""), IO);
    let what = format!("Rust Listener with b'', Python {:?}", py.version);
    let mut child = PyChild::spawn(
        py,
        &[
            "connect".into(),
            listener.address().to_string(),
            hex_key(b""),
            hex_key(KEY),
        ],
    );
    let conn = accept(&mut listener).unwrap_or_else(|e| panic!("{what}: accept: {e}"));
    child.expect(&[py.answers_rust(), py.delivers_to_rust(), "CONNECTED"]);
    let mut peer = Peer::new(conn, &what);
    peer.ping();
    bye(&mut peer, &mut child);

    assert_auth_error(
        &what,
        accept(&mut listener),
        AuthenticationError::DigestWrong,
        "digest received was wrong",
    );
    child.expect(&[
        py.answers_rust(),
        "ERR AuthenticationError digest sent was rejected",
    ]);
    child.finish();
}

/// A Python Listener with `authkey=None`: a Rust client without authentication works; one
/// with a key waits for a challenge that never comes and times out (CPython's own client
/// hangs there, gh-123736), and Python sees the connection close.
fn python_listener_without_key(py: &Python) {
    let name = UniqueName::new();
    let spec = python_spec(Family::Unix, &name);
    let mut child = PyChild::spawn(
        py,
        &["listen".into(), spec, "none".into(), "-".into(), "-".into()],
    );
    let address = child.address();
    let what = format!("Python {:?} Listener with authkey=None", py.version);

    let conn = rust_client(&address, None, SHORT)
        .connect::<(), Pickle>()
        .unwrap_or_else(|e| panic!("{what}: connect without a key: {e}"));
    child.expect(&["ACCEPTED"]);
    let mut peer = Peer::new(conn, &what);
    peer.ping();
    bye(&mut peer, &mut child);

    let started = Instant::now();
    let r = rust_client(&address, Some(KEY), SHORT).connect::<(), Pickle>();
    assert_handshake_timeout(&what, r, started);
    child.expect(&["ACCEPTED", "EOF"]);
    child.finish();
}

/// A Rust Listener without authentication: a Python client without a key works; one with a
/// key waits for a challenge, and gets end of file when the Rust side closes.
fn rust_listener_without_key(py: &Python) {
    let name = UniqueName::new();
    let mut listener = rust_listener(&rust_address(Family::Unix, &name), None, SHORT);
    let what = format!("Rust Listener without a key, Python {:?}", py.version);
    let mut child = PyChild::spawn(
        py,
        &[
            "connect".into(),
            listener.address().to_string(),
            "none".into(),
            hex_key(KEY),
        ],
    );
    let conn = accept(&mut listener).unwrap_or_else(|e| panic!("{what}: accept: {e}"));
    child.expect(&["CONNECTED"]);
    let mut peer = Peer::new(conn, &what);
    peer.ping();
    bye(&mut peer, &mut child);

    // No handshake on this side: the connection is there at once; closing it ends Python's
    // wait for a challenge.
    let conn = accept(&mut listener).unwrap_or_else(|e| panic!("{what}: accept: {e}"));
    drop(conn);
    child.expect(&["ERR EOFError"]);
    child.finish();
}

/// A Rust Listener with a key and a Python client with `authkey=None`: the Python side
/// receives the challenge as an ordinary message and never answers; the Rust accept times
/// out instead of hanging, and closes the connection.
fn python_client_without_key(py: &Python) {
    let name = UniqueName::new();
    let mut listener = rust_listener(&rust_address(Family::Unix, &name), Some(KEY), SHORT);
    let what = format!("Rust Listener with a key, Python {:?} without", py.version);
    let mut child = PyChild::spawn(
        py,
        &[
            "connect".into(),
            listener.address().to_string(),
            "none".into(),
        ],
    );
    let started = Instant::now();
    let r = accept(&mut listener);
    assert_handshake_timeout(&what, r, started);
    child.expect(&["CONNECTED", "UNKNOWN b'#CHALLENGE#{sha256}'", "EOF"]);
    child.finish();
}

macro_rules! scenarios {
    ($version:literal; $($scenario:ident),* $(,)?) => {$(
        #[test]
        fn $scenario() {
            if let Some(py) = super::python($version) {
                super::$scenario(&py);
            }
        }
    )*};
}

macro_rules! interpreters {
    ($($module:ident => $version:literal),* $(,)?) => {$(
        mod $module {
            scenarios!(
                $version;
                rust_listener_python_client,
                python_listener_rust_client,
                every_digest,
                empty_key_python_listener,
                empty_key_rust_listener,
                python_listener_without_key,
                rust_listener_without_key,
                python_client_without_key,
            );
        }
    )*};
}

interpreters! {
    cpython_3_11 => "3.11",
    cpython_3_12 => "3.12",
    cpython_3_13 => "3.13",
}
