//! The main thread: configuration, binding, workers, admin, signals and drain.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};

use crate::admin::{self, AdminState};
use crate::cli::{Mode, Options};
use crate::config::{self, Loaded};
use crate::config_store::ConfigStore;
use crate::drain::{DrainKind, Draining};
use crate::stats::Store;
use crate::worker::{self, Shared};

/// Loads the configuration the command line names, applying `--service-node/--service-cluster`.
pub fn load(opts: &Options) -> Result<Loaded, config::ConfigError> {
    let source = config::Source {
        path: opts.config_path.clone(),
        yaml: opts.config_yaml.clone(),
        allow_unknown_fields: opts.allow_unknown_static_fields,
    };
    let mut loaded = match opts.mode {
        Mode::Validate => config::load(&source)?,
        Mode::Serve => config::load_isolated(&source)?,
    };
    // The command line fills in what the bootstrap's node leaves empty, as Envoy's does: in
    // the model, the node sent to xDS servers and its JSON form (REST).
    let node = &mut loaded.model.node;
    if node.id.is_empty() {
        if let Some(id) = &opts.service_node {
            node.id = id.clone();
            node.proto.id = id.clone();
        }
    }
    if node.cluster.is_empty() {
        if let Some(cluster) = &opts.service_cluster {
            node.cluster = cluster.clone();
            node.proto.cluster = cluster.clone();
        }
    }
    if let Some(zone) = &opts.service_zone {
        let locality = node.proto.locality.get_or_insert_with(Default::default);
        if locality.zone.is_empty() {
            locality.zone = zone.clone();
        }
    }
    crate::upstream::set_node_zone(node.proto.locality.as_ref().map_or("", |l| &l.zone));
    let proto = node.proto.clone();
    if let Some(b) = loaded.dump.bootstrap.as_object_mut() {
        let n = b.entry("node").or_insert_with(|| serde_json::json!({}));
        if let Some(n) = n.as_object_mut() {
            for (key, value) in [("id", &proto.id), ("cluster", &proto.cluster)] {
                if !value.is_empty() {
                    n.insert(key.into(), value.clone().into());
                }
            }
            if let Some(zone) = proto.locality.as_ref().map(|l| &l.zone) {
                if !zone.is_empty() {
                    let l = n.entry("locality").or_insert_with(|| serde_json::json!({}));
                    if let Some(l) = l.as_object_mut() {
                        l.insert("zone".into(), zone.clone().into());
                    }
                }
            }
        }
    }
    Ok(loaded)
}

/// Runs skiff as the command line says; returns the process exit code.
pub fn run(opts: Options) -> ExitCode {
    let loaded = match load(&opts) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "error initializing configuration '{}': {e}",
                config_name(&opts)
            );
            return ExitCode::FAILURE;
        }
    };
    if opts.mode == Mode::Validate {
        println!("configuration '{}' OK", config_name(&opts));
        return ExitCode::SUCCESS;
    }
    match serve(opts, loaded) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config_name(opts: &Options) -> String {
    opts.config_path
        .clone()
        .unwrap_or_else(|| "--config-yaml".into())
}

/// What the admin server asks of the main loop.
#[derive(Debug)]
pub enum Command {
    /// `POST /drain_listeners`.
    DrainListeners {
        /// `?inboundonly`.
        inbound_only: bool,
        /// `?graceful`: connections are asked to close for `--drain-time-s` while the listeners
        /// still accept, then the listeners stop.
        graceful: bool,
    },
}

