//! Any text as a kubeconfig and as `CNI_ARGS`: neither parser may panic, and every key the
//! CNI_ARGS parser returns came from the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_k8s::cni::parse_cni_args;
use skiff_k8s::kube::parse_kubeconfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_kubeconfig(text);
    for (k, v) in parse_cni_args(text) {
        assert!(text.contains(&k) && text.contains(&v));
        assert!(!k.is_empty());
    }
});
