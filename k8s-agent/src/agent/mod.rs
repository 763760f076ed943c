//! `skiff node-agent`: prepares a node for skiff's CNI plugin and keeps it prepared.
//!
//! At start it checks the kernel (cgroup v2, the BPF filesystem, the program types skiff
//! needs), attaches the programs once at the cgroup root, copies the skiff binary into the
//! CNI bin dir as `skiff-cni`, puts skiff's entry into the primary CNI conflist, and enrols
//! the pods that were already running on the node. Then it checks the conflist every
//! `--watch-interval-ms` and puts the entry back when another agent (the primary CNI's own
//! installer, usually) rewrote the file, and serves `/healthz`, `/readyz` and `/metrics`.
//! `skiff node-agent uninstall` (or SIGTERM with `--uninstall-on-exit`) takes all of it
//! away again.

mod install;
mod reconcile;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::netconf::Backend;

pub use install::{install, uninstall, Report};

/// `skiff node-agent [uninstall] [options]`.
#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// What to do instead of running.
    #[command(subcommand)]
    pub action: Option<Action>,
    /// Where things go.
    #[command(flatten)]
    pub opts: Options,
}

/// The node agent's other tasks.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Action {
    /// Remove skiff's conflist entry and plugin binary, release the pods it captured, detach
    /// the programs from the cgroup root and unpin what is no longer used.
    Uninstall(Options),
}

/// The node agent's settings; every directory is a flag so that tests use scratch ones.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Where the runtime looks for CNI plugin binaries.
    #[arg(long, env = "SKIFF_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// Where the runtime reads CNI configuration.
    #[arg(long, env = "SKIFF_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// The plugin's state directory (what ADD did, per pod).
    #[arg(
        long,
        env = "SKIFF_CNI_STATE_DIR",
        default_value = "/var/run/skiff/cni"
    )]
    pub state_dir: PathBuf,
    /// The cgroup v2 directory the programs are attached to (the root: every pod is below).
    #[arg(long, env = "SKIFF_CGROUP_ROOT", default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
    /// Where the host's filesystem is mounted in the agent's container (e.g. `/host`): paths
    /// written into the conflist entry, which the plugin reads on the host, lose this prefix.
    #[arg(long, env = "SKIFF_HOST_PREFIX")]
    pub host_prefix: Option<PathBuf>,
    /// ebpf or iptables.
    #[arg(long, env = "SKIFF_BACKEND", default_value = "ebpf", value_parser = parse_backend)]
    pub backend: Backend,
    /// A JSON object of further plugin settings merged into skiff's conflist entry
    /// (capture defaults, excludeNamespaces, sidecarContainers…), from the ConfigMap.
    #[arg(long, env = "SKIFF_PLUGIN_CONFIG")]
    pub plugin_config: Option<PathBuf>,
    /// The API server the plugin asks about pods (default: this pod's in-cluster service).
    #[arg(long, env = "SKIFF_API_SERVER")]
    pub api_server: Option<String>,
    /// The token the plugin presents; copied next to the conflist and refreshed, since the
    /// plugin runs outside any pod.
    #[arg(
        long,
        env = "SKIFF_TOKEN_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub token_file: PathBuf,
    /// The cluster CA the plugin trusts for an https API server; copied like the token.
    #[arg(
        long,
        env = "SKIFF_CA_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    )]
    pub ca_file: PathBuf,
    /// This node's name, for listing its pods (the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Where the host's /proc is (the agent finds running pods' namespaces there).
    #[arg(long, env = "SKIFF_PROC_DIR", default_value = "/proc")]
    pub proc_dir: PathBuf,
    /// The binary installed as the plugin (default: this one).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "SKIFF_AGENT_LISTEN", default_value = "0.0.0.0:15030")]
    pub listen: std::net::SocketAddr,
    /// How often the conflist and the token copy are checked.
    #[arg(long, default_value_t = 1000)]
    pub watch_interval_ms: u64,
    /// On SIGTERM, uninstall before exiting (a DaemonSet being deleted); without it the
    /// node stays prepared across agent restarts and upgrades.
    #[arg(long, env = "SKIFF_UNINSTALL_ON_EXIT")]
    pub uninstall_on_exit: bool,
    /// Do not enrol pods that were running before the agent started.
    #[arg(long)]
    pub skip_reconcile: bool,
    /// Log level.
    #[arg(long, env = "SKIFF_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

