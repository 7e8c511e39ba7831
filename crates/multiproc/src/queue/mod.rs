//! Queues between processes: [`Queue`], [`SimpleQueue`] and [`JoinableQueue`] (CPython's
//! `multiprocessing.Queue`, `SimpleQueue` and `JoinableQueue`).
//!
//! A queue is a ring of records in shared memory, with one lock for producers and one for
//! consumers (futex words, like [`Lock`](crate::Lock)). `put` encodes the item and copies it
//! into the ring before it returns; `get` copies it out. There is no feeder thread, so:
//!
//! - **Nothing hangs at exit and nothing is lost.** An item is in the queue's shared memory
//!   once `put` returns; the process may exit (or be killed) right after. CPython's
//!   `join_thread` and `cancel_join_thread` have nothing to do here and do not exist.
//! - **An unbounded queue never blocks a put.** When the ring is full, the producer links a
//!   ring twice as large after it (up to 64 MiB; then puts wait for room); once the queue
//!   is empty again it goes back to the first size. (Items holding descriptors are the
//!   exception: their descriptors wait in a socket that holds a few hundred, and a put past
//!   that waits for a consumer, or reports `Full` if it may not wait.) Items too large for the first ring go to
//!   a shared memory segment of their own, so an item of any size travels (tested with 64 MiB).
//! - **A killed process does not wedge the queue.** Each lock holds its owner's pid; the next
//!   taker of a dead owner's lock goes on at once, because every change a holder makes to
//!   the queue's state is one atomic store: whatever it was doing either happened or did
//!   not. What a killed process can lose is only what it was moving: the item it was putting
//!   (if it had not yet been stored) or the item it had just taken.
//!
//! Items are any serde type, encoded with the default codec. Shared objects ride along
//! (Lock, Value, Array, SharedMemory, Event, other queues, by name) and so do connections and
//! other descriptors (through a socket pair every handle of the queue holds; a queue that
//! arrived over TCP has none, and refuses items that hold descriptors).
//!
//! See `queue/README.md` for the memory layout and the protocol.
//!
//! # Examples
//!
//! ```
//! use multiproc::{Process, Queue};
//!
//! fn produce(q: Queue<String>) {
//!     for i in 0..3 {
//!         q.put(format!("item {i}")).unwrap();
//!     }
//! }
//!
//! # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
//! let q = Queue::new(0)?;
//! let mut p = Process::new(produce, q.clone());
//! p.start()?;
//! p.join()?;
//! let got: Vec<String> = (0..3).map(|_| q.get().unwrap()).collect();
//! assert_eq!(got, ["item 0", "item 1", "item 2"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub(crate) mod ring;

use ring::{PutFail, Ring, Side, TakeFail, with_scratch};

use crate::ShmError;
use crate::codec::{Codec, CodecError, Postcard, fds};
use crate::shm::segment::{self, Kind, Segment};
use crate::sync::deadline;

/// Why a queue could not be made or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// This handle was closed ([`Queue::close`]): CPython's `<Queue> is closed`.
    #[error("Queue is closed")]
    Closed,
    /// `task_done` was called more times than items were put.
    #[error("task_done() called too many times")]
    TaskDoneTooManyTimes,
    /// The item could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The item holds descriptors (a connection, say) but this handle of the queue has no
    /// channel for them: it arrived where descriptors cannot travel (over TCP).
    #[error(
        "this queue handle arrived without its descriptor channel (over TCP?), so it cannot \
         carry items holding descriptors"
    )]
    NoDescriptorChannel,
    /// The queue's shared memory does not hold what it should (another program wrote it).
    #[error("{0}")]
    Corrupt(String),
    /// Making shared memory failed.
    #[error(transparent)]
    Shm(#[from] ShmError),
    /// The operating system refused.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Why a put did not happen; the item comes back.
///
/// # Examples
///
/// ```
/// use multiproc::{PutError, Queue};
/// # multiproc::init();
/// let q = Queue::new(1)?;
/// q.put(1)?;
/// match q.try_put(2) {
///     Err(PutError::Full(item)) => assert_eq!(item, 2),
///     other => panic!("{other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub enum PutError<T> {
    /// The queue is full (at once, without blocking, or when the timeout passed): CPython's
    /// `queue.Full`.
    Full(T),
    /// The put failed for another reason ([`QueueError::Closed`], encoding, memory).
    Failed(QueueError, T),
}

