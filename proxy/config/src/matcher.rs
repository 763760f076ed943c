//! Envoy's matching API (`xds.type.matcher.v3.Matcher`) for what skiff matches requests and
//! connections with (RBAC's `matcher`, a listener's `filter_chain_matcher`): a list of field
//! matchers tried in order, each a predicate over an input of the request or its connection
//! and what to do on a match (an action, or another matcher), or a tree (one input looked up in
//! an exact, prefix or IP range map), with `on_no_match` when nothing matches.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::model::{CidrRange, HeaderKey, StringMatch};
use crate::router::RequestView;

/// A matcher whose actions are `A`.
#[derive(Debug, Clone, PartialEq)]
pub struct Matcher<A> {
    /// `matcher_list.matchers`, in order.
    pub list: Vec<FieldMatcher<A>>,
    /// `matcher_tree`.
    pub tree: Option<Tree<A>>,
    /// `on_no_match`.
    pub on_no_match: Option<Box<OnMatch<A>>>,
}

/// A `MatcherTree`: one input, looked up.
#[derive(Debug, Clone, PartialEq)]
pub struct Tree<A> {
    pub input: Input,
    pub map: TreeMap<A>,
}

/// How a tree looks its input up.
#[derive(Debug, Clone, PartialEq)]
pub enum TreeMap<A> {
    /// `exact_match_map`.
    Exact(HashMap<String, OnMatch<A>>),
    /// `prefix_match_map`, longest prefix first: each prefix of the input is tried, the longest
    /// first, until one leads to an action.
    Prefix(Vec<(String, OnMatch<A>)>),
    /// `custom_match` `xds.type.matcher.v3.IPMatcher`: the ranges that hold the address, the
    /// longest first; when its nested matcher finds nothing, the shorter ones that are not
    /// `exclusive` are tried.
    Ip(Vec<(CidrRange, bool, OnMatch<A>)>),
}

/// A `FieldMatcher`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldMatcher<A> {
    pub predicate: Predicate,
    pub on_match: OnMatch<A>,
}

/// What a match leads to.
#[derive(Debug, Clone, PartialEq)]
pub enum OnMatch<A> {
    Action(A),
    Matcher(Box<Matcher<A>>),
}

/// A `Predicate`.
#[derive(Debug, Clone, PartialEq)]
pub enum Predicate {
    /// `single_predicate`.
    Single(Input, InputMatch),
    /// `or_matcher`.
    Or(Vec<Predicate>),
    /// `and_matcher`.
    And(Vec<Predicate>),
    /// `not_matcher`.
    Not(Box<Predicate>),
}

/// What a predicate reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// `HttpRequestHeaderMatchInput`: the header's values, joined with `,`.
    RequestHeader(HeaderKey),
    /// `SourceIPInput`: the connection's peer (after a PROXY protocol header).
    SourceIp,
    /// `SourcePortInput`.
    SourcePort,
    /// `DirectSourceIPInput`: the directly connected peer.
    DirectSourceIp,
    /// `DestinationIPInput`: the connection's local (original destination) address.
    DestinationIp,
    /// `DestinationPortInput`.
    DestinationPort,
    /// `ServerNameInput`: the SNI.
    ServerName,
    /// `TransportProtocolInput`: what the listener filters detected (`tls`, `raw_buffer`).
    TransportProtocol,
    /// `ApplicationProtocolInput`: the requested application protocols, each quoted,
    /// joined with `,` (`'h2','http/1.1'`).
    ApplicationProtocol,
    /// `SourceTypeInput`: `local` for a connection from the host itself.
    SourceType,
    /// `DynamicMetadataInput` (a request's matcher): the value at `path` in the stream's
    /// dynamic metadata under `filter`; not a string (only a metadata matcher reads it).
    DynamicMetadata { filter: String, path: Vec<String> },
}

/// How a predicate judges its input.
#[derive(Debug, Clone, PartialEq)]
pub enum InputMatch {
    /// `value_match`.
    Value(StringMatch),
    /// `custom_match` `envoy.extensions.matching.input_matchers.ip.v3.Ip`: an address in one
    /// of the ranges.
    Ip(Vec<CidrRange>),
    /// `custom_match` `envoy.extensions.matching.input_matchers.metadata.v3.Metadata`: a
    /// metadata input's value matches `value` (`invert`: does not); any other input matches
    /// nothing, as in Envoy.
    Metadata {
        value: crate::metadata::ValueMatcher,
        invert: bool,
    },
}

/// What the inputs are read from.
pub struct Data<'a> {
    pub view: &'a RequestView<'a>,
    pub source: SocketAddr,
    pub direct_source: IpAddr,
    pub local: SocketAddr,
    pub server_name: Option<&'a str>,
    /// The detected transport protocol (a listener's matcher only: empty elsewhere).
    pub transport_protocol: &'a str,
    /// The requested application protocols (a listener's matcher only).
    pub application_protocols: &'a crate::filter_chain_match::ApplicationProtocols,
    /// The stream's dynamic metadata (a request's matcher only).
    pub metadata: Option<&'a crate::metadata::Metadata>,
}

