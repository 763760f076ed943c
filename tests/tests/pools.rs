//! Upstream connection pools: HTTP/1.1 reuse, HTTP/2 multiplexing, stream limits, GOAWAY, and
//! one pool per worker.

use std::time::Duration;

use bytes::Bytes;
use skiff_tests::client::{self, curl, H2Client};
use skiff_tests::config::{bootstrap, h2_cluster, hcm, listener, route, to_yaml, vhost};
use skiff_tests::proxy::{start_under_test, ProxyProcess};
use skiff_tests::upstream::{EchoOptions, H2Options, H2Upstream};
use skiff_tests::{free_port, run, HttpFixture};

async fn concurrent_gets(port: u16, n: usize, prefix: &str) -> Vec<u16> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let path = format!("{prefix}/{i}");
        set.spawn(async move {
            client::http1_once(&format!("127.0.0.1:{port}"), client::get(&path, "a"))
                .await
                .map(|r| r.status)
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(
            r.expect("task")
                .unwrap_or_else(|e| panic!("request failed: {e}")),
        );
    }
    out
}

#[tokio::test]
async fn h1_sequential_requests_reuse_one_connection() {
    run(async {
        let f = HttpFixture::with(EchoOptions::named("u1"), |_| {}, &["--concurrency", "1"]).await;
        for i in 0..5 {
            // A new downstream connection each time: the upstream connection is still reused.
            let r = curl(&[&f.url(&format!("/seq/{i}"))]).await;
            assert_eq!(r.resp.status, 200);
        }
        assert_eq!(
            f.up.rec.connections(),
            1,
            "one upstream connection for 5 sequential requests"
        );
        assert!(f.up.rec.requests().iter().all(|r| r.conn == 0));
        let admin = f.proxy.admin();
        assert_eq!(admin.counter("cluster.backend.upstream_cx_total").await, 1);
        assert_eq!(
            admin
                .counter("cluster.backend.upstream_cx_http1_total")
                .await,
            1
        );
        assert_eq!(admin.counter("cluster.backend.upstream_rq_total").await, 5);
    })
    .await
}

#[tokio::test]
async fn h1_concurrent_requests_use_one_connection_each() {
    run(async {
        let mut o = EchoOptions::named("u1");
        o.delay = Duration::from_millis(400);
        let f = HttpFixture::with(o, |_| {}, &["--concurrency", "1"]).await;
        let statuses = concurrent_gets(f.port, 6, "/conc").await;
        assert_eq!(statuses, vec![200; 6]);
        assert_eq!(
            f.up.rec.connections(),
            6,
            "HTTP/1.1: one outstanding request per connection"
        );
        let admin = f.proxy.admin();
        assert_eq!(
            admin
                .counter("cluster.backend.upstream_cx_http1_total")
                .await,
            6
        );
        // The six idle connections are reused afterwards.
        let statuses = concurrent_gets(f.port, 6, "/again").await;
        assert_eq!(statuses, vec![200; 6]);
        assert_eq!(f.up.rec.connections(), 6, "idle connections were reused");
        assert_eq!(admin.counter("cluster.backend.upstream_cx_total").await, 6);
    })
    .await
}

/// One pool per worker: sequential requests spread over workers use at most one upstream
/// connection per worker that served them.
#[tokio::test]
async fn one_pool_per_worker() {
    run(async {
        let f = HttpFixture::with(EchoOptions::named("u1"), |_| {}, &["--concurrency", "2"]).await;
        for i in 0..20 {
            let r = curl(&[&f.url(&format!("/pw/{i}"))]).await;
            assert_eq!(r.resp.status, 200);
        }
        let admin = f.proxy.admin();
        let l = format!("listener.127.0.0.1_{}", f.port);
        let mut busy = 0;
        for w in 0..2 {
            if admin
                .stat(&format!("{l}.worker_{w}.downstream_cx_total"))
                .await
                .unwrap_or(0)
                > 0
            {
                busy += 1;
            }
        }
        assert!(busy >= 1);
        assert_eq!(
            f.up.rec.connections(),
            busy,
            "each worker that served requests has its own upstream connection"
        );
    })
    .await
}

async fn h2_front(up: &H2Upstream, cluster_limit: Option<u32>) -> (ProxyProcess, u16) {
    let (admin, listen) = (free_port(), free_port());
    let v = bootstrap(
        admin,
        vec![listener(
            "front",
            "127.0.0.1",
            listen,
            hcm(
                "front",
                vec![vhost("v", &["*"], vec![route("/", "pool_h2")])],
            ),
        )],
        vec![h2_cluster("pool_h2", &[up.port()], cluster_limit)],
    );
    (
        start_under_test(&to_yaml(&v), &["--concurrency", "1"]).await,
        listen,
    )
}

#[tokio::test]
async fn h2_sequential_requests_share_one_connection() {
    run(async {
        let up = H2Upstream::start("h2").await;
        let (p, port) = h2_front(&up, None).await;
        for i in 0..5 {
            let r = curl(&[&format!("http://127.0.0.1:{port}/s/{i}")]).await;
            assert_eq!(r.resp.status, 200);
        }
        assert_eq!(up.rec.connections(), 1);
        assert_eq!(
            p.admin()
                .counter("cluster.pool_h2.upstream_cx_http2_total")
                .await,
            1
        );
    })
    .await
}

