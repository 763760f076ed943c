//! Medians, the markdown table, and BENCHMARKS.md.

use std::process::Command;

use super::{live, load, proxy_flags, sidecar, Row, Run, Sample, Target};
use crate::Result;

/// One line of progress for a sample.
pub fn sample_line(s: &Sample) -> String {
    let mut line = format!(
        "{:>9} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
        thousands(s.load.rps),
        s.load.p50_ms,
        s.load.p99_ms
    );
    if let (Some(cpu), Some(rss)) = (s.cpu_us_per_req, s.rss_kib) {
        line.push_str(&format!("  {cpu:5.1} µs/req  {:.1} MiB", mib(rss)));
    }
    if s.load.errors > 0 {
        line.push_str(&format!("  ({} errors)", s.load.errors));
    }
    line
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(super) fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Medians of one (row, target) cell.
#[derive(Default)]
struct Cell {
    n: usize,
    failed: usize,
    rps: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    rss_mib: Option<f64>,
    cpu: Option<f64>,
}

fn cell(run: &Run, row: Row, target: Target) -> Cell {
    let samples: Vec<&Sample> = run
        .results
        .iter()
        .filter(|(r, t, _)| *r == row && *t == target)
        .filter_map(|(_, _, s)| s.as_ref().ok())
        .collect();
    let failed = run
        .results
        .iter()
        .filter(|(r, t, s)| *r == row && *t == target && s.is_err())
        .count();
    let m =
        |f: &dyn Fn(&Sample) -> Option<f64>| median(samples.iter().filter_map(|s| f(s)).collect());
    Cell {
        n: samples.len(),
        failed,
        rps: m(&|s| Some(s.load.rps)),
        p50: m(&|s| Some(s.load.p50_ms)),
        p99: m(&|s| Some(s.load.p99_ms)),
        rss_mib: m(&|s| s.rss_kib.map(mib)),
        cpu: m(&|s| s.cpu_us_per_req),
    }
}

pub(super) fn fmt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{v:.prec$}"))
}

pub(super) fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "—".to_string(),
    }
}

/// The results as a markdown table (medians; ratios are skiff ÷ Envoy).
pub fn table(run: &Run) -> String {
    let mut t = String::from(
        "| row | target | req/s | p50 ms | p99 ms | proxy peak RSS MiB | proxy CPU µs/req | skiff/Envoy req/s | p99 | CPU/req | RSS |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for &row in &run.opts.rows {
        let envoy = cell(run, row, Target::Envoy);
        for target in [
            Target::Direct,
            Target::Skiff,
            Target::Baseline,
            Target::Envoy,
        ] {
            let c = cell(run, row, target);
            if target == Target::Baseline && c.n + c.failed == 0 {
                continue;
            }
            let rps = if c.n == 0 {
                if c.failed > 0 {
                    "failed".to_string()
                } else {
                    "not run".to_string()
                }
            } else if c.failed > 0 {
                format!("{} ({} failed)", thousands(c.rps.unwrap_or(0.0)), c.failed)
            } else {
                thousands(c.rps.unwrap_or(0.0))
            };
            let ratios = if target == Target::Skiff {
                format!(
                    "{} | {} | {} | {}",
                    ratio(c.rps, envoy.rps),
                    ratio(c.p99, envoy.p99),
                    ratio(c.cpu, envoy.cpu),
                    ratio(c.rss_mib, envoy.rss_mib)
                )
            } else {
                " | | | ".to_string()
            };
            t.push_str(&format!(
                "| {} | {} | {rps} | {} | {} | {} | {} | {ratios} |\n",
                row.title(),
                target.name(),
                fmt(c.p50, 2),
                fmt(c.p99, 2),
                fmt(c.rss_mib, 1),
                fmt(c.cpu, 1),
            ));
        }
    }
    t
}

