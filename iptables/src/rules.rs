//! The rules themselves: for a validated [`Config`], what istio-iptables writes for the same
//! flags, table by table and in its order, as `iptables-restore` input.

use std::fmt::Write as _;

use crate::{Cidr, Config, Dns, Mode, Select, DNS_CAPTURE_PORT};

/// The rules per address family, as `iptables-restore` input, and the policy routes TPROXY
/// needs, as `ip` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// For `iptables-restore --noflush`.
    pub ipv4: String,
    /// For `ip6tables-restore --noflush`, with `--dual-stack`.
    pub ipv6: Option<String>,
    /// `ip` commands (TPROXY): the mark's rule and the local route of its table.
    pub routes: Vec<Vec<String>>,
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "# iptables-restore --noflush")?;
        f.write_str(&self.ipv4)?;
        if let Some(v6) = &self.ipv6 {
            writeln!(f, "# ip6tables-restore --noflush")?;
            f.write_str(v6)?;
        }
        for r in &self.routes {
            writeln!(f, "ip {}", r.join(" "))?;
        }
        Ok(())
    }
}

/// The rules for a configuration.
pub fn plan(c: &Config) -> Plan {
    // Tables in istio-iptables' order (alphabetical): mangle, nat, raw.
    let family = |v6: bool| {
        format!(
            "{}{}{}",
            mangle_table(c, v6),
            nat_table(c, v6),
            raw_table(c, v6)
        )
    };
    let mut routes = Vec::new();
    if c.mode == Mode::Tproxy {
        let families: &[&str] = if c.ipv6 { &["-4", "-6"] } else { &["-4"] };
        for fam in families {
            let (mark, table) = (c.tproxy_mark.to_string(), c.tproxy_table.to_string());
            routes.push(vec![
                fam.to_string(),
                "rule".into(),
                "add".into(),
                "fwmark".into(),
                mark,
                "lookup".into(),
                table.clone(),
            ]);
            routes.push(
                [
                    *fam, "route", "add", "local", "default", "dev", "lo", "table", &table,
                ]
                .iter()
                .map(|x| x.to_string())
                .collect(),
            );
        }
    }
    Plan {
        ipv4: family(false),
        ipv6: c.ipv6.then(|| family(true)),
        routes,
    }
}

/// The mangle table: dropping INVALID packets, and TPROXY's inbound capture with the marks and
/// connmarks that route replies back through the proxy. Empty when neither is asked for.
fn mangle_table(c: &Config, v6: bool) -> String {
    let (passthrough, loopback) = if v6 {
        ("::6/128".to_string(), "::1/128".to_string())
    } else {
        ("127.0.0.6/32".to_string(), c.ipv4_loopback.to_string())
    };
    let mut r: Vec<String> = Vec::new();
    if c.mode == Mode::Tproxy {
        for nic in &c.exclude_interfaces {
            r.push(format!("-A PREROUTING -i {nic} -j RETURN"));
            r.push(format!("-A OUTPUT -o {nic} -j RETURN"));
        }
    }
    if c.drop_invalid {
        r.push("-A PREROUTING -m conntrack --ctstate INVALID -j ISTIO_DROP".into());
        r.push("-A ISTIO_DROP -j DROP".into());
    }
    if c.mode == Mode::Tproxy && c.capture.inbound_ports != Select::None {
        let mark = c.tproxy_mark;
        let out_mark = mark + 1;
        r.push(format!("-A ISTIO_DIVERT -j MARK --set-mark {mark}"));
        r.push("-A ISTIO_DIVERT -j ACCEPT".into());
        r.push(format!(
            "-A ISTIO_TPROXY ! -d {loopback} -p tcp -j TPROXY --tproxy-mark {mark}/0xffffffff --on-port {}",
            c.capture.inbound_port
        ));
        r.push("-A PREROUTING -p tcp -j ISTIO_INBOUND".into());
        let established = "-m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT";
        match &c.capture.inbound_ports {
            Select::Some(ports) => {
                for p in ports {
                    r.push(format!("-A ISTIO_INBOUND -p tcp --dport {p} {established}"));
                    r.push(format!(
                        "-A ISTIO_INBOUND -p tcp --dport {p} -j ISTIO_TPROXY"
                    ));
                }
            }
            _ => {
                for p in &c.capture.inbound_exclude_ports {
                    r.push(format!("-A ISTIO_INBOUND -p tcp --dport {p} -j RETURN"));
                }
                r.push(format!("-A ISTIO_INBOUND -p tcp {established}"));
                r.push("-A ISTIO_INBOUND -p tcp -j ISTIO_TPROXY".into());
            }
        }
        r.push(format!(
            "-A PREROUTING -p tcp -m mark --mark {mark} -j CONNMARK --save-mark"
        ));
        r.push(format!(
            "-A OUTPUT -p tcp -o lo -m mark --mark {mark} -j RETURN"
        ));
        for (kind, ids) in [("uid", &c.capture.uids), ("gid", &c.capture.gids)] {
            for id in ids {
                r.push(format!(
                    "-A OUTPUT ! -d {loopback} -p tcp -o lo -m owner --{kind}-owner {id} -j MARK --set-mark {out_mark}"
                ));
            }
        }
        r.push(format!(
            "-A OUTPUT -p tcp -m connmark --mark {mark} -j CONNMARK --restore-mark"
        ));
        r.push(format!(
            "-I ISTIO_INBOUND 1 -p tcp -m mark --mark {mark} -j RETURN"
        ));
        r.push(format!(
            "-I ISTIO_INBOUND 2 -p tcp -s {passthrough} -i lo -j RETURN"
        ));
        r.push(format!(
            "-I ISTIO_INBOUND 3 -p tcp -i lo -m mark ! --mark {out_mark} -j RETURN"
        ));
    }
    table("mangle", &r)
}

