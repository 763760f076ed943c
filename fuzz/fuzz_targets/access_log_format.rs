//! Any access log format string: parsing and rendering must not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(format) = skiff::access_log::Format::parse(text) {
            let info = skiff::stream_info::StreamInfo::new(
                "127.0.0.1:1".parse().expect("addr"),
                "127.0.0.1:2".parse().expect("addr"),
            );
            let mut out = String::new();
            format.render(&info, &mut out);
        }
    }
});
