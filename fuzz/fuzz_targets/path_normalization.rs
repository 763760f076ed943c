//! Any request path through the connection manager's normalization (`normalize_path`,
//! `merge_slashes`, every `path_with_escaped_slashes_action`) and host-port stripping: never a
//! panic, and a normalized path without escapes normalizes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::config::model::StripPort;
use skiff::http::conn_manager_utility::{canonical_path, strip_port};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let bare = text.split('?').next().unwrap_or(text);
    if let Some(once) = canonical_path(bare) {
        // One pass, as Envoy's: decoding can make a new escape (`%3%33` gives `%33`), which a
        // second pass would decode again, so only paths without escapes are fixed points.
        if !bare.contains('%') {
            assert_eq!(canonical_path(&once).as_deref(), Some(once.as_str()));
        }
    }
    for mode in [StripPort::Any, StripPort::Matching, StripPort::None] {
        let _ = strip_port(mode, text, 80);
    }
});
