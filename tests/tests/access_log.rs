//! Access logs (reference §3): the default format, text_format_source, stdout/stderr/file sinks.

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use skiff_tests::client::{self, curl, H2Client};
use skiff_tests::config;
use skiff_tests::upstream::EchoOptions;
use skiff_tests::{is_uuid, run, HttpFixture};

/// The fields of a default-format line.
#[derive(Debug)]
struct DefaultLine {
    start: String,
    request: String,
    code: String,
    flags: String,
    rx: String,
    tx: String,
    duration: String,
    svc_time: String,
    xff: String,
    ua: String,
    id: String,
    authority: String,
    upstream: String,
}

/// Parses `[START] "REQ" CODE FLAGS RX TX DUR SVC "XFF" "UA" "ID" "AUTH" "UPSTREAM"`.
fn parse_default(line: &str) -> DefaultLine {
    let (start, rest) = line
        .strip_prefix('[')
        .and_then(|l| l.split_once("] "))
        .unwrap_or_else(|| panic!("no [START_TIME] in {line:?}"));
    let q: Vec<&str> = rest.split('"').collect();
    assert_eq!(q.len(), 13, "unexpected shape: {line:?}");
    let nums: Vec<&str> = q[2].split_whitespace().collect();
    assert_eq!(nums.len(), 6, "unexpected numeric fields: {line:?}");
    DefaultLine {
        start: start.to_string(),
        request: q[1].to_string(),
        code: nums[0].to_string(),
        flags: nums[1].to_string(),
        rx: nums[2].to_string(),
        tx: nums[3].to_string(),
        duration: nums[4].to_string(),
        svc_time: nums[5].to_string(),
        xff: q[3].to_string(),
        ua: q[5].to_string(),
        id: q[7].to_string(),
        authority: q[9].to_string(),
        upstream: q[11].to_string(),
    }
}

fn is_start_time(s: &str) -> bool {
    // 2026-11-23T10:15:44.810Z
    let b = s.as_bytes();
    s.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
        && s.chars()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19, 23].contains(&i) || c.is_ascii_digit())
}

#[tokio::test]
async fn default_format_on_stdout() {
    run(async {
        let f = HttpFixture::start().await;
        let r = curl(&["-A", "log-agent/1", &f.url("/logged?q=1")]).await;
        assert_eq!(r.resp.status, 200);
        let line = f
            .proxy
            .wait_stdout_line(Duration::from_secs(5), |l| l.contains("/logged?q=1"))
            .await;
        let d = parse_default(&line);
        assert!(
            is_start_time(&d.start),
            "START_TIME {:?} in {line:?}",
            d.start
        );
        assert_eq!(d.request, "GET /logged?q=1 HTTP/1.1");
        assert_eq!(d.code, "200");
        assert_eq!(d.flags, "-");
        assert_eq!(d.rx, "0");
        assert_eq!(
            d.tx,
            r.resp.body.len().to_string(),
            "BYTES_SENT is the body length"
        );
        assert!(d.duration.parse::<u64>().is_ok(), "{line:?}");
        assert_eq!(
            Some(d.svc_time.as_str()),
            r.resp.header("x-envoy-upstream-service-time"),
            "{line:?}"
        );
        assert_eq!(d.xff, "-");
        assert_eq!(d.ua, "log-agent/1");
        assert!(is_uuid(&d.id), "{line:?}");
        assert_eq!(
            d.id,
            f.up.rec.last().header("x-request-id").unwrap_or_default()
        );
        assert_eq!(d.authority, format!("127.0.0.1:{}", f.port));
        assert_eq!(d.upstream, f.up.addr.to_string());
    })
    .await
}

#[tokio::test]
async fn default_format_post_counts_bytes_received() {
    run(async {
        let f = HttpFixture::start().await;
        curl(&["--data-binary", "0123456789", &f.url("/posted")]).await;
        let line = f
            .proxy
            .wait_stdout_line(Duration::from_secs(5), |l| l.contains("/posted"))
            .await;
        let d = parse_default(&line);
        assert_eq!(d.request, "POST /posted HTTP/1.1");
        assert_eq!(d.rx, "10");
    })
    .await
}

