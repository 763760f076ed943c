//! The command line: Envoy's flags, so a launcher that starts `envoy` can start `skiff`.

use clap::{Parser, ValueEnum};

/// skiff: a transparent sidecar proxy that runs Envoy v3 configuration.
#[derive(Debug, Clone, Parser)]
#[command(name = "skiff", version, about, long_about = None)]
pub struct Options {
    /// Path to an Envoy v3 bootstrap (YAML or JSON).
    #[arg(short = 'c', long = "config-path")]
    pub config_path: Option<String>,

    /// A bootstrap in YAML, merged over the file given with --config-path.
    #[arg(long = "config-yaml")]
    pub config_yaml: Option<String>,

    /// `serve` runs the proxy; `validate` checks the configuration and exits.
    #[arg(long, value_enum, default_value_t = Mode::Serve)]
    pub mode: Mode,

    /// Worker threads (default: CPUs available to the process).
    #[arg(long)]
    pub concurrency: Option<usize>,

    /// Log level: trace, debug, info, warn, error, critical, off.
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    pub log_level: String,

    /// Seconds to let in-flight work finish when draining.
    #[arg(long = "drain-time-s", default_value_t = 600)]
    pub drain_time_s: u64,

    /// How connections are asked to close during a drain: `gradual` (Envoy's default) or
    /// `immediate`.
    #[arg(long = "drain-strategy", value_enum, default_value_t = crate::drain::DrainStrategy::Gradual)]
    pub drain_strategy: crate::drain::DrainStrategy,

    /// Fields of the bootstrap that the protos do not know are dropped with a warning (and
    /// counted in `server.static_unknown_fields`) instead of refused.
    #[arg(long = "allow-unknown-static-fields")]
    pub allow_unknown_static_fields: bool,

    /// The IP version of the local address Envoy reports (`v4` or `v6`); skiff reports it in
    /// `/server_info` and uses no local address otherwise.
    #[arg(long = "local-address-ip-version", value_parser = ["v4", "v6"], default_value = "v4")]
    pub local_address_ip_version: String,

    /// Per-component log levels as Envoy's (`misc:error,upstream:debug`). skiff's logs are not
    /// split into Envoy's components: the levels are checked and reported, and `-l` applies.
    #[arg(long = "component-log-level", value_parser = component_log_levels)]
    pub component_log_level: Option<String>,

    /// Accepted: skiff logs no deprecation warnings to skip.
    #[arg(long = "skip-deprecated-logs")]
    pub skip_deprecated_logs: bool,

    /// Accepted for compatibility: skiff has no hot restart, so there is no parent to shut down.
    #[arg(long = "parent-shutdown-time-s", default_value_t = 900)]
    pub parent_shutdown_time_s: u64,

    /// Local service cluster name (node.cluster when the bootstrap sets none).
    #[arg(long = "service-cluster")]
    pub service_cluster: Option<String>,

    /// Local service node name (node.id when the bootstrap sets none).
    #[arg(long = "service-node")]
    pub service_node: Option<String>,

    /// Local zone (node.locality.zone when the bootstrap sets none).
    #[arg(long = "service-zone")]
    pub service_zone: Option<String>,

    /// The format of Envoy's own log lines (spdlog). Accepted: skiff's log lines keep their
    /// format, as with the bootstrap's `application_log_config` (docs/compatibility.md).
    #[arg(long = "log-format")]
    pub log_format: Option<String>,

    /// Accepted: the shared-memory id of Envoy's hot restart, which skiff does not have.
    #[arg(long = "base-id")]
    pub base_id: Option<u64>,

    /// Accepted: picks a free hot-restart base id; skiff has no hot restart.
    #[arg(long = "use-dynamic-base-id")]
    pub use_dynamic_base_id: bool,

    /// Hot restart epoch: only 0 (a fresh start), as skiff has no hot restart to hand
    /// sockets over.
    #[arg(long = "restart-epoch", default_value_t = 0, value_parser = restart_epoch)]
    pub restart_epoch: u32,

    /// How often access logs are flushed, in milliseconds.
    #[arg(long = "file-flush-interval-msec", default_value_t = 10_000)]
    pub file_flush_interval_msec: u64,

    /// Accepted for compatibility: hot restart is never offered.
    #[arg(long = "disable-hot-restart")]
    pub disable_hot_restart: bool,

    /// Internal: decode the configuration and hand it to the parent process on stdout.
    #[arg(long = "decode-config-to-stdout", hide = true)]
    pub decode_config_to_stdout: bool,

    /// Internal: decode discovery files named on stdin for the parent process.
    #[arg(long = "discovery-decoder", hide = true)]
    pub discovery_decoder: bool,

    /// Instead of proxying: a redirection task.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `--restart-epoch`: a later epoch asks for a hot restart from a parent process.
fn restart_epoch(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(0) => Ok(0),
        Ok(_) => Err("hot restart is not supported: only epoch 0".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Checks `--component-log-level`: comma-separated `component:level` pairs with Envoy's levels.
fn component_log_levels(s: &str) -> Result<String, String> {
    for pair in s.split(',') {
        let Some((component, level)) = pair.split_once(':') else {
            return Err(format!("'{pair}' is not component:level"));
        };
        if component.is_empty() {
            return Err(format!("'{pair}' names no component"));
        }
        if !matches!(
            level,
            "trace" | "debug" | "info" | "warning" | "warn" | "error" | "critical" | "off"
        ) {
            return Err(format!("'{level}' is not a log level"));
        }
    }
    Ok(s.to_string())
}

/// Tasks other than proxying.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Write istio-iptables-compatible capture rules (same flags and environment variables).
    Iptables(skiff_iptables::Args),
    /// Internal: the capture self-test's probe, run by `--run-validation` as the workload.
    #[command(name = "validate-capture", hide = true)]
    ValidateCapture {
        /// Capture listeners to open, comma-separated.
        #[arg(long, value_delimiter = ',')]
        listen: Vec<std::net::SocketAddr>,
        /// The probe address to dial.
        #[arg(long)]
        dial: std::net::SocketAddr,
        /// The client's local address.
        #[arg(long)]
        bind: Option<std::net::SocketAddr>,
        /// How long to keep trying.
        #[arg(long = "timeout-ms", default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// Attach, enrol, detach and inspect the eBPF redirection programs.
    Ebpf {
        #[command(subcommand)]
        command: skiff_ebpf::cli::Command,
    },
    /// The chained CNI plugin (run by the container runtime with CNI_COMMAND and the network
    /// configuration on stdin; installed as `skiff-cni` it runs without this word).
    Cni,
    /// Prepare this node for the CNI plugin and keep it prepared (the DaemonSet's command);
    /// `node-agent uninstall` removes it all.
    #[command(name = "node-agent")]
    NodeAgent(skiff_k8s::agent::Args),
}

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Run the proxy.
    Serve,
    /// Check the configuration and exit.
    Validate,
}

impl Mode {
    /// The name Envoy prints in /server_info.
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Serve => "Serve",
            Mode::Validate => "Validate",
        }
    }
}

impl Options {
    /// The worker count: the flag, else the CPUs this process may run on.
    pub fn workers(&self) -> usize {
        self.concurrency.filter(|n| *n > 0).unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }

    /// The `tracing` filter for `--log-level`.
    pub fn tracing_level(&self) -> &str {
        match self.log_level.as_str() {
            "critical" => "error",
            "off" => "off",
            other => other,
        }
    }
}
