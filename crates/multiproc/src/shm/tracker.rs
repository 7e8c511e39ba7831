//! The segment tracker: one small process per program that unlinks the shared memory the
//! program created once no process of the program uses it, however those processes end
//! (SIGKILL included, the main process included).
//!
//! # Protocol
//!
//! Every process that creates, attaches or sends a tracked segment keeps one connection to
//! the tracker (the process that started it uses the start-up channel; the others connect to
//! an abstract Unix socket whose name derives from the program's authkey, so the whole
//! process tree finds the same one). Messages are channel frames of one postcard [`Msg`] each,
//! one way only: nothing waits for an answer on the hot path.
//!
//! The tracker keeps, per name, the number of attachments per connection and the open
//! *transits* (encodings sent, each with an id; each is taken back by the `Received` of
//! whoever decodes it). A name is unlinked when it was `Created` by the program
//! and its total drops to zero, or when the last connection closes. Names the program did
//! not create (a CPython segment attached by name) are counted but never unlinked, which is
//! why attaching never destroys a segment at the attacher's exit (CPython gh-82300).
//!
//! Ordering: a creator sends `Created` before it creates the object, and every sender writes
//! its `InTransit` before the bytes that carry the name leave, and its own `Detached` after
//! it. Messages on different connections are read in no set order, so a receiver's
//! `Received`, and even its `Detached` or its death, may be read before the sender's
//! `InTransit`. Each encoding carries a transit id, and transits are counted per id: an id
//! whose `Received` came first is below zero for a while and counts as none, and the
//! sender's attachment holds the name until its `InTransit` is read. (Counted per name, one
//! receiver's early `Received` could cancel the transit of another encoding: a forwarder's,
//! whose own `Received` the tracker had not read yet.)
//!
//! The tracker exits when its last connection closes, after unlinking what is left; a later
//! user starts a new one. Accepting a connection is confirmed with one byte, so a client that
//! reached a tracker on its way out knows to start another.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bootstrap::{self, Bootstrap, Report, Task};
use crate::connection::endpoint::HeldFds;
use crate::process::tree::{self, Me, ParentInfo};
use crate::start::{self, Instructions, spawn};
use crate::sys::{self, FrameReader};
use crate::{callable, codec};

/// One message to the tracker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Msg {
    /// This program is about to create the object `name`; the sender holds it once.
    Created(String),
    /// Creating failed (the name existed): the program did not make it.
    Forget(String),
    /// The sender maps `name` once more.
    Attached(String),
    /// The sender maps `name` once less.
    Detached(String),
    /// An encoding of `name` left (transit id second; see `segment::Transit`).
    InTransit(String, u64),
    /// The sender decoded that encoding: the transit becomes an attachment of the sender's.
    Received(String, u64),
    /// The program unlinked `name` itself: stop tracking it.
    Unlinked(String),
    /// `part` (the first name) belongs to the object `owner` (the second): it stays while
    /// the owner does, whoever holds it, and goes with it (a queue's rings and large items).
    PartOf(String, String),
}

/// How long a tracker with no connection left waits for the receivers of encodings still in
/// transit before it unlinks everything and exits.
const TRANSIT_GRACE: Duration = Duration::from_secs(10);

/// How long a client waits for a tracker to start or to confirm a connection.
const START_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The client

pub(crate) struct Client {
    /// The process that made the connection (a fork child must make its own).
    pid: u32,
    /// The connection (held as a parent-only descriptor, so a fork child never keeps it).
    sock: HeldFds,
}

impl Client {
    /// Sends one encoded message; a tracker that reads nothing for this long is reported.
    fn write(&self, bytes: &[u8]) -> io::Result<()> {
        let sock = self
            .sock
            .as_slice()
            .first()
            .ok_or(io::ErrorKind::NotConnected)?;
        sys::send_frame(sock.as_fd(), bytes, &[], Some(START_TIMEOUT))
    }
}

static CLIENT: Mutex<Option<Client>> = Mutex::new(None);

/// Locks the client (held across `fork`, see `start/fork.rs`).
pub(crate) fn lock_client() -> MutexGuard<'static, Option<Client>> {
    CLIENT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends `msg`, connecting (and starting a tracker) first if needed.