impl Input {
    fn read(&self, d: &Data<'_>) -> Option<String> {
        Some(match self {
            Input::RequestHeader(k) => match k {
                HeaderKey::Header(name) => {
                    let values: Vec<&str> = d
                        .view
                        .headers
                        .get_all(name)
                        .iter()
                        .map(|v| v.to_str().unwrap_or(""))
                        .collect();
                    if values.is_empty() {
                        return None;
                    }
                    values.join(",")
                }
                HeaderKey::Method => d.view.method.to_string(),
                HeaderKey::Path => d.view.path.to_string(),
                HeaderKey::Authority => d.view.authority.to_string(),
                HeaderKey::Scheme => d.view.scheme.to_string(),
                HeaderKey::OtherPseudo => return None,
            },
            Input::SourceIp => d.source.ip().to_string(),
            Input::SourcePort => d.source.port().to_string(),
            Input::DirectSourceIp => d.direct_source.to_string(),
            Input::DestinationIp => d.local.ip().to_string(),
            Input::DestinationPort => d.local.port().to_string(),
            Input::ServerName => d.server_name.filter(|s| !s.is_empty())?.to_string(),
            Input::TransportProtocol => Some(d.transport_protocol)
                .filter(|s| !s.is_empty())?
                .to_string(),
            Input::ApplicationProtocol => {
                let quoted: Vec<String> = d
                    .application_protocols
                    .iter()
                    .map(|p| format!("'{}'", String::from_utf8_lossy(p)))
                    .collect();
                if quoted.is_empty() {
                    return None;
                }
                quoted.join(",")
            }
            Input::SourceType => {
                let ip = d.source.ip();
                (ip.is_loopback() || ip == d.local.ip()).then(|| "local".to_string())?
            }
            // Not a string: only a metadata matcher reads it.
            Input::DynamicMetadata { .. } => return None,
        })
    }
}

impl Predicate {
    fn matches(&self, d: &Data<'_>) -> bool {
        match self {
            Predicate::Single(Input::DynamicMetadata { filter, path }, m) => match m {
                InputMatch::Metadata { value, invert } => {
                    let v = d.metadata.and_then(|md| md.lookup(filter, path));
                    value.matches(v) != *invert
                }
                // A string or IP matcher finds no string in metadata.
                _ => false,
            },
            // Metadata matchers read only metadata inputs.
            Predicate::Single(_, InputMatch::Metadata { .. }) => false,
            Predicate::Single(input, m) => {
                let value = input.read(d);
                match m {
                    // An absent input matches nothing (Envoy's string matcher on no data).
                    InputMatch::Value(s) => value.is_some_and(|v| s.matches(&v)),
                    InputMatch::Ip(ranges) => value
                        .and_then(|v| v.parse::<IpAddr>().ok())
                        .is_some_and(|ip| ranges.iter().any(|r| r.contains(ip))),
                    InputMatch::Metadata { .. } => false,
                }
            }
            Predicate::Or(list) => list.iter().any(|p| p.matches(d)),
            Predicate::And(list) => list.iter().all(|p| p.matches(d)),
            Predicate::Not(p) => !p.matches(d),
        }
    }
}

impl<A> Matcher<A> {
    /// The action of the first field matcher that matches (a nested matcher that finds none
    /// passes on to the next), else `on_no_match`'s.
    pub fn evaluate(&self, d: &Data<'_>) -> Option<&A> {
        if let Some(tree) = &self.tree {
            if let Some(a) = tree.evaluate(d) {
                return Some(a);
            }
        }
        for f in &self.list {
            if f.predicate.matches(d) {
                if let Some(a) = f.on_match.evaluate(d) {
                    return Some(a);
                }
            }
        }
        self.on_no_match.as_ref()?.evaluate(d)
    }
}

impl<A> Tree<A> {
    fn evaluate(&self, d: &Data<'_>) -> Option<&A> {
        let value = self.input.read(d)?;
        match &self.map {
            TreeMap::Exact(map) => map.get(&value)?.evaluate(d),
            TreeMap::Prefix(list) => list
                .iter()
                .filter(|(p, _)| value.starts_with(p.as_str()))
                .find_map(|(_, m)| m.evaluate(d)),
            TreeMap::Ip(list) => {
                let ip = value.parse::<IpAddr>().ok()?;
                // The longest range is always tried; a shorter one only when it is not
                // `exclusive` (Envoy's IP range matcher).
                let mut first = true;
                for (_, exclusive, m) in list.iter().filter(|(r, _, _)| r.contains(ip)) {
                    if !first && *exclusive {
                        continue;
                    }
                    if let Some(a) = m.evaluate(d) {
                        return Some(a);
                    }
                    first = false;
                }
                None
            }
        }
    }
}

