//! Any bytes as the body of a rate limit service's answer: the reader must not panic, takes
//! only one uncompressed message whose length is the frame's, and the headers it makes of an
//! answer (the service's own, `x-ratelimit-*`) are valid whatever the answer says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::http::filters::ratelimit::{answer_headers, header_list, parse};

fuzz_target!(|data: &[u8]| {
    let Some(r) = parse(data) else { return };
    assert_eq!(data[0], 0);
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    assert_eq!(data.len(), 5 + len);
    for (name, value) in answer_headers(&r, (&[true, false], true)) {
        assert!(!name.as_str().is_empty());
        let _ = value.to_str();
    }
    let _ = header_list(&r.request_headers_to_add);
});
