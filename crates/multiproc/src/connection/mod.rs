//! `multiprocessing.connection`: [`Connection`], [`pipe`], [`Listener`] and [`Client`] with
//! authentication, and [`wait`], byte-for-byte compatible with CPython's.
//!
//! - **Framing** is CPython's: a 4-byte big-endian length, or `-1` and an 8-byte length for
//!   payloads over 2 GiB. A Rust program and a Python program can talk through
//!   a [`Listener`]/[`Client`] pair in either direction; `send_bytes`/`recv_bytes` carry raw
//!   bytes, and `send`/`recv` carry values in the connection's [codec](crate::codec): the
//!   default [`Postcard`] between Rust processes, [`Pickle`](crate::codec::Pickle) for a
//!   CPython peer.
//! - **Authentication** is CPython's mutual HMAC challenge (see [`AuthenticationError`]), with every digest
//!   CPython 3.12+ accepts and the legacy HMAC-MD5 of 3.11, and a timeout CPython lacks.
//! - **Connections go anywhere**: a `Connection` is `Serialize + Deserialize` with the
//!   default codec, so an end can be a Process argument or travel inside a message on another
//!   connection; its descriptor goes along (`SCM_RIGHTS`, see [`codec::Descriptor`]).
//!
//! # Examples
//!
//! ```
//! use multiproc::{Connection, Process};
//! # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
//!
//! fn child(mut conn: Connection<(i32, Option<String>)>) {
//!     conn.send(&(42, Some("hello".into()))).unwrap();
//! }
//!
//! let (mut parent_end, child_end) = multiproc::pipe(true)?;
//! let mut p = Process::new(child, child_end);
//! p.start()?;
//! assert_eq!(parent_end.recv()?, (42, Some("hello".to_string())));
//! p.join()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`codec::Descriptor`]: crate::codec::Descriptor

mod address;
pub(crate) mod auth;
pub(crate) mod endpoint;
pub(crate) mod framing;
mod listener;
mod wait;

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::DeserializeOwned};

pub use address::{Address, AddressError, ToAddress};
pub use auth::{AuthenticationError, DEFAULT_HANDSHAKE_TIMEOUT};
pub use endpoint::DEFAULT_MAX_MESSAGE;
pub use listener::{Client, Listener, ListenerBuilder};
pub use wait::{Waitable, wait};

use crate::codec::{Codec, CodecError, Postcard, fds};
use crate::shm::segment::{Segment, Transit};
use endpoint::Endpoint;

/// An error from a [`Connection`], [`Listener`] or [`Client`] call. Messages follow
/// CPython's where it has one.
///
/// # Examples
///
/// ```
/// use multiproc::connection::ConnectionError;
///
/// let (mut a, b) = multiproc::pipe::<u8>(true)?;
/// drop(b);
/// assert!(matches!(a.recv(), Err(ConnectionError::Eof)));
/// # Ok::<(), ConnectionError>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// A call on a closed connection (CPython: 'handle is closed').
    #[error("handle is closed")]
    Closed,
    /// A receive on the writing end of a one-way pipe.
    #[error("connection is write-only")]
    WriteOnly,
    /// A send on the reading end of a one-way pipe.
    #[error("connection is read-only")]
    ReadOnly,
    /// The peer closed its end before a message began (CPython's `EOFError`).
    #[error("end of file: the peer closed the connection")]
    Eof,
    /// The peer closed its end in the middle of a message.
    #[error("got end of file during message")]
    EofDuringMessage,
    /// `recv_bytes_max` met a longer message; the connection can no longer be read.
    #[error("bad message length")]
    BadMessageLength,
    /// A message longer than the connection's maximum was announced; the connection is
    /// closed.
    #[error("message of {len} bytes exceeds this connection's maximum of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The connection's maximum ([`Connection::set_max_message_size`]).
        max: u64,
    },
    /// A length header no CPython sender writes; the connection is closed.
    #[error("corrupt message header (length {0})")]
    CorruptHeader(i32),
    /// `recv_bytes_into` got a message longer than the buffer; here is all of it.
    #[error("buffer too short for a message of {} bytes", .0.len())]
    BufferTooShort(Vec<u8>),
    /// An argument out of range, with CPython's message ('offset too large', ...).
    #[error("{0}")]
    InvalidArgument(&'static str),
    /// The timeout passed first.
    #[error("timed out")]
    Timeout,
    /// The message could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The handshake failed.
    #[error(transparent)]
    Authentication(#[from] AuthenticationError),
    /// An address that does not parse.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// The operating system refused (a closed peer on send is `BrokenPipe`, a wrong port
    /// `ConnectionRefused`).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl ConnectionError {
    /// The OS's error, with a timeout made [`ConnectionError::Timeout`].
    pub(crate) fn from_io(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::TimedOut => ConnectionError::Timeout,
            _ => ConnectionError::Io(e),
        }
    }
}

