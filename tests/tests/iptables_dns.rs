//! `skiff iptables --redirect-dns` against the real iptables with real DNS traffic, and the
//! ways of applying that istio-iptables has besides the plain one: `--network-namespace` from
//! outside the pod, `--reconcile` over stale rules, and `--cleanup-only` back to the exact
//! `iptables-save` output from before. Each test builds its own namespaces: a pod (10.99.0.1,
//! fd00:99::1) and a remote one with the resolvers (10.99.0.2 and 10.99.0.3, fd00:99::2 and
//! fd00:99::3), joined by a veth pair. Needs root (CI runs as root).

use std::process::Output;
use std::time::{Duration, Instant};

use skiff_tests::netns::{pair, skiff_iptables, text, veth_names, Netns, PROXY_UID};
use skiff_tests::run_for;

/// A DNS server and client in Python (no `dig` needed, no network beyond the namespaces).
/// `serve <tag> <port> <addr>...` answers every query on UDP and TCP with one TXT record, the
/// tag; `query <addr> <udp|tcp>` prints the TXT answer or `timeout`.
const DNS_PY: &str = r#"
import socket, struct, sys, threading, random

def answer(q, tag):
    i = 12
    while q[i] != 0:
        i += q[i] + 1
    i += 5
    txt = tag.encode()
    rr = b"\xc0\x0c" + struct.pack(">HHIH", 16, 1, 0, len(txt) + 1) + bytes([len(txt)]) + txt
    return q[:2] + b"\x81\x80" + struct.pack(">HHHH", 1, 1, 0, 0) + q[12:i] + rr

def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET

def serve_udp(s, tag):
    while True:
        q, peer = s.recvfrom(4096)
        s.sendto(answer(q, tag), peer)

def serve_tcp(s, tag):
    while True:
        c, _ = s.accept()
        try:
            n = struct.unpack(">H", c.recv(2))[0]
            q = b""
            while len(q) < n:
                q += c.recv(n - len(q))
            a = answer(q, tag)
            c.sendall(struct.pack(">H", len(a)) + a)
        finally:
            c.close()

