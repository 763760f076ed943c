//! Any bytes as a CNI network configuration (the plugin's stdin) and as the host's conflist:
//! parsing must not panic, a parsed configuration survives a round trip, and chaining
//! skiff's entry into a conflist is idempotent and undone by removing it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use skiff_k8s::conflist::{with_entry, without_entry};
use skiff_k8s::netconf::NetConf;

fuzz_target!(|data: &[u8]| {
    if let Ok(conf) = NetConf::parse(data) {
        let again = serde_json::to_vec(&conf).expect("serialises");
        let back = NetConf::parse(&again).expect("a parsed configuration parses again");
        assert_eq!(back.cni_version, conf.cni_version);
        assert_eq!(back.skiff.capture, conf.skiff.capture);
        assert_eq!(back.skiff.kubernetes, conf.skiff.kubernetes);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let entry = json!({"type": "skiff-cni", "backend": "ebpf"});
    if let Ok(Some(doc)) = with_entry(text, &entry) {
        let once = doc.to_string();
        assert_eq!(
            with_entry(&once, &entry),
            Ok(None),
            "adding twice changes nothing"
        );
        let removed = without_entry(&once)
            .expect("a list")
            .expect("had the entry");
        assert!(!removed.to_string().contains("\"skiff-cni\"") || text.contains("skiff-cni"));
    }
});
