//! A segment: one POSIX shared memory object, mapped, with its descriptor and its standing
//! with the tracker. Every shared object of this crate (SharedMemory, Lock, Value, ...) is a
//! typed face over an `Arc<Segment>`.
//!
//! **Travelling.** A segment encodes as its name, its tracking mode and, when the encoding
//! can carry descriptors (Process arguments, connection messages), its descriptor: the
//! receiver maps that descriptor, so it works even if the name is gone by then. Without a
//! descriptor the receiver opens the name, and the sender tells the tracker an encoding is in
//! transit, so the name outlives the sender's own handle until someone decodes it.
//!
//! **Typed segments** (every object but `SharedMemory`, whose bytes are the user's) begin
//! with a 64-byte [`Header`] that says what they hold, so a segment decoded as the wrong type
//! is an error, never a misread.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ShmError;
use super::tracker::{self, Msg};
use crate::codec::fds;
use crate::sys::{self, Mapping};

/// One mapped shared memory object.
#[derive(Debug)]
pub(crate) struct Segment {
    name: String,
    fd: OwnedFd,
    map: Mapping,
    /// This handle counts with the tracker (it sent `Created`, `Attached` or `Received`).
    tracked: bool,
    /// The process that holds the count (a fork child's copy does not).
    pid: u32,
}

/// Whether the tracker counts a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Tracking {
    /// Unlinked when the program's last user lets go.
    Tracked,
    /// Never unlinked by multiproc.
    Untracked,
}

