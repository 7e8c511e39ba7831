//! The `forkserver` start method.
//!
//! The first time a process needs it (or at [`ensure_forkserver`](crate::ensure_forkserver)),
//! the program is spawned once more as the **forkserver**: a process with one thread of its own and a
//! clean memory image that listens on an abstract Unix socket. To start a child, a client
//! sends it one end of a fresh socket pair; the server forks, the child takes that end as its
//! channel and reads its instructions exactly as a spawned child does, and the server answers
//! with the child's pid and a pidfd. The server is the child's real parent: it reaps it and
//! sends the exit status down the child's channel, where the client reads it.
//!
//! **Authentication.** Abstract sockets have no file permissions, so every connection proves
//! knowledge of the program's authkey, both ways, before the server does anything for it:
//! server nonce, client HMAC-SHA256 over it plus a client nonce, server HMAC over that; the
//! comparisons are constant-time. Each client process keeps one authenticated connection.
//!
//! **Lifetime.** The server exits when the process that started it ends (its channel to it
//! reaches end of file), and ignores SIGINT so that Ctrl-C is the program's business.
//! Children of the process tree use the same server (its address travels in their
//! instructions).
//!
//! # Safety
//!
//! This file opts in to `unsafe` for the server's one call of [`sys::fork`]: the server runs
//! one thread of its own and no user code (in a test binary, libtest's main thread also
//! exists, blocked waiting for the test that became the server), so no lock the child uses
//! can be held at the fork; the child closes every descriptor of the server's and never
//! returns into the server's loop.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::panic::AssertUnwindSafe;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::bootstrap::{self, Bootstrap, HookMode, Report, Task};
use crate::callable::{self, hex};
use crate::codec;
use crate::error::ProcessError;
use crate::process::child::{Launched, Reaper};
use crate::process::tree::{self, Me, ParentInfo};
use crate::start::{self, Instructions, Job, spawn};
use crate::sys::{self, Forked, FrameReader, Pid};

/// How long one step of the connection handshake or a fork request may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// The most connections that may wait to authenticate at once; past that, new ones wait in
/// the listen backlog.
const MAX_PENDING_HANDSHAKES: usize = 32;

/// How long the listener rests after a failed `accept`.
const ACCEPT_REST: Duration = Duration::from_millis(100);

/// How long the server waits for a new connection to answer its challenge. A client of the
/// program answers in microseconds.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(2);

/// Where a forkserver listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ServerAddr {
    name: Vec<u8>,
    pid: i32,
}

#[derive(Serialize, Deserialize)]
enum Request {
    /// Fork a child; its channel end is attached.
    Fork,
}

#[derive(Serialize, Deserialize)]
enum Reply {
    /// The child's pid; its pidfd is attached.
    Forked {
        pid: i32,
    },
    Error(String),
}

/// A process's view of the forkserver.
#[derive(Default)]
pub(crate) struct Client {
    addr: Option<ServerAddr>,
    /// Our channel to a server we started (its end of file tells the server we are gone).
    started: Option<Launched>,
    conn: Option<(Pid, UnixStream, FrameReader)>,
}

static CLIENT: Mutex<Client> = Mutex::new(Client {
    addr: None,
    started: None,
    conn: None,
});

/// Locks the client state (held across `fork`).
pub(crate) fn lock_client() -> MutexGuard<'static, Client> {
    CLIENT.lock().unwrap_or_else(|e| e.into_inner())
}

/// In a fork child: the connection and the server's channel belong to the parent. The
/// address stays: the child may use the same server.
pub(crate) fn after_fork_in_child(client: &mut Client) {
    // Written only when there is something to drop: see `registry::after_fork_in_child`.
    if client.conn.is_some() {
        client.conn = None;
    }
    if client.started.is_some() {
        client.started = None;
    }
}

/// In a spawned child: the server the parent uses.
pub(crate) fn set_inherited(addr: Option<ServerAddr>) {
    let mut c = lock_client();
    c.addr = addr;
    c.started = None;
    c.conn = None;
}

/// The address of the server this process uses, if one runs.
pub(crate) fn current_addr() -> Option<ServerAddr> {
    lock_client().addr.clone()
}

/// What starting or reaching the server needs from this process's identity, read before the
/// client lock is taken (the fork path takes the identity lock first, then the client's).
struct Seed {
    hook: HookMode,
    /// Who the server will be; its authkey is the program's.
    server: Me,
}