/// The build under test against `--baseline`, row by row. Each rep measured the two one after
/// the other, so each rep gives a ratio of the same moment; the median of those ratios is
/// steadier than the ratio of the medians when the machine's speed drifts.
pub fn against_baseline(run: &Run) -> String {
    let mut t = String::from(
        "| row | skiff CPU µs/req | baseline CPU µs/req | skiff/baseline CPU/req (median of reps) | each rep | skiff/baseline req/s |\n\
         |---|---:|---:|---:|---|---:|\n",
    );
    for &row in &run.opts.rows {
        let of = |target: Target| -> Vec<Option<&Sample>> {
            run.results
                .iter()
                .filter(|(r, t, _)| *r == row && *t == target)
                .map(|(_, _, s)| s.as_ref().ok())
                .collect()
        };
        let pairs: Vec<(&Sample, &Sample)> = of(Target::Skiff)
            .into_iter()
            .zip(of(Target::Baseline))
            .filter_map(|(a, b)| Some((a?, b?)))
            .collect();
        let cpu: Vec<f64> = pairs
            .iter()
            .filter_map(|(a, b)| Some(a.cpu_us_per_req? / b.cpu_us_per_req.filter(|v| *v > 0.0)?))
            .collect();
        let rps: Vec<f64> = pairs
            .iter()
            .filter(|(_, b)| b.load.rps > 0.0)
            .map(|(a, b)| a.load.rps / b.load.rps)
            .collect();
        let each: Vec<String> = cpu.iter().map(|r| format!("{r:.3}")).collect();
        let (new, old) = (
            cell(run, row, Target::Skiff),
            cell(run, row, Target::Baseline),
        );
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            row.title(),
            fmt(new.cpu, 1),
            fmt(old.cpu, 1),
            fmt(median(cpu), 3),
            each.join(", "),
            fmt(median(rps), 3),
        ));
    }
    t
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

