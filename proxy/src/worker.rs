//! Workers: each a thread with a single-threaded tokio runtime that owns its own listen sockets,
//! connection pools and stats shard. A connection lives and dies on the worker that accepted it.
//!
//! The main thread's ConfigStore sends each worker the configuration in force as an immutable
//! [`Snapshot`]; the worker then starts, replaces and drains its listeners and swaps its
//! clusters and route tables, on its own thread, between two events of its loop. Nothing on the
//! request path takes a lock: a stream reads the worker's current maps when it starts.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::access_log;
use crate::config::model;
use crate::config_store::Snapshot;
use crate::drain::{DrainKind, Draining};
use crate::listener;
use crate::router::RouteTable;
use crate::stats::Shard;
use crate::upstream::ClusterManager;

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

/// What the main thread tells a worker.
#[derive(Debug)]
pub enum WorkerUpdate {
    /// The configuration now in force, with the listen sockets bound for this worker for the
    /// listeners that need new ones (by listener name).
    Config {
        /// The snapshot.
        snapshot: Arc<Snapshot>,
        /// New sockets by listener name, with their addresses (the addresses a listener keeps
        /// from the version it replaces are not among them).
        sockets: HashMap<String, Vec<(SocketAddr, std::net::TcpListener)>>,
        /// How long a replaced or removed listener's connections may take to finish.
        drain_time: Duration,
    },
    /// Serve a UDP listener on its socket (sent once, to the first worker).
    Udp {
        /// The listener.
        listener: Arc<model::UdpListener>,
        /// Its bound socket.
        socket: std::net::UdpSocket,
    },
    /// Drain listeners: `/drain_listeners` (only inbound ones with `inbound_only`) or the
    /// process's shutdown, after which the worker exits once idle or at the deadline.
    Drain {
        /// The drain.
        draining: Draining,
        /// Only listeners whose `traffic_direction` is INBOUND.
        inbound_only: bool,
    },
}

/// What every worker is started with.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Access log flush interval.
    pub flush_interval: Duration,
    /// Set by the admin's `POST /healthcheck/fail`: responses then ask HTTP/1.1 clients to close.
    pub health_failed: Arc<AtomicBool>,
    /// `--drain-strategy`.
    pub drain_strategy: crate::drain::DrainStrategy,
    /// The bootstrap's local cluster and the node's locality (zone-aware routing).
    pub local_zone: Option<crate::upstream::LocalZone>,
    /// Each direction's buffer of a connection to an internal listener.
    pub internal_buffer: usize,
}

/// A listener running on this worker.
struct Active {
    config: Arc<model::Listener>,
    listener: Rc<listener::Shared>,
    /// One per address (none for `bind_to_port: false`, or once stopped).
    sockets: Vec<(SocketAddr, Rc<TcpListener>)>,
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
    /// Its virtual clusters' stats.
    pub vclusters: crate::http::vcluster::Vclusters,
    /// This worker's access log buffers.
    pub access_log: Rc<access_log::Writer>,
    /// Route configurations from RDS, by name.
    routes: RefCell<HashMap<String, Arc<RouteTable>>>,
    /// The scopes of SRDS subscriptions, by `scoped_routes.name`.
    scoped: RefCell<HashMap<String, Arc<crate::router::scoped::ScopeTables>>>,
    /// Set by `POST /healthcheck/fail`.
    pub health_failed: Arc<AtomicBool>,
    /// `--drain-strategy`.
    pub drain_strategy: crate::drain::DrainStrategy,
    listener_addresses: RefCell<Vec<SocketAddr>>,
    listeners: RefCell<HashMap<String, Active>>,
    handoff: Rc<listener::HandOff>,
    /// Each direction's buffer of a connection to an internal listener.
    internal_buffer: usize,
    connections: Cell<usize>,
    idle: Notify,
}

