//! `wait`: block until any of several descriptors is ready.

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

/// Waits until at least one of `objects` is ready, or `timeout` passes, and returns the ready
/// ones (none on timeout). Works on anything with a descriptor: a
/// [`Process::sentinel`](crate::Process::sentinel) (ready when the process ends), sockets,
/// pipes; end of file counts as ready.
///
/// # Errors
///
/// An OS error from `poll`.
///
/// # Examples
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
/// assert_eq!(ready.len(), 1);
/// slow.kill()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn wait<T: AsFd>(objects: &[T], timeout: Option<Duration>) -> io::Result<Vec<&T>> {
    let fds: Vec<_> = objects.iter().map(AsFd::as_fd).collect();
    let ready = crate::sys::poll_fds(&fds, timeout)?;
    Ok(ready.into_iter().map(|i| &objects[i]).collect())
}