#[tokio::test]
async fn h2_concurrent_requests_are_multiplexed() {
    run(async {
        let mut o = H2Options::named("h2");
        o.delay = Duration::from_millis(400);
        let up = H2Upstream::with_options(o).await;
        let (p, port) = h2_front(&up, None).await;
        let statuses = concurrent_gets(port, 6, "/mux").await;
        assert_eq!(statuses, vec![200; 6]);
        assert_eq!(
            up.rec.connections(),
            1,
            "six concurrent requests on one h2 connection"
        );
        assert!(up.max_concurrent_seen() >= 2);
        let admin = p.admin();
        assert_eq!(
            admin
                .counter("cluster.pool_h2.upstream_cx_http2_total")
                .await,
            1
        );
        assert_eq!(admin.counter("cluster.pool_h2.upstream_rq_total").await, 6);
    })
    .await
}

/// Reference §1.8 [V]: `max_concurrent_streams: 3`, 6 concurrent requests → 2 connections.
#[tokio::test]
async fn h2_cluster_stream_limit_opens_new_connection() {
    run(async {
        let mut o = H2Options::named("h2");
        o.delay = Duration::from_millis(400);
        let up = H2Upstream::with_options(o).await;
        let (p, port) = h2_front(&up, Some(3)).await;
        let statuses = concurrent_gets(port, 6, "/lim").await;
        assert_eq!(statuses, vec![200; 6]);
        assert!(
            up.max_concurrent_seen() <= 3,
            "saw {}",
            up.max_concurrent_seen()
        );
        assert_eq!(up.rec.connections(), 2);
        let admin = p.admin();
        assert_eq!(
            admin
                .counter("cluster.pool_h2.upstream_cx_http2_total")
                .await,
            2
        );
        assert_eq!(admin.counter("cluster.pool_h2.upstream_rq_total").await, 6);
    })
    .await
}

/// The peer's SETTINGS_MAX_CONCURRENT_STREAMS is honoured: the pool opens another connection
/// instead of queueing or failing streams. One request first, so the proxy has the peer's
/// SETTINGS before the burst: Envoy 1.40 sends streams over the limit on a connection whose
/// SETTINGS have not arrived yet, and those are refused (503) without a retry policy.
#[tokio::test]
async fn h2_peer_stream_limit_opens_new_connection() {
    run(async {
        let mut o = H2Options::named("h2");
        o.delay = Duration::from_millis(400);
        o.max_concurrent_streams = Some(3);
        let up = H2Upstream::with_options(o).await;
        let (p, port) = h2_front(&up, None).await;
        let warm = curl(&[&format!("http://127.0.0.1:{port}/warm")]).await;
        assert_eq!(warm.resp.status, 200);
        let statuses = concurrent_gets(port, 6, "/peer").await;
        assert_eq!(statuses, vec![200; 6]);
        assert!(
            up.max_concurrent_seen() <= 3,
            "saw {}",
            up.max_concurrent_seen()
        );
        assert_eq!(
            up.rec.connections(),
            2,
            "a second connection for streams 4-6"
        );
        let admin = p.admin();
        assert_eq!(
            admin
                .counter("cluster.pool_h2.upstream_cx_http2_total")
                .await,
            2
        );
    })
    .await
}

/// Reference §1.8 [V]: the upstream sends GOAWAY after 2 requests; 6 sequential requests all
/// succeed over 3 connections.
#[tokio::test]
async fn h2_goaway_moves_to_new_connection() {
    run(async {
        let mut o = H2Options::named("h2");
        o.goaway_after = Some(2);
        let up = H2Upstream::with_options(o).await;
        let (p, port) = h2_front(&up, None).await;
        for i in 0..6 {
            let r = curl(&[&format!("http://127.0.0.1:{port}/ga/{i}")]).await;
            assert_eq!(r.resp.status, 200, "request {i}: {r:?}");
        }
        assert_eq!(up.rec.connections(), 3);
        assert_eq!(up.goaways_sent(), 3);
        let conns: Vec<usize> = up.rec.requests().iter().map(|r| r.conn).collect();
        assert_eq!(conns, [0, 0, 1, 1, 2, 2]);
        p.admin()
            .wait_stat(
                "cluster.pool_h2.upstream_cx_close_notify",
                Duration::from_secs(5),
                |v| v == 3,
            )
            .await;
    })
    .await
}

/// A GOAWAY while streams are in flight: the streams the upstream accepted finish normally.
#[tokio::test]
async fn h2_goaway_does_not_fail_accepted_streams() {
    run(async {
        let mut o = H2Options::named("h2");
        o.goaway_after = Some(2);
        o.delay = Duration::from_millis(300);
        let up = H2Upstream::with_options(o).await;
        let (_p, port) = h2_front(&up, None).await;
        let c = H2Client::connect(&format!("127.0.0.1:{port}"))
            .await
            .expect("h2c");
        let mut set = tokio::task::JoinSet::new();
        for i in 0..2 {
            let c = c.clone();
            set.spawn(async move {
                c.send(client::h2_request(
                    "GET",
                    "a",
                    &format!("/inflight/{i}"),
                    Bytes::new(),
                ))
                .await
            });
        }
        up.rec.wait_requests(2, Duration::from_secs(5)).await;
        // GOAWAY is on the wire now; a new request must go to a new connection.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = c
            .send(client::h2_request(
                "GET",
                "a",
                "/after-goaway",
                Bytes::new(),
            ))
            .await
            .expect("request after GOAWAY");
        assert_eq!(r.status, 200);
        while let Some(r) = set.join_next().await {
            let r = r
                .expect("task")
                .expect("in-flight stream survives the GOAWAY");
            assert_eq!(r.status, 200);
        }
        let reqs = up.rec.requests();
        let after = reqs
            .iter()
            .find(|r| r.path == "/after-goaway")
            .expect("recorded");
        assert_eq!(
            after.conn, 1,
            "the request after GOAWAY used a new connection"
        );
    })
    .await
}
