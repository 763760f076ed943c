//! Any bytes from a downstream HTTP/2 client: the header-block watcher of
//! `request_headers_timeout` must not panic, and must reach the same state however its input
//! is split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::http::h2_head::HeaderBlocks;

fuzz_target!(|data: &[u8]| {
    let mut whole = HeaderBlocks::default();
    whole.feed(data);
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut halves = HeaderBlocks::default();
    halves.feed(&data[..split]);
    halves.feed(&data[split..]);
    assert_eq!(whole, halves);
    let mut bytes = HeaderBlocks::default();
    for b in data.chunks(1) {
        bytes.feed(b);
    }
    assert_eq!(whole, bytes);
});
