//! The OS layer: every system call multiproc makes goes through here.
//!
//! # Contract
//!
//! The rest of the crate sees only the items re-exported below, and relies on these promises:
//!
//! - **Descriptors** are `OwnedFd` / `BorrowedFd`, always opened close-on-exec. The one
//!   descriptor a spawned child inherits across `exec` is its channel, as its standard input
//!   ([`SpawnCommand::channel_as_stdin`]); nothing else crosses.
//! - **Processes** are named by a [`Pid`] *and* a pidfd: signals go through the pidfd
//!   ([`send_signal`]), so a recycled pid can never be hit. [`reap_nohang`] collects the exit
//!   status of a child once, without blocking.
//! - **Waiting** is [`poll_fds`] with an optional [`Duration`]; `EINTR` is retried inside with
//!   the remaining time, so callers see either readiness, a timeout, or a real error.
//! - **Channels** between a parent and a child are `AF_UNIX` stream socket pairs carrying
//!   length-prefixed frames with optional descriptors ([`send_frame`], [`FrameReader`]).
//! - **Sockets** for connections (`linux/net.rs`): [`send_all`] sends a message's parts with
//!   descriptors on its first byte, with an optional deadline whatever the socket's mode;
//!   [`recv_some`] receives and collects descriptors; [`claim_fds`] gives each message the
//!   descriptors that came with it (channel frames use the same three). [`listen`],
//!   [`accept`] and [`connect`] cover Unix paths, abstract names and TCP, with deadlines.
//! - **Shared memory** (`linux/shm.rs`): POSIX shared memory objects by name ([`shm_create`]
//!   creates exclusively, mode 0600), whole-object shared [`Mapping`]s that unmap on drop and
//!   hand out only bounds- and alignment-checked atomics, copies, or `unsafe` slices;
//!   [`futex_wait`] / [`futex_wake`] on shared (never private) futex words; [`caller`] gives
//!   the pid and tid a lock records (cached per thread, refreshed after any fork);
//!   [`process_alive`] tells a lock's waiter whether its owner still exists.
//! - **Process control** that is unsafe by nature (`fork`, `_exit`, `atexit`, editing the
//!   environment) is wrapped here with its preconditions written down; callers outside this
//!   module never write `unsafe` for it, except the one `fork` call site in `start/fork.rs`.
//!
//! Linux is the implementation that exists and is tested (`linux.rs`). Another OS plugs in by
//! providing the same items under its own `cfg`.

mod linux;

pub(crate) use linux::*;
