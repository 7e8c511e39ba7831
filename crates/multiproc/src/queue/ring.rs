//! The engine under every queue: a byte ring of records in shared memory, with one lock for
//! producers and one for consumers. See `queue/README.md` for the layout and the protocol.

use std::borrow::Cow;
use std::cell::RefCell;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::QueueError;
use crate::shm::segment::{self, HEADER_LEN, Header, Kind, Segment};
use crate::sync::lock::{Got, RawMutex};
use crate::sync::{before_sleeping, deadline as deadline_of, next_sleep};
use crate::{ShmError, sys};

// ---------------------------------------------------------------------------------------------
// Layout

/// Words of the control block (32-bit, after the typed header), one cache line per side.
const W_PUT_LOCK: usize = 0;
const W_PUT_SEQ: usize = 1;
const W_FD_TAG: usize = 2;
/// How many rings after the first were ever made (names the next one).
const W_RINGS_MADE: usize = 3;
/// `prod`, a 64-bit word at words 4-5: `puts << 32 | lap << 24 | head`.
const W_PROD: usize = 4;
const W_GET_LOCK: usize = 16;
const W_GET_SEQ: usize = 17;
/// `cons`, a 64-bit word at words 20-21: `gets << 32 | lap << 24 | tail`.
const W_CONS: usize = 20;
const W_GETTERS: usize = 32;
const W_PUTTERS: usize = 33;
const W_JOINERS: usize = 34;
const W_DONE: usize = 35;
const W_DRAINED: usize = 36;
const W_MAXSIZE: usize = 37;
/// Words 64..320: for each lap, which ring (by `rings_made` when it was made) holds that
/// lap's name now; a process that mapped an earlier ring of the same lap maps again.
const W_LAP_IDS: usize = 64;
/// Bytes of control block; the first ring follows it.
const CONTROL_LEN: usize = (W_LAP_IDS + 256) * 4;

/// Ring positions count 8-byte units in 24 bits, so a ring holds at most 2^23 units.
const UNIT: usize = 8;
const POS_BITS: u32 = 24;
const POS_MASK: u32 = (1 << POS_BITS) - 1;
/// The largest ring: half the position space (so `head - tail` never wraps), 64 MiB.
pub(crate) const MAX_RING: usize = (1 << (POS_BITS - 1)) * UNIT;
/// The smallest ring.
pub(crate) const MIN_RING: usize = 4096;

/// Record kinds (the low byte of a record header's flags).
const ITEM: u32 = 0;
const PAD: u32 = 1;
const LINK: u32 = 2;
/// Flag: the payload names a segment holding the item.
const EXTERNAL: u32 = 1 << 8;
/// Flag: the item's descriptors wait on the side channel under the tag that begins the
/// payload.
const FDS: u32 = 1 << 9;

/// A `prod` or `cons` word, unpacked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cursor {
    /// Items put (for `prod`) or taken (for `cons`), wrapping.
    items: u32,
    /// Which ring the position is in (wrapping).
    lap: u8,
    /// Units written (read) in that ring, wrapping at 2^24.
    pos: u32,
}

impl Cursor {
    fn unpack(w: u64) -> Self {
        Self {
            items: (w >> 32) as u32,
            lap: (w >> POS_BITS) as u8,
            pos: w as u32 & POS_MASK,
        }
    }

    fn pack(self) -> u64 {
        (u64::from(self.items) << 32) | (u64::from(self.lap) << POS_BITS) | u64::from(self.pos)
    }
}

/// Where a record of `need` units goes in a ring of `units` (a power of two) with producer
/// position `head` and consumer position `tail`. One unit always stays free, so that a
/// `LINK` record fits whatever happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// At `head`.
    Here,
    /// After a `PAD` record of `pad` units (the rest of the ring) at `head`.
    Wrap { pad: u32 },
    /// It does not fit now.
    NoRoom,
}

fn place(units: u32, head: u32, tail: u32, need: u32) -> Place {
    let used = head.wrapping_sub(tail) & POS_MASK;
    let free = units.saturating_sub(used);
    let to_end = units - (head & (units - 1));
    if need < to_end {
        if need < free {
            Place::Here
        } else {
            Place::NoRoom
        }
    } else if need == to_end && need < free {
        Place::Here
    } else if to_end.saturating_add(need) < free {
        Place::Wrap { pad: to_end }
    } else {
        Place::NoRoom
    }
}

