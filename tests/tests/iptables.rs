//! `skiff iptables` against the real iptables, in namespaces each test creates: apply, re-apply
//! (nothing changes), traffic captured to a remote namespace through skiff, and clean-up back to
//! exactly the rules that were there before. Needs root (CI runs as root).

use std::time::{Duration, Instant};

use skiff_tests::netns::{pair, skiff_iptables, text, Netns, PROXY_UID, SIDECAR_FLAGS};
use skiff_tests::proxy::Kind;
use skiff_tests::run_for;

fn nat_rules(ns: &Netns) -> String {
    String::from_utf8_lossy(&ns.exec(&["iptables", "-t", "nat", "-S"]).stdout).into_owned()
}

/// Everything `skiff iptables` may touch: nat and mangle of both families, and policy routing.
fn state(ns: &Netns) -> String {
    let mut all = String::new();
    for args in [
        &["iptables", "-t", "nat", "-S"][..],
        &["iptables", "-t", "mangle", "-S"],
        &["ip6tables", "-t", "nat", "-S"],
        &["ip6tables", "-t", "mangle", "-S"],
        &["ip", "-4", "rule", "list"],
        &["ip", "-6", "rule", "list"],
        &["ip", "-4", "route", "show", "table", "133"],
    ] {
        all.push_str(&format!("## {}\n", args.join(" ")));
        all.push_str(&String::from_utf8_lossy(
            &ns.command(args).output().expect("run").stdout,
        ));
    }
    all
}

const TPROXY_FLAGS: &[&str] = &[
    "-m",
    "TPROXY",
    "-b",
    "*",
    "-d",
    "15090",
    "-i",
    "*",
    "--drop-invalid",
    "--dual-stack",
    "-u",
    PROXY_UID,
];

/// TPROXY mode: mangle chains, marks and connmarks, and the policy route, in both families;
/// applying twice changes nothing and clean-up restores everything, routes included.
#[tokio::test]
async fn tproxy_apply_and_cleanup_with_policy_routes() {
    run_for(Duration::from_secs(60), async {
        tokio::task::spawn_blocking(|| {
            let ns = Netns::new("iptp");
            let before = state(&ns);
            let out = skiff_iptables(&ns, TPROXY_FLAGS);
            assert!(out.status.success(), "{}", text(&out));
            let applied = state(&ns);
            for want in [
                "-N ISTIO_TPROXY",
                "-A PREROUTING -p tcp -j ISTIO_INBOUND",
                "-A ISTIO_DIVERT -j ACCEPT",
                "-j TPROXY --on-port 15006",
                "-A PREROUTING -m conntrack --ctstate INVALID -j ISTIO_DROP",
                "fwmark 0x539 lookup 133",
                "local default dev lo",
            ] {
                assert!(applied.contains(want), "missing `{want}` in:\n{applied}");
            }
            let again = skiff_iptables(&ns, TPROXY_FLAGS);
            assert!(again.status.success(), "{}", text(&again));
            assert_eq!(state(&ns), applied, "running twice must change nothing");
            let mut cleanup = TPROXY_FLAGS.to_vec();
            cleanup.push("--cleanup-only");
            let out = skiff_iptables(&ns, &cleanup);
            assert!(out.status.success(), "{}", text(&out));
            assert_eq!(state(&ns), before, "clean-up must restore everything");
        })
        .await
        .expect("test thread");
    })
    .await
}

