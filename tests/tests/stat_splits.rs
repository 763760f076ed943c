//! The splits of a cluster's response stats against Envoy 1.40: `canary.` for hosts whose
//! `envoy.lb` metadata says `canary: true` or whose response says `x-envoy-upstream-canary:
//! true`, and `zone.<node's zone>.<host's zone>.` when both have a zone; counters and the
//! `upstream_rq_time` histograms, for answers and for a local reply charged to a host.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use skiff_tests::client::curl;
use skiff_tests::config::{bootstrap, cluster, hcm, listener, route, vhost};
use skiff_tests::run_for;
use skiff_tests::side_by_side::{pair, Side, Up};
use skiff_tests::upstream::{EchoOptions, EchoUpstream};

/// `up`'s endpoint is a canary in zone `zb`; `said`'s endpoint (in a locality with no zone)
/// calls itself one in its responses; `dead` (zone `zd`) refuses connections.
fn build(admin: u16, listen: u16, upstream: u16, said: u16, dead: u16) -> String {
    let vh = vhost(
        "all",
        &["*"],
        vec![
            route("/said", "said"),
            route("/dead", "dead"),
            route("/", "up"),
        ],
    );
    let mut up = cluster("up", &[upstream]);
    up["load_assignment"]["endpoints"][0]["locality"] = json!({"region": "r", "zone": "zb"});
    up["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["metadata"] =
        json!({"filter_metadata": {"envoy.lb": {"canary": true}}});
    let mut dead_c = cluster("dead", &[dead]);
    dead_c["load_assignment"]["endpoints"][0]["locality"] = json!({"zone": "zd"});
    let mut b = bootstrap(
        admin,
        vec![listener("l", "127.0.0.1", listen, hcm("split", vec![vh]))],
        vec![up, cluster("said", &[said]), dead_c],
    );
    b["node"] = json!({"id": "n", "cluster": "c", "locality": {"zone": "za"}});
    b["stats_flush_interval"] = json!("0.5s");
    b.to_string()
}

/// The counters and histogram counts of the splits, by name.
async fn splits(side: &Side) -> BTreeMap<String, String> {
    let text = side.proxy.admin().get("/stats").await.text();
    text.lines()
        .filter(|l| l.contains(".canary.") || l.contains(".zone."))
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| {
            // A histogram's quantiles depend on timing: only whether it holds values.
            let v = if v.starts_with("P0(") {
                "recorded".to_string()
            } else {
                v.to_string()
            };
            (k.to_string(), v)
        })
        .collect()
}

#[tokio::test]
async fn canary_and_zone_splits_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let mut o = EchoOptions::named("said");
        o.extra_headers = vec![("x-envoy-upstream-canary".into(), "true".into())];
        let said = EchoUpstream::with_options(o).await;
        let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let dead_port = dead.local_addr().expect("addr").port();
        drop(dead);
        let (e, s) = pair(Up::H1, |a, l, u| build(a, l, u, said.port(), dead_port)).await;
        for side in [&e, &s] {
            for (path, want) in [
                ("/a", 200),
                ("/status/503", 503),
                ("/b", 200),
                ("/said/1", 200),
                ("/said/status/404", 404),
                ("/dead", 503),
            ] {
                let r = curl(&[&format!("http://127.0.0.1:{}{path}", side.port)]).await;
                assert_eq!(r.resp.status, want, "{path}");
            }
        }
        // Histograms show in /stats once flushed.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let (se, ss) = (splits(&e).await, splits(&s).await);
        assert_eq!(se, ss, "\nenvoy: {se:#?}\nskiff: {ss:#?}");
        for k in [
            "cluster.up.canary.upstream_rq_200",
            "cluster.up.canary.upstream_rq_503",
            "cluster.up.canary.upstream_rq_completed",
            "cluster.up.zone.za.zb.upstream_rq_2xx",
            "cluster.said.canary.upstream_rq_404",
            "cluster.dead.zone.za.zd.upstream_rq_503",
        ] {
            assert!(ss.contains_key(k), "{k}: {ss:#?}");
        }
        assert_eq!(
            ss.get("cluster.up.canary.upstream_rq_time")
                .map(String::as_str),
            Some("recorded")
        );
    })
    .await
}