def query(addr, proto):
    q = struct.pack(">HHHHHH", random.randrange(65536), 0x0100, 1, 0, 0, 0)
    q += b"\x04test\x05skiff\x00" + struct.pack(">HH", 16, 1)
    s = socket.socket(family(addr), socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        if proto == "udp":
            s.sendto(q, (addr, 53))
            a = s.recv(4096)
        else:
            s.connect((addr, 53))
            s.sendall(struct.pack(">H", len(q)) + q)
            a = b""
            while len(a) < 2 or len(a) < 2 + struct.unpack(">H", a[:2])[0]:
                chunk = s.recv(4096)
                if not chunk:
                    break
                a += chunk
            a = a[2:]
    except OSError:
        print("timeout")
        return
    assert a[:2] == q[:2], "answer to another query"
    print(a[len(q) + 13:].decode())

if sys.argv[1] == "serve":
    tag, port = sys.argv[2], int(sys.argv[3])
    for addr in sys.argv[4:]:
        for kind, loop in ((socket.SOCK_DGRAM, serve_udp), (socket.SOCK_STREAM, serve_tcp)):
            s = socket.socket(family(addr), kind)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
            if kind == socket.SOCK_STREAM:
                s.listen(16)
            threading.Thread(target=loop, args=(s, tag), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
else:
    query(sys.argv[2], sys.argv[3])
"#;

/// The system's python3: the proxy's uid cannot use an interpreter under root's home (pyenv).
fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// The pod, the remote namespace and the DNS script, with the resolvers running: "upstream"
/// on the pod's nameservers (.2), "other" on addresses that are not (.3), and the agent's DNS
/// proxy ("agent") on 127.0.0.1:15053 and [::1]:15053 in the pod as the proxy's uid.
struct Dns {
    pod: Netns,
    _remote: Netns,
    script: String,
    resolv_conf: String,
}

impl Dns {
    fn new(tag: &str) -> Dns {
        let (mut pod, mut remote) = pair(tag);
        let (vp, vr) = veth_names(tag);
        pod.exec(&["ip", "addr", "add", "fd00:99::1/64", "dev", &vp, "nodad"]);
        for addr in ["fd00:99::2/64", "fd00:99::3/64"] {
            remote.exec(&["ip", "addr", "add", addr, "dev", &vr, "nodad"]);
        }
        remote.exec(&["ip", "addr", "add", "10.99.0.3/24", "dev", &vr]);
        let script = pod.dir.join("dns.py");
        std::fs::write(&script, DNS_PY).expect("write dns.py");
        let script = script.to_string_lossy().into_owned();
        let resolv_conf = pod.dir.join("resolv.conf");
        std::fs::write(
            &resolv_conf,
            "search svc.cluster.local\nnameserver 10.99.0.2\nnameserver fd00:99::2\noptions ndots:5\n",
        )
        .expect("write resolv.conf");
        let resolv_conf = resolv_conf.to_string_lossy().into_owned();
        let py = |args: &[&str]| -> Vec<String> {
            [python(), script.as_str()]
                .iter()
                .chain(args)
                .map(|s| s.to_string())
                .collect()
        };
        let serve = |ns: &mut Netns, args: Vec<String>, log: &str| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ns.spawn(&args, log);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !ns.log(log).contains("ready") {
                assert!(Instant::now() < deadline, "{log}: {}", ns.log(log));
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        serve(
            &mut remote,
            py(&["serve", "upstream", "53", "10.99.0.2", "fd00:99::2"]),
            "upstream.log",
        );
        serve(
            &mut remote,
            py(&["serve", "other", "53", "10.99.0.3", "fd00:99::3"]),
            "other.log",
        );
        let mut agent: Vec<String> = [
            "setpriv",
            "--reuid",
            PROXY_UID,
            "--regid",
            PROXY_UID,
            "--clear-groups",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        agent.extend(py(&["serve", "agent", "15053", "127.0.0.1", "::1"]));
        serve(&mut pod, agent, "agent.log");
        Dns {
            pod,
            _remote: remote,
            script,
            resolv_conf,
        }
    }

    /// A query from the pod as `who` (an app as root, or a uid:gid) to `addr` port 53: the TXT
    /// answer, naming the server that answered, or `timeout`.
    fn query(&self, who: &str, addr: &str, proto: &str) -> String {
        let mut args: Vec<&str> = Vec::new();
        let ids: Vec<&str> = who.split(':').collect();
        if who != "app" {
            args.extend([
                "setpriv",
                "--reuid",
                ids[0],
                "--regid",
                ids[1],
                "--clear-groups",
            ]);
        }
        args.extend([python(), &self.script, "query", addr, proto]);
        let out = self.pod.command(&args).output().expect("run the query");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn skiff(&self, args: &[&str]) -> Output {
        skiff_iptables(&self.pod, args)
    }
}

/// The proxy's uid:gid.
const PROXY: &str = "1337:1337";

/// Everything in `iptables-save` and `ip6tables-save`, without the comment lines (they carry
/// the time) and the chain counters.
fn saves(ns: &Netns) -> String {
    let mut all = String::new();
    for bin in ["iptables-save", "ip6tables-save"] {
        let out = ns.exec(&[bin]);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.starts_with('#') {
                continue;
            }
            let line = match (line.starts_with(':'), line.rfind(" [")) {
                (true, Some(i)) => &line[..i],
                _ => line,
            };
            all.push_str(line);
            all.push('\n');
        }
    }
    all
}

/// Somebody else's rules in every table skiff writes to, in both families, which skiff must
/// leave alone. They also make every table show in `iptables-save` before skiff runs: with the
/// nf_tables backend a table skiff's rules created stays behind, empty, after clean-up.
fn foreign_rules(ns: &Netns) {
    for bin in ["iptables", "ip6tables"] {
        for table in ["nat", "mangle", "raw", "filter"] {
            ns.exec(&[bin, "-t", table, "-N", "OTHER"]);
            ns.exec(&[
                bin, "-t", table, "-A", "OTHER", "-p", "udp", "--dport", "9999", "-j", "RETURN",
            ]);
            ns.exec(&[
                bin, "-t", table, "-A", "OUTPUT", "-p", "udp", "--dport", "9999", "-j", "OTHER",
            ]);
        }
    }
}

fn ok(out: &Output) {
    assert!(out.status.success(), "{}", text(out));
}

/// `--redirect-dns` with the nameservers of resolv.conf, both families: an app's UDP and TCP
/// queries to a nameserver land on the agent's 15053, the proxy's own go to the nameserver,
/// a query to an address that is not a nameserver is not captured; `--cleanup-only` leaves
/// `iptables-save` exactly as it was and queries go direct again.
#[tokio::test]
async fn dns_to_the_nameservers_is_captured_except_for_the_proxy() {
    run_for(Duration::from_secs(90), async {
        tokio::task::spawn_blocking(|| {
            let dns = Dns::new("dn");
            foreign_rules(&dns.pod);
            let before = saves(&dns.pod);
            let flags = [
                "--redirect-dns",
                "--dual-stack",
                "-u",
                PROXY_UID,
                "--resolv-conf",
                &dns.resolv_conf,
            ];
            ok(&dns.skiff(&flags));
            let applied = saves(&dns.pod);
            for want in [
                "-A OUTPUT -j ISTIO_OUTPUT_DNS",
                "-A ISTIO_OUTPUT_DNS -d 10.99.0.2/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053",
                "-A ISTIO_OUTPUT_DNS -d fd00:99::2/128 -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053",
                "-A ISTIO_INBOUND -s 10.99.0.2/32 -p udp -m udp --sport 53 -j CT --zone 1",
                "-A ISTIO_OUTPUT_DNS -d fd00:99::2/128 -p udp -m udp --dport 53 -j CT --zone 2",
            ] {
                assert!(applied.contains(want), "missing `{want}` in:\n{applied}");
            }
            for addr in ["10.99.0.2", "fd00:99::2"] {
                for proto in ["udp", "tcp"] {
                    assert_eq!(dns.query("app", addr, proto), "agent", "app {addr} {proto}");
                    assert_eq!(dns.query(PROXY, addr, proto), "upstream", "proxy {addr} {proto}");
                }
            }
            // Not a nameserver: left alone (only --capture-all-dns takes every address).
            assert_eq!(dns.query("app", "10.99.0.3", "udp"), "other");
            assert_eq!(dns.query("app", "fd00:99::3", "tcp"), "other");

            ok(&dns.skiff(&flags));
            assert_eq!(saves(&dns.pod), applied, "running twice must change nothing");

            let mut cleanup = flags.to_vec();
            cleanup.push("--cleanup-only");
            ok(&dns.skiff(&cleanup));
            assert_eq!(saves(&dns.pod), before, "clean-up must restore iptables-save exactly");
            assert_eq!(dns.query("app", "10.99.0.2", "udp"), "upstream");
            assert_eq!(dns.query("app", "fd00:99::2", "tcp"), "upstream");
        })
        .await
        .expect("test thread");
    })
    .await
}

/// `--capture-all-dns`: DNS to any address is captured, even one nobody serves; the proxy's own
/// DNS and that of a group excluded with `--outbound-owner-groups-exclude` go direct.
#[tokio::test]
async fn capture_all_dns_takes_any_address_but_not_the_proxy_or_excluded_groups() {
    run_for(Duration::from_secs(90), async {
        tokio::task::spawn_blocking(|| {
            let dns = Dns::new("da");
            foreign_rules(&dns.pod);
            let before = saves(&dns.pod);
            let flags = [
                "--redirect-dns",
                "--capture-all-dns",
                "--dual-stack",
                "-u",
                PROXY_UID,
                "--outbound-owner-groups-exclude",
                "4242",
                // resolv.conf is not read with --capture-all-dns.
                "--resolv-conf",
                "/nonexistent/resolv.conf",
            ];
            ok(&dns.skiff(&flags));
            for addr in ["10.99.0.3", "fd00:99::3", "10.99.0.77", "fd00:99::77"] {
                for proto in ["udp", "tcp"] {
                    assert_eq!(dns.query("app", addr, proto), "agent", "app {addr} {proto}");
                }
            }
            for proto in ["udp", "tcp"] {
                assert_eq!(
                    dns.query(PROXY, "10.99.0.3", proto),
                    "other",
                    "proxy {proto}"
                );
                assert_eq!(dns.query(PROXY, "fd00:99::2", proto), "upstream");
                assert_eq!(
                    dns.query("4000:4242", "10.99.0.3", proto),
                    "other",
                    "excluded group"
                );
            }
            let mut cleanup = flags.to_vec();
            cleanup.push("--cleanup-only");
            ok(&dns.skiff(&cleanup));
            assert_eq!(
                saves(&dns.pod),
                before,
                "clean-up must restore iptables-save exactly"
            );
        })
        .await
        .expect("test thread");
    })
    .await
}

/// `--network-namespace`: run from outside (here, the test's own namespace), the rules, the
/// validation probe and the clean-up all happen in the pod's namespace; this namespace's own
/// rules do not change.
#[tokio::test]
async fn network_namespace_applies_validates_and_cleans_up_from_outside() {
    run_for(Duration::from_secs(60), async {
        tokio::task::spawn_blocking(|| {
            let dns = Dns::new("dx");
            foreign_rules(&dns.pod);
            let before = saves(&dns.pod);
            let outside = || {
                let mut all = String::new();
                for bin in ["iptables-save", "ip6tables-save"] {
                    let out = std::process::Command::new(bin).output().expect("run");
                    // Only skiff's chains: other tests may be adding rules out here.
                    for line in String::from_utf8_lossy(&out.stdout).lines() {
                        if line.contains("ISTIO_") {
                            all.push_str(line);
                            all.push('\n');
                        }
                    }
                }
                all
            };
            let outside_before = outside();
            let bin = skiff_tests::proxy::Kind::Skiff.binary();
            let path = dns.pod.path();
            let flags = [
                "iptables",
                "--network-namespace",
                &path,
                "-i",
                "*",
                "-b",
                "*",
                "--redirect-dns",
                "--dual-stack",
                "--resolv-conf",
                &dns.resolv_conf,
                "--run-validation",
            ];
            let out = std::process::Command::new(&bin)
                .args(flags)
                .output()
                .expect("run skiff iptables");
            ok(&out);
            assert!(text(&out).contains("validation passed"), "{}", text(&out));
            assert!(saves(&dns.pod).contains("-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS"));
            assert_eq!(
                outside(),
                outside_before,
                "nothing may change outside the pod"
            );
            assert_eq!(dns.query("app", "10.99.0.2", "udp"), "agent");

            let out = std::process::Command::new(&bin)
                .args(flags)
                .arg("--cleanup-only")
                .output()
                .expect("run skiff iptables");
            ok(&out);
            assert_eq!(
                saves(&dns.pod),
                before,
                "clean-up must restore iptables-save exactly"
            );
            assert_eq!(outside(), outside_before);

            let missing = std::process::Command::new(&bin)
                .args([
                    "iptables",
                    "--network-namespace",
                    "/var/run/netns/skiff-none",
                ])
                .output()
                .expect("run skiff iptables");
            assert!(!missing.status.success());
            assert!(
                text(&missing).contains("--network-namespace"),
                "{}",
                text(&missing)
            );
        })
        .await
        .expect("test thread");
    })
    .await
}

/// Stale rules: skiff's chains with rules these flags do not make (another run's flags, a rule
/// added by hand). Without `--reconcile` the run fails as istio-iptables' does and changes
/// nothing; with it the chains are replaced by exactly what a fresh apply makes, and the
/// temporary guardrails are gone again.
#[tokio::test]
async fn reconcile_replaces_stale_rules() {
    run_for(Duration::from_secs(60), async {
        tokio::task::spawn_blocking(|| {
            let dns = Dns::new("dr");
            foreign_rules(&dns.pod);
            let before = saves(&dns.pod);
            let new_flags = [
                "-i",
                "*",
                "--redirect-dns",
                "--dual-stack",
                "--resolv-conf",
                &dns.resolv_conf,
            ];
            ok(&dns.skiff(&new_flags));
            let fresh = saves(&dns.pod);
            ok(&dns.skiff(&["--cleanup-only", "--dual-stack"]));
            assert_eq!(saves(&dns.pod), before);

            // An older run with other flags, plus a rule added by hand.
            ok(&dns.skiff(&["-i", "*", "-b", "*", "--dual-stack"]));
            dns.pod.exec(&[
                "iptables",
                "-t",
                "nat",
                "-I",
                "ISTIO_OUTPUT",
                "1",
                "-d",
                "10.1.2.3",
                "-j",
                "RETURN",
            ]);
            let stale = saves(&dns.pod);
            let refused = dns.skiff(&new_flags);
            assert!(!refused.status.success(), "{}", text(&refused));
            assert!(text(&refused).contains("--reconcile"), "{}", text(&refused));
            assert_eq!(
                saves(&dns.pod),
                stale,
                "without --reconcile nothing changes"
            );

            let mut reconcile = new_flags.to_vec();
            reconcile.push("--reconcile");
            ok(&dns.skiff(&reconcile));
            assert_eq!(saves(&dns.pod), fresh, "reconciled = freshly applied");
            assert_eq!(dns.query("app", "10.99.0.2", "tcp"), "agent");

            // The same hand-made rule in a chain that is otherwise current is a drift too.
            dns.pod.exec(&[
                "iptables",
                "-t",
                "raw",
                "-A",
                "ISTIO_OUTPUT_DNS",
                "-p",
                "udp",
                "-j",
                "ACCEPT",
            ]);
            assert!(!dns.skiff(&new_flags).status.success());
            ok(&dns.skiff(&reconcile));
            assert_eq!(saves(&dns.pod), fresh);
            ok(&dns.skiff(&reconcile));
            assert_eq!(
                saves(&dns.pod),
                fresh,
                "nothing to reconcile: nothing changes"
            );
        })
        .await
        .expect("test thread");
    })
    .await
}
