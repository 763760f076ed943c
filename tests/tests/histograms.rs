//! Histograms (`/stats`, `/stats?format=json`, `/stats/prometheus`) against Envoy 1.40: which
//! exist, when they hold values, their Prometheus buckets (`histogram_bucket_settings`), counts
//! and, where the values do not depend on timing, their quantiles. Slow requests (the upstream
//! waits 200 ms) and fast ones fall on either side of a 100 ms bucket on both proxies; an
//! upstream connection carries two requests (`max_requests_per_connection`), so
//! `upstream_rq_per_cx` is the same on both.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::json;
use skiff_tests::client::curl;
use skiff_tests::config::{bootstrap, cluster, hcm, listener, route, vhost};
use skiff_tests::run_for;
use skiff_tests::side_by_side::{pair, Side, Up};

/// Envoy's histograms skiff does not keep (tests/DIFFERENCES.md).
fn envoy_only(name: &str) -> bool {
    name.starts_with("http.admin.")
        || name.starts_with("listener.admin.")
        || name.ends_with(".connections_accepted_per_socket_event")
}

fn build(admin: u16, listen: u16, upstream: u16) -> String {
    let mut vh = vhost("all", &["*"], vec![route("/", "up")]);
    vh["virtual_clusters"] = json!([{
        "name": "slow",
        "headers": [{"name": ":path", "string_match": {"prefix": "/slow"}}]
    }]);
    let mut up = cluster("up", &[upstream]);
    up["max_requests_per_connection"] = json!(2);
    let mut b = bootstrap(
        admin,
        vec![listener("l", "127.0.0.1", listen, hcm("hist", vec![vh]))],
        vec![up, cluster("idle", &[upstream])],
    );
    b["stats_flush_interval"] = json!("0.5s");
    b["stats_config"] = json!({
        "histogram_bucket_settings": [{
            "match": {"suffix": "upstream_rq_time"},
            "buckets": [1000, 100, 50]
        }]
    });
    b.to_string()
}

/// The histogram lines of `/stats` (`name: P0(…) …` or `name: No recorded values`).
async fn histogram_lines(side: &Side, query: &str) -> BTreeMap<String, String> {
    let text = side
        .proxy
        .admin()
        .get(&format!("/stats{query}"))
        .await
        .text();
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(_, v)| v.starts_with("P0(") || *v == "No recorded values")
        .filter(|(k, _)| !envoy_only(k))
        .map(|(k, v)| (unport(side, k), v.to_string()))
        .collect()
}

/// A stat name or series with the side's listener port as `L`.
fn unport(side: &Side, s: &str) -> String {
    s.replace(&format!("_{}", side.port), "_L")
}

/// The cumulative values of a `/stats` histogram line.
fn cumulative(line: &str) -> Vec<String> {
    line.split(' ')
        .filter_map(|p| p.split_once(','))
        .map(|(_, c)| c.trim_end_matches(')').to_string())
        .collect()
}

/// The Prometheus samples of histogram families, by series (the `le` label included).
async fn prometheus(side: &Side) -> BTreeMap<String, String> {
    let text = side.proxy.admin().get("/stats/prometheus").await.text();
    let mut families = BTreeSet::new();
    let mut out = BTreeMap::new();
    for l in text.lines() {
        if let Some(f) = l
            .strip_prefix("# TYPE ")
            .and_then(|t| t.strip_suffix(" histogram"))
        {
            families.insert(f.to_string());
            continue;
        }
        let Some((series, value)) = l.rsplit_once(' ') else {
            continue;
        };
        if families
            .iter()
            .any(|f| series.starts_with(&format!("{f}_")))
        {
            out.insert(unport(side, series), value.to_string());
        }
    }
    out
}

async fn traffic(side: &Side) {
    for path in [
        "/fast/1",
        "/slow/1?sleep=200",
        "/fast/2",
        "/slow/2?sleep=200",
    ] {
        let r = curl(&[&format!("http://127.0.0.1:{}{path}", side.port)]).await;
        assert_eq!(r.resp.status, 200, "{path}");
    }
}

