//! `skiff iptables`: the capture rules istio-iptables writes, from the same flags, environment
//! variables and defaults, so an injection template that runs istio-iptables can run skiff.
//!
//! This crate parses and validates the options ([`Args`] → [`Config`]) before anything is
//! changed, and renders the rules as `iptables-restore` input ([`plan`]): REDIRECT and TPROXY
//! modes and DNS capture, in the rules and order of Istio's own golden outputs.

#![forbid(unsafe_code)]

use std::net::IpAddr;

use clap::Parser;

mod apply;
mod rules;
pub mod validation;

pub use apply::{run, ApplyError};
pub use rules::{plan, Plan};

/// The options of `skiff iptables`, with istio-iptables' short and long names and environment
/// variables.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "skiff iptables",
    about = "Write istio-iptables-compatible capture rules"
)]
pub struct Args {
    /// The capture options `skiff ebpf` shares.
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// Inbound interception mode: REDIRECT or TPROXY.
    #[arg(
        short = 'm',
        long = "istio-inbound-interception-mode",
        env = "INBOUND_INTERCEPTION_MODE",
        default_value = ""
    )]
    pub mode: String,
    /// Interfaces excluded from capture both ways.
    #[arg(
        short = 'c',
        long = "istio-exclude-interfaces",
        env = "ISTIO_EXCLUDE_INTERFACES",
        default_value = ""
    )]
    pub exclude_interfaces: String,
    /// Interfaces whose inbound traffic is treated as outbound (VMs).
    #[arg(
        short = 'k',
        long = "kube-virt-interfaces",
        env = "KUBE_VIRT_INTERFACES",
        default_value = ""
    )]
    pub virt_interfaces: String,
    /// TPROXY mark.
    #[arg(
        short = 't',
        long = "istio-inbound-tproxy-mark",
        env = "ISTIO_INBOUND_TPROXY_MARK",
        default_value = "1337"
    )]
    pub tproxy_mark: String,
    /// TPROXY policy-routing table.
    #[arg(
        short = 'r',
        long = "istio-inbound-tproxy-route-table",
        env = "ISTIO_INBOUND_TPROXY_ROUTE_TABLE",
        default_value = "133"
    )]
    pub tproxy_table: String,
    /// Print the rules instead of applying them.
    #[arg(short = 'n', long = "dry-run", env = "DRY_RUN")]
    pub dry_run: bool,
    /// Also write IPv6 rules.
    #[arg(long = "dual-stack", env = "ISTIO_DUAL_STACK")]
    pub dual_stack: bool,
    /// Groups whose outbound traffic is captured (default all).
    #[arg(
        long = "outbound-owner-groups",
        env = "ISTIO_OUTBOUND_OWNER_GROUPS",
        default_value = "*"
    )]
    pub owner_groups: String,
    /// Groups whose outbound traffic is not captured.
    #[arg(
        long = "outbound-owner-groups-exclude",
        env = "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
        default_value = ""
    )]
    pub owner_groups_exclude: String,
    /// The loopback CIDR never captured.
    #[arg(
        long = "ipv4-loopback-cidr",
        env = "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
        default_value = "127.0.0.1/32"
    )]
    pub ipv4_loopback_cidr: String,
    /// Drop packets conntrack considers INVALID (mangle PREROUTING).
    #[arg(long = "drop-invalid", env = "INVALID_DROP")]
    pub drop_invalid: bool,
    /// Only remove skiff's chains and rules.
    #[arg(long = "cleanup-only", env = "CLEANUP_ONLY")]
    pub cleanup_only: bool,
    /// Capture DNS (UDP and TCP port 53) from everything but the proxy into the agent's DNS
    /// proxy on 15053; also enabled by `ISTIO_META_DNS_CAPTURE=true`.
    #[arg(long = "redirect-dns", env = "REDIRECT_DNS")]
    pub redirect_dns: bool,
    /// With --redirect-dns: capture DNS to any address, not only to the resolv.conf nameservers.
    #[arg(long = "capture-all-dns", env = "CAPTURE_ALL_DNS")]
    pub capture_all_dns: bool,
    /// Where --redirect-dns reads the nameservers whose DNS is captured (skiff's own flag).
    #[arg(
        long = "resolv-conf",
        env = "SKIFF_RESOLV_CONF",
        default_value = "/etc/resolv.conf"
    )]
    pub resolv_conf: String,
    /// Replace skiff's chains when they already exist with different rules (otherwise refuse).
    #[arg(long = "reconcile", env = "RECONCILE")]
    pub reconcile: bool,
    /// Apply, clean up and validate inside this network namespace (e.g. `/var/run/netns/NAME`).
    #[arg(
        long = "network-namespace",
        env = "NETWORK_NAMESPACE",
        default_value = ""
    )]
    pub network_namespace: String,
}

