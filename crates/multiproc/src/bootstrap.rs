//! How a child starts: the start-up hook, the messages between parent and child, and the
//! child's life from its first instruction to `_exit`.
//!
//! # The hook
//!
//! `spawn` and `forkserver` run the program's own executable again, so the child begins in
//! `main`. The first thing `main` does is call [`init`] (or carry `#[multiproc::main]`): in the
//! main process it only records that the hook exists and returns; in a child it finds the
//! environment variable `MULTIPROC_BOOTSTRAP` naming an inherited socket, reads its
//! instructions from the parent on it, runs them and exits — it never returns into `main`.
//!
//! A parent refuses to spawn when its own `main` never called the hook: the child would run
//! the same `main`, never reach the hook either, and redo the parent's work. The refusal is
//! immediate and names the fix. A child that reaches multiproc without the hook having taken
//! its instructions (the hook was called too late) reports that to the parent and exits.
//!
//! In a test binary there is no `main` of the user's: `#[multiproc::test]` makes the test
//! function the hook, and the child is started as `<test binary> --exact <that test>
//! --nocapture`, with libtest's own banner sent to /dev/null and the real standard output
//! handed over on the socket.
//!
//! # The messages
//!
//! Parent to child, once: [`Bootstrap`]. Child (or the forkserver) to parent: [`Report`]s, at
//! most a few small frames; a large result travels in a memfd whose descriptor rides along.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::callable::{self, Callable, CallableSpec};
use crate::codec;
use crate::context::StartMethod;
use crate::process::{registry, tree};
use crate::shm::segment::Transit;
use crate::start::forkserver::{self, ServerAddr};
use crate::sys;

/// The environment variable naming a child's inherited socket.
pub(crate) const ENV_BOOTSTRAP: &str = "MULTIPROC_BOOTSTRAP";

/// How long a child waits for its instructions, and a parent for a forkserver to come up.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Arguments and results larger than this travel in a memfd rather than on the socket, so
/// no frame is ever large and neither side blocks on a full socket.
pub(crate) const INLINE_PAYLOAD_MAX: usize = 32 * 1024;

/// Everything a child needs from its parent.
#[derive(Serialize, Deserialize)]
pub(crate) struct Bootstrap {
    pub(crate) build_id: Vec<u8>,
    pub(crate) me: tree::Me,
    pub(crate) forkserver: Option<ServerAddr>,
    pub(crate) start_method: Option<StartMethod>,
    /// The parent's hook, so the child starts its own children the same way.
    pub(crate) hook: HookMode,
    /// The parent's standard input rides along as a descriptor (a spawned child's own
    /// standard input carried the channel). First among the descriptors.
    pub(crate) stdin_attached: bool,
    /// The real standard output rides along as a descriptor (test binaries). Next.
    pub(crate) stdout_attached: bool,
    pub(crate) task: Task,
}

/// Encoded bytes, in the frame or, when large, in a memfd attached to it.
#[derive(Serialize, Deserialize)]
pub(crate) enum Payload {
    Inline(Vec<u8>),
    /// This many bytes are in the memfd attached after any other descriptor.
    Memfd(u64),
}

/// What the child is for.
#[derive(Serialize, Deserialize)]
pub(crate) enum Task {
    /// Run a function with encoded arguments and send back its encoded result.
    Run {
        callable: CallableSpec,
        args: Payload,
        /// The arguments hold this many descriptors: the last ones attached.
        arg_fds: u32,
    },
    /// Become the forkserver.
    Forkserver,
    /// Become the program's segment tracker.
    Tracker,
}