#[tokio::test]
async fn apply_is_idempotent_and_cleanup_restores_the_previous_rules() {
    run_for(Duration::from_secs(60), async {
        tokio::task::spawn_blocking(|| {
            let ns = Netns::new("ipt");
            // Somebody else's rules, which skiff must leave alone.
            ns.exec(&["iptables", "-t", "nat", "-N", "OTHER"]);
            ns.exec(&[
                "iptables", "-t", "nat", "-A", "OTHER", "-p", "udp", "--dport", "9999", "-j",
                "RETURN",
            ]);
            ns.exec(&[
                "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "9999", "-j",
                "OTHER",
            ]);
            let before = nat_rules(&ns);

            let out = skiff_iptables(&ns, SIDECAR_FLAGS);
            assert!(out.status.success(), "{}", text(&out));
            let applied = nat_rules(&ns);
            for want in [
                "-N ISTIO_OUTPUT",
                "-A OUTPUT -j ISTIO_OUTPUT",
                "-A PREROUTING -p tcp -j ISTIO_INBOUND",
                "-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN",
                "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
                "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
            ] {
                assert!(applied.contains(want), "missing `{want}` in:\n{applied}");
            }
            assert!(
                applied.contains("-A OUTPUT -p udp -m udp --dport 9999 -j OTHER"),
                "{applied}"
            );

            let again = skiff_iptables(&ns, SIDECAR_FLAGS);
            assert!(again.status.success(), "{}", text(&again));
            assert_eq!(nat_rules(&ns), applied, "running twice must change nothing");

            // A bad value is refused with the flag's name, before anything changes.
            let bad = skiff_iptables(&ns, &["-i", "10.0.0.0/33"]);
            assert!(!bad.status.success());
            assert!(
                text(&bad).contains("--istio-service-cidr"),
                "{}",
                text(&bad)
            );
            assert_eq!(nat_rules(&ns), applied);

            let mut cleanup = SIDECAR_FLAGS.to_vec();
            cleanup.push("--cleanup-only");
            let out = skiff_iptables(&ns, &cleanup);
            assert!(out.status.success(), "{}", text(&out));
            assert_eq!(
                nat_rules(&ns),
                before,
                "clean-up must restore the previous rules exactly"
            );
        })
        .await
        .expect("test thread");
    })
    .await
}

/// A client namespace (10.99.0.1) whose outbound traffic `skiff iptables` captures into skiff,
/// which sends it on to the app in another namespace (10.99.0.2:8080); skiff's own connection
/// (uid 1337) is not captured again.
#[tokio::test]
async fn outbound_capture_to_a_remote_namespace_through_skiff() {
    run_for(Duration::from_secs(60), async {
        tokio::task::spawn_blocking(|| {
            let (mut client, mut app) = pair("oc");
            start_app(&mut app, "8080", "app.log");
            let out = skiff_iptables(&client, &["-u", PROXY_UID, "-i", "*"]);
            assert!(out.status.success(), "{}", text(&out));
            start_sidecar(&mut client);

            let (code, body) = client.curl("http://10.99.0.2:8080/");
            assert_eq!(code, "200", "{body}\n{}", client.log("proxy.log"));
            assert_eq!(
                client.stat("tcp.outbound.downstream_cx_total"),
                1,
                "captured into skiff"
            );
            assert_eq!(client.stat("cluster.passthrough.upstream_cx_total"), 1);
            // The app saw skiff's connection from the client namespace's address.
            assert!(
                app.log("app.log").contains("10.99.0.1"),
                "{}",
                app.log("app.log")
            );
        })
        .await
        .expect("test thread");
    })
    .await
}