/// The capture options both backends share, `skiff iptables` and `skiff ebpf`: the same
/// flags, environment variables and defaults, with the same meaning.
#[derive(Debug, Clone, clap::Args)]
pub struct CaptureArgs {
    /// Outbound capture port.
    #[arg(short = 'p', long = "envoy-port", default_value = "15001")]
    pub envoy_port: String,
    /// Inbound capture port.
    #[arg(
        short = 'z',
        long = "inbound-capture-port",
        env = "INBOUND_CAPTURE_PORT",
        default_value = "15006"
    )]
    pub inbound_capture_port: String,
    /// Inbound tunnel port (HBONE), never captured.
    #[arg(
        short = 'e',
        long = "inbound-tunnel-port",
        env = "INBOUND_TUNNEL_PORT",
        default_value = "15008"
    )]
    pub inbound_tunnel_port: String,
    /// Uids exempt from outbound capture (comma list).
    #[arg(
        short = 'u',
        long = "proxy-uid",
        env = "PROXY_UID",
        default_value = "1337"
    )]
    pub proxy_uid: String,
    /// Gids exempt from outbound capture (comma list; default: the uids).
    #[arg(short = 'g', long = "proxy-gid", env = "PROXY_GID")]
    pub proxy_gid: Option<String>,
    /// Inbound ports to capture (comma list, `*` for all, empty for none).
    #[arg(
        short = 'b',
        long = "istio-inbound-ports",
        env = "ISTIO_INBOUND_PORTS",
        default_value = ""
    )]
    pub inbound_ports: String,
    /// Inbound ports not captured (with `-b '*'`).
    #[arg(
        short = 'd',
        long = "istio-local-exclude-ports",
        env = "ISTIO_LOCAL_EXCLUDE_PORTS",
        default_value = ""
    )]
    pub inbound_exclude_ports: String,
    /// Outbound CIDRs to capture (comma list, `*` for all, empty for none).
    #[arg(
        short = 'i',
        long = "istio-service-cidr",
        env = "ISTIO_SERVICE_CIDR",
        default_value = ""
    )]
    pub outbound_cidrs: String,
    /// Outbound CIDRs not captured.
    #[arg(
        short = 'x',
        long = "istio-service-exclude-cidr",
        env = "ISTIO_SERVICE_EXCLUDE_CIDR",
        default_value = ""
    )]
    pub outbound_exclude_cidrs: String,
    /// Outbound ports always captured.
    #[arg(
        short = 'q',
        long = "istio-outbound-ports",
        env = "ISTIO_OUTBOUND_PORTS",
        default_value = ""
    )]
    pub outbound_ports: String,
    /// Outbound ports never captured.
    #[arg(
        short = 'o',
        long = "istio-local-outbound-ports-exclude",
        env = "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",
        default_value = ""
    )]
    pub outbound_exclude_ports: String,
    /// After setting up capture, check that it works (exit 126 if not).
    #[arg(long = "run-validation", env = "RUN_VALIDATION")]
    pub run_validation: bool,
    /// How long the validation keeps trying (`5s`, `500ms`, or seconds).
    #[arg(long = "probe-timeout", env = "PROBE_TIMEOUT", default_value = "5s")]
    pub probe_timeout: String,
    /// The port the validation dials; SO_ORIGINAL_DST must report it.
    #[arg(
        long = "iptables-probe-port",
        env = "IPTABLES_PROBE_PORT",
        default_value = "15002"
    )]
    pub probe_port: String,
}

/// A flag with an unusable value: nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct FlagError {
    /// The long flag name.
    pub flag: &'static str,
    /// What is wrong with its value.
    pub reason: String,
}