/// Child (or forkserver) to parent.
#[derive(Serialize, Deserialize)]
pub(crate) enum Report {
    Outcome(Outcome),
    /// From the forkserver: how its child ended.
    Exit(sys::RawExit),
    /// From a new forkserver: where it listens.
    ForkserverReady(ServerAddr),
    /// From a new segment tracker: it listens.
    TrackerReady,
    /// From a new segment tracker: another one already listens (connect to it).
    TrackerBusy,
    /// A report too large for the socket: this many bytes of it, encoded, are in the memfd
    /// attached. So a child never blocks on a full socket, whatever it reports.
    Spilled(u64),
    /// The memfd attached is the child's panic slot: the hook writes the latest panic of the
    /// target's thread there, so a panic that ends in an abort (a panic while unwinding, at
    /// an `extern "C"` boundary) is still known to the parent. Sent once, at the first panic.
    PanicSlot,
}

/// How the target ended, as the child itself reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// The encoded value the target returned, and the transits of the tracked segments in
    /// it (taken back by the parent if it never decodes the value).
    Returned(Vec<u8>, Vec<Transit>),
    Panicked {
        message: String,
        location: Option<String>,
    },
    /// The child could not run the target.
    Failed(String),
}

/// Which hook this process called, if any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum HookMode {
    /// `init()` from `main`; spawned children get these arguments.
    Main {
        args: Vec<OsString>,
        arg0: Option<OsString>,
    },
    /// `#[multiproc::test]`; spawned children run this test.
    Test { entry: String },
    /// `init()` from a thread other than the main one (a plain `#[test]`).
    OffMainThread,
}

static HOOK: Mutex<Option<HookMode>> = Mutex::new(None);

fn set_hook(mode: HookMode) {
    let mut hook = HOOK.lock().unwrap_or_else(|e| e.into_inner());
    // A test binary keeps its first test entry.
    if hook.is_none() {
        *hook = Some(mode);
    }
}

/// Locks the hook mode (held across `fork`).
pub(crate) fn lock_hook() -> std::sync::MutexGuard<'static, Option<HookMode>> {
    HOOK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The hook this process called.
