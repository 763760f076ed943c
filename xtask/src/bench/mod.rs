//! `cargo xtask bench`: direct vs skiff vs Envoy 1.40 on the same config, same layout.
//!
//! Layout (see BENCHMARKS.md): the proxy alone on CPU 0 with one worker; nginx (one process)
//! and the load generator together on CPU 1. Each measurement starts a fresh proxy, warms it
//! up for a second, then measures; peers alternate within each repetition.

mod config;
mod live;
mod load;
mod report;
mod sidecar;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{self, free_ports, tail, which, Proc, TempDir};
use crate::{bail, envoy_bin, http, Error, Result};
use config::{Ports, Tuning};
use load::{Load, Tool};

/// The CPU the proxy runs on.
const PROXY_CPU: &str = "0";

/// One row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Row {
    H1,
    H1Big,
    H2,
    Close,
    Tcp,
    LeastRequest,
    RingHash,
    Routes,
}

impl Row {
    pub const ALL: [Row; 8] = [
        Row::H1,
        Row::H1Big,
        Row::H2,
        Row::Close,
        Row::Tcp,
        Row::LeastRequest,
        Row::RingHash,
        Row::Routes,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Row::H1 => "h1",
            Row::H1Big => "h1-64k",
            Row::H2 => "h2",
            Row::Close => "close",
            Row::Tcp => "tcp",
            Row::LeastRequest => "lr10",
            Row::RingHash => "ring10",
            Row::Routes => "routes10k",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Row::H1 => "HTTP/1.1 keep-alive, 2-byte body",
            Row::H1Big => "HTTP/1.1 keep-alive, 64 KiB body",
            Row::H2 => "HTTP/2 h2c, 10 conns × 10 streams",
            Row::Close => "HTTP/1.1 new connection per request",
            Row::Tcp => "TCP proxy, HTTP/1.1 2-byte body through it",
            Row::LeastRequest => "HTTP/1.1 keep-alive, LEAST_REQUEST over 10 endpoints",
            Row::RingHash => "HTTP/1.1 keep-alive, RING_HASH on a header over 10 endpoints",
            Row::Routes => {
                "HTTP/1.1 keep-alive, 10,000 routes in 1,000 virtual hosts (last host, last route)"
            }
        }
    }

    fn tool(self) -> Tool {
        match self {
            Row::H2 => Tool::H2load,
            Row::Close => Tool::Wrk {
                close: true,
                vary: false,
            },
            Row::RingHash => Tool::Wrk {
                close: false,
                vary: true,
            },
            _ => Tool::Wrk {
                close: false,
                vary: false,
            },
        }
    }

    /// The URL the load generator hits for this row and target.
    fn url(self, target: Target, p: &Ports) -> String {
        let path = if self == Row::H1Big { "/64k" } else { "/" };
        let port = match (target, self) {
            (Target::Direct, Row::H2) => p.nginx_h2,
            (Target::Direct, _) => p.nginx_h1,
            (_, Row::H2) => p.h2,
            (_, Row::Tcp) => p.tcp,
            (_, Row::LeastRequest) => p.least_request,
            (_, Row::RingHash) => p.ring_hash,
            (_, _) => p.http,
        };
        format!("http://127.0.0.1:{port}{path}")
    }
}

/// Who carries the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Direct,
    Skiff,
    /// Another skiff binary (`--baseline`), measured beside the one under test.
    Baseline,
    Envoy,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Skiff => "skiff",
            Target::Baseline => "baseline",
            Target::Envoy => "Envoy 1.40",
        }
    }
}

/// One measurement.
#[derive(Clone, Debug)]
pub struct Sample {
    pub load: Load,
    pub rss_kib: Option<u64>,
    pub cpu_us_per_req: Option<f64>,
    /// CPU used during the run by processes other than the proxy, nginx, the load generator
    /// and this task, as a share of one core.
    pub other_cpu: f64,
}

