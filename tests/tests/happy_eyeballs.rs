//! Hosts with several addresses side by side with Envoy 1.40: an endpoint's
//! `additional_addresses` are tried after its address, in the order `happy_eyeballs_config`
//! gives (RFC 8305: the first family, then the other), and a refused address moves the
//! connection on to the next at once. Upstreams on 127.0.0.1 and [::1]; the refused addresses
//! are ports nothing listens on.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::client::{get, http1_once};
use skiff_tests::config::{bootstrap, hcm, listener, route, to_yaml, vhost};
use skiff_tests::proxy::{run_cli, write_config};
use skiff_tests::upstream::{EchoOptions, EchoUpstream};
use skiff_tests::{free_port, run_for, Kind, ProxyProcess};

fn socket(a: SocketAddr) -> Value {
    json!({ "socket_address": { "address": a.ip().to_string(), "port_value": a.port() } })
}

/// A STATIC cluster of one endpoint at `address` with `additional` addresses.
fn cluster(name: &str, address: SocketAddr, additional: &[SocketAddr], extra: Value) -> Value {
    let more: Vec<Value> = additional
        .iter()
        .map(|a| json!({ "address": socket(*a) }))
        .collect();
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": { "cluster_name": name, "endpoints": [ { "lb_endpoints": [ {
            "endpoint": { "address": socket(address), "additional_addresses": more } } ] } ] }
    });
    if let (Some(c), Some(x)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in x {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn first_family(version: &str, count: u32) -> Value {
    json!({ "upstream_connection_options": { "happy_eyeballs_config": {
        "first_address_family_version": version, "first_address_family_count": count } } })
}

/// A port nothing listens on, on both loopback addresses.
fn refused_port() -> u16 {
    loop {
        let p = free_port();
        let v6: SocketAddr = format!("[::1]:{p}").parse().expect("address");
        if std::net::TcpListener::bind(v6).is_ok() {
            return p;
        }
    }
}

fn config(admin: u16, listen: u16, v4: SocketAddr, v6: SocketAddr) -> String {
    let closed = refused_port();
    let v4_closed: SocketAddr = format!("127.0.0.1:{closed}").parse().expect("address");
    let v6_closed: SocketAddr = format!("[::1]:{closed}").parse().expect("address");
    let clusters = vec![
        // The endpoint's own address refuses: the next one answers.
        cluster("fallback", v4_closed, &[v4], json!({})),
        // The first address's family first (IPv4 here).
        cluster("v4_first", v4, &[v6], json!({})),
        // IPv6 first, though listed second.
        cluster("v6_first", v4, &[v6], first_family("V6", 1)),
        // IPv6 first, refused: then IPv4.
        cluster("v6_refused", v4, &[v6_closed], first_family("V6", 1)),
        // Two IPv4 addresses first, the first refused: the second before the IPv6 one.
        cluster("two_v4", v6, &[v4_closed, v4], first_family("V4", 2)),
    ];
    let routes = clusters
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            route(&format!("/{name}"), &name)
        })
        .collect();
    to_yaml(&bootstrap(
        admin,
        vec![listener(
            "l",
            "127.0.0.1",
            listen,
            hcm("h", vec![vhost("v", &["*"], routes)]),
        )],
        clusters,
    ))
}

#[tokio::test]
async fn additional_addresses_are_tried_in_happy_eyeballs_order_as_envoy_tries_them() {
    run_for(Duration::from_secs(60), async {
        let v4 = EchoUpstream::with_options_at(
            EchoOptions::named("v4"),
            "127.0.0.1:0".parse().expect("address"),
        )
        .await;
        let v6 = EchoUpstream::with_options_at(
            EchoOptions::named("v6"),
            "[::1]:0".parse().expect("address"),
        )
        .await;
        let expect = [
            ("/fallback", "v4"),
            ("/v4_first", "v4"),
            ("/v6_first", "v6"),
            ("/v6_refused", "v4"),
            ("/two_v4", "v4"),
        ];
        for kind in [Kind::Envoy, Kind::under_test()] {
            let (admin, listen) = (free_port(), free_port());
            let _proxy = ProxyProcess::start(
                kind,
                &config(admin, listen, v4.addr, v6.addr),
                &["--concurrency", "1"],
            )
            .await;
            for (path, want) in expect {
                let r = http1_once(&format!("127.0.0.1:{listen}"), get(path, "h.example"))
                    .await
                    .expect("a response");
                assert_eq!(r.status, 200, "{}: {path}: {r:?}", kind.name());
                assert_eq!(
                    r.header("x-upstream"),
                    Some(want),
                    "{}: {path}",
                    kind.name()
                );
            }
        }
    })
    .await;
}

#[tokio::test]
async fn invalid_happy_eyeballs_configs_are_refused_by_both() {
    run_for(Duration::from_secs(30), async {
        let a: SocketAddr = "127.0.0.1:1".parse().expect("address");
        for (what, extra) in [
            ("a first family count of 0", first_family("V6", 0)),
            ("an unknown family", first_family("V5", 1)),
        ] {
            let cfg = to_yaml(&bootstrap(
                free_port(),
                vec![],
                vec![cluster("c", a, &[a], extra)],
            ));
            let file = write_config("happy-eyeballs", &cfg);
            for kind in [Kind::Envoy, Kind::under_test()] {
                let out = run_cli(kind, &["--mode", "validate", "-c", file.path()]).await;
                assert_ne!(out.code, Some(0), "{what}: {} took it", kind.name());
            }
        }
    })
    .await;
}