#[tokio::test]
async fn default_format_h2_protocol() {
    run(async {
        let f = HttpFixture::start().await;
        let c = H2Client::connect(&f.addr()).await.expect("h2c");
        c.send(client::h2_request(
            "GET",
            "h2.example.com",
            "/h2log",
            Bytes::new(),
        ))
        .await
        .expect("h2 request");
        let line = f
            .proxy
            .wait_stdout_line(Duration::from_secs(5), |l| l.contains("/h2log"))
            .await;
        let d = parse_default(&line);
        assert_eq!(d.request, "GET /h2log HTTP/2");
        assert_eq!(d.authority, "h2.example.com");
        assert_eq!(d.ua, "-");
    })
    .await
}

#[tokio::test]
async fn local_reply_404_line() {
    run(async {
        let f = HttpFixture::with(
            EchoOptions::named("u1"),
            |v| {
                config::route_config(v)["virtual_hosts"][0]["routes"][0]["match"] =
                    json!({ "prefix": "/only" });
            },
            &[],
        )
        .await;
        curl(&[&f.url("/missing")]).await;
        let line = f
            .proxy
            .wait_stdout_line(Duration::from_secs(5), |l| l.contains("/missing"))
            .await;
        let d = parse_default(&line);
        assert_eq!(
            (d.code.as_str(), d.flags.as_str()),
            ("404", "NR"),
            "{line:?}"
        );
        assert_eq!(d.tx, "0");
        assert_eq!(d.svc_time, "-");
        assert_eq!(d.upstream, "-");
    })
    .await
}

