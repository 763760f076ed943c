//! Scoped routes (`HttpConnectionManager.scoped_routes`): a key built from request headers picks
//! one of several route configurations, each a route table of its own.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderMap;

use super::{RouteConfig, RouteTable};

/// `ScopeKeyBuilder.FragmentBuilder.HeaderValueExtractor`: one fragment of the key, read from the
/// first value of a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderFragment {
    /// `name`.
    pub header: http::HeaderName,
    /// `element_separator`: splits the value into elements (none: the whole value is one).
    pub element_separator: String,
    /// `index` or `element`.
    pub extract: Extract,
}

/// Which element a fragment is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extract {
    /// `index`: the element at this position.
    Index(usize),
    /// `element`: the value after `separator` of the first element whose key (before it) is
    /// `key`; an element without the separator has an empty value.
    Element { key: String, separator: String },
}

impl HeaderFragment {
    /// The fragment a request's headers give, if any.
    pub fn compute(&self, headers: &HeaderMap) -> Option<String> {
        // Only the first value counts (the header is untrusted, as Envoy documents).
        let value = headers.get(&self.header)?.to_str().ok()?;
        let mut elements: Box<dyn Iterator<Item = &str>> = if self.element_separator.is_empty() {
            Box::new(std::iter::once(value))
        } else {
            Box::new(value.split(self.element_separator.as_str()))
        };
        match &self.extract {
            Extract::Index(i) => elements.nth(*i).map(str::to_string),
            // `separator` is never empty (translation refuses it, as Envoy's validation).
            Extract::Element { key, separator } => elements.find_map(|e| {
                let (k, v) = e.split_once(separator.as_str()).unwrap_or((e, ""));
                (k == key).then(|| v.to_string())
            }),
        }
    }
}

/// `scoped_routes` with its configurations inline: the key's fragments and the route
/// configuration of each key.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopedRoutes {
    /// `name`.
    pub name: String,
    /// `scope_key_builder.fragments`.
    pub fragments: Vec<HeaderFragment>,
    /// `scoped_route_configurations_list`: each scope's name, key and route configuration,
    /// in order (a later scope with the same key replaces an earlier one).
    pub scopes: Vec<(String, Vec<String>, Arc<RouteConfig>)>,
}

impl ScopedRoutes {
    /// The key a request's headers build: `None` when a fragment is missing.
    pub fn key(&self, headers: &HeaderMap) -> Option<Vec<String>> {
        self.fragments.iter().map(|f| f.compute(headers)).collect()
    }
}

/// `scoped_routes` with `scoped_rds`: the scopes come from SRDS
/// (`envoy.config.route.v3.ScopedRouteConfiguration`, a wildcard subscription) and their route
/// configurations from RDS.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopedRds {
    /// `name`: the subscription's (shared by every connection manager that names it).
    pub name: String,
    /// `scope_key_builder.fragments`.
    pub fragments: Arc<[HeaderFragment]>,
    /// `scoped_rds.scoped_rds_config_source`.
    pub source: crate::model::ConfigSource,
    /// `rds_config_source`: where the scopes' route configurations come from.
    pub rds_source: crate::model::ConfigSource,
}

/// One scope from SRDS.
#[derive(Debug, Clone)]
pub struct Scope {
    /// `key.fragments[].string_key`.
    pub key: Vec<String>,
    /// Its route configuration.
    pub route: ScopeRoute,
}

/// Where a scope from SRDS takes its routes.
#[derive(Debug, Clone)]
pub enum ScopeRoute {
    /// `route_configuration_name`, from RDS.
    Rds(String),
    /// `route_configuration_name` with `on_demand`: fetched only when the `on_demand` filter
    /// asks, which skiff does not have; its requests find no route, as Envoy's without it.
    OnDemand(String),
    /// `route_configuration`, inline.
    Inline(Arc<RouteTable>),
}

/// The route tables of one SRDS subscription's scopes, by key: what workers look up.
pub type ScopeTables = HashMap<Vec<String>, Arc<RouteTable>>;

/// Scoped routes as a worker serves them: each scope's route table by key.
#[derive(Debug)]
pub struct ScopedTables {
    fragments: Arc<[HeaderFragment]>,
    by_key: Arc<ScopeTables>,
}

impl ScopedTables {
    /// Indexes every scope's route configuration.
    pub fn new(config: Arc<ScopedRoutes>) -> Result<Self, String> {
        let mut by_key = ScopeTables::new();
        // A scope named again replaces the earlier one, key and all (Envoy's scoped config).
        let mut keys: HashMap<&str, &Vec<String>> = HashMap::new();
        for (name, key, rc) in &config.scopes {
            if let Some(old) = keys.insert(name, key) {
                by_key.remove(old);
            }
            by_key.insert(key.clone(), Arc::new(RouteTable::new(rc.clone())?));
        }
        Ok(ScopedTables {
            fragments: config.fragments.clone().into(),
            by_key: Arc::new(by_key),
        })
    }

    /// The scopes an SRDS subscription has now, keyed by `fragments`.
    pub fn of(fragments: Arc<[HeaderFragment]>, by_key: Arc<ScopeTables>) -> Self {
        ScopedTables { fragments, by_key }
    }

    /// The route table of the scope a request's headers pick.
    pub fn table(&self, headers: &HeaderMap) -> Option<Arc<RouteTable>> {
        let key: Option<Vec<String>> = self.fragments.iter().map(|f| f.compute(headers)).collect();
        self.by_key.get(&key?).cloned()
    }

    /// Whether any scope's table renders header operators for the stream.
    pub fn formats_headers(&self) -> bool {
        self.by_key.values().any(|t| t.formats_headers())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn fragment(sep: &str, extract: Extract) -> HeaderFragment {
        HeaderFragment {
            header: http::HeaderName::from_static("x-scope"),
            element_separator: sep.into(),
            extract,
        }
    }

    #[test]
    fn fragments_read_the_first_value_as_envoy() {
        let by_key = fragment(
            ";",
            Extract::Element {
                key: "k".into(),
                separator: "=".into(),
            },
        );
        let h = headers(&[("x-scope", "a=1;k=v=w;k=2"), ("x-scope", "k=3")]);
        assert_eq!(by_key.compute(&h).as_deref(), Some("v=w"));
        let h = headers(&[("x-scope", "a=1;k")]);
        assert_eq!(by_key.compute(&h).as_deref(), Some(""));
        let h = headers(&[("x-scope", "a=1"), ("x-scope", "k=3")]);
        assert_eq!(by_key.compute(&h), None);
        assert_eq!(by_key.compute(&headers(&[])), None);

        let by_index = fragment(",", Extract::Index(1));
        assert_eq!(
            by_index
                .compute(&headers(&[("x-scope", "a,b,c")]))
                .as_deref(),
            Some("b")
        );
        assert_eq!(by_index.compute(&headers(&[("x-scope", "a")])), None);
        let whole = fragment("", Extract::Index(0));
        assert_eq!(
            whole.compute(&headers(&[("x-scope", "a,b")])).as_deref(),
            Some("a,b")
        );
    }
}