impl<T> PutError<T> {
    /// The item that was not put.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let q = multiproc::Queue::new(1)?;
    /// q.put('a')?;
    /// assert_eq!(q.try_put('b').unwrap_err().into_inner(), 'b');
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn into_inner(self) -> T {
        match self {
            Self::Full(t) | Self::Failed(_, t) => t,
        }
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(_) => f.write_str("Full(..)"),
            Self::Failed(e, _) => f.debug_tuple("Failed").field(e).finish_non_exhaustive(),
        }
    }
}

impl<T> fmt::Display for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(_) => f.write_str("the queue is full"),
            Self::Failed(e, _) => e.fmt(f),
        }
    }
}

impl<T> std::error::Error for PutError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Full(_) => None,
            Self::Failed(e, _) => Some(e),
        }
    }
}

/// Why a get did not give an item.
///
/// # Examples
///
/// ```
/// use multiproc::{GetError, Queue};
/// # multiproc::init();
/// let q: Queue<u8> = Queue::new(0)?;
/// assert!(matches!(q.try_get(), Err(GetError::Empty)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// No item (at once, without blocking, or when the timeout passed): CPython's
    /// `queue.Empty`.
    #[error("the queue is empty")]
    Empty,
    /// An item was taken but could not be decoded; its bytes are here, nothing is lost.
    #[error("{error}")]
    Decode {
        /// What went wrong.
        error: CodecError,
        /// The item as it was put.
        bytes: Vec<u8>,
    },
    /// The get failed for another reason ([`QueueError::Closed`], memory).
    #[error(transparent)]
    Failed(#[from] QueueError),
}

/// A first ring of 256 KiB: about 3,000 small items before the ring grows.
const DEFAULT_CAPACITY: usize = 256 << 10;

/// Options for a queue: [`maxsize`](Self::maxsize) and the ring's first
/// [`capacity`](Self::capacity).
///
/// # Examples
///
/// ```
/// # multiproc::init();
/// let q = multiproc::Queue::<u64>::builder().maxsize(100).capacity(1 << 20).build()?;
/// assert_eq!(q.maxsize(), 100);
/// # Ok::<(), multiproc::QueueError>(())
/// ```
#[derive(Debug, Clone)]
pub struct QueueBuilder<T> {
    maxsize: usize,
    capacity: usize,
    _item: PhantomData<fn(T) -> T>,
}

impl<T: Serialize + DeserializeOwned> QueueBuilder<T> {
    /// The most items the queue holds (0, the default: no limit). Values past `u32::MAX - 1`
    /// count as no limit.
    pub fn maxsize(mut self, maxsize: usize) -> Self {
        self.maxsize = maxsize;
        self
    }

    /// Bytes of the first ring (rounded up to a power of two between 4 KiB and 64 MiB;
    /// default 256 KiB). Items above a quarter of it go to a segment of their own. The
    /// ring's memory is reserved when the queue is made.
    pub fn capacity(mut self, bytes: usize) -> Self {
        self.capacity = bytes;
        self
    }

    /// Makes the queue.
    ///
    /// # Errors
    ///
    /// [`QueueError::Shm`] if its shared memory cannot be made (see
    /// [`ShmError::Tracker`] about the start-up hook).
    pub fn build(self) -> Result<Queue<T>, QueueError> {
        Queue::make(Kind::Queue, self.maxsize, self.capacity)
    }
}

/// Rounds a requested ring size into the allowed range.
fn ring_size(bytes: usize) -> usize {
    bytes
        .clamp(ring::MIN_RING, ring::MAX_RING)
        .next_power_of_two()
        .min(ring::MAX_RING)
}

