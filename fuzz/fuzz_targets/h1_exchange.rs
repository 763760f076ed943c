//! Whole HTTP/1.1 exchanges through the connection manager and router: any bytes from a client,
//! written in a few chunks, and any bytes as the upstream's answer. Nothing may panic, the
//! exchange must end within a bound, and what reaches the upstream must parse with exactly one
//! framing (see `common/exchange.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../common/exchange.rs"]
mod exchange;

fuzz_target!(|data: &[u8]| {
    if let Some(ex) = exchange::Exchange::decode(b"", data) {
        exchange::run(&ex);
    }
});