///
/// # Errors
///
/// When no tracker can be reached or started (for example when a program that never called
/// the start-up hook creates tracked memory).
pub(crate) fn send(msg: &Msg) -> io::Result<()> {
    let bytes = codec::encode(msg).map_err(io::Error::other)?;
    let mut client = lock_client();
    // One retry: a tracker may have exited between two messages (its last other user gone
    // and this process's connection found closed).
    for attempt in 0..2 {
        let me = sys::caller().0;
        if client.as_ref().is_none_or(|c| c.pid != me) {
            // Connecting (or starting a tracker, which may fork) happens without the lock:
            // a fork takes every multiproc lock, this one after the launch window.
            drop(client);
            let fresh = connect_or_start(&Seed::now())?;
            client = lock_client();
            if client.as_ref().is_none_or(|c| c.pid != me) {
                *client = Some(fresh);
            }
        }
        let Some(c) = client.as_ref() else {
            continue;
        };
        match c.write(&bytes) {
            Ok(()) => return Ok(()),
            // Gone (the tracker exited): connect again. Slow (a timeout): keep the
            // connection, which holds this process's counts, and report the error.
            Err(e) if attempt == 0 && tracker_gone(&e) => *client = None,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("the segment tracker is unreachable"))
}

fn tracker_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
    )
}

/// Sends `msg` if a tracker can be reached, ignoring failures.
pub(crate) fn send_quietly(msg: &Msg) {
    let _ = send(msg);
}

/// Sends `msg` only over this process's existing connection (a `Detached` in `Drop`: with
/// no connection, this process holds no count to take back, and no tracker is started just
/// to hear it).
pub(crate) fn send_if_connected(msg: &Msg) {
    let Ok(bytes) = codec::encode(msg) else {
        return;
    };
    let client = lock_client();
    if let Some(c) = client.as_ref().filter(|c| c.pid == sys::caller().0) {
        let _ = c.write(&bytes);
    }
}

/// In a fork child: the parent's connection is the parent's (its descriptor was pointed at
/// /dev/null with the other parent-only descriptors).
pub(crate) fn after_fork_in_child(client: &mut Option<Client>) {
    if let Some(c) = client.take() {
        // Forgotten, not freed: see `registry::after_fork_in_child`.
        std::mem::forget(c);
    }
}

/// What starting a tracker needs, read from the identity only when connecting, never with the
/// client lock held (the fork path takes the identity lock first).
struct Seed {
    address: Vec<u8>,
    me: Me,
}

impl Seed {
    fn now() -> Self {
        tree::with(|me| Self {
            address: address_for(&me.authkey),
            me: Me {
                name: "SegmentTracker".to_owned(),
                identity: Vec::new(),
                daemon: true,
                authkey: me.authkey,
                parent: Some(ParentInfo {
                    name: me.name.clone(),
                    pid: sys::getpid().as_raw_nonzero().get(),
                }),
                next_child: 1,
            },
        })
    }
}

/// The tracker's abstract socket name: one per program (the authkey is the program's).
fn address_for(authkey: &[u8; 32]) -> Vec<u8> {
    let digest = Sha256::new()
        .chain_update(b"multiproc-segment-tracker")
        .chain_update(authkey)
        .finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("multiproc-tracker-{hex}").into_bytes()
}

fn connect_or_start(seed: &Seed) -> io::Result<Client> {
    let me = sys::caller().0;
    if let Ok(sock) = connect(&seed.address) {
        return Ok(Client {
            pid: me,
            sock: HeldFds::new(vec![OwnedFd::from(sock)]),
        });
    }
    let channel = start(seed)?;
    Ok(Client {
        pid: me,
        sock: HeldFds::new(vec![OwnedFd::from(channel)]),
    })
}

/// Connects to a running tracker and waits for its confirmation byte.
fn connect(address: &[u8]) -> io::Result<UnixStream> {
    let addr = SocketAddr::from_abstract_name(address)?;
    let mut sock = UnixStream::connect_addr(&addr)?;
    if !sys::peer_is_same_user(sock.as_fd()) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the segment tracker's socket belongs to another user",
        ));
    }
    sock.set_read_timeout(Some(START_TIMEOUT))?;
    let mut hello = [0u8; 1];
    sock.read_exact(&mut hello)?;
    sock.set_read_timeout(None)?;
    Ok(sock)
}