fn bad(flag: &'static str, reason: impl Into<String>) -> FlagError {
    FlagError {
        flag,
        reason: reason.into(),
    }
}

/// A list flag: nothing, everything (`*`), or these values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select<T> {
    /// Empty: the feature is off.
    None,
    /// `*`.
    All,
    /// An explicit list.
    Some(Vec<T>),
}

/// A CIDR, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    /// Its address.
    pub ip: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

/// How inbound connections are captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// nat REDIRECT: the proxy reads the original destination with SO_ORIGINAL_DST.
    Redirect,
    /// mangle TPROXY: the connection keeps its destination and source; needs a transparent
    /// listener and the policy route.
    Tproxy,
}

/// Validated capture options.
#[derive(Debug, Clone)]
pub struct Config {
    /// The options shared with `skiff ebpf`.
    pub capture: Capture,
    /// `-m`.
    pub mode: Mode,
    /// `-t`.
    pub tproxy_mark: u32,
    /// `-r`.
    pub tproxy_table: u32,
    /// `--drop-invalid`.
    pub drop_invalid: bool,
    /// `-c`.
    pub exclude_interfaces: Vec<String>,
    /// `-k`.
    pub virt_interfaces: Vec<String>,
    /// `--dual-stack`.
    pub ipv6: bool,
    /// `--outbound-owner-groups`.
    pub owner_groups: Select<String>,
    /// `--outbound-owner-groups-exclude`.
    pub owner_groups_exclude: Vec<String>,
    /// `--ipv4-loopback-cidr`.
    pub ipv4_loopback: Cidr,
    /// `-n`.
    pub dry_run: bool,
    /// `--redirect-dns`: `None` when DNS is not captured.
    pub dns: Option<Dns>,
    /// `--reconcile`.
    pub reconcile: bool,
    /// `--network-namespace`.
    pub network_namespace: Option<std::path::PathBuf>,
    /// What the operator should know about the options (printed, not fatal).
    pub warnings: Vec<String>,
}

/// DNS capture (`--redirect-dns`), as istio-iptables does it: port 53 to the agent's 15053.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// `--capture-all-dns`: every destination, not only the nameservers.
    pub capture_all: bool,
    /// The IPv4 nameservers of resolv.conf (empty with `capture_all`).
    pub servers_v4: Vec<IpAddr>,
    /// The IPv6 nameservers of resolv.conf (empty with `capture_all`).
    pub servers_v6: Vec<IpAddr>,
}

/// The port the agent's DNS proxy listens on (istio-agent's, and what skiff's rules send to).
pub const DNS_CAPTURE_PORT: u16 = 15053;

/// The nameservers of a resolv.conf, split by family, read the way istio-iptables reads them:
/// the first word after `nameserver`, unparsable addresses (a zone, a name) skipped.
pub fn nameservers(resolv_conf: &str) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for line in resolv_conf.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        match words.next().and_then(|a| a.parse::<IpAddr>().ok()) {
            Some(ip @ IpAddr::V4(_)) => v4.push(ip),
            // Go's netip counts an IPv4-mapped address as IPv6, and so does Istio.
            Some(ip @ IpAddr::V6(_)) => v6.push(ip),
            None => {}
        }
    }
    (v4, v6)
}

/// Go's `strconv.ParseBool`, which istio-iptables uses for its environment variables.
fn go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `ISTIO_META_DNS_CAPTURE`, the proxy's own switch for DNS capture, which istio-iptables also
/// reads as `--redirect-dns`.
fn meta_dns_capture() -> bool {
    std::env::var("ISTIO_META_DNS_CAPTURE").is_ok_and(|v| go_bool(v.trim()) == Some(true))
}

