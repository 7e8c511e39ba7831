//! Arguments and results of any size cross every start method intact.
//!
//! Bulk bytes travel as `serde_bytes::ByteBuf`, which serde encodes as one block (a plain
//! `Vec<u8>` is encoded byte by byte).

use multiproc::{Context, StartMethod};
use serde_bytes::ByteBuf;

const METHODS: [StartMethod; 3] = [
    StartMethod::Fork,
    StartMethod::Spawn,
    StartMethod::Forkserver,
];

/// A position-sensitive checksum, over 8-byte words so it stays quick in debug builds.
fn checksum(data: &[u8]) -> u64 {
    let mut sum = data.len() as u64;
    for (i, chunk) in data.chunks(8).enumerate() {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        sum = sum
            .wrapping_mul(31)
            .wrapping_add(u64::from_le_bytes(word) ^ i as u64);
    }
    sum
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut v = vec![seed; len];
    for (i, b) in v.iter_mut().enumerate().step_by(4093) {
        *b = (i % 251) as u8;
    }
    v
}

/// The checksum of the argument, and a result of the asked size.
fn digest_and_grow((data, out_len): (ByteBuf, usize)) -> (u64, ByteBuf) {
    (checksum(&data), ByteBuf::from(pattern(out_len, 9)))
}

fn check(method: StartMethod, arg_len: usize, out_len: usize) {
    let data = pattern(arg_len, 3);
    let want = checksum(&data);
    let mut p = Context::new(method).process(digest_and_grow, (ByteBuf::from(data), out_len));
    p.start().unwrap_or_else(|e| panic!("{method}: start: {e}"));
    let (sum, out) = p.join_result().unwrap_or_else(|e| panic!("{method}: {e}"));
    assert_eq!(sum, want, "{method}: argument of {arg_len} bytes");
    assert_eq!(out.len(), out_len, "{method}");
    assert_eq!(
        checksum(&out),
        checksum(&pattern(out_len, 9)),
        "{method}: result of {out_len} bytes"
    );
}
#[multiproc::test]
fn small_and_empty_payloads() {
    for method in METHODS {
        check(method, 0, 0);
        check(method, 1, 1);
    }
}

#[multiproc::test]
fn payloads_around_the_inline_limit() {
    for method in METHODS {
        for len in [32 * 1024 - 8, 32 * 1024 + 8, 300 * 1024] {
            check(method, len, len);
        }
    }
}

/// Over the 64 MiB frame limit: the bytes must go around the socket (fork passes arguments
/// in memory, so only the result is at stake there, and it takes the same path as the
/// others').
#[multiproc::test]
fn payloads_larger_than_any_frame() {
    for method in [StartMethod::Spawn, StartMethod::Forkserver] {
        check(method, 65 << 20, 65 << 20);
    }
}
