//! The parent's side of one child: its pidfd, its channel, and how it ended.
//!
//! Shared (behind an `Arc`) by the user's [`Process`](crate::Process) handle, the registry
//! and the reaper thread; whoever gets there first collects the status, under one lock.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::bootstrap::{self, Outcome, Report};
use crate::shm::segment::{Segment, Transit};
use crate::sys::{self, FrameReader, Pid, RawExit, Sig};

/// How long a parent waits for the forkserver's report once the child is gone.
const FORKSERVER_REPORT_WAIT: Duration = Duration::from_secs(5);

/// Who collects the exit status of a child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reaper {
    /// We are its parent (fork, spawn): `waitid` on the pidfd.
    Us,
    /// The forkserver is its parent; it sends the status on the channel.
    Forkserver,
}

/// What a start method hands back for a child it started.
pub(crate) struct Launched {
    pub(crate) pid: Pid,
    pub(crate) pidfd: OwnedFd,
    pub(crate) channel: UnixStream,
    pub(crate) reaper: Reaper,
}

#[derive(Default)]
struct State {
    reader: FrameReader,
    exit: Option<RawExit>,
    outcome: Option<Outcome>,
    status_lost: Option<String>,
    /// The child's panic slot, if its target ever panicked (see `Report::PanicSlot`).
    panic_slot: Option<std::fs::File>,
    /// The transits of the tracked segments in the child's arguments: taken back once it
    /// has ended, whether or not it decoded them (see `Segment::take_back_transits`).
    arg_transits: Vec<Transit>,
}

