//! Sockets for connections: gathered sends with descriptors, receives that collect them,
//! and listeners and clients on Unix paths, abstract names and TCP. All safe `rustix` calls.
#![deny(unsafe_code)]

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrAny, SocketAddrUnix, SocketFlags, SocketType,
};

use super::timespec;
use crate::codec::fds::MAX_PER_MESSAGE;
use crate::connection::Address;

fn left(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_string())
}

/// Waits until `fd` is ready for `flags` or the deadline passes; false on timeout. Error and
/// hang-up conditions count as ready (the next call reports them).
pub(crate) fn wait_ready(
    fd: BorrowedFd<'_>,
    flags: PollFlags,
    deadline: Option<Instant>,
) -> io::Result<bool> {
    loop {
        let ts = left(deadline).map(timespec);
        let mut p = [PollFd::from_borrowed_fd(fd, flags)];
        match rustix::event::poll(&mut p, ts.as_ref()) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends all of `parts` in order, attaching `fds` to the first byte. Without a deadline it
/// blocks as long as the peer does not read; with one it gives up then (`TimedOut`, having
/// possibly sent part of the data). Never raises SIGPIPE: a closed peer is `BrokenPipe`.
pub(crate) fn send_all(
    sock: BorrowedFd<'_>,
    parts: [&[u8]; 3],
    fds: &[BorrowedFd<'_>],
    deadline: Option<Instant>,
) -> io::Result<()> {
    if fds.len() > MAX_PER_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors in one message",
        ));
    }
    let mut space = Vec::new();
    if !fds.is_empty() {
        space.resize(
            rustix::cmsg_space!(ScmRights(fds.len())),
            MaybeUninit::uninit(),
        );
    }
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut flags = SendFlags::NOSIGNAL;
    if deadline.is_some() {
        flags |= SendFlags::DONTWAIT;
    }
    let mut sent = 0usize;
    let mut first = true;
    while sent < total || first {
        first = false;
        let iov = remaining(parts, sent);
        let mut control = SendAncillaryBuffer::new(&mut space);
        if sent == 0 && !fds.is_empty() {
            control.push(SendAncillaryMessage::ScmRights(fds));
        }
        match rustix::net::sendmsg(sock, &iov, &mut control, flags) {
            Ok(n) => sent += n,
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => {
                if !wait_ready(sock, PollFlags::OUT, deadline)? {
                    return Err(timed_out("the peer does not read"));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A connected pair of close-on-exec `SOCK_SEQPACKET` sockets: each send arrives whole, in
/// order, with its descriptors, at the other end ([`send_all`] and [`recv_some`] work on it).
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// The unsent tail of `parts` after `skip` bytes, as I/O slices.
fn remaining<'a>(parts: [&'a [u8]; 3], mut skip: usize) -> [IoSlice<'a>; 3] {
    parts.map(|p| {
        let from = skip.min(p.len());
        skip -= from;
        IoSlice::new(&p[from..])
    })
}

/// One receive into `buf`, appending received descriptors (close-on-exec) to `fds`.
/// Returns the byte count; 0 means end of file (a reset by the peer counts as that).
/// Without `wait`, returns `WouldBlock` when nothing is there.
pub(crate) fn recv_some(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    wait: bool,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_PER_MESSAGE))];
    let mut flags = RecvFlags::CMSG_CLOEXEC;
    if !wait {
        flags |= RecvFlags::DONTWAIT;
    }
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(buf)];
        match rustix::net::recvmsg(sock, &mut iov, &mut control, flags) {
            Ok(msg) => {
                for m in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(got) = m {
                        fds.extend(got);
                    }
                }
                return Ok(msg.bytes);
            }
            Err(Errno::INTR) => continue,
            Err(Errno::CONNRESET) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Descriptors received by one `recvmsg`, with the stream range `[start, end)` of the bytes
/// that read brought.
pub(crate) type FdBatch = (u64, u64, OwnedFd);

