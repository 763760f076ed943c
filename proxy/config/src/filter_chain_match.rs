//! Filter chain matching as Envoy's filter chain manager does it: a tree built once per
//! configuration, one level per `filter_chain_match` field in Envoy's order — destination port,
//! destination IP, server name, transport protocol, application protocols, direct source IP,
//! source type, source IP, source port. At each level the most specific entry that matches the
//! connection is taken (an exact value over a range or wildcard over "any"), and the search never
//! backtracks: when that entry's subtree has no chain, no chain matches.

use std::net::{IpAddr, SocketAddr};

use std::sync::Arc;

use crate::model::{self, CidrRange, FilterChainMatch, SourceType};

/// The requested application protocols.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ApplicationProtocols {
    /// None requested.
    #[default]
    None,
    /// A ClientHello's ALPN list, as on the wire (each name prefixed by its length).
    Alpn(Box<[u8]>),
    /// One protocol (the http_inspector's).
    One(&'static str),
}

impl ApplicationProtocols {
    /// Each requested protocol.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let (list, one): (&[u8], Option<&[u8]>) = match self {
            ApplicationProtocols::None => (&[], None),
            ApplicationProtocols::Alpn(l) => (l, None),
            ApplicationProtocols::One(p) => (&[], Some(p.as_bytes())),
        };
        alpn_names(list).chain(one)
    }
}

/// The names of an ALPN list as on the wire (each prefixed by its length).
pub fn alpn_names(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = list;
    std::iter::from_fn(move || {
        let (&len, tail) = rest.split_first()?;
        let name = tail.get(..usize::from(len))?;
        rest = &tail[usize::from(len)..];
        Some(name)
    })
}

/// What a connection offers to the match.
#[derive(Debug, Clone, Copy)]
pub struct ChainInput<'a> {
    /// The local address (original destination or PROXY destination, once restored).
    pub local: SocketAddr,
    /// The downstream remote address (the PROXY source, if any).
    pub remote: SocketAddr,
    /// The peer the connection really comes from.
    pub direct_remote: SocketAddr,
    /// The requested server name, lower case ("" for none).
    pub server_name: &'a str,
    /// The detected transport protocol.
    pub transport_protocol: &'a str,
    /// The requested application protocols, in the client's order.
    pub application_protocols: &'a ApplicationProtocols,
}

/// The result of a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// `filter_chains[i]`.
    Chain(usize),
    /// Nothing matched: the default chain, if there is one.
    Default,
}

/// One level's key. `Any` is the entry of chains that do not constrain this level.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Any,
    Port(u16),
    Cidr(CidrRange),
    /// An exact server name.
    Name(Box<str>),
    /// A wildcard server name, kept as its suffix: `.example.com` for `*.example.com`.
    Suffix(Box<str>),
    Text(Box<str>),
    SourceType(SourceType),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    DestinationPort,
    DestinationIp,
    ServerName,
    TransportProtocol,
    ApplicationProtocols,
    DirectSourceIp,
    SourceType,
    SourceIp,
    SourcePort,
}

const LEVELS: [Level; 9] = [
    Level::DestinationPort,
    Level::DestinationIp,
    Level::ServerName,
    Level::TransportProtocol,
    Level::ApplicationProtocols,
    Level::DirectSourceIp,
    Level::SourceType,
    Level::SourceIp,
    Level::SourcePort,
];

#[derive(Debug, Clone)]
enum Node {
    Leaf(usize),
    /// Entries of one level, most specific first within each kind.
    Branch(Vec<(Key, Node)>),
}

/// Two chains that no connection could tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overlap {
    /// The later of the two chains.
    pub chain: usize,
}

/// The lookup tree of one listener's `filter_chains`.
#[derive(Debug, Clone)]
pub struct ChainTable {
    root: Option<Node>,
    /// One chain that matches everything: no lookup at all.
    catch_all: bool,
}

fn keys(m: &FilterChainMatch, level: Level) -> Vec<Key> {
    fn or_any(v: Vec<Key>) -> Vec<Key> {
        if v.is_empty() {
            vec![Key::Any]
        } else {
            v
        }
    }
    match level {
        Level::DestinationPort => vec![m.destination_port.map_or(Key::Any, Key::Port)],
        Level::DestinationIp => or_any(m.prefix_ranges.iter().map(|r| Key::Cidr(*r)).collect()),
        Level::ServerName => or_any(
            m.server_names
                .iter()
                .map(|n| match n.strip_prefix('*') {
                    Some(suffix) => Key::Suffix(suffix.into()),
                    None => Key::Name(n.as_str().into()),
                })
                .collect(),
        ),
        Level::TransportProtocol => vec![if m.transport_protocol.is_empty() {
            Key::Any
        } else {
            Key::Text(m.transport_protocol.as_str().into())
        }],
        Level::ApplicationProtocols => or_any(
            m.application_protocols
                .iter()
                .map(|p| Key::Text(p.as_str().into()))
                .collect(),
        ),
        Level::DirectSourceIp => or_any(
            m.direct_source_prefix_ranges
                .iter()
                .map(|r| Key::Cidr(*r))
                .collect(),
        ),
        Level::SourceType => vec![Key::SourceType(m.source_type)],
        Level::SourceIp => or_any(
            m.source_prefix_ranges
                .iter()
                .map(|r| Key::Cidr(*r))
                .collect(),
        ),
        Level::SourcePort => or_any(m.source_ports.iter().map(|p| Key::Port(*p)).collect()),
    }
}

