//! A DNS server of the tests' own on loopback (UDP), whose answers and TTLs the test sets and
//! changes while the proxies run, and which records every query it gets.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;

/// How the server answers for one name.
#[derive(Debug, Clone)]
pub enum Zone {
    /// These addresses (A for IPv4 ones, AAAA for IPv6 ones), with this TTL in seconds. A type
    /// with no address is answered NOERROR with no record (NODATA).
    Addresses(Vec<IpAddr>, u32),
    /// NXDOMAIN.
    NxDomain,
    /// SERVFAIL.
    ServFail,
    /// No answer at all (the query times out).
    Silent,
}

/// One query the server received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The name, lower case, without the final dot.
    pub name: String,
    /// A, AAAA, …
    pub qtype: String,
    /// When.
    pub at: Instant,
}

#[derive(Default)]
struct State {
    zones: HashMap<String, Zone>,
    seen: Vec<Seen>,
}

/// A running DNS server.
pub struct DnsServer {
    /// Where it listens (UDP).
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsServer {
    /// Starts a server on `127.0.0.1`, answering NXDOMAIN for every name until told otherwise.
    pub async fn start() -> DnsServer {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
        let addr = sock.local_addr().expect("local addr");
        let state: Arc<Mutex<State>> = Arc::default();
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                let Some(reply) = answer(&st, &buf[..n]) else {
                    continue;
                };
                let _ = sock.send_to(&reply, from).await;
            }
        });
        DnsServer { addr, state, task }
    }

    /// Sets how `name` is answered from now on.
    pub fn set(&self, name: &str, zone: Zone) {
        let mut st = self.state.lock().expect("dns state");
        st.zones.insert(key(name), zone);
    }

    /// The queries received so far for `name` of type `qtype`.
    pub fn queries(&self, name: &str, qtype: &str) -> Vec<Seen> {
        let st = self.state.lock().expect("dns state");
        st.seen
            .iter()
            .filter(|s| s.name == key(name) && s.qtype == qtype)
            .cloned()
            .collect()
    }

    /// Every query received so far.
    pub fn all_queries(&self) -> Vec<Seen> {
        self.state.lock().expect("dns state").seen.clone()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(state: &Mutex<State>, packet: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(packet).ok()?;
    let query = q.queries().first()?.clone();
    let name = key(&query.name().to_ascii());
    let zone = {
        let mut st = state.lock().ok()?;
        st.seen.push(Seen {
            name: name.clone(),
            qtype: query.query_type().to_string(),
            at: Instant::now(),
        });
        st.zones.get(&name).cloned().unwrap_or(Zone::NxDomain)
    };
    let mut r = Message::new();
    r.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_op_code(q.op_code())
        .set_authoritative(true)
        .set_recursion_desired(q.recursion_desired())
        .set_recursion_available(true)
        .add_query(query.clone());
    match zone {
        Zone::Silent => return None,
        Zone::NxDomain => {
            r.set_response_code(ResponseCode::NXDomain);
        }
        Zone::ServFail => {
            r.set_response_code(ResponseCode::ServFail);
        }
        Zone::Addresses(ips, ttl) => {
            for ip in ips {
                let rdata = match (ip, query.query_type()) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(A(v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(v6)),
                    _ => continue,
                };
                r.add_answer(Record::from_rdata(query.name().clone(), ttl, rdata));
            }
        }
    }
    r.to_vec().ok()
}
