//! Applying and removing the rules with the system's iptables. Applying first removes what an
//! earlier run left, then loads the plan atomically per family with `iptables-restore
//! --noflush`, so running twice changes nothing; clean-up removes only skiff's chains and the
//! rules that jump to them (and the interface exemptions the same flags add), leaving every
//! other rule as it was.

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::{plan, Args, Config, FlagError};

/// The chains skiff creates in the nat table.
const CHAINS: [&str; 4] = [
    "ISTIO_INBOUND",
    "ISTIO_REDIRECT",
    "ISTIO_IN_REDIRECT",
    "ISTIO_OUTPUT",
];

/// Why `skiff iptables` failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A flag is wrong; nothing was changed.
    #[error(transparent)]
    Flag(#[from] FlagError),
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
    let families: &[&str] = if config.ipv6 {
        &["iptables", "ip6tables"]
    } else {
        &["iptables"]
    };
    if args.cleanup_only {
        if config.dry_run {
            return Ok(
                "# would remove skiff's nat chains and the rules that jump to them\n".into(),
            );
        }
        for bin in families {
            cleanup(bin, &config)?;
        }
        return Ok(String::new());
    }
    let plan = plan(&config);
    if config.dry_run {
        return Ok(plan.to_string());
    }
    let inputs = [Some(&plan.ipv4), plan.ipv6.as_ref()];
    for (bin, input) in families.iter().zip(inputs) {
        cleanup(bin, &config)?;
        if let Some(input) = input {
            run_cmd(
                Command::new(format!("{bin}-restore")).arg("--noflush"),
                Some(input),
            )?;
        }
    }
    Ok(String::new())
}

/// Removes skiff's rules from one family's nat table.
fn cleanup(bin: &str, c: &Config) -> Result<(), ApplyError> {
    let listing = run_cmd(Command::new(bin).args(["-t", "nat", "-S"]), None)?;
    for line in listing.lines() {
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        let Some((chain, spec)) = rule.split_once(' ') else {
            continue;
        };
        if chain != "PREROUTING" && chain != "OUTPUT" {
            continue;
        }
        let exemption =
            |n: &String| spec == format!("-i {n} -j RETURN") || spec == format!("-o {n} -j RETURN");
        let ours = spec
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| w[0] == "-j" && CHAINS.contains(&w[1]))
            || c.exclude_interfaces.iter().any(exemption)
            || c.virt_interfaces.iter().any(exemption);
        if ours {
            run_cmd(
                Command::new(bin)
                    .args(["-t", "nat", "-D", chain])
                    .args(spec.split_whitespace()),
                None,
            )?;
        }
    }
    let existing: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.strip_prefix("-N "))
        .collect();
    for chain in CHAINS.iter().filter(|c| existing.contains(c)) {
        run_cmd(Command::new(bin).args(["-t", "nat", "-F", chain]), None)?;
    }
    for chain in CHAINS.iter().filter(|c| existing.contains(c)) {
        run_cmd(Command::new(bin).args(["-t", "nat", "-X", chain]), None)?;
    }
    Ok(())
}