impl std::fmt::Debug for Active {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Active")
            .field("listener", &self.config.name)
            .finish()
    }
}

impl Worker {
    /// Worker `id`'s state, with no configuration in force yet.
    pub(crate) fn new(id: usize, shard: Arc<Shard>, shared: &Shared) -> Rc<Self> {
        Rc::new(Worker {
            id,
            clusters: ClusterManager::new(shared.local_zone.clone()),
            vclusters: Default::default(),
            shard,
            access_log: access_log::Writer::new(),
            routes: RefCell::new(HashMap::new()),
            scoped: RefCell::new(HashMap::new()),
            health_failed: shared.health_failed.clone(),
            drain_strategy: shared.drain_strategy,
            listener_addresses: RefCell::new(Vec::new()),
            listeners: RefCell::new(HashMap::new()),
            handoff: Rc::new(listener::HandOff::default()),
            internal_buffer: shared.internal_buffer,
            connections: Cell::new(0),
            idle: Notify::new(),
        })
    }

    /// True when `dest` is one of this proxy's own listeners: a connection that was not
    /// redirected reports its listener as its original destination, and following it to an
    /// ORIGINAL_DST cluster would loop back into the proxy.
    pub fn is_own_listener(&self, dest: SocketAddr) -> bool {
        self.listener_addresses
            .borrow()
            .iter()
            .any(|l| l.port() == dest.port() && (l.ip() == dest.ip() || l.ip().is_unspecified()))
    }

    /// The route configuration called `name` in force now (RDS).
    pub fn route_table(&self, name: &str) -> Option<Arc<RouteTable>> {
        self.routes.borrow().get(name).cloned()
    }