/// Takes the descriptors of the message (or frame) occupying stream bytes `[first, last)`
/// out of `batches`, dropping those of earlier messages that nobody claimed.
///
/// Senders attach a message's descriptors to its first byte, and Linux ends a read right
/// after data that carries descriptors; so a batch belongs to the last message that starts
/// within its range: the one whose range contains the message's first byte and ends inside
/// the message.
pub(crate) fn claim_fds(batches: &mut Vec<FdBatch>, first: u64, last: u64) -> Vec<OwnedFd> {
    if batches.is_empty() {
        return Vec::new();
    }
    let mut mine = Vec::new();
    let mut keep = Vec::new();
    for (s, e, fd) in batches.drain(..) {
        if (s..e).contains(&first) && e <= last {
            mine.push(fd);
        } else if e > last {
            keep.push((s, e, fd));
        }
        // Otherwise it was read with bytes of this message but belongs to none left.
    }
    *batches = keep;
    mine
}

/// One plain read into `buf` (for the rest of a message whose first byte, which carries any
/// descriptors, was already received). 0 means end of file.
pub(crate) fn read_some(sock: BorrowedFd<'_>, buf: &mut [u8], wait: bool) -> io::Result<usize> {
    let flags = if wait {
        RecvFlags::empty()
    } else {
        RecvFlags::DONTWAIT
    };
    loop {
        match rustix::net::recv(sock, &mut *buf, flags) {
            Ok((n, _)) => return Ok(n),
            Err(Errno::INTR) => continue,
            Err(Errno::CONNRESET) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether `fd` is an `AF_UNIX` socket (which can carry descriptors).
pub(crate) fn is_unix_socket(fd: BorrowedFd<'_>) -> bool {
    rustix::net::sockopt::socket_domain(fd).is_ok_and(|d| d == AddressFamily::UNIX)
}

/// How many CPUs this process may run on (its affinity mask).
pub(crate) fn cpus_allowed() -> usize {
    rustix::thread::sched_getaffinity(None).map_or(1, |set| set.count() as usize)
}

/// How many CPUs the machine has online (whatever this process's affinity), read once from
/// `/sys/devices/system/cpu/online`; this process's own count if that cannot be read.
pub(crate) fn machine_cpus() -> usize {
    // An atomic, not a once-cell: a fork child must never wait for a reading that another
    // thread of its parent had under way (reading twice is harmless).
    static ANSWER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    match ANSWER.load(std::sync::atomic::Ordering::Relaxed) {
        0 => {
            let n = std::fs::read_to_string("/sys/devices/system/cpu/online")
                .ok()
                .and_then(|list| count_cpu_list(list.trim()))
                .unwrap_or_else(cpus_allowed)
                .max(1);
            ANSWER.store(n, std::sync::atomic::Ordering::Relaxed);
            n
        }
        n => n,
    }
}

/// The number of CPUs in a kernel CPU list such as `0-3,5,8-9`.
fn count_cpu_list(list: &str) -> Option<usize> {
    list.split(',').try_fold(0usize, |n, part| {
        let count = match part.split_once('-') {
            Some((a, b)) => {
                b.parse::<usize>()
                    .ok()?
                    .checked_sub(a.parse::<usize>().ok()?)?
                    + 1
            }
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
        Some(n + count)
    })
}

// ---------------------------------------------------------------------------------------------
// Listening and connecting

fn family_of(addr: &Address) -> AddressFamily {
    match addr {
        Address::Tcp(SocketAddr::V4(_)) => AddressFamily::INET,
        Address::Tcp(SocketAddr::V6(_)) => AddressFamily::INET6,
        _ => AddressFamily::UNIX,
    }
}

fn unix_addr(addr: &Address) -> io::Result<SocketAddrUnix> {
    match addr {
        Address::Unix(p) => Ok(SocketAddrUnix::new(p.as_path())?),
        Address::Abstract(name) => Ok(SocketAddrUnix::new_abstract_name(name)?),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a Unix address",
        )),
    }
}

fn new_socket(addr: &Address, nonblock: bool) -> io::Result<OwnedFd> {
    let mut flags = SocketFlags::CLOEXEC;
    if nonblock {
        flags |= SocketFlags::NONBLOCK;
    }
    Ok(rustix::net::socket_with(
        family_of(addr),
        SocketType::STREAM,
        flags,
        None,
    )?)
}

/// A non-blocking listening socket bound to `addr` (TCP ones with `SO_REUSEADDR`, as
/// CPython's).
pub(crate) fn listen(addr: &Address, backlog: i32) -> io::Result<OwnedFd> {
    let sock = new_socket(addr, true)?;
    match addr {
        Address::Tcp(sa) => {
            rustix::net::sockopt::set_socket_reuseaddr(&sock, true)?;
            rustix::net::bind(&sock, sa)?;
        }
        Address::Unnamed => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot listen on an unnamed address",
            ));
        }
        _ => rustix::net::bind(&sock, &unix_addr(addr)?)?,
    }
    rustix::net::listen(&sock, backlog)?;
    Ok(sock)
}

