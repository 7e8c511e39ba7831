//! How a child finds the function it must run.
//!
//! # Safety
//!
//! This file opts in to `unsafe` for one thing: turning a code address received from the
//! parent back into a function pointer. It is sound only when the child runs the very same
//! executable image as the parent, so before any address is used:
//!
//! 1. the child compares its **build identity** (the ELF GNU build-id, or a SHA-256 of the
//!    executable file when there is none) with the parent's, and refuses on any difference;
//! 2. the address is rebuilt as `anchor + offset`, where `anchor` is the address of a function
//!    in this crate and the offset was computed the same way in the parent, so ASLR cancels;
//! 3. the result must fall inside the executable's own mapped image.
//!
//! The pair sent is a *runner* (a monomorphised `run_target::<A, R>`, whose type is fixed:
//! [`Runner`]) and the *target* (`fn(A) -> R`); only the runner, which knows `A` and `R`,
//! turns the target address back into its real type. Messages carrying these addresses come
//! only from an authenticated peer: an inherited socket from the parent itself, or a
//! forkserver connection that proved it holds the program's authkey.

#![allow(unsafe_code)]

use std::os::fd::OwnedFd;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::codec::{self, Codec};
use crate::shm::segment::{Segment, Transit};
use crate::sys;

/// What a runner returns: the encoded result of the target, or why it could not run.
/// The encoded result, and the transits of the tracked segments in it (which the parent
/// takes back if it never decodes the result: see `Segment::take_back_transits`).
pub(crate) type RunResult = Result<(Vec<u8>, Vec<Transit>), RunError>;

/// The type-erased entry every target is called through.
pub(crate) type Runner = fn(usize, &[u8], Vec<OwnedFd>) -> RunResult;

/// Why a target could not run or its result could not be sent.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
pub(crate) enum RunError {
    #[error("the child could not decode its arguments: {0}")]
    DecodeArgs(String),
    #[error("the child could not encode its result: {0}")]
    EncodeResult(String),
}

/// A function the child will run: a runner that knows the types, and the target itself.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Callable {
    runner: Runner,
    target: usize,
}

/// A [`Callable`] as it travels to another process: offsets from the anchor.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct CallableSpec {
    runner: u64,
    target: u64,
}

/// Why a [`CallableSpec`] was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum CallableError {
    #[error(
        "the function at {0:#x} is not in the program's executable image (a function from a shared library cannot be started in another process)"
    )]
    OutsideImage(usize),
    #[error("cannot locate the executable image: {0}")]
    NoImage(String),
}

/// The fixed point offsets are measured from. Never inlined, so it has an address.
#[inline(never)]
fn anchor() -> usize {
    anchor as fn() -> usize as usize
}

/// The running executable's ELF facts, read once.
fn exe_image() -> &'static Result<sys::ExeImage, String> {
    static IMAGE: OnceLock<Result<sys::ExeImage, String>> = OnceLock::new();
    IMAGE.get_or_init(|| sys::exe_image().map_err(|e| e.to_string()))
}

/// The `[start, end)` range of the executable's mapped image.
fn image_range() -> Result<(usize, usize), CallableError> {
    match exe_image() {
        Ok(sys::ExeImage { range: Some(r), .. }) if (r.0..r.1).contains(&anchor()) => Ok(*r),
        Ok(_) => Err(CallableError::NoImage(
            "no program headers for the executable".to_owned(),
        )),
        Err(e) => Err(CallableError::NoImage(e.clone())),
    }
}

fn check_in_image(addr: usize) -> Result<(), CallableError> {
    let (lo, hi) = image_range()?;
    if (lo..hi).contains(&addr) {
        Ok(())
    } else {
        Err(CallableError::OutsideImage(addr))
    }
}

