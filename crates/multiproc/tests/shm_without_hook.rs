//! A program that never calls the start-up hook (fork only) still gets shared objects that
//! clean up after themselves: its segment tracker is forked instead of spawned.

use std::time::Duration;

mod common;

use common::shm_gone_soon;
use multiproc::{Lock, SharedMemory, get_context};

fn write_and_lock((shm, lock): (SharedMemory, Lock)) {
    let _held = lock.acquire().ok();
    shm.write(0, b"fork").unwrap();
}

#[test]
fn fork_only_programs_get_a_forked_tracker() {
    let shm = SharedMemory::create(8).unwrap();
    let lock = Lock::new().unwrap();
    let mut p = get_context("fork")
        .unwrap()
        .process(write_and_lock, (shm.clone(), lock.clone()));
    p.start().unwrap();
    assert!(p.join_timeout(Duration::from_secs(20)).unwrap());
    assert_eq!(p.exitcode().unwrap(), Some(0));
    assert_eq!(&shm.to_vec()[..4], b"fork");
    assert!(!lock.is_locked());
    let name = shm.name().to_owned();
    drop((shm, lock));
    assert!(shm_gone_soon(&name), "{name} left behind");
}
