//! Pods that were running before the agent started (its first install on a node, or a
//! restart after the plugin was missing) never went through ADD: they are enrolled here,
//! found through the API (this node's pods) and /proc (each pod's processes carry its uid
//! in their cgroup path, and give its network namespace).
//!
//! Only the eBPF backend reconciles: its records are undone by the namespace's cookie, while
//! an iptables record made from a `/proc/<pid>` path could later name another namespace once
//! the pid is reused. With iptables, pods that predate the plugin need a restart (as with
//! istio-cni).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use serde_json::json;

use super::{Health, Options};
use crate::kube::Client;
use crate::netconf::{Backend, NetConf};
use crate::state::StateDir;

/// The container id reconciled pods are recorded under (the runtime's DEL for the real
/// sandbox finds the record by the namespace's cookie).
pub fn container_id(uid: &str) -> String {
    format!("reconciled-{uid}")
}

/// Enrols this node's running pods that have no record yet; failures are logged and
/// counted, never fatal (the plugin handles every new pod).
pub fn run(opts: &Options, health: &Health) {
    if opts.backend != Backend::Ebpf {
        tracing::info!("iptables backend: pods that predate the plugin keep running uncaptured until restarted");
        return;
    }
    let Some(node) = &opts.node_name else {
        tracing::info!("no --node-name (NODE_NAME): running pods are not reconciled");
        return;
    };
    match reconcile(opts, node) {
        Ok((done, failed)) => {
            health.reconciled_pods.fetch_add(done, Ordering::Relaxed);
            health.reconcile_errors.fetch_add(failed, Ordering::Relaxed);
            tracing::info!(enrolled = done, failed, "running pods reconciled");
        }
        Err(e) => {
            health.reconcile_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!("reconciling running pods: {e}");
        }
    }
}

fn reconcile(opts: &Options, node: &str) -> Result<(u64, u64), String> {
    let mut entry = super::install::entry(opts).map_err(|e| e.to_string())?;
    entry["cniVersion"] = json!("1.0.0");
    entry["name"] = json!("reconcile");
    let mut conf = NetConf::parse(entry.to_string().as_bytes()).map_err(|e| e.to_string())?;
    // The entry names paths as the host sees them; here they are where the agent sees them.
    conf.skiff.state_dir = opts.state_dir.clone();
    let creds = super::install::credentials_dir(opts);
    let kube = &mut conf.skiff.kubernetes;
    if kube.token_file.is_some() {
        kube.token_file = Some(creds.join("token"));
    }
    if kube.ca_file.is_some() {
        kube.ca_file = Some(creds.join("ca.crt"));
    }
    let client = Client::from_conf(&conf.skiff.kubernetes).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let pods = rt
        .block_on(client.pods_on_node(node))
        .map_err(|e| e.to_string())?;
    let recorded: BTreeSet<String> = StateDir::new(&opts.state_dir)
        .list()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|r| r.pod_uid)
        .collect();
    let namespaces = pod_namespaces(&opts.proc_dir);
    let (mut done, mut failed) = (0, 0);
    for pod in pods {
        let uid = &pod.metadata.uid;
        if pod.status.phase != "Running" || uid.is_empty() || recorded.contains(uid) {
            continue;
        }
        let Some(netns) = namespaces.get(uid) else {
            continue;
        };
        match crate::cni::capture_pod(
            &conf,
            &pod,
            &container_id(uid),
            "eth0",
            &netns.to_string_lossy(),
        ) {
            Ok(Some(_)) => done += 1,
            Ok(None) => {}
            Err(e) => {
                failed += 1;
                tracing::warn!(pod = %pod.key(), "cannot enrol a running pod: {e}");
            }
        }
    }
    Ok((done, failed))
}

/// The pod uid in a cgroup path: `…pod<uid>…` with the uid's dashes as dashes (cgroupfs
/// driver) or underscores (systemd driver).
pub fn pod_uid(cgroup_path: &str) -> Option<String> {
    let mut rest = cgroup_path;
    while let Some(i) = rest.find("pod") {
        let cand = &rest[i + 3..];
        if cand.len() >= 36 {
            let id = &cand[..36];
            let ok = id.bytes().enumerate().all(|(k, b)| match k {
                8 | 13 | 18 | 23 => b == b'-' || b == b'_',
                _ => b.is_ascii_hexdigit(),
            });
            if ok {
                return Some(id.replace('_', "-"));
            }
        }
        rest = &rest[i + 3..];
    }
    None
}

/// uid → a network namespace path of one of the pod's processes, for every pod with a
/// process in a namespace other than the agent's own (host network pods have none).
pub fn pod_namespaces(proc_dir: &Path) -> BTreeMap<String, PathBuf> {
    let own = std::fs::metadata(proc_dir.join("self/ns/net"))
        .map(|m| m.ino())
        .ok();
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(proc_dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cgroups) = std::fs::read_to_string(e.path().join("cgroup")) else {
            continue;
        };
        // cgroup v2: the single line `0::<path>`.
        let Some(uid) = cgroups
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .and_then(pod_uid)
        else {
            continue;
        };
        if out.contains_key(&uid) {
            continue;
        }
        let ns = e.path().join("ns/net");
        match std::fs::metadata(&ns).map(|m| m.ino()) {
            Ok(ino) if Some(ino) != own => {
                out.insert(uid, ns);
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_uids_come_from_both_cgroup_drivers() {
        assert_eq!(
            pod_uid("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3c1a2f7e_8d4b_4f6a_9e1c_2b7d5a0f4c11.slice/cri-containerd-9a41.scope").as_deref(),
            Some("3c1a2f7e-8d4b-4f6a-9e1c-2b7d5a0f4c11")
        );
        assert_eq!(
            pod_uid("/kubepods/besteffort/pod7e1d2c3b-4a5f-4e6d-9c8b-0a1f2e3d4c5b/0123abcd")
                .as_deref(),
            Some("7e1d2c3b-4a5f-4e6d-9c8b-0a1f2e3d4c5b")
        );
        assert_eq!(pod_uid("/system.slice/containerd.service"), None);
        assert_eq!(pod_uid("/kubepods/podnot-a-uid"), None);
    }
}
