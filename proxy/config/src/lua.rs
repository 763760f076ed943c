//! Envoy's Lua cluster specifier (`envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig`):
//! a script's `envoy_on_route(route_handle)` names each request's cluster. As in Envoy, each
//! worker thread runs the script in a Lua state of its own (LuaJIT, with its standard
//! libraries but `debug` and `ffi`, which only unsafe code may open), its top level once, then `envoy_on_route` for each request it routes; globals the
//! script keeps live on in that worker. The handle offers `headers():get(name)` (every value of
//! the header, joined with `,`; pseudo-headers too) and `getCluster(name)` (nil for a cluster
//! that does not exist, else an object with `numConnections()`, `numRequests()` and
//! `numPendingRequests()`). A script that fails, or returns something other than a string,
//! routes to `default_cluster`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use mlua::{Function, Lua, Value};

use crate::router::RequestView;

/// What a script's `getCluster(name)` reads of a cluster: its open connections, active
/// requests and pending requests (over every worker, as Envoy's resource managers count them).
pub type ClusterCounts = (u64, u64, u64);

/// A Lua cluster specifier.
#[derive(Debug)]
pub struct LuaSpecifier {
    /// `source_code`, as read.
    pub source: String,
    /// `default_cluster`.
    pub default_cluster: String,
    /// Names this configuration to the worker states.
    id: u64,
    /// Dropped with the configuration: a worker frees the states of configurations gone when
    /// it next runs a script.
    alive: Arc<()>,
}

impl PartialEq for LuaSpecifier {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.default_cluster == other.default_cluster
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A worker's Lua state for one specifier: whether its configuration lives, the state, and
/// its `envoy_on_route`.
type WorkerState = (Weak<()>, Lua, Function);

thread_local! {
    /// This thread's Lua state of each specifier, by its id.
    static STATES: RefCell<HashMap<u64, WorkerState>> = RefCell::new(HashMap::new());
}

/// Lua's load functions, restricted to source text (mode `"t"`).
const TEXT_ONLY: &str = r#"
local load0, loadfile0 = load, loadfile
load = function(chunk, name, _, env) return load0(chunk, name, "t", env) end
loadstring = function(s, name) return load0(s, name, "t") end
loadfile = function(file, _, env) return loadfile0(file, "t", env) end
dofile = function(file) return assert(loadfile0(file, "t"))() end
"#;

/// A state for `source`: its top level run, `envoy_on_route` found.
fn state(source: &str) -> Result<(Lua, Function), String> {
    let lua = Lua::new();
    // Fuzzing runs arbitrary scripts: a budget of instructions (counted by the interpreter,
    // so the JIT is off) keeps an endless loop from stalling the run.
    if cfg!(fuzzing) {
        lua.load("jit.off()").exec().map_err(|e| e.to_string())?;
        lua.set_hook(
            mlua::HookTriggers::new().every_nth_instruction(1_000_000),
            |_, _| Err(mlua::Error::runtime("instruction budget spent")),
        );
    }
    // A binary chunk is LuaJIT bytecode, which the VM loads without checking it: only source
    // text is loaded, here and by the script's own load functions.
    lua.load(TEXT_ONLY)
        .set_mode(mlua::ChunkMode::Text)
        .exec()
        .map_err(|e| e.to_string())?;
    lua.load(source)
        .set_name("cluster specifier")
        .set_mode(mlua::ChunkMode::Text)
        .exec()
        .map_err(|e| e.to_string())?;
    match lua.globals().get::<Value>("envoy_on_route") {
        Ok(Value::Function(f)) => Ok((lua, f)),
        _ => {
            Err("envoy_on_route() function not found. Lua will not hook cluster specifier.".into())
        }
    }
}

impl LuaSpecifier {
    /// The specifier of `source`, refused as Envoy refuses it: a script that does not load
    /// or run, or that defines no `envoy_on_route`.
    pub fn new(source: String, default_cluster: String) -> Result<Self, String> {
        state(&source)?;
        Ok(LuaSpecifier {
            source,
            default_cluster,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            alive: Arc::new(()),
        })
    }

    /// The cluster a request goes to. `counts` reads a cluster for `getCluster`.
    pub fn cluster(
        &self,
        req: &RequestView<'_>,
        counts: &dyn Fn(&str) -> Option<ClusterCounts>,
    ) -> String {
        let run = STATES.with(|states| {
            let mut states = states.borrow_mut();
            // Free the states of configurations gone since (a handful of entries at most).
            states.retain(|_, (alive, ..)| alive.strong_count() > 0);
            let (_, lua, f) = match states.entry(self.id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let (lua, f) = state(&self.source)?;
                    e.insert((Arc::downgrade(&self.alive), lua, f))
                }
            };
            call(lua, f, req, counts)
        });
        match run {
            Ok(Some(c)) => c,
            Ok(None) => {
                tracing::error!("script log: return value is not string, use default cluster");
                self.default_cluster.clone()
            }
            Err(e) => {
                tracing::error!(error = %e, "script log: use default cluster");
                self.default_cluster.clone()
            }
        }
    }
}