/// The lap of the `made`-th ring made after the first. Lap 0 is the first ring, inside the
/// control segment; the others cycle through 1..=255, each a segment named after its lap (a
/// name comes round again only after 255 more rings, long after its ring was left: a queue
/// moves to a new ring only when the one it is in is full, or empty).
fn lap_of(made: u32) -> u8 {
    (made % 255) as u8 + 1
}

/// A ring waits this much larger than the first before an empty queue goes back to the
/// first (smaller ones stay, ready for the next burst).
const SHRINK_ABOVE: u32 = 4;

/// A record header: payload length in bytes, and flags.
fn header(len: u32, flags: u32) -> u64 {
    u64::from(len) | (u64::from(flags) << 32)
}

/// Units a record with a payload of `len` bytes takes.
fn units_for(len: usize) -> usize {
    1 + len.div_ceil(UNIT)
}

// ---------------------------------------------------------------------------------------------
// The ring

/// One mapped ring: a segment and where in it the ring's bytes start.
#[derive(Clone)]
struct RingMem {
    seg: Arc<Segment>,
    offset: usize,
    units: u32,
}

impl RingMem {
    fn byte(&self, pos: u32) -> usize {
        self.offset + (pos & (self.units - 1)) as usize * UNIT
    }

    fn header_at(&self, pos: u32) -> Option<&AtomicU64> {
        self.seg.map().atomic_u64(self.byte(pos))
    }
}

/// The rings this process has mapped, by lap: the producers' and the consumers'.
#[derive(Default)]
struct Mapped {
    prod: Option<MappedRing>,
    cons: Option<MappedRing>,
}

/// A mapped ring: its lap, which ring of that lap it is, and its memory.
type MappedRing = (u8, u32, RingMem);

/// The side channel for descriptors: every handle holds both ends of one socket pair;
/// producers send on `tx`, consumers receive on `rx`.
pub(crate) struct Side {
    pub(crate) tx: OwnedFd,
    pub(crate) rx: OwnedFd,
}

/// Why a put did not happen.
pub(crate) enum PutFail {
    /// No room before the deadline (or at once, without blocking).
    Full,
    Error(QueueError),
}

/// Why a take did not happen.
pub(crate) enum TakeFail {
    /// No item before the deadline (or at once, without blocking).
    Empty,
    Error(QueueError),
}

impl From<QueueError> for PutFail {
    fn from(e: QueueError) -> Self {
        Self::Error(e)
    }
}

impl From<QueueError> for TakeFail {
    fn from(e: QueueError) -> Self {
        Self::Error(e)
    }
}

/// A queue's shared state, as one process sees it.
pub(crate) struct Ring {
    ctl: Arc<Segment>,
    /// Units of the first ring (and of the ring a queue shrinks back to).
    base_units: u32,
    side: Option<Side>,
    /// Ring 0, inside the control segment.
    first: RingMem,
    /// The other rings this process uses.
    mapped: Mutex<Mapped>,
}

thread_local! {
    /// A buffer reused by puts and takes on this thread (taken out while in use, so a
    /// nested use simply allocates).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    buf.clear();
    let r = f(&mut buf);
    if buf.capacity() <= 1 << 20 {
        SCRATCH.with(|s| *s.borrow_mut() = buf);
    }
    r
}

impl Ring {
    /// A new queue of `kind` holding `T`-tagged items, with a first ring of `capacity` bytes
    /// (a power of two within [`MIN_RING`, `MAX_RING`]).
    pub(crate) fn create(
        kind: Kind,
        type_tag: u64,
        maxsize: u32,
        capacity: usize,
    ) -> Result<Self, QueueError> {
        let seg = segment::create_typed(
            Header {
                kind,
                elem_size: 0,
                len: capacity as u64,
                type_tag,
            },
            CONTROL_LEN + capacity,
        )
        .map_err(QueueError::Shm)?;
        seg.word(W_MAXSIZE).store(maxsize, Ordering::Relaxed);
        let (tx, rx) = sys::seqpacket_pair().map_err(QueueError::Io)?;
        Self::new(seg, capacity as u64, Some(Side { tx, rx }))
    }

    /// A handle on a received queue segment whose header gave a first ring of `capacity`
    /// bytes.
    pub(crate) fn new(
        ctl: Arc<Segment>,
        capacity: u64,
        side: Option<Side>,
    ) -> Result<Self, QueueError> {
        let ok = capacity.is_power_of_two()
            && (MIN_RING as u64..=MAX_RING as u64).contains(&capacity)
            && ctl.size() as u64 >= (HEADER_LEN + CONTROL_LEN) as u64 + capacity;
        if !ok {
            return Err(QueueError::Corrupt(format!(
                "queue {:?} has a bad ring size",
                ctl.name()
            )));
        }
        let units = (capacity as usize / UNIT) as u32;
        Ok(Self {
            first: RingMem {
                seg: ctl.clone(),
                offset: HEADER_LEN + CONTROL_LEN,
                units,
            },
            ctl,
            base_units: units,
            side,
            mapped: Mutex::new(Mapped::default()),
        })
    }