/// Says once, where an operator looks, which bootstrap fields are accepted without effect
/// (docs/compatibility.md).
#[allow(deprecated)] // `tracing`: deprecated in Envoy's protos, still read by Envoy 1.40
fn warn_accepted_without_effect(
    b: &envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap,
    dump: &serde_json::Value,
) {
    for (i, sink) in b.stats_sinks.iter().enumerate() {
        tracing::warn!(
            field = %format!("stats_sinks[{i}]"),
            sink = %sink.name,
            "stats sink accepted without effect: skiff pushes no stats; scrape /stats or /stats/prometheus"
        );
    }
    // Newer than the typed protos: seen in the bootstrap as decoded.
    if dump.get("stats_eviction_interval").is_some() {
        tracing::warn!(
            field = "stats_eviction_interval",
            "accepted without effect: skiff does not evict unused stats"
        );
    }
    if b.cluster_manager
        .as_ref()
        .is_some_and(|c| c.load_stats_config.is_some())
    {
        tracing::warn!(
            field = "cluster_manager.load_stats_config",
            "accepted without effect: skiff sends no load reports (LRS)"
        );
    }
    if let Some(http) = b.tracing.as_ref().and_then(|t| t.http.as_ref()) {
        tracing::warn!(
            field = "tracing",
            tracer = %http.name,
            "tracer accepted without effect: skiff traces nothing (HCM tracing is refused with it)"
        );
    }
}