pub(crate) fn hook_mode() -> Option<HookMode> {
    HOOK.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The fix, for the error when the hook is missing.
pub(crate) const HOOK_MISSING: &str = "the spawn and forkserver start methods run this program again in the child, \
so its main must call multiproc's start-up hook first: put #[multiproc::main] on fn main \
(or call multiproc::init() as its first line; in tests use #[multiproc::test]), or use the fork start method";

/// The error when `init` was called off the main thread.
pub(crate) const HOOK_OFF_MAIN: &str = "multiproc::init() was called outside the main thread (in a plain #[test]?): \
the child could not find it again; use #[multiproc::test] on test functions, and call \
multiproc::init() only as the first line of fn main";

/// The start-up hook. Call it as the very first line of `main` (or put `#[multiproc::main]`
/// on `main`, which does it for you).
///
/// In the main process it returns at once. In a child started by `spawn` or `forkserver` it
/// runs the child's function and exits the process: it never returns there.
///
/// Programs that only use the `fork` start method do not need it; programs using `spawn`
/// or `forkserver` (the default) get a clear error from [`Process::start`](crate::Process::start)
/// without it.
///
/// # Examples
///
/// ```
/// fn main() {
///     multiproc::init();
///     // ... the program ...
/// }
/// ```
pub fn init() {
    if let Some(value) = std::env::var_os(ENV_BOOTSTRAP) {
        sys::remove_env_var_at_startup(ENV_BOOTSTRAP);
        child_main(&value);
    }
    if std::thread::current().name() == Some("main") {
        let mut args = std::env::args_os();
        let arg0 = args.next();
        set_hook(HookMode::Main {
            args: args.collect(),
            arg0,
        });
    } else {
        set_hook(HookMode::OffMainThread);
    }
}

/// The hook `#[multiproc::test]` calls; `path` is `module_path!()::fn_name`.
#[doc(hidden)]
pub fn test_hook(path: &str) {
    if let Some(value) = std::env::var_os(ENV_BOOTSTRAP) {
        sys::remove_env_var_at_startup(ENV_BOOTSTRAP);
        child_main(&value);
    }
    // libtest names tests by their path without the crate name.
    let entry = path
        .split_once("::")
        .map_or(path, |(_, rest)| rest)
        .to_owned();
    set_hook(HookMode::Test { entry });
}

/// Called by every entry point that could start processes: a child whose instructions are
/// still waiting reached multiproc without the hook having run, so it reports that to its
/// parent and exits rather than redo the parent's work.
pub(crate) fn ensure_not_pending_child() {
    let Some(value) = std::env::var_os(ENV_BOOTSTRAP) else {
        return;
    };
    if hook_mode().is_some() {
        return;
    }
    if let Some(channel) = adopt_channel(&value) {
        let msg = "the child reached multiproc before its start-up hook ran: call multiproc::init() \
                   as the very first line of main (or use #[multiproc::main])";
        eprintln!("multiproc: {msg}");
        send_report(&channel, &Report::Outcome(Outcome::Failed(msg.to_owned())));
        let _ = std::io::stderr().flush();
        sys::exit_now(1);
    }
}

/// The socket to the parent, once this process is a child (used by the panic hook).
static TO_PARENT: Mutex<Option<UnixStream>> = Mutex::new(None);

/// Locks the channel to the parent (held across `fork`).
pub(crate) fn lock_to_parent() -> std::sync::MutexGuard<'static, Option<UnixStream>> {
    TO_PARENT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends a report to the parent. One larger than [`INLINE_PAYLOAD_MAX`] goes in a memfd, so
/// the frame on the socket is always small and the send never waits for the parent to read.
pub(crate) fn send_report(channel: &UnixStream, report: &Report) {
    // Most reports are a few bytes: encoded on the stack, they cost a fork child no write to
    // the heap (every page it writes is a copy-on-write fault).
    let mut small = [0u8; 256];
    if let Some(bytes) = codec::encode_small(report, &mut small) {
        let _ = sys::send_frame(channel.as_fd(), bytes, &[], None);
        return;
    }
    let Ok(bytes) = codec::encode(report) else {
        return;
    };
    if bytes.len() <= INLINE_PAYLOAD_MAX {
        let _ = sys::send_frame(channel.as_fd(), &bytes, &[], None);
        return;
    }
    let spilled = sys::memfd_with(&bytes).and_then(|fd| {
        let frame =
            codec::encode(&Report::Spilled(bytes.len() as u64)).map_err(std::io::Error::other)?;
        sys::send_frame(channel.as_fd(), &frame, &[fd.as_fd()], None)
    });
    if let Err(e) = spilled {
        let msg = format!("the child's report could not be passed back: {e}");
        if let Ok(small) = codec::encode(&Report::Outcome(Outcome::Failed(msg))) {
            let _ = sys::send_frame(channel.as_fd(), &small, &[], None);
        }
    }
}

/// Reads a report received from a child, following a spilled one into its memfd; gives back
/// the descriptors that came with it (a panic slot's).
pub(crate) fn read_report(frame: sys::Frame) -> Result<(Report, Vec<OwnedFd>), String> {
    match codec::decode::<Report>(&frame.bytes).map_err(|e| e.to_string())? {
        Report::Spilled(len) => {
            let fd = frame
                .fds
                .into_iter()
                .next()
                .ok_or("a spilled report without its memfd")?;
            let bytes = sys::read_memfd(fd, len).map_err(|e| e.to_string())?;
            match codec::decode::<Report>(&bytes).map_err(|e| e.to_string())? {
                Report::Spilled(_) => Err("a spilled report inside a spilled report".to_owned()),
                report => Ok((report, Vec::new())),
            }
        }
        report => Ok((report, frame.fds)),
    }
}

fn fail(channel: &UnixStream, msg: String) -> ! {
    eprintln!("multiproc: {msg}");
    send_report(channel, &Report::Outcome(Outcome::Failed(msg)));
    let _ = std::io::stderr().flush();
    sys::exit_now(1)
}

/// A spawned child (or a forkserver) starting up: read the instructions, check them, run.
fn child_main(value: &std::ffi::OsStr) -> ! {
    let Some(channel) = adopt_channel(value) else {
        eprintln!(
            "multiproc: {ENV_BOOTSTRAP}={} but standard input is not this child's channel; \
             was the variable copied from another process?",
            value.to_string_lossy()
        );
        sys::exit_now(1)
    };
    run_from_channel(channel)
}

/// The value of [`ENV_BOOTSTRAP`]: the channel is the child's standard input.
pub(crate) const CHANNEL_ON_STDIN: &str = "stdin";

fn adopt_channel(value: &std::ffi::OsStr) -> Option<UnixStream> {
    (value == CHANNEL_ON_STDIN)
        .then(sys::adopt_channel_from_stdin)
        .flatten()
}

/// Reads a [`Bootstrap`] from `channel` and carries it out (spawned children and forkserver
/// children both come here).
pub(crate) fn run_from_channel(channel: UnixStream) -> ! {
    let mut reader = sys::FrameReader::default();
    let frame = match reader.recv_frame(channel.as_fd(), Some(HANDSHAKE_TIMEOUT)) {
        Ok(Some(f)) => f,
        Ok(None) => fail(
            &channel,
            "the parent sent no instructions in time".to_owned(),
        ),
        Err(e) => {
            // The parent is gone: nobody to tell.
            eprintln!("multiproc: child could not read its instructions: {e}");
            sys::exit_now(1)
        }
    };
    let boot: Bootstrap = match codec::decode(&frame.bytes) {
        Ok(b) => b,
        Err(e) => fail(&channel, format!("bad instructions from the parent: {e}")),
    };
    let mine = callable::build_identity();
    if boot.build_id != mine {
        fail(
            &channel,
            format!(
                "this child runs a different build of the program than its parent \
                 (child build {}, parent build {}); a child must run its parent's own executable",
                callable::hex(mine),
                callable::hex(&boot.build_id)
            ),
        );
    }
    let mut fds = frame.fds.into_iter();
    if boot.stdin_attached {
        if let Some(fd) = fds.next() {
            let _ = sys::set_stdin(fd.as_fd());
        }
    }
    if boot.stdout_attached {
        if let Some(fd) = fds.next() {
            let _ = sys::set_stdout(fd.as_fd());
        }
    }
    *HOOK.lock().unwrap_or_else(|e| e.into_inner()) = Some(boot.hook.clone());
    let daemon = boot.me.daemon;
    tree::become_(boot.me);
    forkserver::set_inherited(boot.forkserver);
    if let Some(m) = boot.start_method {
        crate::context::inherit_start_method(m);
    }
    match boot.task {
        Task::Run {
            callable,
            args,
            arg_fds: expected,
        } => {
            let args = match args {
                Payload::Inline(bytes) => bytes,
                Payload::Memfd(len) => match fds.next().map(|fd| sys::read_memfd(fd, len)) {
                    Some(Ok(bytes)) => bytes,
                    Some(Err(e)) => fail(&channel, format!("cannot read the arguments: {e}")),
                    None => fail(&channel, "the arguments' memfd is missing".to_owned()),
                },
            };
            let arg_fds: Vec<OwnedFd> = fds.collect();
            if arg_fds.len() != expected as usize {
                fail(
                    &channel,
                    "descriptors of the arguments are missing".to_owned(),
                );
            }
            match Callable::from_spec(callable) {
                Ok(c) => run_child(c, &args, arg_fds, channel, daemon),
                Err(e) => fail(&channel, format!("cannot find the function to run: {e}")),
            }
        }
        Task::Forkserver => forkserver::serve(channel),
        Task::Tracker => crate::shm::tracker::serve(channel),
    }
}

/// The child's life once it knows what to run: watch the parent (daemons), run the target
/// catching panics, report, then end like CPython (terminate daemonic children, join the
/// others, flush) with the exit code: 0, or 1 after a panic or failure.
pub(crate) fn run_child(
    callable: Callable,
    args: &[u8],
    arg_fds: Vec<OwnedFd>,
    channel: UnixStream,
    daemon: bool,
) -> ! {
    if daemon {
        watch_parent(&channel);
    }
    *lock_to_parent() = Some(channel);
    ensure_panic_hook();
    IS_TARGET_THREAD.with(|t| t.set(true));
    // A fork child may have inherited its parent's record and slot.
    // (`try_with`: a child started from a thread-local's destructor may find them destroyed
    // in the copy of its parent's thread; it then keeps no panic record.)
    let _ = LAST_PANIC.try_with(|p| *p.borrow_mut() = None);
    let _ = PANIC_SLOT.try_with(|s| *s.borrow_mut() = (None, Vec::new()));
    let result = panic::catch_unwind(AssertUnwindSafe(|| callable.call(args, arg_fds)));
    let code = match result {
        Ok(Ok((bytes, transits))) => {
            report(Report::Outcome(Outcome::Returned(bytes, transits)));
            0
        }
        Ok(Err(e)) => {
            let name = tree::with(|me| me.name.clone());
            eprintln!("Process {name}:\n{e}");
            report(Report::Outcome(Outcome::Failed(e.to_string())));
            1
        }
        Err(payload) => {
            // The hook recorded where it happened (unless the program replaced the hook
            // after multiproc installed it: then the payload alone says what).
            // The record is this panic's only if it says the same (`resume_unwind` does not
            // run the hook, so a record can be of an earlier, caught panic).
            let message = panic_message(payload.as_ref());
            let location = recorded_location(&message);
            report_panic(message, location);
            1
        }
    };
    exit_child(code)
}

/// Runs one task of a pool worker (on the target's thread), catching a panic: its message and
/// location, as the hook recorded them, come back as the error.
///
/// The hook's record is taken (not cleared beforehand, which would cost a thread-local access
/// per item of a chunk); a stale record, of a panic the task caught itself, is told apart by
/// its message.
pub(crate) fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, (String, Option<String>)> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(caught_panic)
}

