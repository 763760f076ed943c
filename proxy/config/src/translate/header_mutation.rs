//! `envoy.filters.http.header_mutation` and its `HeaderMutationPerRoute`.

use std::sync::Arc;

use envoy_types::pb::envoy::config::common::mutation_rules::v3 as rules;
use envoy_types::pb::envoy::extensions::filters::http::header_mutation::v3 as pb;

use super::ConfigError;
use crate::access_log::{Body, Op, Piece};
use crate::model::{HeaderMutation, HeaderMutationStep, HeaderMutations};
use crate::router::header_parser::HeaderText;

/// The filter's configuration at `path`.
pub(super) fn translate(c: &pb::HeaderMutation, path: &str) -> Result<HeaderMutation, ConfigError> {
    Ok(HeaderMutation {
        mutations: Arc::new(mutations(
            c.mutations.as_ref(),
            &format!("{path}.mutations"),
        )?),
        most_specific_wins: c.most_specific_header_mutations_wins,
    })
}

/// A connection manager's `early_header_mutation_extensions`: their mutations, in order (each
/// an `envoy.http.early_header_mutation.header_mutation`). Values are literal: an operator
/// would render against a record the connection manager has not started yet.
pub(super) fn early(
    list: &[envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig],
    path: &str,
) -> Result<Vec<HeaderMutationStep>, ConfigError> {
    use envoy_types::pb::envoy::extensions::http::early_header_mutation::header_mutation::v3 as early;
    let mut out = Vec::new();
    for (i, e) in list.iter().enumerate() {
        let tpath = format!("{path}[{i}].typed_config");
        let any = e
            .typed_config
            .as_ref()
            .ok_or_else(|| ConfigError::new(&tpath, "required"))?;
        if crate::proto::type_name(&any.type_url)
            != "envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation"
        {
            return Err(ConfigError::unsupported(tpath));
        }
        let m: early::HeaderMutation = crate::proto::unpack(any, &tpath)?;
        let list = steps(&m.mutations, &format!("{tpath}.mutations"))?;
        for (j, s) in list.iter().enumerate() {
            if let HeaderMutationStep::Append(p) = s {
                if p.add
                    .iter()
                    .any(|(_, t, _, _)| matches!(t, HeaderText::Format(_)))
                {
                    return Err(ConfigError::new(
                        format!("{tpath}.mutations[{j}].append.header.value"),
                        "unsupported: substitution operators (%...%) in an early header mutation",
                    ));
                }
            }
        }
        out.extend(list);
    }
    Ok(out)
}

/// A route's `HeaderMutationPerRoute` at `path`.
pub(super) fn per_route(
    c: &pb::HeaderMutationPerRoute,
    path: &str,
) -> Result<HeaderMutations, ConfigError> {
    mutations(c.mutations.as_ref(), &format!("{path}.mutations"))
}

fn mutations(m: Option<&pb::Mutations>, path: &str) -> Result<HeaderMutations, ConfigError> {
    let Some(m) = m else {
        return Ok(HeaderMutations::default());
    };
    let pb::Mutations {
        request_mutations,
        query_parameter_mutations,
        response_mutations,
        response_trailers_mutations,
        request_trailers_mutations,
    } = m;
    for (set, field) in [
        (
            !query_parameter_mutations.is_empty(),
            "query_parameter_mutations",
        ),
        (
            !response_trailers_mutations.is_empty(),
            "response_trailers_mutations",
        ),
        (
            !request_trailers_mutations.is_empty(),
            "request_trailers_mutations",
        ),
    ] {
        if set {
            return Err(ConfigError::unsupported(format!("{path}.{field}")));
        }
    }
    let response = steps(response_mutations, &format!("{path}.response_mutations"))?;
    // A response's values render from the stream's record as the filters got it, with the
    // response's code and headers: what only the router learns later is refused.
    for (i, s) in response.iter().enumerate() {
        let HeaderMutationStep::Append(p) = s else {
            continue;
        };
        for (_, text, _, _) in &p.add {
            let HeaderText::Format(f) = text else {
                continue;
            };
            if let Body::Text(pieces) = f.body() {
                for piece in pieces {
                    if let Piece::Op(op, _) = piece {
                        if !known_before_forwarding(op) {
                            return Err(ConfigError::new(
                                format!("{path}.response_mutations[{i}].append.header.value"),
                                format!(
                                    "unsupported: {op:?} in a response mutation (skiff renders \
                                     these values before the upstream request is made)"
                                ),
                            ));
                        }
                    }
                }
            }
        }
    }
    Ok(HeaderMutations {
        request: steps(request_mutations, &format!("{path}.request_mutations"))?,
        response,
    })
}