/// Decodes the arguments, calls the target, encodes its result.
fn run_target<A: DeserializeOwned, R: Serialize>(
    target: usize,
    args: &[u8],
    fds: Vec<OwnedFd>,
) -> RunResult {
    // SAFETY:
    // - `target` was produced by `Callable::new::<A, R>` from a `fn(A) -> R` (in this process,
    //   or in an identical image, checked by build identity and rebuilt from the same anchor),
    //   and this very monomorphisation is the runner that was paired with it, so the pointer
    //   has exactly the type `fn(A) -> R`;
    // - function pointers and `usize` have the same size on every supported target.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(target) };
    let args: A = codec::fds::decoding(fds, || trusted_decoding(|| codec::decode(args)))
        .map_err(|e| RunError::DecodeArgs(e.to_string()))?;
    let result = f(args);
    // Shared objects in the result travel by name (the report carries no descriptors).
    let (encoded, transits) = codec::fds::encoding_without_fds(|| codec::encode(&result));
    match encoded {
        Ok(bytes) => Ok((bytes, transits)),
        Err(e) => {
            Segment::take_back_transits(&transits);
            Err(RunError::EncodeResult(e.to_string()))
        }
    }
}

fn noop() {}

thread_local! {
    static TRUSTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (which decodes a Process's arguments, sent by this program's own parent after
/// the build identity was checked) with code offsets allowed in what it decodes.
fn trusted_decoding<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            TRUSTED.with(|t| t.set(self.0));
        }
    }
    let _restore = Restore(TRUSTED.with(|t| t.replace(true)));
    f()
}

/// Whether the value being decoded comes from a trusted source (see [`trusted_decoding`]):
/// only then may it carry code (a Barrier's action). Anything else, a message from a peer
/// or bytes from a file, could name any address in the executable.
pub(crate) fn in_trusted_decoding() -> bool {
    TRUSTED.with(std::cell::Cell::get)
}

/// Calls a plain `fn()` (a Barrier's action).
fn run_action(target: usize, _args: &[u8], _fds: Vec<OwnedFd>) -> RunResult {
    // SAFETY:
    // - `target` was produced by `Callable::action` from a `fn()` (here, or in an identical
    //   image: the caller checks the build identity), paired with this runner only;
    // - function pointers and `usize` have the same size on every supported target.
    let f = unsafe { std::mem::transmute::<usize, fn()>(target) };
    f();
    Ok((Vec::new(), Vec::new()))
}

impl Callable {
    /// Wraps a plain action (no arguments, no result).
    pub(crate) fn action(f: fn()) -> Self {
        Self {
            runner: run_action,
            target: f as usize,
        }
    }

    /// The plain action this wraps, if it was made by [`Callable::action`].
    pub(crate) fn as_action(&self) -> fn() {
        if std::ptr::eq(self.runner as *const (), run_action as *const ()) {
            // SAFETY:
            // - the runner is `run_action`, which is only ever paired with a `fn()` target
            //   (see `Callable::action`); pointers and `usize` have the same size.
            unsafe { std::mem::transmute::<usize, fn()>(self.target) }
        } else {
            noop
        }
    }

    /// Wraps a target; the types travel in the runner.
    pub(crate) fn new<A: DeserializeOwned, R: Serialize>(f: fn(A) -> R) -> Self {
        Self {
            runner: run_target::<A, R>,
            target: f as usize,
        }
    }

    /// Runs it here.
    pub(crate) fn call(&self, args: &[u8], fds: Vec<OwnedFd>) -> RunResult {
        (self.runner)(self.target, args, fds)
    }

    /// The form that crosses to another process.
    pub(crate) fn to_spec(self) -> Result<CallableSpec, CallableError> {
        let base = anchor();
        let runner = self.runner as usize;
        check_in_image(runner)?;
        check_in_image(self.target)?;
        Ok(CallableSpec {
            runner: runner.wrapping_sub(base) as u64,
            target: self.target.wrapping_sub(base) as u64,
        })
    }

    /// Rebuilds a callable received from the parent.
    ///
    /// The caller must have checked that the parent's build identity equals
    /// [`build_identity`] (the bootstrap does so before calling this).
    pub(crate) fn from_spec(spec: CallableSpec) -> Result<Self, CallableError> {
        let base = anchor();
        let runner = base.wrapping_add(spec.runner as usize);
        let target = base.wrapping_add(spec.target as usize);
        check_in_image(runner)?;
        check_in_image(target)?;
        // SAFETY:
        // - the parent computed `spec.runner` as (address of a `Runner`) - anchor in an image
        //   with the same build identity as ours (checked by the caller), so adding our anchor
        //   gives the address of that same function here, which has type `Runner`;
        // - the address lies inside our executable image (checked just above).
        let runner = unsafe { std::mem::transmute::<usize, Runner>(runner) };
        Ok(Self { runner, target })
    }
}