impl Seed {
    fn now() -> Result<Self, ProcessError> {
        let hook = start::require_hook()?;
        let server = tree::with(|me| Me {
            name: "ForkServer".to_owned(),
            identity: Vec::new(),
            daemon: true,
            authkey: me.authkey,
            parent: Some(ParentInfo {
                name: me.name.clone(),
                pid: sys::getpid().as_raw_nonzero().get(),
            }),
            next_child: 1,
        });
        Ok(Self { hook, server })
    }
}

/// Starts the forkserver now if it does not run yet.
pub(crate) fn ensure_running() -> Result<(), ProcessError> {
    let seed = Seed::now()?;
    ensure_started(&mut lock_client(), &seed)
}

fn ensure_started(c: &mut Client, seed: &Seed) -> Result<(), ProcessError> {
    if c.addr.is_some() {
        return Ok(());
    }
    let (hook, me) = (seed.hook.clone(), seed.server.clone());
    let boot = Bootstrap {
        build_id: callable::build_identity().to_vec(),
        me,
        forkserver: None,
        start_method: None,
        hook,
        stdin_attached: false,
        stdout_attached: false,
        task: Task::Forkserver,
    };
    let launched = spawn::spawn_with(
        sys::self_exe(),
        Instructions {
            boot,
            fds: Vec::new(),
        },
    )?;
    match await_ready(&launched) {
        Ok(addr) => c.addr = Some(addr),
        Err(e) => {
            // A server that never came up: end it rather than leave it running or a zombie.
            sys::kill_and_reap(launched.pid);
            return Err(e);
        }
    }
    c.started = Some(launched);
    Ok(())
}

/// Waits for a new server's address.
fn await_ready(launched: &Launched) -> Result<ServerAddr, ProcessError> {
    let mut reader = FrameReader::default();
    let frame = reader
        .recv_frame(launched.channel.as_fd(), Some(bootstrap::HANDSHAKE_TIMEOUT))
        .map_err(|e| launch_error(format!("the forkserver did not start: {e}")))?
        .ok_or_else(|| launch_error("the forkserver did not answer in time".to_owned()))?;
    match codec::decode::<Report>(&frame.bytes)? {
        Report::ForkserverReady(addr) => Ok(addr),
        Report::Outcome(bootstrap::Outcome::Failed(msg)) => Err(launch_error(msg)),
        _ => Err(launch_error(
            "the forkserver sent something unexpected".to_owned(),
        )),
    }
}

fn launch_error(msg: String) -> ProcessError {
    ProcessError::Launch(io::Error::other(msg))
}

fn mac(key: &[u8], label: &[u8], nonce: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable_hmac());
    m.update(label);
    m.update(nonce);
    m
}

#[cold]
fn unreachable_hmac() -> Hmac<Sha256> {
    // `new_from_slice` never fails for HMAC; keep a total function anyway.
    <Hmac<Sha256> as Mac>::new_from_slice(&[0u8; 32]).unwrap_or_else(|_| unreachable_hmac())
}

const CLIENT_LABEL: &[u8] = b"multiproc-forkserver-client";
const SERVER_LABEL: &[u8] = b"multiproc-forkserver-server";

fn recv(sock: &UnixStream, reader: &mut FrameReader) -> io::Result<sys::Frame> {
    reader
        .recv_frame(sock.as_fd(), Some(STEP_TIMEOUT))?
        .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "forkserver peer is silent"))
}

fn auth_failed() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "forkserver authentication failed",
    )
}

/// Client side of the mutual handshake.
///
/// The peer must be the server's own process (its pid, from the kernel): a process that took
/// the name of a dead server cannot relay the handshake to a live one.
fn connect(addr: &ServerAddr, key: &[u8; 32]) -> io::Result<(UnixStream, FrameReader)> {
    let name = crate::connection::Address::Abstract(addr.name.clone());
    let sock = UnixStream::from(sys::connect(&name, Instant::now() + STEP_TIMEOUT)?);
    if sys::peer_pid(sock.as_fd())? != addr.pid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the forkserver's address is held by another process",
        ));
    }
    let mut reader = FrameReader::default();
    let challenge = recv(&sock, &mut reader)?.bytes;
    let my_nonce = sys::random_bytes::<32>();
    let mut answer = mac(key, CLIENT_LABEL, &challenge)
        .finalize()
        .into_bytes()
        .to_vec();
    answer.extend_from_slice(&my_nonce);
    sys::send_frame(sock.as_fd(), &answer, &[], Some(STEP_TIMEOUT))?;
    let proof = recv(&sock, &mut reader)?.bytes;
    mac(key, SERVER_LABEL, &my_nonce)
        .verify_slice(&proof)
        .map_err(|_| auth_failed())?;
    Ok((sock, reader))
}