impl Segment {
    /// Creates a new object of `size` bytes, named `name` or `prefix` plus random hex digits.
    pub(crate) fn create(
        name: Option<&str>,
        prefix: &str,
        hex_digits: usize,
        size: usize,
        tracking: Tracking,
    ) -> Result<Arc<Self>, ShmError> {
        if size == 0 {
            return Err(ShmError::ZeroSize);
        }
        if let Some(n) = name {
            check_name(n)?;
        }
        let given = name.is_some();
        // A generated name that happens to exist is drawn again; a given one is an error.
        for _ in 0..16 {
            let name = name.map_or_else(|| generated(prefix, hex_digits), str::to_owned);
            let tracked = tracking == Tracking::Tracked;
            if tracked {
                // Before the object exists: a creator killed right after creating it still
                // leaves the tracker knowing the name.
                tracker::send(&Msg::Created(name.clone())).map_err(ShmError::Tracker)?;
            }
            match sys::shm_create(&name, size as u64) {
                Ok(fd) => {
                    let map = Mapping::map(fd.as_fd(), size).map_err(|e| {
                        let _ = sys::shm_unlink(&name);
                        ShmError::Io(e)
                    });
                    let map = match map {
                        Ok(m) => m,
                        Err(e) => {
                            if tracked {
                                tracker::send_quietly(&Msg::Forget(name.clone()));
                            }
                            return Err(e);
                        }
                    };
                    return Ok(Arc::new(Self {
                        name,
                        fd,
                        map,
                        tracked,
                        pid: sys::caller().0,
                    }));
                }
                Err(e) => {
                    if tracked {
                        tracker::send_quietly(&Msg::Forget(name.clone()));
                    }
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        if given {
                            return Err(ShmError::Exists(name));
                        }
                        continue;
                    }
                    return Err(ShmError::Io(e));
                }
            }
        }
        Err(ShmError::Io(std::io::Error::other(
            "could not find a free shared memory name",
        )))
    }

    /// Maps the existing object `name`. With `tracking`, the tracker counts this handle (a
    /// name the program did not create is counted but never unlinked).
    pub(crate) fn attach(name: &str, tracking: Tracking) -> Result<Arc<Self>, ShmError> {
        check_name(name)?;
        let fd = sys::shm_open(name).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ShmError::NotFound(name.to_owned()),
            _ => ShmError::Io(e),
        })?;
        let tracked = tracking == Tracking::Tracked;
        let seg = Self::map_fd(name.to_owned(), fd, tracked)?;
        if tracked {
            tracker::send_quietly(&Msg::Attached(name.to_owned()));
        }
        Ok(Arc::new(seg))
    }

    fn map_fd(name: String, fd: OwnedFd, tracked: bool) -> Result<Self, ShmError> {
        let size = sys::fd_size(fd.as_fd()).map_err(ShmError::Io)?;
        let size =
            usize::try_from(size).map_err(|_| ShmError::Io(std::io::Error::other("size")))?;
        if size == 0 {
            return Err(ShmError::ZeroSize);
        }
        let map = Mapping::map(fd.as_fd(), size).map_err(ShmError::Io)?;
        Ok(Self {
            name,
            fd,
            map,
            tracked,
            pid: sys::caller().0,
        })
    }

    /// The object's name, without the leading slash.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The mapping.
    pub(crate) fn map(&self) -> &Mapping {
        &self.map
    }

    /// Size in bytes.
    pub(crate) fn size(&self) -> usize {
        self.map.len()
    }

    /// Removes the name (the memory lives on while mapped) and stops the tracker's count.
    pub(crate) fn unlink(&self) -> Result<(), ShmError> {
        let r = sys::shm_unlink(&self.name).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ShmError::NotFound(self.name.clone()),
            _ => ShmError::Io(e),
        });
        if self.tracked {
            tracker::send_quietly(&Msg::Unlinked(self.name.clone()));
        }
        r
    }

    /// Writes a typed segment's header (right after creating it).
    pub(crate) fn write_header(&self, h: &Header) {
        let mut bytes = [0u8; HEADER_LEN];
        bytes[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        bytes[4..8].copy_from_slice(&(h.kind as u32).to_le_bytes());
        bytes[8..16].copy_from_slice(&h.elem_size.to_le_bytes());
        bytes[16..24].copy_from_slice(&h.len.to_le_bytes());
        bytes[24..32].copy_from_slice(&h.type_tag.to_le_bytes());
        self.map.write(0, &bytes);
    }

    /// Checks a typed segment's header against what the decoder expects.
    pub(crate) fn check_header(
        &self,
        kind: Kind,
        elem_size: u64,
        type_tag: u64,
    ) -> Result<u64, ShmError> {
        let mut bytes = [0u8; HEADER_LEN];
        if !self.map.read(0, &mut bytes) {
            return Err(ShmError::WrongKind(self.name.clone()));
        }
        let word = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b[..r.len()].copy_from_slice(&bytes[r]);
            u64::from_le_bytes(b)
        };
        let ok = word(0..4) == u64::from(MAGIC)
            && word(4..8) == kind as u64
            && word(8..16) == elem_size
            && word(24..32) == type_tag;
        if !ok {
            return Err(ShmError::WrongKind(self.name.clone()));
        }
        Ok(word(16..24))
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.tracked && self.pid == sys::caller().0 {
            tracker::send_if_connected(&Msg::Detached(std::mem::take(&mut self.name)));
        }
    }
}

fn generated(prefix: &str, hex_digits: usize) -> String {
    let bytes = sys::random_bytes::<16>();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{}", &hex[..hex_digits.min(32)])
}

/// Names `shm_open` accepts, as CPython passes them: one path component, not too long.
pub(crate) fn check_name(name: &str) -> Result<(), ShmError> {
    if tracker::valid_name(name) {
        Ok(())
    } else {
        Err(ShmError::InvalidName(name.to_owned()))
    }
}

// ---------------------------------------------------------------------------------------------
// Typed segments

/// Bytes at the start of a typed segment.
pub(crate) const HEADER_LEN: usize = 64;
const MAGIC: u32 = u32::from_le_bytes(*b"mpsg");

/// What a typed segment holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Kind {
    Lock = 1,
    RLock = 2,
    Semaphore = 3,
    Condition = 4,
    Event = 5,
    Barrier = 6,
    Value = 7,
    Array = 8,
    Queue = 9,
    SimpleQueue = 10,
    JoinableQueue = 11,
}

/// A typed segment's header: kind, element size, element count, and a tag of the element
/// type (its name's hash), so a `Value<u32>` is never read as a `Value<f32>`.
pub(crate) struct Header {
    pub(crate) kind: Kind,
    pub(crate) elem_size: u64,
    pub(crate) len: u64,
    pub(crate) type_tag: u64,
}