    pub(crate) fn segment(&self) -> &Arc<Segment> {
        &self.ctl
    }

    pub(crate) fn side(&self) -> Option<&Side> {
        self.side.as_ref()
    }

    fn word(&self, i: usize) -> &AtomicU32 {
        self.ctl.word(i)
    }

    fn wide(&self, i: usize) -> &AtomicU64 {
        static SPARE: AtomicU64 = AtomicU64::new(0);
        self.ctl
            .map()
            .atomic_u64(HEADER_LEN + 4 * i)
            .unwrap_or(&SPARE)
    }

    fn prod(&self) -> &AtomicU64 {
        self.wide(W_PROD)
    }

    fn cons(&self) -> &AtomicU64 {
        self.wide(W_CONS)
    }

    /// The largest number of items (0: no limit).
    pub(crate) fn maxsize(&self) -> u32 {
        self.word(W_MAXSIZE).load(Ordering::Relaxed)
    }

    /// Items in the queue now.
    pub(crate) fn len(&self) -> u32 {
        let c = Cursor::unpack(self.cons().load(Ordering::SeqCst));
        let p = Cursor::unpack(self.prod().load(Ordering::SeqCst));
        p.items.wrapping_sub(c.items)
    }

    fn has_items(&self) -> bool {
        self.len() != 0
    }

    fn ring_name(&self, lap: u8) -> String {
        format!("{}.r{lap}", self.ctl.name())
    }

