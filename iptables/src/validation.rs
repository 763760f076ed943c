//! The capture self-test (`--run-validation`), for both backends: listen on the capture ports,
//! dial a probe address that the rules must capture, and check that the connection lands on a
//! capture port with SO_ORIGINAL_DST naming the probe's port. Like istio-iptables' validation,
//! it runs before the proxy starts, since it needs the capture ports for itself.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Istio's probe port (`--iptables-probe-port`).
pub const PROBE_PORT: u16 = 15002;

/// istio-iptables' exit code when validation fails.
pub const VALIDATION_ERROR_CODE: u8 = 126;

/// One self-test.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The capture listeners to open (outbound and inbound capture ports).
    pub listen: Vec<SocketAddr>,
    /// Where the client connects; the rules must redirect it to one of `listen`.
    pub dial: SocketAddr,
    /// The client's local address, if it must be fixed.
    pub bind: Option<SocketAddr>,
    /// How long to keep trying.
    pub timeout: Duration,
}

/// Runs the self-test; a sentence saying what passed, or why it failed.
pub fn run(p: &Probe) -> Result<String, String> {
    let mut listeners = Vec::new();
    for addr in &p.listen {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(*addr),
            socket2::Type::STREAM,
            None,
        )
        .map_err(|e| format!("validation: socket: {e}"))?;
        let _ = sock.set_reuse_address(true);
        match sock.bind(&(*addr).into()).and_then(|()| sock.listen(16)) {
            Ok(()) => {
                sock.set_nonblocking(true)
                    .map_err(|e| format!("validation: {e}"))?;
                listeners.push((*addr, TcpListener::from(sock)));
            }
            Err(e) => {
                return Err(format!(
                    "validation: cannot listen on {addr} ({e}); it must run before the proxy starts"
                ))
            }
        }
    }
    let deadline = Instant::now() + p.timeout;
    let mut last_dial = None::<Instant>;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if last_dial.is_none_or(|t| t.elapsed() >= Duration::from_millis(200)) {
            last_dial = Some(Instant::now());
            dial(p);
        }
        for (addr, l) in &listeners {
            let Ok((mut conn, peer)) = l.accept() else {
                continue;
            };
            let sock = socket2::SockRef::from(&conn);
            let orig = if addr.is_ipv4() {
                sock.original_dst_v4()
            } else {
                sock.original_dst_v6()
            };
            let Some(orig) = orig.ok().and_then(|a| a.as_socket()) else {
                seen.push(format!("{peer} on {addr} without an original destination"));
                continue;
            };
            let _ = conn.write_all(orig.port().to_string().as_bytes());
            if orig.port() == p.dial.port() {
                return Ok(format!(
                    "validation passed: a connection to {} was captured on {addr} and \
                     SO_ORIGINAL_DST reported {orig}",
                    p.dial
                ));
            }
            seen.push(format!("{peer} on {addr} for {orig}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let listen: Vec<String> = p.listen.iter().map(|a| a.to_string()).collect();
    Err(format!(
        "validation failed: no connection to {} reached {} within {:?}{}; capture is not in place, \
         the workload is not ready for the mesh",
        p.dial,
        listen.join(" or "),
        p.timeout,
        if seen.is_empty() {
            String::new()
        } else {
            format!(" (saw only: {})", seen.join("; "))
        }
    ))
}

fn dial(p: &Probe) {
    let family = socket2::Domain::for_address(p.dial);
    let Ok(sock) = socket2::Socket::new(family, socket2::Type::STREAM, None) else {
        return;
    };
    if let Some(b) = p.bind {
        if sock.bind(&b.into()).is_err() {
            return;
        }
    }
    // A short connect: the listener is local once the rules redirect it.
    if sock
        .connect_timeout(&p.dial.into(), Duration::from_millis(150))
        .is_ok()
    {
        let s: TcpStream = sock.into();
        drop(s);
    }
}

/// Who runs the self-test, and where: capture rules look at the connecting process's owner,
/// cgroup and network namespace, so the probe runs as a child process placed like the
/// workload (`skiff validate-capture`, hidden).
#[derive(Debug, Clone, Default)]
pub struct Runner<'a> {
    /// The probe's uid.
    pub uid: u32,
    /// The probe's gid.
    pub gid: u32,
    /// Join this cgroup v2 directory first (the eBPF programs are attached there).
    pub cgroup: Option<&'a std::path::Path>,
    /// Then enter this network namespace.
    pub netns: Option<&'a std::path::Path>,
}

/// The arguments of `skiff validate-capture` for a probe.
pub fn probe_args(p: &Probe) -> Vec<String> {
    let listen: Vec<String> = p.listen.iter().map(|a| a.to_string()).collect();
    let mut args = vec![
        "validate-capture".to_string(),
        "--listen".into(),
        listen.join(","),
        "--dial".into(),
        p.dial.to_string(),
        "--timeout-ms".into(),
        p.timeout.as_millis().to_string(),
    ];
    if let Some(b) = p.bind {
        args.extend(["--bind".into(), b.to_string()]);
    }
    args
}

/// Runs the self-test in a child process of this binary placed as `r` says.
pub fn run_as(p: &Probe, r: &Runner<'_>) -> Result<String, String> {
    use std::os::unix::process::CommandExt as _;
    use std::process::Command;
    let exe = std::env::current_exe().map_err(|e| format!("validation: {e}"))?;
    let mut cmd = match r.netns {
        Some(ns) => {
            let mut c = match r.cgroup {
                // Join the cgroup before entering the namespace.
                Some(cg) => {
                    let mut c = Command::new("sh");
                    c.args(["-c", "echo $$ > \"$0/cgroup.procs\" && exec \"$@\""])
                        .arg(cg)
                        .arg("nsenter");
                    c
                }
                None => Command::new("nsenter"),
            };
            c.arg(format!("--net={}", ns.display()))
                .args([
                    "--setuid",
                    &r.uid.to_string(),
                    "--setgid",
                    &r.gid.to_string(),
                ])
                .arg("--")
                .arg(&exe);
            c
        }
        None => {
            let mut c = Command::new(&exe);
            c.uid(r.uid).gid(r.gid);
            c
        }
    };
    cmd.args(probe_args(p));
    let out = cmd
        .output()
        .map_err(|e| format!("validation: cannot start the probe: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_string();
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}
