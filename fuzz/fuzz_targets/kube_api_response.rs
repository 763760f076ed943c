//! Any bytes as a Kubernetes API response (a Pod, a PodList, a Status): decoding must not
//! panic, and whatever pod decodes gets a capture decision without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_k8s::capture::decide;
use skiff_k8s::kube::model::{parse_pod, parse_pod_list, parse_status};
use skiff_k8s::netconf::PluginConf;

fuzz_target!(|data: &[u8]| {
    let conf = PluginConf::default();
    if let Ok(pod) = parse_pod(data) {
        let _ = decide(&pod, &conf);
    }
    if let Ok(list) = parse_pod_list(data) {
        for pod in &list.items {
            let _ = decide(pod, &conf);
        }
    }
    let _ = parse_status(data);
});