/// Asks the server to fork a child that will use `child_end` as its channel.
fn request_fork(
    c: &mut Client,
    seed: &Seed,
    child_end: BorrowedFd<'_>,
) -> Result<(Pid, OwnedFd), ProcessError> {
    ensure_started(c, seed)?;
    let me = sys::getpid();
    if c.conn.as_ref().is_none_or(|(pid, _, _)| *pid != me) {
        let addr = c
            .addr
            .clone()
            .ok_or_else(|| launch_error("no forkserver".to_owned()))?;
        let (sock, reader) = connect(&addr, &seed.server.authkey).map_err(|e| {
            launch_error(format!(
                "cannot reach the forkserver (pid {}): {e}",
                addr.pid
            ))
        })?;
        c.conn = Some((me, sock, reader));
    }
    let Some((_, sock, reader)) = c.conn.as_mut() else {
        return Err(launch_error("no forkserver connection".to_owned()));
    };
    let req = codec::encode(&Request::Fork)?;
    let exchange = (|| -> io::Result<sys::Frame> {
        sys::send_frame(sock.as_fd(), &req, &[child_end], Some(STEP_TIMEOUT))?;
        recv(sock, reader)
    })();
    let frame = match exchange {
        Ok(f) => f,
        Err(e) => {
            c.conn = None;
            return Err(launch_error(format!("the forkserver did not answer: {e}")));
        }
    };
    match codec::decode::<Reply>(&frame.bytes)? {
        Reply::Forked { pid } => {
            let pid = sys::pid_from_raw(pid).ok_or_else(|| launch_error("bad pid".to_owned()))?;
            let pidfd = frame
                .fds
                .into_iter()
                .next()
                .ok_or_else(|| launch_error("no pidfd".to_owned()))?;
            Ok((pid, pidfd))
        }
        Reply::Error(msg) => Err(launch_error(format!(
            "the forkserver could not fork: {msg}"
        ))),
    }
}

pub(crate) fn launch(job: &Job<'_>) -> Result<Launched, ProcessError> {
    let seed = Seed::now()?;
    // Started first, so the instructions carry its address for the child's own children.
    ensure_started(&mut lock_client(), &seed)?;
    match attempt(job, &seed)? {
        Some(launched) => Ok(launched),
        // Our server had died: a new one runs now; try once more, from a fresh channel (the
        // old end may have reached a child of the dead server).
        None => attempt(job, &seed)?.ok_or_else(|| launch_error("the forkserver died".to_owned())),
    }
}

