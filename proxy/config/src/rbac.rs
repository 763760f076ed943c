//! Role-based access control (`envoy.config.rbac.v3.RBAC`) as Envoy's RBAC engine judges a
//! request: policies of permissions and principals, an action on a match.

use std::net::{IpAddr, SocketAddr};

use crate::model::{CidrRange, HeaderMatch, StringMatch};
use crate::router::RequestView;

/// `RBAC.action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `ALLOW`: a request no policy matches is denied.
    Allow,
    /// `DENY`: a request a policy matches is denied.
    Deny,
    /// `LOG`: every request is allowed.
    Log,
}

/// `RBAC`: the action and the policies, by name (sorted, as Envoy keeps them).
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// `action`.
    pub action: Action,
    /// `policies`.
    pub policies: Vec<(String, Policy)>,
}

/// A policy: it matches when one of its permissions and one of its principals match.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// `permissions`.
    pub permissions: Vec<Permission>,
    /// `principals`.
    pub principals: Vec<Principal>,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Permission {
    /// `any`.
    Any,
    /// `and_rules`.
    And(Vec<Permission>),
    /// `or_rules`.
    Or(Vec<Permission>),
    /// `not_rule`.
    Not(Box<Permission>),
    /// `header`.
    Header(HeaderMatch),
    /// `url_path`: the path without query and fragment.
    UrlPath(StringMatch),
    /// `destination_ip`: the connection's local (original destination) address.
    DestinationIp(CidrRange),
    /// `destination_port`.
    DestinationPort(u16),
    /// `destination_port_range`: `[start, end)`.
    DestinationPortRange(u32, u32),
    /// `requested_server_name`: the SNI (empty without one).
    RequestedServerName(StringMatch),
    /// `metadata`: the stream's dynamic metadata (a connection has none).
    Metadata(crate::metadata::MetadataMatcher),
}

/// Who asks.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    /// `any`.
    Any,
    /// `and_ids`.
    And(Vec<Principal>),
    /// `or_ids`.
    Or(Vec<Principal>),
    /// `not_id`.
    Not(Box<Principal>),
    /// `authenticated`: a TLS connection whose peer certificate's URI SANs, DNS SANs or
    /// subject (in that order) match; any TLS connection without `principal_name`.
    Authenticated(Option<StringMatch>),
    /// `source_ip`: the connection's peer (after a PROXY protocol header).
    SourceIp(CidrRange),
    /// `direct_remote_ip`: the directly connected peer.
    DirectRemoteIp(CidrRange),
    /// `remote_ip`: the client as the connection manager trusts it (`x-forwarded-for`).
    RemoteIp(CidrRange),
    /// `header`.
    Header(HeaderMatch),
    /// `url_path`.
    UrlPath(StringMatch),
    /// `filter_state`: an object of the stream's or the connection's filter state (Istio's
    /// `io.istio.peer_principal`).
    FilterState(crate::filter_state::Matcher),
    /// `metadata`: the stream's dynamic metadata (a connection has none).
    Metadata(crate::metadata::MetadataMatcher),
}

/// The peer certificate's names, when the connection is TLS.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    /// URI SANs.
    pub uri_sans: &'a [String],
    /// DNS SANs.
    pub dns_sans: &'a [String],
    /// Subject, RFC 2253.
    pub subject: &'a str,
}

/// What the engine looks at.
pub struct Request<'a> {
    /// The request head.
    pub view: RequestView<'a>,
    /// The connection's local address (the original destination).
    pub local: SocketAddr,
    /// The connection's peer (after a PROXY protocol header).
    pub source: IpAddr,
    /// Its port.
    pub source_port: u16,
    /// The directly connected peer.
    pub direct_remote: IpAddr,
    /// The trusted client address.
    pub remote: IpAddr,
    /// The SNI.
    pub server_name: Option<&'a str>,
    /// `None` without TLS; a TLS connection without a client certificate has empty names.
    pub peer: Option<Peer<'a>>,
    /// Whether this is an HTTP request (the network filter judges connections: header and
    /// path rules never match there, as Envoy's find no request headers).
    pub http: bool,
    /// The filter state the request sees.
    pub filter_state: crate::filter_state::View<'a>,
    /// The stream's dynamic metadata, when its filters may write some.
    pub metadata: Option<&'a crate::metadata::Metadata>,
}

