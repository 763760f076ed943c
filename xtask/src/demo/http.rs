//! `cargo xtask demo --http`: skiff on `examples/demo.yaml` in front of a built-in echo
//! upstream on loopback, a few requests through it with curl (HTTP/1.1, h2c, the TCP proxy),
//! then the admin stats. Needs no root.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::http::{self, request};
use crate::process::{tail, Proc};
use crate::upstream::Upstream;
use crate::{bail, Result};

/// The demo configuration, embedded so the demo needs no files at run time.
pub const DEMO_YAML: &str = include_str!("../../../examples/demo.yaml");

/// The ports in `examples/demo.yaml`: admin, HTTP listener, TCP listener, upstream.
const PORTS: [u16; 4] = [9901, 10000, 10001, 18080];

/// The demo's addresses, shifted by `--port-offset` when the defaults are taken.
struct Addrs {
    admin: SocketAddr,
    http: SocketAddr,
    tcp: SocketAddr,
    upstream: SocketAddr,
}

impl Addrs {
    fn new(offset: u16) -> Result<Addrs> {
        let at = |p: u16| -> Result<SocketAddr> {
            let port = p
                .checked_add(offset)
                .ok_or_else(|| crate::Error(format!("--port-offset {offset} is too large")))?;
            Ok(SocketAddr::from(([127, 0, 0, 1], port)))
        };
        Ok(Addrs {
            admin: at(PORTS[0])?,
            http: at(PORTS[1])?,
            tcp: at(PORTS[2])?,
            upstream: at(PORTS[3])?,
        })
    }

    /// The embedded config with the ports shifted (in one pass, so a shifted port is never
    /// shifted again).
    fn yaml(&self, offset: u16) -> String {
        const KEY: &str = "port_value: ";
        let mut parts = DEMO_YAML.split(KEY);
        let mut y = parts.next().unwrap_or_default().to_string();
        for part in parts {
            y.push_str(KEY);
            let digits = part.chars().take_while(char::is_ascii_digit).count();
            match part[..digits].parse::<u16>() {
                Ok(p) if PORTS.contains(&p) => {
                    y.push_str(&(p + offset).to_string());
                    y.push_str(&part[digits..]);
                }
                _ => y.push_str(part),
            }
        }
        y
    }

    /// Fails if anything already listens on one of the ports. Proxies bind listeners with
    /// SO_REUSEPORT, so a second one on the same port would silently share its traffic.
    fn check_free(&self) -> Result {
        for a in [self.admin, self.http, self.tcp, self.upstream] {
            if TcpStream::connect_timeout(&a, Duration::from_millis(300)).is_ok() {
                bail!(
                    "something already listens on {a}; stop it or pick other ports with \
                     --port-offset N"
                );
            }
        }
        Ok(())
    }
}

/// Stat name prefixes worth showing after the requests.
const STAT_PREFIXES: &[&str] = &[
    "http.demo.",
    "cluster.demo_upstream.",
    "listener.",
    "tcp.demo_tcp.",
];

struct Options {
    keep: bool,
    bin: Option<PathBuf>,
    port_offset: u16,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        keep: false,
        bin: None,
        port_offset: 0,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--keep" => o.keep = true,
            // Run another Envoy-compatible binary (e.g. Envoy itself) instead of skiff.
            "--bin" => match it.next() {
                Some(p) => o.bin = Some(PathBuf::from(p)),
                None => bail!("--bin needs a path"),
            },
            "--port-offset" => match it.next() {
                Some(n) => o.port_offset = n.parse()?,
                None => bail!("--port-offset needs a number"),
            },
            other => {
                bail!(
                    "unknown demo --http option `{other}` (known: --keep, --bin PATH, \
                     --port-offset N)"
                )
            }
        }
    }
    Ok(o)
}

pub fn run(args: &[String]) -> Result {
    let opts = parse(args)?;
    let bin = match opts.bin {
        Some(b) => b,
        None => crate::build_skiff_path()?,
    };
    let addrs = Addrs::new(opts.port_offset)?;
    addrs.check_free()?;
    let name = bin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "proxy".into());

    // Logs go under target/ (not a temp dir) so they survive Ctrl-C for a look afterwards.
    let log_dir = crate::target_dir().join("demo");
    std::fs::create_dir_all(&log_dir)?;
    let log = log_dir.join(format!("{name}.log"));
    let upstream = Upstream::start(addrs.upstream)?;
    println!(
        "upstream: built-in HTTP/1.1 echo server on {}",
        addrs.upstream
    );

    let mut cmd = crate::process::guarded(&bin);
    cmd.arg("--config-yaml")
        .arg(addrs.yaml(opts.port_offset))
        .args(["--file-flush-interval-msec", "100"])
        .args(["--concurrency", "1", "--disable-hot-restart", "-l", "warn"])
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    println!(
        "{name}: {} --config-yaml \"$(cat examples/demo.yaml)\" --file-flush-interval-msec 100 \
         --concurrency 1 --disable-hot-restart -l warn",
        bin.display()
    );
    println!(
        "        (its access log is printed below as requests flow; other logs go to {})",
        log.display()
    );
    let mut proxy = Proc::spawn(&name, &mut cmd)?;

    let admin = addrs.admin;
    let result = drive(&mut proxy, &addrs, &upstream, opts.keep);
    let stopped = if opts.keep && result.is_ok() {
        Ok(())
    } else {
        http::quit(admin, &mut proxy, Duration::from_secs(10))
    };
    if let Err(e) = &result {
        eprintln!("--- last lines of {name}'s log ---\n{}", tail(&log, 30));
        bail!("{e:?}");
    }
    stopped?;
    if !opts.keep {
        println!("\n{name} stopped via POST /quitquitquit; demo OK");
    }
    Ok(())
}

