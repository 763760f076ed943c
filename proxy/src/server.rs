//! The main thread: configuration, binding, workers, admin, signals and drain.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::admin::{self, AdminState};
use crate::cli::{Mode, Options};
use crate::config::{self, Loaded};
use crate::listener;
use crate::stats::Store;
use crate::upstream::ClusterInfo;
use crate::worker::{self, Shared};

/// Loads the configuration the command line names, applying `--service-node/--service-cluster`.
pub fn load(opts: &Options) -> Result<Loaded, config::ConfigError> {
    let source = config::Source {
        path: opts.config_path.clone(),
        yaml: opts.config_yaml.clone(),
    };
    let mut loaded = match opts.mode {
        Mode::Validate => config::load(&source)?,
        Mode::Serve => config::load_isolated(&source)?,
    };
    let node = &mut loaded.model.node;
    if node.id.is_empty() {
        node.id = opts.service_node.clone().unwrap_or_default();
    }
    if node.cluster.is_empty() {
        node.cluster = opts.service_cluster.clone().unwrap_or_default();
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

fn serve(opts: Options, loaded: Loaded) -> Result<(), String> {
    let workers = opts.workers();
    let loaded = Arc::new(loaded);
    let model = &loaded.model;

    // Bind everything before starting anything, so a port in use fails start-up with its name.
    let mut sockets: Vec<Vec<_>> = (0..workers).map(|_| Vec::new()).collect();
    for l in &model.listeners {
        for per_worker in sockets.iter_mut() {
            let s = if l.bind_to_port {
                Some(listener::bind(l).map_err(|e| {
                    format!("listener '{}': cannot bind {}: {e}", l.name, l.address)
                })?)
            } else {
                None
            };
            per_worker.push((l.clone(), s));
        }
    }
    let admin_socket = match &model.admin {
        Some(a) => Some(
            std::net::TcpListener::bind(a.address)
                .and_then(|s| s.set_nonblocking(true).map(|_| s))
                .map_err(|e| format!("admin: cannot bind {}: {e}", a.address))?,
        ),
        None => None,
    };

    let store = Arc::new(Store::new(workers));
    let clusters: Vec<Arc<ClusterInfo>> = model
        .clusters
        .iter()
        .map(|c| Arc::new(ClusterInfo::new(c.clone())))
        .collect();
    let main = store.main();
    main.gauge("server.concurrency").set(workers as i64);
    main.gauge("server.live").set(1);
    main.gauge("listener_manager.total_listeners_active")
        .set(model.listeners.len() as i64);
    main.counter("listener_manager.listener_added")
        .add(model.listeners.len() as u64);
    main.counter("listener_manager.listener_create_success")
        .add((model.listeners.len() * workers) as u64);
    main.gauge("cluster_manager.active_clusters")
        .set(model.clusters.len() as i64);
    main.counter("cluster_manager.cluster_added")
        .add(model.clusters.len() as u64);

    let (drain_tx, drain_rx) = watch::channel(None);
    let health_failed = Arc::new(AtomicBool::new(false));
    let shared = Shared {
        health_failed: health_failed.clone(),
        listener_addresses: Arc::new(
            model
                .listeners
                .iter()
                .filter(|l| l.bind_to_port)
                .map(|l| l.address)
                .collect(),
        ),
        clusters: clusters.clone(),
        flush_interval: Duration::from_millis(opts.file_flush_interval_msec.max(1)),
        drain: drain_rx,
    };
    let mut handles = Vec::new();
    for (id, socks) in sockets.into_iter().enumerate() {
        let h = worker::spawn(id, store.worker(id).clone(), shared.clone(), socks)
            .map_err(|e| format!("cannot start worker {id}: {e}"))?;
        handles.push(h);
    }
    main.counter("listener_manager.workers_started")
        .add(workers as u64);
    tracing::info!(
        workers,
        listeners = model.listeners.len(),
        clusters = model.clusters.len(),
        "skiff started"
    );

    let state = Arc::new(AdminState {
        store: store.clone(),
        config: loaded.clone(),
        options: opts.clone(),
        concurrency: workers,
        clusters,
        started: Instant::now(),
        health_failed,
        draining: AtomicBool::new(false),
        quit: Notify::new(),
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start main runtime: {e}"))?;
    let drain_time = Duration::from_secs(opts.drain_time_s);
    rt.block_on(async {
        if let Some(sock) = admin_socket {
            match tokio::net::TcpListener::from_std(sock) {
                Ok(l) => {
                    tokio::spawn(admin::serve(l, state.clone()));
                }
                Err(e) => tracing::error!(error = %e, "admin listener failed"),
            }
        }
        let deadline = wait_for_shutdown(&state, drain_time).await;
        state.draining.store(true, Ordering::Relaxed);
        let _ = drain_tx.send(Some(deadline));
        // Workers finish in-flight work until the deadline; give them a moment past it to flush.
        let join = tokio::task::spawn_blocking(move || {
            for h in handles {
                let _ = h.join();
            }
        });
        let grace = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
        let _ = tokio::time::timeout(grace, join).await;
    });
    tracing::info!("skiff exiting");
    Ok(())
}

/// Waits for SIGTERM/SIGINT (drain for `drain_time`) or `/quitquitquit` (stop now); returns the
/// deadline for in-flight work.
async fn wait_for_shutdown(state: &AdminState, drain_time: Duration) -> Instant {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::error!("cannot install signal handlers");
            state.quit.notified().await;
            return Instant::now();
        }
    };
    tokio::select! {
        _ = term.recv() => {
            tracing::info!(drain_time_s = drain_time.as_secs(), "SIGTERM: draining");
            deadline_after(drain_time)
        }
        _ = int.recv() => {
            tracing::info!(drain_time_s = drain_time.as_secs(), "SIGINT: draining");
            deadline_after(drain_time)
        }
        _ = state.quit.notified() => {
            tracing::info!("quitquitquit: shutting down");
            Instant::now()
        }
    }
}

/// Now plus `d`, saturating (a huge --drain-time-s means "until the work is done").
fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}