/// Above this share of a core used by others, a sample is taken again.
const NOISE_LIMIT: f64 = 0.10;
/// How often a noisy sample is taken again before it is kept with a note.
const NOISE_RETRIES: usize = 2;

/// Everything measured, in order, plus what the report needs to explain it.
pub struct Run {
    pub opts: Options,
    pub ports: Ports,
    pub tuning: Vec<Tuning>,
    pub yaml: String,
    pub envoy_version: String,
    pub results: Vec<(Row, Target, std::result::Result<Sample, String>)>,
    pub nginx_pid: u32,
    pub notes: Vec<String>,
    /// The sidecar rows, when they ran.
    pub sidecar: Option<sidecar::Results>,
    /// The live-configuration rows, when they ran.
    pub live: Option<live::Results>,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub reps: usize,
    pub duration: u64,
    pub rows: Vec<Row>,
    /// The sidecar rows (they need root: by default only when running as root).
    pub sidecar: Vec<sidecar::Row>,
    /// The live-configuration rows (route change → traffic; 1,000 clusters and routes from
    /// files; 5,000 clusters and routes over ADS).
    pub live: Vec<live::Row>,
    pub skiff: Option<PathBuf>,
    /// A second skiff binary, measured right after the first in every rep.
    pub baseline: Option<PathBuf>,
    pub no_skiff: bool,
    pub write: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        reps: 3,
        duration: 10,
        rows: Row::ALL.to_vec(),
        sidecar: if process::is_root() {
            sidecar::Row::ALL.to_vec()
        } else {
            Vec::new()
        },
        live: live::Row::ALL.to_vec(),
        skiff: None,
        baseline: None,
        no_skiff: false,
        write: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| Error(format!("{name} needs a value")))
        };
        match a.as_str() {
            "--reps" => o.reps = value("--reps")?.parse()?,
            "--duration" => o.duration = value("--duration")?.parse()?,
            "--skiff" => o.skiff = Some(PathBuf::from(value("--skiff")?)),
            "--baseline" => o.baseline = Some(PathBuf::from(value("--baseline")?)),
            "--write" => o.write = true,
            "--no-skiff" => o.no_skiff = true,
            "--rows" => {
                let list = value("--rows")?;
                o.rows.clear();
                o.sidecar.clear();
                o.live.clear();
                for id in list.split(',').map(str::trim) {
                    if let Some(r) = Row::ALL.into_iter().find(|r| r.id() == id) {
                        o.rows.push(r);
                    } else if let Some(r) = sidecar::Row::ALL.into_iter().find(|r| r.id() == id) {
                        o.sidecar.push(r);
                    } else if let Some(r) = live::Row::ALL.into_iter().find(|r| r.id() == id) {
                        o.live.push(r);
                    } else {
                        let ids: Vec<&str> = Row::ALL
                            .iter()
                            .map(|r| r.id())
                            .chain(sidecar::Row::ALL.iter().map(|r| r.id()))
                            .chain(live::Row::ALL.iter().map(|r| r.id()))
                            .collect();
                        bail!("unknown row `{id}` (rows: {})", ids.join(","));
                    }
                }
            }
            other => bail!("unknown bench option `{other}` (see cargo xtask help)"),
        }
    }
    if o.reps == 0 || o.duration == 0 {
        bail!("--reps and --duration must be at least 1");
    }
    if !o.sidecar.is_empty() && !process::is_root() {
        bail!("the sidecar rows need root (network namespaces, cgroups, eBPF, iptables)");
    }
    if o.baseline.is_some() && o.no_skiff {
        bail!("--baseline compares two skiff binaries: leave out --no-skiff");
    }
    if let Some(b) = o.baseline.as_ref().filter(|b| !b.is_file()) {
        bail!("--baseline {}: no such file", b.display());
    }
    if o.baseline.is_some() && (o.write || o.rows.is_empty()) {
        bail!("--baseline compares two builds on the proxy rows: choose some with --rows, without --write");
    }
    if !o.sidecar.is_empty() && o.no_skiff {
        bail!("the sidecar rows need skiff: leave out --no-skiff or choose other --rows");
    }
    Ok(o)
}

