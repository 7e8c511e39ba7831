//! Shared memory: [`SharedMemory`] (CPython's `multiprocessing.shared_memory`), and the
//! segments under every shared object of this crate.
//!
//! **Nothing leaks.** A segment this program creates is unlinked when the last process of the
//! program that uses it lets go of it, however that process ends (SIGKILL included, the main
//! process included): a small tracker process counts who holds what (see `tracker.rs` for the
//! protocol). Attaching to a segment by name never makes its removal the attacher's business
//! (unlike CPython, gh-82300), and nothing is printed at exit. A segment meant to outlive the
//! program is created [untracked](SharedMemoryBuilder::untracked).
//!
//! # Safety
//!
//! This file opts in to `unsafe` for [`SharedMemory::as_slice`] and
//! [`SharedMemory::as_mut_slice`], `unsafe fn`s whose callers promise what the borrow checker
//! cannot see across processes.
#![allow(unsafe_code)]

use std::fmt;
use std::io;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod array;
pub(crate) mod segment;
mod shareable_list;
pub(crate) mod tracker;
mod value;
pub use array::{Array, ArrayError, ArrayGuard, ArrayLockError, RawArray};
pub use shareable_list::{ListError, ListItem, ShareableList};
pub use value::{
    AtomicElement, AtomicNumber, Element, RawValue, Value, ValueGuard, ValueLock, ValueLockGuard,
};

use segment::{Segment, Tracking};

/// What can go wrong making, finding or using shared memory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShmError {
    /// No shared memory has this name.
    #[error("No such file or directory: '{0}'")]
    NotFound(String),
    /// A segment with this name exists already.
    #[error("File exists: '{0}'")]
    Exists(String),
    /// Not a name `shm_open` accepts (empty, too long, or with a `/` inside).
    #[error("invalid shared memory name: {0:?}")]
    InvalidName(String),
    /// CPython's message for a size of zero.
    #[error("'size' must be a positive number different from zero")]
    ZeroSize,
    /// A read or write past the end.
    #[error("range {offset}..{end} is outside the {size} bytes of shared memory")]
    OutOfBounds {
        /// First byte asked for.
        offset: usize,
        /// One past the last byte asked for.
        end: usize,
        /// The segment's size.
        size: usize,
    },
    /// The segment holds another kind of object (or another element type) than the one
    /// that decoded it.
    #[error("shared memory {0:?} holds another kind of object")]
    WrongKind(String),
    /// The tracker, which unlinks what the program leaves behind, could not be reached or
    /// started (a program must call [`init`](crate::init) or use `#[multiproc::main]` first).
    #[error("the shared memory tracker is unavailable: {0}")]
    Tracker(#[source] io::Error),
    /// The operating system refused.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A block of memory shared between processes, by name: CPython's
/// `multiprocessing.shared_memory.SharedMemory`, compatible with it both ways (a Python
/// process attaches to `name()`, and this attaches to Python's).
///
/// Created with a generated name (`psm_` and 8 hex digits, as CPython) or a given one.
/// Cloning gives another handle to the same memory. It can be a Process argument or part of
/// any message, and the other side maps the same memory.
///
/// **Lifetime.** Made here and tracked (the default), the segment is unlinked when the last
/// process of this program holding a handle drops it, whatever killed that process; call
/// [`unlink`](Self::unlink) to remove the name earlier. Attached by name, it is never removed
/// on your behalf. [Untracked](SharedMemoryBuilder::untracked) segments stay until someone
/// unlinks them.
///
/// # Examples
///
/// ```
/// use multiproc::SharedMemory;
/// # multiproc::init();
/// let shm = SharedMemory::create(16)?;
/// shm.write(0, b"hello")?;
/// let other = SharedMemory::attach(shm.name())?;
/// let mut buf = [0u8; 5];
/// other.read(0, &mut buf)?;
/// assert_eq!(&buf, b"hello");
/// assert!(shm.name().starts_with("psm_"));
/// # Ok::<(), multiproc::ShmError>(())
/// ```
#[derive(Clone)]
pub struct SharedMemory {
    seg: Arc<Segment>,
}

impl fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemory")
            .field("name", &self.name())
            .field("size", &self.size())
            .finish()
    }
}

