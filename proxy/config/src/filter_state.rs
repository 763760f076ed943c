//! Filter state (Envoy's `StreamInfo::FilterState`): named objects that filters put on a
//! connection or on a stream, and that RBAC principals, route matches, hash policies and the
//! `%FILTER_STATE(…)%` operator read.
//!
//! A stream sees its own objects first, then its connection's (Envoy's stream filter state has
//! the connection's as its parent). skiff has the objects Envoy's generic factories make
//! (`envoy.string`, `envoy.hashable_string`) and the principals Istio's `istio_authn` filter
//! sets; an object Envoy gives a meaning to (a well-known key such as
//! `envoy.tcp_proxy.cluster`) is refused where it would be set.

use std::sync::Arc;

use crate::access_log::Format;
use crate::model::StringMatch;

/// Istio's key for the peer's SPIFFE identity (set by `istio_authn`).
pub const PEER_PRINCIPAL: &str = "io.istio.peer_principal";
/// Istio's key for the connection's own SPIFFE identity (set by `istio_authn`).
pub const LOCAL_PRINCIPAL: &str = "io.istio.local_principal";

/// What kind of object a value becomes (the object factory Envoy looks up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `envoy.string`: a string, not hashable.
    String,
    /// `envoy.hashable_string`: a string that hash policies can hash.
    HashableString,
    /// Istio's principal (`istio_authn`): a string, hashable.
    Principal,
}

/// One object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Its string form (Envoy's `serializeAsString`).
    pub value: Arc<str>,
    pub kind: Kind,
    /// Set read-only: a later value for its key is not taken.
    pub read_only: bool,
}

impl Object {
    /// Its hash for a hash policy, when it has one (Envoy's `Hashable`).
    pub fn hash(&self) -> Option<u64> {
        match self.kind {
            Kind::String => None,
            Kind::HashableString | Kind::Principal => {
                Some(xxhash_rust::xxh64::xxh64(self.value.as_bytes(), 0))
            }
        }
    }

    /// `%FILTER_STATE(key)%`: the object as its proto's JSON (a string value in quotes).
    pub fn typed(&self) -> String {
        serde_json::Value::String(self.value.to_string()).to_string()
    }
}

/// The objects of one connection or one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterState {
    objects: Vec<(Arc<str>, Object)>,
}

impl FilterState {
    /// The object under `key`.
    pub fn get(&self, key: &str) -> Option<&Object> {
        self.objects
            .iter()
            .find(|(k, _)| &**k == key)
            .map(|(_, o)| o)
    }

    /// Puts `object` under `key`; a read-only object already there stays (Envoy refuses to
    /// replace it). Whether it was put.
    pub fn set(&mut self, key: &str, object: Object) -> bool {
        match self.objects.iter_mut().find(|(k, _)| &**k == key) {
            Some((_, o)) if o.read_only => false,
            Some((_, o)) => {
                *o = object;
                true
            }
            None => {
                self.objects.push((key.into(), object));
                true
            }
        }
    }

    /// Whether it has no object.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

/// What a stream reads: its own objects, then its connection's.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct View<'a> {
    pub stream: Option<&'a FilterState>,
    pub connection: Option<&'a FilterState>,
}

impl<'a> View<'a> {
    /// The object under `key`, the stream's first.
    pub fn get(&self, key: &str) -> Option<&'a Object> {
        self.stream
            .and_then(|s| s.get(key))
            .or_else(|| self.connection.and_then(|c| c.get(key)))
    }
}

/// A `FilterStateMatcher` (RBAC principals, route matches): the object under `key`, as a
/// string, matches.
#[derive(Debug, Clone, PartialEq)]
pub struct Matcher {
    pub key: String,
    pub string: StringMatch,
}

impl Matcher {
    /// Whether the filter state has a matching object (none under the key: no match).
    pub fn matches(&self, state: View<'_>) -> bool {
        state
            .get(&self.key)
            .is_some_and(|o| self.string.matches(&o.value))
    }
}

/// One `FilterStateValue` of a `set_filter_state` filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    /// `object_key`.
    pub key: String,
    /// The object it makes (`factory_key`, else the key's own factory).
    pub kind: Kind,
    /// `format_string` (text).
    pub format: Format,
    /// `read_only`.
    pub read_only: bool,
    /// `skip_if_empty`.
    pub skip_if_empty: bool,
}

impl Value {
    /// The object for the formatted `text`, unless it is skipped.
    pub fn object(&self, text: String) -> Option<Object> {
        if text.is_empty() && self.skip_if_empty {
            return None;
        }
        Some(Object {
            value: text.into(),
            kind: self.kind,
            read_only: self.read_only,
        })
    }
}

/// `envoy.filters.network.set_filter_state`.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkSetFilterState {
    /// `on_new_connection`: before TLS, as Envoy's filter runs when the connection is made.
    pub on_new_connection: Vec<Value>,
    /// `on_downstream_tls_handshake`: once the handshake is done.
    pub on_tls_handshake: Vec<Value>,
}

/// `envoy.filters.http.set_filter_state`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSetFilterState {
    /// `on_request_headers`.
    pub on_request_headers: Vec<Value>,
    /// `clear_route_cache`: the route is picked again after the filters.
    pub clear_route_cache: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StringMatchKind;

    fn object(v: &str, read_only: bool) -> Object {
        Object {
            value: v.into(),
            kind: Kind::String,
            read_only,
        }
    }

    #[test]
    fn read_only_objects_stay_and_streams_see_their_own_first() {
        let mut conn = FilterState::default();
        assert!(conn.set("k", object("a", true)));
        assert!(!conn.set("k", object("b", false)));
        assert_eq!(&*conn.get("k").expect("k").value, "a");
        assert!(conn.set("m", object("x", false)));
        assert!(conn.set("m", object("y", false)));
        let mut stream = FilterState::default();
        stream.set("m", object("s", false));
        let view = View {
            stream: Some(&stream),
            connection: Some(&conn),
        };
        assert_eq!(&*view.get("m").expect("m").value, "s");
        assert_eq!(&*view.get("k").expect("k").value, "a");
        assert!(view.get("none").is_none());
        let m = Matcher {
            key: "k".into(),
            string: StringMatch {
                kind: StringMatchKind::Exact("a".into()),
                ignore_case: false,
            },
        };
        assert!(m.matches(view));
        assert!(!m.matches(View::default()));
        assert_eq!(object("a\"b", false).typed(), r#""a\"b""#);
        assert_eq!(object("a", false).hash(), None);
    }
}
