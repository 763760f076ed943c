//! A listener's `filter_chain_matcher` side by side with Envoy 1.40: the matching API picks a
//! filter chain by name from the connection's inputs (application protocol as http_inspector
//! detects it, source and destination addresses and ports), through exact and prefix maps and
//! Envoy's IP matcher (the longest range first, a non-exclusive range whose nested matcher
//! finds nothing passing on to shorter ones); a connection nothing matches goes to the default
//! chain, or is closed without one; one matched to a name no chain has is closed, default chain
//! or not (as Envoy's code does, whatever its documentation says). Each chain answers its own
//! name.

use std::time::Duration;

use skiff_tests::client;
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::{free_port, run_for};

/// A chain that answers every request with its name.
fn chain(name: &str) -> String {
    format!(
        r#"
    - name: {name}
      filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            virtual_hosts:
            - name: a
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                direct_response: {{status: 200, body: {{inline_string: "{name}"}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}"#
    )
}

/// The action naming `chain`.
fn pick(chain: &str) -> String {
    format!(
        r#"{{action: {{name: {chain}, typed_config: {{"@type": type.googleapis.com/google.protobuf.StringValue, value: {chain}}}}}}}"#
    )
}

const NET: &str = "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3";

fn config(admin: u16, ports: [u16; 4]) -> String {
    let inspector = r#"
    listener_filters:
    - name: envoy.filters.listener.http_inspector
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector}"#;
    // 0: h2c by the application protocol; the rest by the source address: 127.0.0.1/32 only
    // for a destination port that is not this one (so it passes on to 127.0.0.0/8).
    let l0 = format!(
        r#"
  - name: l0
    address: {{socket_address: {{address: 127.0.0.1, port_value: {p0}}}}}{inspector}
    filter_chains:{h2c}{host}{loopback}{other}
    filter_chain_matcher:
      matcher_tree:
        input: {{name: alpn, typed_config: {{"@type": {NET}.ApplicationProtocolInput}}}}
        exact_match_map:
          map:
            "'h2c'": {h2c_pick}
      on_no_match:
        matcher:
          matcher_tree:
            input: {{name: ip, typed_config: {{"@type": {NET}.SourceIPInput}}}}
            custom_match:
              name: ip
              typed_config:
                "@type": type.googleapis.com/xds.type.matcher.v3.IPMatcher
                range_matchers:
                - ranges: [{{address_prefix: 127.0.0.1, prefix_len: 32}}]
                  on_match:
                    matcher:
                      matcher_tree:
                        input: {{name: port, typed_config: {{"@type": {NET}.DestinationPortInput}}}}
                        exact_match_map:
                          map:
                            "1": {host_pick}
                - ranges: [{{address_prefix: 127.0.0.0, prefix_len: 8}}]
                  on_match: {loopback_pick}
                - ranges: [{{address_prefix: 0.0.0.0}}]
                  on_match: {other_pick}"#,
        p0 = ports[0],
        h2c = chain("h2c"),
        host = chain("host"),
        loopback = chain("loopback"),
        other = chain("other"),
        h2c_pick = pick("h2c"),
        host_pick = pick("host"),
        loopback_pick = pick("loopback"),
        other_pick = pick("other"),
    );
    // 1: by the destination address's prefix, a name no chain has, and the default chain.
    let l1 = format!(
        r#"
  - name: l1
    address: {{socket_address: {{address: 127.0.0.2, port_value: {p1}}}}}
    filter_chains:{vip}
    default_filter_chain:{default}
    filter_chain_matcher:
      matcher_tree:
        input: {{name: ip, typed_config: {{"@type": {NET}.DestinationIPInput}}}}
        prefix_match_map:
          map:
            "127.0.0.": {{matcher: {{matcher_tree: {{input: {{name: port, typed_config: {{"@type": {NET}.DestinationPortInput}}}}, exact_match_map: {{map: {{"{p1}": {missing}}}}}}}}}}}
            "127.0.": {vip_pick}"#,
        p1 = ports[1],
        vip = chain("vip"),
        default = chain("default").replace("\n    - name: default", "\n      name: default"),
        missing = pick("missing"),
        vip_pick = pick("vip"),
    );
    // 3: nothing matches: the default chain.
    let l3 = format!(
        r#"
  - name: l3
    address: {{socket_address: {{address: 127.0.0.3, port_value: {p3}}}}}
    filter_chains:{vip}
    default_filter_chain:{default}
    filter_chain_matcher:
      matcher_tree:
        input: {{name: ip, typed_config: {{"@type": {NET}.DestinationIPInput}}}}
        exact_match_map:
          map:
            "10.0.0.1": {vip_pick}"#,
        p3 = ports[3],
        vip = chain("vip"),
        default = chain("default").replace("\n    - name: default", "\n      name: default"),
        vip_pick = pick("vip"),
    );
    // 2: nothing matches and there is no default chain.
    let l2 = format!(
        r#"
  - name: l2
    address: {{socket_address: {{address: 127.0.0.1, port_value: {p2}}}}}
    filter_chains:{only}
    filter_chain_matcher:
      matcher_tree:
        input: {{name: port, typed_config: {{"@type": {NET}.SourcePortInput}}}}
        exact_match_map:
          map:
            "1": {only_pick}"#,
        p2 = ports[2],
        only = chain("only"),
        only_pick = pick("only"),
    );
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:{l0}{l1}{l2}{l3}
"#
    )
}

/// What a client gets: the chain's name, or how the connection failed.
async fn outcome(addr: &str, h2: bool) -> String {
    let r = if h2 {
        match client::H2Client::connect(addr).await {
            Ok(c) => c.send(client::h2_request("GET", "a", "/", "")).await,
            Err(e) => Err(e),
        }
    } else {
        client::http1_once(addr, client::get("/", "a")).await
    };
    match r {
        Ok(r) => format!("{} {}", r.status, r.text()),
        Err(_) => "no answer".to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_chain_matcher_picks_chains_as_envoy_does() {
    run_for(Duration::from_secs(60), async {
        let mut got = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let ports = [free_port(), free_port(), free_port(), free_port()];
            let p = ProxyProcess::start(kind, &config(free_port(), ports), &[]).await;
            let mut seen = Vec::new();
            for (i, (addr, h2)) in [
                (format!("127.0.0.1:{}", ports[0]), false),
                (format!("127.0.0.1:{}", ports[0]), true),
                (format!("127.0.0.2:{}", ports[1]), false),
                (format!("127.0.0.1:{}", ports[2]), false),
                (format!("127.0.0.3:{}", ports[3]), false),
            ]
            .into_iter()
            .enumerate()
            {
                seen.push(format!("case {i} h2={h2}: {}", outcome(&addr, h2).await));
            }
            drop(p);
            got.push(seen);
        }
        assert!(
            got[0][0].ends_with("200 loopback"),
            "Envoy picks the chain: {:?}",
            got[0]
        );
        assert_eq!(got[0], got[1], "chains picked (Envoy, skiff)");
    })
    .await;
}