    /// Ring `lap` (mapping it by name the first time), cached in `slot`.
    fn ring(
        &self,
        slot: impl Fn(&mut Mapped) -> &mut Option<MappedRing>,
        lap: u8,
    ) -> Result<Cow<'_, RingMem>, QueueError> {
        if lap == 0 {
            return Ok(Cow::Borrowed(&self.first));
        }
        // The ring of this lap now: stable while the caller holds its side's lock and its
        // side is in that lap (a lap's name comes round again only 255 rings later).
        let id = self.lap_id(lap).load(Ordering::Acquire);
        let mut mapped = self.mapped.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((l, i, r)) = slot(&mut mapped) {
            if *l == lap && *i == id {
                return Ok(Cow::Owned(r.clone()));
            }
        }
        let seg = Segment::attach(&self.ring_name(lap), segment::Tracking::Tracked)
            .map_err(QueueError::Shm)?;
        let units = (seg.size() / UNIT) as u32;
        if !units.is_power_of_two() || (units as usize) * UNIT > MAX_RING {
            return Err(QueueError::Corrupt(format!("ring {lap} has a bad size")));
        }
        let ring = RingMem {
            seg,
            offset: 0,
            units,
        };
        *slot(&mut mapped) = Some((lap, id, ring.clone()));
        Ok(Cow::Owned(ring))
    }

    /// Drops this process's mapping of a ring it has left for the first (a large ring's
    /// memory then goes as soon as every process has let go of it).
    fn forget(&self, slot: impl Fn(&mut Mapped) -> &mut Option<MappedRing>) {
        let mut mapped = self.mapped.lock().unwrap_or_else(PoisonError::into_inner);
        *slot(&mut mapped) = None;
    }

    fn lap_id(&self, lap: u8) -> &AtomicU32 {
        self.word(W_LAP_IDS + usize::from(lap))
    }

    // -----------------------------------------------------------------------------------------
    // Locks

    /// Takes the lock at word `w`, waiting until `deadline` (`block` false: briefly). A
    /// dead holder is no problem: every change a holder makes is one store of `prod` or
    /// `cons`, so whatever it was doing either happened or did not.
    fn lock(&self, w: usize, block: bool, deadline: Option<Instant>) -> Option<RingGuard<'_>> {
        let raw = RawMutex {
            state: self.word(w),
        };
        let pid = sys::caller().0;
        // A lock is held for the copy of one record (or, rarely, while a producer makes a
        // larger ring), so even a call that must not wait for items or room waits for the
        // lock a while: a try_put on an unbounded queue fails only if another producer held
        // the lock that long (preempted, or stopped).
        let deadline = if block {
            deadline
        } else {
            Some(Instant::now() + LOCK_PATIENCE)
        };
        if raw.try_lock_fast(pid)
            || matches!(
                raw.lock_slow(pid, true, deadline),
                Some(Got::Clean | Got::OwnerDied)
            )
        {
            Some(RingGuard {
                state: self.word(w),
            })
        } else {
            None
        }
    }

    // -----------------------------------------------------------------------------------------
    // Putting

    /// Puts one encoded item: its bytes, and the descriptors it carries.
    pub(crate) fn put(
        &self,
        bytes: &[u8],
        fds: &[OwnedFd],
        block: bool,
        deadline: Option<Instant>,
    ) -> Result<(), PutFail> {
        let item = Outgoing { bytes, fds };
        if !item.fds.is_empty() && self.side.is_none() {
            return Err(PutFail::Error(QueueError::NoDescriptorChannel));
        }
        let fd_prefix = if item.fds.is_empty() { 0 } else { UNIT };
        // Items too large to sit in the first ring go to a segment of their own.
        let inline_max = self.base_units as usize / 4;
        let mut external = None;
        if units_for(fd_prefix + item.bytes.len()) > inline_max {
            external = Some(External::create(item.bytes)?);
        }
        loop {
            let Some(guard) = self.lock(W_PUT_LOCK, block, deadline) else {
                return Err(PutFail::Full);
            };
            let p = Cursor::unpack(self.prod().load(Ordering::Relaxed));
            let c = Cursor::unpack(self.cons().load(Ordering::SeqCst));
            let maxsize = self.maxsize();
            if maxsize != 0 && p.items.wrapping_sub(c.items) >= maxsize {
                drop(guard);
                self.wait_for_room(block, deadline, c)?;
                continue;
            }
            let payload_len = fd_prefix
                + external
                    .as_ref()
                    .map_or(item.bytes.len(), External::payload_len);
            match self.write_locked(p, c, &item, external.as_ref(), payload_len)? {
                Some(next) => {
                    if !item.fds.is_empty() {
                        // A put that must not block does not wait for the socket either; a
                        // socket that stays full (items with descriptors nobody takes) is a
                        // full queue.
                        let by = if block {
                            deadline
                        } else {
                            Some(Instant::now())
                        };
                        match self.send_fds(next.1, item.fds, by) {
                            Err(QueueError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                                return Err(PutFail::Full);
                            }
                            r => r?,
                        }
                    }
                    // After the descriptors: a failed send leaves no part behind (the segment
                    // goes with `external`).
                    if let Some(ext) = &external {
                        ext.seg.send_part_of(&self.ctl).map_err(QueueError::Shm)?;
                    }
                    self.prod().store(next.0.pack(), Ordering::SeqCst);
                    drop(guard);
                    drop(external);
                    self.wake_getters();
                    return Ok(());
                }
                None => {
                    drop(guard);
                    self.wait_for_room(block, deadline, c)?;
                }
            }
        }
    }

    /// Writes the record (and any `PAD` or `LINK` before it) under the put lock; returns the
    /// new `prod` and the descriptor tag used, or `None` if there is no room even after
    /// trying a larger ring.
    fn write_locked(
        &self,
        p: Cursor,
        c: Cursor,
        item: &Outgoing<'_>,
        external: Option<&External>,
        payload_len: usize,
    ) -> Result<Option<(Cursor, u32)>, QueueError> {
        let need = units_for(payload_len);
        let mut ring = self.ring(|m| &mut m.prod, p.lap)?;
        let mut p = p;
        let tail = if c.lap == p.lap { c.pos } else { 0 };
        let empty = p.items == c.items && c.lap == p.lap;
        let mut place_now = place(ring.units, p.pos, tail, need as u32);
        let shrink = empty && p.lap != 0 && ring.units > SHRINK_ABOVE * self.base_units;
        if place_now == Place::NoRoom || shrink {
            // A larger ring, or once empty the first again, linked from this one.
            let (lap, next) = if shrink {
                self.forget(|m| &mut m.prod);
                (0, Cow::Borrowed(&self.first))
            } else {
                let want = (ring.units as usize * 2).max(need * 4);
                if want * UNIT > MAX_RING {
                    return Ok(None);
                }
                let made = self.word(W_RINGS_MADE).fetch_add(1, Ordering::Relaxed);
                let lap = lap_of(made);
                (lap, Cow::Owned(self.new_ring(lap, made, want * UNIT)?))
            };
            let link = ring.header_at(p.pos).ok_or_else(corrupt_ring)?;
            link.store(header(u32::from(lap), LINK), Ordering::Relaxed);
            p = Cursor {
                items: p.items,
                lap,
                pos: 0,
            };
            ring = next;
            place_now = place(ring.units, 0, 0, need as u32);
            if place_now == Place::NoRoom {
                return Ok(None);
            }
        }
        if let Place::Wrap { pad } = place_now {
            let h = ring.header_at(p.pos).ok_or_else(corrupt_ring)?;
            h.store(header((pad - 1) * UNIT as u32, PAD), Ordering::Relaxed);
            p.pos = p.pos.wrapping_add(pad) & POS_MASK;
        }
        let mut flags = ITEM;
        let mut tag = 0;
        let mut at = ring.byte(p.pos) + UNIT;
        if !item.fds.is_empty() {
            flags |= FDS;
            tag = self.word(W_FD_TAG).fetch_add(1, Ordering::Relaxed);
            let mut prefix = [0u8; UNIT];
            prefix[..4].copy_from_slice(&tag.to_le_bytes());
            prefix[4..].copy_from_slice(&(item.fds.len() as u32).to_le_bytes());
            write(&ring, at, &prefix)?;
            at += UNIT;
        }
        match external {
            Some(ext) => {
                flags |= EXTERNAL;
                let (len, name) = ext.payload();
                write(&ring, at, len)?;
                write(&ring, at + len.len(), name)?;
            }
            None => write(&ring, at, item.bytes)?,
        }
        let h = ring.header_at(p.pos).ok_or_else(corrupt_ring)?;
        h.store(header(payload_len as u32, flags), Ordering::Relaxed);
        p.pos = p.pos.wrapping_add(need as u32) & POS_MASK;
        p.items = p.items.wrapping_add(1);
        Ok(Some((p, tag)))
    }

    /// Makes ring `lap`, `size` bytes, and caches it as the producers'. The tracker keeps it
    /// as part of the queue (so it outlives the producer, and goes with the queue); the
    /// consumer that leaves it unlinks it.
    fn new_ring(&self, lap: u8, made: u32, size: usize) -> Result<RingMem, QueueError> {
        let name = self.ring_name(lap);
        let seg = match segment::create_reserved(Some(&name), size) {
            // Left by a producer that died (or failed) between making it and publishing it.
            Err(ShmError::Exists(_)) => {
                if let Ok(stale) = Segment::attach(&name, segment::Tracking::Tracked) {
                    let _ = stale.unlink();
                }
                segment::create_reserved(Some(&name), size)
            }
            r => r,
        }
        .map_err(QueueError::Shm)?;
        seg.send_part_of(&self.ctl).map_err(QueueError::Shm)?;
        // Written at once by a producer that is ahead: fault its pages in one call.
        seg.map().prefault();
        let ring = RingMem {
            seg,
            offset: 0,
            units: (size / UNIT) as u32,
        };
        // Before any `prod` names this lap: every later look-up of the lap sees this ring.
        self.lap_id(lap).store(made, Ordering::Release);
        let mut mapped = self.mapped.lock().unwrap_or_else(PoisonError::into_inner);
        mapped.prod = Some((lap, made, ring.clone()));
        Ok(ring)
    }

    fn send_fds(
        &self,
        tag: u32,
        fds: &[OwnedFd],
        deadline: Option<Instant>,
    ) -> Result<(), QueueError> {
        let side = self.side.as_ref().ok_or(QueueError::NoDescriptorChannel)?;
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        sys::send_all(
            side.tx.as_fd(),
            [&tag.to_le_bytes(), &[], &[]],
            &borrowed,
            deadline,
        )
        .map_err(QueueError::Io)
    }

    /// After a put: wakes a sleeping consumer, if any.
    fn wake_getters(&self) {
        ring_bell(self.word(W_PUT_SEQ), 1);
    }

    /// Waits until a consumer has taken something since `seen` (or the deadline).
    fn wait_for_room(
        &self,
        block: bool,
        deadline: Option<Instant>,
        seen: Cursor,
    ) -> Result<(), PutFail> {
        if !block {
            return Err(PutFail::Full);
        }
        let moved = || Cursor::unpack(self.cons().load(Ordering::SeqCst)) != seen;
        if before_sleeping(sys::may_spin(), deadline, moved) {
            return Ok(());
        }
        let slept = wait_for_bell(self.word(W_GET_SEQ), self.word(W_PUTTERS), moved, deadline);
        if !slept && !moved() {
            return Err(PutFail::Full);
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Taking

    /// Takes one item: its bytes into `out`, and returns the descriptors it carries.
    pub(crate) fn take(
        &self,
        block: bool,
        deadline: Option<Instant>,
        out: &mut Vec<u8>,
    ) -> Result<Vec<OwnedFd>, TakeFail> {
        let mut spin = block && sys::may_spin();
        loop {
            if let Some(fds) = self.try_take(block, deadline, out)? {
                return Ok(fds);
            }
            if !block {
                return Err(TakeFail::Empty);
            }
            let woke = self.wait_for_items(deadline, spin);
            spin = false;
            if !woke {
                // One last look: an item may have come just as the time ran out.
                return match self.try_take(false, None, out)? {
                    Some(fds) => Ok(fds),
                    None => Err(TakeFail::Empty),
                };
            }
        }
    }

    fn try_take(
        &self,
        block: bool,
        deadline: Option<Instant>,
        out: &mut Vec<u8>,
    ) -> Result<Option<Vec<OwnedFd>>, QueueError> {
        if !self.has_items() {
            return Ok(None);
        }
        let Some(guard) = self.lock(W_GET_LOCK, block, deadline) else {
            return Ok(None);
        };
        let c0 = Cursor::unpack(self.cons().load(Ordering::Relaxed));
        let p = Cursor::unpack(self.prod().load(Ordering::SeqCst));
        if p.items == c0.items {
            return Ok(None);
        }
        let mut c = c0;
        let mut left = Vec::new();
        let mut hops = 0u32;
        let flags = loop {
            let ring = self.ring(|m| &mut m.cons, c.lap)?;
            let h = ring
                .header_at(c.pos)
                .ok_or_else(corrupt_ring)?
                .load(Ordering::Acquire);
            let (len, flags) = (h as u32, (h >> 32) as u32);
            let units = units_for(len as usize);
            if units > ring.units as usize {
                return Err(corrupt_ring());
            }
            hops += 1;
            if hops > 3 {
                return Err(corrupt_ring());
            }
            match flags & 0xff {
                PAD => c.pos = c.pos.wrapping_add(units as u32) & POS_MASK,
                LINK => {
                    if c.lap != 0 {
                        left.push(ring.seg.clone());
                    }
                    c.lap = u8::try_from(len).map_err(|_| corrupt_ring())?;
                    c.pos = 0;
                    if c.lap == 0 {
                        self.forget(|m| &mut m.cons);
                    }
                }
                ITEM => {
                    if flags & FDS != 0 && self.side.is_none() {
                        // Refused before it is taken: a handle with the channel gets it (and
                        // one asleep is woken for it).
                        self.wake_getters();
                        return Err(QueueError::NoDescriptorChannel);
                    }
                    out.clear();
                    out.resize(len as usize, 0);
                    if !ring.seg.map().read(ring.byte(c.pos) + UNIT, out) {
                        return Err(corrupt_ring());
                    }
                    c.pos = c.pos.wrapping_add(units as u32) & POS_MASK;
                    c.items = c.items.wrapping_add(1);
                    break flags;
                }
                _ => return Err(corrupt_ring()),
            }
        };
        self.cons().store(c.pack(), Ordering::SeqCst);
        let fds = if flags & FDS != 0 {
            self.recv_fds(out)
        } else {
            Ok(Vec::new())
        };
        for seg in left {
            // This process moved every consumer past the ring; its name can go (under the
            // lock: a lap's name cannot come round again while it is held).
            let _ = seg.unlink();
        }
        drop(guard);
        self.after_take(p);
        let fds = fds?;
        if flags & FDS != 0 {
            out.drain(..UNIT.min(out.len()));
        }
        if flags & EXTERNAL != 0 {
            *out = External::read(out)?;
        }
        Ok(Some(fds))
    }

    /// Receives the descriptors of the item whose payload begins with their tag; those of
    /// items whose takers died on the way are skipped.
    fn recv_fds(&self, payload: &[u8]) -> Result<Vec<OwnedFd>, QueueError> {
        let side = self.side.as_ref().ok_or(QueueError::NoDescriptorChannel)?;
        let want = payload
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(corrupt_ring)?;
        loop {
            let mut tag = [0u8; 4];
            let mut fds = Vec::new();
            let n = sys::recv_some(side.rx.as_fd(), &mut tag, &mut fds, false).map_err(|e| {
                QueueError::Corrupt(format!("an item's descriptors are missing: {e}"))
            })?;
            let got = u32::from_le_bytes(tag);
            if n != 4 {
                return Err(QueueError::Corrupt("bad descriptor message".into()));
            }
            match got.wrapping_sub(want) as i32 {
                0 => return Ok(fds),
                d if d < 0 => continue,
                _ => {
                    return Err(QueueError::Corrupt(
                        "an item's descriptors are missing".into(),
                    ));
                }
            }
        }
    }

    /// After a take (that saw `prod` as `p`): wakes producers waiting for room, and another
    /// consumer if items remain.
    fn after_take(&self, p: Cursor) {
        ring_bell(self.word(W_GET_SEQ), u32::MAX);
        let c = Cursor::unpack(self.cons().load(Ordering::SeqCst));
        if p.items != c.items {
            self.wake_getters();
        }
    }

    /// Sleeps until an item may be there; false once the deadline has passed.
    fn wait_for_items(&self, deadline: Option<Instant>, spin: bool) -> bool {
        let ready = || self.has_items();
        if before_sleeping(spin, deadline, ready) {
            return true;
        }
        wait_for_bell(self.word(W_PUT_SEQ), self.word(W_GETTERS), ready, deadline)
    }

    // -----------------------------------------------------------------------------------------
    // Joining (JoinableQueue)

    /// Counts one item as done; `false` if every item put is done already.
    pub(crate) fn task_done(&self) -> bool {
        let done = self.word(W_DONE);
        let mut d = done.load(Ordering::SeqCst);
        loop {
            let puts = Cursor::unpack(self.prod().load(Ordering::SeqCst)).items;
            if d == puts {
                return false;
            }
            match done.compare_exchange(d, d.wrapping_add(1), Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => break,
                Err(now) => d = now,
            }
        }
        if self.all_done() && self.word(W_JOINERS).load(Ordering::SeqCst) > 0 {
            self.word(W_DRAINED).fetch_add(1, Ordering::SeqCst);
            sys::futex_wake(self.word(W_DRAINED), u32::MAX);
        }
        true
    }

    fn all_done(&self) -> bool {
        let puts = Cursor::unpack(self.prod().load(Ordering::SeqCst)).items;
        self.word(W_DONE).load(Ordering::SeqCst) == puts
    }

    /// Waits until every item put is done (or was, at some moment since the call); false at
    /// the deadline.
    pub(crate) fn join(&self, timeout: Option<Duration>) -> bool {
        let deadline = deadline_of(timeout);
        let drained = self.word(W_DRAINED);
        let start = drained.load(Ordering::SeqCst);
        loop {
            self.word(W_JOINERS).fetch_add(1, Ordering::SeqCst);
            let done = self.all_done() || drained.load(Ordering::SeqCst) != start;
            let sleep = next_sleep(deadline);
            if !done {
                if let Some(d) = sleep {
                    sys::futex_wait(drained, start, Some(d));
                }
            }
            self.word(W_JOINERS).fetch_sub(1, Ordering::SeqCst);
            if done || drained.load(Ordering::SeqCst) != start || self.all_done() {
                return true;
            }
            if sleep.is_none() {
                return false;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bells: sleeping until the other side has done something
//
// A bell is a futex word: a count of rings in bits 0..31 and, in bit 31, `ARMED`: someone may
// sleep on it. A sleeper counts itself in a sleepers word, arms the bell, checks its condition
// once more, and sleeps on the armed value. A ringer wakes only if it is the one that clears
// `ARMED`, so a burst of puts pays one wake-up, not one each. A woken sleeper that leaves
// others asleep arms the bell again for them. (A sleeper killed in its sleep leaves its
// count behind: that costs one spare wake-up each time a live sleeper wakes, nothing more.)

const ARMED: u32 = 1 << 31;

/// Rings `bell`: wakes `n` sleepers if it was armed.
fn ring_bell(bell: &AtomicU32, n: u32) {
    let rung = bell.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
        (b & ARMED != 0).then(|| (b.wrapping_add(1)) & !ARMED)
    });
    if rung.is_ok() {
        sys::futex_wake(bell, n);
    }
}

/// Sleeps on `bell` (counted in `sleepers`) unless `ready`, until rung or the deadline, in
/// slices of at most [`DEATH_CHECK`](crate::sync::DEATH_CHECK); false if the deadline had
/// passed.
fn wait_for_bell(
    bell: &AtomicU32,
    sleepers: &AtomicU32,
    ready: impl Fn() -> bool,
    deadline: Option<Instant>,
) -> bool {
    let Some(sleep) = next_sleep(deadline) else {
        return false;
    };
    sleepers.fetch_add(1, Ordering::SeqCst);
    let armed = bell.fetch_or(ARMED, Ordering::SeqCst) | ARMED;
    if !ready() {
        // In slices even without a deadline: a woken sleeper killed before it armed the bell
        // again for the others (or a ringer killed between its change and its ring) costs
        // the others at most a slice, never a hang.
        sys::futex_wait(bell, armed, Some(sleep));
    }
    if sleepers.fetch_sub(1, Ordering::SeqCst) > 1 {
        bell.fetch_or(ARMED, Ordering::SeqCst);
    }
    true
}

/// How long a call that must not block waits for a queue's lock.
const LOCK_PATIENCE: Duration = Duration::from_millis(100);

fn corrupt_ring() -> QueueError {
    QueueError::Corrupt("the queue's memory holds a bad record".into())
}

fn write(ring: &RingMem, at: usize, bytes: &[u8]) -> Result<(), QueueError> {
    if ring.seg.map().write(at, bytes) {
        Ok(())
    } else {
        Err(corrupt_ring())
    }
}

/// An item on its way in: its bytes and the descriptors it carries.
struct Outgoing<'a> {
    bytes: &'a [u8],
    fds: &'a [OwnedFd],
}

/// Holds a ring lock; releases it on drop.
struct RingGuard<'a> {
    state: &'a AtomicU32,
}

impl Drop for RingGuard<'_> {
    fn drop(&mut self) {
        RawMutex { state: self.state }.unlock();
    }
}

