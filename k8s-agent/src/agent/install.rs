//! Install and uninstall: the programs at the cgroup root, the plugin binary, its
//! credentials and its conflist entry.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{AgentError, Options};
use crate::conflist::{self, Installed};
use crate::netconf::{Backend, NetConf, PLUGIN_TYPE};
use crate::state::StateDir;

/// What install or uninstall did, for the log.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// One line per step.
    pub steps: Vec<String>,
    /// Whether skiff's entry is in a conflist and the programs (if any) are attached.
    pub entry_installed: bool,
}

impl Report {
    /// Whether the node is ready for pods.
    pub fn ready(&self) -> bool {
        self.entry_installed
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.steps.join("; "))
    }
}

/// The credentials the plugin uses, next to the conflist (the plugin runs on the host,
/// outside the agent's pod and its service account mount).
pub(super) fn credentials_dir(opts: &Options) -> PathBuf {
    opts.cni_conf_dir.join("skiff")
}

fn api_server(opts: &Options) -> Result<String, AgentError> {
    if let Some(s) = &opts.api_server {
        return Ok(s.clone());
    }
    let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
        AgentError::Config(
            "no --api-server and KUBERNETES_SERVICE_HOST is not set (not running in a pod)".into(),
        )
    })?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    Ok(if host.contains(':') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    })
}

/// `path` as the host sees it: without `--host-prefix`.
fn on_host(opts: &Options, path: &Path) -> PathBuf {
    match opts.host_prefix.as_deref().map(|p| path.strip_prefix(p)) {
        Some(Ok(rest)) => Path::new("/").join(rest),
        _ => path.to_path_buf(),
    }
}

/// skiff's conflist entry: the ConfigMap's settings with the agent's own on top.
pub fn entry(opts: &Options) -> Result<Value, AgentError> {
    let mut e = match &opts.plugin_config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                AgentError::Config(format!("--plugin-config {}: {e}", path.display()))
            })?;
            let v: Value = serde_json::from_str(&text).map_err(|e| {
                AgentError::Config(format!("--plugin-config {}: {e}", path.display()))
            })?;
            if !v.is_object() {
                return Err(AgentError::Config(format!(
                    "--plugin-config {}: must be a JSON object",
                    path.display()
                )));
            }
            v
        }
        None => json!({}),
    };
    let server = api_server(opts)?;
    let creds = credentials_dir(opts);
    let mut kube = e
        .get("kubernetes")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    kube["apiServer"] = json!(server);
    if opts.token_file.is_file() {
        kube["tokenFile"] = json!(on_host(opts, &creds.join("token")));
    }
    if server.starts_with("https://") && opts.ca_file.is_file() {
        kube["caFile"] = json!(on_host(opts, &creds.join("ca.crt")));
    }
    e["type"] = json!(PLUGIN_TYPE);
    e["backend"] = json!(opts.backend.as_str());
    e["stateDir"] = json!(on_host(opts, &opts.state_dir));
    e["kubernetes"] = kube;
    // Refuse now what the plugin would refuse for every pod later.
    let mut probe = e.clone();
    probe["cniVersion"] = json!("1.0.0");
    probe["name"] = json!("probe");
    NetConf::parse(probe.to_string().as_bytes())
        .map_err(|err| AgentError::Config(format!("skiff's conflist entry: {err}")))?;
    Ok(e)
}

/// Copies the token and CA for the plugin (0600: they are credentials).
pub fn copy_credentials(opts: &Options) -> Result<(), AgentError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = credentials_dir(opts);
    for (src, name) in [(&opts.token_file, "token"), (&opts.ca_file, "ca.crt")] {
        let Ok(bytes) = std::fs::read(src) else {
            continue;
        };
        let dst = dir.join(name);
        if std::fs::read(&dst).is_ok_and(|old| old == bytes) {
            continue;
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| AgentError::Install(format!("{}: {e}", dir.display())))?;
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)))
            .and_then(|()| std::fs::rename(&tmp, &dst))
            .map_err(|e| AgentError::Install(format!("{}: {e}", dst.display())))?;
    }
    Ok(())
}

