//! A harness for fuzz targets (the `fuzzing` feature only): one downstream connection served
//! by a listener's HTTP connection manager over an in-memory stream, its upstream connections
//! in memory as well, their other ends given to a function the target sets.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::io::DuplexStream;

use crate::config::model::{self, NetworkFilter};
use crate::drain::Drain;
use crate::http::conn_manager::{self, HttpConnectionManager};
use crate::io::Stream;
use crate::stats::Store;
use crate::stream_info::Connection;
use crate::upstream::ClusterInfo;
use crate::worker::{self, Worker};

/// Opens an upstream connection to a host's address: the proxy's end of it.
pub type Connector = Box<dyn Fn(SocketAddr) -> DuplexStream>;

thread_local! {
    static CONNECTOR: RefCell<Option<Rc<Connector>>> = const { RefCell::new(None) };
}

/// Upstream connections on this thread go to `connector` (none: real TCP connects).
pub fn set_connector(connector: Option<Connector>) {
    CONNECTOR.with(|c| *c.borrow_mut() = connector.map(Rc::new));
}

/// The proxy's end of an upstream connection to `addr`, when a connector is set.
pub(crate) fn upstream(addr: SocketAddr) -> Option<DuplexStream> {
    let connector = CONNECTOR.with(|c| c.borrow().clone())?;
    Some(connector(addr))
}

/// A worker running the first listener of a bootstrap, for HTTP connections handed to it.
#[derive(Debug)]
pub struct Proxy {
    worker: Rc<Worker>,
    hcm: Rc<HttpConnectionManager>,
    listener: Arc<model::Listener>,
    drain: Drain,
}

impl Proxy {
    /// Loads `bootstrap` (YAML) as the proxy would: its static clusters in force, the HCM of
    /// the first filter chain of its first listener serving connections. Call it on the thread
    /// (and inside the `LocalSet`) that serves them.
    pub fn from_yaml(bootstrap: &str) -> Result<Self, String> {
        let loaded = crate::config::load_text(bootstrap).map_err(|e| e.to_string())?;
        let listener = loaded
            .model
            .listeners
            .first()
            .cloned()
            .ok_or("no listener")?;
        let hcm = listener
            .filter_chains
            .iter()
            .map(|(_, fc)| fc)
            .chain(listener.default_filter_chain.iter())
            .find_map(|fc| match fc.filters.last() {
                Some(NetworkFilter::HttpConnectionManager(h)) => Some(h.clone()),
                _ => None,
            })
            .ok_or("no http_connection_manager")?;
        let stats = Store::new(1);
        let shard = stats.worker(0).clone();
        let worker = Worker::new(
            0,
            shard.clone(),
            &worker::Shared {
                flush_interval: std::time::Duration::from_secs(1),
                health_failed: Arc::new(AtomicBool::new(false)),
                drain_strategy: crate::drain::DrainStrategy::default(),
                local_zone: None,
                internal_buffer: crate::listener::internal::DEFAULT_BUFFER,
            },
        );
        let infos: HashMap<String, Arc<ClusterInfo>> = loaded
            .model
            .clusters
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    Arc::new(ClusterInfo::new(c.clone(), stats.main())),
                )
            })
            .collect();
        worker.clusters.update(&infos, &shard);
        let scope = format!("listener.{}.", listener.stat_prefix);
        let hcm = Rc::new(HttpConnectionManager::new(hcm, &shard, &scope));
        Ok(Proxy {
            worker,
            hcm,
            listener,
            drain: Drain::new(),
        })
    }

    /// Serves one downstream connection until it ends, as the listener would serve a plain
    /// TCP connection from `remote`.
    pub async fn serve(&self, downstream: DuplexStream, remote: SocketAddr) {
        let connection = Connection {
            id: crate::stream_info::next_connection_id(),
            direct_remote: Some(remote),
            requested_server_name: None,
            tls: None,
            peer_certificate: false,
            listener_metadata: None,
            filter_state: Default::default(),
            metadata: None,
        };
        let drain = crate::drain::ConnectionDrain::new(
            self.drain.watch(),
            self.listener.drain_type,
            self.worker.drain_strategy,
            self.worker.health_failed.clone(),
        );
        conn_manager::serve(
            Stream::Internal(crate::io::Internal::new(downstream)),
            remote,
            self.listener.address,
            Arc::new(connection),
            None,
            self.hcm.clone(),
            self.worker.clone(),
            drain,
            self.listener.buffer_limit,
            // Not exempt from the overload manager (none is configured in these harnesses).
            true,
        )
        .await;
    }

    /// Closes the idle pooled upstream connections, so the next connection starts afresh.
    pub fn close_idle(&self) {
        self.worker.clusters.close_idle();
    }
}
