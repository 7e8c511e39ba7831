//! Shared memory inside a message that is never delivered does not outlive its handles: a
//! Process never started, a child that ends before it decodes its arguments, a send that
//! fails, an encoding that fails part way. In each case the segment leaves /dev/shm once the
//! program drops its last handle (each encoding counts the segment "in transit" until a
//! receiver decodes it; an encoding that no one will decode must take that back).

use std::time::Duration;

mod common;

use common::{shm_exists, shm_gone_soon};
use multiproc::{Connection, Process, SharedMemory, get_context, pipe};
use serde::{Deserialize, Serialize, Serializer};

const LONG: Duration = Duration::from_secs(20);

/// A value whose encoding always fails (after whatever is encoded before it).
#[derive(Debug, Deserialize)]
struct Refuses;

impl Serialize for Refuses {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("refused"))
    }
}

fn keep(shm: SharedMemory) -> usize {
    shm.size()
}

fn keep_pair((shm, _): (SharedMemory, Refuses)) -> usize {
    shm.size()
}

const METHODS: [&str; 3] = ["fork", "spawn", "forkserver"];

/// A fresh segment and its name.
fn segment() -> (SharedMemory, String) {
    let shm = SharedMemory::create(64).unwrap();
    let name = shm.name().to_owned();
    assert!(shm_exists(&name));
    (shm, name)
}

#[multiproc::test]
fn a_process_never_started_lets_go_of_its_arguments() {
    let (shm, name) = segment();
    let p = Process::new(keep, shm.clone());
    drop(shm);
    assert!(shm_exists(&name), "the unstarted process still holds it");
    drop(p);
    assert!(shm_gone_soon(&name), "{name} outlived every handle");
}

#[multiproc::test]
fn arguments_that_fail_to_encode_let_go_of_the_segment_before_them() {
    let (shm, name) = segment();
    let mut p = Process::new(keep_pair, (shm.clone(), Refuses));
    let err = p.start().unwrap_err().to_string();
    assert!(err.contains("cannot encode"), "{err}");
    drop(shm);
    // The process handle is still alive: the failed encoding let go at once.
    assert!(shm_gone_soon(&name), "{name} kept by a failed encoding");
    drop(p);
}

/// A child started with `method` and a fresh segment as its argument; the segment and its
/// name.
fn started_with_segment(method: &str) -> (Process<usize>, SharedMemory, String) {
    let (shm, name) = segment();
    let mut p = get_context(method).unwrap().process(keep, shm.clone());
    p.start().unwrap();
    (p, shm, name)
}

#[multiproc::test]
fn a_child_killed_before_or_after_decoding_its_arguments_lets_go_of_them() {
    for method in METHODS {
        let (p, shm, name) = started_with_segment(method);
        // Usually before the child has decoded its arguments (spawn and forkserver take a
        // while to get there); either way the segment must go with the last handle.
        p.kill().unwrap();
        assert!(p.join_timeout(LONG).unwrap(), "{method}: child did not end");
        drop(shm);
        // The handle is kept: the end of the child is what gives the arguments back.
        assert!(
            shm_gone_soon(&name),
            "{method}: {name} outlived its handles and its killed child"
        );
        drop(p);
    }
}

#[multiproc::test]
fn a_child_that_ran_lets_go_of_its_arguments_too() {
    for method in METHODS {
        let (mut p, shm, name) = started_with_segment(method);
        assert!(p.join_timeout(LONG).unwrap(), "{method}: child did not end");
        assert_eq!(p.join_result().unwrap(), 64);
        drop(shm);
        assert!(shm_gone_soon(&name), "{method}: {name} left behind");
        // (Taking a decoded transit back again changed nothing.)
        drop(p);
    }
}

/// Makes a segment, tells the parent its name, and returns it.
fn make_and_return(mut conn: Connection<String>) -> SharedMemory {
    let shm = SharedMemory::create(64).unwrap();
    conn.send(&shm.name().to_owned()).unwrap();
    shm
}

