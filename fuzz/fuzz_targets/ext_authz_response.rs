//! Any bytes as the body of an authorization service's gRPC answer: the reader must not
//! panic, takes only one uncompressed message whose length is the frame's, and a denial's
//! status is always one a reply can carry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::http::filters::ext_authz::{answer_status, parse_check};

fuzz_target!(|data: &[u8]| {
    let Some(r) = parse_check(data) else { return };
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    assert_eq!(data.len(), 5 + len);
    if let Some(status) = answer_status(r) {
        assert!((200..600).contains(&status.as_u16()));
    }
});
