//! Any `accept-encoding` value from a client: the compressor's choice must not panic and may
//! only name an encoding that is on offer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::http::filters::compressor::{choose, Decision};

fuzz_target!(|data: &[u8]| {
    let value = String::from_utf8_lossy(data);
    for offered in [&["br", "gzip", "zstd"][..], &["gzip"][..], &[][..]] {
        match choose(&value, offered) {
            Decision::Used(e) | Decision::Wildcard(e) => assert!(offered.contains(&e)),
            Decision::Identity | Decision::NotValid => {}
        }
    }
});
