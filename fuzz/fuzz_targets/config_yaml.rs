//! Any bytes as a bootstrap (YAML or JSON): decoding, the supported-field check and translation
//! must answer with an error or a model, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = skiff::config::load_text(text);
    }
});