/// One request to the server. `Ok(None)`: the server this process started had died (it is
/// forgotten, and a new one started).
fn attempt(job: &Job<'_>, seed: &Seed) -> Result<Option<Launched>, ProcessError> {
    let ins = start::instructions_for(job, seed.hook.clone())?;
    let (parent_end, child_end) = sys::channel_pair().map_err(ProcessError::Launch)?;
    parent_end
        .set_nonblocking(true)
        .map_err(ProcessError::Launch)?;
    // Instructions that fit in the socket's buffer go before the fork request, so the child
    // finds them the moment it starts; larger ones once it exists to read them.
    let sent_early = start::send_instructions_if_small(&parent_end, &ins)?;
    let (pid, pidfd) = {
        let mut c = lock_client();
        match request_fork(&mut c, seed, child_end.as_fd()) {
            Ok(v) => v,
            Err(_) if server_died(&c) => {
                c.addr = None;
                c.started = None;
                c.conn = None;
                ensure_started(&mut c, seed)?;
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
    };
    drop(child_end);
    if !sent_early {
        start::send_instructions(&parent_end, &ins)?;
    }
    Ok(Some(Launched {
        pid,
        pidfd,
        channel: parent_end,
        reaper: Reaper::Forkserver,
    }))
}

/// Whether the server this process started has ended.
fn server_died(c: &Client) -> bool {
    c.started
        .as_ref()
        .is_some_and(|l| sys::reap_nohang(l.pidfd.as_fd()).ok().flatten().is_some())
}

// ---------------------------------------------------------------------------------------------
// The server

/// One client connection of the server.
struct Conn {
    sock: UnixStream,
    reader: FrameReader,
    auth: Auth,
}

/// Where a connection stands in the handshake. Nothing but the handshake is read from a
/// connection until it has proved it holds the authkey.
enum Auth {
    /// The server's nonce is sent; the answer must come before the deadline.
    Waiting {
        nonce: [u8; 32],
        deadline: Instant,
    },
    Done,
}

/// The largest frame a connection may send before it has authenticated (its answer is 64
/// bytes).
const HANDSHAKE_FRAME_MAX: usize = 64;

struct Kid {
    pidfd: OwnedFd,
    channel: OwnedFd,
}

/// The forkserver's main loop. `channel` leads to the process that started it.
///
/// Single-threaded and never blocked by one client: every connection is non-blocking, the
/// handshake is a state per connection with a deadline, and writes have short timeouts.
pub(crate) fn serve(channel: UnixStream) -> ! {
    sys::ignore_sigint(true);
    // An ignored SIGCHLD, inherited from the program, would make the kernel reap our
    // children before we could learn their status.
    sys::default_sigchld();
    // Registered once here, inherited by every child (see the function).
    bootstrap::register_child_thread_locals();
    let key = tree::with(|m| m.authkey);
    let pid = sys::getpid().as_raw_nonzero().get();
    let name = format!(
        "multiproc-forkserver-{pid}-{}",
        hex(&sys::random_bytes::<8>())
    )
    .into_bytes();
    let listener =
        match SocketAddr::from_abstract_name(&name).and_then(|a| UnixListener::bind_addr(&a)) {
            Ok(l) => l,
            Err(e) => {
                let msg = format!("the forkserver cannot listen: {e}");
                let report = Report::Outcome(bootstrap::Outcome::Failed(msg));
                bootstrap::send_report(&channel, &report);
                sys::exit_now(1)
            }
        };
    bootstrap::send_report(&channel, &Report::ForkserverReady(ServerAddr { name, pid }));
    if listener.set_nonblocking(true).is_err() {
        sys::exit_now(1);
    }
    let mut conns: Vec<Conn> = Vec::new();
    let mut kids: Vec<Kid> = Vec::new();
    // After a failed accept (out of descriptors), the listener rests a moment rather than
    // being polled, readable, in a busy loop.
    let mut listener_rests_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        conns.retain(|c| !matches!(c.auth, Auth::Waiting { deadline, .. } if deadline <= now));
        listener_rests_until = listener_rests_until.filter(|t| *t > now);
        let next_deadline = conns
            .iter()
            .filter_map(|c| match c.auth {
                Auth::Waiting { deadline, .. } => Some(deadline),
                Auth::Done => None,
            })
            .chain(listener_rests_until)
            .min();
        // The listener is left out while resting, and while as many connections as allowed
        // wait to authenticate: the next ones wait in the kernel's backlog (their clients
        // wait for the challenge), so a burst of real clients is served, not turned away.
        let waiting = conns
            .iter()
            .filter(|c| matches!(c.auth, Auth::Waiting { .. }))
            .count();
        let listening = listener_rests_until.is_none() && waiting < MAX_PENDING_HANDSHAKES;
        let mut fds: Vec<BorrowedFd<'_>> = vec![channel.as_fd()];
        fds.push(if listening {
            listener.as_fd()
        } else {
            channel.as_fd()
        });
        fds.extend(conns.iter().map(|c| c.sock.as_fd()));
        fds.extend(kids.iter().map(|k| k.pidfd.as_fd()));
        let timeout = next_deadline.map(|d| d.saturating_duration_since(now));
        let Ok(ready) = sys::poll_fds(&fds, timeout) else {
            sys::exit_now(1)
        };
        drop(fds);
        let n_conns = conns.len();
        let (mut closed, mut done_kids, mut new_kids) = (Vec::new(), Vec::new(), Vec::new());
        for i in ready {
            match i {
                // The process that started us is gone.
                0 => sys::exit_now(0),
                1 if listening => match accept(&listener) {
                    Ok(Some(conn)) => conns.push(conn),
                    Ok(None) => {}
                    Err(_) => listener_rests_until = Some(now + ACCEPT_REST),
                },
                1 => {}
                i if i < 2 + n_conns => {
                    let conn = &mut conns[i - 2];
                    if serve_conn(conn, &key, &mut new_kids).is_err() || conn.reader.at_eof() {
                        closed.push(i - 2);
                    }
                }
                i => {
                    let k = i - 2 - n_conns;
                    match sys::reap_nohang(kids[k].pidfd.as_fd()) {
                        Ok(Some(exit)) => {
                            if let Ok(bytes) = codec::encode(&Report::Exit(exit)) {
                                let ch = kids[k].channel.as_fd();
                                let _ = sys::send_frame(ch, &bytes, &[], Some(Duration::ZERO));
                            }
                            done_kids.push(k);
                        }
                        Ok(None) => {}
                        // Not ours to reap after all: forget it (its parent learns the status
                        // is lost when the channel closes) rather than poll it forever.
                        Err(_) => done_kids.push(k),
                    }
                }
            }
        }
        for k in done_kids.into_iter().rev() {
            kids.swap_remove(k);
        }
        for c in closed.into_iter().rev() {
            conns.swap_remove(c);
        }
        kids.extend(new_kids);
    }
}

/// Accepts a connection and sends it the challenge.
///
/// `Ok(None)` when the connection is dropped at once: another user's process (it could
/// never hold the authkey, which lives only in this program's processes). `Err` when
/// `accept` itself failed.
fn accept(listener: &UnixListener) -> io::Result<Option<Conn>> {
    let sock = match listener.accept() {
        Ok((sock, _)) => sock,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
        Err(e) => return Err(e),
    };
    if !sys::peer_is_same_user(sock.as_fd()) {
        return Ok(None);
    }
    if sock.set_nonblocking(true).is_err() {
        return Ok(None);
    }
    let nonce = sys::random_bytes::<32>();
    if sys::send_frame(sock.as_fd(), &nonce, &[], Some(Duration::ZERO)).is_err() {
        return Ok(None);
    }
    Ok(Some(Conn {
        sock,
        reader: FrameReader::with_limit(HANDSHAKE_FRAME_MAX),
        auth: Auth::Waiting {
            nonce,
            deadline: Instant::now() + HANDSHAKE_DEADLINE,
        },
    }))
}

/// Handles what one client has sent: the handshake answer, then fork requests.
fn serve_conn(conn: &mut Conn, key: &[u8; 32], new_kids: &mut Vec<Kid>) -> io::Result<()> {
    conn.reader.fill(conn.sock.as_fd(), false)?;
    if let Auth::Waiting { nonce, .. } = conn.auth {
        let Some(frame) = conn.reader.next_frame()? else {
            return Ok(());
        };
        let answer = frame.bytes;
        if answer.len() != 64 {
            return Err(auth_failed());
        }
        mac(key, CLIENT_LABEL, &nonce)
            .verify_slice(&answer[..32])
            .map_err(|_| auth_failed())?;
        let proof = mac(key, SERVER_LABEL, &answer[32..])
            .finalize()
            .into_bytes();
        sys::send_frame(conn.sock.as_fd(), &proof, &[], Some(STEP_TIMEOUT))?;
        conn.auth = Auth::Done;
        conn.reader.unlimit();
    }
    while let Some(frame) = conn.reader.next_frame()? {
        let reply = match (
            codec::decode::<Request>(&frame.bytes),
            frame.fds.into_iter().next(),
        ) {
            (Ok(Request::Fork), Some(child_end)) => match fork_child(child_end) {
                Ok((kid, pid)) => {
                    let reply = match kid.pidfd.try_clone() {
                        Ok(pidfd) => (
                            Reply::Forked {
                                pid: pid.as_raw_nonzero().get(),
                            },
                            Some(pidfd),
                        ),
                        Err(e) => {
                            // The client will not know this child: end it (it is reaped
                            // like any other).
                            let _ = sys::send_signal(kid.pidfd.as_fd(), sys::Sig::Kill);
                            (Reply::Error(e.to_string()), None)
                        }
                    };
                    new_kids.push(kid);
                    reply
                }
                Err(e) => (Reply::Error(e.to_string()), None),
            },
            _ => (Reply::Error("bad request".to_owned()), None),
        };
        let bytes = codec::encode(&reply.0).map_err(io::Error::other)?;
        let fds: Vec<BorrowedFd<'_>> = reply.1.iter().map(|f| f.as_fd()).collect();
        sys::send_frame(conn.sock.as_fd(), &bytes, &fds, Some(STEP_TIMEOUT))?;
    }
    Ok(())
}

/// Forks one child. In the child this never returns.
fn fork_child(child_end: OwnedFd) -> io::Result<(Kid, Pid)> {
    // SAFETY:
    // - the forkserver starts no thread and runs no user code (see the file header), so no
    //   lock can be held by another thread at the fork.
    let forked = unsafe { sys::fork() }?;
    match forked {
        Forked::Child => {
            let raw = std::os::fd::AsRawFd::as_raw_fd(&child_end);
            sys::close_all_fds_except(raw);
            sys::ignore_sigint(false);
            let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
                bootstrap::run_from_channel(UnixStream::from(child_end))
            }));
            let _ = run;
            sys::exit_now(1)
        }
        Forked::Parent(pid) => {
            let pidfd = match sys::pidfd_open(pid) {
                Ok(fd) => fd,
                Err(e) => {
                    // Unwatchable: end it now rather than leave it unreaped.
                    sys::kill_and_reap(pid);
                    return Err(e);
                }
            };
            Ok((
                Kid {
                    pidfd,
                    channel: child_end,
                },
                pid,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use crate::context::{Context, StartMethod};

    fn server_addr() -> ServerAddr {
        ensure_running().expect("forkserver starts");
        current_addr().expect("forkserver address")
    }

    fn raw_connect(addr: &ServerAddr) -> UnixStream {
        let sock = UnixStream::connect_addr(&SocketAddr::from_abstract_name(&addr.name).unwrap())
            .expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sock
    }

    /// Reads until the server closes the connection; panics if it does not within the
    /// read timeout.
    fn assert_closed_by_server(mut sock: UnixStream) {
        let mut sink = Vec::new();
        sock.read_to_end(&mut sink)
            .expect("the server closes the connection");
    }

    fn two(x: u32) -> u32 {
        x * 2
    }

    fn start_one() -> u32 {
        let mut p = Context::new(StartMethod::Forkserver).process(two, 21);
        p.start().expect("start");
        p.join_result().expect("result")
    }

    #[multiproc_macros::test]
    fn a_wrong_key_is_refused() {
        let addr = server_addr();
        let wrong = [7u8; 32];
        let Err(err) = connect(&addr, &wrong) else {
            panic!("a wrong key must not authenticate")
        };
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
            ),
            "{err:?}"
        );
        // A garbage answer of the wrong size is refused too.
        let mut sock = raw_connect(&addr);
        sock.write_all(&[3, 0, 0, 0, 1, 2, 3]).unwrap();
        assert_closed_by_server(sock);
        // And the server still serves the program.
        assert_eq!(start_one(), 42);
    }

    #[multiproc_macros::test]
    fn an_oversized_frame_before_authentication_is_refused() {
        let addr = server_addr();
        let mut sock = raw_connect(&addr);
        sock.write_all(&(1u32 << 20).to_le_bytes()).unwrap();
        assert_closed_by_server(sock);
        assert_eq!(start_one(), 42);
    }

    #[multiproc_macros::test]
    fn a_silent_client_does_not_block_the_server() {
        let addr = server_addr();
        let silent = raw_connect(&addr);
        // The server answers others while the silent one holds its connection open.
        for _ in 0..3 {
            assert_eq!(start_one(), 42);
        }
        // And it drops the silent one after the handshake deadline.
        assert_closed_by_server(silent);
    }

    #[multiproc_macros::test]
    fn a_flood_of_idle_connections_does_not_stop_the_server() {
        let addr = server_addr();
        // More than may wait to authenticate at once: the rest wait in the backlog, and the
        // real client after them is served once the idle ones time out.
        let flood: Vec<UnixStream> = (0..MAX_PENDING_HANDSHAKES + 8)
            .map(|_| raw_connect(&addr))
            .collect();
        assert_eq!(start_one(), 42);
        drop(flood);
        assert_eq!(start_one(), 42);
    }

    #[multiproc_macros::test]
    fn the_right_key_authenticates() {
        let addr = server_addr();
        let key = tree::with(|m| m.authkey);
        connect(&addr, &key).expect("the program's own key authenticates");
    }
}