pub fn run(args: &[String]) -> Result {
    let opts = parse(args)?;
    for tool in ["wrk", "h2load", "nginx", "taskset", "curl"] {
        if which(tool).is_none() {
            bail!("`{tool}` is missing: run `cargo xtask setup`");
        }
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        bail!("the benchmark layout needs two CPUs (proxy on 0, client and upstream on 1)");
    }
    let envoy = envoy_bin();
    let envoy_version = envoy_version(&envoy)?;
    let skiff_bin = match &opts.skiff {
        _ if opts.no_skiff => None,
        Some(p) => Some(p.clone()),
        None => Some(crate::pgo::build()?),
    };

    let tmp = TempDir::new("skiff-bench")?;
    let ports = pick_ports()?;
    let nginx = start_nginx(&ports, tmp.path())?;
    // Run a copy, so a rebuild during the run cannot change the binary under measurement.
    let skiff_bin = match skiff_bin {
        Some(src) => {
            let copy = tmp.path().join("skiff");
            std::fs::copy(&src, &copy)
                .map_err(|e| Error(format!("cannot copy {}: {e}", src.display())))?;
            Some(copy)
        }
        None => None,
    };

    // The xDS control plane of the `xds-scale` row, copied for the same reason.
    let control_plane = if opts.live.contains(&live::Row::XdsScale) {
        let src = build_control_plane()?;
        let copy = tmp.path().join("xds-control-plane");
        std::fs::copy(&src, &copy)
            .map_err(|e| Error(format!("cannot copy {}: {e}", src.display())))?;
        Some(copy)
    } else {
        None
    };

    let mut notes = Vec::new();
    let cfg = tmp.path().join("bench.yaml");
    let (tuning, skiff_ok) = choose_tuning(
        &cfg,
        &ports,
        &opts.rows,
        &envoy,
        skiff_bin.as_deref(),
        opts.baseline.as_deref(),
        &mut notes,
    )?;
    if opts.no_skiff {
        notes.push("skiff was not measured (--no-skiff)".to_string());
    }
    let yaml = std::fs::read_to_string(&cfg)?;
    // The route-table row runs its own bootstrap: the same with a large table.
    let routes_cfg = tmp.path().join("bench-routes.yaml");
    std::fs::write(
        &routes_cfg,
        config::proxy_yaml_routes(&ports, &tuning, &opts.rows),
    )?;
    if let Some(base) = opts.baseline.as_deref() {
        if opts.rows.contains(&Row::Routes) && skiff_ok {
            if let Some(err) = validate(base, &routes_cfg)? {
                bail!(
                    "the baseline rejects the route-table row's config: {}",
                    last_lines(&err)
                );
            }
        }
    }

    let mut bench = Run {
        opts: opts.clone(),
        ports,
        tuning,
        yaml,
        envoy_version,
        results: Vec::new(),
        nginx_pid: nginx.pid(),
        notes,
        sidecar: None,
        live: None,
    };
    if opts.sidecar.is_empty() && !process::is_root() {
        bench
            .notes
            .push("the sidecar rows were not measured: they need root".to_string());
    }
    // A baseline runs right after the build under test, so that each pair shares the
    // machine's state of the moment.
    let targets: &[Target] = if opts.baseline.is_some() {
        &[
            Target::Direct,
            Target::Skiff,
            Target::Baseline,
            Target::Envoy,
        ]
    } else {
        &[Target::Direct, Target::Skiff, Target::Envoy]
    };
    if !opts.rows.is_empty() {
        eprintln!(
            "bench: {} rows × {} targets × {} reps, {} s each (+1 s warm-up)",
            opts.rows.len(),
            targets.len(),
            opts.reps,
            opts.duration
        );
    }
    for rep in 1..=opts.reps {
        for &row in &opts.rows {
            for &target in targets {
                let bin = match target {
                    Target::Direct => None,
                    Target::Skiff | Target::Baseline if !skiff_ok => continue,
                    Target::Skiff => skiff_bin.as_deref(),
                    Target::Baseline => opts.baseline.as_deref(),
                    Target::Envoy => Some(envoy.as_path()),
                };
                let label = format!(
                    "[{rep}/{}] {:<7} {:<10}",
                    opts.reps,
                    row.id(),
                    target.name()
                );
                let row_cfg = if row == Row::Routes {
                    &routes_cfg
                } else {
                    &cfg
                };
                let r = measure(row, target, bin, row_cfg, &mut bench, tmp.path(), rep);
                match &r {
                    Ok(s) => eprintln!("{label} {}", report::sample_line(s)),
                    Err(e) => eprintln!("{label} FAILED: {e:?}"),
                }
                bench.results.push((row, target, r.map_err(|e| e.0)));
            }
        }
    }

    if !opts.live.is_empty() {
        eprintln!(
            "bench: live configuration, {} rows × {} proxies × {} reps",
            opts.live.len(),
            if skiff_bin.is_some() { 2 } else { 1 },
            opts.reps
        );
        let r = live::run(
            &opts.live,
            opts.reps,
            skiff_bin.as_deref(),
            &envoy,
            control_plane.as_deref(),
            &ports,
            tmp.path(),
        )?;
        bench.live = Some(r);
    }

    if !opts.sidecar.is_empty() {
        eprintln!(
            "bench: sidecar hop, {} rows × 7 paths × {} reps, {} s each (+1 s warm-up)",
            opts.sidecar.len(),
            opts.reps,
            opts.duration
        );
        let r = sidecar::run(
            &opts.sidecar,
            opts.reps,
            opts.duration,
            skiff_bin.as_deref(),
            &envoy,
            tmp.path(),
        )?;
        bench.sidecar = Some(r);
    }

    let table = report::table(&bench);
    if !opts.rows.is_empty() {
        println!("\n{table}");
        if opts.baseline.is_some() {
            println!("\n{}", report::against_baseline(&bench));
        }
    }
    if let Some(r) = &bench.live {
        println!("\n{}", live::table(r));
        for n in &r.notes {
            println!("- {n}");
        }
    }
    if let Some(r) = &bench.sidecar {
        println!("\n{}", sidecar::table(r));
        for c in sidecar::comparisons(r) {
            println!("- {c}");
        }
    }
    for n in &bench.notes {
        println!("- {n}");
    }
    let failures = bench.results.iter().filter(|r| r.2.is_err()).count()
        + bench
            .sidecar
            .as_ref()
            .map_or(0, |r| r.samples.iter().filter(|s| s.3.is_err()).count())
        + bench.live.as_ref().map_or(0, |r| r.failures());
    if opts.write {
        let path = crate::repo_root().join("BENCHMARKS.md");
        std::fs::write(&path, report::markdown(&bench, &table)?)?;
        println!("\nwrote {}", path.display());
    }
    if !skiff_ok && !opts.no_skiff {
        bail!("skiff could not run the benchmark configuration (see the notes above)");
    }
    if failures > 0 {
        bail!("{failures} measurement(s) failed (see above)");
    }
    Ok(())
}

