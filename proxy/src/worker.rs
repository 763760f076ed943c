//! Workers: each a thread with a single-threaded tokio runtime that owns its own listen sockets,
//! connection pools and stats shard. A connection lives and dies on the worker that accepted it.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::access_log;
use crate::config::model;
use crate::listener;
use crate::stats::Shard;
use crate::upstream::{ClusterInfo, ClusterManager};

/// Spawns futures on the current worker's `LocalSet`, for hyper's HTTP/2 streams.
#[derive(Debug, Clone, Copy)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// Drain state broadcast from the main thread: `Some(deadline)` once draining.
pub type DrainState = Option<std::time::Instant>;

/// Waits for the start of a drain.
#[derive(Debug, Clone)]
pub struct DrainSignal(watch::Receiver<DrainState>);

impl DrainSignal {
    /// Resolves once draining has begun (at once if it already has).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|s| s.is_some()).await;
    }
}

/// What every worker is started with.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Clusters with their cross-worker host counters.
    pub clusters: Vec<Arc<ClusterInfo>>,
    /// Access log flush interval.
    pub flush_interval: Duration,
    /// The drain broadcast.
    pub drain: watch::Receiver<DrainState>,
    /// Set by the admin's `POST /healthcheck/fail`: responses then ask HTTP/1.1 clients to close.
    pub health_failed: Arc<AtomicBool>,
    /// The addresses of every listener, to refuse ORIGINAL_DST connections back to ourselves.
    pub listener_addresses: Arc<Vec<std::net::SocketAddr>>,
}

/// One worker's state, shared by its tasks.
#[derive(Debug)]
pub struct Worker {
    /// `worker_<id>`.
    pub id: usize,
    /// This worker's stats shard.
    pub shard: Arc<Shard>,
    /// This worker's clusters and pools.
    pub clusters: ClusterManager,
    /// This worker's access log buffers.
    pub access_log: Rc<access_log::Writer>,
    drain: watch::Receiver<DrainState>,
    health_failed: Arc<AtomicBool>,
    listener_addresses: Arc<Vec<std::net::SocketAddr>>,
    connections: Cell<usize>,
    idle: Notify,
}

impl Worker {
    /// A signal that resolves when draining starts.
    pub fn drain_signal(&self) -> DrainSignal {
        DrainSignal(self.drain.clone())
    }

    /// True once draining has begun.
    pub fn draining(&self) -> bool {
        self.drain.borrow().is_some()
    }

    /// True when HTTP/1.1 responses should carry `connection: close`: draining, or failing
    /// health checks (Envoy's drain-close).
    pub fn closing_connections(&self) -> bool {
        self.draining() || self.health_failed.load(Ordering::Relaxed)
    }

    /// True when `dest` is one of this proxy's own listeners: a connection that was not
    /// redirected reports its listener as its original destination, and following it to an
    /// ORIGINAL_DST cluster would loop back into the proxy.
    pub fn is_own_listener(&self, dest: std::net::SocketAddr) -> bool {
        self.listener_addresses
            .iter()
            .any(|l| l.port() == dest.port() && (l.ip() == dest.ip() || l.ip().is_unspecified()))
    }

    /// Counts a downstream connection until the guard drops.
    pub fn track_connection(self: &Rc<Self>) -> ConnectionGuard {
        self.connections.set(self.connections.get() + 1);
        ConnectionGuard(self.clone())
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.connections.get() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Keeps a worker's connection count.
#[derive(Debug)]
pub struct ConnectionGuard(Rc<Worker>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let n = self.0.connections.get().saturating_sub(1);
        self.0.connections.set(n);
        if n == 0 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Starts worker `id` on its own thread with the listen sockets bound for it.
pub fn spawn(
    id: usize,
    shard: Arc<Shard>,
    shared: Shared,
    sockets: Vec<(Arc<model::Listener>, Option<std::net::TcpListener>)>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("worker_{id}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(worker = id, error = %e, "cannot start worker runtime");
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, run(id, shard, shared, sockets));
        })
}

async fn run(
    id: usize,
    shard: Arc<Shard>,
    shared: Shared,
    sockets: Vec<(Arc<model::Listener>, Option<std::net::TcpListener>)>,
) {
    let worker = Rc::new(Worker {
        id,
        clusters: ClusterManager::new(&shared.clusters, &shard),
        shard,
        access_log: access_log::Writer::new(),
        drain: shared.drain.clone(),
        health_failed: shared.health_failed.clone(),
        listener_addresses: shared.listener_addresses.clone(),
        connections: Cell::new(0),
        idle: Notify::new(),
    });
    tokio::task::spawn_local(worker.access_log.clone().run_flusher(shared.flush_interval));
    let handoff = Rc::new(listener::HandOff::default());
    for (config, socket) in sockets {
        match listener::Listener::new(worker.clone(), config, socket, handoff.clone()) {
            Ok(l) => {
                tokio::task::spawn_local(l.run());
            }
            Err(e) => tracing::error!(worker = id, error = %e, "cannot start listener"),
        }
    }
    let mut drain = worker.drain_signal();
    drain.wait().await;
    let deadline = (*shared.drain.borrow()).unwrap_or_else(std::time::Instant::now);
    // In-flight work may finish until the deadline; then whatever is left is closed.
    let _ = tokio::time::timeout_at(Instant::from_std(deadline), worker.wait_idle()).await;
    worker.clusters.close_idle();
    worker.access_log.flush();
}
