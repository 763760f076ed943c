//! `GET /config_dump` as Envoy's: the bootstrap, then clusters, listeners, routes and secrets,
//! static and dynamic (active and warming, with `version_info` and `last_updated`);
//! `?include_eds` adds endpoints, `?resource=` returns one section's items each with its
//! `@type`, `?name_regex=` keeps the resources whose name matches.

use std::collections::BTreeMap;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use super::{json_response, text, AdminState};
use crate::config_store::{Dumped, DumpedSlot};

const ADMIN: &str = "type.googleapis.com/envoy.admin.v3.";

fn time(t: SystemTime) -> String {
    crate::access_log::format_time(t)
}

fn dynamic(d: &Dumped, key: &str) -> Value {
    json!({"version_info": d.version, key: d.json.value(), "last_updated": time(d.last_updated)})
}

fn stat(d: &Dumped, key: &str) -> Value {
    json!({key: d.json.value(), "last_updated": time(d.last_updated)})
}

/// A list's items: (resource name, item).
type Items = Vec<(String, Value)>;

/// A list field of a section: its name, its items' `@type`, and its items.
type List = (&'static str, &'static str, Items);

/// A section: its `@type`, its scalar fields and its lists.
struct Section {
    type_name: &'static str,
    scalars: Vec<(&'static str, Value)>,
    lists: Vec<List>,
}

fn slots_section(slots: &[DumpedSlot], key: &'static str, kind: &'static str) -> Vec<List> {
    let mut statics = Vec::new();
    let (mut active, mut warming, mut listeners) = (Vec::new(), Vec::new(), Vec::new());
    for s in slots {
        if s.is_static {
            if let Some(d) = s.active.as_ref().or(s.warming.as_ref()) {
                statics.push((d.name.clone(), stat(d, key)));
            }
            continue;
        }
        if key == "listener" {
            let name = s
                .active
                .as_ref()
                .or(s.warming.as_ref())
                .map(|d| d.name.clone())
                .unwrap_or_default();
            let mut item = json!({"name": name});
            if let Some(d) = &s.active {
                item["active_state"] = dynamic(d, key);
            }
            if let Some(d) = &s.warming {
                item["warming_state"] = dynamic(d, key);
            }
            listeners.push((name, item));
        } else {
            if let Some(d) = &s.active {
                active.push((d.name.clone(), dynamic(d, key)));
            }
            if let Some(d) = &s.warming {
                warming.push((d.name.clone(), dynamic(d, key)));
            }
        }
    }
    if key == "listener" {
        vec![
            (
                "static_listeners",
                "ListenersConfigDump.StaticListener",
                statics,
            ),
            (
                "dynamic_listeners",
                "ListenersConfigDump.DynamicListener",
                listeners,
            ),
        ]
    } else {
        let _ = kind;
        vec![
            (
                "static_clusters",
                "ClustersConfigDump.StaticCluster",
                statics,
            ),
            (
                "dynamic_active_clusters",
                "ClustersConfigDump.DynamicCluster",
                active,
            ),
            (
                "dynamic_warming_clusters",
                "ClustersConfigDump.DynamicCluster",
                warming,
            ),
        ]
    }
}

/// The route configurations and scopes listeners carry inline, which Envoy dumps as
/// `static_route_configs` and `inline_scoped_route_configs`: one item for each connection
/// manager of each listener's active and warming versions, as Envoy has a provider for each.
fn inline_routes(listeners: &[DumpedSlot]) -> (Items, Items) {
    const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
    const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    const SCOPE: &str = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration";
    let (mut routes, mut scoped) = (Vec::new(), Vec::new());
    for d in listeners
        .iter()
        .flat_map(|s| s.active.iter().chain(s.warming.iter()))
    {
        let listener = d.json.value();
        let updated = time(d.last_updated);
        let chains = listener["filter_chains"]
            .as_array()
            .into_iter()
            .flatten()
            .chain([&listener["default_filter_chain"]]);
        for filter in chains.flat_map(|c| c["filters"].as_array().into_iter().flatten()) {
            let hcm = &filter["typed_config"];
            if hcm["@type"] != HCM {
                continue;
            }
            if let Some(rc) = hcm.get("route_config") {
                let mut rc = rc.clone();
                rc["@type"] = ROUTE.into();
                let name = rc["name"].as_str().unwrap_or_default().to_string();
                routes.push((name, json!({"route_config": rc, "last_updated": updated})));
            }
            let inline = &hcm["scoped_routes"]["scoped_route_configurations_list"];
            if let Some(list) = inline["scoped_route_configurations"].as_array() {
                let name = hcm["scoped_routes"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let configs: Vec<Value> = list
                    .iter()
                    .map(|c| {
                        let mut c = c.clone();
                        c["@type"] = SCOPE.into();
                        c
                    })
                    .collect();
                let item =
                    json!({"name": name, "scoped_route_configs": configs, "last_updated": updated});
                scoped.push((name, item));
            }
        }
    }
    (routes, scoped)
}

fn sections(state: &AdminState, include_eds: bool) -> Vec<Section> {
    let snapshot = state.published.load();
    let d = &snapshot.dump;
    let bootstrap = Section {
        type_name: "BootstrapConfigDump",
        scalars: vec![
            ("bootstrap", state.bootstrap_dump.value()),
            ("last_updated", Value::String(time(SystemTime::now()))),
        ],
        lists: Vec::new(),
    };
    let clusters = Section {
        type_name: "ClustersConfigDump",
        scalars: version(&d.cds_version),
        lists: slots_section(&d.clusters, "cluster", "cluster"),
    };
    let listeners = Section {
        type_name: "ListenersConfigDump",
        scalars: version(&d.lds_version),
        lists: slots_section(&d.listeners, "listener", "listener"),
    };
    let (static_routes, inline_scopes) = inline_routes(&d.listeners);
    let routes = Section {
        type_name: "RoutesConfigDump",
        scalars: Vec::new(),
        lists: vec![
            (
                "static_route_configs",
                "RoutesConfigDump.StaticRouteConfig",
                static_routes,
            ),
            (
                "dynamic_route_configs",
                "RoutesConfigDump.DynamicRouteConfig",
                d.routes
                    .iter()
                    .map(|r| (r.name.clone(), dynamic(r, "route_config")))
                    .collect(),
            ),
        ],
    };
    let mut out = vec![bootstrap, clusters];
    if include_eds {
        out.push(Section {
            type_name: "EndpointsConfigDump",
            scalars: Vec::new(),
            lists: vec![
                (
                    "static_endpoint_configs",
                    "EndpointsConfigDump.StaticEndpointConfig",
                    d.endpoints
                        .iter()
                        .filter(|(st, _)| *st)
                        .map(|(_, e)| (e.name.clone(), stat(e, "endpoint_config")))
                        .collect(),
                ),
                (
                    "dynamic_endpoint_configs",
                    "EndpointsConfigDump.DynamicEndpointConfig",
                    d.endpoints
                        .iter()
                        .filter(|(st, _)| !*st)
                        .map(|(_, e)| (e.name.clone(), dynamic(e, "endpoint_config")))
                        .collect(),
                ),
            ],
        });
    }
    out.push(listeners);
    // As Envoy: the section is there with or without scoped routes.
    out.push(Section {
        type_name: "ScopedRoutesConfigDump",
        scalars: Vec::new(),
        lists: vec![
            (
                "inline_scoped_route_configs",
                "ScopedRoutesConfigDump.InlineScopedRouteConfigs",
                inline_scopes,
            ),
            (
            "dynamic_scoped_route_configs",
            "ScopedRoutesConfigDump.DynamicScopedRouteConfigs",
            d.scoped
                .iter()
                .filter_map(|(name, scopes)| {
                    let first = scopes.first()?;
                    let item = json!({
                        "name": name,
                        "version_info": first.version,
                        "scoped_route_configs": scopes.iter().map(|s| s.json.value()).collect::<Vec<_>>(),
                        "last_updated": time(first.last_updated),
                    });
                    Some((name.clone(), item))
                })
                .collect(),
            ),
        ],
    });
    out.push(routes);
    let secret = |d: &Dumped, dynamic: bool| {
        let mut item =
            json!({"name": d.name, "last_updated": time(d.last_updated), "secret": d.json.value()});
        if dynamic {
            item["version_info"] = Value::String(d.version.clone());
        }
        (d.name.clone(), item)
    };
    out.push(Section {
        type_name: "SecretsConfigDump",
        scalars: Vec::new(),
        lists: vec![
            (
                "static_secrets",
                "SecretsConfigDump.StaticSecret",
                d.secrets
                    .iter()
                    .filter(|(st, _)| *st)
                    .map(|(_, s)| secret(s, false))
                    .collect(),
            ),
            (
                "dynamic_active_secrets",
                "SecretsConfigDump.DynamicSecret",
                d.secrets
                    .iter()
                    .filter(|(st, _)| !*st)
                    .map(|(_, s)| secret(s, true))
                    .collect(),
            ),
            (
                "dynamic_warming_secrets",
                "SecretsConfigDump.DynamicSecret",
                d.warming_secrets.iter().map(|s| secret(s, true)).collect(),
            ),
        ],
    });
    out
}

fn version(v: &str) -> Vec<(&'static str, Value)> {
    if v.is_empty() {
        Vec::new()
    } else {
        vec![("version_info", Value::String(v.to_string()))]
    }
}

/// Answers `/config_dump`.
pub(super) fn respond(state: &AdminState, q: &BTreeMap<String, String>) -> Response<Full<Bytes>> {
    let name_regex = match q.get("name_regex").filter(|r| !r.is_empty()) {
        Some(r) => match regex::Regex::new(&format!("^(?:{r})$")) {
            Ok(r) => Some(r),
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("Error while parsing name_regex: {e}\n"),
                )
            }
        },
        None => None,
    };
    let keep = |name: &str| name_regex.as_ref().is_none_or(|r| r.is_match(name));
    let sections = sections(state, q.contains_key("include_eds"));
    if let Some(resource) = q.get("resource").filter(|r| !r.is_empty()) {
        for s in &sections {
            for (field, item_type, items) in &s.lists {
                if field == resource {
                    let configs: Vec<Value> = items
                        .iter()
                        .filter(|(n, _)| keep(n))
                        .map(|(_, item)| {
                            let mut item = item.clone();
                            if let Some(o) = item.as_object_mut() {
                                o.insert(
                                    "@type".into(),
                                    Value::String(format!("{ADMIN}{item_type}")),
                                );
                            }
                            item
                        })
                        .collect();
                    return json_response(&json!({ "configs": configs }));
                }
            }
        }
        return text(
            StatusCode::NOT_FOUND,
            format!("{resource} not found in config dump\n"),
        );
    }
    let configs: Vec<Value> = sections
        .into_iter()
        .map(|s| {
            let mut o = serde_json::Map::new();
            o.insert(
                "@type".into(),
                Value::String(format!("{ADMIN}{}", s.type_name)),
            );
            for (k, v) in s.scalars {
                o.insert(k.into(), v);
            }
            for (field, _, items) in s.lists {
                let items: Vec<Value> = items
                    .into_iter()
                    .filter(|(n, _)| keep(n))
                    .map(|(_, v)| v)
                    .collect();
                if !items.is_empty() {
                    o.insert(field.into(), Value::Array(items));
                }
            }
            Value::Object(o)
        })
        .collect();
    json_response(&json!({ "configs": configs }))
}
