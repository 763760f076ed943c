//! Applying and removing the rules with the system's iptables, as istio-iptables does: the
//! current rules are compared with the plan first. With none of skiff's chains present the plan
//! is loaded atomically per family with `iptables-restore --noflush`; when they are there with
//! exactly the planned rules nothing is changed (running twice changes nothing); when they are
//! there with other rules, `--reconcile` removes them and loads the plan (behind temporary DROP
//! guardrails), and without it nothing is changed and the run fails. Clean-up removes only
//! skiff's chains and the rules that jump to them (and the interface exemptions the same flags
//! add), leaving every other rule as it was. With `--network-namespace` every command runs
//! inside that namespace through `nsenter`, so the host's own network is never touched.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::{plan, validation, Args, Config, FlagError, Plan};

/// Why `skiff iptables` failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A flag is wrong; nothing was changed.
    #[error(transparent)]
    Flag(#[from] FlagError),
    /// The rules are in place but the self-test found capture not working (exit 126).
    #[error("{0}")]
    Validation(String),
    /// skiff's chains exist with rules other than the planned ones and `--reconcile` is off.
    #[error(
        "{0}; nothing was changed: pass --reconcile to replace them, or run --cleanup-only first"
    )]
    Drift(String),
    /// An iptables command failed.
    #[error("{command} failed: {output}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed.
        output: String,
    },
}

fn command_error(cmd: &Command, output: String) -> ApplyError {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        line.push(' ');
        line.push_str(&a.to_string_lossy());
    }
    ApplyError::Command {
        command: line,
        output,
    }
}

/// Where the iptables and ip commands run: in this network namespace, or in
/// `--network-namespace` through `nsenter --net`, which leaves this process (and the host, when
/// it runs there) as it was.
#[derive(Clone, Copy)]
struct Host<'a> {
    netns: Option<&'a Path>,
}

impl Host<'_> {
    fn cmd(&self, program: &str) -> Command {
        match self.netns {
            None => Command::new(program),
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display()))
                    .arg("--")
                    .arg(program);
                c
            }
        }
    }
}

/// The iptables programs of one address family.
struct Family {
    iptables: &'static str,
    save: &'static str,
    restore: &'static str,
    ip: &'static str,
}

const V4: Family = Family {
    iptables: "iptables",
    save: "iptables-save",
    restore: "iptables-restore",
    ip: "-4",
};

const V6: Family = Family {
    iptables: "ip6tables",
    save: "ip6tables-save",
    restore: "ip6tables-restore",
    ip: "-6",
};

/// The families the plan has rules for, each with its rules.
fn families(plan: &Plan) -> Vec<(&'static Family, &str)> {
    let mut v = vec![(&V4, plan.ipv4.as_str())];
    if let Some(v6) = &plan.ipv6 {
        v.push((&V6, v6.as_str()));
    }
    v
}