/// Options for creating a [`SharedMemory`].
///
/// # Examples
///
/// ```
/// use multiproc::SharedMemory;
/// # multiproc::init();
/// let name = format!("doc_builder_{}", std::process::id());
/// let shm = SharedMemory::builder().name(&name).size(4096).untracked().create()?;
/// assert_eq!(shm.name(), name);
/// shm.unlink()?; // untracked: removing the name is ours to do
/// # Ok::<(), multiproc::ShmError>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct SharedMemoryBuilder {
    name: Option<String>,
    size: usize,
    untracked: bool,
}

impl SharedMemoryBuilder {
    /// The name to create (without a leading `/`); by default `psm_` and 8 random hex digits.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.trim_start_matches('/').to_owned());
        self
    }

    /// The size in bytes (required, non-zero).
    pub fn size(mut self, size: usize) -> Self {
        self.size = size;
        self
    }

    /// Never unlink this segment automatically: it outlives the program until someone calls
    /// [`SharedMemory::unlink`] (or removes it from `/dev/shm`).
    pub fn untracked(mut self) -> Self {
        self.untracked = true;
        self
    }

    /// Creates the segment, zero-filled.
    ///
    /// # Errors
    ///
    /// [`ShmError::Exists`] if the given name exists, [`ShmError::ZeroSize`],
    /// [`ShmError::InvalidName`], [`ShmError::Tracker`] if a tracked segment cannot be
    /// registered, or the OS's error.
    pub fn create(self) -> Result<SharedMemory, ShmError> {
        let tracking = if self.untracked {
            Tracking::Untracked
        } else {
            Tracking::Tracked
        };
        let seg = Segment::create(self.name.as_deref(), "psm_", 8, self.size, tracking)?;
        Ok(SharedMemory { seg })
    }
}