// ---------------------------------------------------------------------------------------------
// Pool tasks

/// A function a pool worker can run on a batch of items: `fn(A) -> R` and `fn(A, B) -> R`
/// (whose items are pairs, for `starmap`). Implemented only for function pointers, so a value
/// of it is always a code address.
pub trait TaskFn: Copy + Send + Sync + 'static + sealed::Sealed {
    /// One item of input.
    type Item: Serialize + DeserializeOwned;
    /// What the function returns for one item.
    type Output: Serialize + DeserializeOwned;
    /// Calls the function on one item.
    fn call_item(self, item: Self::Item) -> Self::Output;
}

mod sealed {
    pub trait Sealed {}
    impl<A, R> Sealed for fn(A) -> R {}
    impl<A, B, R> Sealed for fn(A, B) -> R {}
    pub trait SealedState {}
    impl<S, A, R> SealedState for fn(&mut S, A) -> R {}
}

/// A pool task that also gets its worker's state: `fn(&mut S, A) -> R`, where `S` is what
/// the pool's [`worker_state`](crate::PoolBuilder::worker_state) function made in that
/// worker.
pub trait StateTaskFn: Copy + Send + Sync + 'static + sealed::SealedState {
    /// The worker state it uses.
    type State: 'static;
    /// One item of input.
    type Item: Serialize + DeserializeOwned;
    /// What the function returns for one item.
    type Output: Serialize + DeserializeOwned;
    /// Calls the function on the state and one item.
    fn call_with(self, state: &mut Self::State, item: Self::Item) -> Self::Output;
}

impl<S, A, R> StateTaskFn for fn(&mut S, A) -> R
where
    S: 'static,
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    type State = S;
    type Item = A;
    type Output = R;
    fn call_with(self, state: &mut S, item: A) -> R {
        self(state, item)
    }
}

impl<A, R> TaskFn for fn(A) -> R
where
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    type Item = A;
    type Output = R;
    fn call_item(self, item: A) -> R {
        self(item)
    }
}

impl<A, B, R> TaskFn for fn(A, B) -> R
where
    A: Serialize + DeserializeOwned + 'static,
    B: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    type Item = (A, B);
    type Output = R;
    fn call_item(self, (a, b): (A, B)) -> R {
        self(a, b)
    }
}

/// How one item of a task ended, as the first byte of its entry in the task's output (when
/// some item panicked; when none did, the output is just the sequence of values).
pub(crate) const ITEM_RETURNED: u8 = 0;
/// The item panicked: a postcard `(message, Option<location>)` follows.
pub(crate) const ITEM_PANICKED: u8 = 1;

/// The type-erased entry of a pool task: decodes a `Vec` of items, calls the target on each
/// (catching a panic per item), and appends one entry per item to `out`; returns the
/// descriptors the results hold.
pub(crate) type TaskRunner = fn(usize, &[u8], Vec<OwnedFd>, &mut Vec<u8>) -> TaskRun;

/// What a task runner returns: the descriptors of the results, or why nothing ran.
pub(crate) type TaskRun = Result<TaskRunOk, RunError>;

/// What a task's run produced besides the entries.
pub(crate) struct TaskRunOk {
    /// The descriptors the results hold.
    pub(crate) fds: Vec<OwnedFd>,
    /// The shared objects the results name (in transit until the pool decodes them).
    pub(crate) by_name: Vec<Transit>,
    /// Some item panicked.
    pub(crate) panicked: bool,
}

fn run_items<F: TaskFn>(
    target: usize,
    args: &[u8],
    fds: Vec<OwnedFd>,
    out: &mut Vec<u8>,
) -> TaskRun {
    // SAFETY:
    // - `target` was produced by `TaskCallable::new::<F>` from a value of `F` (in this
    //   process, or in the parent, an identical image: the worker's bootstrap checked the build
    //   identity, and the address was rebuilt from the same anchor), and this monomorphisation
    //   is the runner paired with it, so the address is a function of exactly the type `F`;
    // - `F` is a function pointer type (`TaskFn` is sealed), the size of `usize`.
    let f = unsafe { std::mem::transmute_copy::<usize, F>(&target) };
    run_each(args, fds, out, |item| f.call_item(item))
}

