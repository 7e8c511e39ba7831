//! Descriptors inside values: how a [`Connection`](crate::Connection) (and any value holding
//! a [`Descriptor`]) travels to another process.
//!
//! Encoding runs inside an *outgoing scope*: each descriptor met in the value is duplicated
//! into the scope's list and the value records only its index there. The list then travels
//! beside the bytes (as `SCM_RIGHTS` on a socket, or inherited across `fork`). Decoding runs
//! inside an *incoming scope* holding the received descriptors, and each index takes its
//! descriptor out. Outside a scope a descriptor cannot be encoded: serializing a
//! `Connection` to JSON, say, is an error rather than a number that means nothing elsewhere.
//!
//! Scopes nest (a value encoded while another is being encoded gets its own list).
//!
//! A scope opened with [`encoding_segments_by_name`] (queue items) still collects true
//! descriptors (connections, a queue's own sockets) but asks shared-memory objects to travel
//! by name: their descriptor would cost a trip through a side channel, and their name
//! works on its own. One opened with [`encoding_without_fds`] (a connection that cannot
//! carry descriptors: TCP, or a codec without them) refuses descriptors as no scope does,
//! and sends shared-memory objects by name.
//!
//! Every scope also lists the tracked segments encoded in it: each is counted *in transit*
//! by the segment tracker until a receiver decodes it, so an encoding that is never
//! delivered (it failed, its send failed, its process never ran) must take them back, or
//! the segment would outlive every handle (see `shm::segment::Transit`).

use std::cell::RefCell;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::thread::LocalKey;

use crate::shm::segment::Transit;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most descriptors one message may carry (Linux's `SCM_MAX_FD`).
pub(crate) const MAX_PER_MESSAGE: usize = 253;

/// An outgoing scope: the descriptors collected so far, how shared-memory objects travel,
/// and the tracked segments encoded so far.
struct Outgoing {
    fds: Vec<OwnedFd>,
    mode: Mode,
    /// Tracked segments encoded in this scope (each counted in transit).
    transits: Vec<Transit>,
}

/// What an outgoing scope does with descriptors.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Collects them; shared-memory objects send theirs.
    Fds,
    /// Collects them; shared-memory objects travel by name.
    SegmentsByName,
    /// Refuses them (as outside any scope); shared-memory objects travel by name.
    NoFds,
}

thread_local! {
    static OUTGOING: RefCell<Option<Outgoing>> = const { RefCell::new(None) };
    static INCOMING: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
}

/// Registers this thread's descriptor scopes (see
/// [`bootstrap::register_child_thread_locals`](crate::bootstrap::register_child_thread_locals)).
pub(crate) fn register_thread_locals() {
    let _ = OUTGOING.try_with(|_| ());
    let _ = INCOMING.try_with(|_| ());
}

/// Runs `f` (which encodes a value) in an outgoing scope; returns its result, the
/// descriptors the value holds, in index order, and the tracked segments it holds (whose
/// transits an encoding that is never delivered takes back: see the module docs).
pub(crate) fn encoding<R>(f: impl FnOnce() -> R) -> (R, Vec<OwnedFd>, Vec<Transit>) {
    let (r, scope) = outgoing(Mode::Fds, f);
    (r, scope.fds, scope.transits)
}

/// As [`encoding`], but shared-memory objects in the value travel by name (see the module
/// docs); only true descriptors are collected.
pub(crate) fn encoding_segments_by_name<R>(
    f: impl FnOnce() -> R,
) -> (R, Vec<OwnedFd>, Vec<Transit>) {
    let (r, scope) = outgoing(Mode::SegmentsByName, f);
    (r, scope.fds, scope.transits)
}

/// As [`encoding`], for a channel that cannot carry descriptors: encoding one fails, and
/// shared-memory objects travel by name.
pub(crate) fn encoding_without_fds<R>(f: impl FnOnce() -> R) -> (R, Vec<Transit>) {
    let (r, scope) = outgoing(Mode::NoFds, f);
    (r, scope.transits)
}

impl Outgoing {
    fn new(mode: Mode) -> Self {
        Self {
            fds: Vec::new(),
            mode,
            transits: Vec::new(),
        }
    }
}

fn outgoing<R>(mode: Mode, f: impl FnOnce() -> R) -> (R, Outgoing) {
    let (r, scope) = scoped(&OUTGOING, Outgoing::new(mode), f);
    (r, scope.unwrap_or_else(|| Outgoing::new(mode)))
}