/// One end of a connection carrying values of type `T` in codec `C` (the default,
/// [`Postcard`], between Rust processes; [`Pickle`](crate::codec::Pickle) for CPython
/// peers), and raw byte messages.
///
/// Made by [`pipe`], [`Listener::accept`] and [`Client::connect`]. It can be a Process
/// argument and can travel inside a message on another connection (with the default codec).
/// Dropping it closes it.
///
/// All I/O takes `&mut self`: a connection is one stream, and two threads interleaving their
/// reads would split each other's messages.
///
/// # Examples
///
/// Boundaries are kept, zero-length messages included:
///
/// ```
/// let (mut a, mut b) = multiproc::pipe::<()>(true)?;
/// a.send_bytes(b"one")?;
/// a.send_bytes(b"")?;
/// a.send_bytes(b"three")?;
/// assert_eq!(b.recv_bytes()?, b"one");
/// assert_eq!(b.recv_bytes()?, b"");
/// assert_eq!(b.recv_bytes()?, b"three");
/// # Ok::<(), multiproc::connection::ConnectionError>(())
/// ```
pub struct Connection<T, C: Codec = Postcard> {
    end: Option<Endpoint>,
    readable: bool,
    writable: bool,
    wbuf: Vec<u8>,
    _types: PhantomData<Types<T, C>>,
}

/// The connection's value type and codec, as a marker that is `Send + Sync` whatever `T` is
/// (a connection holds bytes, never a `T`).
type Types<T, C> = (fn(T) -> T, C);

/// A send buffer larger than this is freed after use rather than kept.
const KEEP_WBUF: usize = 1 << 20;

impl<T, C: Codec> fmt::Debug for Connection<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("fd", &self.end.as_ref().map(|e| e.fd().as_raw_fd()))
            .field("readable", &self.readable)
            .field("writable", &self.writable)
            .finish()
    }
}

/// Makes a pair of connected ends, as CPython's `Pipe(duplex)`. With `duplex`, both ends
/// send and receive; without, the first end only receives and the second only sends.
///
/// # Errors
///
/// The OS could not make a socket pair (out of descriptors).
///
/// # Examples
///
/// ```
/// use multiproc::connection::ConnectionError;
///
/// let (mut reader, mut writer) = multiproc::pipe::<i32>(false)?;
/// writer.send(&1)?;
/// assert_eq!(reader.recv()?, 1);
/// assert!(matches!(reader.send(&2), Err(ConnectionError::ReadOnly)));
/// assert!(matches!(writer.recv(), Err(ConnectionError::WriteOnly)));
/// # Ok::<(), ConnectionError>(())
/// ```
pub fn pipe<T>(duplex: bool) -> Result<(Connection<T>, Connection<T>), ConnectionError> {
    let (a, b) = crate::sys::channel_pair()?;
    let (a, b) = (OwnedFd::from(a), OwnedFd::from(b));
    if duplex {
        return Ok((
            Connection::from_fd(a, true, true),
            Connection::from_fd(b, true, true),
        ));
    }
    // The OS enforces the direction too, as CPython's one-way `os.pipe()` does.
    let _ = rustix::net::shutdown(&a, rustix::net::Shutdown::Write);
    let _ = rustix::net::shutdown(&b, rustix::net::Shutdown::Read);
    Ok((
        Connection::from_fd(a, true, false),
        Connection::from_fd(b, false, true),
    ))
}

impl<T, C: Codec> Connection<T, C> {
    fn from_fd(fd: OwnedFd, readable: bool, writable: bool) -> Self {
        Self::from_endpoint(Endpoint::new(fd), readable, writable)
    }

    fn from_endpoint(end: Endpoint, readable: bool, writable: bool) -> Self {
        Self {
            end: Some(end),
            readable,
            writable,
            wbuf: Vec::new(),
            _types: PhantomData,
        }
    }