fn run_cmd(cmd: &mut Command, stdin: Option<&str>) -> Result<String, ApplyError> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| command_error(cmd, e.to_string()))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| command_error(cmd, e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| command_error(cmd, e.to_string()))?;
    if !out.status.success() {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return Err(command_error(cmd, text.trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `skiff iptables`: prints (`--dry-run`), applies, or cleans up. Returns what to print.
pub fn run(args: &Args) -> Result<String, ApplyError> {
    let config = Config::from_args(args)?;
    for w in &config.warnings {
        eprintln!("skiff iptables: warning: {w}");
    }
    let plan = plan(&config);
    let host = Host {
        netns: config.network_namespace.as_deref(),
    };
    if args.cleanup_only {
        if config.dry_run {
            return Ok("# would remove skiff's chains, the rules that jump to them, and the TPROXY routes\n".into());
        }
        cleanup(host, &config, &plan)?;
        return Ok(String::new());
    }
    if config.dry_run {
        return Ok(plan.to_string());
    }
    let families = families(&plan);
    let (mut clean, mut drift) = (Vec::new(), None);
    for (family, rules) in &families {
        match inspect(host, family, rules)? {
            State::Clean => clean.push(family.iptables),
            State::Current => {}
            State::Drifted(why) => drift = drift.or(Some(why)),
        }
    }
    let state = if clean.len() == families.len() {
        State::Clean
    } else if let Some(why) = drift {
        State::Drifted(why)
    } else if !clean.is_empty() {
        // One family has skiff's rules and another none: to istio-iptables, a drift.
        State::Drifted(format!(
            "{} has none of skiff's chains while the other family has them",
            clean.join(", ")
        ))
    } else {
        State::Current
    };
    match state {
        State::Clean => restore(host, &plan)?,
        State::Current => {}
        State::Drifted(why) if config.reconcile => {
            let up = raise_guardrails(host, &plan)?;
            let replaced = cleanup(host, &config, &plan).and_then(|()| restore(host, &plan));
            // The guardrails come off even when the replacement failed: a pod without its
            // capture rules is better than a pod without any network.
            let lifted = lift_guardrails(host, &up);
            replaced.map_err(|e| match e {
                ApplyError::Command { command, output } => ApplyError::Command {
                    command,
                    output: format!("{output} (while reconciling: {why})"),
                },
                other => other,
            })?;
            lifted?;
        }
        State::Drifted(why) => return Err(ApplyError::Drift(why)),
    }
    routes(host, &config, &plan)?;
    if config.capture.run_validation {
        return validate(&config).map(|msg| format!("{msg}\n"));
    }
    Ok(String::new())
}

/// What is in place compared with the plan, worst family first.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// None of skiff's chains exist.
    Clean,
    /// skiff's chains exist with the planned rules (order aside, as istio-iptables compares).
    Current,
    /// skiff's chains exist with other rules: why.
    Drifted(String),
}

/// The ISTIO_ chains of an `iptables-save` or plan text, per table, with their rule counts.
fn chains(text: &str) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    let mut table = String::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
            continue;
        }
        let mut words = line.split_whitespace();
        let (chain, is_rule) = match (words.next(), words.next()) {
            (Some("-N"), Some(chain)) => (chain, false),
            (Some("-A" | "-I"), Some(chain)) => (chain, true),
            (Some(decl), _) if decl.starts_with(':') => (&decl[1..], false),
            _ => continue,
        };
        if chain.starts_with("ISTIO_") {
            *out.entry((table.clone(), chain.to_string())).or_default() += usize::from(is_rule);
        }
    }
    out
}

