//! Any text as a pod's annotations (`name=value` lines): the decision must not panic, and
//! when it says "capture", every value it resolved is one the capture backends accept (the
//! decision checked them, naming the annotation otherwise).
#![no_main]

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use skiff_k8s::capture::{decide, pod_with_annotations, Decision};
use skiff_k8s::netconf::PluginConf;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let pod = pod_with_annotations(text);
    match decide(&pod, &PluginConf::default()) {
        Ok(Decision::Capture(c)) => {
            skiff_iptables::Capture::from_args(&c.capture_args())
                .expect("a resolved capture is valid");
            let args = c.iptables_args("/var/run/netns/fuzz");
            let parsed = skiff_iptables::Args::try_parse_from(
                std::iter::once("skiff iptables".to_string()).chain(args),
            );
            if let Ok(a) = parsed {
                let _ = skiff_iptables::plan(&match skiff_iptables::Config::from_args(&a) {
                    Ok(c) => c,
                    Err(_) => return,
                });
            }
        }
        Ok(Decision::Skip(_)) => {}
        Err(e) => assert!(!e.annotation.is_empty()),
    }
});