#[tokio::test]
async fn histograms_as_envoy() {
    run_for(Duration::from_secs(60), async {
        let (e, s) = pair(Up::H1, build).await;
        // Before any request: the same histograms, and only initialization has a value.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let (he, hs) = (histogram_lines(&e, "").await, histogram_lines(&s, "").await);
        assert_eq!(
            he.keys().collect::<Vec<_>>(),
            hs.keys().collect::<Vec<_>>(),
            "histograms\nenvoy: {he:#?}\nskiff: {hs:#?}"
        );
        for (name, v) in &hs {
            let used = name == "server.initialization_time_ms";
            assert_eq!(v != "No recorded values", used, "{name}: {v}");
        }

        tokio::join!(traffic(&e), traffic(&s));
        // The next flush merges what the workers recorded.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let (he, hs) = (histogram_lines(&e, "").await, histogram_lines(&s, "").await);
        assert_eq!(
            he.keys().collect::<Vec<_>>(),
            hs.keys().collect::<Vec<_>>(),
            "histograms after traffic"
        );
        for (name, v) in &he {
            assert_eq!(
                v == "No recorded values",
                hs[name] == "No recorded values",
                "{name}: envoy {v}, skiff {}",
                hs[name]
            );
        }
        // upstream_rq_time is made when first recorded, as Envoy makes it.
        assert!(!hs.contains_key("cluster.idle.upstream_rq_time"));
        assert_eq!(
            he.contains_key("cluster.up.upstream_rq_time"),
            hs.contains_key("cluster.up.upstream_rq_time")
        );
        assert_eq!(hs["cluster.idle.upstream_rq_per_cx"], "No recorded values");
        // Two connections of two requests each: the same quantiles.
        let per_cx = "cluster.up.upstream_rq_per_cx";
        assert_eq!(cumulative(&he[per_cx]), cumulative(&hs[per_cx]), "{per_cx}");
        assert_eq!(cumulative(&hs[per_cx])[0], "2.033333333333333");
        // A flush with nothing new: the interval values are gone, the cumulative ones stay.
        for (side, lines) in [("envoy", &he), ("skiff", &hs)] {
            assert!(
                lines[per_cx].starts_with("P0(nan,"),
                "{side}: {}",
                lines[per_cx]
            );
        }

        // usedonly: the same names.
        let (ue, us) = (
            histogram_lines(&e, "?usedonly").await,
            histogram_lines(&s, "?usedonly").await,
        );
        assert_eq!(
            ue.keys().collect::<Vec<_>>(),
            us.keys().collect::<Vec<_>>(),
            "usedonly"
        );

        // type=: one kind of stat only, the same on both.
        for kind in ["Histograms", "Counters", "Foo"] {
            let names = |side: &Side| {
                let a = side.proxy.admin();
                async move {
                    let r = a.get(&format!("/stats?type={kind}&filter=cluster.up.upstream_(rq_time|rq_total|cx_length)")).await;
                    (r.status, r.text().lines().map(|l| l.split(':').next().unwrap_or("").to_string()).collect::<Vec<_>>())
                }
            };
            assert_eq!(names(&e).await, names(&s).await, "type={kind}");
        }

        // Prometheus: the buckets (custom ones for upstream_rq_time), sums of counts.
        let (pe, ps) = (prometheus(&e).await, prometheus(&s).await);
        let wanted = |k: &String| {
            !k.ends_with("_sum}") && !k.contains("_sum{") && {
                let name = k.split('{').next().unwrap_or("");
                !name.contains("admin")
                    && !name.contains("connections_accepted_per_socket_event")
                    && !k.contains("envoy_http_conn_manager_prefix=\"admin\"")
                    && !k.contains("envoy_listener_address=\"admin\"")
            }
        };
        let timed = |k: &str| k.contains("_ms_") || k.contains("_time_");
        for (k, v) in pe.iter().filter(|(k, _)| wanted(k)) {
            if k.contains("initialization_time") {
                continue;
            }
            let Some(sv) = ps.get(k) else {
                panic!("skiff has no {k}\n{ps:#?}");
            };
            // Timings only where they cannot differ: counts, and the 100 ms bucket edges.
            let exact = !timed(k)
                || k.contains("_count")
                || k.contains("le=\"+Inf\"")
                || k.contains("upstream_rq_time_bucket");
            if exact && !(k.contains("length_ms") && k.contains("_bucket")) {
                assert_eq!(v, sv, "{k}");
            }
        }
        let rq_time = "envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"up\",le=\"100\"}";
        assert_eq!(ps.get(rq_time).map(String::as_str), Some("2"), "{ps:#?}");
        let le = |p: &BTreeMap<String, String>| {
            p.keys()
                .filter(|k| {
                    k.starts_with("envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"up\"")
                })
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(le(&pe), le(&ps));
        assert_eq!(le(&ps).len(), 4, "three buckets and +Inf");
        // Per origin: the client is external (no x-envoy-internal).
        let ext = "envoy_cluster_external_upstream_rq_time_count{envoy_cluster_name=\"up\"}";
        assert_eq!(ps.get(ext).map(String::as_str), Some("4"), "{ps:#?}");
        for side in [&e, &s] {
            let a = side.proxy.admin();
            assert_eq!(a.counter("cluster.up.external.upstream_rq_200").await, 4);
            assert_eq!(a.counter("cluster.up.external.upstream_rq_2xx").await, 4);
        }
        let vc = "envoy_vhost_vcluster_upstream_rq_time_count";
        let vcount = |p: &BTreeMap<String, String>| {
            p.iter()
                .filter(|(k, _)| k.starts_with(vc) && k.contains("slow"))
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(vcount(&pe), vcount(&ps), "virtual cluster");

        // JSON: the same quantiles announced, the same cumulative values for rq_per_cx.
        let json = |side: &Side| {
            let a = side.proxy.admin();
            async move {
                let r = a.get("/stats?format=json&filter=upstream_rq_per_cx").await;
                serde_json::from_slice::<serde_json::Value>(&r.body).expect("json")
            }
        };
        let (je, js) = (json(&e).await, json(&s).await);
        let h = |j: &serde_json::Value| j["stats"][0]["histograms"].clone();
        assert_eq!(h(&je)["supported_quantiles"], h(&js)["supported_quantiles"]);
        let cum = |j: &serde_json::Value| {
            h(j)["computed_quantiles"][0]["values"].as_array().map(|v| {
                v.iter()
                    .map(|x| x["cumulative"].clone())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(cum(&je), cum(&js), "json\nenvoy {je}\nskiff {js}");
        assert_eq!(
            h(&js)["computed_quantiles"][0]["values"][0]["interval"],
            json!(null)
        );
    })
    .await
}
