//! Any bytes from a downstream HTTP/1.1 client: the request-head judge must not panic, must
//! never claim more bytes than it was given, must decide a complete head from the head's bytes
//! alone, and the chunked-body tracker must end at the same byte however its input is split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::http::framing::{scan, Chunked, Scan};

fuzz_target!(|data: &[u8]| {
    match scan(data) {
        Scan::Incomplete => {}
        Scan::Head {
            len,
            verdict,
            expect,
        } => {
            assert!(len <= data.len());
            assert_eq!(
                scan(&data[..len]),
                Scan::Head {
                    len,
                    verdict,
                    expect
                }
            );
        }
    }
    let whole = Chunked::Start.feed(data);
    let split = data.len() / 2;
    let mut c = Chunked::Start;
    let halves = c.feed(&data[..split]).and_then(|a| {
        if c.is_end() {
            Ok(a)
        } else {
            c.feed(&data[split..]).map(|b| a + b)
        }
    });
    if let (Ok(w), Ok(h)) = (whole, halves) {
        assert_eq!(w, h);
    }
});