/// One table as `iptables-restore` input, empty when it has no rules. Like istio-iptables, the
/// `-N` lines come first, one for each of skiff's chains in the order it is first appended to.
fn table(name: &str, rules: &[String]) -> String {
    if rules.is_empty() {
        return String::new();
    }
    let mut chains: Vec<&str> = Vec::new();
    for rule in rules {
        let mut words = rule.split_whitespace();
        if let (Some("-A" | "-I"), Some(chain)) = (words.next(), words.next()) {
            if chain.starts_with("ISTIO_") && !chains.contains(&chain) {
                chains.push(chain);
            }
        }
    }
    let mut out = format!("* {name}\n");
    for chain in chains {
        let _ = writeln!(out, "-N {chain}");
    }
    for rule in rules {
        out.push_str(rule);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

fn ports_list(p: &[u16]) -> String {
    p.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

/// The nat table of one family. The order is istio-iptables': chains, interface exclusions,
/// the redirect chains, inbound capture, then ISTIO_OUTPUT from the most specific exemptions
/// (excluded ports, the inbound passthrough source, the proxy's own uid/gid) to what is captured.
fn nat_table(c: &Config, v6: bool) -> String {
    let (passthrough, loopback) = if v6 {
        ("::6/128".to_string(), "::1/128".to_string())
    } else {
        ("127.0.0.6/32".to_string(), c.ipv4_loopback.to_string())
    };
    let family = |x: &&Cidr| x.ip.is_ipv6() == v6;
    let mut r: Vec<String> = Vec::new();
    for nic in &c.exclude_interfaces {
        r.push(format!("-A PREROUTING -i {nic} -j RETURN"));
        r.push(format!("-A OUTPUT -o {nic} -j RETURN"));
    }
    for nic in &c.virt_interfaces {
        r.push(format!("-I PREROUTING 1 -i {nic} -j RETURN"));
    }
    r.push(format!(
        "-A ISTIO_INBOUND -p tcp --dport {} -j RETURN",
        c.capture.tunnel_port
    ));
    r.push(format!(
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        c.capture.outbound_port
    ));
    r.push(format!(
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        c.capture.inbound_port
    ));
    let nat_inbound = if c.mode == Mode::Redirect {
        &c.capture.inbound_ports
    } else {
        &Select::None
    };
    match nat_inbound {
        Select::None => {}
        Select::All => {
            r.push("-A PREROUTING -p tcp -j ISTIO_INBOUND".into());
            for p in &c.capture.inbound_exclude_ports {
                r.push(format!("-A ISTIO_INBOUND -p tcp --dport {p} -j RETURN"));
            }
            r.push("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT".into());
        }
        Select::Some(ports) => {
            r.push("-A PREROUTING -p tcp -j ISTIO_INBOUND".into());
            for p in ports {
                r.push(format!(
                    "-A ISTIO_INBOUND -p tcp --dport {p} -j ISTIO_IN_REDIRECT"
                ));
            }
        }
    }
    r.push("-A OUTPUT -j ISTIO_OUTPUT".into());
    if !c.capture.outbound_exclude_ports.is_empty() {
        let list = ports_list(&c.capture.outbound_exclude_ports);
        r.push(format!(
            "-A ISTIO_OUTPUT -p tcp -m multiport --dports {list} -j RETURN"
        ));
        r.push(format!(
            "-A ISTIO_OUTPUT -p udp -m multiport --dports {list} -j RETURN"
        ));
    }
    r.push(format!("-A ISTIO_OUTPUT -o lo -s {passthrough} -j RETURN"));
    let tunnel = c.capture.tunnel_port;
    // An explicitly captured loopback range must not be short-circuited by the lo rule below.
    let loopback_captured = match &c.capture.outbound_cidrs {
        Select::Some(list) => list.iter().any(|x| x.ip.is_loopback()),
        _ => false,
    };
    for (kind, ids) in [("uid", &c.capture.uids), ("gid", &c.capture.gids)] {
        for id in ids {
            // The proxy calling its own pod IP over lo goes to the inbound capture (hairpin);
            // the app calling its own pod IP over lo is not captured; the proxy's own traffic
            // is never captured. With DNS capture the proxy's own DNS to a local resolver must
            // not hairpin (istio-iptables does this for uids only), and an app's TCP DNS to a
            // resolver on lo must reach ISTIO_OUTPUT_DNS.
            r.push(if c.dns.is_some() && kind == "uid" {
                format!("-A ISTIO_OUTPUT -o lo ! -d {loopback} -p tcp -m multiport ! --dports 53,{tunnel} -m owner --{kind}-owner {id} -j ISTIO_IN_REDIRECT")
            } else {
                format!("-A ISTIO_OUTPUT -o lo ! -d {loopback} -p tcp ! --dport {tunnel} -m owner --{kind}-owner {id} -j ISTIO_IN_REDIRECT")
            });
            if !loopback_captured {
                r.push(if c.dns.is_some() {
                    format!("-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --{kind}-owner {id} -j RETURN")
                } else {
                    format!("-A ISTIO_OUTPUT -o lo -m owner ! --{kind}-owner {id} -j RETURN")
                });
            }
            r.push(format!(
                "-A ISTIO_OUTPUT -m owner --{kind}-owner {id} -j RETURN"
            ));
        }
    }
    match &c.owner_groups {
        Select::Some(groups) => {
            let mut rule = String::from("-A ISTIO_OUTPUT");
            for g in groups {
                let _ = write!(rule, " -m owner ! --gid-owner {g}");
            }
            rule.push_str(" -j RETURN");
            r.push(rule);
        }
        Select::All | Select::None => {
            for g in &c.owner_groups_exclude {
                r.push(format!(
                    "-A ISTIO_OUTPUT -m owner --gid-owner {g} -j RETURN"
                ));
            }
        }
    }
    if let Some(dns) = &c.dns {
        dns_nat(&mut r, dns, v6);
    }
    r.push(format!("-A ISTIO_OUTPUT -d {loopback} -j RETURN"));
    for x in c.capture.outbound_exclude_cidrs.iter().filter(family) {
        r.push(format!("-A ISTIO_OUTPUT -d {x} -j RETURN"));
    }
    for p in &c.capture.outbound_ports {
        r.push(format!(
            "-A ISTIO_OUTPUT -p tcp --dport {p} -j ISTIO_REDIRECT"
        ));
    }
    match &c.capture.outbound_cidrs {
        Select::None => {}
        Select::All => {
            r.push("-A ISTIO_OUTPUT -j ISTIO_REDIRECT".into());
            for nic in &c.virt_interfaces {
                r.push(format!("-I PREROUTING 1 -i {nic} -j ISTIO_REDIRECT"));
            }
        }
        Select::Some(list) => {
            let list: Vec<&Cidr> = list.iter().filter(family).collect();
            for nic in &c.virt_interfaces {
                for cidr in &list {
                    r.push(format!(
                        "-I PREROUTING 1 -i {nic} -d {cidr} -j ISTIO_REDIRECT"
                    ));
                }
            }
            for cidr in &list {
                r.push(format!("-A ISTIO_OUTPUT -d {cidr} -j ISTIO_REDIRECT"));
            }
        }
    }
    table("nat", &r)
}

/// The nat part of DNS capture: after the proxy's and the owner groups' exemptions, port 53
/// (to the nameservers, or anywhere with `--capture-all-dns`) goes to the agent's 15053. Only
/// nameservers are captured by default so that a local resolver chain (app → agent → dnsmasq
/// → upstream) does not loop back into the agent.
fn dns_nat(r: &mut Vec<String>, dns: &Dns, v6: bool) {
    let servers = dns.servers(v6);
    if dns.capture_all || !servers.is_empty() {
        r.push("-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS".into());
    }
    let host = if v6 { 128 } else { 32 };
    // istio-iptables spells the option `--to-ports` for TCP and `--to-port` for UDP; both
    // are accepted and kept as they are so that the rules compare equal to Istio's.
    for (proto, to) in [("tcp", "--to-ports"), ("udp", "--to-port")] {
        if dns.capture_all {
            r.push(format!(
                "-A ISTIO_OUTPUT_DNS -p {proto} --dport 53 -j REDIRECT {to} {DNS_CAPTURE_PORT}"
            ));
        } else {
            for s in servers {
                r.push(format!(
                    "-A ISTIO_OUTPUT_DNS -p {proto} --dport 53 -d {s}/{host} -j REDIRECT {to} {DNS_CAPTURE_PORT}"
                ));
            }
        }
    }
}

/// The raw table with DNS capture: conntrack zones that keep the two UDP flows of one query
/// apart. The agent's queries to the upstream resolvers and their answers are zone 1; the
/// app's queries (redirected to the agent) and the agent's answers to it are zone 2. Without
/// this, the app's query and the agent's upstream query can share a conntrack tuple and the
/// answer is mangled back to the wrong socket.
fn raw_table(c: &Config, v6: bool) -> String {
    let Some(dns) = &c.dns else {
        return String::new();
    };
    let mut r: Vec<String> = vec!["-A OUTPUT -j ISTIO_OUTPUT_DNS".into()];
    for (kind, ids) in [("uid", &c.capture.uids), ("gid", &c.capture.gids)] {
        for id in ids {
            r.push(format!(
                "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --{kind}-owner {id} -j CT --zone 1"
            ));
            r.push(format!(
                "-A ISTIO_OUTPUT_DNS -p udp --sport {DNS_CAPTURE_PORT} -m owner --{kind}-owner {id} -j CT --zone 2"
            ));
        }
    }
    if dns.capture_all {
        r.push("-A PREROUTING -j ISTIO_INBOUND".into());
        r.push("-A ISTIO_OUTPUT_DNS -p udp --dport 53 -j CT --zone 2".into());
        r.push("-A ISTIO_INBOUND -p udp --sport 53 -j CT --zone 1".into());
    } else {
        let servers = dns.servers(v6);
        let host = if v6 { 128 } else { 32 };
        if !servers.is_empty() {
            r.push("-A PREROUTING -j ISTIO_INBOUND".into());
        }
        for s in servers {
            r.push(format!(
                "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d {s}/{host} -j CT --zone 2"
            ));
            r.push(format!(
                "-A ISTIO_INBOUND -p udp --sport 53 -s {s}/{host} -j CT --zone 1"
            ));
        }
    }
    table("raw", &r)
}