/// The entry's state after a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// It was missing or different and was written.
    Restored(PathBuf),
    /// It was in place.
    Unchanged,
    /// No primary conflist yet.
    NoPrimary,
}

/// Puts the entry into the primary conflist if it is not there as wanted.
pub fn ensure_entry(opts: &Options) -> Result<Entry, AgentError> {
    let e = entry(opts)?;
    match conflist::install(&opts.cni_conf_dir, &e) {
        Ok(Installed::Changed(p)) => Ok(Entry::Restored(p)),
        Ok(Installed::Unchanged(_)) => Ok(Entry::Unchanged),
        Ok(Installed::NoPrimary) => Ok(Entry::NoPrimary),
        Err(err) => Err(AgentError::Install(err.to_string())),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(fa), Ok(fb)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return false;
    };
    let same_len = match (fa.metadata(), fb.metadata()) {
        (Ok(ma), Ok(mb)) => ma.len() == mb.len(),
        _ => false,
    };
    if !same_len {
        return false;
    }
    let (mut ra, mut rb) = (fa, fb);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let (Ok(na), Ok(nb)) = (fill(&mut ra, &mut ba), fill(&mut rb, &mut bb)) else {
            return false;
        };
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na < ba.len() {
            return true;
        }
    }
}

/// Reads until `buf` is full or the file ends.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Copies the binary to `<bin dir>/skiff-cni` (atomically: a runtime may run it meanwhile);
/// false when it was already there.
fn install_binary(opts: &Options) -> Result<bool, AgentError> {
    use std::os::unix::fs::PermissionsExt;
    let src = match &opts.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .map_err(|e| AgentError::Install(format!("cannot find this binary: {e}")))?,
    };
    let dst = opts.cni_bin_dir.join(PLUGIN_TYPE);
    if same_file(&src, &dst) {
        return Ok(false);
    }
    std::fs::create_dir_all(&opts.cni_bin_dir)
        .map_err(|e| AgentError::Install(format!("{}: {e}", opts.cni_bin_dir.display())))?;
    let tmp = opts.cni_bin_dir.join(format!(".{PLUGIN_TYPE}.tmp"));
    std::fs::copy(&src, &tmp)
        .and_then(|_| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)))
        .and_then(|()| std::fs::rename(&tmp, &dst))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            AgentError::Install(format!(
                "installing {} as {}: {e}",
                src.display(),
                dst.display()
            ))
        })?;
    Ok(true)
}

/// Prepares the node: kernel checks and the programs, the binary, the credentials and the
/// conflist entry.
pub fn install(opts: &Options) -> Result<Report, AgentError> {
    let mut r = Report::default();
    match opts.backend {
        Backend::Ebpf => {
            skiff_ebpf::probe().map_err(|e| AgentError::Kernel(e.to_string()))?;
            let changed = skiff_ebpf::attach_cgroup(&opts.cgroup_root).map_err(|e| {
                AgentError::Kernel(format!("--cgroup-root {}: {e}", opts.cgroup_root.display()))
            })?;
            r.steps.push(format!(
                "programs {} at {}",
                if changed {
                    "attached"
                } else {
                    "already attached"
                },
                opts.cgroup_root.display()
            ));
        }
        Backend::Iptables => {
            for p in ["iptables-restore", "nsenter"] {
                if !crate::cni::on_path(p) {
                    return Err(AgentError::Kernel(format!(
                        "{p} is not on PATH (the iptables backend runs it for each pod)"
                    )));
                }
            }
        }
    }
    let copied = install_binary(opts)?;
    r.steps.push(format!(
        "{} {}",
        if copied {
            "installed"
        } else {
            "already installed"
        },
        opts.cni_bin_dir.join(PLUGIN_TYPE).display()
    ));
    copy_credentials(opts)?;
    match ensure_entry(opts)? {
        Entry::Restored(p) => {
            r.entry_installed = true;
            r.steps.push(format!("entry added to {}", p.display()));
        }
        Entry::Unchanged => {
            r.entry_installed = true;
            r.steps.push("entry already in place".into());
        }
        Entry::NoPrimary => r.steps.push(format!(
            "no CNI configuration in {} yet: waiting for the primary network's",
            opts.cni_conf_dir.display()
        )),
    }
    Ok(r)
}