fn to_address(any: SocketAddrAny) -> Address {
    match any.address_family() {
        AddressFamily::UNIX => match SocketAddrUnix::try_from(any) {
            Ok(u) => {
                if let Some(name) = u.abstract_name().filter(|n| !n.is_empty()) {
                    Address::Abstract(name.to_vec())
                } else if let Some(p) = u.path_bytes().filter(|p| !p.is_empty()) {
                    Address::Unix(PathBuf::from(std::ffi::OsStr::from_bytes(p)))
                } else {
                    Address::Unnamed
                }
            }
            Err(_) => Address::Unnamed,
        },
        _ => SocketAddr::try_from(any).map_or(Address::Unnamed, Address::Tcp),
    }
}

/// The address a socket is bound to.
pub(crate) fn local_address(sock: BorrowedFd<'_>) -> io::Result<Address> {
    Ok(to_address(rustix::net::getsockname(sock)?))
}

/// Accepts one connection (the new socket blocking and close-on-exec), waiting at most
/// until the deadline (`TimedOut`). Returns the socket and the peer's address. The listening
/// socket is non-blocking ([`listen`]), so a connection another thread took first is not a
/// hang here.
pub(crate) fn accept(
    sock: BorrowedFd<'_>,
    deadline: Option<Instant>,
) -> io::Result<(OwnedFd, Address)> {
    loop {
        if !wait_ready(sock, PollFlags::IN, deadline)? {
            return Err(timed_out("no connection arrived in time"));
        }
        match rustix::net::acceptfrom_with(sock, SocketFlags::CLOEXEC) {
            Ok((fd, peer)) => return Ok((fd, peer.map_or(Address::Unnamed, to_address))),
            Err(Errno::AGAIN | Errno::INTR | Errno::CONNABORTED) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let mut fl = rustix::fs::fcntl_getfl(fd)?;
    fl.set(rustix::fs::OFlags::NONBLOCK, on);
    Ok(rustix::fs::fcntl_setfl(fd, fl)?)
}

/// Connects to `addr`, waiting at most until the deadline; the socket returned is blocking
/// and close-on-exec.
pub(crate) fn connect(addr: &Address, deadline: Instant) -> io::Result<OwnedFd> {
    let mut pause = Duration::from_micros(100);
    loop {
        let sock = new_socket(addr, true)?;
        let r = match addr {
            Address::Tcp(sa) => rustix::net::connect(&sock, sa),
            _ => rustix::net::connect(&sock, &unix_addr(addr)?),
        };
        match r {
            Ok(()) => {}
            Err(Errno::INPROGRESS) => {
                if !wait_ready(sock.as_fd(), PollFlags::OUT, Some(deadline))? {
                    return Err(timed_out("connecting took too long"));
                }
                if let Some(e) = rustix::net::sockopt::socket_error(&sock)?.err() {
                    return Err(e.into());
                }
            }
            // A Unix listener with a full backlog refuses a non-blocking connect at once;
            // there is nothing to poll, so retry with a growing pause.
            Err(Errno::AGAIN) if Instant::now() + pause < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
                continue;
            }
            Err(Errno::AGAIN) => return Err(timed_out("the listener is overloaded")),
            Err(e) => return Err(e.into()),
        }
        set_nonblocking(sock.as_fd(), false)?;
        tune_connected(sock.as_fd(), addr);
        return Ok(sock);
    }
}

/// Readies a connected or accepted socket of `addr`'s family: on TCP, small messages go out
/// at once, as CPython's do (it sets no option, but sends header and payload in one write
/// for small messages too).
pub(crate) fn tune_connected(sock: BorrowedFd<'_>, addr: &Address) {
    if let Address::Tcp(_) = addr {
        let _ = rustix::net::sockopt::set_tcp_nodelay(sock, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_counted_as_the_kernel_writes_them() {
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("0-1"), Some(2));
        assert_eq!(count_cpu_list("0-3,5,8-9"), Some(7));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("x"), None);
        assert!(machine_cpus() >= cpus_allowed());
    }
}