impl State {
    /// The arguments' transits, once the child has ended (they are no longer in transit);
    /// none before.
    fn arg_transits_if_ended(&mut self) -> Vec<Transit> {
        if self.exit.is_some() {
            std::mem::take(&mut self.arg_transits)
        } else {
            Vec::new()
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        // A result never taken: nothing will decode the segments in it. (The arguments'
        // transits went when the end was seen, which a record is never dropped before.)
        if let Some(Outcome::Returned(_, transits)) = &self.outcome {
            Segment::take_back_transits(transits);
        }
    }
}

/// One started child, as its parent sees it.
pub(crate) struct ChildShared {
    /// Unique in this process for its whole life (pids and descriptor numbers get reused).
    pub(crate) id: u64,
    pub(crate) pid: Pid,
    pub(crate) name: String,
    pub(crate) daemon: bool,
    reaper: Reaper,
    pidfd: OwnedFd,
    channel: UnixStream,
    state: Mutex<State>,
}

impl ChildShared {
    pub(crate) fn new(launched: Launched, name: String, daemon: bool) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            pid: launched.pid,
            name,
            daemon,
            reaper: launched.reaper,
            pidfd: launched.pidfd,
            channel: launched.channel,
            state: Mutex::new(State::default()),
        }
    }

    pub(crate) fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The descriptor that becomes readable when the child has ended: its pidfd. Once it
    /// is, [`poll_exit`](Self::poll_exit) has the status (for a forkserver child it waits,
    /// bounded, for the server's report), so the sentinel never runs ahead of `exitcode`.
    pub(crate) fn exit_fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Raw numbers of the descriptors this handle owns (for a fork child to neutralize).
    pub(crate) fn raw_fds(&self) -> [RawFd; 2] {
        [self.pidfd.as_raw_fd(), self.channel.as_raw_fd()]
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads whatever the child (or the forkserver) has sent, without blocking.
    fn drain(&self, st: &mut State) {
        if let Err(e) = st.reader.fill(self.channel.as_fd(), false) {
            st.status_lost
                .get_or_insert(format!("reading from the child failed: {e}"));
        }
        loop {
            match st.reader.next_frame() {
                Ok(Some(frame)) => match bootstrap::read_report(frame) {
                    Ok((Report::Outcome(o), _)) => st.outcome = Some(o),
                    Ok((Report::Exit(e), _)) => st.exit = Some(e),
                    Ok((Report::PanicSlot, fds)) => {
                        st.panic_slot = fds.into_iter().next().map(std::fs::File::from);
                    }
                    Ok((
                        Report::ForkserverReady(_)
                        | Report::TrackerReady
                        | Report::TrackerBusy
                        | Report::Spilled(_),
                        _,
                    )) => {}
                    Err(e) => {
                        st.outcome
                            .get_or_insert(Outcome::Failed(format!("unreadable report: {e}")));
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    st.status_lost
                        .get_or_insert(format!("bad message from the child: {e}"));
                    break;
                }
            }
        }
    }

    /// Holds the transits of the segments in the child's arguments until it has ended (at
    /// once if it already has).
    pub(crate) fn hold_arg_transits(&self, transits: Vec<Transit>) {
        if transits.is_empty() {
            return;
        }
        let mut st = self.lock();
        st.arg_transits = transits;
        let ended = st.arg_transits_if_ended();
        drop(st);
        Segment::take_back_transits(&ended);
    }

    /// The exit status if the child has ended (reaping it if needed); never blocks.
    pub(crate) fn poll_exit(&self) -> Option<RawExit> {
        let mut st = self.lock();
        if st.exit.is_none() {
            self.collect_exit(&mut st);
        }
        let exit = st.exit;
        let ended = st.arg_transits_if_ended();
        drop(st);
        Segment::take_back_transits(&ended);
        exit
    }

    /// Reads what the child sent and, if it has ended, its status (see [`poll_exit`]).
    fn collect_exit(&self, st: &mut State) {
        self.drain(st);
        match self.reaper {
            Reaper::Us => match sys::reap_nohang(self.pidfd.as_fd()) {
                Ok(Some(e)) => {
                    st.exit = Some(e);
                    // Everything it sent before exiting is in the socket now.
                    self.drain(st);
                }
                Ok(None) => {}
                Err(e) => {
                    // Someone else reaped it (SIGCHLD ignored, or a waitpid(-1) elsewhere).
                    st.status_lost
                        .get_or_insert(format!("the child was reaped elsewhere: {e}"));
                    st.exit = Some(RawExit::Code(255));
                }
            },
            Reaper::Forkserver => {
                // Decided once: is the child gone? (Its own end of the channel closes with
                // it, so end of file means gone too.)
                let gone = st.reader.at_eof()
                    || sys::wait_readable(self.pidfd.as_fd(), Some(Duration::ZERO))
                        .unwrap_or(false);
                if gone {
                    self.await_forkserver_report(st);
                }
            }
        }
    }

    /// The child is gone: the server reaps it and then reports, so the report is moments
    /// away. Waits for it (bounded), so the child is never seen dead without its status.
    fn await_forkserver_report(&self, st: &mut State) {
        let deadline = Instant::now() + FORKSERVER_REPORT_WAIT;
        while st.exit.is_none() && !st.reader.at_eof() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero()
                || !sys::wait_readable(self.channel.as_fd(), Some(left)).unwrap_or(false)
            {
                break;
            }
            self.drain(st);
        }
        if st.exit.is_none() {
            st.status_lost
                .get_or_insert_with(|| "the forkserver went away before reporting it".to_owned());
            st.exit = Some(RawExit::Code(255));
        }
    }

    /// Waits for the child to end; `None` on timeout.
    pub(crate) fn wait_exit(&self, timeout: Option<Duration>) -> io::Result<Option<RawExit>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(e) = self.poll_exit() {
                return Ok(Some(e));
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Ok(None);
            }
            sys::wait_readable(self.exit_fd(), left)?;
        }
    }

    /// Takes the outcome the child reported (after it ended).
    ///
    /// A child that aborted (SIGABRT) without reporting, after a panic of its target's thread,
    /// ended in that panic: a panic while unwinding, or at an `extern "C"` boundary, aborts.
    pub(crate) fn take_outcome(&self) -> (Option<Outcome>, Option<String>) {
        const SIGABRT: i32 = 6;
        let mut st = self.lock();
        let mut outcome = st.outcome.take();
        if outcome.is_none() && st.exit == Some(RawExit::Signal(SIGABRT)) {
            let panic = st.panic_slot.as_ref().and_then(bootstrap::read_panic_slot);
            outcome = panic.map(|(message, location)| Outcome::Panicked { message, location });
        }
        (outcome, st.status_lost.clone())
    }

    pub(crate) fn signal(&self, sig: Sig) -> io::Result<()> {
        if self.poll_exit().is_some() {
            return Ok(());
        }
        sys::send_signal(self.pidfd.as_fd(), sig)
    }
}

/// The `exitcode` form of an exit: the code, or minus the signal number.
pub(crate) fn exitcode(e: RawExit) -> i32 {
    match e {
        RawExit::Code(c) => c,
        RawExit::Signal(s) => -s,
    }
}
