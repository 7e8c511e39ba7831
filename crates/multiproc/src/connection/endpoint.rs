//! One end of a byte stream carrying CPython-framed messages: buffered reads, gathered
//! writes, descriptors attached to messages, deadlines, and a short adaptive spin.
//!
//! # Reading
//!
//! Small messages are read through a 64 KiB buffer, so one `recvmsg` usually brings a whole
//! message (or several) and a typed message is decoded straight from the buffer. A message
//! too large for the buffer is read into its own `Vec` (or the caller's slice) with plain
//! reads bounded to its remaining length, so no read ever takes bytes of the next message:
//! that next message's first byte may carry descriptors, and only `recvmsg` collects those.
//!
//! # Descriptors
//!
//! A sender attaches a message's descriptors to its first byte. The kernel ends a read right
//! after data that carries descriptors, so descriptors received by one `recvmsg` belong to
//! the last message that starts among the bytes of that read. Each batch is kept with the
//! stream range it was read with, and a message claims the batches whose range contains its
//! first byte and ends inside the message.
//!
//! # Waiting
//!
//! When the process may run on more than one CPU, a receive that finds nothing spins briefly
//! (non-blocking receives) before it sleeps: waking a process on another CPU costs tens of
//! microseconds on the machines this was measured on, more than a quick peer takes to
//! answer. The spin turns itself off after repeated misses and back on later.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::event::PollFlags;

use super::ConnectionError;
use super::framing::{self, HEADER_MAX, Header};
use crate::sys;

/// The read buffer's size.
const READ_BUF: usize = 64 * 1024;

/// A message announced as longer than this is not trusted with an allocation of its full
/// length up front: its buffer grows as its bytes arrive.
const TRUSTED_LEN: u64 = 256 << 20;

/// How long a receive spins before sleeping, and how many misses in a row turn it off.
const SPIN_FOR: Duration = Duration::from_micros(60);
const SPIN_MISSES_OFF: u32 = 4;
/// Receives that sleep without trying to spin once spinning is off: at first, and at most
/// (each rest that ends in a miss doubles the next one).
const SPIN_REST: u32 = 64;
const SPIN_REST_MAX: u32 = 4096;
/// A spin whose wall time exceeds its CPU time by more than this was preempted.
const SPIN_PREEMPTED_NS: u64 = 3_000;

/// The default limit on one message's length (see [`Connection::set_max_message_size`]).
///
/// [`Connection::set_max_message_size`]: super::Connection::set_max_message_size
pub const DEFAULT_MAX_MESSAGE: u64 = 1 << 34;

/// Whether a receive spins before it sleeps. It pays when the peer runs on another CPU and
/// answers within the spin; it wastes the CPU when the peer needs the same one. That cannot
/// be known up front (a process pinned to one CPU may well talk to a peer pinned to
/// another), so every receive on a machine with more than one CPU may spin, and the misses
/// decide: a few in a row turn spinning off for a rest, after which one spin probes again,
/// and each probe that misses doubles the rest. A hit starts over.
///
/// A process pinned to one CPU also counts as a miss a spin that got its answer only after
/// being preempted (its wall time well over its CPU time): the peer then ran on this CPU,
/// in the spin's stead.
#[derive(Debug)]
struct Spin {
    enabled: bool,
    /// This process may run on one CPU only (checked once, when the endpoint is made).
    pinned: bool,
    misses: u32,
    rest: u32,
    next_rest: u32,
}

impl Spin {
    fn new() -> Self {
        Self::with(sys::machine_cpus() > 1, sys::cpus_allowed() == 1)
    }

    fn with(enabled: bool, pinned: bool) -> Self {
        Self {
            enabled,
            pinned,
            // A pinned process starts as a probe: one miss turns it off (its peer may well
            // share its CPU).
            misses: if pinned { SPIN_MISSES_OFF - 1 } else { 0 },
            rest: 0,
            next_rest: SPIN_REST,
        }
    }

