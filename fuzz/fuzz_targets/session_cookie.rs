//! Any text as a stateful session's cookie value: reading the host it names must not panic,
//! and a host it names is an address that reads back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::http::filters::stateful_session::cookie_address;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(address) = cookie_address(text) {
        assert_eq!(address.to_string().parse(), Ok(address));
    }
});