    /// A connection over a connected stream socket (a `UnixStream`, a `TcpStream`, ...)
    /// whose peer speaks CPython's framing. No handshake is made.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::unix::net::UnixStream;
    /// use multiproc::Connection;
    ///
    /// let (a, b) = UnixStream::pair()?;
    /// let mut a: Connection<String> = Connection::from_socket(a.into());
    /// let mut b: Connection<String> = Connection::from_socket(b.into());
    /// a.send(&"hi".to_string())?;
    /// assert_eq!(b.recv()?, "hi");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_socket(sock: OwnedFd) -> Self {
        Self::from_fd(sock, true, true)
    }

    /// The same connection, typed for other values or another codec (for example
    /// [`Pickle`](crate::codec::Pickle) once a handshake with a CPython peer is done).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{Connection, codec::Pickle};
    ///
    /// let (a, b) = multiproc::pipe::<()>(true)?;
    /// let mut a: Connection<Vec<i64>, Pickle> = a.retype();
    /// let mut b: Connection<Vec<i64>, Pickle> = b.retype();
    /// a.send(&vec![1, 2])?;
    /// assert_eq!(b.recv()?, [1, 2]);
    /// # Ok::<(), multiproc::connection::ConnectionError>(())
    /// ```
    pub fn retype<U, D: Codec>(mut self) -> Connection<U, D> {
        Connection {
            end: self.end.take(),
            readable: self.readable,
            writable: self.writable,
            wbuf: std::mem::take(&mut self.wbuf),
            _types: PhantomData,
        }
    }

    fn reading(&mut self) -> Result<&mut Endpoint, ConnectionError> {
        self.check_readable()?;
        self.end.as_mut().ok_or(ConnectionError::Closed)
    }

    /// [`ConnectionError::WriteOnly`] for an open end that cannot receive.
    fn check_readable(&self) -> Result<(), ConnectionError> {
        if !self.readable && self.end.is_some() {
            return Err(ConnectionError::WriteOnly);
        }
        Ok(())
    }

    fn writing(&self) -> Result<&Endpoint, ConnectionError> {
        if !self.writable && self.end.is_some() {
            return Err(ConnectionError::ReadOnly);
        }
        self.end.as_ref().ok_or(ConnectionError::Closed)
    }

    /// Whether a value sent now can carry descriptors (a Unix socket, and a codec that
    /// carries them): see `encode_for`.
    fn carries_fds(&self) -> Result<bool, ConnectionError> {
        Ok(self.writing()?.carries_fds && C::CARRIES_DESCRIPTORS)
    }

    /// After an error that leaves the stream out of step, reading is over (CPython closes a
    /// read-only connection there and makes a duplex one unreadable).
    fn after_read_error(&mut self, e: &ConnectionError) {
        match e {
            ConnectionError::TooLarge { .. } | ConnectionError::CorruptHeader(_) => self.close(),
            ConnectionError::BadMessageLength => {
                if self.writable {
                    self.readable = false;
                } else {
                    self.close();
                }
            }
            _ => {}
        }
    }

    // -----------------------------------------------------------------------------------------
    // Bytes

    /// Sends `buf` as one message.
    ///
    /// # Errors
    ///
    /// [`ConnectionError::Closed`], [`ConnectionError::ReadOnly`], or the OS's error
    /// (`BrokenPipe` once the peer has closed).
    ///
    /// # Examples
    ///
    /// ```
    /// let (mut a, mut b) = multiproc::pipe::<()>(true)?;
    /// a.send_bytes(b"hello")?;
    /// assert_eq!(b.recv_bytes()?, b"hello");
    /// # Ok::<(), multiproc::connection::ConnectionError>(())
    /// ```
    pub fn send_bytes(&mut self, buf: &[u8]) -> Result<(), ConnectionError> {
        self.writing()?.send(buf, &[], &[], None)
    }

    /// Sends `buf[offset..offset + size]` (to the end without `size`) as one message, as
    /// CPython's `send_bytes(buf, offset, size)`.
    ///
    /// # Errors
    ///
    /// 'buffer length < offset' or 'buffer length < offset + size', and those of
    /// [`send_bytes`](Self::send_bytes).
    ///
    /// # Examples
    ///
    /// ```
    /// let (mut a, mut b) = multiproc::pipe::<()>(true)?;
    /// a.send_bytes_range(b"0123456789", 2, Some(3))?;
    /// assert_eq!(b.recv_bytes()?, b"234");
    /// assert!(a.send_bytes_range(b"01", 3, None).is_err());
    /// # Ok::<(), multiproc::connection::ConnectionError>(())
    /// ```
    pub fn send_bytes_range(
        &mut self,
        buf: &[u8],
        offset: usize,
        size: Option<usize>,
    ) -> Result<(), ConnectionError> {
        if offset > buf.len() {
            return Err(ConnectionError::InvalidArgument("buffer length < offset"));
        }
        let end = match size {
            None => buf.len(),
            Some(size) => offset
                .checked_add(size)
                .filter(|end| *end <= buf.len())
                .ok_or(ConnectionError::InvalidArgument(
                    "buffer length < offset + size",
                ))?,
        };
        self.send_bytes(&buf[offset..end])
    }

    /// Sends every buffer of `bufs` as a message of its own, in order, packing many into
    /// each system call: the peer receives exactly what as many
    /// [`send_bytes`](Self::send_bytes) calls would have sent (CPython's framing, one
    /// message each), at a fraction of the cost when messages are small. Up to 64 KiB of
    /// frames go per write; a large message goes on its own, without a copy.
    ///
    /// # Errors
    ///
    /// Those of [`send_bytes`](Self::send_bytes). After an error some of the messages may
    /// have gone (every message before the failing write did), and a write cut short leaves
    /// the stream out of step: the connection should then be closed.
    ///
    /// # Examples
    ///
    /// ```
    /// let (mut a, mut b) = multiproc::pipe::<()>(true)?;
    /// a.send_bytes_many(["one", "", "three"])?;
    /// assert_eq!(b.recv_bytes()?, b"one");
    /// assert_eq!(b.recv_bytes()?, b"");
    /// assert_eq!(b.recv_bytes()?, b"three");
    /// # Ok::<(), multiproc::connection::ConnectionError>(())
    /// ```
    pub fn send_bytes_many<B: AsRef<[u8]>>(
        &mut self,
        bufs: impl IntoIterator<Item = B>,
    ) -> Result<(), ConnectionError> {
        self.send_bytes_many_by(bufs, None)
    }

    /// [`send_bytes_many`](Self::send_bytes_many), waiting at most `timeout` in all for the
    /// peer to make room.
    ///
    /// # Errors
    ///
    /// [`ConnectionError::Timeout`], and those of
    /// [`send_bytes_many`](Self::send_bytes_many).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let (mut a, _b) = multiproc::pipe::<()>(true)?;
    /// // Nobody reads: 16 MiB of small messages cannot all go.
    /// let many = std::iter::repeat([0u8; 1024]).take(16 << 10);
    /// assert!(a.send_bytes_many_timeout(many, Duration::from_millis(50)).is_err());
    /// # Ok::<(), multiproc::connection::ConnectionError>(())
    /// ```
    pub fn send_bytes_many_timeout<B: AsRef<[u8]>>(
        &mut self,
        bufs: impl IntoIterator<Item = B>,
        timeout: Duration,
    ) -> Result<(), ConnectionError> {
        self.send_bytes_many_by(bufs, Some(Instant::now() + timeout))
    }

    fn send_bytes_many_by<B: AsRef<[u8]>>(
        &mut self,
        bufs: impl IntoIterator<Item = B>,
        deadline: Option<Instant>,
    ) -> Result<(), ConnectionError> {
        let mut batch = Batch::new(self, deadline)?;
        for buf in bufs {
            batch.push(buf.as_ref(), &[], Vec::new())?;
        }
        batch.finish()
    }

    /// Sends `buf` as one message, waiting at most `timeout` for the peer to make room.
    ///
    /// # Errors
    ///
    /// [`ConnectionError::Timeout`] (part of the message may have gone: the connection is
    /// then out of step and should be closed), and those of
    /// [`send_bytes`](Self::send_bytes).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let (mut a, _b) = multiproc::pipe::<()>(true)?;
    /// // Nobody reads: a large message cannot go.
    /// let big = vec![0u8; 16 << 20];
    /// assert!(a.send_bytes_timeout(&big, Duration::from_millis(50)).is_err());
    /// # Ok::<(), multiproc::connection::ConnectionError>(())
    /// ```
    pub fn send_bytes_timeout(
        &mut self,
        buf: &[u8],
        timeout: Duration,
    ) -> Result<(), ConnectionError> {
        self.writing()?
            .send(buf, &[], &[], Some(Instant::now() + timeout))
    }

    /// Receives one whole message.
    ///
    /// # Errors
    ///
    /// [`ConnectionError::Eof`] if the peer closed before a message began,
    /// [`ConnectionError::EofDuringMessage`] inside one, [`ConnectionError::TooLarge`] past
    /// the maximum, [`ConnectionError::Closed`], [`ConnectionError::WriteOnly`].
    ///
    /// # Examples
    ///
    /// ```
    /// let (mut a, mut b) = multiproc::pipe::<()>(true)?;
    /// b.send_bytes(&[7; 100])?;
    /// assert_eq!(a.recv_bytes()?.len(), 100);
    /// # Ok::<(), multiproc::connection::ConnectionError>(())
    /// ```
    pub fn recv_bytes(&mut self) -> Result<Vec<u8>, ConnectionError> {
        self.recv_bytes_inner(None, None)
    }

    /// Receives one message of at most `maxlength` bytes.
    ///
    /// # Errors
    ///
    /// 'bad message length' ([`ConnectionError::BadMessageLength`]) for a longer one, after
    /// which the connection can no longer be read; and those of
    /// [`recv_bytes`](Self::recv_bytes).
    ///
    /// # Examples
    ///
    /// ```
    /// let (mut a, mut b) = multiproc::pipe::<()>(true)?;
    /// b.send_bytes(b"too long")?;
    /// assert_eq!(a.recv_bytes_max(3).unwrap_err().to_string(), "bad message length");
    /// # Ok::<(), multiproc::connection::ConnectionError>(())
    /// ```
    pub fn recv_bytes_max(&mut self, maxlength: usize) -> Result<Vec<u8>, ConnectionError> {
        self.recv_bytes_inner(None, Some(maxlength as u64))
    }

    /// Receives one message, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`ConnectionError::Timeout`] (nothing is lost: a message half received is finished
    /// by the next call), and those of [`recv_bytes`](Self::recv_bytes).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let (mut a, _b) = multiproc::pipe::<()>(true)?;
    /// assert!(matches!(
    ///     a.recv_bytes_timeout(Duration::from_millis(10)),
    ///     Err(multiproc::connection::ConnectionError::Timeout)
    /// ));
    /// # Ok::<(), multiproc::connection::ConnectionError>(())
    /// ```
    pub fn recv_bytes_timeout(&mut self, timeout: Duration) -> Result<Vec<u8>, ConnectionError> {
        self.recv_bytes_inner(Some(Instant::now() + timeout), None)
    }

    fn recv_bytes_inner(
        &mut self,
        deadline: Option<Instant>,
        limit: Option<u64>,
    ) -> Result<Vec<u8>, ConnectionError> {
        let r = self
            .reading()?
            .recv(deadline, limit)
            .map(|m| m.payload.into_vec());
        if let Err(e) = &r {
            self.after_read_error(e);
        }
        r
    }

    /// Receives the messages that are here, at least one, without copying them: waits for
    /// the next message, then hands it and every further whole message already read (up to
    /// `max` in all) to `f`, each as a slice of the connection's read buffer. Returns how
    /// many. The receiving half of [`send_bytes_many`](Self::send_bytes_many), for streams
    /// of small messages; it reads the same messages as that many
    /// [`recv_bytes`](Self::recv_bytes) calls would (descriptors that came with them are
    /// closed).
    ///
    /// # Errors
    ///
    /// 'max must be at least 1', and those of [`recv_bytes`](Self::recv_bytes) for the first
    /// message (an error in a later one is left for the next receive).
    ///
    /// # Examples
    ///
    /// ```
    /// let (mut a, mut b) = multiproc::pipe::<()>(true)?;
    /// a.send_bytes_many(["one", "two", "three"])?;
    /// let mut got = Vec::new();
    /// while got.len() < 3 {
    ///     b.recv_bytes_many(usize::MAX, |m| got.push(String::from_utf8_lossy(m).into_owned()))?;
    /// }
    /// assert_eq!(got, ["one", "two", "three"]);
    /// # Ok::<(), multiproc::connection::ConnectionError>(())
    /// ```
    pub fn recv_bytes_many(
        &mut self,
        max: usize,
        f: impl FnMut(&[u8]),
    ) -> Result<usize, ConnectionError> {
        self.recv_bytes_many_by(max, None, f)
    }

    /// [`recv_bytes_many`](Self::recv_bytes_many), waiting at most `timeout` for the first
    /// message.
    ///
    /// # Errors
    ///
    /// [`ConnectionError::Timeout`], and those of [`recv_bytes_many`](Self::recv_bytes_many).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc::connection::ConnectionError;
    ///
    /// let (mut a, mut b) = multiproc::pipe::<()>(true)?;
    /// let mut sizes = Vec::new();
    /// let r = b.recv_bytes_many_timeout(10, Duration::from_millis(10), |m| sizes.push(m.len()));
    /// assert!(matches!(r, Err(ConnectionError::Timeout)));
    /// a.send_bytes_many([&[1u8; 5][..], &[], &[2; 3]])?;
    /// // At most two this time, the third at the next call.
    /// assert_eq!(b.recv_bytes_many_timeout(2, Duration::from_secs(5), |m| sizes.push(m.len()))?, 2);
    /// assert_eq!(b.recv_bytes_many_timeout(2, Duration::from_secs(5), |m| sizes.push(m.len()))?, 1);
    /// assert_eq!(sizes, [5, 0, 3]);
    /// # Ok::<(), ConnectionError>(())
    /// ```
    pub fn recv_bytes_many_timeout(
        &mut self,
        max: usize,
        timeout: Duration,
        f: impl FnMut(&[u8]),
    ) -> Result<usize, ConnectionError> {
        self.recv_bytes_many_by(max, Some(Instant::now() + timeout), f)
    }

    fn recv_bytes_many_by(
        &mut self,
        max: usize,
        deadline: Option<Instant>,
        mut f: impl FnMut(&[u8]),
    ) -> Result<usize, ConnectionError> {
        if max == 0 {
            return Err(ConnectionError::InvalidArgument("max must be at least 1"));
        }
        let r = self.reading()?.recv_many(deadline, max, &mut f);
        if let Err(e) = &r {
            self.after_read_error(e);
        }
        r
    }

    /// Receives one message into `buf` from `offset` on and returns its length.
    ///
    /// # Errors
    ///
    /// 'offset too large' if `offset > buf.len()`;
    /// [`ConnectionError::BufferTooShort`] carrying the whole message if it does not fit
    /// (nothing is lost); and those of [`recv_bytes`](Self::recv_bytes).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::connection::ConnectionError;
    ///
    /// let (mut a, mut b) = multiproc::pipe::<()>(true)?;
    /// b.send_bytes(&[1, 2, 3])?;
    /// let mut buf = [0u8; 5];
    /// assert_eq!(a.recv_bytes_into(&mut buf, 1)?, 3);
    /// assert_eq!(buf, [0, 1, 2, 3, 0]);
    /// b.send_bytes(&[9; 8])?;
    /// match a.recv_bytes_into(&mut buf, 0) {
    ///     Err(ConnectionError::BufferTooShort(whole)) => assert_eq!(whole, [9; 8]),
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), ConnectionError>(())
    /// ```
    pub fn recv_bytes_into(
        &mut self,
        buf: &mut [u8],
        offset: usize,
    ) -> Result<usize, ConnectionError> {
        if offset > buf.len() {
            return Err(ConnectionError::InvalidArgument("offset too large"));
        }
        let r = self.reading()?.recv_into(&mut buf[offset..]);
        match r {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(whole)) => Err(ConnectionError::BufferTooShort(whole)),
            Err(e) => {
                self.after_read_error(&e);
                Err(e)
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // State

    /// Whether a message (or end of file) can be received now, waiting at most `timeout`
    /// for one (`None` waits for ever). `Some(Duration::ZERO)` is CPython's `poll()`.
    ///
    /// # Errors
    ///
    /// [`ConnectionError::Closed`], [`ConnectionError::WriteOnly`], or the OS's error.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let (mut a, mut b) = multiproc::pipe::<i32>(true)?;
    /// assert!(!b.poll(Some(Duration::ZERO))?);
    /// a.send(&1)?;
    /// assert!(b.poll(Some(Duration::ZERO))?);
    /// assert_eq!(b.recv()?, 1);
    /// assert!(!b.poll(Some(Duration::ZERO))?);
    /// # Ok::<(), multiproc::connection::ConnectionError>(())
    /// ```
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool, ConnectionError> {
        self.check_readable()?;
        let end = self.end.as_ref().ok_or(ConnectionError::Closed)?;
        Ok(end.poll(timeout.map(|t| Instant::now() + t))?)
    }

    /// Closes this end (the peer then sees end of file). Closing twice is harmless.
    ///
    /// # Examples
    ///
    /// ```
    /// let (mut a, _b) = multiproc::pipe::<()>(true)?;
    /// a.close();
    /// assert!(a.closed());
    /// assert_eq!(a.send_bytes(b"x").unwrap_err().to_string(), "handle is closed");
    /// # Ok::<(), multiproc::connection::ConnectionError>(())
    /// ```
    pub fn close(&mut self) {
        self.end = None;
    }

    /// True once [`close`](Self::close) was called (or an error closed it).
    pub fn closed(&self) -> bool {
        self.end.is_none()
    }

    /// True if this end can receive.
    pub fn readable(&self) -> bool {
        self.readable
    }

    /// True if this end can send.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// The descriptor number, as CPython's `fileno()`.
    ///
    /// # Errors
    ///
    /// [`ConnectionError::Closed`].
    pub fn fileno(&self) -> Result<RawFd, ConnectionError> {
        self.end
            .as_ref()
            .map(|e| e.fd().as_raw_fd())
            .ok_or(ConnectionError::Closed)
    }

    /// Sets the longest message this end accepts (default [`DEFAULT_MAX_MESSAGE`], 16 GiB).
    /// A longer one is refused with [`ConnectionError::TooLarge`] before any of it is
    /// read, and the connection is closed. Below the limit, a message's storage is reserved
    /// up front only up to 256 MiB (zeroed pages the OS maps lazily) and grows beyond that
    /// only as its bytes arrive, so a lying length costs little.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::connection::ConnectionError;
    ///
    /// let (mut a, mut b) = multiproc::pipe::<()>(true)?;
    /// b.set_max_message_size(4);
    /// a.send_bytes(b"12345")?;
    /// assert!(matches!(b.recv_bytes(), Err(ConnectionError::TooLarge { len: 5, max: 4 })));
    /// assert!(b.closed());
    /// # Ok::<(), ConnectionError>(())
    /// ```
    pub fn set_max_message_size(&mut self, max: u64) {
        if let Some(e) = self.end.as_mut() {
            e.max_message = max;
        }
    }

    /// The longest message this end accepts.
    pub fn max_message_size(&self) -> u64 {
        self.end
            .as_ref()
            .map_or(DEFAULT_MAX_MESSAGE, |e| e.max_message)
    }

    pub(crate) fn endpoint_fd(&self) -> Option<BorrowedFd<'_>> {
        self.end.as_ref().map(|e| e.fd())
    }

    pub(crate) fn ready_now(&self) -> bool {
        self.end.as_ref().is_some_and(|e| e.ready_now())
    }
}