/// An item kept in a segment of its own; the record holds its length and its name.
struct External {
    seg: Arc<Segment>,
    len: [u8; 8],
}

impl External {
    fn create(bytes: &[u8]) -> Result<Self, QueueError> {
        let seg = segment::create_reserved(None, bytes.len().max(1)).map_err(QueueError::Shm)?;
        seg.map().write(0, bytes);
        Ok(Self {
            seg,
            len: (bytes.len() as u64).to_le_bytes(),
        })
    }

    fn payload(&self) -> (&[u8; 8], &[u8]) {
        (&self.len, self.seg.name().as_bytes())
    }

    fn payload_len(&self) -> usize {
        8 + self.seg.name().len()
    }

    /// The item's bytes, from a record's payload; the segment is unlinked after.
    fn read(payload: &[u8]) -> Result<Vec<u8>, QueueError> {
        let (len, name) = payload.split_at_checked(8).ok_or_else(corrupt_ring)?;
        let len = u64::from_le_bytes(len.try_into().map_err(|_| corrupt_ring())?);
        let name = std::str::from_utf8(name)
            .map_err(|_| corrupt_ring())?
            .to_owned();
        segment::check_name(&name).map_err(QueueError::Shm)?;
        let seg = Segment::attach(&name, segment::Tracking::Tracked).map_err(QueueError::Shm)?;
        let _ = seg.unlink();
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= seg.size())
            .ok_or_else(corrupt_ring)?;
        let mut bytes = vec![0u8; len];
        seg.map().read(0, &mut bytes);
        Ok(bytes)
    }
}