/// istio-iptables' drift check: the same ISTIO_ chains in each table with as many rules as
/// planned, and every planned rule present (`iptables -C`, so the kernel's spelling of a rule
/// does not matter).
fn inspect(host: Host<'_>, family: &Family, rules: &str) -> Result<State, ApplyError> {
    let current = chains(&run_cmd(&mut host.cmd(family.save), None)?);
    if current.is_empty() {
        return Ok(State::Clean);
    }
    let planned = chains(rules);
    for ((table, chain), n) in &current {
        match planned.get(&(table.clone(), chain.clone())) {
            None => {
                return Ok(State::Drifted(format!(
                    "{} table {table} has chain {chain}, which these flags do not use",
                    family.iptables
                )))
            }
            Some(want) if want != n => {
                return Ok(State::Drifted(format!(
                    "{} table {table} chain {chain} has {n} rules, these flags make {want}",
                    family.iptables
                )))
            }
            Some(_) => {}
        }
    }
    if let Some((table, chain)) = planned.keys().find(|k| !current.contains_key(*k)) {
        return Ok(State::Drifted(format!(
            "{} table {table} lacks chain {chain}",
            family.iptables
        )));
    }
    let mut table = "";
    for line in rules.lines() {
        if let Some(t) = line.strip_prefix("* ") {
            table = t;
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let (chain, spec) = match words.as_slice() {
            ["-A", chain, spec @ ..] => (*chain, spec),
            ["-I", chain, _position, spec @ ..] => (*chain, spec),
            _ => continue,
        };
        let check = run_cmd(
            host.cmd(family.iptables)
                .args(["-t", table, "-C", chain])
                .args(spec),
            None,
        );
        if check.is_err() {
            return Ok(State::Drifted(format!(
                "{} table {table} lacks the rule `{}`",
                family.iptables,
                words.join(" ")
            )));
        }
    }
    Ok(State::Current)
}

/// Loads the plan, one atomic `iptables-restore --noflush` per family.
fn restore(host: Host<'_>, plan: &Plan) -> Result<(), ApplyError> {
    for (family, rules) in families(plan) {
        run_cmd(host.cmd(family.restore).arg("--noflush"), Some(rules))?;
    }
    Ok(())
}

/// The TPROXY policy routes: removed and added again, so that they are there exactly once.
fn routes(host: Host<'_>, c: &Config, plan: &Plan) -> Result<(), ApplyError> {
    if plan.routes.is_empty() {
        return Ok(());
    }
    remove_routes(host, c, plan);
    for route in &plan.routes {
        run_cmd(host.cmd("ip").args(route), None)?;
    }
    Ok(())
}

/// istio-iptables' guardrails while it replaces stale rules: no TCP or UDP in or out of the
/// namespace, so that nothing slips past half-replaced rules uncaptured. Returns the rules put
/// up, for [`lift_guardrails`]; on a failure the ones already up come down again.
fn raise_guardrails(
    host: Host<'_>,
    plan: &Plan,
) -> Result<Vec<(&'static str, [&'static str; 5])>, ApplyError> {
    let mut up = Vec::new();
    for (family, _) in families(plan) {
        for chain in ["INPUT", "FORWARD", "OUTPUT"] {
            for proto in ["tcp", "udp"] {
                let rule = [chain, "-p", proto, "-j", "DROP"];
                let mut cmd = host.cmd(family.iptables);
                cmd.args(["-t", "filter", "-I", chain, "1"])
                    .args(&rule[1..]);
                if let Err(e) = run_cmd(&mut cmd, None) {
                    let _ = lift_guardrails(host, &up);
                    return Err(e);
                }
                up.push((family.iptables, rule));
            }
        }
    }
    Ok(up)
}