impl<T: Serialize, C: Codec> Connection<T, C> {
    /// Sends a value as one message, encoded with the connection's codec (CPython's
    /// `send(obj)` with [`Pickle`](crate::codec::Pickle)). With the default codec the value
    /// may hold connections and other descriptors; they travel with it.
    ///
    /// # Errors
    ///
    /// [`ConnectionError::Codec`] if the value cannot be encoded (nothing is sent), and those
    /// of [`send_bytes`](Self::send_bytes).
    ///
    /// # Examples
    ///
    /// ```
    /// let (mut a, mut b) = multiproc::pipe::<Vec<String>>(true)?;
    /// a.send(&vec!["x".into(), "y".into()])?;
    /// assert_eq!(b.recv()?, ["x", "y"]);
    /// # Ok::<(), multiproc::connection::ConnectionError>(())
    /// ```
    pub fn send(&mut self, value: &T) -> Result<(), ConnectionError> {
        self.send_inner(value, None)
    }

    /// [`send`](Self::send), waiting at most `timeout` for the peer to make room.
    ///
    /// # Errors
    ///
    /// Those of [`send_bytes_timeout`](Self::send_bytes_timeout) and [`send`](Self::send).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let (mut a, mut b) = multiproc::pipe::<u32>(true)?;
    /// a.send_timeout(&5, Duration::from_secs(1))?;
    /// assert_eq!(b.recv()?, 5);
    /// # Ok::<(), multiproc::connection::ConnectionError>(())
    /// ```
    pub fn send_timeout(&mut self, value: &T, timeout: Duration) -> Result<(), ConnectionError> {
        self.send_inner(value, Some(Instant::now() + timeout))
    }
}