    fn should_spin(&mut self) -> bool {
        if !self.enabled {
            return false;
        }
        if self.rest > 0 {
            self.rest -= 1;
            return false;
        }
        true
    }

    fn hit(&mut self) {
        self.misses = 0;
        self.next_rest = SPIN_REST;
    }

    fn miss(&mut self) {
        self.misses += 1;
        if self.misses >= SPIN_MISSES_OFF {
            self.rest = self.next_rest;
            self.next_rest = (self.next_rest * 2).min(SPIN_REST_MAX);
            // After the rest, one spin probes: a miss rests again at once.
            self.misses = SPIN_MISSES_OFF - 1;
        }
    }
}

/// A message too large for the read buffer, being read into its own storage.
#[derive(Debug)]
struct Partial {
    bytes: Vec<u8>,
    filled: usize,
    len: usize,
    fds: Vec<OwnedFd>,
}

/// A received message: where its payload is, and the descriptors that came with it.
pub(crate) struct Received<'a> {
    pub(crate) payload: Payload<'a>,
    pub(crate) fds: Vec<OwnedFd>,
}

/// A payload, borrowed from the read buffer or owned.
pub(crate) enum Payload<'a> {
    Buffered(&'a [u8]),
    Owned(Vec<u8>),
}

impl Payload<'_> {
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Buffered(b) => b,
            Payload::Owned(v) => v,
        }
    }

    pub(crate) fn into_vec(self) -> Vec<u8> {
        match self {
            Payload::Buffered(b) => b.to_vec(),
            Payload::Owned(v) => v,
        }
    }
}

/// One end of a connection.
#[derive(Debug)]
pub(crate) struct Endpoint {
    sock: OwnedFd,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Stream offset of `buf[start]`.
    pos: u64,
    /// Received descriptors, with the stream range of the read that brought them.
    fds: Vec<sys::FdBatch>,
    partial: Option<Partial>,
    eof: bool,
    spin: Spin,
    pub(crate) max_message: u64,
    /// An `AF_UNIX` socket, which can carry descriptors (TCP silently drops them).
    pub(crate) carries_fds: bool,
}

/// The descriptors of every open endpoint of this process. A `fork` child points them at
/// `/dev/null` before it runs its target (see [`after_fork_in_child`]): otherwise it would
/// hold the parent's ends of every pipe open, and a peer waiting for end of file would wait
/// for the child too (CPython's classic fork trap). A child's own connections reach it as
/// arguments, in descriptors of their own.
static OPEN: Mutex<BTreeSet<RawFd>> = Mutex::new(BTreeSet::new());

/// The set, locked. Also held across `fork` (see `start/fork.rs`), so the set is consistent
/// in the child.
pub(crate) fn lock_open() -> MutexGuard<'static, BTreeSet<RawFd>> {
    OPEN.lock().unwrap_or_else(|e| e.into_inner())
}

/// In a fork child: the parent's connections are not the child's.
pub(crate) fn after_fork_in_child(open: &mut BTreeSet<RawFd>) {
    for fd in std::mem::take(open) {
        sys::neutralize_fd(fd);
    }
}

/// Descriptors this process holds on behalf of a child not yet started (a Process's encoded
/// arguments). Like open connection ends, they are in [`OPEN`], so no fork child keeps them.
#[derive(Debug, Default)]
pub(crate) struct HeldFds(Vec<OwnedFd>);

impl HeldFds {
    pub(crate) fn new(fds: Vec<OwnedFd>) -> Self {
        let mut open = lock_open();
        open.extend(fds.iter().map(|fd| fd.as_raw_fd()));
        Self(fds)
    }

    pub(crate) fn as_slice(&self) -> &[OwnedFd] {
        &self.0
    }

    /// Closes them.
    pub(crate) fn clear(&mut self) {
        let mut open = lock_open();
        for fd in self.0.drain(..) {
            open.remove(&fd.as_raw_fd());
        }
    }
}