#[tokio::test]
async fn text_format_source_to_file() {
    run(async {
        let dir = skiff_tests::scratch_dir("alog");
        let path = dir.join("access.log");
        let path_s = path.to_str().expect("utf-8").to_string();
        let fmt = "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_HOST% %REQ(X-CUSTOM)% %RESP(X-UPSTREAM)%\n";
        let f = HttpFixture::with(
            EchoOptions::named("u1"),
            |v| {
                config::hcm_config(v)["access_log"] = json!([config::file_log(&path_s, Some(fmt))]);
            },
            &[],
        )
        .await;
        curl(&["-H", "x-custom: hello", &f.url("/f?x=1")]).await;
        curl(&[&f.url("/g")]).await;
        let want1 = format!("GET /f?x=1 HTTP/1.1 200 - {} hello u1", f.up.addr);
        let want2 = format!("GET /g HTTP/1.1 200 - {} - u1", f.up.addr);
        f.proxy
            .wait_file_line(&path, Duration::from_secs(5), |l| l == want1)
            .await;
        f.proxy
            .wait_file_line(&path, Duration::from_secs(5), |l| l == want2)
            .await;
        assert!(
            !f.proxy.stdout().contains("/f?x=1"),
            "the stdout logger was replaced by the file logger"
        );
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

#[tokio::test]
async fn stderr_logger() {
    run(async {
        let f = HttpFixture::with(
            EchoOptions::named("u1"),
            |v| {
                config::hcm_config(v)["access_log"] = json!([{
                    "name": "envoy.access_loggers.stderr",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
                        "log_format": { "text_format_source": { "inline_string": "ALOG %RESPONSE_CODE% %REQ(:PATH)%\n" } }
                    }
                }]);
            },
            &[],
        )
        .await;
        curl(&[&f.url("/to-stderr")]).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !f.proxy.stderr().contains("ALOG 200 /to-stderr") {
            assert!(
                std::time::Instant::now() < deadline,
                "no `ALOG 200 /to-stderr` on stderr:\n{}",
                f.proxy.logs_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
}

#[tokio::test]
async fn file_logger_default_format() {
    run(async {
        let dir = skiff_tests::scratch_dir("alog-default");
        let path = dir.join("access.log");
        let path_s = path.to_str().expect("utf-8").to_string();
        let f = HttpFixture::with(
            EchoOptions::named("u1"),
            |v| {
                config::hcm_config(v)["access_log"] = json!([config::file_log(&path_s, None)]);
            },
            &[],
        )
        .await;
        curl(&["-A", "file-agent", &f.url("/to-file")]).await;
        let line = f
            .proxy
            .wait_file_line(&path, Duration::from_secs(5), |l| l.contains("/to-file"))
            .await;
        let d = parse_default(&line);
        assert_eq!(d.request, "GET /to-file HTTP/1.1");
        assert_eq!((d.code.as_str(), d.flags.as_str()), ("200", "-"));
        assert_eq!(d.ua, "file-agent");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// How a field of the side-by-side line is compared.
#[derive(Clone, Copy, Debug)]
enum Cmp {
    /// Byte for byte.
    Exact,
    /// A number that depends on timing, ports or connection counts: only "a number" or `-`.
    Number,
    /// An address whose port is picked per run.
    Addr,
    /// A UUID.
    Uuid,
    /// Text whose digits depend on the clock: compared with every digit masked.
    Shape,
}

/// Command operators Envoy 1.40 has and skiff now honours, each with how to compare it.
const OPERATORS: &[(&str, Cmp)] = &[
    ("%UPSTREAM_TRANSPORT_FAILURE_REASON%", Cmp::Exact),
    ("%UPSTREAM_LOCAL_ADDRESS%", Cmp::Addr),
    ("%UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%", Cmp::Exact),
    ("%UPSTREAM_LOCAL_PORT%", Cmp::Number),
    ("%UPSTREAM_REMOTE_ADDRESS%", Cmp::Addr),
    ("%UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", Cmp::Exact),
    ("%UPSTREAM_REMOTE_PORT%", Cmp::Number),
    ("%UPSTREAM_HOST%", Cmp::Addr),
    ("%UPSTREAM_HOST_NAME%", Cmp::Addr),
    ("%UPSTREAM_CLUSTER%", Cmp::Exact),
    ("%UPSTREAM_CLUSTER_RAW%", Cmp::Exact),
    ("%UPSTREAM_PROTOCOL%", Cmp::Exact),
    ("%UPSTREAM_TLS_VERSION%", Cmp::Exact),
    ("%UPSTREAM_CONNECTION_ID%", Cmp::Number),
    ("%REQUESTED_SERVER_NAME%", Cmp::Exact),
    ("%DOWNSTREAM_TLS_VERSION%", Cmp::Exact),
    ("%DOWNSTREAM_TLS_CIPHER%", Cmp::Exact),
    ("%DOWNSTREAM_PEER_URI_SAN%", Cmp::Exact),
    ("%DOWNSTREAM_PEER_DNS_SAN%", Cmp::Exact),
    ("%DOWNSTREAM_PEER_SUBJECT%", Cmp::Exact),
    ("%DOWNSTREAM_PEER_ISSUER%", Cmp::Exact),
    ("%DOWNSTREAM_LOCAL_URI_SAN%", Cmp::Exact),
    ("%DOWNSTREAM_LOCAL_DNS_SAN%", Cmp::Exact),
    ("%DOWNSTREAM_LOCAL_SUBJECT%", Cmp::Exact),
    ("%CONNECTION_ID%", Cmp::Number),
    ("%STREAM_ID%", Cmp::Uuid),
    ("%UNIQUE_ID%", Cmp::Uuid),
    ("%HOSTNAME%", Cmp::Exact),
    ("%ENVIRONMENT(HOME)%", Cmp::Exact),
    ("%ENVIRONMENT(SKIFF_NOT_SET_ANYWHERE)%", Cmp::Exact),
    ("%DOWNSTREAM_REMOTE_ADDRESS%", Cmp::Addr),
    ("%DOWNSTREAM_REMOTE_PORT%", Cmp::Number),
    ("%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%", Cmp::Addr),
    (
        "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%",
        Cmp::Exact,
    ),
    ("%DOWNSTREAM_DIRECT_REMOTE_PORT%", Cmp::Number),
    ("%DOWNSTREAM_LOCAL_PORT%", Cmp::Number),
    ("%DURATION%", Cmp::Number),
    ("%REQUEST_DURATION%", Cmp::Number),
    ("%REQUEST_TX_DURATION%", Cmp::Number),
    ("%RESPONSE_DURATION%", Cmp::Number),
    ("%RESPONSE_TX_DURATION%", Cmp::Number),
    ("%VIRTUAL_CLUSTER_NAME%", Cmp::Exact),
    ("%ROUTE_NAME%", Cmp::Exact),
    ("%REQUEST_HEADERS_BYTES%", Cmp::Exact),
    ("%RESPONSE_HEADERS_BYTES%", Cmp::Exact),
    ("%REQ_WITHOUT_QUERY(:PATH)%", Cmp::Exact),
    (
        "%REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH):4%",
        Cmp::Exact,
    ),
    ("%RESPONSE_CODE_DETAILS%", Cmp::Exact),
    ("%START_TIME()%", Cmp::Shape),
    ("%START_TIME(%Y-%m-%dT%H:%M:%S%z)%", Cmp::Shape),
    ("%START_TIME(%s.%6f)%", Cmp::Shape),
    ("%START_TIME(%a %b %e %j %Z %E3S %Ez %%)%", Cmp::Shape),
    ("%DOWNSTREAM_PEER_SERIAL%", Cmp::Exact),
    ("%DOWNSTREAM_PEER_FINGERPRINT_256%", Cmp::Exact),
    ("%DOWNSTREAM_PEER_CERT%", Cmp::Exact),
    ("%DOWNSTREAM_PEER_CERT_V_START%", Cmp::Exact),
    ("%DOWNSTREAM_PEER_CERT_V_END(%s)%", Cmp::Exact),
    ("%ACCESS_LOG_TYPE%", Cmp::Exact),
    ("%PATH%", Cmp::Exact),
    ("%PATH(NQ)%", Cmp::Exact),
    ("%PATH(WQ:ORIG)%", Cmp::Exact),
    ("%PATH(NQ:PATH)%", Cmp::Exact),
    ("%REQ(:PATH):6%", Cmp::Exact),
];

/// A field as compared: masked as `cmp` says.
fn masked(field: &str, cmp: Cmp) -> String {
    if field == "-" {
        return field.to_string();
    }
    match cmp {
        Cmp::Exact => field.to_string(),
        Cmp::Number if field.bytes().all(|b| b.is_ascii_digit()) => "<n>".into(),
        Cmp::Number => format!("<not a number: {field}>"),
        Cmp::Addr => match field.rsplit_once(':') {
            Some((ip, port)) if port.bytes().all(|b| b.is_ascii_digit()) => format!("{ip}:<port>"),
            _ => format!("<not an address: {field}>"),
        },
        Cmp::Uuid if skiff_tests::is_uuid(field) => "<uuid>".into(),
        Cmp::Uuid => format!("<not a uuid: {field}>"),
        Cmp::Shape => field
            .chars()
            .map(|c| if c.is_ascii_digit() { 'd' } else { c })
            .collect(),
    }
}

/// A CA, a server certificate (DNS and URI SANs, subject with an escaped comma) and a client
/// certificate it signed, as files: (server, client, CA).
struct Pki {
    server: (std::path::PathBuf, std::path::PathBuf),
    client: (std::path::PathBuf, std::path::PathBuf),
    ca: std::path::PathBuf,
}

fn pki(tag: &str) -> Pki {
    let dir = skiff_tests::scratch_dir(tag);
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "alog test CA");
    let ca = p.self_signed(&ca_key).expect("CA");
    let leaf = |name: &str, sans: Vec<rcgen::SanType>| {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.subject_alt_names = sans;
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "skiff, tests");
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = p.signed_by(&key, &ca, &ca_key).expect("leaf");
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write");
        std::fs::write(&k, key.serialize_pem()).expect("write");
        (c, k)
    };
    let uri = |s: &str| rcgen::SanType::URI(s.to_string().try_into().expect("URI"));
    let dns = |s: &str| rcgen::SanType::DnsName(s.to_string().try_into().expect("DNS"));
    let server = leaf(
        "front",
        vec![
            dns("front.test"),
            dns("*.front.test"),
            uri("spiffe://cluster.local/ns/default/sa/front"),
        ],
    );
    let client = leaf(
        "client",
        vec![
            uri("spiffe://cluster.local/ns/default/sa/client"),
            dns("client.test"),
        ],
    );
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).expect("write");

    Pki {
        server,
        client,
        ca: ca_path,
    }
}

/// The log format of [`OPERATORS`], as a `log_format` with the req_without_query extension.
fn log_format() -> serde_json::Value {
    let format = OPERATORS
        .iter()
        .map(|(op, _)| *op)
        .collect::<Vec<_>>()
        .join("\t")
        + "\n";
    json!({
        "text_format_source": { "inline_string": format },
        "formatters": [{
            "name": "envoy.formatter.req_without_query",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery" }
        }]
    })
}

/// The downstream TLS context of these tests: the server certificate, client certificates from
/// the CA asked for but not required.
fn tls_context(p: &Pki) -> serde_json::Value {
    json!({ "name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": {
            "tls_certificates": [{ "certificate_chain": { "filename": p.server.0 }, "private_key": { "filename": p.server.1 } }],
            "validation_context": { "trusted_ca": { "filename": p.ca } }
        }
    }})
}

/// Compares Envoy's and skiff's lines of one case field by field; differences go to `differ`,
/// every field to `table`.
fn compare_lines(
    what: &str,
    envoy: &str,
    skiff: &str,
    table: &mut Vec<String>,
    differ: &mut Vec<String>,
) {
    let (fe, fs): (Vec<&str>, Vec<&str>) =
        (envoy.split('\t').collect(), skiff.split('\t').collect());
    assert_eq!(fe.len(), OPERATORS.len(), "{what}: {envoy}");
    assert_eq!(fs.len(), OPERATORS.len(), "{what}: {skiff}");
    for (i, (op, cmp)) in OPERATORS.iter().enumerate() {
        let (me, ms) = (masked(fe[i], *cmp), masked(fs[i], *cmp));
        table.push(format!(
            "{what:5} {op:50} envoy={:40} skiff={}",
            fe[i], fs[i]
        ));
        if me != ms {
            differ.push(format!("{what} {op}: envoy {:?}, skiff {:?}", fe[i], fs[i]));
        }
    }
}

#[tokio::test]
async fn operators_side_by_side_with_envoy() {
    use skiff_tests::config::{bootstrap, cluster, to_yaml};
    use skiff_tests::side_by_side::{pair, Up, HOST};
    run(async {
        // The listener terminates TLS and takes plaintext on a second chain.
        let p = pki("alog-ops");
        let client = p.client.clone();
        let log_format = log_format();
        let tls = tls_context(&p);
        let dead = skiff_tests::free_port();
        let build = move |admin: u16, listen: u16, upstream: u16| {
            let hcm = |stat_prefix: &str| {
                json!({
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": stat_prefix,
                        "access_log": [{
                            "name": "envoy.access_loggers.stdout",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                                "log_format": log_format
                            }
                        }],
                        "route_config": { "name": "local_route", "virtual_hosts": [{
                            "name": "all", "domains": ["*"],
                            "routes": [
                                { "name": "to_dead", "match": { "prefix": "/dead" }, "route": { "cluster": "dead" } },
                                { "match": { "prefix": "/" }, "route": { "cluster": "svc" } }
                            ]
                        }]},
                        "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }]
                    }
                })
            };
            let listener = json!({
                "name": "l",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": listen } },
                "listener_filters": [{ "name": "envoy.filters.listener.tls_inspector", "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" } }],
                "filter_chains": [
                    {
                        "filter_chain_match": { "transport_protocol": "tls" },
                        "filters": [hcm("tls")],
                        "transport_socket": tls
                    },
                    { "filters": [hcm("plain")] }
                ]
            });
            to_yaml(&bootstrap(
                admin,
                vec![listener],
                vec![cluster("svc", &[upstream]), cluster("dead", &[dead])],
            ))
        };
        let (e, s) = pair(Up::H1, build).await;
        let host = format!("Host: {HOST}");
        let (cert, key) = (
            client.0.to_str().expect("utf-8"),
            client.1.to_str().expect("utf-8"),
        );
        let mut table = Vec::new();
        let mut differ = Vec::new();
        for (what, path) in [("plain", "/plain?q=1"), ("UF", "/dead"), ("mTLS", "/tls?q=2")] {
            let mut lines = Vec::new();
            for side in [&e, &s] {
                let resolve = format!("sni.front.test:{}:127.0.0.1", side.port);
                let url = format!("https://sni.front.test:{}{path}", side.port);
                let args: Vec<&str> = if what == "mTLS" {
                    vec![
                        "-k", "--cert", cert, "--key", key, "-H", &host, "--resolve", &resolve,
                        &url,
                    ]
                } else {
                    Vec::new()
                };
                let r = if args.is_empty() {
                    skiff_tests::side_by_side::curl_on(side, &[], path).await
                } else {
                    skiff_tests::client::curl(&args).await
                };
                assert_ne!(r.resp.status, 0, "{what}: {}", r.stderr);
                let prefix = path.get(..6).unwrap_or(path).to_string();
                let line = side
                    .proxy
                    .wait_stdout_line(Duration::from_secs(15), |l| {
                        l.matches('\t').count() == OPERATORS.len() - 1
                            && l.trim_end().ends_with(&format!("\t{prefix}"))
                    })
                    .await;
                lines.push(line.trim_end().to_string());
            }
            compare_lines(what, &lines[0], &lines[1], &mut table, &mut differ);
        }
        println!("{}", table.join("\n"));
        assert!(differ.is_empty(), "operators differ:\n  {}", differ.join("\n  "));
    })
    .await
}

/// The same operators on tcp_proxy's connection lines: a plain connection, one whose upstream
/// refuses, and an mTLS connection terminated by the listener, each on its own listener.
#[tokio::test]
async fn tcp_proxy_operators_side_by_side_with_envoy() {
    use skiff_tests::config::{bootstrap, cluster, to_yaml};
    use skiff_tests::side_by_side::{pair, Up};
    use skiff_tests::upstream::TcpMode;
    use std::sync::{Arc, Mutex};
    run(async {
        let p = pki("alog-tcp");
        let client = p.client.clone();
        let log_format = log_format();
        let tls = tls_context(&p);
        let dead = skiff_tests::free_port();
        // (plain, refused, mTLS) listener ports of each side, Envoy's first.
        let ports: Arc<Mutex<Vec<[u16; 3]>>> = Arc::default();
        let ports_in = ports.clone();
        let build = move |admin: u16, listen: u16, upstream: u16| {
            let tcp = |cluster: &str| {
                json!({
                    "name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": cluster,
                        "cluster": cluster,
                        "access_log": [{
                            "name": "envoy.access_loggers.stdout",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                                "log_format": log_format
                            }
                        }]
                    }
                })
            };
            let (refused, mtls) = (skiff_tests::free_port(), skiff_tests::free_port());
            ports_in
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push([listen, refused, mtls]);
            let listener = |name: &str, port: u16, chain: serde_json::Value| {
                json!({
                    "name": name,
                    "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
                    "listener_filters": [{ "name": "envoy.filters.listener.tls_inspector", "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" } }],
                    "filter_chains": [chain]
                })
            };
            to_yaml(&bootstrap(
                admin,
                vec![
                    listener("plain", listen, json!({ "filters": [tcp("svc")] })),
                    listener("refused", refused, json!({ "filters": [tcp("dead")] })),
                    listener(
                        "mtls",
                        mtls,
                        json!({ "filters": [tcp("svc")], "transport_socket": tls }),
                    ),
                ],
                vec![cluster("svc", &[upstream]), cluster("dead", &[dead])],
            ))
        };
        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec();
        let (e, s) = pair(Up::Raw(TcpMode::ReadThenReply(reply)), build).await;
        let ports = ports.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (cert, key) = (
            client.0.to_str().expect("utf-8"),
            client.1.to_str().expect("utf-8"),
        );
        let local_port = OPERATORS
            .iter()
            .position(|(op, _)| *op == "%DOWNSTREAM_LOCAL_PORT%")
            .expect("the format has the listener's port");
        let mut table = Vec::new();
        let mut differ = Vec::new();
        for (case, what) in ["plain", "UF", "mTLS"].into_iter().enumerate() {
            let mut lines = Vec::new();
            for (side, ports) in [&e, &s].into_iter().zip(&ports) {
                let port = ports[case];
                let resolve = format!("sni.front.test:{port}:127.0.0.1");
                let url = match what {
                    "mTLS" => format!("https://sni.front.test:{port}/"),
                    _ => format!("http://sni.front.test:{port}/"),
                };
                let mut args = vec!["-m", "5", "--resolve", &resolve];
                if what == "mTLS" {
                    args.extend(["-k", "--cert", cert, "--key", key]);
                }
                args.push(&url);
                skiff_tests::client::curl(&args).await;
                let want = port.to_string();
                let line = side
                    .proxy
                    .wait_stdout_line(Duration::from_secs(15), |l| {
                        l.trim_end().split('\t').nth(local_port) == Some(want.as_str())
                    })
                    .await;
                lines.push(line.trim_end().to_string());
            }
            compare_lines(what, &lines[0], &lines[1], &mut table, &mut differ);
        }
        println!("{}", table.join("\n"));
        assert!(
            differ.is_empty(),
            "operators differ:\n  {}",
            differ.join("\n  ")
        );
    })
    .await
}

