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
    /// `envoy.filters.listener.original_dst.local_ip` and `.remote_ip`: an `IP:port` address
    /// (a value that is not one makes no object), which the original_dst listener filter of an
    /// internal listener restores the connection's addresses from.
    Address,
}

/// Key of the original destination an internal listener's original_dst filter restores.
pub const ORIGINAL_DST_LOCAL: &str = "envoy.filters.listener.original_dst.local_ip";
/// Key of the source it restores.
pub const ORIGINAL_DST_REMOTE: &str = "envoy.filters.listener.original_dst.remote_ip";

/// `shared_with_upstream`: whether an object goes with the stream's upstream connection (to
/// an internal listener, whose connection then holds it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Sharing {
    /// `NONE`.
    #[default]
    None,
    /// `ONCE`: the upstream connection holds it, not shared further.
    Once,
    /// `TRANSITIVE`: the upstream connection holds it, shared further.
    Transitive,
}

/// One object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Its string form (Envoy's `serializeAsString`).
    pub value: Arc<str>,
    pub kind: Kind,
    /// Set read-only: a later value for its key is not taken.
    pub read_only: bool,
    /// `shared_with_upstream`.
    pub shared: Sharing,
}

impl Object {
    /// Its hash for a hash policy, when it has one (Envoy's `Hashable`).
    pub fn hash(&self) -> Option<u64> {
        match self.kind {
            Kind::String | Kind::Address => None,
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

    /// The objects an upstream connection takes from this state (those shared with upstream),
    /// as that connection holds them: `ONCE` ones no longer shared.
    fn handed_over(&self, into: &mut FilterState) {
        for (k, o) in &self.objects {
            if o.shared == Sharing::None || into.get(k).is_some() {
                continue;
            }
            let mut o = o.clone();
            if o.shared == Sharing::Once {
                o.shared = Sharing::None;
            }
            into.objects.push((k.clone(), o));
        }
    }

    /// The objects in one line (`key=value;…`), which tells apart upstream connections that
    /// must not be shared.
    pub fn key(&self) -> String {
        let mut out = String::new();
        for (k, o) in &self.objects {
            out.push_str(k);
            out.push('=');
            out.push_str(&o.value);
            out.push(';');
        }
        out
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

    /// What the stream's upstream connection takes: the objects shared with upstream, the
    /// stream's over its connection's (none: nothing to hand over).
    pub fn shared_with_upstream(&self) -> Option<FilterState> {
        let mut out = FilterState::default();
        for s in [self.stream, self.connection].into_iter().flatten() {
            s.handed_over(&mut out);
        }
        (!out.is_empty()).then_some(out)
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
    /// `shared_with_upstream`.
    pub shared: Sharing,
}

impl Value {
    /// The object for the formatted `text`, unless it is skipped (or, for an address, is not
    /// one: Envoy's factory makes no object of it).
    pub fn object(&self, text: String) -> Option<Object> {
        if text.is_empty() && self.skip_if_empty {
            return None;
        }
        let value: Arc<str> = match self.kind {
            Kind::Address => text
                .parse::<std::net::SocketAddr>()
                .ok()?
                .to_string()
                .into(),
            _ => text.into(),
        };
        Some(Object {
            value,
            kind: self.kind,
            read_only: self.read_only,
            shared: self.shared,
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
            shared: Sharing::None,
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
        // Shared objects go to the upstream connection, the stream's over its connection's;
        // ONCE ones are not shared further.
        let shared = |v: &str, how| Object {
            shared: how,
            ..object(v, false)
        };
        conn.set("once", shared("c", Sharing::Once));
        conn.set("both", shared("c", Sharing::Transitive));
        stream.set("both", shared("s", Sharing::Once));
        let view = View {
            stream: Some(&stream),
            connection: Some(&conn),
        };
        let up = view.shared_with_upstream().expect("shared objects");
        assert_eq!(up.key(), "both=s;once=c;");
        let further = View {
            stream: None,
            connection: Some(&up),
        };
        assert!(further.shared_with_upstream().is_none());
        assert!(View::default().shared_with_upstream().is_none());
        assert_eq!(object("a\"b", false).typed(), r#""a\"b""#);
        assert_eq!(object("a", false).hash(), None);
    }
}