/// Runs `bin` through the ordinary rows' loads, a few seconds each, each time stopping it with
/// `/quitquitquit` so that it exits by itself: the training of a profile-guided build
/// (`crate::pgo`), whose instrumented binary writes its counters on exit.
pub fn train(bin: &Path) -> Result {
    crate::setup::require(&["wrk", "h2load", "nginx", "taskset", "curl"])?;
    let mut opts = parse(&[])?;
    opts.rows = vec![Row::Close, Row::H1, Row::H1Big, Row::H2, Row::Tcp];
    opts.duration = 3;
    let tmp = TempDir::new("skiff-pgo-train")?;
    let ports = pick_ports()?;
    let nginx = start_nginx(&ports, tmp.path())?;
    let tuning = Tuning::ALL.to_vec();
    let yaml = config::proxy_yaml(&ports, &tuning, &opts.rows);
    let cfg = tmp.path().join("train.yaml");
    std::fs::write(&cfg, &yaml)?;
    if let Some(err) = validate(bin, &cfg)? {
        bail!(
            "{} rejects the training config: {}",
            bin.display(),
            last_lines(&err)
        );
    }
    let rows = opts.rows.clone();
    let run = Run {
        opts,
        ports,
        tuning,
        yaml,
        envoy_version: String::new(),
        results: Vec::new(),
        nginx_pid: nginx.pid(),
        notes: Vec::new(),
        sidecar: None,
        live: None,
    };
    for row in rows {
        let s = measure_once(row, Target::Skiff, Some(bin), &cfg, &run, tmp.path(), 1)?;
        eprintln!("  {:<7} {}", row.id(), report::sample_line(&s));
    }
    Ok(())
}

