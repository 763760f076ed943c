//! Any bytes as the body of a gRPC health check's answer: the reader must not panic, and may
//! call a host serving only for one uncompressed message whose length is the frame's. Any text
//! as the service name: the request is one frame whose length is what follows it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::upstream::health::{grpc_request, grpc_serving};

fuzz_target!(|data: &[u8]| {
    if grpc_serving(data) {
        assert_eq!(data[0], 0);
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        assert_eq!(data.len(), 5 + len);
    }
    let service = String::from_utf8_lossy(data);
    let req = grpc_request(&service);
    let len = u32::from_be_bytes([req[1], req[2], req[3], req[4]]) as usize;
    assert_eq!(req.len(), 5 + len);
    assert!(req.ends_with(service.as_bytes()));
});