/// Undoes [`install`] and releases every pod the plugin captured.
pub fn uninstall(opts: &Options) -> Result<Report, AgentError> {
    let mut r = Report::default();
    let changed =
        conflist::uninstall(&opts.cni_conf_dir).map_err(|e| AgentError::Install(e.to_string()))?;
    for p in changed {
        r.steps.push(format!("entry removed from {}", p.display()));
    }
    let bin = opts.cni_bin_dir.join(PLUGIN_TYPE);
    if bin.exists() {
        std::fs::remove_file(&bin)
            .map_err(|e| AgentError::Install(format!("{}: {e}", bin.display())))?;
        r.steps.push(format!("removed {}", bin.display()));
    }
    let creds = credentials_dir(opts);
    if creds.exists() {
        std::fs::remove_dir_all(&creds)
            .map_err(|e| AgentError::Install(format!("{}: {e}", creds.display())))?;
    }
    let state = StateDir::new(&opts.state_dir);
    let records = state
        .list()
        .map_err(|e| AgentError::Install(e.to_string()))?;
    let n = records.len();
    for rec in records {
        if let Err(e) = crate::cni::undo(&rec) {
            tracing::warn!(pod = %format!("{}/{}", rec.pod_namespace, rec.pod_name), "{e}");
        }
        let _ = state.remove(&rec.container_id, &rec.ifname);
    }
    if n > 0 {
        r.steps.push(format!("released {n} pods"));
    }
    if opts.backend == Backend::Ebpf && opts.cgroup_root.exists() {
        let found = skiff_ebpf::detach_cgroup(&opts.cgroup_root)
            .map_err(|e| AgentError::Install(e.to_string()))?;
        skiff_ebpf::remove_unused().map_err(|e| AgentError::Install(e.to_string()))?;
        if found {
            r.steps.push(format!(
                "programs detached from {}",
                opts.cgroup_root.display()
            ));
        }
    }
    if r.steps.is_empty() {
        r.steps.push("nothing of skiff's was installed".into());
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        opts: Options,
    }

    fn opts(args: &[&str]) -> Options {
        Cli::try_parse_from(std::iter::once("agent").chain(args.iter().copied()))
            .expect("flags")
            .opts
    }

    #[test]
    fn the_entry_names_host_paths_without_the_mount_prefix() {
        let dir = std::env::temp_dir().join(format!("skiff-agent-entry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let token = dir.join("token");
        std::fs::write(&token, "t").expect("token");
        let o = opts(&[
            "--host-prefix=/host",
            "--cni-conf-dir=/host/etc/cni/net.d",
            "--state-dir=/host/var/run/skiff/cni",
            "--api-server=http://10.96.0.1:80",
            "--backend=iptables",
            &format!("--token-file={}", token.display()),
        ]);
        let e = entry(&o).expect("entry");
        assert_eq!(e["stateDir"], "/var/run/skiff/cni");
        assert_eq!(e["kubernetes"]["tokenFile"], "/etc/cni/net.d/skiff/token");
        assert_eq!(e["kubernetes"]["apiServer"], "http://10.96.0.1:80");
        assert!(
            e["kubernetes"].get("caFile").is_none(),
            "no CA for plain HTTP"
        );
        assert_eq!(e["type"], "skiff-cni");
        assert_eq!(e["backend"], "iptables");
        // Without the prefix, paths are taken as they are.
        let o = opts(&["--state-dir=/srv/state", "--api-server=http://x:1"]);
        assert_eq!(entry(&o).expect("entry")["stateDir"], "/srv/state");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn bad_plugin_settings_are_refused_before_anything_is_installed() {
        let dir = std::env::temp_dir().join(format!("skiff-agent-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let conf = dir.join("plugin-config.json");
        std::fs::write(&conf, r#"{"capture": {"includeOutboundIpRanges": "*"}}"#).expect("conf");
        let o = opts(&[
            "--api-server=http://x:1",
            &format!("--plugin-config={}", conf.display()),
        ]);
        let e = entry(&o).expect_err("typo");
        assert!(e.to_string().contains("includeOutboundIpRanges"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