fn parse_backend(s: &str) -> Result<Backend, String> {
    match s {
        "ebpf" => Ok(Backend::Ebpf),
        "iptables" => Ok(Backend::Iptables),
        other => Err(format!("unknown backend '{other}' (ebpf or iptables)")),
    }
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The node lacks something skiff needs.
    #[error("this node cannot run skiff: {0}")]
    Kernel(String),
    /// A file could not be installed or removed.
    #[error("{0}")]
    Install(String),
    /// The settings are unusable.
    #[error("{0}")]
    Config(String),
}

/// What /readyz and /metrics report.
#[derive(Debug, Default)]
pub struct Health {
    /// The programs are attached (or the backend needs none) and the entry is in place.
    pub ready: AtomicBool,
    /// Times the conflist had to be fixed after another writer changed it.
    pub conflist_restores: AtomicU64,
    /// Pods enrolled by reconciliation at start.
    pub reconciled_pods: AtomicU64,
    /// Reconciliation failures.
    pub reconcile_errors: AtomicU64,
}

/// Runs `skiff node-agent`.
pub fn main(args: &Args) -> ExitCode {
    let opts = match &args.action {
        Some(Action::Uninstall(o)) => o,
        None => &args.opts,
    };
    crate::init_logging(&opts.log_level);
    let result = match &args.action {
        Some(Action::Uninstall(o)) => uninstall(o).map(|r| {
            tracing::info!("{r}");
        }),
        None => run(opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("skiff node-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(opts: &Options) -> Result<(), AgentError> {
    let report = install(opts)?;
    tracing::info!("{report}");
    let health = Arc::new(Health::default());
    health.ready.store(report.ready(), Ordering::Relaxed);
    if !opts.skip_reconcile {
        reconcile::run(opts, &health);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AgentError::Config(format!("cannot start the I/O runtime: {e}")))?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|e| AgentError::Config(format!("--listen {}: {e}", opts.listen)))?;
        tracing::info!(listen = %opts.listen, "serving /healthz /readyz /metrics");
        tokio::spawn(server::serve(listener, health.clone(), opts.clone()));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| AgentError::Config(format!("SIGTERM handler: {e}")))?;
        let mut tick = tokio::time::interval(Duration::from_millis(opts.watch_interval_ms.max(50)));
        loop {
            tokio::select! {
                _ = tick.tick() => watch(opts, &health),
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        Ok::<(), AgentError>(())
    })?;
    if opts.uninstall_on_exit {
        let r = uninstall(opts)?;
        tracing::info!("{r}");
    } else {
        tracing::info!("stopping; the node stays prepared (no --uninstall-on-exit)");
    }
    Ok(())
}

/// One watch tick: the entry back in place if the conflist changed, the token copy fresh.
fn watch(opts: &Options, health: &Health) {
    match install::ensure_entry(opts) {
        Ok(install::Entry::Restored(path)) => {
            health.conflist_restores.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(file = %path.display(), "skiff's entry was missing or changed: put back");
        }
        Ok(install::Entry::Unchanged) => {}
        Ok(install::Entry::NoPrimary) => {
            health.ready.store(false, Ordering::Relaxed);
            return;
        }
        Err(e) => {
            health.ready.store(false, Ordering::Relaxed);
            tracing::error!("{e}");
            return;
        }
    }
    if let Err(e) = install::copy_credentials(opts) {
        tracing::warn!("{e}");
    }
    let programs = opts.backend != Backend::Ebpf || crate::cni::programs_attached();
    health.ready.store(programs, Ordering::Relaxed);
}