impl Dns {
    /// `--redirect-dns` and `--capture-all-dns`. Without `--capture-all-dns` the nameservers
    /// come from resolv.conf; with none there, istio-iptables turns DNS capture off (`None`).
    fn from_args(a: &Args) -> Result<Option<Dns>, FlagError> {
        if let Ok(v) = std::env::var("ISTIO_META_DNS_CAPTURE") {
            if go_bool(v.trim()).is_none() {
                return Err(bad(
                    "redirect-dns",
                    format!("ISTIO_META_DNS_CAPTURE='{v}' is not a boolean"),
                ));
            }
        }
        if !(a.redirect_dns || meta_dns_capture()) {
            return Ok(None);
        }
        if a.capture_all_dns {
            return Ok(Some(Dns {
                capture_all: true,
                servers_v4: Vec::new(),
                servers_v6: Vec::new(),
            }));
        }
        let text = std::fs::read_to_string(&a.resolv_conf).map_err(|e| {
            bad(
                "resolv-conf",
                format!(
                    "--redirect-dns needs the nameservers: cannot read {}: {e}",
                    a.resolv_conf
                ),
            )
        })?;
        let (servers_v4, servers_v6) = nameservers(&text);
        if servers_v4.is_empty() && servers_v6.is_empty() {
            return Ok(None);
        }
        Ok(Some(Dns {
            capture_all: false,
            servers_v4,
            servers_v6,
        }))
    }

    fn servers(&self, v6: bool) -> &[IpAddr] {
        if v6 {
            &self.servers_v6
        } else {
            &self.servers_v4
        }
    }
}

/// Validated capture options, shared by both backends.
#[derive(Debug, Clone)]
pub struct Capture {
    /// `-p`.
    pub outbound_port: u16,
    /// `-z`.
    pub inbound_port: u16,
    /// `-e`.
    pub tunnel_port: u16,
    /// `-u`.
    pub uids: Vec<String>,
    /// `-g`.
    pub gids: Vec<String>,
    /// `-b`.
    pub inbound_ports: Select<u16>,
    /// `-d`.
    pub inbound_exclude_ports: Vec<u16>,
    /// `-i`.
    pub outbound_cidrs: Select<Cidr>,
    /// `-x`.
    pub outbound_exclude_cidrs: Vec<Cidr>,
    /// `-q`.
    pub outbound_ports: Vec<u16>,
    /// `-o`.
    pub outbound_exclude_ports: Vec<u16>,
    /// `--run-validation`.
    pub run_validation: bool,
    /// `--probe-timeout`.
    pub probe_timeout: std::time::Duration,
    /// `--iptables-probe-port`.
    pub probe_port: u16,
}

fn items(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|x| !x.is_empty())
}

fn port(flag: &'static str, s: &str) -> Result<u16, FlagError> {
    match s.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(bad(flag, format!("'{s}' is not a port (1-65535)"))),
    }
}

fn ports(flag: &'static str, s: &str) -> Result<Vec<u16>, FlagError> {
    items(s).map(|p| port(flag, p)).collect()
}

fn select_ports(flag: &'static str, s: &str) -> Result<Select<u16>, FlagError> {
    match s.trim() {
        "" => Ok(Select::None),
        "*" => Ok(Select::All),
        other => Ok(Select::Some(ports(flag, other)?)),
    }
}

/// Parses `a.b.c.d/n` or an address (a host route).
pub fn cidr(flag: &'static str, s: &str) -> Result<Cidr, FlagError> {
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| bad(flag, format!("'{s}' is not a CIDR")))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(bad(flag, format!("'{s}' has a bad prefix length"))),
        },
        None => max,
    };
    Ok(Cidr { ip, prefix })
}

fn timeout(flag: &'static str, s: &str) -> Result<std::time::Duration, FlagError> {
    let t = s.trim();
    let parsed = if let Some(ms) = t.strip_suffix("ms") {
        ms.parse::<u64>().ok().map(std::time::Duration::from_millis)
    } else {
        t.strip_suffix('s')
            .unwrap_or(t)
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v > 0.0 && *v < 3600.0)
            .map(std::time::Duration::from_secs_f64)
    };
    parsed
        .filter(|d| !d.is_zero())
        .ok_or_else(|| bad(flag, format!("'{s}' is not a duration (5s, 500ms)")))
}

fn cidrs(flag: &'static str, s: &str) -> Result<Vec<Cidr>, FlagError> {
    items(s).map(|c| cidr(flag, c)).collect()
}

fn ids(flag: &'static str, s: &str) -> Result<Vec<String>, FlagError> {
    let v: Vec<String> = items(s).map(str::to_string).collect();
    for id in &v {
        if id.parse::<u32>().is_err() {
            return Err(bad(flag, format!("'{id}' is not a numeric id")));
        }
    }
    Ok(v)
}