    /// The scopes SRDS subscription `name` has now (none yet: no scope).
    pub fn scope_tables(&self, name: &str) -> Arc<crate::router::scoped::ScopeTables> {
        self.scoped.borrow().get(name).cloned().unwrap_or_default()
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

    /// Puts a snapshot in force on this worker: listeners started, replaced (keeping the
    /// socket when the address is the same, so no connection is refused) or drained; clusters
    /// and routes swapped for the streams that start from now on.
    fn apply(
        self: &Rc<Self>,
        snapshot: &Snapshot,
        mut sockets: HashMap<String, Vec<(SocketAddr, std::net::TcpListener)>>,
        drain_time: Duration,
    ) {
        self.clusters.update(&snapshot.clusters, &self.shard);
        *self.routes.borrow_mut() = snapshot.routes.clone();
        *self.scoped.borrow_mut() = snapshot.scoped.clone();
        let modify = Draining {
            kind: DrainKind::Modify,
            started: std::time::Instant::now(),
            deadline: crate::server::deadline_after(drain_time),
            accepting: false,
            asks_close: true,
            force_close: true,
        };
        let mut old = std::mem::take(&mut *self.listeners.borrow_mut());
        let mut next = HashMap::new();
        for config in &snapshot.listeners {
            let prev = old.remove(&config.name);
            if let Some(p) = &prev {
                if Arc::ptr_eq(&p.config, config) {
                    next.insert(config.name.clone(), prev.expect("checked"));
                    continue;
                }
            }
            // Addresses it keeps: the old version's sockets; the others: the new ones.
            let kept = prev
                .as_ref()
                .map(|p| listener::kept_addresses(&p.config, config))
                .unwrap_or_default();
            let mut socks: Vec<(SocketAddr, Rc<TcpListener>)> = prev
                .as_ref()
                .map(|p| {
                    p.sockets
                        .iter()
                        .filter(|(a, _)| kept.contains(a))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            for (a, s) in sockets.remove(&config.name).unwrap_or_default() {
                match TcpListener::from_std(s) {
                    Ok(s) => socks.push((a, Rc::new(s))),
                    Err(e) => {
                        tracing::error!(worker = self.id, listener = %config.name, error = %e, "cannot use listen socket")
                    }
                }
            }
            let shared = listener::Shared::new(
                self.clone(),
                config.clone(),
                self.handoff.clone(),
                self.health_failed.clone(),
                prev.as_ref().map(|p| &*p.listener),
            );
            if let Some(p) = prev {
                p.listener.retire(modify, &shared);
            }
            for (_, s) in &socks {
                tokio::task::spawn_local(listener::accept_loop(shared.clone(), s.clone()));
            }
            next.insert(
                config.name.clone(),
                Active {
                    config: config.clone(),
                    listener: shared,
                    sockets: socks,
                },
            );
        }
        for (_, gone) in old {
            gone.listener.drain_all(modify);
        }
        *self.listener_addresses.borrow_mut() = snapshot
            .listeners
            .iter()
            .filter(|l| l.bind_to_port)
            .flat_map(|l| l.addresses())
            .collect();
        self.handoff.set(
            next.values()
                .filter(|a| !a.config.internal)
                .map(|a| a.listener.clone())
                .collect(),
        );
        listener::internal::set(
            next.values()
                .filter(|a| a.config.internal)
                .map(|a| (a.config.name.clone(), a.listener.clone()))
                .collect(),
            self.internal_buffer,
        );
        *self.listeners.borrow_mut() = next;
    }

    /// Drains this worker's listeners (only inbound ones with `inbound_only`).
    fn drain_listeners(&self, draining: Draining, inbound_only: bool) {
        for a in self.listeners.borrow_mut().values_mut() {
            if !inbound_only || a.config.inbound {
                a.listener.drain_all(draining);
                if !draining.accepting {
                    // Stopped for good: the sockets close once their accept loops end, so new
                    // connections are refused rather than left in the backlog.
                    a.sockets.clear();
                }
            }
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

/// Starts worker `id` on its own thread; it serves the configurations `updates` brings until
/// a shutdown drain ends or the sender goes away.
pub fn spawn(
    id: usize,
    shard: Arc<Shard>,
    shared: Shared,
    updates: mpsc::UnboundedReceiver<WorkerUpdate>,
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
            // A worker allocates and frees the same sizes over and over (connections,
            // streams, buffers): it keeps what it frees for its next allocations.
            skiff_sys::alloc::cache_this_thread();
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, run(id, shard, shared, updates));
            drop(local);
            drop(rt);
            skiff_sys::alloc::release_this_thread();
        })
}

async fn run(
    id: usize,
    shard: Arc<Shard>,
    shared: Shared,
    mut updates: mpsc::UnboundedReceiver<WorkerUpdate>,
) {
    let worker = Worker::new(id, shard, &shared);
    worker.access_log.attach(&worker);
    tokio::task::spawn_local(worker.access_log.clone().run_flusher(shared.flush_interval));
    crate::overload::accounts::start_worker(
        worker
            .shard
            .counter("envoy.overload_actions.reset_high_memory_stream.count"),
    );
    let mut shutdown = None;
    while let Some(update) = updates.recv().await {
        match update {
            WorkerUpdate::Config {
                snapshot,
                sockets,
                drain_time,
            } => worker.apply(&snapshot, sockets, drain_time),
            WorkerUpdate::Udp { listener, socket } => {
                tokio::task::spawn_local(crate::udp::run(worker.clone(), listener, socket));
            }
            WorkerUpdate::Drain {
                draining,
                inbound_only,
            } => {
                worker.drain_listeners(draining, inbound_only);
                if draining.kind == DrainKind::Shutdown {
                    shutdown = Some(draining.deadline);
                    break;
                }
            }
        }
    }
    let deadline = shutdown.unwrap_or_else(std::time::Instant::now);
    // In-flight work may finish until the deadline; then whatever is left is closed.
    let _ = tokio::time::timeout_at(Instant::from_std(deadline), worker.wait_idle()).await;
    worker.clusters.close_idle();
    worker.access_log.flush();
}
