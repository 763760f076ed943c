//! Any bytes at the head of a connection: the ClientHello parser must not panic, must decide the
//! same way on every split of the same hello into records, and once it decides, more bytes must
//! not change its mind.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::listener::filters::tls_inspector::client_hello::{alpn_names, parse, Parse};

fuzz_target!(|data: &[u8]| {
    let verdict = parse(data);
    if let Parse::Tls(h) = &verdict {
        if let Some(list) = h.alpn.as_deref() {
            assert!(alpn_names(list).all(|n| !n.is_empty()));
        }
    }
    if matches!(verdict, Parse::Tls(_) | Parse::BadVersion { .. }) {
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"trailing");
        assert_eq!(parse(&longer), verdict);
    }
    if verdict == Parse::NotTls {
        let mut longer = data.to_vec();
        longer.push(0);
        assert_eq!(parse(&longer), Parse::NotTls);
    }
});