fn names(flag: &'static str, s: &str) -> Result<Vec<String>, FlagError> {
    let v: Vec<String> = items(s).map(str::to_string).collect();
    for n in &v {
        if n.len() > 15
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
        {
            return Err(bad(flag, format!("'{n}' is not an interface name")));
        }
    }
    Ok(v)
}

fn groups(flag: &'static str, s: &str) -> Result<Vec<String>, FlagError> {
    let v: Vec<String> = items(s).map(str::to_string).collect();
    for g in &v {
        if !g
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(bad(flag, format!("'{g}' is not a group name or id")));
        }
    }
    Ok(v)
}

impl Capture {
    /// Validates the shared options; the error names the flag.
    pub fn from_args(a: &CaptureArgs) -> Result<Capture, FlagError> {
        let uids = ids("proxy-uid", &a.proxy_uid)?;
        let gids = match &a.proxy_gid {
            Some(g) => ids("proxy-gid", g)?,
            None => uids.clone(),
        };
        let outbound_cidrs = match a.outbound_cidrs.trim() {
            "" => Select::None,
            "*" => Select::All,
            s => Select::Some(cidrs("istio-service-cidr", s)?),
        };
        Ok(Capture {
            run_validation: a.run_validation,
            probe_timeout: timeout("probe-timeout", &a.probe_timeout)?,
            probe_port: port("iptables-probe-port", &a.probe_port)?,
            outbound_port: port("envoy-port", &a.envoy_port)?,
            inbound_port: port("inbound-capture-port", &a.inbound_capture_port)?,
            tunnel_port: port("inbound-tunnel-port", &a.inbound_tunnel_port)?,
            uids,
            gids,
            inbound_ports: select_ports("istio-inbound-ports", &a.inbound_ports)?,
            inbound_exclude_ports: ports("istio-local-exclude-ports", &a.inbound_exclude_ports)?,
            outbound_cidrs,
            outbound_exclude_cidrs: cidrs("istio-service-exclude-cidr", &a.outbound_exclude_cidrs)?,
            outbound_ports: ports("istio-outbound-ports", &a.outbound_ports)?,
            outbound_exclude_ports: ports(
                "istio-local-outbound-ports-exclude",
                &a.outbound_exclude_ports,
            )?,
        })
    }
}