/// A FIFO queue shared between processes: CPython's `multiprocessing.Queue`.
///
/// Any number of producers and consumers, in any processes; items of any serde type. Clones
/// are handles to the same queue (and share this process's [`close`](Self::close)); a queue
/// can be a Process argument, part of a message, or an item of another queue. See the
/// [module docs](crate::queue) for what happens at exit, on a kill, and with large items.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use multiproc::{GetError, Queue};
/// # multiproc::init();
/// let q = Queue::new(3)?;
/// for i in 0..3 {
///     q.put(i)?;
/// }
/// assert!(q.full());
/// assert!(q.put_timeout(3, Duration::from_millis(10)).is_err());
/// assert_eq!(q.qsize(), 3);
/// assert_eq!(q.get()?, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Queue<T> {
    ring: Arc<Ring>,
    closed: Arc<AtomicBool>,
    _item: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Self {
            ring: self.ring.clone(),
            closed: self.closed.clone(),
            _item: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.ring.segment().name())
            .field("qsize", &self.ring.len())
            .field("maxsize", &self.ring.maxsize())
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// A queue holding at most `maxsize` items (0: no limit), as CPython's `Queue(maxsize)`.
    ///
    /// # Errors
    ///
    /// [`QueueError::Shm`] if its shared memory cannot be made.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let q = multiproc::Queue::<Vec<u8>>::new(0)?;
    /// assert!(q.empty());
    /// # Ok::<(), multiproc::QueueError>(())
    /// ```
    pub fn new(maxsize: usize) -> Result<Self, QueueError> {
        Self::builder().maxsize(maxsize).build()
    }

    /// Options beyond `maxsize`.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let q = multiproc::Queue::<u8>::builder().capacity(64 << 10).build()?;
    /// assert_eq!(q.maxsize(), 0);
    /// # Ok::<(), multiproc::QueueError>(())
    /// ```
    pub fn builder() -> QueueBuilder<T> {
        QueueBuilder {
            maxsize: 0,
            capacity: DEFAULT_CAPACITY,
            _item: PhantomData,
        }
    }

    fn make(kind: Kind, maxsize: usize, capacity: usize) -> Result<Self, QueueError> {
        let maxsize = u32::try_from(maxsize)
            .ok()
            .filter(|&m| m != u32::MAX)
            .unwrap_or(0);
        let ring = Ring::create(kind, segment::type_tag::<T>(), maxsize, ring_size(capacity))?;
        Ok(Self {
            ring: Arc::new(ring),
            closed: Arc::new(AtomicBool::new(false)),
            _item: PhantomData,
        })
    }

    /// Puts an item, waiting as long as the queue is full (`put(obj)`).
    ///
    /// # Errors
    ///
    /// [`PutError::Failed`] with [`QueueError::Closed`] after [`close`](Self::close), or if
    /// the item cannot be encoded or its memory made; the item comes back.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let q = multiproc::Queue::new(0)?;
    /// q.put((1, "one".to_string()))?;
    /// assert_eq!(q.get()?, (1, "one".to_string()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_with(item, true, None)
    }

    /// Puts an item, waiting at most `timeout` for room (`put(obj, timeout=t)`).
    ///
    /// # Errors
    ///
    /// [`PutError::Full`] when the timeout passes; otherwise as [`put`](Self::put).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # multiproc::init();
    /// let q = multiproc::Queue::new(1)?;
    /// q.put_timeout('a', Duration::from_secs(1))?;
    /// assert!(q.put_timeout('b', Duration::from_millis(10)).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.put_with(item, true, deadline(Some(timeout)))
    }

    /// Puts an item only if there is room now (`put(obj, block=False)`, `put_nowait`).
    ///
    /// # Errors
    ///
    /// [`PutError::Full`] if the queue is full, or if another producer held the queue's
    /// lock for 100 ms (preempted or stopped in the middle of a put); otherwise as
    /// [`put`](Self::put).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let q = multiproc::Queue::new(1)?;
    /// q.try_put(1)?;
    /// assert!(matches!(q.try_put(2), Err(multiproc::PutError::Full(2))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_with(item, false, None)
    }

    /// CPython's name for [`try_put`](Self::try_put).
    ///
    /// # Errors
    ///
    /// As [`try_put`](Self::try_put).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let q = multiproc::Queue::new(0)?;
    /// q.put_nowait(1)?;
    /// assert_eq!(q.get_nowait()?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn put_nowait(&self, item: T) -> Result<(), PutError<T>> {
        self.try_put(item)
    }

    fn put_with(&self, item: T, block: bool, deadline: Option<Instant>) -> Result<(), PutError<T>> {
        if self.is_closed() {
            return Err(PutError::Failed(QueueError::Closed, item));
        }
        let mut by_name = Vec::new();
        let r = with_scratch(|buf| {
            let (encoded, fds, names) =
                fds::encoding_segments_by_name(|| Postcard::encode(&item, buf));
            by_name = names;
            encoded.map_err(|e| PutFail::Error(e.into()))?;
            self.ring.put(buf, &fds, block, deadline)
        });
        if r.is_err() {
            // The encoding is thrown away: the shared objects it named are not in transit.
            Segment::take_back_transits(&by_name);
        }
        match r {
            Ok(()) => Ok(()),
            Err(PutFail::Full) => Err(PutError::Full(item)),
            Err(PutFail::Error(e)) => Err(PutError::Failed(e, item)),
        }
    }

    /// Takes the next item, waiting as long as the queue is empty (`get()`).
    ///
    /// # Errors
    ///
    /// [`QueueError::Closed`] after [`close`](Self::close); [`GetError::Decode`] if the item
    /// cannot be decoded (its bytes come with the error).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let q = multiproc::Queue::new(0)?;
    /// q.put(vec![1.5, 2.5])?;
    /// assert_eq!(q.get()?, [1.5, 2.5]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get(&self) -> Result<T, GetError> {
        self.get_with(true, None)
    }

    /// Takes the next item, waiting at most `timeout` (`get(timeout=t)`).
    ///
    /// # Errors
    ///
    /// [`GetError::Empty`] when the timeout passes; otherwise as [`get`](Self::get).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # multiproc::init();
    /// let q: multiproc::Queue<u8> = multiproc::Queue::new(0)?;
    /// assert!(matches!(q.get_timeout(Duration::from_millis(10)), Err(multiproc::GetError::Empty)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        self.get_with(true, deadline(Some(timeout)))
    }

    /// Takes the next item only if there is one now (`get(block=False)`, `get_nowait`).
    ///
    /// # Errors
    ///
    /// [`GetError::Empty`] if the queue is empty, or if another consumer held the queue's
    /// lock for 100 ms; otherwise as [`get`](Self::get). [`QueueError::NoDescriptorChannel`]
    /// if the next item holds descriptors and this handle came over TCP (the item stays for
    /// a handle that can take it).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let q = multiproc::Queue::new(0)?;
    /// assert!(q.try_get().is_err());
    /// q.put(7u8)?;
    /// assert_eq!(q.try_get()?, 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_get(&self) -> Result<T, GetError> {
        self.get_with(false, None)
    }

    /// CPython's name for [`try_get`](Self::try_get).
    ///
    /// # Errors
    ///
    /// As [`try_get`](Self::try_get).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let q: multiproc::Queue<u8> = multiproc::Queue::new(0)?;
    /// assert!(q.get_nowait().is_err());
    /// # Ok::<(), multiproc::QueueError>(())
    /// ```
    pub fn get_nowait(&self) -> Result<T, GetError> {
        self.try_get()
    }

    fn get_with(&self, block: bool, deadline: Option<Instant>) -> Result<T, GetError> {
        if self.is_closed() {
            return Err(QueueError::Closed.into());
        }
        with_scratch(|buf| {
            let fds = self.ring.take(block, deadline, buf).map_err(|e| match e {
                TakeFail::Empty => GetError::Empty,
                TakeFail::Error(e) => GetError::Failed(e),
            })?;
            fds::decoding(fds, || Postcard::decode(buf)).map_err(|error| GetError::Decode {
                error,
                bytes: buf.clone(),
            })
        })
    }

    /// Puts an item already encoded (the pool's records): its bytes and descriptors.
    pub(crate) fn put_raw(
        &self,
        bytes: &[u8],
        fds: &[OwnedFd],
        block: bool,
        deadline: Option<Instant>,
    ) -> Result<(), PutFail> {
        self.ring.put(bytes, fds, block, deadline)
    }

    /// Takes an item without decoding it: its bytes into `out`, and its descriptors.
    pub(crate) fn take_raw(
        &self,
        block: bool,
        deadline: Option<Instant>,
        out: &mut Vec<u8>,
    ) -> Result<Vec<OwnedFd>, TakeFail> {
        self.ring.take(block, deadline, out)
    }

    /// How many items are in the queue now (exact at the instant it is read; others may
    /// change it at once). Works on every platform, unlike CPython's on macOS.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let q = multiproc::Queue::new(0)?;
    /// q.put(())?;
    /// q.put(())?;
    /// assert_eq!(q.qsize(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn qsize(&self) -> usize {
        self.ring.len() as usize
    }

    /// Whether the queue is empty now.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// assert!(multiproc::Queue::<u8>::new(0)?.empty());
    /// # Ok::<(), multiproc::QueueError>(())
    /// ```
    pub fn empty(&self) -> bool {
        self.ring.len() == 0
    }

    /// Whether the queue holds `maxsize` items now (never, without a limit).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let q = multiproc::Queue::new(1)?;
    /// q.put(1)?;
    /// assert!(q.full());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn full(&self) -> bool {
        let max = self.ring.maxsize();
        max != 0 && self.ring.len() >= max
    }

    /// The most items the queue holds (0: no limit).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// assert_eq!(multiproc::Queue::<u8>::new(5)?.maxsize(), 5);
    /// # Ok::<(), multiproc::QueueError>(())
    /// ```
    pub fn maxsize(&self) -> usize {
        self.ring.maxsize() as usize
    }

    /// Closes this process's handle (and its clones): later puts and gets through it fail
    /// with [`QueueError::Closed`]. Other processes' handles are not affected, and the items
    /// already put stay in the queue (CPython's `close`, without a feeder thread to flush).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let q = multiproc::Queue::new(0)?;
    /// q.close();
    /// assert!(matches!(q.put(1), Err(multiproc::PutError::Failed(multiproc::QueueError::Closed, 1))));
    /// # Ok::<(), multiproc::QueueError>(())
    /// ```
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// Whether [`close`](Self::close) was called on this handle (or a clone).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let q = multiproc::Queue::<u8>::new(0)?;
    /// assert!(!q.is_closed());
    /// # Ok::<(), multiproc::QueueError>(())
    /// ```
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------------------------
// Travelling