/// Starts a tracker (spawned like the forkserver, so it begins clean) and returns the
/// start-up channel, which is this process's connection. If another process won the race to
/// listen, connects to that one instead.
fn start(seed: &Seed) -> io::Result<UnixStream> {
    let Ok(hook) = start::require_hook() else {
        // No hook to spawn a clean process with: fork one (its copy of this process's pages
        // costs nothing until this process writes them).
        let channel = crate::start::fork::fork_helper(serve)?;
        return await_ready(channel, None, seed);
    };
    let boot = Bootstrap {
        build_id: callable::build_identity().to_vec(),
        me: seed.me.clone(),
        forkserver: None,
        start_method: None,
        hook,
        stdin_attached: false,
        stdout_attached: false,
        task: Task::Tracker,
    };
    let launched = spawn::spawn_with(
        sys::self_exe(),
        Instructions {
            boot,
            fds: Vec::new(),
        },
    )
    .map_err(io::Error::other)?;
    let pid = launched.pid;
    await_ready(launched.channel, Some(pid), seed)
}

/// Waits for a new tracker's first report; `pid` is ended if it will not serve.
fn await_ready(channel: UnixStream, pid: Option<sys::Pid>, seed: &Seed) -> io::Result<UnixStream> {
    let mut reader = FrameReader::default();
    let frame = reader.recv_frame(channel.as_fd(), Some(START_TIMEOUT));
    let answer = match frame {
        Ok(Some(f)) => codec::decode::<Report>(&f.bytes).ok(),
        _ => None,
    };
    let end = |pid: Option<sys::Pid>| {
        if let Some(pid) = pid {
            sys::kill_and_reap(pid);
        }
    };
    match answer {
        // The tracker outlives this call and is reaped by whoever adopts it; its end shows
        // on the channel.
        Some(Report::TrackerReady) => Ok(channel),
        Some(Report::TrackerBusy) => {
            end(pid);
            connect(&seed.address)
        }
        _ => {
            end(pid);
            Err(io::Error::other("the segment tracker did not start"))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The server

/// What the tracker knows of one name.
#[derive(Default)]
struct Entry {
    /// How many creations by the program are standing (a failed attempt on a name another
    /// creator holds takes back only its own); above zero, the name is the program's to
    /// unlink.
    created: i64,
    /// Encodings in transit, by transit id: +1 for its `InTransit`, -1 for its `Received`
    /// (so -1 for a moment when the `Received` is read first: see [`Tracker::total`]); an id
    /// at 0 is removed.
    transits: HashMap<u64, i64>,
    /// The object this name is part of (see [`Msg::PartOf`]).
    owner: Option<String>,
}

/// One connected process.
struct Conn {
    sock: UnixStream,
    reader: FrameReader,
    /// Attachments of this process, per name.
    refs: HashMap<String, i64>,
}

struct Tracker {
    names: HashMap<String, Entry>,
    conns: Vec<Conn>,
    /// Names to unlink now (kept apart from the bookkeeping so it can be tested without
    /// touching /dev/shm).
    doomed: Vec<String>,
}

impl Tracker {
    /// What holds `name`: every attachment, and every encoding in transit. A transit whose
    /// `Received` was read before its `InTransit` (they come on different connections)
    /// counts as none: its receiver may already have let go or died, and the sender, which
    /// holds the name until its `InTransit` is read (its own `Detached` comes after it, on
    /// the same connection), must not be outvoted by it. Counting per transit id keeps one
    /// early `Received` from cancelling another encoding's transit (a process that forwards
    /// a name it received, before the tracker has read its own `Received`).
    fn total(&self, name: &str) -> i64 {
        let attached: i64 = self.conns.iter().filter_map(|c| c.refs.get(name)).sum();
        let in_transit = self
            .names
            .get(name)
            .map_or(0, |e| e.transits.values().map(|&n| n.max(0)).sum());
        attached + in_transit
    }

    /// Adds `delta` to transit `id` of `name`.
    fn count_transit(&mut self, name: &str, id: u64, delta: i64) {
        let e = self.names.entry(name.to_owned()).or_default();
        let n = e.transits.entry(id).or_default();
        *n += delta;
        if *n == 0 {
            e.transits.remove(&id);
        }
    }

    fn apply(&mut self, conn: usize, msg: Msg) {
        match msg {
            Msg::Created(name) => {
                self.names.entry(name.clone()).or_default().created += 1;
                self.attach(conn, name, 1);
            }
            Msg::Forget(name) => {
                if self.attach(conn, name.clone(), -1) {
                    if let Some(e) = self.names.get_mut(&name) {
                        e.created -= 1;
                    }
                }
                self.settle(&name);
            }
            Msg::Attached(name) => {
                self.attach(conn, name, 1);
            }
            Msg::Detached(name) => {
                self.attach(conn, name.clone(), -1);
                self.settle(&name);
            }
            Msg::InTransit(name, id) => self.count_transit(&name, id, 1),
            Msg::Received(name, id) => {
                self.count_transit(&name, id, -1);
                self.attach(conn, name.clone(), 1);
                self.settle(&name);
            }
            Msg::Unlinked(name) => {
                if let Some(e) = self.names.get_mut(&name) {
                    e.created = 0;
                }
                self.settle(&name);
            }
            Msg::PartOf(part, owner) => {
                if self.names.contains_key(&owner) {
                    self.names.entry(part.clone()).or_default().owner = Some(owner);
                }
                self.settle(&part);
            }
        }
    }

    /// Counts one more (`delta` 1) or one less (-1) hold of `name` by `conn`. A connection
    /// never lets go of more than it holds (a confused or reconnected client cannot push a
    /// count below zero and so unlink what others hold); returns whether anything changed.
    fn attach(&mut self, conn: usize, name: String, delta: i64) -> bool {
        self.names.entry(name.clone()).or_default();
        let Some(c) = self.conns.get_mut(conn) else {
            return false;
        };
        let held = c.refs.get(&name).copied().unwrap_or(0);
        if held + delta < 0 {
            return false;
        }
        if held + delta == 0 {
            c.refs.remove(&name);
        } else {
            c.refs.insert(name, held + delta);
        }
        true
    }

    /// Unlinks (if the program's) and forgets `name` once nothing holds it.
    fn settle(&mut self, name: &str) {
        if self.total(name) > 0 {
            return;
        }
        let held = self.conns.iter().any(|c| c.refs.contains_key(name));
        let Some(e) = self.names.get(name) else {
            return;
        };
        if e.created > 0 {
            if e.owner.as_ref().is_some_and(|o| self.names.contains_key(o)) {
                return; // kept by its owner
            }
            self.doom(name);
        } else if !held && e.transits.is_empty() {
            self.names.remove(name);
        }
    }

    /// Unlinks `name` (the program's) and, with it, its parts.
    fn doom(&mut self, name: &str) {
        self.names.remove(name);
        self.doomed.push(name.to_owned());
        let parts: Vec<String> = self
            .names
            .iter()
            .filter(|(_, e)| e.owner.as_deref() == Some(name))
            .map(|(n, _)| n.clone())
            .collect();
        for part in parts {
            if self.names.get(&part).is_some_and(|e| e.created > 0) {
                self.doom(&part);
            } else {
                // The program already unlinked it; what is left is bookkeeping.
                self.names.remove(&part);
            }
        }
    }

    /// Whether some encoding is still on its way to a receiver.
    fn in_transit(&self) -> bool {
        self.names
            .values()
            .any(|e| e.created > 0 && e.transits.values().any(|&n| n > 0))
    }

    fn drop_conn(&mut self, i: usize) {
        let conn = self.conns.swap_remove(i);
        for name in conn.refs.keys() {
            self.settle(name);
        }
    }

    fn doom_all(&mut self) {
        for (name, e) in self.names.drain() {
            if e.created > 0 {
                self.doomed.push(name);
            }
        }
    }

    fn unlink_doomed(&mut self) {
        for name in self.doomed.drain(..) {
            let _ = sys::shm_unlink(&name);
        }
    }
}

/// The tracker's main loop; `channel` leads to the process that started it and counts as
/// its first connection.
pub(crate) fn serve(channel: UnixStream) -> ! {
    // Ctrl-C and a polite SIGTERM to the process group are the program's business: the
    // tracker must outlive the processes it cleans up after.
    sys::ignore_sigint(true);
    sys::ignore_sigterm();
    sys::ignore_sighup();
    let address = tree::with(|me| address_for(&me.authkey));
    let listener =
        match SocketAddr::from_abstract_name(&address).and_then(|a| UnixListener::bind_addr(&a)) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                bootstrap::send_report(&channel, &Report::TrackerBusy);
                sys::exit_now(0)
            }
            Err(_) => sys::exit_now(1),
        };
    if listener.set_nonblocking(true).is_err() || channel.set_nonblocking(true).is_err() {
        sys::exit_now(1);
    }
    bootstrap::send_report(&channel, &Report::TrackerReady);
    // Hold none of the program's standard streams: a reader of its output waits for end of
    // file, and the tracker may outlive the program's last process by a moment.
    for fd in 0..3 {
        sys::neutralize_fd(fd);
    }
    let mut t = Tracker {
        doomed: Vec::new(),
        names: HashMap::new(),
        conns: vec![Conn {
            sock: channel,
            reader: FrameReader::with_limit(4096),
            refs: HashMap::new(),
        }],
    };
    // With no connection left but encodings still in transit (a child's result that
    // carries a segment by name, say), wait a while for their receivers.
    let mut grace: Option<std::time::Instant> = None;
    loop {
        if t.conns.is_empty() {
            let until = *grace.get_or_insert_with(|| std::time::Instant::now() + TRANSIT_GRACE);
            if !t.in_transit() || std::time::Instant::now() >= until {
                break;
            }
        } else {
            grace = None;
        }
        let mut fds = vec![listener.as_fd()];
        fds.extend(t.conns.iter().map(|c| c.sock.as_fd()));
        let wait = grace.map(|g| g.saturating_duration_since(std::time::Instant::now()));
        let ready = match sys::poll_fds(&fds, wait) {
            Ok(r) => r,
            Err(_) => break,
        };
        drop(fds);
        let mut gone = Vec::new();
        for &i in &ready {
            if i == 0 {
                accept_all(&listener, &mut t);
                continue;
            }
            let c = i - 1;
            let conn = &mut t.conns[c];
            let open = conn.reader.fill(conn.sock.as_fd(), false).unwrap_or(false);
            let mut msgs = Vec::new();
            let mut open = open;
            loop {
                match conn.reader.next_frame() {
                    Ok(Some(frame)) => {
                        if let Ok(msg) = codec::decode::<Msg>(&frame.bytes) {
                            msgs.push(msg);
                        }
                    }
                    Ok(None) => break,
                    // An oversized frame: not one of ours. Its sender is dropped.
                    Err(_) => {
                        open = false;
                        break;
                    }
                }
            }
            for msg in msgs {
                if valid_name(msg_name(&msg)) {
                    t.apply(c, msg);
                }
            }
            if !open {
                gone.push(c);
            }
        }
        gone.sort_unstable();
        for c in gone.into_iter().rev() {
            t.drop_conn(c);
        }
        t.unlink_doomed();
    }
    // Nobody is left: stop listening first, so a late client starts a new tracker rather
    // than talk to this one, then clean up.
    drop(listener);
    t.doom_all();
    t.unlink_doomed();
    sys::exit_now(0)
}

fn accept_all(listener: &UnixListener, t: &mut Tracker) {
    while let Ok((sock, _)) = listener.accept() {
        if !sys::peer_is_same_user(sock.as_fd()) {
            continue;
        }
        let ok = sock.set_nonblocking(true).is_ok()
            && sys::send_all(sock.as_fd(), [&[1u8], &[], &[]], &[], Some(deadline())).is_ok();
        if ok {
            t.conns.push(Conn {
                sock,
                reader: FrameReader::with_limit(4096),
                refs: HashMap::new(),
            });
        }
    }
}

fn deadline() -> std::time::Instant {
    std::time::Instant::now() + Duration::from_secs(1)
}

fn msg_name(msg: &Msg) -> &str {
    match msg {
        Msg::Created(n)
        | Msg::Forget(n)
        | Msg::Attached(n)
        | Msg::Detached(n)
        | Msg::InTransit(n, _)
        | Msg::Received(n, _)
        | Msg::Unlinked(n) => n,
        Msg::PartOf(part, owner) => {
            if valid_name(owner) {
                part
            } else {
                owner
            }
        }
    }
}

/// A name the tracker may act on: what `shm_open` accepts, one path component.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 250 && !name.contains('/') && name != "." && name != ".."
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(conns: usize) -> Tracker {
        Tracker {
            names: HashMap::new(),
            conns: (0..conns)
                .map(|_| {
                    let (a, _b) = UnixStream::pair().unwrap();
                    // The peer end is dropped: these connections are bookkeeping only.
                    Conn {
                        sock: a,
                        reader: FrameReader::default(),
                        refs: HashMap::new(),
                    }
                })
                .collect(),
            doomed: Vec::new(),
        }
    }

    fn s(x: &str) -> String {
        x.to_owned()
    }

    #[test]
    fn the_last_detach_unlinks_what_the_program_created() {
        let mut t = tracker(2);
        t.apply(0, Msg::Created(s("a")));
        t.apply(1, Msg::Attached(s("a")));
        t.apply(0, Msg::Detached(s("a")));
        assert!(t.doomed.is_empty());
        t.apply(1, Msg::Detached(s("a")));
        assert_eq!(t.doomed, [s("a")]);
    }

    #[test]
    fn a_part_stays_while_its_owner_does_and_goes_with_it() {
        let mut t = tracker(2);
        t.apply(0, Msg::Created(s("q")));
        t.apply(0, Msg::Created(s("q.r1")));
        t.apply(0, Msg::PartOf(s("q.r1"), s("q")));
        t.apply(1, Msg::Attached(s("q")));
        // The process that made the part lets go of both: the other still holds the owner.
        t.apply(0, Msg::Detached(s("q.r1")));
        t.apply(0, Msg::Detached(s("q")));
        assert!(t.doomed.is_empty(), "kept by its owner");
        t.apply(1, Msg::Detached(s("q")));
        assert_eq!(t.doomed, [s("q"), s("q.r1")]);
    }

    #[test]
    fn a_part_unlinked_by_the_program_is_forgotten_once_let_go() {
        let mut t = tracker(1);
        t.apply(0, Msg::Created(s("q")));
        t.apply(0, Msg::Created(s("big")));
        t.apply(0, Msg::PartOf(s("big"), s("q")));
        t.apply(0, Msg::Unlinked(s("big")));
        t.apply(0, Msg::Detached(s("big")));
        assert!(!t.names.contains_key("big"));
        t.apply(0, Msg::Detached(s("q")));
        assert_eq!(t.doomed, [s("q")]);
    }

    #[test]
    fn a_failed_creation_takes_back_only_its_own_claim() {
        let mut t = tracker(1);
        t.apply(0, Msg::Created(s("a")));
        t.apply(0, Msg::Created(s("a")));
        t.apply(0, Msg::Forget(s("a")));
        assert!(t.doomed.is_empty());
        t.apply(0, Msg::Detached(s("a")));
        assert_eq!(t.doomed, [s("a")]);
    }

    #[test]
    fn foreign_names_are_counted_but_never_unlinked() {
        let mut t = tracker(1);
        t.apply(0, Msg::Attached(s("python")));
        t.apply(0, Msg::Detached(s("python")));
        t.drop_conn(0);
        t.doom_all();
        assert!(t.doomed.is_empty());
        assert!(t.names.is_empty());
    }

    #[test]
    fn a_transit_keeps_the_name_until_received_in_either_order() {
        let mut t = tracker(2);
        t.apply(0, Msg::Created(s("a")));
        t.apply(0, Msg::InTransit(s("a"), 1));
        t.apply(0, Msg::Detached(s("a")));
        assert!(t.doomed.is_empty(), "held by the encoding in transit");
        t.apply(1, Msg::Received(s("a"), 1));
        assert!(t.doomed.is_empty());
        t.apply(1, Msg::Detached(s("a")));
        assert_eq!(t.doomed, [s("a")]);

        // The receiver's message read first: the sender's attachment still holds it.
        let mut t = tracker(2);
        t.apply(0, Msg::Created(s("b")));
        t.apply(1, Msg::Received(s("b"), 1));
        t.apply(0, Msg::InTransit(s("b"), 1));
        t.apply(0, Msg::Detached(s("b")));
        assert!(t.doomed.is_empty());
        t.apply(1, Msg::Detached(s("b")));
        assert_eq!(t.doomed, [s("b")]);
    }

    #[test]
    fn a_receiver_that_lets_go_before_the_transit_is_read_does_not_unlink_what_the_sender_holds() {
        for dies in [false, true] {
            // The sender (0) holds the name; the receiver (1) got it, used it and let go (or
            // died), all read before the sender's InTransit.
            let mut t = tracker(2);
            t.apply(0, Msg::Created(s("a")));
            t.apply(1, Msg::Received(s("a"), 1));
            if dies {
                t.drop_conn(1);
            } else {
                t.apply(1, Msg::Detached(s("a")));
            }
            assert!(
                t.doomed.is_empty(),
                "the sender still holds it (dies: {dies})"
            );
            t.apply(0, Msg::InTransit(s("a"), 1));
            assert!(t.doomed.is_empty());
            t.apply(0, Msg::Detached(s("a")));
            assert_eq!(t.doomed, [s("a")], "dies: {dies}");
        }
    }

    #[test]
    fn a_forwarded_name_stays_while_the_forwarder_holds_it_whatever_is_read_first() {
        // The creator (0) sends `a` to a forwarder (1) and lets go; the forwarder sends it
        // on to a receiver (2), which uses it and lets go. The tracker reads the creator's
        // and the receiver's messages before any of the forwarder's.
        let mut t = tracker(3);
        t.apply(0, Msg::Created(s("a")));
        t.apply(0, Msg::InTransit(s("a"), 1));
        t.apply(0, Msg::Detached(s("a")));
        t.apply(2, Msg::Received(s("a"), 2));
        t.apply(2, Msg::Detached(s("a")));
        assert!(
            t.doomed.is_empty(),
            "the forwarder's transit still holds it"
        );
        t.apply(1, Msg::Received(s("a"), 1));
        t.apply(1, Msg::InTransit(s("a"), 2));
        assert!(t.doomed.is_empty(), "the forwarder holds it");
        t.apply(1, Msg::Detached(s("a")));
        assert_eq!(t.doomed, [s("a")]);
        assert!(t.names.is_empty());
    }

    #[test]
    fn a_dead_connection_lets_go_of_everything_it_held() {
        let mut t = tracker(2);
        t.apply(0, Msg::Created(s("a")));
        t.apply(0, Msg::Attached(s("a")));
        t.apply(1, Msg::Attached(s("a")));
        t.drop_conn(0);
        assert!(t.doomed.is_empty());
        t.drop_conn(0);
        assert_eq!(t.doomed, [s("a")]);
    }

    #[test]
    fn a_connection_never_lets_go_of_more_than_it_holds() {
        let mut t = tracker(2);
        t.apply(0, Msg::Created(s("a")));
        // A confused client (one that reconnected, say) detaches what it never attached.
        t.apply(1, Msg::Detached(s("a")));
        t.apply(1, Msg::Detached(s("a")));
        assert!(t.doomed.is_empty(), "the creator still holds it");
        t.apply(0, Msg::Detached(s("a")));
        assert_eq!(t.doomed, [s("a")]);
    }

    #[test]
    fn encodings_in_transit_are_known() {
        let mut t = tracker(1);
        t.apply(0, Msg::Created(s("a")));
        t.apply(0, Msg::InTransit(s("a"), 1));
        t.drop_conn(0);
        assert!(t.in_transit(), "a receiver may still come");
        assert!(t.doomed.is_empty());
    }

    #[test]
    fn an_explicit_unlink_stops_tracking() {
        let mut t = tracker(1);
        t.apply(0, Msg::Created(s("a")));
        t.apply(0, Msg::Unlinked(s("a")));
        t.apply(0, Msg::Detached(s("a")));
        assert!(t.doomed.is_empty());
    }

    #[test]
    fn names_that_could_escape_dev_shm_are_refused() {
        assert!(valid_name("psm_1234abcd"));
        for bad in ["", ".", "..", "a/b", &"x".repeat(251)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
