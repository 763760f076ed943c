//! A Lua cluster specifier's script (configuration from a user or a control plane): loading any
//! text must not panic, and a script that loads names a cluster for a request (its own answer,
//! or the default) without panicking, twice in a row.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::config::lua::LuaSpecifier;
use skiff::config::router::RequestView;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(s) = LuaSpecifier::new(text.to_string(), "default".into()) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert("x-which", http::HeaderValue::from_static("a"));
    headers.append("x-which", http::HeaderValue::from_static("b"));
    let req = RequestView::get("/p?q=1", &headers);
    let counts = |name: &str| (name == "busy").then_some((1, 2, 3));
    for _ in 0..2 {
        let _ = s.cluster(&req, &counts);
    }
});
