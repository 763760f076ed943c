//! Any text as a route's URI path template and rewrite template, and any path against them:
//! parsing refuses or accepts without panicking, and a rewrite of a path the template matches
//! starts with `/` and keeps the path's query.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::config::router::uri_template::{PathTemplate, RewriteTemplate};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let (template, rewrite, path) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let Ok(t) = PathTemplate::parse(template) else {
        return;
    };
    let matched = t.matches(path);
    if let Ok(rw) = RewriteTemplate::parse(rewrite, &t) {
        match rw.rewrite(&t, path) {
            Some(new) => {
                assert!(matched);
                assert!(new.starts_with('/'));
                if let Some(i) = path.find('?') {
                    assert!(new.ends_with(&path[i..]));
                }
            }
            None => assert!(!matched),
        }
    }
});