impl Drop for HeldFds {
    fn drop(&mut self) {
        self.clear();
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        lock_open().remove(&self.sock.as_raw_fd());
    }
}

impl Endpoint {
    pub(crate) fn new(sock: OwnedFd) -> Self {
        lock_open().insert(sock.as_raw_fd());
        let carries_fds = sys::is_unix_socket(sock.as_fd());
        Self {
            carries_fds,
            sock,
            buf: Vec::new(),
            start: 0,
            end: 0,
            pos: 0,
            fds: Vec::new(),
            partial: None,
            eof: false,
            spin: Spin::new(),
            max_message: DEFAULT_MAX_MESSAGE,
        }
    }

    /// An endpoint resumed from another process, with the bytes it had read but not
    /// consumed.
    pub(crate) fn with_pending(sock: OwnedFd, pending: &[u8]) -> Self {
        let mut e = Self::new(sock);
        if !pending.is_empty() {
            e.buf = vec![0; READ_BUF.max(pending.len())];
            e.buf[..pending.len()].copy_from_slice(pending);
            e.end = pending.len();
        }
        e
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Bytes read from the socket and not yet consumed (they travel with the endpoint when
    /// it is sent to another process). `None` if that cannot be expressed: a large message
    /// half read, or descriptors received and not yet claimed.
    pub(crate) fn pending(&self) -> Option<&[u8]> {
        if self.partial.is_some() || !self.fds.is_empty() {
            return None;
        }
        Some(&self.buf[self.start..self.end])
    }

    /// Whether a receive would return at once: a whole message is buffered, or the peer has
    /// closed (end of file is "ready", as in CPython's `wait`).
    pub(crate) fn ready_now(&self) -> bool {
        if self.eof {
            return true;
        }
        if self.partial.is_some() {
            return false;
        }
        match framing::parse_header(&self.buf[self.start..self.end]) {
            Ok(Header::Complete { size, len }) => {
                len > self.max_message || fits_in(len, size, self.end - self.start)
            }
            Ok(Header::Incomplete) => false,
            Err(_) => true,
        }
    }

    /// True when a message (or end of file) is ready now or arrives before the deadline.
    pub(crate) fn poll(&self, deadline: Option<Instant>) -> io::Result<bool> {
        if self.ready_now() {
            return Ok(true);
        }
        sys::wait_ready(self.fd(), PollFlags::IN, deadline)
    }

    // -----------------------------------------------------------------------------------------
    // Sending

    /// Sends one message made of `first` then `second` (the handshake's prefix and body;
    /// empty otherwise), with `fds` attached to its first byte. The header goes in the same
    /// `sendmsg`, and nothing is allocated.
    pub(crate) fn send(
        &self,
        first: &[u8],
        second: &[u8],
        fds: &[BorrowedFd<'_>],
        deadline: Option<Instant>,
    ) -> Result<(), ConnectionError> {
        let mut header = [0u8; HEADER_MAX];
        let at = framing::write_header((first.len() + second.len()) as u64, &mut header);
        sys::send_all(self.fd(), [&header[at..], first, second], fds, deadline)
            .map_err(ConnectionError::from_io)
    }

    /// Sends bytes that already hold whole frames, header and payload each (see
    /// [`Batch`](super::Batch)).
    pub(crate) fn send_framed(
        &self,
        frames: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), ConnectionError> {
        sys::send_all(self.fd(), [frames, &[], &[]], &[], deadline)
            .map_err(ConnectionError::from_io)
    }

    // -----------------------------------------------------------------------------------------
    // Receiving

    /// Receives the next message whole, waiting at most until the deadline. `limit` (at most
    /// the endpoint's own maximum) bounds its length.
    pub(crate) fn recv(
        &mut self,
        deadline: Option<Instant>,
        limit: Option<u64>,
    ) -> Result<Received<'_>, ConnectionError> {
        if let (Some(p), Some(limit)) = (&self.partial, limit) {
            // A message half read by a receive that timed out is still held to this call's
            // limit.
            if p.len as u64 > limit {
                return Err(ConnectionError::BadMessageLength);
            }
        }
        if self.partial.is_none() {
            let (size, len) = self.next_header(deadline, limit)?;
            if fits_in(len, size, READ_BUF) {
                let total = size + len as usize;
                while self.end - self.start < total {
                    self.fill(deadline)?;
                    if self.eof && self.end - self.start < total {
                        return Err(ConnectionError::EofDuringMessage);
                    }
                }
                let fds = self.consume(total);
                let from = self.start - total + size;
                return Ok(Received {
                    payload: Payload::Buffered(&self.buf[from..from + len as usize]),
                    fds,
                });
            }
            self.start_partial(size, len);
        }
        self.finish_partial(deadline)
    }

    /// Receives the next message (waiting for it as [`recv`](Self::recv) does), then every
    /// further whole message already read, up to `max` in all, handing each payload to `f`
    /// in place. Returns how many. A message that is not whole yet, is too long or has a bad
    /// header ends the batch and is left for the next receive. Descriptors that came with
    /// the messages are closed.
    pub(crate) fn recv_many(
        &mut self,
        deadline: Option<Instant>,
        max: usize,
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, ConnectionError> {
        f(self.recv(deadline, None)?.payload.as_slice());
        let mut n = 1;
        while n < max {
            let Ok(Header::Complete { size, len }) =
                framing::parse_header(&self.buf[self.start..self.end])
            else {
                break;
            };
            if len > self.max_message || !fits_in(len, size, self.end - self.start) {
                break;
            }
            let total = size + len as usize;
            drop(self.consume(total));
            let from = self.start - total + size;
            f(&self.buf[from..from + len as usize]);
            n += 1;
        }
        Ok(n)
    }

    /// Receives the next message into `out` if it fits (returning its length), or whole
    /// (returning it, for the caller's "buffer too short" error). Blocks until it is here.
    pub(crate) fn recv_into(
        &mut self,
        out: &mut [u8],
    ) -> Result<Result<usize, Vec<u8>>, ConnectionError> {
        if self.partial.is_none() {
            let (size, len) = self.next_header(None, None)?;
            if len <= out.len() as u64 && !fits_in(len, size, READ_BUF) {
                return self.recv_large_into(size, len as usize, out).map(Ok);
            }
        }
        // Small (copied from the read buffer), too long for `out` (handed back whole), or
        // already half read into its own storage.
        let got = self.recv(None, None)?;
        let bytes = got.payload.as_slice();
        match out.get_mut(..bytes.len()) {
            Some(room) => {
                room.copy_from_slice(bytes);
                Ok(Ok(bytes.len()))
            }
            None => Ok(Err(bytes.to_vec())),
        }
    }

    /// Reads a large message whose `size`-byte header is buffered straight into `out`.
    fn recv_large_into(
        &mut self,
        size: usize,
        len: usize,
        out: &mut [u8],
    ) -> Result<usize, ConnectionError> {
        let head = self.buffered_payload(size, len);
        let buffered = head.len();
        out[..buffered].copy_from_slice(head);
        // Its descriptors, if any, are dropped: raw bytes carry none.
        drop(self.consume(size + buffered));
        let mut filled = buffered;
        while filled < len {
            let n = sys::read_some(self.fd(), &mut out[filled..len], true)?;
            if n == 0 {
                self.eof = true;
                return Err(ConnectionError::EofDuringMessage);
            }
            filled += n;
            self.pos += n as u64;
        }
        Ok(len)
    }

    /// What is buffered of the payload of the message whose `size`-byte header starts the
    /// buffer and which has `len` payload bytes.
    fn buffered_payload(&self, size: usize, len: usize) -> &[u8] {
        let from = self.start + size;
        &self.buf[from..self.end.min(from.saturating_add(len))]
    }

    /// Moves the start of a large message out of the read buffer into its own storage.
    fn start_partial(&mut self, size: usize, len: u64) {
        let len = len as usize;
        let head = self.buffered_payload(size, len);
        let buffered = head.len();
        let mut bytes = vec![0u8; len.min(TRUSTED_LEN as usize).max(buffered)];
        bytes[..buffered].copy_from_slice(head);
        let fds = self.consume(size + buffered);
        self.partial = Some(Partial {
            bytes,
            filled: buffered,
            len,
            fds,
        });
    }

    /// Reads the rest of a large message, resumable if the deadline passes.
    fn finish_partial(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Received<'_>, ConnectionError> {
        loop {
            if let Some(p) = self.partial.take_if(|p| p.filled == p.len) {
                let mut bytes = p.bytes;
                bytes.truncate(p.len);
                return Ok(Received {
                    payload: Payload::Owned(bytes),
                    fds: p.fds,
                });
            }
            let Some(p) = self.partial.as_mut() else {
                return Err(ConnectionError::Io(io::Error::other(
                    "no message under way",
                )));
            };
            if p.filled == p.bytes.len() {
                // An untrusted length: grow as the bytes arrive.
                let grown = (p.bytes.len() * 2).min(p.len);
                p.bytes.resize(grown, 0);
            }
            let sock = self.sock.as_fd();
            let room = &mut p.bytes[p.filled..];
            let n = read_by(sock, deadline, |wait| {
                sys::read_some(sock, &mut *room, wait)
            })?;
            if n == 0 {
                self.eof = true;
                self.partial = None;
                return Err(ConnectionError::EofDuringMessage);
            }
            p.filled += n;
            self.pos += n as u64;
        }
    }

    /// Waits until the next message's header is buffered; returns its size and the
    /// payload's length.
    fn next_header(
        &mut self,
        deadline: Option<Instant>,
        limit: Option<u64>,
    ) -> Result<(usize, u64), ConnectionError> {
        loop {
            match framing::parse_header(&self.buf[self.start..self.end]) {
                Ok(Header::Complete { size, len }) => {
                    if let Some(limit) = limit {
                        if len > limit {
                            return Err(ConnectionError::BadMessageLength);
                        }
                    }
                    if len > self.max_message {
                        return Err(ConnectionError::TooLarge {
                            len,
                            max: self.max_message,
                        });
                    }
                    return Ok((size, len));
                }
                Ok(Header::Incomplete) => {
                    if self.eof {
                        return Err(if self.start == self.end {
                            ConnectionError::Eof
                        } else {
                            ConnectionError::EofDuringMessage
                        });
                    }
                    self.fill(deadline)?;
                }
                Err(e) => return Err(ConnectionError::CorruptHeader(e.0)),
            }
        }
    }

    /// Marks `n` buffered bytes (one whole message, or the start of one) consumed and
    /// returns the descriptors that came with that message.
    fn consume(&mut self, n: usize) -> Vec<OwnedFd> {
        let first = self.pos;
        self.start += n;
        self.pos += n as u64;
        sys::claim_fds(&mut self.fds, first, self.pos)
    }

    /// Reads once more (spinning first if that pays), waiting at most until the deadline.
    /// Sets `eof` at end of file.
    fn fill(&mut self, deadline: Option<Instant>) -> Result<(), ConnectionError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() || self.buf.len() - self.end < HEADER_MAX {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.is_empty() {
            self.buf = vec![0; READ_BUF];
        }
        let mut got = Vec::new();
        let n = self.read_when_ready(deadline, &mut got)?;
        if n == 0 {
            self.eof = true;
        }
        let at = self.pos + (self.end - self.start) as u64;
        let range_end = at + n.max(1) as u64;
        self.fds
            .extend(got.into_iter().map(|fd| (at, range_end, fd)));
        self.end += n;
        Ok(())
    }

    fn read_when_ready(
        &mut self,
        deadline: Option<Instant>,
        fds: &mut Vec<OwnedFd>,
    ) -> Result<usize, ConnectionError> {
        let sock = self.sock.as_fd();
        let room = &mut self.buf[self.end..];
        if self.spin.should_spin() {
            // Never past the caller's deadline (a zero timeout does not spin).
            let start = Instant::now();
            let until = deadline.map_or(start + SPIN_FOR, |d| d.min(start + SPIN_FOR));
            // An answer there at the first try says nothing about spinning; after that, one
            // that comes is a hit, unless (pinned) the spin was preempted for it.
            let mut spun = false;
            let mut cpu_start = 0;
            loop {
                match sys::recv_some(sock, room, fds, false) {
                    Ok(n) => {
                        if spun {
                            let preempted = self.spin.pinned && {
                                let wall = start.elapsed().as_nanos() as u64;
                                let cpu = sys::thread_cpu_ns().saturating_sub(cpu_start);
                                wall.saturating_sub(cpu) > SPIN_PREEMPTED_NS
                            };
                            if preempted {
                                self.spin.miss();
                            } else {
                                self.spin.hit();
                            }
                        }
                        return Ok(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
                if !spun {
                    spun = true;
                    if self.spin.pinned {
                        cpu_start = sys::thread_cpu_ns();
                    }
                }
                if Instant::now() >= until {
                    break;
                }
                std::hint::spin_loop();
            }
            self.spin.miss();
        }
        read_by(sock, deadline, |wait| {
            sys::recv_some(sock, &mut *room, &mut *fds, wait)
        })
    }
}

/// Runs `read` (one read from `sock`, blocking when told so) until it gets something: one
/// blocking read without a deadline; with one, non-blocking reads, waiting between them
/// for `sock` to be readable, until the deadline passes ([`ConnectionError::Timeout`]).
fn read_by(
    sock: BorrowedFd<'_>,
    deadline: Option<Instant>,
    mut read: impl FnMut(bool) -> io::Result<usize>,
) -> Result<usize, ConnectionError> {
    if deadline.is_none() {
        return Ok(read(true)?);
    }
    loop {
        match read(false) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
        if !sys::wait_ready(sock, PollFlags::IN, deadline)? {
            return Err(ConnectionError::Timeout);
        }
    }
}

/// Whether a message of a `size`-byte header and `len` payload bytes fits in `room` bytes
/// (without overflow, whatever length a peer announces).
fn fits_in(len: u64, size: usize, room: usize) -> bool {
    room.checked_sub(size)
        .is_some_and(|left| len <= left as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(pinned: bool) -> Spin {
        Spin::with(true, pinned)
    }

    /// Receives until the next spin; how many slept without trying.
    fn rested(s: &mut Spin) -> u32 {
        let mut n = 0;
        while !s.should_spin() {
            n += 1;
        }
        n
    }

    #[test]
    fn misses_rest_longer_each_time_and_a_hit_starts_over() {
        let mut s = spin(false);
        for _ in 0..SPIN_MISSES_OFF - 1 {
            assert!(s.should_spin());
            s.miss();
        }
        assert!(s.should_spin());
        s.miss();
        assert_eq!(rested(&mut s), SPIN_REST);
        // After a rest, one miss (the probe) rests again, twice as long, up to the most.
        let mut expected = SPIN_REST;
        for _ in 0..10 {
            s.miss();
            expected = (expected * 2).min(SPIN_REST_MAX);
            assert_eq!(rested(&mut s), expected);
        }
        assert_eq!(expected, SPIN_REST_MAX);
        // A hit: spinning is on again, and it takes as many misses as at first to stop.
        s.hit();
        for _ in 0..SPIN_MISSES_OFF - 1 {
            s.miss();
            assert_eq!(rested(&mut s), 0);
        }
        s.miss();
        assert_eq!(rested(&mut s), SPIN_REST);
    }

    #[test]
    fn a_pinned_process_stops_at_its_first_miss() {
        let mut s = spin(true);
        assert!(s.should_spin());
        s.miss();
        assert_eq!(rested(&mut s), SPIN_REST);
    }
}