fn build(chains: &[(usize, &FilterChainMatch)], depth: usize) -> Result<Node, Overlap> {
    let Some(&level) = LEVELS.get(depth) else {
        return match chains {
            [(i, _)] => Ok(Node::Leaf(*i)),
            [.., (i, _)] => Err(Overlap { chain: *i }),
            [] => Err(Overlap { chain: 0 }),
        };
    };
    let mut groups: Vec<(Key, Vec<(usize, &FilterChainMatch)>)> = Vec::new();
    for &(i, m) in chains {
        for k in keys(m, level) {
            match groups.iter_mut().find(|(g, _)| *g == k) {
                Some((_, members)) => members.push((i, m)),
                None => groups.push((k, vec![(i, m)])),
            }
        }
    }
    // Longest prefixes first, so the first containing range is the most specific.
    groups.sort_by_key(|(k, _)| match k {
        Key::Cidr(r) => std::cmp::Reverse(r.prefix_len),
        _ => std::cmp::Reverse(0),
    });
    let mut entries = Vec::with_capacity(groups.len());
    for (k, members) in groups {
        entries.push((k, build(&members, depth + 1)?));
    }
    Ok(Node::Branch(entries))
}

/// Which chain a connection runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainChoice {
    /// `filter_chains[i]`.
    Index(usize),
    /// `default_filter_chain`.
    Default,
}

/// A listener's filter chains with the table that picks one: what a worker serves a listener
/// with, built from its configuration.
#[derive(Debug)]
pub struct Chains {
    table: ChainTable,
    listener: Arc<model::Listener>,
}

impl Chains {
    /// The table of `listener`'s chains. Translation refused overlapping matches, so it
    /// builds; should it not, no chain matches but the default one.
    pub fn new(listener: Arc<model::Listener>) -> Self {
        if listener.filter_chain_matcher.is_some() {
            // The matcher picks; the chains' matches are ignored.
            return Chains {
                table: ChainTable {
                    root: None,
                    catch_all: false,
                },
                listener,
            };
        }
        let matches: Vec<&FilterChainMatch> =
            listener.filter_chains.iter().map(|(m, _)| m).collect();
        let table = ChainTable::new(&matches).unwrap_or_else(|o| {
            tracing::error!(listener = %listener.name, chain = o.chain, "overlapping filter chain matches");
            ChainTable {
                root: None,
                catch_all: false,
            }
        });
        Chains { table, listener }
    }

    /// The chain a connection runs, with Envoy's precedence (see [`ChainTable`]). None: no
    /// chain matches and there is no default chain.
    pub fn select(&self, input: &ChainInput<'_>) -> Option<ChainChoice> {
        if let Some(m) = &self.listener.filter_chain_matcher {
            let headers = http::HeaderMap::new();
            let view = crate::router::RequestView::get("", &headers);
            let data = crate::matcher::Data {
                view: &view,
                source: input.remote,
                direct_source: input.direct_remote.ip(),
                local: input.local,
                server_name: Some(input.server_name),
                transport_protocol: input.transport_protocol,
                application_protocols: input.application_protocols,
                metadata: None,
            };
            // A name no chain has matched: the connection has no chain (Envoy's
            // `NoopFilterChainAction`), even with a default one.
            match m.evaluate(&data) {
                Some(Some(i)) => return Some(ChainChoice::Index(*i)),
                Some(None) => return None,
                None => {}
            }
            return self
                .listener
                .default_filter_chain
                .as_ref()
                .map(|_| ChainChoice::Default);
        }
        match self.table.lookup(input) {
            Lookup::Chain(i) => Some(ChainChoice::Index(i)),
            Lookup::Default => self
                .listener
                .default_filter_chain
                .as_ref()
                .map(|_| ChainChoice::Default),
        }
    }

    /// The chain of a plaintext connection to `local` from a loopback peer, with nothing
    /// detected by listener filters.
    pub fn select_local(&self, local: SocketAddr) -> Option<ChainChoice> {
        let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
        self.select(&ChainInput {
            local,
            remote: peer,
            direct_remote: peer,
            server_name: "",
            transport_protocol: "raw_buffer",
            application_protocols: &ApplicationProtocols::None,
        })
    }
}