/// A descriptor as it leaves.
struct SendFd<'a>(BorrowedFd<'a>);

impl Serialize for SendFd<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        fds::serialize_fd(self.0, s)
    }
}

/// A descriptor as it arrives.
struct RecvFd(OwnedFd);

impl<'de> Deserialize<'de> for RecvFd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        fds::deserialize_fd(d).map(Self)
    }
}

/// A segment as it arrives.
struct RecvSegment(Arc<Segment>);

impl<'de> Deserialize<'de> for RecvSegment {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        segment::deserialize_segment(d).map(Self)
    }
}

/// A queue travels as its control segment and, where descriptors can go, its side channel.
#[derive(Serialize)]
struct WireOut<'a> {
    seg: &'a Segment,
    side: Option<(SendFd<'a>, SendFd<'a>)>,
}

#[derive(Deserialize)]
struct WireIn {
    seg: RecvSegment,
    side: Option<(RecvFd, RecvFd)>,
}

impl<T> Queue<T> {
    fn serialize_as<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let side = self
            .ring
            .side()
            .filter(|_| fds::can_carry_fd())
            .map(|side| (SendFd(side.tx.as_fd()), SendFd(side.rx.as_fd())));
        WireOut {
            seg: self.ring.segment(),
            side,
        }
        .serialize(s)
    }

    fn deserialize_as<'de, D: Deserializer<'de>>(d: D, kind: Kind) -> Result<Self, D::Error> {
        let w = WireIn::deserialize(d)?;
        let seg = w.seg.0;
        let capacity = seg
            .check_header(kind, 0, segment::type_tag::<T>())
            .map_err(crate::codec::de_error)?;
        let side = w.side.map(|(tx, rx)| Side { tx: tx.0, rx: rx.0 });
        let ring = Ring::new(seg, capacity, side).map_err(crate::codec::de_error)?;
        Ok(Self {
            ring: Arc::new(ring),
            closed: Arc::new(AtomicBool::new(false)),
            _item: PhantomData,
        })
    }
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.serialize_as(s)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::deserialize_as(d, Kind::Queue)
    }
}