fn run_items_with_state<F: StateTaskFn>(
    target: usize,
    args: &[u8],
    fds: Vec<OwnedFd>,
    out: &mut Vec<u8>,
) -> TaskRun {
    // SAFETY:
    // - as in `run_items`: `target` was made by `TaskCallable::with_state::<F>` from a value of
    //   `F`, paired with this very runner; `F` is a function pointer type (`StateTaskFn` is
    //   sealed), the size of `usize`.
    let f = unsafe { std::mem::transmute_copy::<usize, F>(&target) };
    run_each(args, fds, out, |item| {
        crate::pool::with_worker_state::<F::State, _>(|state| f.call_with(state, item))
    })
}

/// Decodes the items, calls `call` on each (catching a panic per item), appends the entries.
fn run_each<T: DeserializeOwned, R: Serialize>(
    args: &[u8],
    fds: Vec<OwnedFd>,
    out: &mut Vec<u8>,
    call: impl Fn(T) -> R,
) -> TaskRun {
    let items: Vec<T> = codec::fds::decoding(fds, || trusted_decoding(|| codec::decode(args)))
        .map_err(|e| RunError::DecodeArgs(e.to_string()))?;
    // One `catch_unwind` for a run of items, not one per item: a panic ends the run, is
    // recorded with its item's place, and the next run starts after it. Values and panics
    // are kept apart, so the values stay as compact as `R` (fresh pages cost).
    let mut values: Vec<R> = Vec::with_capacity(items.len());
    let mut panics: Vec<(usize, (String, Option<String>))> = Vec::new();
    let mut items = items.into_iter();
    loop {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for item in items.by_ref() {
                values.push(call(item));
            }
        }));
        match run {
            Ok(()) => break,
            Err(payload) => {
                let at = values.len() + panics.len();
                panics.push((at, crate::bootstrap::caught_panic(payload)));
            }
        }
    }
    let panicked = !panics.is_empty();
    let (encoded, fds, by_name) = codec::fds::encoding_segments_by_name(|| {
        if !panicked {
            // The usual case, in one go: the values as one postcard sequence.
            return codec::Postcard::encode(&values, out);
        }
        let mut values = values.iter();
        let mut panics = panics.iter().peekable();
        for at in 0.. {
            match panics.next_if(|(p, _)| *p == at) {
                Some((_, panic)) => {
                    out.push(ITEM_PANICKED);
                    codec::Postcard::encode(panic, out)?;
                }
                None => match values.next() {
                    Some(v) => {
                        out.push(ITEM_RETURNED);
                        codec::Postcard::encode(v, out)?;
                    }
                    None => break,
                },
            }
        }
        Ok::<(), codec::CodecError>(())
    });
    match encoded {
        Ok(()) => Ok(TaskRunOk {
            fds,
            by_name,
            panicked,
        }),
        Err(e) => Err(RunError::EncodeResult(e.to_string())),
    }
}

/// A pool task's function: its runner and its address.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TaskCallable {
    runner: TaskRunner,
    target: usize,
}

impl TaskCallable {
    /// Wraps a task function; the types travel in the runner.
    pub(crate) fn new<F: TaskFn>(f: F) -> Self {
        // SAFETY:
        // - `F` is a function pointer type (sealed), as large as `usize`: copying its bits
        //   gives the code address.
        let target = unsafe { std::mem::transmute_copy::<F, usize>(&f) };
        Self {
            runner: run_items::<F>,
            target,
        }
    }

    /// Wraps a task function that uses its worker's state.
    pub(crate) fn with_state<F: StateTaskFn>(f: F) -> Self {
        // SAFETY:
        // - `F` is a function pointer type (sealed), as large as `usize`.
        let target = unsafe { std::mem::transmute_copy::<F, usize>(&f) };
        Self {
            runner: run_items_with_state::<F>,
            target,
        }
    }

    /// Runs it here on encoded items, appending the entries to `out`.
    pub(crate) fn call(&self, args: &[u8], fds: Vec<OwnedFd>, out: &mut Vec<u8>) -> TaskRun {
        (self.runner)(self.target, args, fds, out)
    }