impl ChainTable {
    /// The table for `filter_chains`' matches; an error names a chain that another one
    /// overlaps completely.
    pub fn new(matches: &[&FilterChainMatch]) -> Result<Self, Overlap> {
        let catch_all = matches.len() == 1 && *matches[0] == FilterChainMatch::default();
        let indexed: Vec<(usize, &FilterChainMatch)> =
            matches.iter().copied().enumerate().collect();
        let root = if matches.is_empty() {
            None
        } else {
            Some(build(&indexed, 0)?)
        };
        Ok(ChainTable { root, catch_all })
    }

    /// Whether the lookup needs only the local address (no chain names a server name, protocol
    /// or source), so the listener can skip gathering the rest.
    pub fn is_catch_all(&self) -> bool {
        self.catch_all
    }

    /// The chain for a connection.
    pub fn lookup(&self, c: &ChainInput<'_>) -> Lookup {
        if self.catch_all {
            return Lookup::Chain(0);
        }
        let Some(mut node) = self.root.as_ref() else {
            return Lookup::Default;
        };
        for level in LEVELS {
            let Node::Branch(entries) = node else {
                break;
            };
            match pick(entries, level, c) {
                Some(next) => node = next,
                None => return Lookup::Default,
            }
        }
        match node {
            Node::Leaf(i) => Lookup::Chain(*i),
            Node::Branch(_) => Lookup::Default,
        }
    }
}

fn find<'n>(entries: &'n [(Key, Node)], key: &Key) -> Option<&'n Node> {
    entries.iter().find(|(k, _)| k == key).map(|(_, n)| n)
}

fn any(entries: &[(Key, Node)]) -> Option<&Node> {
    find(entries, &Key::Any)
}

fn longest_prefix(entries: &[(Key, Node)], ip: IpAddr) -> Option<&Node> {
    let ip = ip.to_canonical();
    entries
        .iter()
        .find(|(k, _)| matches!(k, Key::Cidr(r) if r.contains(ip)))
        .map(|(_, n)| n)
        .or_else(|| any(entries))
}

fn exact_text<'n>(entries: &'n [(Key, Node)], value: &[u8]) -> Option<&'n Node> {
    entries
        .iter()
        .find(|(k, _)| matches!(k, Key::Text(t) if t.as_bytes() == value))
        .map(|(_, n)| n)
}

/// The entry of one level that a connection takes.
fn pick<'n>(entries: &'n [(Key, Node)], level: Level, c: &ChainInput<'_>) -> Option<&'n Node> {
    match level {
        Level::DestinationPort => {
            find(entries, &Key::Port(c.local.port())).or_else(|| any(entries))
        }
        Level::DestinationIp => longest_prefix(entries, c.local.ip()),
        Level::ServerName => {
            let name = c.server_name;
            let exact = entries
                .iter()
                .find(|(k, _)| matches!(k, Key::Name(n) if **n == *name))
                .map(|(_, n)| n);
            exact
                .or_else(|| {
                    // The longest wildcard suffix first: ".b.example.com", then ".example.com"…
                    // never the whole name, nor a bare ".".
                    let bytes = name.as_bytes();
                    let mut from = 1;
                    while let Some(dot) = bytes
                        .get(from..)
                        .and_then(|s| s.iter().position(|&b| b == b'.'))
                    {
                        let at = from + dot;
                        if at + 1 >= name.len() {
                            break;
                        }
                        let suffix = &name[at..];
                        let hit = entries
                            .iter()
                            .find(|(k, _)| matches!(k, Key::Suffix(s) if **s == *suffix));
                        if let Some((_, n)) = hit {
                            return Some(n);
                        }
                        from = at + 1;
                    }
                    None
                })
                .or_else(|| any(entries))
        }
        Level::TransportProtocol => {
            exact_text(entries, c.transport_protocol.as_bytes()).or_else(|| any(entries))
        }
        Level::ApplicationProtocols => c
            .application_protocols
            .iter()
            .find_map(|p| exact_text(entries, p))
            .or_else(|| any(entries)),
        Level::DirectSourceIp => longest_prefix(entries, c.direct_remote.ip()),
        Level::SourceType => {
            let local = find(entries, &Key::SourceType(SourceType::SameIpOrLoopback));
            let external = find(entries, &Key::SourceType(SourceType::External));
            let specific = if local.is_none() && external.is_none() {
                None
            } else if is_same_ip_or_loopback(c) {
                local
            } else {
                external
            };
            specific.or_else(|| find(entries, &Key::SourceType(SourceType::Any)))
        }
        Level::SourceIp => longest_prefix(entries, c.remote.ip()),
        Level::SourcePort => find(entries, &Key::Port(c.remote.port())).or_else(|| any(entries)),
    }
}

/// Envoy's `isSameIpOrLoopback`: the peer is *the* loopback address (127.0.0.1 or ::1, not the
/// rest of 127/8, not IPv4-mapped) or the local address itself, compared as written.
fn is_same_ip_or_loopback(c: &ChainInput<'_>) -> bool {
    let remote = c.remote.ip();
    remote == IpAddr::from([127, 0, 0, 1])
        || remote == IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        || remote == c.local.ip()
}

#[cfg(test)]
mod tests;
