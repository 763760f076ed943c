//! `skiff ebpf …`: attach, enrol, detach and inspect the redirection programs.

use std::path::PathBuf;

use skiff_iptables::{Capture, CaptureArgs};

use crate::{Error, PodOptions};

/// `skiff ebpf` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Sidecar mode: attach the programs to one pod's cgroup and enrol its network namespace.
    Attach(AttachArgs),
    /// Node mode: enrol a pod's network namespace (programs attached once at the cgroup root
    /// with `attach --cgroup <root>`).
    Enroll(EnrollArgs),
    /// Remove a pod's enrolment and its inbound attachment.
    Unenroll {
        /// The pod's network namespace (`/var/run/netns/x`, `/proc/<pid>/ns/net`).
        #[arg(long)]
        netns: PathBuf,
    },
    /// Detach from a cgroup and/or unenrol a namespace; with neither, or with --all,
    /// everything. Pins go once nothing uses them.
    Detach {
        /// The cgroup v2 directory the programs were attached to.
        #[arg(long)]
        cgroup: Option<PathBuf>,
        /// The network namespace to unenrol.
        #[arg(long)]
        netns: Option<PathBuf>,
        /// Remove every attachment, enrolment and pin of skiff's.
        #[arg(long)]
        all: bool,
    },
    /// What is attached, enrolled and recorded, and the kernel counters.
    Status,
    /// Print kernel events (redirected, excluded, lookup misses) as they happen; pods
    /// enrolled with --events send them.
    Events {
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
}

/// `skiff ebpf attach`.
#[derive(Debug, Clone, clap::Args)]
pub struct AttachArgs {
    /// The pod's cgroup v2 directory (the cgroup root for node mode).
    #[arg(long)]
    pub cgroup: PathBuf,
    /// The pod's network namespace to enrol.
    #[arg(long)]
    pub netns: Option<PathBuf>,
    #[command(flatten)]
    pub pod: PodArgs,
}

/// `skiff ebpf enroll`.
#[derive(Debug, Clone, clap::Args)]
pub struct EnrollArgs {
    /// The pod's network namespace.
    #[arg(long)]
    pub netns: PathBuf,
    #[command(flatten)]
    pub pod: PodArgs,
}

/// A pod's capture options: istio-iptables' flags, plus what only the eBPF backend has.
#[derive(Debug, Clone, clap::Args)]
pub struct PodArgs {
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// Sockets with this SO_MARK belong to the proxy and are never captured (0: none).
    #[arg(long = "proxy-mark", env = "PROXY_MARK", default_value_t = 1337)]
    pub mark: u32,
    /// Send kernel events to the ring buffer (`skiff ebpf events` prints them).
    #[arg(long)]
    pub events: bool,
    /// Short-circuit the pod's local hops (application to proxy and back, on loopback)
    /// with sk_msg: bytes go straight into the peer socket's receive queue. Off by default;
    /// see BENCHMARKS.md before switching it on.
    #[arg(long = "sk-msg", env = "SKIFF_SK_MSG")]
    pub sk_msg: bool,
}

impl PodArgs {
    fn validate(&self) -> Result<(Capture, PodOptions), Error> {
        let capture = Capture::from_args(&self.capture).map_err(|e| Error(e.to_string()))?;
        let opts = PodOptions {
            mark: self.mark,
            events: self.events,
            sk_msg: self.sk_msg,
        };
        // Fail on limits before anything is attached.
        crate::pod_config(&capture, &opts, &[])?;
        Ok((capture, opts))
    }
}