/// `json_format` with Envoy Gateway's default access log fields plus typed extras, through
/// Envoy and skiff: the same keys, types and values (timing, ports and ids masked).
#[tokio::test]
async fn json_format_side_by_side_with_envoy() {
    use skiff_tests::config::{self, cluster};
    use skiff_tests::side_by_side::{curl_on, pair, Up};
    use std::sync::Arc;
    run(async {
        let dead = skiff_tests::free_port();
        let build = move |admin: u16, listen: u16, upstream: u16| {
            let mut v = config::simple_http(admin, listen, &[upstream]);
            config::route_config(&mut v)["virtual_hosts"][0]["routes"] = json!([
                { "name": "to_dead", "match": { "prefix": "/dead" }, "route": { "cluster": "dead" } },
                { "match": { "prefix": "/" }, "route": { "cluster": "backend" } }
            ]);
            v["static_resources"]["clusters"]
                .as_array_mut()
                .expect("clusters")
                .push(cluster("dead", &[dead]));
            config::hcm_config(&mut v)["access_log"] = json!([{
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                    "log_format": { "json_format": {
                        ":authority": "%REQ(:AUTHORITY)%",
                        "bytes_received": "%BYTES_RECEIVED%",
                        "bytes_sent": "%BYTES_SENT%",
                        "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
                        "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
                        "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
                        "duration": "%DURATION%",
                        "method": "%REQ(:METHOD)%",
                        "protocol": "%PROTOCOL%",
                        "requested_server_name": "%REQUESTED_SERVER_NAME%",
                        "response_code": "%RESPONSE_CODE%",
                        "response_code_details": "%RESPONSE_CODE_DETAILS%",
                        "response_flags": "%RESPONSE_FLAGS%",
                        "route_name": "%ROUTE_NAME%",
                        "start_time": "%START_TIME%",
                        "upstream_cluster": "%UPSTREAM_CLUSTER%",
                        "upstream_host": "%UPSTREAM_HOST%",
                        "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
                        "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
                        "user-agent": "%REQ(USER-AGENT)%",
                        "x-envoy-origin-path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                        "x-envoy-upstream-service-time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
                        "x-forwarded-for": "%REQ(X-FORWARDED-FOR)%",
                        "x-request-id": "%REQ(X-REQUEST-ID)%",
                        "typed": { "code": "%RESPONSE_CODE%", "mixed": "code %RESPONSE_CODE% via %PROTOCOL% \"q\" %REQ(X-NOPE)%", "cut": "%REQ(:PATH):4%" },
                        "literals": [1, 2.5, true, null, "%PROTOCOL%"],
                        "fraction": 0.25,
                        "whole": 7
                    } }
                }
            }]);
            config::to_yaml(&v)
        };
        let (e, s) = pair(Up::H1, build).await;
        // Values that depend on timing, ports or random ids: compared by kind only.
        let volatile: Arc<[&str]> = Arc::from(
            &[
                "duration",
                "start_time",
                "downstream_local_address",
                "downstream_remote_address",
                "upstream_host",
                "upstream_local_address",
                "x-envoy-upstream-service-time",
                "x-request-id",
            ][..],
        );
        let shape = |v: &serde_json::Value, key: &str| -> serde_json::Value {
            if !volatile.contains(&key) {
                return v.clone();
            }
            match v {
                serde_json::Value::Number(_) => json!("<number>"),
                serde_json::Value::String(s) => match s.rsplit_once(':') {
                    Some((ip, port)) if port.parse::<u16>().is_ok() => json!(format!("{ip}:<port>")),
                    _ if skiff_tests::is_uuid(s) => json!("<uuid>"),
                    _ if s.parse::<u64>().is_ok() => json!("<digits>"),
                    _ if s.len() == 24 && s.ends_with('Z') => json!("<time>"),
                    _ => v.clone(),
                },
                other => other.clone(),
            }
        };
        for path in ["/json?q=1", "/dead"] {
            let mut objects = Vec::new();
            let mut raw = Vec::new();
            for side in [&e, &s] {
                let r = curl_on(side, &["-A", "json-agent"], path).await;
                assert_ne!(r.resp.status, 0);
                let line = side
                    .proxy
                    .wait_stdout_line(Duration::from_secs(15), |l| {
                        l.starts_with('{') && l.contains(&format!("\"x-envoy-origin-path\":\"{path}\""))
                    })
                    .await;
                let v: serde_json::Value = serde_json::from_str(line.trim_end())
                    .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", side.proxy.kind.name()));
                let masked: serde_json::Map<String, serde_json::Value> = v
                    .as_object()
                    .expect("an object")
                    .iter()
                    .map(|(k, v)| (k.clone(), shape(v, k)))
                    .collect();
                objects.push(masked);
                raw.push(line.trim_end().to_string());
            }
            println!("{path}\n  envoy {}\n  skiff {}", raw[0], raw[1]);
            // Keys are written in the same (sorted) order.
            let keys = |l: &str| -> Vec<String> {
                let v: serde_json::Value = serde_json::from_str(l).expect("JSON");
                v.as_object().expect("object").keys().cloned().collect()
            };
            assert_eq!(keys(&raw[0]), keys(&raw[1]), "{path}: key order");
            assert_eq!(objects[0], objects[1], "{path}: JSON lines differ");
        }
    })
    .await
}

