//! Applying and removing the rules with the system's iptables. Applying first removes what an
//! earlier run left, then loads the plan atomically per family with `iptables-restore
//! --noflush`, so running twice changes nothing; clean-up removes only skiff's chains and the
//! rules that jump to them (and the interface exemptions the same flags add), leaving every
//! other rule as it was.

use std::io::Write as _;
use std::process::{Command, Stdio};

use std::net::SocketAddr;

use crate::{plan, validation, Args, Config, FlagError};

/// Why `skiff iptables` failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A flag is wrong; nothing was changed.
    #[error(transparent)]
    Flag(#[from] FlagError),
    /// The rules are in place but the self-test found capture not working (exit 126).
    #[error("{0}")]
    Validation(String),
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
    if args.cleanup_only {
        if config.dry_run {
            return Ok("# would remove skiff's chains, the rules that jump to them, and the TPROXY routes\n".into());
        }
        cleanup(&config, &plan)?;
        return Ok(String::new());
    }
    if config.dry_run {
        return Ok(plan.to_string());
    }
    cleanup(&config, &plan)?;
    let families = [
        ("iptables-restore", Some(&plan.ipv4)),
        ("ip6tables-restore", plan.ipv6.as_ref()),
    ];
    for (bin, input) in families {
        if let Some(input) = input {
            run_cmd(Command::new(bin).arg("--noflush"), Some(input))?;
        }
    }
    for route in &plan.routes {
        run_cmd(Command::new("ip").args(route), None)?;
    }
    if config.capture.run_validation {
        return validate(&config).map(|msg| format!("{msg}\n"));
    }
    Ok(String::new())
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
        ..Default::default()
    };
    validation::run_as(&probe, &runner).map_err(ApplyError::Validation)
}

/// Removes what skiff adds: in nat, mangle and raw (DNS capture), every built-in-chain rule that jumps to one of
/// its chains, the plan's other built-in-chain rules (marks, interface exemptions), the chains
/// themselves, and the TPROXY policy routes. Rules already gone are skipped.
fn cleanup(c: &Config, plan: &crate::Plan) -> Result<(), ApplyError> {
    let families = [
        ("iptables", Some(&plan.ipv4), "-4"),
        ("ip6tables", plan.ipv6.as_ref(), "-6"),
    ];
    for (bin, rules, _) in families {
        let Some(rules) = rules else { continue };
        for table in ["nat", "mangle", "raw"] {
            cleanup_table(bin, table, rules)?;
        }
    }
    let (mark, table) = (c.tproxy_mark.to_string(), c.tproxy_table.to_string());
    for (_, rules, fam) in families {
        if rules.is_none() {
            continue;
        }
        while run_cmd(
            Command::new("ip").args([fam, "rule", "del", "fwmark", &mark, "lookup", &table]),
            None,
        )
        .is_ok()
        {}
        let _ = run_cmd(
            Command::new("ip").args([fam, "route", "flush", "table", &table]),
            None,
        );
    }
    Ok(())
}

fn cleanup_table(bin: &str, table: &str, plan_rules: &str) -> Result<(), ApplyError> {
    let listing = run_cmd(Command::new(bin).args(["-t", table, "-S"]), None)?;
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
                Command::new(bin)
                    .args(["-t", table, "-D", chain])
                    .args(&words),
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
                Command::new(bin)
                    .args(["-t", table, "-D", chain])
                    .args(spec),
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
        run_cmd(Command::new(bin).args(["-t", table, "-F", chain]), None)?;
    }
    for chain in &existing {
        run_cmd(Command::new(bin).args(["-t", table, "-X", chain]), None)?;
    }
    Ok(())
}