    /// The offsets that cross to a worker: `(runner, target)`.
    pub(crate) fn to_offsets(self) -> Result<(u64, u64), CallableError> {
        let base = anchor();
        let runner = self.runner as usize;
        check_in_image(runner)?;
        check_in_image(self.target)?;
        Ok((
            runner.wrapping_sub(base) as u64,
            self.target.wrapping_sub(base) as u64,
        ))
    }

    /// Rebuilds a task function from offsets its pool sent.
    ///
    /// Only a pool worker calls this, on offsets read from its own task queue, which only
    /// its parent (whose build identity the worker's bootstrap checked) writes.
    pub(crate) fn from_offsets(runner: u64, target: u64) -> Result<Self, CallableError> {
        let base = anchor();
        let runner = base.wrapping_add(runner as usize);
        let target = base.wrapping_add(target as usize);
        check_in_image(runner)?;
        check_in_image(target)?;
        // SAFETY:
        // - the pool computed the runner offset as (address of a `TaskRunner`) - anchor in an
        //   image with our build identity (checked by the worker's bootstrap), so adding our
        //   anchor gives that same function here, of type `TaskRunner`;
        // - the address lies inside our executable image (checked just above).
        let runner = unsafe { std::mem::transmute::<usize, TaskRunner>(runner) };
        Ok(Self { runner, target })
    }
}

/// A function that travels inside a Process's arguments (a pool worker's initializer): as an
/// offset from the anchor, rebuilt only while the arguments of this very process are decoded
/// (after the bootstrap compared build identities), never from any other source.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TrustedFn<F: FnPtr>(pub(crate) F);

/// A plain function pointer `fn(A) -> R`, whatever its types.
pub(crate) trait FnPtr: Copy + 'static + sealed::Sealed {}

impl<A: 'static, R: 'static> FnPtr for fn(A) -> R {}

impl<F: FnPtr> Serialize for TrustedFn<F> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // SAFETY:
        // - `F` is a function pointer type (sealed), as large as `usize`.
        let addr = unsafe { std::mem::transmute_copy::<F, usize>(&self.0) };
        check_in_image(addr).map_err(crate::codec::ser_error)?;
        s.serialize_u64(addr.wrapping_sub(anchor()) as u64)
    }
}

impl<'de, F: FnPtr> Deserialize<'de> for TrustedFn<F> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let offset = u64::deserialize(d)?;
        if !in_trusted_decoding() {
            return Err(crate::codec::de_error(
                "a function can reach another process only as a Process argument",
            ));
        }
        let addr = anchor().wrapping_add(offset as usize);
        check_in_image(addr).map_err(crate::codec::de_error)?;
        // SAFETY:
        // - we decode a Process's arguments from its parent (trusted decoding), whose image
        //   has our build identity (the bootstrap compared them); the parent serialized this
        //   field, of this same type `TrustedFn<F>`, from a value of `F`, as its offset from
        //   the same anchor: the address is a function of type `F` here too;
        // - the address lies inside our executable image (checked just above);
        // - `F` is a function pointer type (sealed), as large as `usize`.
        Ok(Self(unsafe { std::mem::transmute_copy::<usize, F>(&addr) }))
    }
}

/// This executable's build identity: its GNU build-id, or a SHA-256 of the file.
///
/// Computed once per process. Two processes may exchange code offsets only if their
/// identities are equal.
pub(crate) fn build_identity() -> &'static [u8] {
    static ID: OnceLock<Vec<u8>> = OnceLock::new();
    ID.get_or_init(|| match exe_image() {
        Ok(sys::ExeImage {
            build_id: Some(id), ..
        }) => id.clone(),
        _ => {
            use sha2::Digest;
            match std::fs::read(sys::self_exe()) {
                Ok(bytes) => sha2::Sha256::digest(&bytes).to_vec(),
                // Unreadable executable: an identity no other process can match.
                Err(_) => sys::random_bytes::<32>().to_vec(),
            }
        }
    })
}

/// Computes what this file computes once per process, so that a fork child never waits on a
/// one-time initialisation another thread of its parent had under way at the fork.
pub(crate) fn prepare_for_fork() {
    let _ = build_identity();
    let _ = exe_image();
}

/// Renders an identity for error messages.
pub(crate) fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}