/// The message and location of a panic just caught on the target's thread.
pub(crate) fn caught_panic(payload: Box<dyn std::any::Any + Send>) -> (String, Option<String>) {
    // Caught: the slot must not tell a later abort's story with this panic.
    clear_panic_slot();
    let message = panic_message(payload.as_ref());
    let location = recorded_location(&message);
    (message, location)
}

/// Takes the hook's record of the latest panic on this thread: its location, if the record
/// is of this panic (it says the same `message`).
fn recorded_location(message: &str) -> Option<String> {
    LAST_PANIC
        .try_with(|p| p.borrow_mut().take())
        .ok()
        .flatten()
        .filter(|(recorded, _)| recorded == message)
        .and_then(|(_, location)| location)
}

/// Ends a child process: CPython's rule for its own children, flush, `_exit`.
pub(crate) fn exit_child(code: i32) -> ! {
    registry::finish_children();
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    sys::exit_now(code)
}

fn report(r: Report) {
    if let Some(channel) = lock_to_parent().as_ref() {
        send_report(channel, &r);
    }
}

thread_local! {
    static IS_TARGET_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

thread_local! {
    /// The latest panic on the target's thread: its message and location. Only an uncaught
    /// one is reported, when it reaches the child's main; a panic the target catches is not.
    static LAST_PANIC: std::cell::RefCell<Option<(String, Option<String>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Registers, in the thread about to fork, the thread-locals a fork child's target thread
/// uses: a thread-local with a destructor registers it at its first use, which costs a child
/// several page faults (code of the C library and the loader, and a write to the stack); a
/// child inherits them registered.
pub(crate) fn register_child_thread_locals() {
    // `try_with`: a start from a thread-local's destructor finds these already destroyed
    // (the child then registers them itself, as it did before).
    let _ = LAST_PANIC.try_with(|_| ());
    let _ = PANIC_SLOT.try_with(|_| ());
    codec::register_thread_locals();
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_owned()
    }
}

/// Installs multiproc's panic hook, once per process: a parent installs it before it forks
/// (so a fork child never takes std's hook lock, which another thread of the parent may have
/// held at the fork), a spawned child when it starts. On a target's thread the hook records
/// the panic (and writes it to the panic slot); the child prints `Process <name>:` with the
/// message and location and reports it only if it goes uncaught, or at once under
/// `panic = "abort"`. On every other thread the hook that was there before runs instead: in a
/// parent, multiproc's hook is invisible.
///
/// Not while this thread is panicking (std refuses to change the hook then): the first fork
/// start from a `Drop` during unwinding goes without it, and a panic in that child is
/// reported from its payload alone.
pub(crate) fn ensure_panic_hook() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    if std::thread::panicking() {
        return;
    }
    INSTALLED.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| on_panic(info, &previous)));
    });
}

