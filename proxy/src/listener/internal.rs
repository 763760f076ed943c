//! Internal listeners (`internal_listener`): listeners with no socket. A cluster whose endpoint
//! is an `envoy_internal_address` connects to one in memory, on the worker the request runs
//! on, as Envoy's user space sockets do: the listener's filters and chains then serve the
//! connection as any other.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use crate::config::filter_state::FilterState;
use crate::config::metadata::Metadata;
use crate::config::model::{InternalAddress, InternalUpstream, PassthroughFrom};
use crate::io::Internal;

use super::Shared;

/// Each direction's buffer when the bootstrap extension sets none (`buffer_size_kb` 1024).
pub const DEFAULT_BUFFER: usize = 1024 * 1024;

/// This worker's internal listeners by name, and each direction's buffer size.
#[derive(Default)]
struct Registry {
    listeners: HashMap<String, Rc<Shared>>,
    buffer: usize,
}

thread_local! {
    static REGISTRY: RefCell<Registry> = RefCell::new(Registry::default());
}

/// The internal listeners in force on this worker (after a configuration update).
pub(crate) fn set(listeners: HashMap<String, Rc<Shared>>, buffer: usize) {
    REGISTRY.with(|r| *r.borrow_mut() = Registry { listeners, buffer });
}

/// Opens a connection to the internal listener `to` names (`local`: its stand-in address),
/// handing it `metadata` and the filter state objects `shared` with it: the client's end.
/// Refused when this worker has no such listener. The listener first runs what it can of the
/// connection: one it closes at once (before anything waited) counts as refused, as Envoy's
/// connect completes only after that.
pub async fn connect(
    to: &InternalAddress,
    local: SocketAddr,
    metadata: Option<Arc<Metadata>>,
    shared: Option<Arc<FilterState>>,
) -> io::Result<Internal> {
    let (listener, buffer) = REGISTRY.with(|r| {
        let r = r.borrow();
        (r.listeners.get(&to.listener).cloned(), r.buffer)
    });
    let Some(listener) = listener else {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("no internal listener '{}'", to.listener),
        ));
    };
    let (client, server) = tokio::io::duplex(buffer.max(1));
    tokio::task::spawn_local(listener.handle_internal(
        Internal::new(server),
        local,
        metadata,
        shared,
    ));
    let mut client = Internal::new(client);
    tokio::task::yield_now().await;
    if client.closed_already() {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("internal listener '{}' closed the connection", to.listener),
        ));
    }
    Ok(client)
}

/// What `internal_upstream` passes through for a host: each named namespace of the host's
/// or the cluster's metadata that has one (none: nothing).
pub fn passthrough(
    config: &InternalUpstream,
    host: &Metadata,
    cluster: &Metadata,
) -> Option<Arc<Metadata>> {
    let mut out = Metadata::default();
    for (from, name) in &config.passthrough {
        let source = match from {
            PassthroughFrom::Host => host,
            PassthroughFrom::Cluster => cluster,
        };
        if let Some(ns) = source.filter_metadata.get(name) {
            out.filter_metadata.insert(name.clone(), ns.clone());
        }
    }
    (!out.filter_metadata.is_empty()).then(|| Arc::new(out))
}