/// A stable tag for a type within one build (every process of a program runs the same
/// build: the bootstrap checks it).
pub(crate) fn type_tag<T: ?Sized>() -> u64 {
    // FNV-1a of the type's name.
    std::any::type_name::<T>()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// Creates a typed segment of `HEADER_LEN + body` bytes and writes its header. The memory
/// is zeroed by the kernel.
pub(crate) fn create_typed(header: Header, body: usize) -> Result<Arc<Segment>, ShmError> {
    let size = HEADER_LEN
        .checked_add(body)
        .ok_or(ShmError::Io(std::io::Error::other("size overflows")))?;
    let seg = create_reserved(None, size)?;
    seg.write_header(&header);
    Ok(seg)
}

/// Creates a tracked segment of `size` bytes (named `name`, or `mp_` and random hex digits)
/// with its memory reserved: a full /dev/shm is an error now, never a SIGBUS when the memory
/// is first written.
pub(crate) fn create_reserved(name: Option<&str>, size: usize) -> Result<Arc<Segment>, ShmError> {
    let seg = Segment::create(name, "mp_", 24, size, Tracking::Tracked)?;
    if let Err(e) = sys::reserve(seg.fd.as_fd(), size as u64) {
        let _ = seg.unlink();
        return Err(ShmError::Io(e));
    }
    Ok(seg)
}

// ---------------------------------------------------------------------------------------------
// Travelling

/// A segment as it travels: sent borrowing (`Wire<&str, SendFd>`), received owning
/// (`Wire<String, FdIndex>`).
#[derive(Serialize, Deserialize)]
struct Wire<N, F> {
    name: N,
    tracking: Tracking,
    /// The descriptor's index in the message, when it rides along.
    fd: Option<F>,
    /// This encoding's transit (see [`Transit`]).
    transit: u64,
}

/// One encoding of a tracked segment in transit: its name, and an id that tells it from every
/// other encoding of the name, so that the tracker matches each `Received` with its own
/// `InTransit` whatever order it reads them in (one process may forward a name before the
/// tracker has read that it received it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Transit {
    pub(crate) name: String,
    pub(crate) id: u64,
}

/// A new transit id: this process's pid above a counter, so no two processes of a program
/// (a fork child included, whose counter starts where its parent's was) make the same one.
fn next_transit_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) & ((1 << 40) - 1);
    (u64::from(sys::getpid().as_raw_nonzero().get() as u32) << 40) | n
}

/// The segment's descriptor, encoded into the outgoing scope (which duplicates it).
struct SendFd<'a>(BorrowedFd<'a>);

impl Serialize for SendFd<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        fds::serialize_fd(self.0, s)
    }
}

/// A received descriptor.
struct FdIndex(OwnedFd);

impl<'de> Deserialize<'de> for FdIndex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self(fds::deserialize_fd(d)?))
    }
}

impl Serialize for Segment {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let fd = fds::segment_carries_fd().then(|| SendFd(self.fd.as_fd()));
        // Counted in transit either way: with its descriptor the memory arrives whatever
        // happens, but its *name* must also outlive this handle until the receiver holds it
        // (it may attach by name, or pass the name on to CPython).
        let transit = next_transit_id();
        self.send_in_transit(transit)
            .map_err(crate::codec::ser_error)?;
        if self.tracked {
            fds::note_transit(Transit {
                name: self.name.clone(),
                id: transit,
            });
        }
        Wire {
            name: self.name.as_str(),
            tracking: if self.tracked {
                Tracking::Tracked
            } else {
                Tracking::Untracked
            },
            fd,
            transit,
        }
        .serialize(s)
    }
}

