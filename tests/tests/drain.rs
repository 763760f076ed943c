//! Shutdown: SIGTERM/SIGINT stop accepting, let in-flight requests finish within
//! --drain-time-s, and exit 0.
//!
//! Envoy 1.40 does not drain on SIGTERM (it exits at once), so these tests are skiff's own
//! contract; see tests/DIFFERENCES.md.

use std::time::{Duration, Instant};

use skiff_tests::client;
use skiff_tests::proxy::skiff_only;
use skiff_tests::upstream::EchoOptions;
use skiff_tests::{run, HttpFixture};
use tokio::net::TcpStream;

async fn in_flight_request_finishes(signal: &str) {
    let mut o = EchoOptions::named("u1");
    o.delay = Duration::from_millis(1500);
    let mut f = HttpFixture::with(o, |_| {}, &["--drain-time-s", "10"]).await;
    let addr = f.addr();
    let slow =
        tokio::spawn(async move { client::http1_once(&addr, client::get("/slow", "a")).await });
    f.up.rec.wait_requests(1, Duration::from_secs(5)).await;
    let sent = Instant::now();
    f.proxy.signal(signal);
    // New connections are refused (or closed without service) soon after the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = client::http1_once(&f.addr(), client::get("/late", "a")).await;
    assert!(
        late.is_err(),
        "a new request after SIG{signal} was served: {late:?}"
    );
    let r = slow
        .await
        .expect("task")
        .unwrap_or_else(|e| panic!("the in-flight request failed after SIG{signal}: {e}"));
    assert_eq!(r.status, 200);
    let status = f
        .proxy
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("the proxy did not exit after SIG{signal}"));
    assert!(status.success(), "exit status after SIG{signal}: {status}");
    assert!(
        sent.elapsed() < Duration::from_secs(8),
        "exit came {:?} after the signal; it should follow the last request",
        sent.elapsed()
    );
    assert!(
        f.up.rec.requests().iter().all(|r| r.path == "/slow"),
        "nothing new reached the upstream"
    );
}

#[tokio::test]
async fn sigterm_lets_in_flight_request_finish() {
    run(async {
        if skiff_only("sigterm_lets_in_flight_request_finish") {
            return;
        }
        in_flight_request_finishes("TERM").await;
    })
    .await
}

#[tokio::test]
async fn sigint_lets_in_flight_request_finish() {
    run(async {
        if skiff_only("sigint_lets_in_flight_request_finish") {
            return;
        }
        in_flight_request_finishes("INT").await;
    })
    .await
}

#[tokio::test]
async fn sigterm_idle_exits_promptly() {
    run(async {
        let mut f = HttpFixture::start().await;
        let started = Instant::now();
        f.proxy.signal("TERM");
        let status = f
            .proxy
            .wait_exit(Duration::from_secs(10))
            .await
            .expect("the proxy exits after SIGTERM");
        assert!(status.success(), "exit status {status}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "an idle proxy exits at once, took {:?}",
            started.elapsed()
        );
        assert!(
            TcpStream::connect(f.addr()).await.is_err(),
            "the listener is gone"
        );
    })
    .await
}

#[tokio::test]
async fn drain_time_bounds_shutdown() {
    run(async {
        if skiff_only("drain_time_bounds_shutdown") {
            return;
        }
        let mut o = EchoOptions::named("u1");
        o.delay = Duration::from_secs(20);
        let mut f = HttpFixture::with(o, |_| {}, &["--drain-time-s", "1"]).await;
        let addr = f.addr();
        let stuck =
            tokio::spawn(
                async move { client::http1_once(&addr, client::get("/stuck", "a")).await },
            );
        f.up.rec.wait_requests(1, Duration::from_secs(5)).await;
        let sent = Instant::now();
        f.proxy.signal("TERM");
        let status = f
            .proxy
            .wait_exit(Duration::from_secs(10))
            .await
            .expect("the proxy exits once --drain-time-s has passed");
        let took = sent.elapsed();
        assert!(status.success(), "exit status {status}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "exit {took:?} after SIGTERM with --drain-time-s 1"
        );
        let r = stuck.await.expect("task");
        assert!(
            r.as_ref().map(|r| r.status != 200).unwrap_or(true),
            "the stuck request cannot have succeeded: {r:?}"
        );
    })
    .await
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_on_drain() {
    run(async {
        if skiff_only("idle_keep_alive_connection_is_closed_on_drain") {
            return;
        }
        let mut f =
            HttpFixture::with(EchoOptions::named("u1"), |_| {}, &["--drain-time-s", "10"]).await;
        let mut c = client::Http1Client::connect(&f.addr())
            .await
            .expect("connect");
        assert_eq!(
            c.send(client::get("/ka", "a"))
                .await
                .expect("request")
                .status,
            200
        );
        let sent = Instant::now();
        f.proxy.signal("TERM");
        let status = f
            .proxy
            .wait_exit(Duration::from_secs(10))
            .await
            .expect("the proxy exits with an idle keep-alive connection open");
        assert!(status.success(), "exit status {status}");
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "an idle keep-alive connection must not hold the drain for --drain-time-s: {:?}",
            sent.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(c.is_closed(), "the idle connection was closed");
    })
    .await
}