/// Runs a subcommand; the text to print on success.
pub fn run(cmd: &Command) -> Result<String, Error> {
    match cmd {
        Command::Attach(a) => {
            let (capture, opts) = a.pod.validate()?;
            crate::cgroup(&a.cgroup)?;
            crate::probe()?;
            let mut out = String::new();
            // Enrol first, so the proxy's listener is registered the moment it listens.
            if let Some(ns) = &a.netns {
                out.push_str(&enrolled(ns, &capture, &opts)?);
            }
            let changed = match crate::attach_cgroup(&a.cgroup) {
                Ok(c) => c,
                Err(e) => {
                    // Leave nothing half-attached behind.
                    let _ = crate::detach_cgroup(&a.cgroup);
                    if let Some(ns) = &a.netns {
                        let _ = crate::unenroll(ns);
                    }
                    let _ = crate::remove_unused();
                    return Err(e);
                }
            };
            out.push_str(&format!(
                "cgroup {}: {}\n",
                a.cgroup.display(),
                if changed {
                    "attached"
                } else {
                    "already attached"
                }
            ));
            if capture.run_validation {
                let Some(ns) = &a.netns else {
                    return Err(Error(
                        "--run-validation needs --netns: the probe runs in the pod".into(),
                    ));
                };
                out.push_str(&validate(&a.cgroup, ns, &capture)?);
                out.push('\n');
            }
            Ok(out)
        }
        Command::Enroll(e) => {
            let (capture, opts) = e.pod.validate()?;
            crate::probe()?;
            enrolled(&e.netns, &capture, &opts)
        }
        Command::Unenroll { netns } => {
            let found = crate::unenroll(netns)?;
            crate::remove_unused()?;
            Ok(format!(
                "netns {}: {}\n",
                netns.display(),
                if found {
                    "unenrolled"
                } else {
                    "was not enrolled"
                }
            ))
        }
        Command::Detach { cgroup, netns, all } => {
            let mut out = String::new();
            if *all || (cgroup.is_none() && netns.is_none()) {
                crate::detach_all()?;
                return Ok("detached everything\n".into());
            }
            if let Some(ns) = netns {
                let found = crate::unenroll(ns)?;
                out.push_str(&format!(
                    "netns {}: {}\n",
                    ns.display(),
                    if found {
                        "unenrolled"
                    } else {
                        "was not enrolled"
                    }
                ));
            }
            if let Some(cg) = cgroup {
                let found = crate::detach_cgroup(cg)?;
                out.push_str(&format!(
                    "cgroup {}: {}\n",
                    cg.display(),
                    if found {
                        "detached"
                    } else {
                        "was not attached"
                    }
                ));
            }
            crate::remove_unused()?;
            Ok(out)
        }
        Command::Status => Ok(crate::status()?.to_string()),
        Command::Events { count } => {
            let mut seen = 0u64;
            crate::follow_events(|ev| {
                let dst = crate::display_ip(&ev.ip);
                let kind = crate::abi::event_kind(ev.kind);
                let reason = crate::abi::reason(ev.reason);
                tracing::debug!(
                    target: "skiff::ebpf",
                    netns = ev.netns,
                    pid = ev.pid,
                    %dst,
                    port = ev.port,
                    reason,
                    "{kind}"
                );
                println!(
                    "{kind} netns={} pid={} dst={} reason={}",
                    ev.netns,
                    ev.pid,
                    std::net::SocketAddr::new(dst, ev.port),
                    if reason.is_empty() { "-" } else { reason }
                );
                seen += 1;
                count.is_none_or(|c| seen < c)
            })?;
            Ok(String::new())
        }
    }
}

fn enrolled(ns: &std::path::Path, capture: &Capture, opts: &PodOptions) -> Result<String, Error> {
    let e = crate::enroll(ns, capture, opts)?;
    let addrs: Vec<String> = e.addresses.iter().map(|a| a.to_string()).collect();
    Ok(format!(
        "netns {} (cookie {}): {} (pod addresses: {})\n",
        ns.display(),
        e.cookie,
        if e.changed {
            "enrolled"
        } else {
            "already enrolled"
        },
        if addrs.is_empty() {
            "-".into()
        } else {
            addrs.join(",")
        }
    ))
}

/// The self-test for the eBPF backend: a process of the workload's (an uid and gid the
/// options do not exempt), in the pod's cgroup and namespace, dials an address the options
/// capture; the connection must land on the capture port with SO_ORIGINAL_DST naming the
/// probe port.
fn validate(
    cgroup: &std::path::Path,
    netns: &std::path::Path,
    c: &Capture,
) -> Result<String, Error> {
    use skiff_iptables::validation::{self, Probe, Runner};
    use skiff_iptables::Select;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    let ip = match &c.outbound_cidrs {
        Select::All => IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)),
        Select::Some(list) => list[0].ip,
        Select::None => {
            return Err(Error(
                "validation failed: nothing is captured outbound (-i is empty)".into(),
            ))
        }
    };
    let free = |taken: &[String]| {
        (1..65535u32)
            .rev()
            .find(|id| !taken.iter().any(|t| t == &id.to_string()))
            .unwrap_or(65534)
    };
    let loopback = if ip.is_ipv4() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
    };
    let probe = Probe {
        listen: vec![SocketAddr::new(loopback, c.outbound_port)],
        dial: SocketAddr::new(ip, c.probe_port),
        bind: None,
        timeout: c.probe_timeout,
    };
    let runner = Runner {
        uid: free(&c.uids),
        gid: free(&c.gids),
        cgroup: Some(cgroup),
        netns: Some(netns),
    };
    validation::run_as(&probe, &runner).map_err(Error)
}