fn drive(proxy: &mut Proc, addrs: &Addrs, upstream: &Upstream, keep: bool) -> Result {
    let admin = addrs.admin;
    http::wait_ready(admin, proxy, Duration::from_secs(60))?;
    println!(
        "{}: ready (GET http://{admin}/ready -> 200)\n",
        proxy.name()
    );
    let http_url = format!("http://{}", addrs.http);
    let tcp_url = format!("http://{}", addrs.tcp);

    let hello = format!("{http_url}/hello?via=http1");
    let h2 = format!("{http_url}/hello?via=h2c");
    let post = format!("{http_url}/submit");
    let tcp = format!("{tcp_url}/through-tcp-proxy");
    let requests: Vec<(&str, Vec<&str>)> = vec![
        (
            "HTTP/1.1 GET through the HTTP listener `demo`",
            vec!["-H", "x-demo: hello", &hello],
        ),
        (
            "HTTP/2 (h2c, prior knowledge) GET through `demo`",
            vec!["--http2-prior-knowledge", &h2],
        ),
        (
            "HTTP/1.1 POST with a body through `demo`",
            vec!["--data", "name=skiff", &post],
        ),
        (
            "HTTP/1.1 GET through the TCP proxy listener `demo_tcp`",
            vec![&tcp],
        ),
    ];
    let before = upstream.served();
    for (title, args) in &requests {
        curl(title, args)?;
        proxy.check_running()?;
    }
    let reached = upstream.served() - before;
    if reached != requests.len() as u64 {
        bail!(
            "the upstream answered {reached} requests, expected {}",
            requests.len()
        );
    }
    // Let the access log (flushed every 100 ms) and the stats catch up.
    std::thread::sleep(Duration::from_millis(400));
    show_stats(admin)?;

    if keep {
        println!(
            "\n{} keeps running (--keep). Try:\n  curl -v {http_url}/\n  curl --http2-prior-knowledge {http_url}/\n  curl {tcp_url}/\n  curl http://{admin}/stats/prometheus\nCtrl-C to stop.",
            proxy.name()
        );
        let st = proxy.wait()?;
        if !st.success() {
            bail!("{} exited ({st})", proxy.name());
        }
        println!("{} exited", proxy.name());
    }
    Ok(())
}

fn curl(title: &str, args: &[&str]) -> Result {
    println!("── {title}");
    println!("$ curl -sS -i {}", args.join(" "));
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10", "--fail-with-body"])
        .args(args)
        .output()
        .map_err(|e| crate::Error(format!("cannot run curl: {e}")))?;
    let body = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    print!("{body}");
    if !body.ends_with('\n') {
        println!();
    }
    println!();
    if !out.status.success() {
        bail!(
            "request failed: {title}: curl {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn show_stats(admin: SocketAddr) -> Result {
    let r = request(admin, "GET", "/stats")?;
    if r.status != 200 {
        bail!("GET /stats answered {}", r.status);
    }
    let mut shown = 0;
    let mut zero = 0;
    println!("── GET http://{admin}/stats (non-zero counters and gauges of this demo)");
    for line in r.body.lines() {
        if !STAT_PREFIXES.iter().any(|p| line.starts_with(p)) {
            continue;
        }
        let value = line.split_once(": ").map(|(_, v)| v.trim()).unwrap_or("");
        // Histogram summaries are long; the counters tell the story.
        if value == "0"
            || value.is_empty()
            || value.contains("P0(")
            || value.contains("No recorded")
        {
            zero += 1;
            continue;
        }
        println!("  {line}");
        shown += 1;
    }
    println!("  ({zero} more matching stats are zero or histograms; see http://{admin}/stats)");
    if !r.body.lines().any(|l| l.starts_with("http.demo.")) {
        bail!("/stats has no http.demo.* stats");
    }
    if shown == 0 {
        bail!("every http.demo./cluster.demo_upstream./listener. stat is zero");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn port_offset_shifts_each_port_once() {
        let a = Addrs::new(100).unwrap();
        let y = a.yaml(100);
        for p in ["10001", "10100", "10101", "18180"] {
            assert_eq!(y.matches(&format!("port_value: {p} ")).count(), 1, "{p}");
        }
        assert_eq!(Addrs::new(0).unwrap().yaml(0), DEMO_YAML);
        assert_eq!(a.admin.port(), 10001);
    }
}