impl Config {
    /// Validates every flag before anything is changed; the error names the flag.
    pub fn from_args(a: &Args) -> Result<Config, FlagError> {
        let mode = match a.mode.as_str() {
            "" | "REDIRECT" => Mode::Redirect,
            "TPROXY" => Mode::Tproxy,
            other => {
                return Err(bad(
                    "istio-inbound-interception-mode",
                    format!("unknown mode '{other}' (REDIRECT or TPROXY)"),
                ))
            }
        };
        let tproxy_mark = a
            .tproxy_mark
            .parse::<u32>()
            .ok()
            .filter(|m| *m > 0 && *m < u32::MAX)
            .ok_or_else(|| {
                bad(
                    "istio-inbound-tproxy-mark",
                    format!("'{}' is not a mark", a.tproxy_mark),
                )
            })?;
        let tproxy_table = a.tproxy_table.parse::<u32>().map_err(|_| {
            bad(
                "istio-inbound-tproxy-route-table",
                format!("'{}' is not a table number", a.tproxy_table),
            )
        })?;
        let capture = Capture::from_args(&a.capture)?;
        let owner_groups = match a.owner_groups.trim() {
            "" | "*" => Select::All,
            s => Select::Some(groups("outbound-owner-groups", s)?),
        };
        let owner_groups_exclude =
            groups("outbound-owner-groups-exclude", &a.owner_groups_exclude)?;
        if matches!(owner_groups, Select::Some(_)) && !owner_groups_exclude.is_empty() {
            return Err(bad(
                "outbound-owner-groups-exclude",
                "only one of --outbound-owner-groups and --outbound-owner-groups-exclude may be set",
            ));
        }
        let ipv4_loopback = cidr("ipv4-loopback-cidr", &a.ipv4_loopback_cidr)?;
        if !ipv4_loopback.ip.is_ipv4() || !ipv4_loopback.ip.is_loopback() {
            return Err(bad(
                "ipv4-loopback-cidr",
                format!("'{}' is not an IPv4 loopback CIDR", a.ipv4_loopback_cidr),
            ));
        }
        let network_namespace = match a.network_namespace.trim() {
            "" => None,
            path => {
                let p = std::path::PathBuf::from(path);
                if !a.dry_run && !p.exists() {
                    return Err(bad(
                        "network-namespace",
                        format!("{path} does not exist (a path such as /var/run/netns/<name> or /proc/<pid>/ns/net)"),
                    ));
                }
                Some(p)
            }
        };
        let dns = Dns::from_args(a)?;
        let mut warnings = Vec::new();
        if dns.is_none() && (a.redirect_dns || meta_dns_capture()) {
            warnings.push(format!(
                "--redirect-dns: no nameserver in {} and no --capture-all-dns: DNS is not captured",
                a.resolv_conf
            ));
        }
        Ok(Config {
            dns,
            warnings,
            reconcile: a.reconcile,
            network_namespace,
            capture,
            mode,
            tproxy_mark,
            tproxy_table,
            drop_invalid: a.drop_invalid,
            exclude_interfaces: names("istio-exclude-interfaces", &a.exclude_interfaces)?,
            virt_interfaces: names("kube-virt-interfaces", &a.virt_interfaces)?,
            ipv6: a.dual_stack,
            owner_groups,
            owner_groups_exclude,
            ipv4_loopback,
            dry_run: a.dry_run,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Result<Config, FlagError> {
        let mut all = vec!["skiff iptables"];
        all.extend_from_slice(args);
        Config::from_args(&Args::try_parse_from(all).expect("flags parse"))
    }

    #[test]
    fn bad_values_name_their_flag() {
        assert_eq!(
            config(&["-i", "10.0.0.0/33"]).unwrap_err().flag,
            "istio-service-cidr"
        );
        assert_eq!(config(&["-p", "70000"]).unwrap_err().flag, "envoy-port");
        assert_eq!(
            config(&["-m", "BOGUS"]).unwrap_err().flag,
            "istio-inbound-interception-mode"
        );
        assert_eq!(
            config(&["-b", "80,x"]).unwrap_err().flag,
            "istio-inbound-ports"
        );
        assert_eq!(config(&["-u", "root"]).unwrap_err().flag, "proxy-uid");
        assert_eq!(
            config(&["-x", "nonsense"]).unwrap_err().to_string(),
            "--istio-service-exclude-cidr: 'nonsense' is not a CIDR"
        );
    }

    #[test]
    fn nameservers_are_read_like_istio_reads_resolv_conf() {
        let (v4, v6) = nameservers(
            "# comment\nsearch svc.cluster.local\nnameserver 10.96.0.10\nnameserver  fe80::1%eth0\n\
             nameserver 2001:db8::53 # trailing\noptions ndots:5\nnameserver\n",
        );
        assert_eq!(v4, ["10.96.0.10".parse::<IpAddr>().expect("ip")]);
        assert_eq!(v6, ["2001:db8::53".parse::<IpAddr>().expect("ip")]);
    }

    #[test]
    fn dns_flags_are_checked_before_anything_changes() {
        let err = config(&[
            "--redirect-dns",
            "--resolv-conf",
            "/nonexistent/resolv.conf",
        ])
        .expect_err("unreadable resolv.conf");
        assert_eq!(err.flag, "resolv-conf");
        assert!(
            err.to_string().contains("/nonexistent/resolv.conf"),
            "{err}"
        );
        // With --capture-all-dns resolv.conf is not needed, as in istio-iptables.
        let all = config(&[
            "--redirect-dns",
            "--capture-all-dns",
            "--resolv-conf",
            "/nonexistent/resolv.conf",
        ])
        .expect("capture-all-dns");
        assert!(all.dns.is_some_and(|d| d.capture_all));
        assert!(config(&[]).expect("defaults").dns.is_none());
    }

    #[test]
    fn gids_default_to_uids() {
        assert_eq!(config(&["-u", "3,4"]).expect("ok").capture.gids, ["3", "4"]);
    }
}