/// The file logger's deprecated format fields, which Envoy 1.40 still takes: `format` (text;
/// empty is the default format), `json_format` and `typed_json_format` (both written typed,
/// keys sorted, as `log_format.json_format`).
#[tokio::test]
async fn deprecated_file_formats_side_by_side_with_envoy() {
    use skiff_tests::config;
    use skiff_tests::side_by_side::{curl_on, pair, Up};
    run(async {
        let dir = skiff_tests::scratch_dir("alog-deprecated");
        let base = dir.to_str().expect("utf-8").to_string();
        let build = move |admin: u16, listen: u16, upstream: u16| {
            let mut v = config::simple_http(admin, listen, &[upstream]);
            let file = |name: &str, format: serde_json::Value| {
                let mut typed = json!({
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": format!("{base}/{listen}-{name}.log"),
                });
                if let (Some(t), Some(f)) = (typed.as_object_mut(), format.as_object()) {
                    for (k, v) in f {
                        t.insert(k.clone(), v.clone());
                    }
                }
                json!({ "name": "envoy.access_loggers.file", "typed_config": typed })
            };
            let fields = json!({ "zcode": "%RESPONSE_CODE%", "path": "%REQ(:PATH)%",
                "missing": "%REQ(x-nothing)%", "n": { "proto": "%PROTOCOL%" } });
            config::hcm_config(&mut v)["access_log"] = json!([
                file("text", json!({ "format": "%RESPONSE_CODE% %REQ(:PATH)% %PROTOCOL%\n" })),
                file("default", json!({ "format": "" })),
                file("json", json!({ "json_format": fields })),
                file("typed", json!({ "typed_json_format": fields })),
            ]);
            config::to_yaml(&v)
        };
        let (e, s) = pair(Up::H1, build).await;
        let mut seen = Vec::new();
        for side in [&e, &s] {
            curl_on(side, &[], "/d/1").await;
            curl_on(side, &[], "/d/2?q").await;
            let listen = side.port;
            let mut got = Vec::new();
            for name in ["text", "default", "json", "typed"] {
                let path = dir.join(format!("{listen}-{name}.log"));
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                let text = loop {
                    let t = std::fs::read_to_string(&path).unwrap_or_default();
                    if t.lines().count() >= 2 || std::time::Instant::now() > deadline {
                        break t;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                if name == "default" {
                    // Times, durations and ids differ: the request line and status suffice.
                    got.push(
                        text.lines()
                            .map(|l| l.split(" - ").next().unwrap_or("").split("] ").nth(1).unwrap_or("").to_string())
                            .collect::<Vec<_>>()
                            .join("\n"),
                    );
                } else {
                    got.push(text);
                }
            }
            seen.push(got);
        }
        assert_eq!(seen[1], seen[0], "skiff (left), Envoy (right)");
        assert!(seen[0][2].contains(r#""n":{"proto":"HTTP/1.1"}"#), "{:?}", seen[0]);
        assert!(seen[0][1].contains(r#""GET /d/1 HTTP/1.1" 200"#), "{:?}", seen[0]);
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}
