//! A Barrier's action is code: it reaches another process only as a Process argument (from
//! this program's own parent, build checked), never from a message, where bytes could name
//! any address.

use std::time::Duration;

use multiproc::{Barrier, get_context, pipe};

fn nothing() {}

fn pass(b: Barrier) -> u32 {
    b.wait().unwrap()
}

#[multiproc::test]
fn an_action_travels_as_a_process_argument() {
    for m in ["fork", "spawn", "forkserver"] {
        let b = Barrier::builder(2).action(nothing).build().unwrap();
        let mut p = get_context(m).unwrap().process(pass, b.clone());
        p.start().unwrap();
        let mine = b.wait().unwrap();
        assert!(p.join_timeout(Duration::from_secs(20)).unwrap());
        let theirs = p.join_result().unwrap();
        assert_eq!(mine + theirs, 1, "{m}: indices 0 and 1");
    }
}

#[multiproc::test]
fn an_action_is_refused_inside_a_message() {
    let (mut a, mut b) = pipe::<Barrier>(true).unwrap();
    let with_action = Barrier::builder(2).action(nothing).build().unwrap();
    a.send(&with_action).unwrap();
    assert!(b.recv_timeout(Duration::from_secs(5)).is_err());
    // Without an action a Barrier goes anywhere.
    a.send(&Barrier::new(2).unwrap()).unwrap();
    let got = b.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(got.parties(), 2);
}