impl Request<'_> {
    fn path_without_query(&self) -> &str {
        let p = self.view.path;
        let end = p.find(['?', '#']).unwrap_or(p.len());
        &p[..end]
    }
}

impl Permission {
    /// Whether the request matches.
    pub fn matches(&self, r: &Request<'_>) -> bool {
        match self {
            Permission::Any => true,
            Permission::And(all) => all.iter().all(|p| p.matches(r)),
            Permission::Or(any) => any.iter().any(|p| p.matches(r)),
            Permission::Not(p) => !p.matches(r),
            Permission::Header(m) => r.http && crate::router::header_matches(m, &r.view),
            Permission::UrlPath(m) => r.http && m.matches(r.path_without_query()),
            Permission::DestinationIp(c) => c.contains(r.local.ip()),
            Permission::DestinationPort(p) => r.local.port() == *p,
            Permission::DestinationPortRange(start, end) => {
                (*start..*end).contains(&u32::from(r.local.port()))
            }
            Permission::RequestedServerName(m) => m.matches(r.server_name.unwrap_or("")),
            Permission::Metadata(m) => m.matches(r.metadata),
        }
    }
}

impl Principal {
    /// Whether the request's sender matches.
    pub fn matches(&self, r: &Request<'_>) -> bool {
        match self {
            Principal::Any => true,
            Principal::And(all) => all.iter().all(|p| p.matches(r)),
            Principal::Or(any) => any.iter().any(|p| p.matches(r)),
            Principal::Not(p) => !p.matches(r),
            Principal::Authenticated(name) => match (r.peer, name) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(peer), Some(m)) => {
                    peer.uri_sans.iter().any(|s| m.matches(s))
                        || peer.dns_sans.iter().any(|s| m.matches(s))
                        || m.matches(peer.subject)
                }
            },
            Principal::SourceIp(c) => c.contains(r.source),
            Principal::DirectRemoteIp(c) => c.contains(r.direct_remote),
            Principal::RemoteIp(c) => c.contains(r.remote),
            Principal::Header(m) => r.http && crate::router::header_matches(m, &r.view),
            Principal::UrlPath(m) => r.http && m.matches(r.path_without_query()),
            Principal::FilterState(m) => m.matches(r.filter_state),
            Principal::Metadata(m) => m.matches(r.metadata),
        }
    }
}

impl Rules {
    /// The first policy (by name) the request matches.
    pub fn matching(&self, r: &Request<'_>) -> Option<&str> {
        self.policies
            .iter()
            .find(|(_, p)| {
                p.permissions.iter().any(|x| x.matches(r))
                    && p.principals.iter().any(|x| x.matches(r))
            })
            .map(|(name, _)| name.as_str())
    }

    /// Envoy's `handleAction`: whether the request is allowed, and the policy that decided
    /// (for the reply's details).
    pub fn decide(&self, r: &Request<'_>) -> (bool, Option<&str>) {
        let matched = self.matching(r);
        match self.action {
            Action::Allow => (matched.is_some(), matched),
            Action::Deny => (matched.is_none(), matched),
            Action::Log => (true, matched),
        }
    }
}

/// The action of a matcher's match (`envoy.config.rbac.v3.Action`).
#[derive(Debug, Clone, PartialEq)]
pub struct MatchAction {
    /// `name`: the policy the reply's details name.
    pub name: String,
    /// `action`.
    pub action: Action,
}

/// What judges a request: `rules`, or a `matcher`.
#[derive(Debug, Clone, PartialEq)]
pub enum Engine {
    Rules(Rules),
    Matcher(crate::matcher::Matcher<MatchAction>),
}