/// Decodes a segment (mapping its descriptor, or opening its name).
pub(crate) fn deserialize_segment<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Arc<Segment>, D::Error> {
    let w = Wire::<String, FdIndex>::deserialize(d)?;
    check_name(&w.name).map_err(crate::codec::de_error)?;
    let tracked = w.tracking == Tracking::Tracked;
    let seg = match w.fd.map(|f| f.0) {
        Some(fd) => {
            let seg =
                Segment::map_fd(w.name.clone(), fd, tracked).map_err(crate::codec::de_error)?;
            if tracked {
                tracker::send_quietly(&Msg::Received(w.name, w.transit));
            }
            seg
        }
        None => {
            return Segment::open_received(w.name, w.transit, tracked)
                .map_err(crate::codec::de_error);
        }
    };
    Ok(Arc::new(seg))
}

impl Segment {
    /// Tells the tracker that the name is going somewhere without this handle (see the
    /// module docs): it stays until a receiver's [`open_received`](Self::open_received).
    pub(crate) fn send_in_transit(&self, id: u64) -> Result<(), ShmError> {
        if self.tracked {
            tracker::send(&Msg::InTransit(self.name.clone(), id)).map_err(ShmError::Tracker)?;
        }
        Ok(())
    }

    /// Tells the tracker that this segment is part of `owner`: it stays as long as `owner`
    /// does, whoever holds it, and is unlinked with it.
    pub(crate) fn send_part_of(&self, owner: &Segment) -> Result<(), ShmError> {
        if self.tracked {
            tracker::send(&Msg::PartOf(self.name.clone(), owner.name.clone()))
                .map_err(ShmError::Tracker)?;
        }
        Ok(())
    }

    /// Takes back the transits of encodings that were never delivered (a queue put or a
    /// send that failed, a process that ended without decoding its arguments), so their
    /// segments do not outlive every handle.
    ///
    /// Taking back a transit that a receiver did decode is harmless: the tracker counts each
    /// transit at zero at least. Only this process's existing connection to the tracker is
    /// used (the one that counted the transits), so this never starts a tracker, and may be
    /// called with multiproc's locks held.
    pub(crate) fn take_back_transits(transits: &[Transit]) {
        for t in transits {
            // A transit turned into this process's hold, then let go.
            tracker::send_if_connected(&Msg::Received(t.name.clone(), t.id));
            tracker::send_if_connected(&Msg::Detached(t.name.clone()));
        }
    }

    /// Counts the named segments in transit once more: an encoding sent again (a pool task
    /// retried) names them again.
    pub(crate) fn add_transits(transits: &[Transit]) {
        for t in transits {
            tracker::send_quietly(&Msg::InTransit(t.name.clone(), t.id));
        }
    }

    /// Opens a name that came without its descriptor, taking over its transit `id`.
    pub(crate) fn open_received(
        name: String,
        id: u64,
        tracked: bool,
    ) -> Result<Arc<Self>, ShmError> {
        let fd = sys::shm_open(&name)
            .map_err(|e| ShmError::Io(io_context(e, &format!("shared memory {name:?} is gone"))))?;
        let seg = Segment::map_fd(name.clone(), fd, tracked)?;
        if tracked {
            tracker::send_quietly(&Msg::Received(name, id));
        }
        Ok(Arc::new(seg))
    }
}

fn io_context(e: std::io::Error, what: &str) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Decodes a typed segment and checks that it holds `kind` of `elem_size`-byte elements
/// tagged `type_tag`; returns it with the element count from its header.
pub(crate) fn deserialize_typed<'de, D: Deserializer<'de>>(
    d: D,
    kind: Kind,
    elem_size: u64,
    type_tag: u64,
) -> Result<(Arc<Segment>, u64), D::Error> {
    let seg = deserialize_segment(d)?;
    let len = seg
        .check_header(kind, elem_size, type_tag)
        .map_err(crate::codec::de_error)?;
    Ok((seg, len))
}

/// A word no segment owns, handed out instead of panicking if an offset were ever wrong
/// (every offset is checked against the segment's size when the object is made).
static SPARE_WORD: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Segment {
    /// The `i`-th 32-bit word after a typed segment's header.
    #[inline]
    pub(crate) fn word(&self, i: usize) -> &std::sync::atomic::AtomicU32 {
        self.map
            .atomic_u32(HEADER_LEN + 4 * i)
            .unwrap_or(&SPARE_WORD)
    }
}