fn serve(opts: Options, mut loaded: Loaded) -> Result<(), String> {
    let begun = Instant::now();
    let workers = opts.workers();
    warn_accepted_without_effect(&loaded.proto, &loaded.dump.bootstrap);
    // The bootstrap's dump as text: its tree would cost ten times as much for the life of
    // the process. Its node stays a tree (`/server_info` and the xDS clients read it).
    let bootstrap_dump = Arc::new(crate::config_store::CompactJson::new(
        &loaded.dump.bootstrap,
    ));
    let node = loaded.dump.bootstrap.get("node").cloned();
    loaded.dump.bootstrap = match node {
        Some(n) => serde_json::json!({ "node": n }),
        None => serde_json::json!({}),
    };
    let loaded = Arc::new(loaded);
    let admin_socket = match &loaded.model.admin {
        Some(a) => Some(
            std::net::TcpListener::bind(a.address)
                .and_then(|s| s.set_nonblocking(true).map(|_| s))
                .map_err(|e| format!("admin: cannot bind {}: {e}", a.address))?,
        ),
        None => None,
    };
    let store = Arc::new(Store::with_matcher(
        workers,
        loaded.model.stats.matcher.clone(),
    ));
    let main = store.main().clone();
    main.gauge("server.concurrency").set(workers as i64);
    let unknown = &loaded.dump.unknown_fields;
    for f in unknown {
        tracing::warn!(field = %f, "unknown field in the bootstrap ignored (--allow-unknown-static-fields)");
    }
    // Extensions of listeners and clusters accepted without effect (docs/compatibility.md),
    // counted by name wherever they come from.
    {
        let main = main.clone();
        crate::config::on_accepted_without_effect(Box::new(move |name| {
            main.counter(&format!(
                "server.accepted_without_effect.{}",
                name.replace('.', "_")
            ))
            .inc();
        }));
    }
    crate::http::filters::istio::set_node(loaded.model.node.proto.clone());
    #[allow(deprecated)] // `tracing`: deprecated in Envoy's protos, still read by Envoy 1.40
    crate::config::set_bootstrap_tracer(
        loaded
            .proto
            .tracing
            .as_ref()
            .is_some_and(|t| t.http.is_some()),
    );
    // As Envoy, one count per document that had any (the file, --config-yaml).
    main.counter("server.static_unknown_fields")
        .add(loaded.dump.unknown_documents);
    crate::overload::GLOBAL_CONNECTIONS.set_limit(loaded.model.overload.max_downstream_connections);
    let health_failed = Arc::new(AtomicBool::new(false));
    crate::http::filters::health_check::set_server(
        health_failed.clone(),
        &loaded.model.node.cluster,
    );
    crate::http::conn_manager_utility::set_local_node(
        &loaded.model.node.cluster,
        &loaded.model.node.id,
    );
    crate::trace::set_node(
        &loaded.model.node.id,
        &loaded.model.node.cluster,
        loaded
            .model
            .node
            .proto
            .locality
            .as_ref()
            .map_or("", |l| l.zone.as_str()),
    );
    let drain_time = Duration::from_secs(opts.drain_time_s);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start main runtime: {e}"))?;
    rt.block_on(async move {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let runtime = Arc::new(std::sync::Mutex::new(crate::runtime::Loader::new(
            &loaded.model.runtime,
            &loaded.model.node.cluster,
            main.clone(),
        )));
        crate::runtime::follow(runtime.clone());
        let mut config = ConfigStore::new(&loaded, store.clone(), drain_time, events_tx);
        config.set_runtime(runtime.clone());
        let mut xds = config.take_xds_events();
        let (commands_tx, mut commands) = mpsc::unbounded_channel();
        let state = Arc::new(AdminState {
            store: store.clone(),
            config: loaded.clone(),
            bootstrap_dump: bootstrap_dump.clone(),
            published: config.published(),
            options: opts.clone(),
            concurrency: workers,
            started: Instant::now(),
            health_failed: health_failed.clone(),
            draining: AtomicBool::new(false),
            initializing: AtomicBool::new(true),
            quit: Notify::new(),
            commands: commands_tx,
            runtime: runtime.clone(),
        });
        if let Some(sock) = admin_socket {
            match tokio::net::TcpListener::from_std(sock) {
                Ok(l) => {
                    tokio::spawn(admin::serve(l, state.clone()));
                }
                Err(e) => tracing::error!(error = %e, "admin listener failed"),
            }
        }
        // Each stats flush merges the threads' histograms (their interval values).
        {
            let store = store.clone();
            let every = loaded
                .model
                .stats
                .flush_interval
                .unwrap_or(Duration::from_secs(5));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    store.merge_histograms();
                }
            });
        }
        let initialization_time = main.histogram("server.initialization_time_ms");
        // The overload manager reads its monitors on this thread from the start.
        let overload = crate::overload::manager::Manager::new(&loaded.model.overload, &main);
        tokio::spawn(overload.run());
        let mut signals = Signals::new();
        // The init manager: read the dynamic sources, then wait until nothing warms (or each
        // source's initial_fetch_timeout has passed) before the workers start.
        let Some(mut dns_events) = config.dns_events() else {
            return Err("the DNS resolution channel is gone".to_string());
        };
        let Some(mut health_events) = config.health_events() else {
            return Err("the health check channel is gone".to_string());
        };
        // Another server in this process took the channel: its detections go there.
        let mut outlier_events = config
            .outlier_events()
            .unwrap_or_else(|| tokio::sync::mpsc::unbounded_channel().1);
        config.start();
        while config.initializing() {
            let next = config.next_deadline();
            tokio::select! {
                Some(ev) = events.recv() => config.on_file_event(&ev),
                Some(r) = dns_events.recv() => config.on_dns(r),
                Some(h) = health_events.recv() => config.on_health(h),
                Some(o) = outlier_events.recv() => config.on_outlier(o),
                Some(ev) = recv_xds(&mut xds) => config.on_xds(ev),
                _ = sleep_until(next) => config.on_timer(Instant::now()),
                _ = signals.recv() => return Ok(()),
                _ = state.quit.notified() => return Ok(()),
            }
        }
        let shared = Shared {
            health_failed: health_failed.clone(),
            drain_strategy: opts.drain_strategy,
            flush_interval: Duration::from_millis(opts.file_flush_interval_msec.max(1)),
            internal_buffer: loaded
                .model
                .internal_listener_buffer
                .unwrap_or(crate::listener::internal::DEFAULT_BUFFER),
            local_zone: loaded.model.local_cluster.clone().map(|cluster| {
                crate::upstream::LocalZone {
                    cluster,
                    mine: loaded.model.node.proto.locality.as_ref().map(|l| {
                        crate::config::model::Locality {
                            region: l.region.clone(),
                            zone: l.zone.clone(),
                            sub_zone: l.sub_zone.clone(),
                        }
                    }),
                }
            }),
        };
        let mut handles = Vec::new();
        let mut senders = Vec::new();
        for id in 0..workers {
            let (tx, rx) = mpsc::unbounded_channel();
            let h = worker::spawn(id, store.worker(id).clone(), shared.clone(), rx)
                .map_err(|e| format!("cannot start worker {id}: {e}"))?;
            handles.push(h);
            senders.push(tx);
        }
        // UDP listeners run on the first worker, with its clusters (which the configuration
        // just sent brings first).
        let mut udp = Vec::new();
        for l in &loaded.model.udp_listeners {
            let socket = std::net::UdpSocket::bind(l.address)
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .map_err(|e| {
                    format!(
                        "listener '{}': cannot bind {} (UDP): {e}",
                        l.name, l.address
                    )
                })?;
            udp.push((l.clone(), socket));
        }
        let first = senders.first().cloned();
        config.attach_workers(senders)?;
        for (listener, socket) in udp {
            if let Some(tx) = &first {
                let _ = tx.send(worker::WorkerUpdate::Udp { listener, socket });
            }
        }
        state.initializing.store(false, Ordering::Relaxed);
        initialization_time.record_ms(begun.elapsed());
        main.gauge("listener_manager.workers_started").set(1);
        tracing::info!(workers, "skiff started");

        let mut graceful_stop: Option<(Instant, bool)> = None;
        let deadline = loop {
            let next = [config.next_deadline(), graceful_stop.map(|g| g.0)]
                .into_iter()
                .flatten()
                .min();
            tokio::select! {
                Some(ev) = events.recv() => config.on_file_event(&ev),
                Some(r) = dns_events.recv() => config.on_dns(r),
                Some(h) = health_events.recv() => config.on_health(h),
                Some(o) = outlier_events.recv() => config.on_outlier(o),
                Some(ev) = recv_xds(&mut xds) => config.on_xds(ev),
                Some(cmd) = commands.recv() => match cmd {
                    Command::DrainListeners { inbound_only, graceful } => {
                        // Graceful: connections are asked to close over the drain time while
                        // the listeners still accept; then they stop. Otherwise they just stop.
                        let now = Instant::now();
                        let d = Draining {
                            kind: DrainKind::Server,
                            started: now,
                            deadline: if graceful { now + drain_time } else { now },
                            accepting: graceful,
                            asks_close: graceful,
                            force_close: false,
                        };
                        config.drain_listeners(d, inbound_only);
                        if graceful {
                            state.draining.store(true, Ordering::Relaxed);
                            graceful_stop = Some((Instant::now() + drain_time, inbound_only));
                        }
                    }
                },
                _ = sleep_until(next) => {
                    let now = Instant::now();
                    if let Some((at, inbound_only)) = graceful_stop {
                        if at <= now {
                            graceful_stop = None;
                            config.drain_listeners(
                                Draining {
                                    kind: DrainKind::Server,
                                    started: now,
                                    deadline: now,
                                    accepting: false,
                                    asks_close: false,
                                    force_close: false,
                                },
                                inbound_only,
                            );
                        }
                    }
                    config.on_timer(now);
                }
                signal = signals.recv() => {
                    tracing::info!(drain_time_s = drain_time.as_secs(), "{signal}: draining");
                    break deadline_after(drain_time);
                }
                _ = state.quit.notified() => {
                    tracing::info!("quitquitquit: shutting down");
                    break Instant::now();
                }
            }
        };
        state.draining.store(true, Ordering::Relaxed);
        config.shutdown(deadline);
        // Workers finish in-flight work until the deadline; give them a moment past it to flush.
        let join = tokio::task::spawn_blocking(move || {
            for h in handles {
                let _ = h.join();
            }
        });
        let grace = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
        let _ = tokio::time::timeout(grace, join).await;
        Ok::<(), String>(())
    })?;
    tracing::info!("skiff exiting");
    Ok(())
}

/// The next xDS response, or never when there are no streams.
async fn recv_xds(
    rx: &mut Option<mpsc::UnboundedReceiver<crate::xds::XdsEvent>>,
) -> Option<crate::xds::XdsEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or for ever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// SIGTERM and SIGINT.
struct Signals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl Signals {
    fn new() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => Signals(Some((t, i))),
            _ => {
                tracing::error!("cannot install signal handlers");
                Signals(None)
            }
        }
    }

    /// The name of the next signal.
    async fn recv(&mut self) -> &'static str {
        match &mut self.0 {
            Some((term, int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            None => std::future::pending().await,
        }
    }
}

/// Now plus `d`, saturating (a huge --drain-time-s means "until the work is done").
pub fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}