/// Records that a tracked segment was just encoded (counted in transit), if an outgoing
/// scope is open.
pub(crate) fn note_transit(transit: Transit) {
    // (Thread-locals that are gone: no scope, see `scoped`.)
    let _ = OUTGOING.try_with(|o| {
        if let Some(s) = o.borrow_mut().as_mut() {
            s.transits.push(transit);
        }
    });
}

/// Runs `f` (which decodes a value) in an incoming scope holding `fds`. Descriptors the value
/// did not claim are closed.
pub(crate) fn decoding<R>(fds: Vec<OwnedFd>, f: impl FnOnce() -> R) -> R {
    scoped(&INCOMING, fds.into_iter().map(Some).collect(), f).0
}

/// Runs `f` with `scope` as the current scope of `key`, then restores the outer one (even if
/// `f` panics, as a user's `Serialize` may, so no scope is left behind to swallow later
/// descriptors); returns `f`'s result and the scope as `f` left it.
///
/// On a thread whose thread-locals are being destroyed (a start or a send from a
/// thread-local's destructor, or a fork child of such a thread) `f` runs without a scope: a
/// descriptor then fails to encode or decode, as outside any scope.
fn scoped<T: 'static, R>(
    key: &'static LocalKey<RefCell<Option<T>>>,
    scope: T,
    f: impl FnOnce() -> R,
) -> (R, Option<T>) {
    struct Restore<T: 'static> {
        key: &'static LocalKey<RefCell<Option<T>>>,
        outer: Option<Option<T>>,
    }
    impl<T> Drop for Restore<T> {
        fn drop(&mut self) {
            if let Some(outer) = self.outer.take() {
                let _ = self.key.try_with(|k| *k.borrow_mut() = outer);
            }
        }
    }
    let Ok(outer) = key.try_with(|k| k.borrow_mut().replace(scope)) else {
        return (f(), None);
    };
    let mut restore = Restore {
        key,
        outer: Some(outer),
    };
    let r = f();
    let outer = restore.outer.take().unwrap_or_default();
    let inner = key
        .try_with(|k| std::mem::replace(&mut *k.borrow_mut(), outer))
        .ok()
        .flatten();
    (r, inner)
}

/// An owned descriptor that can be part of any value sent through multiproc: a Process
/// argument, a message on a [`Connection`](crate::Connection) using the default codec, and
/// (as they land) pool tasks and queue items. The receiving process gets its own descriptor
/// for the same open file.
///
/// Encoding one with another serde format (JSON, say), or with a codec that cannot carry
/// descriptors ([`Pickle`](crate::codec::Pickle)), fails with an error.
///
/// # Examples
///
/// A file opened by the parent, read by the child:
///
/// ```
/// use std::io::{Read, Seek, Write};
/// use multiproc::codec::Descriptor;
/// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
///
/// fn read_it(fd: Descriptor) -> String {
///     let mut file = std::fs::File::from(fd.into_owned());
///     file.rewind().unwrap();
///     let mut s = String::new();
///     file.read_to_string(&mut s).unwrap();
///     s
/// }
///
/// let mut file = tempfile_like()?;
/// file.write_all(b"from the parent")?;
/// let mut p = multiproc::Process::new(read_it, Descriptor::from(std::os::fd::OwnedFd::from(file)));
/// p.start()?;
/// assert_eq!(p.join_result()?, "from the parent");
/// # fn tempfile_like() -> std::io::Result<std::fs::File> {
/// #     let path = std::env::temp_dir().join(format!("mp-doc-{}", std::process::id()));
/// #     let f = std::fs::File::options().read(true).write(true).create(true).truncate(true).open(&path)?;
/// #     std::fs::remove_file(&path)?;
/// #     Ok(f)
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Descriptor(OwnedFd);

impl Descriptor {
    /// The descriptor, to use as any `OwnedFd`.
    pub fn into_owned(self) -> OwnedFd {
        self.0
    }
}

impl From<OwnedFd> for Descriptor {
    fn from(fd: OwnedFd) -> Self {
        Self(fd)
    }
}

impl AsFd for Descriptor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Descriptor {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Serialize for Descriptor {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_fd(self.0.as_fd(), s)
    }
}

impl<'de> Deserialize<'de> for Descriptor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_fd(d).map(Self)
    }
}

/// Whether a shared-memory object encoded now should carry its descriptor: an outgoing
/// scope is open, not full, and does not ask for names. Such objects ride with their
/// descriptor when they can, and by name otherwise.
pub(crate) fn segment_carries_fd() -> bool {
    OUTGOING
        .try_with(|o| {
            o.borrow()
                .as_ref()
                .is_some_and(|s| s.mode == Mode::Fds && s.fds.len() < MAX_PER_MESSAGE)
        })
        .unwrap_or(false)
}

