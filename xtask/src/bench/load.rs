//! Load generators (wrk, h2load), pinned to the client CPU, and parsing of what they print.

use std::path::Path;
use std::process::Command;

use crate::{bail, describe, Error, Result};

/// The CPU that the load generator and the upstream share.
pub const CLIENT_CPU: &str = "1";

/// What one load run measured.
#[derive(Clone, Debug, Default)]
pub struct Load {
    pub requests: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Non-2xx responses plus socket/stream errors.
    pub errors: u64,
}

/// How to generate load for a row.
#[derive(Clone, Copy, Debug)]
pub enum Tool {
    /// `wrk -t1 -c50 --latency`, optionally with `Connection: close`, optionally with a
    /// script that gives each request an `x-user` header out of 1,000 values.
    Wrk { close: bool, vary: bool },
    /// `h2load -c10 -m10`, h2c with prior knowledge.
    H2load,
}

/// The command line for a run of `secs` seconds against `url`.
pub fn command(tool: Tool, url: &str, secs: u64, scratch: &Path) -> Command {
    let mut cmd = crate::process::guarded("taskset");
    cmd.args(["-c", CLIENT_CPU]);
    match tool {
        Tool::Wrk { close, vary } => {
            cmd.args(["wrk", "-t1", "-c50", &format!("-d{secs}s"), "--latency"]);
            if close {
                cmd.args(["-H", "Connection: close"]);
            }
            if vary {
                cmd.arg("-s").arg(vary_script(scratch));
            }
        }
        Tool::H2load => {
            cmd.args(["h2load", "-c10", "-m10", "-D", &secs.to_string()]);
            cmd.arg(format!("--log-file={}", h2load_log(scratch).display()));
        }
    }
    cmd.arg(url);
    cmd
}

/// The command line as printed in reports (without the scratch log path).
pub fn display_command(tool: Tool, url: &str, secs: u64) -> String {
    match tool {
        Tool::Wrk {
            close: false,
            vary: false,
        } => {
            format!("wrk -t1 -c50 -d{secs}s --latency {url}")
        }
        Tool::Wrk { close: true, .. } => {
            format!("wrk -t1 -c50 -d{secs}s --latency -H 'Connection: close' {url}")
        }
        Tool::Wrk { vary: true, .. } => {
            format!("wrk -t1 -c50 -d{secs}s --latency -s $DIR/{VARY_LUA} {url}")
        }
        Tool::H2load => {
            format!("h2load -c10 -m10 -D {secs} --log-file=$DIR/h2load-requests.log {url}")
        }
    }
}

/// The wrk script of the hashing rows: request n carries `x-user: <n mod 1000>`.
const VARY_LUA: &str = "x-user.lua";

fn vary_script(scratch: &Path) -> std::path::PathBuf {
    let path = scratch.join(VARY_LUA);
    if !path.exists() {
        // Written once per run; a failure shows as wrk's own complaint about the file.
        let _ = std::fs::write(
            &path,
            "local n = 0\nrequest = function()\n  n = n + 1\n  \
             return wrk.format(nil, nil, { [\"x-user\"] = tostring(n % 1000) })\nend\n",
        );
    }
    path
}

fn h2load_log(scratch: &Path) -> std::path::PathBuf {
    scratch.join("h2load-requests.log")
}

/// Runs the load generator to completion and parses its report.
pub fn run(tool: Tool, url: &str, secs: u64, scratch: &Path) -> Result<Load> {
    let mut cmd = command(tool, url, secs, scratch);
    let out = cmd
        .output()
        .map_err(|e| Error(format!("cannot run {}: {e}", describe(&cmd))))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{stdout}{}",
            describe(&cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let parsed = match tool {
        Tool::Wrk { .. } => parse_wrk(&stdout),
        Tool::H2load => {
            let log = std::fs::read_to_string(h2load_log(scratch)).unwrap_or_default();
            let _ = std::fs::remove_file(h2load_log(scratch));
            parse_h2load(&stdout, &log)
        }
    };
    parsed.map_err(|e| Error(format!("{:?}; output of {}:\n{stdout}", e, describe(&cmd))))
}

/// wrk prints times as `658.00us`, `1.23ms`, `2.00s` or `1.00m`.
fn wrk_time_ms(s: &str) -> Result<f64> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        bail!("unknown time `{s}`")
    };
    Ok(num.parse::<f64>()? * scale)
}

