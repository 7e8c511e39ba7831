//! The handshake's pure functions (`digest_and_payload`, `parse_challenge`, `response`,
//! `verify`) against the reference model of CPython's, on any key, message and answer.
//!
//! Input: key length byte, key, message length byte, message, then the answer (the rest).
#![no_main]

use libfuzzer_sys::fuzz_target;
use multiproc::__fuzz::{digest_and_payload, parse_challenge, response, verify};
use multiproc::connection::AuthenticationError;
use multiproc_fuzz::Cursor;
use multiproc_fuzz::model::{self, Verdict};

fn verdict(r: &Result<(), AuthenticationError>) -> Verdict {
    match r {
        Ok(()) => Verdict::Accepted,
        Err(AuthenticationError::DigestWrong) => Verdict::Wrong,
        Err(AuthenticationError::Protocol(_)) => Verdict::Protocol,
        Err(other) => panic!("verify gave {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut cur = Cursor::new(data);
    let key_len = cur.byte() as usize;
    let key = cur.bytes(key_len);
    let msg_len = cur.byte() as usize;
    let message = cur.bytes(msg_len);
    let answer = cur.rest();

    for m in [message, answer, data] {
        // digest_and_payload: same verdict, same digest, same payload.
        match (digest_and_payload(m), model::digest_and_payload(m)) {
            (Ok((d, p)), Some((md, mp))) => {
                assert_eq!(d.unwrap_or(""), md, "digest of {m:02x?}");
                assert_eq!(p, mp, "payload of {m:02x?}");
            }
            (Err(AuthenticationError::Protocol(_)), None) => {}
            (lib, reference) => panic!("digest_and_payload({m:02x?}): {lib:?} vs {reference:?}"),
        }
        // parse_challenge.
        match (parse_challenge(m), model::challenge(m)) {
            (Ok(c), Some(mc)) => assert_eq!(c, mc),
            (Err(AuthenticationError::Protocol(_)), None) => {}
            (lib, reference) => panic!("parse_challenge({m:02x?}): {lib:?} vs {reference:?}"),
        }
        // response: CPython's bytes, and it verifies.
        match (response(key, m), model::response(key, m)) {
            (Ok(r), Some(mr)) => {
                assert_eq!(r, mr, "response to {m:02x?}");
                assert_eq!(verify(key, m, &r), Ok(()), "own answer to {m:02x?} refused");
                // Any one-bit change of the answer is refused.
                let bit = (data.len() * 7) % (r.len() * 8);
                let mut bad = r.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    verify(key, m, &bad).is_err(),
                    "flipped answer {bad:02x?} accepted"
                );
            }
            (Err(AuthenticationError::Protocol(_)), None) => {}
            (lib, reference) => panic!("response({m:02x?}): {lib:?} vs {reference:?}"),
        }
    }

    // verify: the same verdict as CPython's, for the fuzzed answer and for well-formed ones.
    let mut answers = vec![answer.to_vec(), model::mac("md5", key, message)];
    for d in model::DIGESTS {
        let mut a = format!("{{{d}}}").into_bytes();
        a.extend(model::mac(d, key, message));
        answers.push(a);
    }
    for a in &answers {
        assert_eq!(
            verdict(&verify(key, message, a)),
            model::verify(key, message, a),
            "verify(key {key:02x?}, message {message:02x?}, answer {a:02x?})"
        );
    }
});