// ---------------------------------------------------------------------------------------------
// SimpleQueue

/// A queue with no limit and the short interface: CPython's `multiprocessing.SimpleQueue`
/// (`put`, `get`, `empty`, `close`). The same engine as [`Queue`].
///
/// # Examples
///
/// ```
/// # multiproc::init();
/// let q = multiproc::SimpleQueue::new()?;
/// q.put("hello".to_string())?;
/// assert_eq!(q.get()?, "hello");
/// assert!(q.empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SimpleQueue<T> {
    queue: Queue<T>,
}

impl<T> Clone for SimpleQueue<T> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<T> fmt::Debug for SimpleQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimpleQueue")
            .field("name", &self.queue.ring.segment().name())
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> SimpleQueue<T> {
    /// A new, empty queue.
    ///
    /// # Errors
    ///
    /// [`QueueError::Shm`] if its shared memory cannot be made.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let q = multiproc::SimpleQueue::<u32>::new()?;
    /// assert!(q.empty());
    /// # Ok::<(), multiproc::QueueError>(())
    /// ```
    pub fn new() -> Result<Self, QueueError> {
        Ok(Self {
            queue: Queue::make(Kind::SimpleQueue, 0, DEFAULT_CAPACITY)?,
        })
    }

    /// Puts an item (waits for room only as an unbounded [`Queue`] does: see its docs).
    ///
    /// # Errors
    ///
    /// As [`Queue::put`].
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let q = multiproc::SimpleQueue::new()?;
    /// q.put(1u8)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.queue.put(item)
    }

    /// Takes the next item, waiting as long as the queue is empty.
    ///
    /// # Errors
    ///
    /// As [`Queue::get`].
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let q = multiproc::SimpleQueue::new()?;
    /// q.put(2u8)?;
    /// assert_eq!(q.get()?, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get(&self) -> Result<T, GetError> {
        self.queue.get()
    }

    /// Takes the next item, waiting at most `timeout` (beyond CPython, which has none).
    ///
    /// # Errors
    ///
    /// [`GetError::Empty`] when the timeout passes; otherwise as [`Queue::get`].
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let q = multiproc::SimpleQueue::<u8>::new()?;
    /// assert!(q.get_timeout(std::time::Duration::from_millis(5)).is_err());
    /// # Ok::<(), multiproc::QueueError>(())
    /// ```
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        self.queue.get_timeout(timeout)
    }

    /// Whether the queue is empty now.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// assert!(multiproc::SimpleQueue::<u8>::new()?.empty());
    /// # Ok::<(), multiproc::QueueError>(())
    /// ```
    pub fn empty(&self) -> bool {
        self.queue.empty()
    }

    /// Closes this process's handle, as [`Queue::close`].
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let q = multiproc::SimpleQueue::<u8>::new()?;
    /// q.close();
    /// assert!(q.get().is_err());
    /// # Ok::<(), multiproc::QueueError>(())
    /// ```
    pub fn close(&self) {
        self.queue.close();
    }
}