/// Whether a value encoded now can carry one more descriptor at all (an outgoing scope is
/// open and not full): what an object that exists only as descriptors (a queue's sockets)
/// asks before it tries.
pub(crate) fn can_carry_fd() -> bool {
    OUTGOING
        .try_with(|o| {
            o.borrow()
                .as_ref()
                .is_some_and(|s| s.mode != Mode::NoFds && s.fds.len() < MAX_PER_MESSAGE)
        })
        .unwrap_or(false)
}

/// Encodes `fd` as an index into the current outgoing scope (after duplicating it there).
pub(crate) fn serialize_fd<S: Serializer>(fd: BorrowedFd<'_>, s: S) -> Result<S::Ok, S::Error> {
    const NO_SCOPE: &str = "a descriptor (a Connection, a Descriptor) can only be sent through \
                            multiproc with its default codec, over a Unix socket";
    let index = OUTGOING.try_with(|o| -> Result<u32, String> {
        let mut o = o.borrow_mut();
        let list = &mut o
            .as_mut()
            .filter(|s| s.mode != Mode::NoFds)
            .ok_or(NO_SCOPE)?
            .fds;
        if list.len() >= MAX_PER_MESSAGE {
            return Err(format!(
                "a message can carry at most {MAX_PER_MESSAGE} descriptors"
            ));
        }
        let dup = fd
            .try_clone_to_owned()
            .map_err(|e| format!("cannot duplicate a descriptor to send it: {e}"))?;
        list.push(dup);
        Ok((list.len() - 1) as u32)
    });
    match index.unwrap_or_else(|_| Err(NO_SCOPE.to_owned())) {
        Ok(i) => s.serialize_u32(i),
        Err(msg) => Err(crate::codec::ser_error(msg)),
    }
}

/// Decodes an index and takes that descriptor from the current incoming scope.
pub(crate) fn deserialize_fd<'de, D: Deserializer<'de>>(d: D) -> Result<OwnedFd, D::Error> {
    let index = u32::deserialize(d)? as usize;
    const NO_SCOPE: &str = "a descriptor can only be received through multiproc";
    INCOMING
        .try_with(|i| {
            let mut i = i.borrow_mut();
            let table = i.as_mut().ok_or_else(|| crate::codec::de_error(NO_SCOPE))?;
            table.get_mut(index).and_then(Option::take).ok_or_else(|| {
                crate::codec::de_error(format!("descriptor {index} missing from the message"))
            })
        })
        .unwrap_or_else(|_| Err(crate::codec::de_error(NO_SCOPE)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Codec, Postcard};

    fn memfd() -> OwnedFd {
        crate::sys::memfd_with(b"x").unwrap()
    }

    #[test]
    fn descriptors_travel_beside_the_bytes_in_index_order() {
        let (a, b) = (Descriptor(memfd()), Descriptor(memfd()));
        let (bytes, fds, _) = encoding(|| {
            let mut out = Vec::new();
            Postcard::encode(&(&a, 7u8, &b), &mut out).map(|()| out)
        });
        let bytes = bytes.unwrap();
        assert_eq!(fds.len(), 2);
        let (x, n, y): (Descriptor, u8, Descriptor) =
            decoding(fds, || Postcard::decode(&bytes)).unwrap();
        assert_eq!(n, 7);
        assert_ne!(x.as_raw_fd(), y.as_raw_fd());
    }

    #[test]
    fn outside_a_scope_a_descriptor_is_an_error_not_a_number() {
        let mut out = Vec::new();
        assert!(Postcard::encode(&Descriptor(memfd()), &mut out).is_err());
        let (bytes, _, _) = encoding(|| {
            let mut out = Vec::new();
            Postcard::encode(&Descriptor(memfd()), &mut out).map(|()| out)
        });
        assert!(Postcard::decode::<Descriptor>(&bytes.unwrap()).is_err());
    }

    #[test]
    fn a_missing_or_reused_index_is_an_error() {
        let (bytes, _fds, _) = encoding(|| {
            let mut out = Vec::new();
            Postcard::encode(&Descriptor(memfd()), &mut out).map(|()| out)
        });
        let bytes = bytes.unwrap();
        assert!(decoding(Vec::new(), || Postcard::decode::<Descriptor>(&bytes)).is_err());
        // The same index twice: the second finds it taken.
        let twice = [bytes.clone(), bytes].concat();
        let r = decoding(vec![memfd()], || {
            Postcard::decode::<(Descriptor, Descriptor)>(&twice)
        });
        assert!(r.is_err());
    }
}
