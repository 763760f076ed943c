//! A CEL access log filter's expression (configuration from a user or a control plane):
//! reading any text and evaluating what parses over a stream's attributes must not panic,
//! and an evaluation gives the same answer twice.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::config::cel::{self, Attributes, Value};

struct Stream;

impl Attributes for Stream {
    fn attribute(&self, root: &str, field: &str) -> Option<Value> {
        Some(match (root, field) {
            ("request", "path") => Value::String("/a/b?c=d".into()),
            ("request", "headers") => Value::Map(vec![
                ("x".into(), Value::String("1".into())),
                ("y".into(), Value::String("".into())),
            ]),
            ("response", "code") => Value::Int(503),
            ("connection", "id") => Value::Uint(u64::MAX),
            ("connection", "mtls") => Value::Bool(false),
            _ => return None,
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(e) = cel::parse(text) {
        let first = e.eval(&Stream);
        assert_eq!(first, e.eval(&Stream));
        let _ = cel::holds(&e, &Stream);
    }
});