/// Whether an operator's value is known when the request reaches the filters (or is the
/// response's own: its code and headers).
fn known_before_forwarding(op: &Op) -> bool {
    matches!(
        op,
        Op::StartTime
            | Op::StartTimeFormat(_)
            | Op::Req(..)
            | Op::Resp(..)
            | Op::Protocol
            | Op::ResponseCode
            | Op::DownstreamRemoteAddress
            | Op::DownstreamRemoteAddressWithoutPort
            | Op::DownstreamLocalAddress
            | Op::DownstreamLocalAddressWithoutPort
            | Op::DownstreamRemotePort
            | Op::DownstreamLocalPort
            | Op::DownstreamDirectRemoteAddress
            | Op::DownstreamDirectRemoteAddressWithoutPort
            | Op::DownstreamDirectRemotePort
            | Op::RequestedServerName
            | Op::DownstreamTlsVersion
            | Op::DownstreamTlsCipher
            | Op::DownstreamPeerUriSan
            | Op::DownstreamPeerDnsSan
            | Op::DownstreamPeerSubject
            | Op::DownstreamPeerIssuer
            | Op::DownstreamLocalUriSan
            | Op::DownstreamLocalDnsSan
            | Op::DownstreamLocalSubject
            | Op::ConnectionId
            | Op::UniqueId
            | Op::Fixed(_)
    )
}

fn steps(
    list: &[rules::HeaderMutation],
    path: &str,
) -> Result<Vec<HeaderMutationStep>, ConfigError> {
    use rules::header_mutation::Action;
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let mpath = format!("{path}[{i}]");
        out.push(match &m.action {
            Some(Action::Append(o)) => HeaderMutationStep::Append(Arc::new(
                super::route_action::header_adds(
                    std::slice::from_ref(o),
                    &format!("{mpath}.append"),
                )
                .map_err(|mut e| {
                    // header_adds names the option as `…append[0]`: name it as the field.
                    e.path = e
                        .path
                        .replace(&format!("{mpath}.append[0]"), &format!("{mpath}.append"));
                    e
                })?,
            )),
            Some(Action::Remove(name)) => HeaderMutationStep::Remove(
                http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(
                    |_| ConfigError::new(format!("{mpath}.remove"), "not a valid header name"),
                )?,
            ),
            Some(Action::RemoveOnMatch(r)) => {
                let k = r.key_matcher.as_ref().ok_or_else(|| {
                    ConfigError::new(format!("{mpath}.remove_on_match.key_matcher"), "required")
                })?;
                HeaderMutationStep::RemoveOnMatch(super::http_manager::string_match(
                    k,
                    &format!("{mpath}.remove_on_match.key_matcher"),
                )?)
            }
            None => return Err(ConfigError::new(mpath, "an action is required")),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    /// A listener whose HCM runs the filter with `mutations`.
    fn config(mutations: &str) -> String {
        format!(
            r#"static_resources: {{ listeners: [{{ name: l, address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}, filter_chains: [{{ filters: [{{ name: h, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: s, route_config: {{ virtual_hosts: [{{ name: v, domains: ["*"], routes: [{{ match: {{prefix: /}}, route: {{cluster: c}} }}] }}] }}, http_filters: [{{ name: m, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation, mutations: {{ {mutations} }} }} }}, {{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}] }} }}] }}] }}], clusters: [{{ name: c, connect_timeout: 1s }}] }}"#
        )
    }

    #[test]
    fn refusals_name_the_field() {
        for (m, want) in [
            (
                "response_mutations: [{append: {header: {key: a, value: '%UPSTREAM_HOST%'}}}]",
                "response_mutations[0].append.header.value: unsupported",
            ),
            (
                "request_trailers_mutations: [{remove: a}]",
                "mutations.request_trailers_mutations: unsupported",
            ),
            (
                "request_mutations: [{remove: 'a b'}]",
                "request_mutations[0].remove",
            ),
        ] {
            match crate::load_text(&config(m)) {
                Ok(_) => panic!("accepted: {m}"),
                Err(e) => assert!(e.to_string().contains(want), "{m}: {e}"),
            }
        }
        let ok = "request_mutations: [{append: {header: {key: a, value: '%UPSTREAM_HOST%'}}}], response_mutations: [{append: {header: {key: b, value: '%RESPONSE_CODE% %REQ(x)%'}}}]";
        assert!(crate::load_text(&config(ok)).is_ok());
    }
}