/// TPROXY inbound: the client (10.99.0.1) calls the app (10.99.0.2:8080); `skiff iptables -m
/// TPROXY` in the app's namespace hands the connection to skiff's transparent inbound listener,
/// which reads the original destination from the local address and connects to the app from the
/// client's own address (original_src, mark 1337), so the app sees the real client.
#[tokio::test]
async fn tproxy_inbound_preserves_the_client_address() {
    run_for(Duration::from_secs(60), async {
        tokio::task::spawn_blocking(|| {
            let (client, mut app) = pair("tp");
            start_app(&mut app, "8080", "app.log");
            let out = skiff_iptables(&app, &["-m", "TPROXY", "-b", "*", "-u", PROXY_UID]);
            assert!(out.status.success(), "{}", text(&out));
            let cfg = app.dir.join("tproxy.yaml");
            std::fs::write(&cfg, tproxy_inbound_config(TCP_PROXY_FILTER)).expect("config");
            let bin = Kind::Skiff.binary().to_string_lossy().into_owned();
            let cfg = cfg.to_string_lossy().into_owned();
            // IP_TRANSPARENT needs CAP_NET_ADMIN: the proxy runs as root here.
            app.spawn(&[&bin, "-c", &cfg, "--concurrency", "1"], "proxy.log");
            app.wait_ready("skiff", "proxy.log");

            let (code, body) = client.curl("http://10.99.0.2:8080/");
            assert_eq!(code, "200", "{body}\nproxy:\n{}", app.log("proxy.log"));
            assert_eq!(
                app.stat("tcp.inbound.downstream_cx_total"),
                1,
                "captured by TPROXY into skiff"
            );
            assert_eq!(app.stat("cluster.inbound_passthrough.upstream_cx_total"), 1);
            let log = app.log("app.log");
            assert!(
                log.contains("10.99.0.1 - -"),
                "the app must see the client's address: {log}"
            );
        })
        .await
        .expect("test thread");
    })
    .await
}

/// The TPROXY inbound listener (original_dst, then original_src with mark 1337) with `filter`
/// (YAML, indented as a filter list item) in front of the ORIGINAL_DST `inbound_passthrough`.
fn tproxy_inbound_config(filter: &str) -> String {
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 15000}}}}}}
static_resources:
  listeners:
  - name: virtualInbound
    address: {{socket_address: {{address: 0.0.0.0, port_value: 15006}}}}
    transparent: true
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}}
    - name: envoy.filters.listener.original_src
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.original_src.v3.OriginalSrc, mark: 1337}}
    filter_chains:
    - filters:
{filter}
  clusters:
  - name: inbound_passthrough
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
"#
    )
}

const TCP_PROXY_FILTER: &str = r#"      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: inbound
          cluster: inbound_passthrough"#;