impl<T: Serialize, C: Codec> Connection<T, C> {
    /// Sends every value of `values` as a message of its own, in order, packing many into
    /// each system call (see [`send_bytes_many`](Self::send_bytes_many)): the peer receives
    /// them one [`recv`](Self::recv) each. A value that carries descriptors goes in a write
    /// of its own, with them.
    ///
    /// # Errors
    ///
    /// [`ConnectionError::Codec`] if a value cannot be encoded (the values before it have
    /// gone, or will with the next write; none after it), and those of
    /// [`send_bytes_many`](Self::send_bytes_many).
    ///
    /// # Examples
    ///
    /// ```
    /// let (mut a, mut b) = multiproc::pipe::<u64>(true)?;
    /// a.send_many(&[1, 2, 3])?;
    /// a.send_many((4..100).collect::<Vec<_>>().iter())?;
    /// let got: Vec<u64> = (0..99).map(|_| b.recv()).collect::<Result<_, _>>()?;
    /// assert_eq!(got, (1..100).collect::<Vec<_>>());
    /// # Ok::<(), multiproc::connection::ConnectionError>(())
    /// ```
    pub fn send_many<'a>(
        &mut self,
        values: impl IntoIterator<Item = &'a T>,
    ) -> Result<(), ConnectionError>
    where
        T: 'a,
    {
        self.send_many_by(values, None)
    }

    /// [`send_many`](Self::send_many), waiting at most `timeout` in all for the peer to make
    /// room.
    ///
    /// # Errors
    ///
    /// [`ConnectionError::Timeout`], and those of [`send_many`](Self::send_many).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let (mut a, mut b) = multiproc::pipe::<String>(true)?;
    /// let words = ["a".to_string(), "b".to_string()];
    /// a.send_many_timeout(&words, Duration::from_secs(1))?;
    /// assert_eq!(b.recv()?, "a");
    /// assert_eq!(b.recv()?, "b");
    /// # Ok::<(), multiproc::connection::ConnectionError>(())
    /// ```
    pub fn send_many_timeout<'a>(
        &mut self,
        values: impl IntoIterator<Item = &'a T>,
        timeout: Duration,
    ) -> Result<(), ConnectionError>
    where
        T: 'a,
    {
        self.send_many_by(values, Some(Instant::now() + timeout))
    }

    fn send_many_by<'a>(
        &mut self,
        values: impl IntoIterator<Item = &'a T>,
        deadline: Option<Instant>,
    ) -> Result<(), ConnectionError>
    where
        T: 'a,
    {
        let carries_fds = self.carries_fds()?;
        let mut one = Vec::new();
        let mut batch = Batch::new(self, deadline)?;
        for value in values {
            one.clear();
            let (encoded, fds, transits) = encode_for::<_, C>(carries_fds, value, &mut one);
            if let Err(e) = encoded {
                Segment::take_back_transits(&transits);
                // What is packed already goes; nothing after the value that failed.
                batch.finish()?;
                return Err(e.into());
            }
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
            batch.push(&one, &borrowed, transits)?;
        }
        batch.finish()
    }
}