/// A header's value as Envoy's `getAllOfHeaderAsString` gives it (pseudo-headers from the
/// request line).
fn header(req: &RequestView<'_>, name: &str) -> Option<String> {
    let name = name.to_ascii_lowercase();
    match name.as_str() {
        ":method" => return Some(req.method.to_string()),
        ":path" => return Some(req.path.to_string()),
        ":authority" | "host" => return Some(req.authority.to_string()),
        ":scheme" => return Some(req.scheme.to_string()),
        _ => {}
    }
    let mut values = req.headers.get_all(name.as_str()).iter();
    let first = values.next()?;
    let mut out = String::from_utf8_lossy(first.as_bytes()).into_owned();
    for v in values {
        out.push(',');
        out.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    Some(out)
}

/// Runs `envoy_on_route` with a handle on `req`: the string it returned, if it returned one.
fn call(
    lua: &Lua,
    f: &Function,
    req: &RequestView<'_>,
    counts: &dyn Fn(&str) -> Option<ClusterCounts>,
) -> Result<Option<String>, String> {
    lua.scope(|scope| {
        let headers = lua.create_table()?;
        headers.set(
            "get",
            scope.create_function(|_, (_this, name): (Value, mlua::String)| {
                Ok(header(req, &name.to_string_lossy()))
            })?,
        )?;
        let handle = lua.create_table()?;
        handle.set(
            "headers",
            scope.create_function(move |_, _this: Value| Ok(headers.clone()))?,
        )?;
        handle.set(
            "getCluster",
            scope.create_function(|lua, (_this, name): (Value, mlua::String)| {
                let Some((cx, rq, pending)) = counts(&name.to_string_lossy()) else {
                    return Ok(Value::Nil);
                };
                let cluster = lua.create_table()?;
                for (method, n) in [
                    ("numConnections", cx),
                    ("numRequests", rq),
                    ("numPendingRequests", pending),
                ] {
                    cluster.set(method, lua.create_function(move |_, _this: Value| Ok(n))?)?;
                }
                Ok(Value::Table(cluster))
            })?,
        )?;
        match f.call::<Value>(handle)? {
            Value::String(s) => Ok(Some(s.to_string_lossy())),
            // Lua turns a number into a string where one is expected, as Envoy's check does.
            n @ (Value::Integer(_) | Value::Number(_)) => {
                Ok(lua.coerce_string(n)?.map(|s| s.to_string_lossy()))
            }
            _ => Ok(None),
        }
    })
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(
        headers: &'a http::HeaderMap,
        runtime: &'a crate::runtime::Values,
    ) -> RequestView<'a> {
        RequestView {
            method: "GET",
            path: "/p?q",
            authority: "host.example",
            scheme: "http",
            headers,
            runtime,
            random: 0,
            peer_certificate: false,
            metadata: None,
            filter_state: Default::default(),
        }
    }

    #[test]
    fn scripts_pick_clusters_by_headers_and_cluster_counts_and_fall_back_on_errors() {
        let script = r#"
            calls = 0
            function envoy_on_route(route_handle)
              calls = calls + 1
              local h = route_handle:headers()
              local v = h:get("x-which")
              if v == "boom" then error("asked to fail") end
              if v == "table" then return {} end
              if v == "calls" then return "c" .. calls end
              if v == "busy" then
                local c = route_handle:getCluster("busy")
                if c == nil then return "no-busy" end
                return "busy-" .. c:numConnections() .. "-" .. c:numRequests() .. "-" .. c:numPendingRequests()
              end
              if v == "missing" then
                if route_handle:getCluster("nope") == nil then return "nil" end
              end
              if v then return v end
              return h:get(":path")
            end
        "#;
        let s = LuaSpecifier::new(script.into(), "fallback".into()).expect("loads");
        let runtime = crate::runtime::Values::default();
        let counts = |name: &str| (name == "busy").then_some((3, 2, 1));
        let pick = |pairs: &[(&str, &str)]| {
            let mut h = http::HeaderMap::new();
            for (k, v) in pairs {
                h.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            s.cluster(&view(&h, &runtime), &counts)
        };
        assert_eq!(pick(&[("x-which", "a")]), "a");
        assert_eq!(pick(&[("x-which", "a"), ("x-which", "b")]), "a,b");
        assert_eq!(pick(&[]), "/p?q");
        assert_eq!(pick(&[("x-which", "boom")]), "fallback");
        assert_eq!(pick(&[("x-which", "table")]), "fallback");
        assert_eq!(pick(&[("x-which", "busy")]), "busy-3-2-1");
        assert_eq!(pick(&[("x-which", "missing")]), "nil");
        // The script's globals live on in this thread's state.
        assert_eq!(pick(&[("x-which", "calls")]), "c8");
    }

    #[test]
    fn bytecode_is_never_loaded() {
        // A binary chunk is refused at configuration time...
        assert!(LuaSpecifier::new("\x1bLJ\x02".into(), "d".into()).is_err());
        // ...and by the script's own load functions.
        let script = r#"
            local a = load("\27LJ\2")
            local b = loadstring("\27LJ\2")
            assert(a == nil and b == nil)
            assert(load("return 1")() == 1)
            function envoy_on_route(h) return "ok" end
        "#;
        assert!(LuaSpecifier::new(script.into(), "d".into()).is_ok());
    }

    #[test]
    fn scripts_without_the_function_or_that_do_not_load_are_refused() {
        let e = LuaSpecifier::new("x = 1".into(), "d".into()).expect_err("no function");
        assert!(e.contains("envoy_on_route() function not found"), "{e}");
        assert!(LuaSpecifier::new("function (".into(), "d".into()).is_err());
        assert!(LuaSpecifier::new("error('at load')".into(), "d".into()).is_err());
    }
}