impl Engine {
    /// Whether the request is allowed, and the policy that decided. A matcher that finds no
    /// action denies (Envoy's matcher engine).
    pub fn decide(&self, r: &Request<'_>) -> (bool, Option<&str>) {
        match self {
            Engine::Rules(rules) => rules.decide(r),
            Engine::Matcher(m) => {
                let data = crate::matcher::Data {
                    view: &r.view,
                    source: SocketAddr::new(r.source, r.source_port),
                    direct_source: r.direct_remote,
                    local: r.local,
                    server_name: r.server_name,
                    transport_protocol: "",
                    application_protocols: &crate::filter_chain_match::ApplicationProtocols::None,
                    metadata: r.metadata,
                };
                match m.evaluate(&data) {
                    Some(a) => (a.action != Action::Deny, Some(a.name.as_str())),
                    None => (false, None),
                }
            }
        }
    }
}

/// `envoy.filters.http.rbac`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRbac {
    /// `rules` or `matcher`: none enforces nothing.
    pub rules: Option<Engine>,
    /// `shadow_rules` or `shadow_matcher`: judged and counted, never enforced.
    pub shadow: Option<Engine>,
    /// `rules_stat_prefix`.
    pub rules_stat_prefix: String,
    /// `shadow_rules_stat_prefix`.
    pub shadow_stat_prefix: String,
}

impl HttpRbac {
    /// The dynamic metadata keys of the verdicts (Envoy's, the stat prefixes before them):
    /// `[effective policy id, engine result]` of the shadow rules, then of the enforced ones.
    pub fn metadata_keys(&self) -> [[String; 2]; 2] {
        let keys = |prefix: &str, kind: &str| {
            [
                format!("{prefix}{kind}_effective_policy_id"),
                format!("{prefix}{kind}_engine_result"),
            ]
        };
        [
            keys(&self.shadow_stat_prefix, "shadow"),
            keys(&self.rules_stat_prefix, "enforced"),
        ]
    }
}

/// `envoy.filters.network.rbac`: judged once per connection, before its first byte is read.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkRbac {
    /// `rules`: none enforces nothing.
    pub rules: Option<Rules>,
    /// `shadow_rules`.
    pub shadow: Option<Rules>,
    /// `stat_prefix`: stats under `<stat_prefix>.rbac.`.
    pub stat_prefix: String,
    /// `shadow_rules_stat_prefix`.
    pub shadow_stat_prefix: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StringMatchKind;

    fn exact(s: &str) -> StringMatch {
        StringMatch {
            kind: StringMatchKind::Exact(s.into()),
            ignore_case: false,
        }
    }

    #[test]
    fn policies_match_as_envoys_engine() {
        let headers = http::HeaderMap::new();
        let sans = vec!["spiffe://cluster.local/ns/default/sa/sleep".to_string()];
        let r = Request {
            view: RequestView::get("/admin/x?q#f", &headers),
            local: "10.0.0.1:8080".parse().unwrap(),
            source: "10.0.0.2".parse().unwrap(),
            source_port: 40000,
            direct_remote: "10.0.0.2".parse().unwrap(),
            remote: "192.0.2.1".parse().unwrap(),
            server_name: None,
            peer: Some(Peer {
                uri_sans: &sans,
                dns_sans: &[],
                subject: "CN=sleep",
            }),
            http: true,
            filter_state: Default::default(),
            metadata: None,
        };
        let admin = Permission::UrlPath(StringMatch {
            kind: StringMatchKind::Prefix("/admin/".into()),
            ignore_case: false,
        });
        assert!(admin.matches(&r));
        assert!(Permission::DestinationPort(8080).matches(&r));
        assert!(Permission::DestinationPortRange(8000, 8081).matches(&r));
        assert!(!Permission::DestinationPortRange(8000, 8080).matches(&r));
        assert!(Principal::Authenticated(Some(exact(&sans[0]))).matches(&r));
        assert!(Principal::Authenticated(Some(exact("CN=sleep"))).matches(&r));
        assert!(Principal::Authenticated(None).matches(&r));
        let plain = Request { peer: None, ..r };
        assert!(!Principal::Authenticated(None).matches(&plain));
        let rules = Rules {
            action: Action::Deny,
            policies: vec![(
                "no-admin".into(),
                Policy {
                    permissions: vec![admin],
                    principals: vec![Principal::Not(Box::new(Principal::Any))],
                },
            )],
        };
        assert_eq!(rules.decide(&plain), (true, None));
        let allow = Rules {
            action: Action::Allow,
            ..rules
        };
        assert_eq!(allow.decide(&plain), (false, None));
    }
}
