//! Any bytes as the chunked response body of a tcp_proxy tunnel in an HTTP/1.1 POST: the
//! decoder must not panic, and data the tunnel encodes as chunks, split anywhere, decodes back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::network::filters::post_tunnel::{decode_chunked, encode_chunk};

fuzz_target!(|data: &[u8]| {
    let _ = decode_chunked(data);
    let mut encoded = Vec::new();
    for part in data.chunks(7) {
        encode_chunk(part, &mut encoded);
    }
    encoded.extend_from_slice(b"0\r\n\r\n");
    let (decoded, done) = decode_chunked(&encoded).expect("own encoding decodes");
    assert!(done);
    assert_eq!(decoded, data);
});