impl<T> Serialize for SimpleQueue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.queue.serialize_as(s)
    }
}

impl<'de, T> Deserialize<'de> for SimpleQueue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Queue::deserialize_as(d, Kind::SimpleQueue).map(|queue| Self { queue })
    }
}

// ---------------------------------------------------------------------------------------------
// JoinableQueue

/// A [`Queue`] that counts unfinished items: CPython's `multiprocessing.JoinableQueue`.
/// Every put adds one; [`task_done`](Self::task_done) takes one away; [`join`](Self::join)
/// waits for none to be left. All of [`Queue`]'s calls work on it (it dereferences to one).
///
/// # Examples
///
/// ```
/// use multiproc::{JoinableQueue, Process};
///
/// fn worker(q: JoinableQueue<u32>) {
///     while let Ok(n) = q.get() {
///         let _ = n * 2;
///         q.task_done().unwrap();
///     }
/// }
///
/// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
/// let q = JoinableQueue::new(0)?;
/// let mut p = Process::new(worker, q.clone()).daemon(true);
/// p.start()?;
/// for n in 0..10 {
///     q.put(n)?;
/// }
/// q.join();
/// assert!(q.empty());
/// p.terminate()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinableQueue")
            .field("name", &self.queue.ring.segment().name())
            .finish()
    }
}