impl<A> OnMatch<A> {
    fn evaluate(&self, d: &Data<'_>) -> Option<&A> {
        match self {
            OnMatch::Action(a) => Some(a),
            OnMatch::Matcher(m) => m.evaluate(d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data<'a>(view: &'a RequestView<'a>, source: &str) -> Data<'a> {
        Data {
            view,
            source: source.parse().unwrap(),
            direct_source: "10.0.0.9".parse().unwrap(),
            local: "10.0.0.1:80".parse().unwrap(),
            server_name: None,
            transport_protocol: "",
            application_protocols: &crate::filter_chain_match::ApplicationProtocols::None,
            metadata: None,
        }
    }

    fn range(a: &str, len: u8) -> CidrRange {
        CidrRange {
            address: a.parse().unwrap(),
            prefix_len: len,
        }
    }

    /// A matcher that never matches (a port no connection has).
    fn never() -> OnMatch<&'static str> {
        OnMatch::Matcher(Box::new(Matcher {
            list: Vec::new(),
            tree: Some(Tree {
                input: Input::DestinationPort,
                map: TreeMap::Exact([("1".to_string(), OnMatch::Action("x"))].into()),
            }),
            on_no_match: None,
        }))
    }

    #[test]
    fn metadata_inputs_are_read_by_metadata_matchers_only() {
        use crate::metadata::{Metadata, Value, ValueMatcher};
        let headers = http::HeaderMap::new();
        let view = RequestView::get("", &headers);
        let input = || Input::DynamicMetadata {
            filter: "claims".to_string(),
            path: vec!["role".to_string()],
        };
        let judge = |m: InputMatch, metadata: Option<&Metadata>| {
            let d = Data {
                metadata,
                ..data(&view, "10.0.0.2:1")
            };
            Predicate::Single(input(), m).matches(&d)
        };
        let exact = |invert| InputMatch::Metadata {
            value: ValueMatcher::String(crate::model::StringMatch {
                kind: crate::model::StringMatchKind::Exact("ops".into()),
                ignore_case: false,
            }),
            invert,
        };
        let mut md = Metadata::default();
        md.set("claims", "role", Value::String("ops".into()));
        assert!(judge(exact(false), Some(&md)));
        assert!(!judge(exact(true), Some(&md)));
        // Not there: nothing matches it, so an inverted matcher does.
        assert!(!judge(exact(false), None));
        assert!(judge(exact(true), None));
        let present = InputMatch::Metadata {
            value: ValueMatcher::Present(true),
            invert: false,
        };
        assert!(!judge(present, Some(&Metadata::default())));
        // A string matcher finds no string in metadata; a metadata matcher reads no header.
        let string = InputMatch::Value(crate::model::StringMatch {
            kind: crate::model::StringMatchKind::Exact("ops".into()),
            ignore_case: false,
        });
        assert!(!judge(string, Some(&md)));
        let d = Data {
            metadata: Some(&md),
            ..data(&view, "10.0.0.2:1")
        };
        assert!(!Predicate::Single(Input::SourcePort, exact(true)).matches(&d));
    }

    #[test]
    fn shorter_ip_ranges_are_tried_unless_exclusive() {
        let headers = http::HeaderMap::new();
        let view = RequestView::get("", &headers);
        // The /24 is always tried (exclusive or not); the /16 only when it is not exclusive.
        let ip = |exclusive: bool| Matcher {
            list: Vec::new(),
            tree: Some(Tree {
                input: Input::SourceIp,
                map: TreeMap::Ip(vec![
                    (range("192.168.1.0", 24), true, never()),
                    (range("192.168.0.0", 16), exclusive, OnMatch::Action("wide")),
                ]),
            }),
            on_no_match: Some(Box::new(OnMatch::Action("none"))),
        };
        let d = data(&view, "192.168.1.7:1000");
        assert_eq!(ip(false).evaluate(&d), Some(&"wide"));
        assert_eq!(ip(true).evaluate(&d), Some(&"none"));
        let outside = data(&view, "10.1.1.1:1000");
        assert_eq!(ip(false).evaluate(&outside), Some(&"none"));
    }

    #[test]
    fn prefixes_are_tried_longest_first() {
        let headers = http::HeaderMap::new();
        let view = RequestView::get("", &headers);
        let m = Matcher {
            list: Vec::new(),
            tree: Some(Tree {
                input: Input::SourceIp,
                map: TreeMap::Prefix(vec![
                    ("10.1.".to_string(), never()),
                    ("10.".to_string(), OnMatch::Action("ten")),
                ]),
            }),
            on_no_match: None,
        };
        assert_eq!(m.evaluate(&data(&view, "10.1.2.3:1")), Some(&"ten"));
        assert_eq!(m.evaluate(&data(&view, "11.1.2.3:1")), None);
    }
}