/// A child started with `method` that made a segment and returned it, ended; the segment's
/// name.
fn ended_returning_segment(method: &str) -> (Process<SharedMemory>, String) {
    let (mut here, there) = pipe::<String>(true).unwrap();
    let mut p = get_context(method).unwrap().process(make_and_return, there);
    p.start().unwrap();
    let name = here.recv_timeout(LONG).unwrap();
    assert!(p.join_timeout(LONG).unwrap(), "{method}: child did not end");
    (p, name)
}

#[multiproc::test]
fn a_result_never_taken_lets_go_of_its_segment() {
    for method in METHODS {
        let (p, name) = ended_returning_segment(method);
        assert!(shm_exists(&name), "{method}: the result still holds {name}");
        // Never taken: the segment goes with the handle that holds the result.
        drop(p);
        assert!(
            shm_gone_soon(&name),
            "{method}: {name} kept by a result never taken"
        );
    }
}

#[multiproc::test]
fn a_result_taken_holds_its_segment_until_dropped() {
    for method in METHODS {
        let (mut p, name) = ended_returning_segment(method);
        let shm = p.join_result().unwrap();
        drop(p);
        assert_eq!(shm.name(), name);
        shm.write(0, &[1, 2, 3]).unwrap();
        assert_eq!(shm.to_vec()[..3], [1, 2, 3]);
        drop(shm);
        assert!(shm_gone_soon(&name), "{method}: {name} left behind");
    }
}

#[multiproc::test]
fn a_send_to_a_closed_peer_lets_go_of_the_segment() {
    let (shm, name) = segment();
    let (mut here, there) = pipe::<SharedMemory>(true).unwrap();
    drop(there);
    assert!(here.send(&shm).is_err(), "the peer is gone");
    drop(shm);
    assert!(shm_gone_soon(&name), "{name} kept by a send that failed");
}

#[multiproc::test]
fn a_batch_sent_to_a_closed_peer_lets_go_of_its_segments() {
    let (a, a_name) = segment();
    let (b, b_name) = segment();
    let (mut here, there) = pipe::<SharedMemory>(true).unwrap();
    drop(there);
    assert!(here.send_many([&a, &b]).is_err(), "the peer is gone");
    drop((a, b));
    assert!(
        shm_gone_soon(&a_name),
        "{a_name} kept by a batch that failed"
    );
    assert!(
        shm_gone_soon(&b_name),
        "{b_name} kept by a batch that failed"
    );
}

#[multiproc::test]
fn a_message_that_fails_to_encode_lets_go_of_its_segment_and_sends_nothing() {
    let (shm, name) = segment();
    let (mut here, mut there) = pipe::<u8>(true).unwrap();
    let err = here.send_as(&(shm.clone(), Refuses)).unwrap_err();
    assert!(err.to_string().contains("cannot encode"), "{err}");
    drop(shm);
    assert!(shm_gone_soon(&name), "{name} kept by a failed encoding");
    // The connection still works, and nothing of the failed message reached the peer.
    here.send(&7).unwrap();
    assert_eq!(there.recv_timeout(LONG).unwrap(), 7);
}

#[multiproc::test]
fn a_delivered_segment_stays_while_the_receiver_holds_it() {
    // The other side of the rule: a send that succeeds leaves the segment to its receiver.
    let (shm, name) = segment();
    let (mut here, mut there) = pipe::<SharedMemory>(true).unwrap();
    here.send(&shm).unwrap();
    drop(shm);
    let got = there.recv_timeout(LONG).unwrap();
    assert_eq!(got.name(), name);
    // A message through the tracker after our drop: give it time to act, by making a new
    // segment and waiting for a third one to go (the tracker reads in order per process).
    let (probe, probe_name) = segment();
    drop(probe);
    assert!(shm_gone_soon(&probe_name));
    assert!(
        shm_exists(&name),
        "{name} unlinked while the receiver holds it"
    );
    drop(got);
    assert!(shm_gone_soon(&name), "{name} left behind");
}