pub fn parse_wrk(out: &str) -> Result<Load> {
    let mut load = Load::default();
    let (mut p50, mut p99, mut rps, mut reqs) = (None, None, None, None);
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("50%") {
            p50 = Some(wrk_time_ms(v)?);
        } else if let Some(v) = t.strip_prefix("99%") {
            p99 = Some(wrk_time_ms(v)?);
        } else if let Some(v) = t.strip_prefix("Requests/sec:") {
            rps = Some(v.trim().parse::<f64>()?);
        } else if t.contains(" requests in ") {
            reqs = t
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok());
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            load.errors += v.trim().parse::<u64>()?;
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in v.split(',') {
                if let Some(n) = part.split_whitespace().nth(1) {
                    load.errors += n.parse::<u64>()?;
                }
            }
        }
    }
    let (Some(p50), Some(p99), Some(rps), Some(reqs)) = (p50, p99, rps, reqs) else {
        bail!("cannot find latency percentiles, Requests/sec and request count in wrk's output");
    };
    load.p50_ms = p50;
    load.p99_ms = p99;
    load.rps = rps;
    load.requests = reqs;
    Ok(load)
}

/// h2load's summary has throughput and counts but only mean latency, so percentiles come
/// from its per-request log (`start µs`, `status`, `elapsed µs` per line).
pub fn parse_h2load(out: &str, log: &str) -> Result<Load> {
    let mut load = Load::default();
    let mut rps = None;
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("finished in ") {
            // "10.00s, 23000.00 req/s, 1.00MB/s"
            rps = v
                .split(',')
                .find_map(|p| p.trim().strip_suffix(" req/s"))
                .and_then(|n| n.trim().parse::<f64>().ok());
        } else if let Some(v) = t.strip_prefix("requests:") {
            // "N total, N started, N done, N succeeded, N failed, N errored, N timeout"
            for part in v.split(',') {
                let mut w = part.split_whitespace();
                let (Some(n), Some(what)) = (w.next(), w.next()) else {
                    continue;
                };
                let n: u64 = n.parse()?;
                match what {
                    "succeeded" => load.requests = n,
                    "failed" | "errored" | "timeout" => load.errors += n,
                    _ => {}
                }
            }
        }
    }
    let Some(rps) = rps else {
        bail!("cannot find `finished in …, N req/s` in h2load's output");
    };
    load.rps = rps;
    let mut lat: Vec<u64> = Vec::new();
    for line in log.lines() {
        let mut f = line.split('\t');
        let (Some(_start), Some(status), Some(us)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if !status.starts_with('2') {
            load.errors += 1;
        }
        if let Ok(us) = us.trim().parse() {
            lat.push(us);
        }
    }
    if lat.is_empty() {
        bail!("h2load's request log is empty");
    }
    lat.sort_unstable();
    load.p50_ms = percentile(&lat, 0.50) as f64 / 1000.0;
    load.p99_ms = percentile(&lat, 0.99) as f64 / 1000.0;
    Ok(load)
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk() {
        let out = "Running 10s test @ http://127.0.0.1:1/\n  1 threads and 50 connections\n  Latency Distribution\n     50%  658.00us\n     75%  800.00us\n     90%    1.00ms\n     99%    1.23ms\n  703456 requests in 10.00s, 100.00MB read\n  Non-2xx or 3xx responses: 5\n  Socket errors: connect 0, read 2, write 0, timeout 1\nRequests/sec:  70345.60\nTransfer/sec:     10.00MB\n";
        let l = parse_wrk(out).unwrap();
        assert_eq!(l.requests, 703456);
        assert!((l.p50_ms - 0.658).abs() < 1e-9);
        assert!((l.p99_ms - 1.23).abs() < 1e-9);
        assert!((l.rps - 70345.6).abs() < 1e-9);
        assert_eq!(l.errors, 8);
    }

    #[test]
    fn parses_h2load() {
        let out = "finished in 10.00s, 23000.50 req/s, 1.00MB/s\nrequests: 230005 total, 230005 started, 230005 done, 230004 succeeded, 1 failed, 0 errored, 0 timeout\n";
        let log = "1\t200\t100\n2\t200\t300\n3\t200\t200\n";
        let l = parse_h2load(out, log).unwrap();
        assert_eq!(l.requests, 230004);
        assert_eq!(l.errors, 1);
        assert!((l.rps - 23000.5).abs() < 1e-9);
        assert!((l.p50_ms - 0.2).abs() < 1e-9);
        assert!((l.p99_ms - 0.3).abs() < 1e-9);
    }
}