/// Takes down exactly the guardrails put up (`-D` removes the first match: ours, at the top),
/// going on past a failure so that as few as possible stay.
fn lift_guardrails(
    host: Host<'_>,
    up: &[(&'static str, [&'static str; 5])],
) -> Result<(), ApplyError> {
    let mut first_error = None;
    for (bin, rule) in up {
        let mut cmd = host.cmd(bin);
        cmd.args(["-t", "filter", "-D"]).args(rule);
        if let Err(e) = run_cmd(&mut cmd, None) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// istio-iptables' self-test: as the proxy's uid, a connection from 127.0.0.1 to
/// 127.0.0.6:<probe port> takes the hairpin rule to the inbound capture port (or the outbound
/// one), where SO_ORIGINAL_DST must name the probe port.
fn validate(config: &Config) -> Result<String, ApplyError> {
    let c = &config.capture;
    let id = |ids: &[String]| {
        ids.first()
            .and_then(|i| i.parse::<u32>().ok())
            .unwrap_or(1337)
    };
    let probe = validation::Probe {
        listen: vec![
            SocketAddr::from(([127, 0, 0, 1], c.outbound_port)),
            SocketAddr::from(([127, 0, 0, 1], c.inbound_port)),
        ],
        dial: SocketAddr::from(([127, 0, 0, 6], c.probe_port)),
        bind: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        timeout: c.probe_timeout,
    };
    let runner = validation::Runner {
        uid: id(&c.uids),
        gid: id(&c.gids),
        netns: config.network_namespace.as_deref(),
        ..Default::default()
    };
    validation::run_as(&probe, &runner).map_err(ApplyError::Validation)
}

/// Removes what skiff adds: in nat, mangle and raw, every built-in-chain rule that jumps to
/// one of its chains, the plan's other built-in-chain rules (marks, interface exemptions), the
/// chains themselves, and the TPROXY policy routes. Rules already gone are skipped.
fn cleanup(host: Host<'_>, c: &Config, plan: &Plan) -> Result<(), ApplyError> {
    for (family, rules) in families(plan) {
        for table in ["nat", "mangle", "raw"] {
            cleanup_table(host, family.iptables, table, rules)?;
        }
    }
    remove_routes(host, c, plan);
    Ok(())
}

fn remove_routes(host: Host<'_>, c: &Config, plan: &Plan) {
    let (mark, table) = (c.tproxy_mark.to_string(), c.tproxy_table.to_string());
    for (family, _) in families(plan) {
        while run_cmd(
            host.cmd("ip")
                .args([family.ip, "rule", "del", "fwmark", &mark, "lookup", &table]),
            None,
        )
        .is_ok()
        {}
        let _ = run_cmd(
            host.cmd("ip")
                .args([family.ip, "route", "flush", "table", &table]),
            None,
        );
    }
}

fn cleanup_table(
    host: Host<'_>,
    bin: &str,
    table: &str,
    plan_rules: &str,
) -> Result<(), ApplyError> {
    let listing = run_cmd(host.cmd(bin).args(["-t", table, "-S"]), None)?;
    let ours = |chain: &str| chain.starts_with("ISTIO_");
    for line in listing.lines() {
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        let Some((chain, spec)) = rule.split_once(' ') else {
            continue;
        };
        let words: Vec<&str> = spec.split_whitespace().collect();
        if !ours(chain) && words.windows(2).any(|w| w[0] == "-j" && ours(w[1])) {
            run_cmd(
                host.cmd(bin).args(["-t", table, "-D", chain]).args(&words),
                None,
            )?;
        }
    }
    // The plan's rules in built-in chains that do not jump to our chains.
    let mut in_table = false;
    for line in plan_rules.lines() {
        if let Some(t) = line.strip_prefix("* ") {
            in_table = t == table;
            continue;
        }
        if !in_table {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let (chain, spec) = match words.as_slice() {
            ["-A", chain, spec @ ..] => (*chain, spec),
            ["-I", chain, _position, spec @ ..] => (*chain, spec),
            _ => continue,
        };
        if !ours(chain) {
            let _ = run_cmd(
                host.cmd(bin).args(["-t", table, "-D", chain]).args(spec),
                None,
            );
        }
    }
    let existing: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.strip_prefix("-N "))
        .filter(|c| ours(c))
        .collect();
    for chain in &existing {
        run_cmd(host.cmd(bin).args(["-t", table, "-F", chain]), None)?;
    }
    for chain in &existing {
        run_cmd(host.cmd(bin).args(["-t", table, "-X", chain]), None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_count_rules_alike_in_saves_and_plans() {
        let save = "*nat\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n:ISTIO_REDIRECT - [0:0]\n\
                    -A OUTPUT -j ISTIO_OUTPUT\n-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\nCOMMIT\n\
                    *raw\n:ISTIO_OUTPUT_DNS - [0:0]\nCOMMIT\n";
        let plan = "* nat\n-N ISTIO_OUTPUT\n-N ISTIO_REDIRECT\n-A OUTPUT -j ISTIO_OUTPUT\n\
                    -I ISTIO_OUTPUT 1 -d 127.0.0.1/32 -j RETURN\nCOMMIT\n* raw\n-N ISTIO_OUTPUT_DNS\nCOMMIT\n";
        let want: BTreeMap<(String, String), usize> = [
            (("nat", "ISTIO_OUTPUT"), 1),
            (("nat", "ISTIO_REDIRECT"), 0),
            (("raw", "ISTIO_OUTPUT_DNS"), 0),
        ]
        .into_iter()
        .map(|((t, c), n)| ((t.to_string(), c.to_string()), n))
        .collect();
        assert_eq!(chains(save), want);
        assert_eq!(chains(plan), want);
    }
}
