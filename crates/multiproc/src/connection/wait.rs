//! `wait`: block until any of several connections, descriptors or process sentinels is
//! ready.

use std::fs::File;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use super::{Connection, Listener};
use crate::codec::Codec;

/// Something [`wait`] can watch: a [`Connection`], a [`Listener`], a process
/// [sentinel](crate::Process::sentinel), or any descriptor (`BorrowedFd`, `OwnedFd`,
/// sockets, files).
pub trait Waitable {
    /// The descriptor to watch, if the object has one (a closed connection has none and is
    /// never ready).
    fn wait_fd(&self) -> Option<BorrowedFd<'_>>;

    /// True if the object is ready without looking at its descriptor (a connection with a
    /// whole message already buffered).
    fn ready_now(&self) -> bool {
        false
    }
}

impl<T, C: Codec> Waitable for Connection<T, C> {
    fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        self.endpoint_fd()
    }

    fn ready_now(&self) -> bool {
        Connection::ready_now(self)
    }
}

impl Waitable for Listener {
    fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        self.listening_fd()
    }
}

macro_rules! waitable_fd {
    ($($t:ty),*) => {$(
        impl Waitable for $t {
            fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
                Some(self.as_fd())
            }
        }
    )*};
}

waitable_fd!(
    BorrowedFd<'_>,
    OwnedFd,
    File,
    UnixStream,
    UnixListener,
    TcpStream,
    TcpListener,
    std::process::ChildStdout,
    std::process::ChildStderr,
    io::Stdin
);

macro_rules! waitable_through {
    ($($t:ty),*) => {$(
        impl<W: Waitable + ?Sized> Waitable for $t {
            fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
                (**self).wait_fd()
            }

            fn ready_now(&self) -> bool {
                (**self).ready_now()
            }
        }
    )*};
}

waitable_through!(&W, &mut W, Box<W>);

/// Waits until at least one of `objects` is ready, or `timeout` passes (`None`: for ever),
/// and returns the indices of the ready ones, in order (none on timeout). A connection is
/// ready when a message can be received or its peer has closed (end of file counts); a
/// sentinel when its process has ended; a listener when a client is waiting.
///
/// Indices rather than references, so the caller can go on to `recv` on the ready
/// connections (which needs `&mut`). Mixed kinds go in a slice of `&dyn Waitable`.
///
/// # Errors
///
/// An OS error from `poll`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use multiproc::connection::{Waitable, wait};
///
/// let (mut r1, mut w1) = multiproc::pipe::<i32>(true)?;
/// let (r2, _w2) = multiproc::pipe::<i32>(true)?;
/// w1.send(&5)?;
/// assert_eq!(wait(&[&r1, &r2], Some(Duration::from_secs(5)))?, [0]);
/// assert_eq!(r1.recv()?, 5);
/// assert!(wait(&[&r1, &r2], Some(Duration::ZERO))?.is_empty());
/// drop(w1); // end of file counts as ready
/// let mixed: [&dyn Waitable; 2] = [&r2, &r1];
/// assert_eq!(wait(&mixed, None)?, [1]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Process sentinels:
///
/// ```
/// use std::time::Duration;
/// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
/// fn nap(ms: u64) { std::thread::sleep(Duration::from_millis(ms)) }
///
/// let mut quick = multiproc::Process::new(nap, 10);
/// let mut slow = multiproc::Process::new(nap, 5_000);
/// quick.start()?;
/// slow.start()?;
/// let sentinels = [quick.sentinel()?, slow.sentinel()?];
/// let ready = multiproc::wait(&sentinels, Some(Duration::from_secs(4)))?;
/// assert_eq!(ready, [0]);
/// slow.kill()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn wait<W: Waitable>(objects: &[W], timeout: Option<Duration>) -> io::Result<Vec<usize>> {
    let now: Vec<usize> = (0..objects.len())
        .filter(|&i| objects[i].ready_now())
        .collect();
    if !now.is_empty() {
        return Ok(now);
    }
    let (indices, fds): (Vec<usize>, Vec<BorrowedFd<'_>>) = objects
        .iter()
        .enumerate()
        .filter_map(|(i, o)| o.wait_fd().map(|fd| (i, fd)))
        .unzip();
    if fds.is_empty() {
        // Nothing can become ready (all closed): waiting would only sleep.
        return Ok(Vec::new());
    }
    let ready = crate::sys::poll_fds(&fds, timeout)?;
    Ok(ready.into_iter().map(|k| indices[k]).collect())
}
