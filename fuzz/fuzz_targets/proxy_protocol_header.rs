//! Any bytes at the head of a connection: the PROXY protocol parser must not panic, must never
//! claim more bytes than it was given, must ask for more than it has when undecided, and must
//! decide a complete header from the header's bytes alone.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::listener::filters::proxy_protocol::parser::{parse, Options, Parse};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, buf)) = data.split_first() else {
        return;
    };
    let opts = Options {
        allow_without: flags & 1 != 0,
        allow_v1: flags & 2 == 0,
        allow_v2: flags & 4 == 0 || flags & 2 == 0,
    };
    match parse(buf, &opts) {
        Parse::Incomplete { want } => assert!(want > buf.len()),
        Parse::Header(h) => {
            assert!(h.len <= buf.len());
            for (_, value) in h.tlvs {
                assert!(value.len() <= h.len);
            }
            assert_eq!(parse(&buf[..h.len], &opts), Parse::Header(h));
        }
        Parse::NotFound | Parse::Error(_) | Parse::Denied(_) => {}
    }
});