/// Encodes `value` for a connection: collecting the descriptors it holds if the connection
/// carries them (else a descriptor fails to encode), and listing the tracked segments it
/// holds, whose transits the caller takes back if the message is never delivered.
fn encode_for<U: Serialize + ?Sized, C: Codec>(
    carries_fds: bool,
    value: &U,
    out: &mut Vec<u8>,
) -> (Result<(), CodecError>, Vec<OwnedFd>, Vec<Transit>) {
    if carries_fds {
        fds::encoding(|| C::encode(value, out))
    } else {
        let (encoded, transits) = fds::encoding_without_fds(|| C::encode(value, out));
        (encoded, Vec::new(), transits)
    }
}

/// Frames packed for one write (the sending half of `send_bytes_many` and `send_many`): a
/// message with descriptors, or one too large to be worth a copy, goes in a write of its own
/// right after what is packed before it.
struct Batch<'c, T, C: Codec> {
    conn: &'c mut Connection<T, C>,
    buf: Vec<u8>,
    deadline: Option<Instant>,
    /// The transits of the values packed in `buf`: taken back if they are never written.
    pending: Vec<Transit>,
}

/// How many bytes of frames a batch packs into one write.
const BATCH_BYTES: usize = 64 << 10;

/// A message at least this long is written on its own, from the caller's buffer.
const BATCH_COPY_MAX: usize = 16 << 10;