type PanicHook = Box<dyn Fn(&panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

fn on_panic(info: &panic::PanicHookInfo<'_>, previous: &PanicHook) {
    if !IS_TARGET_THREAD.with(|t| t.get()) {
        return previous(info);
    }
    let message = panic_message(info.payload());
    let location = info
        .location()
        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
    if cfg!(panic = "abort") {
        // No unwinding follows, so nothing will catch it: report it now.
        report_panic(message, location);
    } else {
        write_panic_slot(&message, location.as_deref());
        let _ = LAST_PANIC.try_with(|p| *p.borrow_mut() = Some((message, location)));
    }
}

/// How many of the latest panics the slot keeps: a panic that aborts is usually a chain (the
/// panic, one in a destructor while unwinding, std's own "panic in a destructor during
/// cleanup"), and the first of it is the cause.
const PANIC_SLOT_KEEPS: usize = 3;

/// The latest panics of the target's thread, newest last.
type Panics = Vec<(String, Option<String>)>;

thread_local! {
    /// The panic slot of this child (see [`Report::PanicSlot`]), made at the first panic, and
    /// the latest panics written to it.
    static PANIC_SLOT: std::cell::RefCell<(Option<std::fs::File>, Panics)> =
        const { std::cell::RefCell::new((None, Vec::new())) };
}

/// Writes this panic to the panic slot (with the few before it), creating the slot and
/// handing it to the parent at the first panic. Takes no lock that a launch could hold:
/// `try_lock` only.
fn write_panic_slot(message: &str, location: Option<&str>) {
    let _ = PANIC_SLOT.try_with(|cell| {
        let (slot, latest) = &mut *cell.borrow_mut();
        if latest.len() == PANIC_SLOT_KEEPS {
            latest.remove(0);
        }
        latest.push((message.to_owned(), location.map(str::to_owned)));
        let Ok(bytes) = codec::encode(&*latest) else {
            return;
        };
        if slot.is_none() {
            *slot = new_panic_slot();
        }
        if let Some(file) = slot.as_ref() {
            use std::os::unix::fs::FileExt;
            let _ = file.set_len(0);
            let _ = file.write_all_at(&bytes, 0);
        }
    });
}

/// Empties the panic slot (after a panic that was caught).
fn clear_panic_slot() {
    let _ = PANIC_SLOT.try_with(|cell| {
        let (slot, latest) = &mut *cell.borrow_mut();
        latest.clear();
        if let Some(file) = slot.as_ref() {
            let _ = file.set_len(0);
        }
    });
}

/// Makes the panic slot and hands it to the parent.
fn new_panic_slot() -> Option<std::fs::File> {
    let fd = sys::memfd_with(&[]).ok()?;
    let guard = TO_PARENT.try_lock().ok()?;
    let channel = guard.as_ref()?;
    let frame = codec::encode(&Report::PanicSlot).ok()?;
    sys::send_frame(channel.as_fd(), &frame, &[fd.as_fd()], None).ok()?;
    Some(std::fs::File::from(fd))
}

/// Reads a panic slot received from a child: the latest panics of its target's thread, as
/// one report: the earliest kept (the cause) with its location, then what followed.
///
/// Read at explicit offsets: the file description (and its offset) is shared with the child.
pub(crate) fn read_panic_slot(slot: &std::fs::File) -> Option<(String, Option<String>)> {
    use std::os::unix::fs::FileExt;
    let len = usize::try_from(slot.metadata().ok()?.len()).ok()?;
    if len == 0 || len > sys::MAX_FRAME {
        return None;
    }
    let mut bytes = vec![0u8; len];
    slot.read_exact_at(&mut bytes, 0).ok()?;
    let panics: Panics = codec::decode(&bytes).ok()?;
    let mut chain = panics.into_iter();
    let (mut message, location) = chain.next()?;
    for (then, _) in chain {
        message.push_str("; then, while unwinding: ");
        message.push_str(&then);
    }
    Some((message, location))
}

/// Prints `Process <name>:` and the panic, CPython style, and tells the parent.
///
/// Takes no lock it could wait for: under `panic = "abort"` it runs from the hook, which may
/// be inside a launch (holding multiproc locks or the launch window), so it writes straight to
/// descriptor 2 and only tries the locks it needs.
fn report_panic(message: String, location: Option<String>) {
    let name = tree::try_name().unwrap_or_else(|| "?".to_owned());
    let at = location
        .as_deref()
        .map(|l| format!(" at {l}"))
        .unwrap_or_default();
    let text = format!("Process {name}:\npanicked{at}:\n{message}\n");
    sys::write_stderr_raw(text.as_bytes());
    if let Ok(guard) = TO_PARENT.try_lock() {
        if let Some(channel) = guard.as_ref() {
            send_report(
                channel,
                &Report::Outcome(Outcome::Panicked { message, location }),
            );
        }
    }
}

/// A daemon ends when its parent ends, even when the parent is killed with SIGKILL: a thread
/// waits for the parent's end of the channel to close, then kills this process.
///
/// When the parent is also this process's real parent (fork, spawn), the thread watches its
/// pidfd as well: a copy of the parent's end leaked into another process (a sibling forked by
/// another thread at that moment) cannot keep this daemon alive then.
fn watch_parent(channel: &UnixStream) {
    let Ok(watch) = channel.try_clone() else {
        return;
    };
    let parent = match tree::with(|me| me.parent.as_ref().map(|p| p.pid)) {
        Some(pid) => match sys::pidfd_of_real_parent(pid) {
            Ok(fd) => fd,
            // It is our real parent and it is already gone.
            Err(sys::ParentGone) => sys::kill_self(),
        },
        None => None,
    };
    let _ = std::thread::Builder::new()
        .name("multiproc-parent-watch".to_owned())
        .spawn(move || {
            // The parent never writes after the instructions: readable means end of file;
            // a readable pidfd means the parent ended.
            let mut fds = vec![watch.as_fd()];
            fds.extend(parent.as_ref().map(|p| p.as_fd()));
            loop {
                match sys::poll_fds(&fds, None) {
                    Ok(ready) if !ready.is_empty() => sys::kill_self(),
                    Ok(_) => continue,
                    Err(_) => return,
                }
            }
        });
}

/// The standard output a spawned test child should use, when running under libtest.
pub(crate) fn stdout_for_child() -> Option<OwnedFd> {
    matches!(hook_mode(), Some(HookMode::Test { .. }))
        .then(|| sys::dup_stdout().ok())
        .flatten()
}