impl<T> std::ops::Deref for JoinableQueue<T> {
    type Target = Queue<T>;

    fn deref(&self) -> &Queue<T> {
        &self.queue
    }
}

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// A queue holding at most `maxsize` items (0: no limit).
    ///
    /// # Errors
    ///
    /// [`QueueError::Shm`] if its shared memory cannot be made.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let q = multiproc::JoinableQueue::<u8>::new(0)?;
    /// assert!(q.join_timeout(std::time::Duration::ZERO), "nothing put, nothing to wait for");
    /// # Ok::<(), multiproc::QueueError>(())
    /// ```
    pub fn new(maxsize: usize) -> Result<Self, QueueError> {
        Ok(Self {
            queue: Queue::make(Kind::JoinableQueue, maxsize, DEFAULT_CAPACITY)?,
        })
    }

    /// Says that one item taken from the queue is finished.
    ///
    /// # Errors
    ///
    /// [`QueueError::TaskDoneTooManyTimes`] ('task_done() called too many times') if every
    /// item put is finished already.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let q = multiproc::JoinableQueue::new(0)?;
    /// q.put(1)?;
    /// q.get()?;
    /// q.task_done()?;
    /// assert_eq!(q.task_done().unwrap_err().to_string(), "task_done() called too many times");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn task_done(&self) -> Result<(), QueueError> {
        if self.queue.ring.task_done() {
            Ok(())
        } else {
            Err(QueueError::TaskDoneTooManyTimes)
        }
    }

    /// Waits until every item put has been marked done (CPython's `join()`).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let q = multiproc::JoinableQueue::new(0)?;
    /// q.put(1)?;
    /// q.get()?;
    /// q.task_done()?;
    /// q.join();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn join(&self) {
        self.queue.ring.join(None);
    }

    /// Waits at most `timeout` for every item put to be marked done; returns whether they
    /// were.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # multiproc::init();
    /// let q = multiproc::JoinableQueue::new(0)?;
    /// q.put(1)?;
    /// assert!(!q.join_timeout(Duration::from_millis(10)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        self.queue.ring.join(Some(timeout))
    }
}

impl<T> Serialize for JoinableQueue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.queue.serialize_as(s)
    }
}

impl<'de, T> Deserialize<'de> for JoinableQueue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Queue::deserialize_as(d, Kind::JoinableQueue).map(|queue| Self { queue })
    }
}