impl SharedMemory {
    /// Creates a tracked segment of `size` bytes with a generated name.
    ///
    /// # Errors
    ///
    /// As [`SharedMemoryBuilder::create`].
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let shm = multiproc::SharedMemory::create(100)?;
    /// assert_eq!(shm.size(), 100);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn create(size: usize) -> Result<Self, ShmError> {
        Self::builder().size(size).create()
    }

    /// Creates a tracked segment named `name`.
    ///
    /// # Errors
    ///
    /// As [`SharedMemoryBuilder::create`].
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let name = format!("doc_named_{}", std::process::id());
    /// let shm = multiproc::SharedMemory::create_named(&name, 64)?;
    /// assert!(matches!(
    ///     multiproc::SharedMemory::create_named(&name, 64),
    ///     Err(multiproc::ShmError::Exists(_))
    /// ));
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn create_named(name: &str, size: usize) -> Result<Self, ShmError> {
        Self::builder().name(name).size(size).create()
    }

    /// Options for creating one.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let shm = multiproc::SharedMemory::builder().size(8).create()?;
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn builder() -> SharedMemoryBuilder {
        SharedMemoryBuilder::default()
    }

    /// Attaches to the existing segment `name` (with or without a leading `/`), whoever made
    /// it (this program, CPython, anyone). Attaching never makes this process's exit remove
    /// it.
    ///
    /// # Errors
    ///
    /// [`ShmError::NotFound`], [`ShmError::InvalidName`], or the OS's error.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// assert!(matches!(
    ///     multiproc::SharedMemory::attach("psm_no_such_segment"),
    ///     Err(multiproc::ShmError::NotFound(_))
    /// ));
    /// ```
    pub fn attach(name: &str) -> Result<Self, ShmError> {
        let seg = Segment::attach(name.trim_start_matches('/'), Tracking::Tracked)?;
        Ok(Self { seg })
    }

    /// The name, without a leading `/` (as CPython shows it).
    pub fn name(&self) -> &str {
        self.seg.name()
    }

    /// The size in bytes.
    pub fn size(&self) -> usize {
        self.seg.size()
    }

    fn range(&self, offset: usize, len: usize) -> Result<(), ShmError> {
        let end = offset.checked_add(len);
        match end {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(ShmError::OutOfBounds {
                offset,
                end: end.unwrap_or(usize::MAX),
                size: self.size(),
            }),
        }
    }

    /// Copies `buf.len()` bytes starting at `offset` into `buf`.
    ///
    /// # Errors
    ///
    /// [`ShmError::OutOfBounds`] past the end.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let shm = multiproc::SharedMemory::create(4)?;
    /// let mut buf = [1u8; 4];
    /// shm.read(0, &mut buf)?;
    /// assert_eq!(buf, [0; 4]);
    /// assert!(shm.read(2, &mut buf).is_err());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), ShmError> {
        self.range(offset, buf.len())?;
        self.seg.map().read(offset, buf);
        Ok(())
    }

    /// Copies `data` into the segment at `offset`.
    ///
    /// # Errors
    ///
    /// [`ShmError::OutOfBounds`] past the end.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let shm = multiproc::SharedMemory::create(4)?;
    /// shm.write(1, &[7, 8])?;
    /// assert_eq!(shm.to_vec(), [0, 7, 8, 0]);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), ShmError> {
        self.range(offset, data.len())?;
        self.seg.map().write(offset, data);
        Ok(())
    }

    /// A copy of all the bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let shm = multiproc::SharedMemory::create(3)?;
    /// assert_eq!(shm.to_vec(), [0, 0, 0]);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.size()];
        self.seg.map().read(0, &mut v);
        v
    }

    /// The first byte, for code that manages its own synchronisation.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let shm = multiproc::SharedMemory::create(8)?;
    /// assert!(!shm.as_ptr().is_null());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn as_ptr(&self) -> *mut u8 {
        self.seg.map().as_ptr()
    }

    /// The bytes, borrowed (CPython's `buf`).
    ///
    /// # Safety
    ///
    /// No process (this one included) may write the segment while the slice lives, since
    /// Rust assumes borrowed bytes do not change. Use [`read`](Self::read) otherwise.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let shm = multiproc::SharedMemory::create(2)?;
    /// shm.write(0, &[1, 2])?;
    /// // SAFETY: no one else knows this segment yet.
    /// assert_eq!(unsafe { shm.as_slice() }, &[1, 2]);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the whole mapping; the caller promises no one writes it meanwhile.
        unsafe { self.seg.map().slice(0, self.size()) }.unwrap_or(&[])
    }

    /// The bytes, mutably borrowed (CPython's `buf`, written).
    ///
    /// # Safety
    ///
    /// No other handle, in this process or another, may read or write the segment while the
    /// slice lives (hold a [`Lock`](crate::Lock) around it, say).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let shm = multiproc::SharedMemory::create(2)?;
    /// // SAFETY: no one else knows this segment yet.
    /// unsafe { shm.as_mut_slice() }.copy_from_slice(&[3, 4]);
    /// assert_eq!(shm.to_vec(), [3, 4]);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    #[allow(clippy::mut_from_ref)] // shared memory: exclusivity is the caller's promise
    pub unsafe fn as_mut_slice(&self) -> &mut [u8] {
        // SAFETY: the whole mapping; the caller promises exclusive access meanwhile.
        unsafe { self.seg.map().slice_mut(0, self.size()) }.unwrap_or(&mut [])
    }

    /// Lets go of this handle (as dropping it does). CPython's `close()`.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let shm = multiproc::SharedMemory::create(8)?;
    /// shm.close();
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn close(self) {}

    /// Removes the name now: nobody can attach any more, and memory already mapped stays
    /// valid until its handles are dropped. CPython's `unlink()`.
    ///
    /// # Errors
    ///
    /// [`ShmError::NotFound`] if the name is already gone.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let shm = multiproc::SharedMemory::create(8)?;
    /// shm.unlink()?;
    /// assert!(multiproc::SharedMemory::attach(shm.name()).is_err());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn unlink(&self) -> Result<(), ShmError> {
        self.seg.unlink()
    }
}

impl Serialize for SharedMemory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.seg.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SharedMemory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self {
            seg: segment::deserialize_segment(d)?,
        })
    }
}
