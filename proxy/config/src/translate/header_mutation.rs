//! `envoy.filters.http.header_mutation` and its `HeaderMutationPerRoute`.

use std::sync::Arc;

use envoy_types::pb::envoy::config::common::mutation_rules::v3 as rules;
use envoy_types::pb::envoy::extensions::filters::http::header_mutation::v3 as pb;

use super::ConfigError;
use crate::model::{HeaderMutation, HeaderMutationStep, HeaderMutations};

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
    Ok(HeaderMutations {
        request: steps(request_mutations, &format!("{path}.request_mutations"))?,
        response: steps(response_mutations, &format!("{path}.response_mutations"))?,
    })
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