/// Builds the project's xDS control plane (`tests/src/bin/xds-control-plane.rs`, the debug
/// build the tests use) and returns its path.
fn build_control_plane() -> Result<PathBuf> {
    let mut cmd = crate::cargo();
    cmd.args(["build", "-p", "skiff-tests", "--bin", "xds-control-plane"]);
    crate::run_status(&mut cmd)?;
    let bin = crate::target_dir().join("debug").join("xds-control-plane");
    if !bin.is_file() {
        bail!("the build succeeded but {} does not exist", bin.display());
    }
    Ok(bin)
}

fn envoy_version(envoy: &Path) -> Result<String> {
    let out = Command::new(envoy).arg("--version").output().map_err(|e| {
        Error(format!(
            "cannot run {}: {e} (run `cargo xtask setup`)",
            envoy.display()
        ))
    })?;
    let v = String::from_utf8_lossy(&out.stdout);
    let Some(ver) = crate::setup::envoy_release(&v).filter(|s| s.starts_with("1.40.")) else {
        bail!("{} is not Envoy 1.40: {}", envoy.display(), v.trim());
    };
    Ok(ver.to_string())
}

/// Ports for nginx, the proxies and their admin, free at the time of the call.
fn pick_ports() -> Result<Ports> {
    let [nginx_h1, nginx_h2, nginx_alt, admin, http, h2, tcp, least_request, ring_hash] =
        free_ports()?;
    Ok(Ports {
        least_request,
        ring_hash,
        nginx_h1,
        nginx_h2,
        nginx_alt,
        admin,
        http,
        h2,
        tcp,
    })
}

fn start_nginx(p: &Ports, dir: &Path) -> Result<Proc> {
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::write(dir.join("www/64k"), vec![b'x'; 65_536])?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config::nginx_conf(p, dir))?;
    let nginx = which("nginx").unwrap_or_else(|| PathBuf::from("nginx"));
    let mut cmd = process::guarded("taskset");
    cmd.args(["-c", load::CLIENT_CPU])
        .arg(nginx)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("nginx-error.log"))
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut proc = Proc::spawn("nginx", &mut cmd)?;
    for port in [p.nginx_h1, p.nginx_h2, p.nginx_alt] {
        wait_port(port, &mut proc, Duration::from_secs(10))
            .map_err(|e| Error(format!("{e:?}\n{}", tail(&dir.join("nginx-error.log"), 10))))?;
    }
    Ok(proc)
}

fn wait_port(port: u16, proc: &mut Proc, timeout: Duration) -> Result {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        proc.check_running()?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{} is not listening on {addr}", proc.name())
}

/// `--mode validate`; returns the proxy's complaint if it rejects the file.
fn validate(bin: &Path, cfg: &Path) -> Result<Option<String>> {
    let out = Command::new(bin)
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(cfg)
        .output()
        .map_err(|e| Error(format!("cannot run {}: {e}", bin.display())))?;
    if out.status.success() {
        return Ok(None);
    }
    Ok(Some(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )))
}