fn cpu_model() -> String {
    sh("lscpu", &[])
        .lines()
        .find_map(|l| l.strip_prefix("Model name:"))
        .map(|m| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".to_string())
}

/// The whole BENCHMARKS.md.
pub fn markdown(run: &Run, table: &str) -> Result<String> {
    let p = &run.ports;
    let date = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let commit = sh("git", &["rev-parse", "--short", "HEAD"]);
    let d = run.opts.duration;
    let mut loads = String::new();
    for &row in &run.opts.rows {
        for target in [Target::Direct, Target::Skiff] {
            let who = if target == Target::Direct {
                "direct"
            } else {
                "proxied"
            };
            loads.push_str(&format!(
                "taskset -c 1 {}    # {}, {who}\n",
                load::display_command(row.tool(), &row.url(target, p), d),
                row.title()
            ));
        }
    }
    let flags = proxy_flags().join(" ");
    let tuning: Vec<&str> = run.tuning.iter().map(|t| t.describe()).collect();
    let notes = if run.notes.is_empty() {
        String::new()
    } else {
        let mut s = String::from("\nNotes from this run:\n\n");
        for n in &run.notes {
            s.push_str(&format!("- {n}\n"));
        }
        s
    };
    Ok(format!(
        r#"# Benchmarks

skiff against Envoy {envoy} and against no proxy at all ("direct"), measured with
`cargo xtask bench`. Rerun with `cargo xtask bench --write` to refresh this file;
`cargo xtask bench --duration 3 --reps 1` is a quick check.

Measured {date} (commit {commit}) on {nproc} CPUs ({model}), Linux {kernel}.
{reps} of {d} s each; the peers alternate within each repetition (direct, skiff, Envoy,
then again).

{table}{notes}{sidecar}{live}
How to read it:

- **req/s, p50, p99** come from the load generator; p50/p99 for HTTP/2 come from h2load's
  per-request log.
- **proxy peak RSS** is `VmHWM` from `/proc/PID/status` of a proxy started fresh for that
  measurement, read at the end of it.
- **proxy CPU µs/req** is the proxy's utime+stime (`/proc/PID/stat`) over the measured run
  divided by the requests completed. On a shared 2-core machine this is the steadiest figure;
  req/s varies 8–30 % from run to run.
- The ratio columns are skiff ÷ Envoy: above 1 is better for req/s, below 1 is better for
  p99, CPU/req and RSS.

## Method

- skiff is the build `cargo xtask build` makes: the release profile, optimized with a profile
  of these loads (`--skiff PATH` measures another binary).
- The proxy runs alone on CPU 0 with one worker (`--concurrency 1`); nginx (one process) and
  the load generator share CPU 1. The direct rows use the same layout without the proxy, so
  they are the ceiling for the proxied rows.
- Each measurement starts a fresh proxy, waits for `GET /ready`, runs a 1 s warm-up with the
  same load, then measures. The proxy is stopped with `POST /quitquitquit`.
- A sample during which other processes used more than {noise:.0} % of a core (busy time in
  `/proc/stat` minus that of the proxy, nginx and the load generator) is taken again, up to
  {retries} times; one still noisy after that is kept and listed in the notes.
- Both proxies run the same bootstrap (below): one HTTP listener to an HTTP/1.1 cluster, one
  HTTP listener to an HTTP/2 (h2c) cluster, one `tcp_proxy` listener, tuned as the method
  asks for Envoy: {tuning}.

Commands (ports are picked free on each run, these are the ones of this run; `$DIR` is the
run's temporary directory):

```sh
{invocation}
# which runs:
taskset -c 1 nginx -p $DIR -e $DIR/nginx-error.log -c $DIR/nginx.conf
taskset -c 0 target/pgo/skiff -c bench.yaml {flags}
taskset -c 0 .venv/bin/envoy -c bench.yaml {flags}
{loads}```

Upstream: nginx with `return 200 "ok"` on :{h1}, a 65,536-byte file at `/64k`, h2c
(prior knowledge, `listen … http2`) on :{h2}, and `return 200 "alt"` on :{alt} (the other
cluster of the live-configuration rows); the "ok" and "alt" servers also listen on 127.0.0.2
to 127.0.0.10 (the ten endpoints of one cluster in the `xds-scale` row).

<details><summary>bench.yaml (the config both proxies ran)</summary>

```yaml
{yaml}```

</details>
"#,
        envoy = run.envoy_version,
        sidecar = run
            .sidecar
            .as_ref()
            .map_or_else(String::new, |r| sidecar_section(r, d)),
        live = run
            .live
            .as_ref()
            .map_or_else(String::new, |r| live::section(r, run.opts.reps)),
        noise = super::NOISE_LIMIT * 100.0,
        retries = super::NOISE_RETRIES,
        invocation = {
            let args: Vec<String> = std::env::args().skip(1).collect();
            format!("cargo xtask {}", args.join(" "))
        },
        nproc = sh("nproc", &[]),
        model = cpu_model(),
        kernel = sh("uname", &["-r"]),
        reps = match run.opts.reps {
            1 => "One repetition".to_string(),
            n => format!("Medians of {n} repetitions"),
        },
        tuning = if tuning.is_empty() {
            "none (see notes)".to_string()
        } else {
            tuning.join(", ")
        },
        h1 = p.nginx_h1,
        h2 = p.nginx_h2,
        alt = p.nginx_alt,
        yaml = run.yaml,
    ))
}

/// The sidecar-hop section of BENCHMARKS.md.
fn sidecar_section(r: &sidecar::Results, secs: u64) -> String {
    let mut cmp = String::new();
    for c in sidecar::comparisons(r) {
        cmp.push_str(&format!("- {c}\n"));
    }
    let mut notes = String::new();
    for n in &r.notes {
        notes.push_str(&format!("- {n}\n"));
    }
    format!(
        r#"
## The sidecar hop: eBPF redirect, sk_msg and iptables

An application in a pod (a network namespace with its own cgroup) calls an upstream on a
remote host (another namespace, over a veth pair); its connects are captured and go through
the proxy in the pod, which recovers the original destination (`original_dst` listener filter,
`ORIGINAL_DST` cluster) and forwards. Same run, same layout as above: the proxy on CPU 0 as uid
1337 with one worker; wrk (in the pod) and nginx (on the remote host) on CPU 1. "direct" is the
application talking to the upstream with nothing captured and no proxy. The capture mechanisms
take turns; within each, skiff and Envoy alternate on the same config.

{table}
Each mechanism against the eBPF redirect, for the same proxy (above 1 is better for req/s,
below 1 for latency and CPU):

{cmp}{notes}
```sh
{commands}```

<details><summary>sidecar.yaml (the config both proxies ran)</summary>

```yaml
{yaml}```

</details>
"#,
        table = sidecar::table(r),
        commands = sidecar::commands(secs),
        yaml = r.yaml,
    )
}
