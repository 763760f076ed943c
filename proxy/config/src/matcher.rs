//! Envoy's matching API (`xds.type.matcher.v3.Matcher`) for what skiff matches requests with
//! (RBAC's `matcher`): a list of field matchers tried in order, each a predicate over an input
//! of the request or its connection and what to do on a match (an action, or another
//! matcher), with `on_no_match` when none does.

use std::net::{IpAddr, SocketAddr};

use crate::model::{CidrRange, HeaderKey, StringMatch};
use crate::router::RequestView;

/// A matcher whose actions are `A`.
#[derive(Debug, Clone, PartialEq)]
pub struct Matcher<A> {
    /// `matcher_list.matchers`, in order.
    pub list: Vec<FieldMatcher<A>>,
    /// `on_no_match`.
    pub on_no_match: Option<Box<OnMatch<A>>>,
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
}

/// How a predicate judges its input.
#[derive(Debug, Clone, PartialEq)]
pub enum InputMatch {
    /// `value_match`.
    Value(StringMatch),
    /// `custom_match` `envoy.extensions.matching.input_matchers.ip.v3.Ip`: an address in one
    /// of the ranges.
    Ip(Vec<CidrRange>),
}

/// What the inputs are read from.
pub struct Data<'a> {
    pub view: &'a RequestView<'a>,
    pub source: SocketAddr,
    pub direct_source: IpAddr,
    pub local: SocketAddr,
    pub server_name: Option<&'a str>,
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
        })
    }
}

impl Predicate {
    fn matches(&self, d: &Data<'_>) -> bool {
        match self {
            Predicate::Single(input, m) => {
                let value = input.read(d);
                match m {
                    // An absent input matches nothing (Envoy's string matcher on no data).
                    InputMatch::Value(s) => value.is_some_and(|v| s.matches(&v)),
                    InputMatch::Ip(ranges) => value
                        .and_then(|v| v.parse::<IpAddr>().ok())
                        .is_some_and(|ip| ranges.iter().any(|r| r.contains(ip))),
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

impl<A> OnMatch<A> {
    fn evaluate(&self, d: &Data<'_>) -> Option<&A> {
        match self {
            OnMatch::Action(a) => Some(a),
            OnMatch::Matcher(m) => m.evaluate(d),
        }
    }
}