/// The end of a proxy's complaint, on one line.
fn last_lines(err: &str) -> String {
    err.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
}

/// Writes the config with as much of the tuning as every proxy accepts (Envoy, skiff and the
/// `--baseline` build). Returns the tuning kept and whether skiff accepts the result.
fn choose_tuning(
    cfg: &Path,
    ports: &Ports,
    rows: &[Row],
    envoy: &Path,
    skiff: Option<&Path>,
    baseline: Option<&Path>,
    notes: &mut Vec<String>,
) -> Result<(Vec<Tuning>, bool)> {
    let mut tuning = Tuning::ALL.to_vec();
    'tune: loop {
        std::fs::write(cfg, config::proxy_yaml(ports, &tuning, rows))?;
        if let Some(err) = validate(envoy, cfg)? {
            bail!("Envoy rejects the benchmark config:\n{err}");
        }
        let Some(skiff) = skiff else {
            return Ok((tuning, false));
        };
        let builds = std::iter::once((false, skiff)).chain(baseline.map(|b| (true, b)));
        for (is_baseline, bin) in builds {
            let Some(err) = validate(bin, cfg)? else {
                continue;
            };
            let Some(pos) = tuning.iter().position(|t| err.contains(t.field())) else {
                if is_baseline {
                    bail!(
                        "the baseline rejects the benchmark config: {}\n\
                         (leave out the rows whose features it lacks)",
                        last_lines(&err)
                    );
                }
                notes.push(format!(
                    "skiff rejects the benchmark config, so it was not measured: {}",
                    last_lines(&err)
                ));
                return Ok((tuning, false));
            };
            let dropped = tuning.remove(pos);
            notes.push(format!(
                "{} rejects `{}`, so it was dropped from the config for every proxy",
                if is_baseline { "the baseline" } else { "skiff" },
                dropped.field()
            ));
            continue 'tune;
        }
        return Ok((tuning, true));
    }
}

/// Busy time (user + nice + system) of all CPUs together from /proc/stat, in µs.
/// Interrupt time is left out: it is the network traffic itself, not another process.
fn cpu_busy_us() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let ticks = f.first()? + f.get(1)? + f.get(2)?;
    Some(process::ticks_to_us(ticks))
}

/// CPU time of everything this benchmark runs: the proxy, nginx, and this task with its
/// reaped children (the load generators), in µs.
fn own_cpu_us(proxy: Option<u32>, nginx: u32) -> Option<u64> {
    let proxy = proxy.map_or(Some(0), |p| process::cpu_time_us(p).ok())?;
    Some(proxy + process::cpu_time_us(nginx).ok()? + process::self_and_children_cpu_us().ok()?)
}

/// Measures once, again if something else used the proxy's CPU meanwhile (the method says to
/// discard such samples); a sample still noisy after the retries is kept with a note.
fn measure(
    row: Row,
    target: Target,
    bin: Option<&Path>,
    cfg: &Path,
    bench: &mut Run,
    scratch: &Path,
    rep: usize,
) -> Result<Sample> {
    let mut tries = 0;
    loop {
        let s = measure_once(row, target, bin, cfg, bench, scratch, rep)?;
        if s.other_cpu <= NOISE_LIMIT {
            return Ok(s);
        }
        let what = format!(
            "rep {rep}, {} via {}: other processes used {:.0}% of a core during the run",
            row.id(),
            target.name(),
            s.other_cpu * 100.0
        );
        if tries == NOISE_RETRIES {
            eprintln!("  note: {what}; kept after {tries} retries");
            bench
                .notes
                .push(format!("{what} (kept after {tries} retries)"));
            return Ok(s);
        }
        eprintln!("  note: {what}; measuring again");
        // Give whatever it was a moment to finish.
        std::thread::sleep(Duration::from_secs(3));
        tries += 1;
    }
}

