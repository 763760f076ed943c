//! Whole HTTP/2 exchanges through the connection manager and router: the client preface, then
//! any bytes (frames) from a client in a few chunks, to an HTTP/1.1 upstream answering with any
//! bytes (`/h2…` paths: an HTTP/2 upstream answering with a response made of them). Nothing may
//! panic, the exchange must end within a bound, and what reaches an HTTP/1.1 upstream must parse
//! with exactly one framing (see `common/exchange.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../common/exchange.rs"]
mod exchange;

fuzz_target!(|data: &[u8]| {
    if let Some(ex) = exchange::Exchange::decode(exchange::PREFACE, data) {
        exchange::run(&ex);
    }
});
