//! skiff on Kubernetes: the chained CNI plugin that captures each pod's traffic as its
//! sandbox is set up (`skiff cni`, installed as `skiff-cni` in the CNI bin dir), and the
//! node agent that prepares a node for it (`skiff node-agent`): BPF programs attached at the
//! cgroup root, the plugin binary and its conflist entry installed and kept in place, pods
//! that were already running enrolled, health and metrics served.

#![forbid(unsafe_code)]

pub mod agent;
pub mod capture;
pub mod cni;
pub mod conflist;
pub mod kube;
pub mod netconf;
pub mod state;

/// Sends `tracing` events at `level` and above (skiff's crates) to stderr: stdout belongs to
/// the CNI result.
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(format!(
        "skiff={level},skiff_k8s={level},skiff_ebpf={level}"
    ))
    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("skiff=info,skiff_k8s=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}
