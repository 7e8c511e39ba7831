//! `parse_header` (and `write_header`) against the reference model, on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use multiproc::__fuzz::{parse_header, write_header};
use multiproc_fuzz::model::{self, Header};

fn lib_as_model(buf: &[u8]) -> Header {
    match parse_header(buf) {
        Ok(None) => Header::Incomplete,
        Ok(Some((size, len))) => Header::Message { size, len },
        Err(n) => {
            assert!(n < 0 && n != -1, "corrupt header with length {n}");
            Header::Corrupt(n)
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // 1. Every prefix of the input parses as the model says.
    for cut in 0..=data.len().min(16) {
        assert_eq!(
            lib_as_model(&data[..cut]),
            model::header(&data[..cut]),
            "parse_header({:02x?})",
            &data[..cut]
        );
    }
    assert_eq!(lib_as_model(data), model::header(data));

    // 2. Once complete, a header's meaning does not depend on what follows it.
    if let Header::Message { size, .. } = model::header(data) {
        assert_eq!(lib_as_model(&data[..size]), model::header(data));
    }

    // 3. The header written for a length parses back to it, is CPython's, and no strict
    //    prefix of it is complete.
    let mut len = [0u8; 8];
    let n = data.len().min(8);
    len[8 - n..].copy_from_slice(&data[..n]);
    for len in [
        u64::from_be_bytes(len),
        u64::from_be_bytes(len) >> 32,
        u64::from(data.len() as u32),
    ] {
        let h = write_header(len);
        assert_eq!(h, model::encode_header(len), "write_header({len})");
        assert_eq!(parse_header(&h), Ok(Some((h.len(), len))));
        for cut in 0..h.len() {
            assert_eq!(parse_header(&h[..cut]), Ok(None));
        }
        let mut followed = h.clone();
        followed.extend_from_slice(data);
        assert_eq!(parse_header(&followed), Ok(Some((h.len(), len))));
    }
});
