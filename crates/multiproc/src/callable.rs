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

use crate::codec;
use crate::sys;

/// What a runner returns: the encoded result of the target, or why it could not run.
pub(crate) type RunResult = Result<Vec<u8>, RunError>;

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
    codec::encode(&result).map_err(|e| RunError::EncodeResult(e.to_string()))
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
    Ok(Vec::new())
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