impl<'c, T, C: Codec> Batch<'c, T, C> {
    fn new(
        conn: &'c mut Connection<T, C>,
        deadline: Option<Instant>,
    ) -> Result<Self, ConnectionError> {
        conn.writing()?;
        let mut buf = std::mem::take(&mut conn.wbuf);
        buf.clear();
        Ok(Self {
            conn,
            buf,
            deadline,
            pending: Vec::new(),
        })
    }

    /// Packs (or writes) one encoded value; `transits` are its segments' (taken back if it
    /// is never written).
    fn push(
        &mut self,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
        transits: Vec<Transit>,
    ) -> Result<(), ConnectionError> {
        if !fds.is_empty() || payload.len() >= BATCH_COPY_MAX {
            let sent = self
                .flush()
                .and_then(|()| self.conn.writing()?.send(payload, &[], fds, self.deadline));
            if sent.is_err() {
                Segment::take_back_transits(&transits);
            }
            return sent;
        }
        let mut header = [0u8; framing::HEADER_MAX];
        let at = framing::write_header(payload.len() as u64, &mut header);
        self.buf.extend_from_slice(&header[at..]);
        self.buf.extend_from_slice(payload);
        self.pending.extend(transits);
        if self.buf.len() >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes what is packed. On failure the packed values count as never delivered: their
    /// transits are taken back (a receiver that does decode one of them anyway only gets the
    /// name's count taken back twice, which the tracker ignores).
    fn flush(&mut self) -> Result<(), ConnectionError> {
        if !self.buf.is_empty() {
            let r = self.conn.writing()?.send_framed(&self.buf, self.deadline);
            self.buf.clear();
            let pending = std::mem::take(&mut self.pending);
            if r.is_err() {
                Segment::take_back_transits(&pending);
            }
            r?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), ConnectionError> {
        self.flush()
    }
}

impl<T, C: Codec> Drop for Batch<'_, T, C> {
    fn drop(&mut self) {
        // Packed but never written (an error before the batch finished).
        Segment::take_back_transits(&std::mem::take(&mut self.pending));
        // The buffer goes back to the connection for its next send (unless it grew large).
        let buf = std::mem::take(&mut self.buf);
        if buf.capacity() <= KEEP_WBUF {
            self.conn.wbuf = buf;
        }
    }
}

impl<T, C: Codec> Connection<T, C> {
    /// Sends a value of another type than the connection's `T` (for request/response
    /// protocols whose two directions carry different types).
    ///
    /// # Errors
    ///
    /// Those of [`send`](Self::send).
    ///
    /// # Examples
    ///
    /// ```
    /// let (mut a, mut b) = multiproc::pipe::<String>(true)?;
    /// a.send(&"how many?".to_string())?;
    /// assert_eq!(b.recv()?, "how many?");
    /// b.send_as(&3u32)?;
    /// assert_eq!(a.recv_as::<u32>()?, 3);
    /// # Ok::<(), multiproc::connection::ConnectionError>(())
    /// ```
    pub fn send_as<U: Serialize + ?Sized>(&mut self, value: &U) -> Result<(), ConnectionError> {
        self.send_inner(value, None)
    }