fn start_app(ns: &mut Netns, port: &str, log: &str) {
    ns.spawn(
        &["python3", "-m", "http.server", port, "--bind", "10.99.0.2"],
        log,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ns.log(log).contains("Serving HTTP") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts skiff as uid 1337 on sidecar-capture.yaml in `ns`.
fn start_sidecar(ns: &mut Netns) {
    let cfg = ns.dir.join("sidecar-capture.yaml");
    std::fs::copy(
        skiff_tests::package_dir().join("configs/sidecar-capture.yaml"),
        &cfg,
    )
    .expect("config");
    let bin = Kind::Skiff.binary().to_string_lossy().into_owned();
    let cfg = cfg.to_string_lossy().into_owned();
    ns.spawn(
        &[
            "setpriv",
            "--reuid",
            PROXY_UID,
            "--regid",
            PROXY_UID,
            "--clear-groups",
            &bin,
            "-c",
            &cfg,
            "--concurrency",
            "1",
        ],
        "proxy.log",
    );
    ns.wait_ready("skiff", "proxy.log");
}

/// Inbound REDIRECT (`-b '*' -d 8081`): a connection to the app's port 8080 is captured into
/// skiff's 15006 listener and reaches the app from the inbound passthrough address 127.0.0.6;
/// one to the excluded port 8081 reaches the app directly from the client.
#[tokio::test]
async fn inbound_redirect_and_an_excluded_port() {
    run_for(Duration::from_secs(60), async {
        tokio::task::spawn_blocking(|| {
            let (client, mut app) = pair("ir");
            start_app(&mut app, "8080", "app8080.log");
            start_app(&mut app, "8081", "app8081.log");
            let out = skiff_iptables(&app, &["-b", "*", "-d", "8081", "-u", PROXY_UID]);
            assert!(out.status.success(), "{}", text(&out));
            start_sidecar(&mut app);

            let (code, body) = client.curl("http://10.99.0.2:8080/");
            assert_eq!(code, "200", "{body}\n{}", app.log("proxy.log"));
            assert_eq!(
                app.stat("tcp.inbound.downstream_cx_total"),
                1,
                "captured by REDIRECT"
            );
            assert!(
                app.log("app8080.log").contains("127.0.0.6 - -"),
                "{}",
                app.log("app8080.log")
            );

            let (code, _) = client.curl("http://10.99.0.2:8081/");
            assert_eq!(code, "200");
            assert_eq!(
                app.stat("tcp.inbound.downstream_cx_total"),
                1,
                "the excluded port went direct"
            );
            assert!(
                app.log("app8081.log").contains("10.99.0.1 - -"),
                "{}",
                app.log("app8081.log")
            );
        })
        .await
        .expect("test thread");
    })
    .await
}

/// Outbound with an excluded CIDR (`-i '*' -x 10.99.0.2/32`): the connection goes to the app
/// directly, not through skiff.
#[tokio::test]
async fn outbound_excluded_cidr_goes_direct() {
    run_for(Duration::from_secs(60), async {
        tokio::task::spawn_blocking(|| {
            let (mut client, mut app) = pair("ox");
            start_app(&mut app, "8080", "app.log");
            let out = skiff_iptables(&client, &["-i", "*", "-x", "10.99.0.2/32", "-u", PROXY_UID]);
            assert!(out.status.success(), "{}", text(&out));
            start_sidecar(&mut client);
            let (code, _) = client.curl("http://10.99.0.2:8080/");
            assert_eq!(code, "200");
            assert_eq!(
                client.stat("tcp.outbound.downstream_cx_total"),
                0,
                "excluded CIDR must not be captured"
            );
            assert!(app.log("app.log").contains("10.99.0.1 - -"));
        })
        .await
        .expect("test thread");
    })
    .await
}

/// `--run-validation`, istio-iptables' self-test: with the rules in place a probe to
/// 127.0.0.6:15002, made as the proxy's uid, lands on a capture port with SO_ORIGINAL_DST
/// naming 15002; without them it fails with exit code 126 and says why.
#[tokio::test]
async fn run_validation_passes_with_rules_and_fails_without() {
    run_for(Duration::from_secs(60), async {
        tokio::task::spawn_blocking(|| {
            let ns = Netns::new("iptval");
            let mut args = SIDECAR_FLAGS.to_vec();
            args.push("--run-validation");
            let out = skiff_iptables(&ns, &args);
            assert!(out.status.success(), "{}", text(&out));
            assert!(
                text(&out).contains("validation passed")
                    && text(&out).contains("SO_ORIGINAL_DST reported 127.0.0.6:15002"),
                "{}",
                text(&out)
            );
            let out = skiff_iptables(&ns, &["--cleanup-only"]);
            assert!(out.status.success(), "{}", text(&out));
            // No rules: the self-test alone must fail, clearly, with Istio's exit code.
            let bin = Kind::Skiff.binary();
            let out = ns
                .command(&[
                    &bin.to_string_lossy(),
                    "validate-capture",
                    "--listen",
                    "127.0.0.1:15001,127.0.0.1:15006",
                    "--dial",
                    "127.0.0.6:15002",
                    "--bind",
                    "127.0.0.1:0",
                    "--timeout-ms",
                    "1000",
                ])
                .output()
                .expect("run the probe");
            assert_eq!(out.status.code(), Some(126), "{}", text(&out));
            assert!(
                text(&out).contains("validation failed: no connection to 127.0.0.6:15002"),
                "{}",
                text(&out)
            );
        })
        .await
        .expect("test thread");
    })
    .await
}

/// TPROXY inbound to an HTTP connection manager with original_src: each request reaches the
/// app from its own client's address, over upstream connections pooled per client address
/// (two requests from one client share one; another client gets its own), with skiff and with
/// Envoy 1.40 the same.
#[tokio::test]
async fn tproxy_inbound_http_original_src_pools_per_client_address() {
    run_for(Duration::from_secs(120), async {
        tokio::task::spawn_blocking(|| {
            let mut seen = Vec::new();
            for (kind, tag) in [(Kind::Envoy, "hoe"), (Kind::Skiff, "hos")] {
                let (client, mut app) = pair(tag);
                // A second client address on the same side.
                let (vc, _) = skiff_tests::netns::veth_names(tag);
                client.exec(&["ip", "addr", "add", "10.99.0.3/24", "dev", &vc]);
                // HTTP/1.1 with keep-alive, so the proxy's upstream connections are reused.
                app.spawn(
                    &[
                        "python3",
                        "-m",
                        "http.server",
                        "--protocol",
                        "HTTP/1.1",
                        "8080",
                        "--bind",
                        "10.99.0.2",
                    ],
                    "app.log",
                );
                let deadline = Instant::now() + Duration::from_secs(10);
                while !app.log("app.log").contains("Serving HTTP") && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let out = skiff_iptables(&app, &["-m", "TPROXY", "-b", "*", "-u", PROXY_UID]);
                assert!(out.status.success(), "{}", text(&out));
                let cfg = app.dir.join("tproxy-http.yaml");
                std::fs::write(&cfg, tproxy_inbound_config(HCM_FILTER)).expect("config");
                let bin = kind.binary().to_string_lossy().into_owned();
                let cfg = cfg.to_string_lossy().into_owned();
                let mut args = vec![bin.as_str(), "-c", &cfg, "--concurrency", "1"];
                let base_id = (std::process::id() % 10_000).to_string();
                if kind == Kind::Envoy {
                    args.extend(["--disable-hot-restart", "--base-id", &base_id]);
                }
                app.spawn(&args, "proxy.log");
                app.wait_ready(kind.name(), "proxy.log");

                let curl_from = |src: &str| {
                    let out = client
                        .command(&[
                            "curl",
                            "-s",
                            "-o",
                            "/dev/null",
                            "-m",
                            "5",
                            "-w",
                            "%{http_code}",
                            "--interface",
                            src,
                            "http://10.99.0.2:8080/",
                        ])
                        .output()
                        .expect("run curl");
                    String::from_utf8_lossy(&out.stdout).into_owned()
                };
                let mut codes = Vec::new();
                let mut upstream_cx = Vec::new();
                for src in ["10.99.0.1", "10.99.0.1", "10.99.0.3", "10.99.0.1"] {
                    codes.push(curl_from(src));
                    upstream_cx.push(app.stat("cluster.inbound_passthrough.upstream_cx_total"));
                }
                let clients: Vec<String> = app
                    .log("app.log")
                    .lines()
                    .filter(|l| l.contains("\"GET / HTTP/1.1\""))
                    .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                    .collect();
                let http = app.stat("http.inbound.downstream_rq_total");
                seen.push((kind.name(), codes, clients, upstream_cx, http));
                if kind == Kind::Skiff {
                    println!("proxy log:\n{}", app.log("proxy.log"));
                }
            }
            println!("{seen:#?}");
            assert_eq!(
                seen[0].2,
                ["10.99.0.1", "10.99.0.1", "10.99.0.3", "10.99.0.1"],
                "Envoy: the app sees each request's own client: {seen:#?}"
            );
            assert_eq!(
                (&seen[0].1, &seen[0].2, &seen[0].3, seen[0].4),
                (&seen[1].1, &seen[1].2, &seen[1].3, seen[1].4),
                "skiff and Envoy differ: {seen:#?}"
            );
        })
        .await
        .expect("test thread");
    })
    .await
}

const HCM_FILTER: &str = r#"      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: inbound_passthrough}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}"#;