fn measure_once(
    row: Row,
    target: Target,
    bin: Option<&Path>,
    cfg: &Path,
    bench: &Run,
    scratch: &Path,
    rep: usize,
) -> Result<Sample> {
    let url = row.url(target, &bench.ports);
    let mut proxy = match bin {
        None => None,
        Some(bin) => Some(start_proxy(target, bin, cfg, bench, scratch, rep, row)?),
    };
    let result = (|| {
        // Warm-up: connections, pools and caches, and a check that the path works at all.
        let warm = load::run(row.tool(), &url, 1, scratch)?;
        if warm.requests == 0 || warm.errors > 0 {
            bail!(
                "warm-up through {url}: {} requests, {} errors",
                warm.requests,
                warm.errors
            );
        }
        let pid = proxy.as_ref().map(|p| p.0.pid());
        let cpu0 = pid.map(process::cpu_time_us).transpose()?;
        let busy0 = cpu_busy_us();
        let own0 = own_cpu_us(pid, bench.nginx_pid);
        let started = Instant::now();
        let l = load::run(row.tool(), &url, bench.opts.duration, scratch)?;
        let wall = started.elapsed();
        let cpu1 = pid.map(process::cpu_time_us).transpose()?;
        let busy1 = cpu_busy_us();
        let own1 = own_cpu_us(pid, bench.nginx_pid);
        let rss_kib = pid.map(process::peak_rss_kib).transpose()?;
        let proxy_us = match (cpu0, cpu1) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        let other_cpu = match (busy0, busy1, own0, own1) {
            (Some(b0), Some(b1), Some(o0), Some(o1)) => {
                let other = b1.saturating_sub(b0).saturating_sub(o1.saturating_sub(o0));
                other as f64 / wall.as_micros().max(1) as f64
            }
            _ => 0.0,
        };
        if l.requests == 0 {
            bail!("no requests completed through {url}");
        }
        Ok(Sample {
            cpu_us_per_req: proxy_us.map(|us| us as f64 / l.requests as f64),
            rss_kib,
            load: l,
            other_cpu,
        })
    })();
    if let Some((mut p, log)) = proxy.take() {
        let admin = SocketAddr::from(([127, 0, 0, 1], bench.ports.admin));
        let crashed = p.exited();
        let stop = http::quit(admin, &mut p, Duration::from_secs(10));
        if let Some(st) = crashed {
            bail!(
                "{} exited during the run ({st}):\n{}",
                p.name(),
                tail(&log, 15)
            );
        }
        if let Err(e) = stop {
            eprintln!("  note: {e:?}");
        }
        if result.is_err() {
            eprintln!("  {} log:\n{}", p.name(), tail(&log, 10));
        }
    }
    result
}

fn start_proxy(
    target: Target,
    bin: &Path,
    cfg: &Path,
    bench: &Run,
    scratch: &Path,
    rep: usize,
    row: Row,
) -> Result<(Proc, PathBuf)> {
    let name = match target {
        Target::Skiff => "skiff",
        Target::Baseline => "baseline",
        _ => "envoy",
    };
    let log = scratch.join(format!("{name}-{}-{rep}.log", row.id()));
    let mut cmd = process::guarded("taskset");
    cmd.args(["-c", PROXY_CPU])
        .arg(bin)
        .arg("-c")
        .arg(cfg)
        .args(proxy_flags())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    let mut p = Proc::spawn(name, &mut cmd)?;
    let admin = SocketAddr::from(([127, 0, 0, 1], bench.ports.admin));
    if let Err(e) = http::wait_ready(admin, &mut p, Duration::from_secs(30)) {
        bail!("{e:?}\n{}", tail(&log, 15));
    }
    Ok((p, log))
}

/// The flags both proxies run with.
pub fn proxy_flags() -> [&'static str; 5] {
    ["--concurrency", "1", "--disable-hot-restart", "-l", "error"]
}