    /// Receives a value of another type than the connection's `T`.
    ///
    /// # Errors
    ///
    /// Those of [`recv`](Self::recv).
    pub fn recv_as<U: DeserializeOwned>(&mut self) -> Result<U, ConnectionError> {
        self.recv_inner(None)
    }

    fn send_inner<U: Serialize + ?Sized>(
        &mut self,
        value: &U,
        deadline: Option<Instant>,
    ) -> Result<(), ConnectionError> {
        // Only a Unix socket carries descriptors: over TCP a value with a Descriptor fails to
        // encode, and shared objects travel by name.
        let carries_fds = self.carries_fds()?;
        let mut buf = std::mem::take(&mut self.wbuf);
        buf.clear();
        let (encoded, fds, transits) = encode_for::<_, C>(carries_fds, value, &mut buf);
        let r = encoded.map_err(ConnectionError::from).and_then(|()| {
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
            self.writing()?.send(&buf, &[], &borrowed, deadline)
        });
        if r.is_err() {
            // Never delivered (see `Batch::flush` for a send that fails part way).
            Segment::take_back_transits(&transits);
        }
        if buf.capacity() <= KEEP_WBUF {
            self.wbuf = buf;
        }
        r
    }
}

impl<T: DeserializeOwned, C: Codec> Connection<T, C> {
    /// Receives one message and decodes it with the connection's codec.
    ///
    /// # Errors
    ///
    /// [`ConnectionError::Codec`] if the message is not a `T` (the message is consumed),
    /// and those of [`recv_bytes`](Self::recv_bytes).
    ///
    /// # Examples
    ///
    /// ```
    /// let (mut a, mut b) = multiproc::pipe::<Option<f64>>(true)?;
    /// a.send(&Some(2.25))?;
    /// a.send(&None)?;
    /// assert_eq!(b.recv()?, Some(2.25));
    /// assert_eq!(b.recv()?, None);
    /// # Ok::<(), multiproc::connection::ConnectionError>(())
    /// ```
    pub fn recv(&mut self) -> Result<T, ConnectionError> {
        self.recv_inner(None)
    }

    /// [`recv`](Self::recv), waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`ConnectionError::Timeout`] (nothing is lost), and those of [`recv`](Self::recv).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let (mut a, mut b) = multiproc::pipe::<u8>(true)?;
    /// assert!(b.recv_timeout(Duration::from_millis(10)).is_err());
    /// a.send(&3)?;
    /// assert_eq!(b.recv_timeout(Duration::from_secs(5))?, 3);
    /// # Ok::<(), multiproc::connection::ConnectionError>(())
    /// ```
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T, ConnectionError> {
        self.recv_inner(Some(Instant::now() + timeout))
    }
}

impl<T, C: Codec> Connection<T, C> {
    fn recv_inner<U: DeserializeOwned>(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<U, ConnectionError> {
        let r = self.reading()?.recv(deadline, None).and_then(|m| {
            let bytes = m.payload.as_slice();
            let value = if C::CARRIES_DESCRIPTORS {
                fds::decoding(m.fds, || C::decode(bytes))
            } else {
                C::decode(bytes)
            };
            Ok(value?)
        });
        if let Err(e) = &r {
            self.after_read_error(e);
        }
        r
    }
}

/// What a connection end becomes on the wire: its descriptor, directions, limit, and the
/// bytes it had read but not consumed.
#[derive(Serialize)]
struct WireOut<'a> {
    fd: FdRef<'a>,
    readable: bool,
    writable: bool,
    max_message: u64,
    pending: &'a [u8],
}

#[derive(Deserialize)]
struct WireIn {
    fd: crate::codec::Descriptor,
    readable: bool,
    writable: bool,
    max_message: u64,
    pending: Vec<u8>,
}

struct FdRef<'a>(BorrowedFd<'a>);

impl Serialize for FdRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        fds::serialize_fd(self.0, s)
    }
}

impl<T, C: Codec> Serialize for Connection<T, C> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let end = self
            .end
            .as_ref()
            .ok_or_else(|| crate::codec::ser_error("cannot send a closed connection"))?;
        let pending = end.pending().ok_or_else(|| {
            crate::codec::ser_error(
                "cannot send a connection in the middle of receiving: finish the message first",
            )
        })?;
        WireOut {
            fd: FdRef(end.fd()),
            readable: self.readable,
            writable: self.writable,
            max_message: end.max_message,
            pending,
        }
        .serialize(s)
    }
}

impl<'de, T, C: Codec> Deserialize<'de> for Connection<T, C> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = WireIn::deserialize(d)?;
        let mut end = Endpoint::with_pending(w.fd.into_owned(), &w.pending);
        end.max_message = w.max_message;
        Ok(Self::from_endpoint(end, w.readable, w.writable))
    }
}