impl From<ShmError> for PutFail {
    fn from(e: ShmError) -> Self {
        Self::Error(QueueError::Shm(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_packs_and_unpacks() {
        let c = Cursor {
            items: 0xdead_beef,
            lap: 200,
            pos: POS_MASK,
        };
        assert_eq!(Cursor::unpack(c.pack()), c);
    }

    #[test]
    fn placement_keeps_one_unit_free_and_wraps_with_a_pad() {
        // An empty ring of 16 units takes at most 15.
        assert_eq!(place(16, 0, 0, 15), Place::Here);
        assert_eq!(place(16, 0, 0, 16), Place::NoRoom);
        // 4 units left before the end, 10 free in all: a record of 5 wraps after a pad of 4.
        assert_eq!(place(16, 12, 6, 5), Place::Wrap { pad: 4 });
        // ... and one of 6 would leave no unit free.
        assert_eq!(place(16, 12, 6, 6), Place::NoRoom);
        // Exactly to the end.
        assert_eq!(place(16, 12, 6, 4), Place::Here);
        // Positions wrap at 2^24.
        assert_eq!(place(16, 2, POS_MASK - 1, 3), Place::Here);
    }

    #[test]
    fn placement_never_overruns_the_tail() {
        // Every (head, tail, need) in a small ring: what it places ends before the tail.
        let units = 8;
        for tail in 0..32u32 {
            for used in 0..units {
                let head = tail + used;
                for need in 1..=units + 1 {
                    let end = match place(units, head, tail, need) {
                        Place::Here => head + need,
                        Place::Wrap { pad } => head + pad + need,
                        Place::NoRoom => continue,
                    };
                    assert!(end - tail < units, "{head} {tail} {need}");
                }
            }
        }
    }
}
