//! Stats with Envoy's names. Each thread (the main thread and every worker) owns a shard: it is
//! the only writer of its counters and gauges, so increments are uncontended relaxed atomics. The
//! admin reads every shard and adds them up by name, so `listener.X.downstream_cx_total` is the
//! sum over workers while `listener.X.worker_1.downstream_cx_total` exists in one shard only.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// A monotonically increasing count.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn value(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Subtracts one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// The current value.
    pub fn value(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A distribution of values (milliseconds, counts) recorded by one thread; the admin merges
/// every thread's at each stats flush, as Envoy does.
#[derive(Debug, Clone, Default)]
pub struct Histogram(Option<Arc<Recorder>>);

/// The values below this are counted without a lock: each has a bin of its own.
const UNLOCKED: usize = 10;

/// One thread's values since the last flush. Most values a proxy records are a few
/// milliseconds or a few requests: those are counted in `small` without a lock or a map
/// lookup (two per request on the hot path); larger values go to `rest`.
#[derive(Debug, Default)]
struct Recorder {
    small: [AtomicU64; UNLOCKED],
    rest: Mutex<histogram::Bins>,
}

impl Recorder {
    /// Empties the recorder into bins.
    fn take(&self) -> histogram::Bins {
        let mut bins =
            std::mem::take(&mut *self.rest.lock().unwrap_or_else(PoisonError::into_inner));
        for (v, n) in self.small.iter().enumerate() {
            let n = n.swap(0, Ordering::Relaxed);
            if n > 0 {
                *bins.entry(histogram::bin_of(v as u64)).or_default() += n;
            }
        }
        bins
    }
}

impl Histogram {
    /// Records one value.
    pub fn record(&self, v: u64) {
        if let Some(r) = &self.0 {
            match r.small.get(usize::try_from(v).unwrap_or(usize::MAX)) {
                Some(n) => {
                    n.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    let mut bins = r.rest.lock().unwrap_or_else(PoisonError::into_inner);
                    *bins.entry(histogram::bin_of(v)).or_default() += 1;
                }
            }
        }
    }

    /// Records a duration in whole milliseconds.
    pub fn record_ms(&self, d: std::time::Duration) {
        self.record(d.as_millis().try_into().unwrap_or(u64::MAX));
    }
}

/// A histogram as the admin shows it: the values of the last flush interval and of all time.
#[derive(Debug, Clone, Default)]
pub struct Merged {
    /// Recorded in the last interval.
    pub interval: histogram::Bins,
    /// Recorded since the start.
    pub cumulative: histogram::Bins,
}

impl Merged {
    /// Whether any value was ever recorded (merged).
    pub fn used(&self) -> bool {
        !self.cumulative.is_empty()
    }
}

/// The stats of one thread. Lookups by name lock; the hot path keeps the handles it got.
#[derive(Debug, Default)]
pub struct Shard {
    counters: Mutex<BTreeMap<String, Counter>>,
    gauges: Mutex<BTreeMap<String, Gauge>>,
    histograms: Mutex<BTreeMap<String, Arc<Recorder>>>,
    texts: Mutex<BTreeMap<String, String>>,
    /// `stats_config.stats_matcher`: a stat it rejects is handed out but never kept, so it
    /// neither shows nor takes memory beyond its handle.
    matcher: Option<Arc<StatsMatcher>>,
}

impl Shard {
    /// A shard that keeps only the stats `matcher` accepts.
    pub fn with_matcher(matcher: Option<Arc<StatsMatcher>>) -> Self {
        Shard {
            matcher,
            ..Shard::default()
        }
    }

    fn keeps(&self, name: &str) -> bool {
        self.matcher.as_ref().is_none_or(|m| m.accepts(name))
    }

    /// The counter called `name`, created at zero.
    pub fn counter(&self, name: &str) -> Counter {
        if !self.keeps(name) {
            return Counter::default();
        }
        let mut map = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(name.to_string()).or_default().clone()
    }

    /// The gauge called `name`, created at zero.
    pub fn gauge(&self, name: &str) -> Gauge {
        if !self.keeps(name) {
            return Gauge::default();
        }
        let mut map = self.gauges.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(name.to_string()).or_default().clone()
    }

    /// The histogram called `name`.
    pub fn histogram(&self, name: &str) -> Histogram {
        if !self.keeps(name) {
            return Histogram::default();
        }
        let mut map = self
            .histograms
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Histogram(Some(map.entry(name.to_string()).or_default().clone()))
    }

    /// Sets the text readout called `name` (Envoy's `version_text`, for example).
    pub fn set_text(&self, name: &str, value: &str) {
        if !self.keeps(name) {
            return;
        }
        let mut map = self.texts.lock().unwrap_or_else(PoisonError::into_inner);
        map.insert(name.to_string(), value.to_string());
    }

    /// Removes the stats whose names start with `prefix` and that nothing holds any more (the
    /// scope of a removed cluster or listener); returns how many under `prefix` are still held.
    pub fn prune(&self, prefix: &str) -> usize {
        fn go<T>(
            map: &Mutex<BTreeMap<String, T>>,
            prefix: &str,
            held: impl Fn(&T) -> bool,
        ) -> usize {
            let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
            let mut left = 0;
            map.retain(|name, v| {
                if !name.starts_with(prefix) {
                    return true;
                }
                let keep = held(v);
                left += usize::from(keep);
                keep
            });
            left
        }
        go(&self.counters, prefix, |c| Arc::strong_count(&c.0) > 1)
            + go(&self.gauges, prefix, |g| Arc::strong_count(&g.0) > 1)
            + go(&self.histograms, prefix, |h| Arc::strong_count(h) > 1)
            + go(&self.texts, prefix, |_| false)
    }
}

/// A stat's kind and value in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatValue {
    /// A counter.
    Counter(u64),
    /// A gauge.
    Gauge(i64),
}

/// A gauge as the admin shows it: unsigned, as Envoy's gauges are (a `version` gauge holds a
/// 64-bit hash).
pub fn shown_gauge(g: i64) -> u64 {
    g as u64
}

/// Every shard of the process.
#[derive(Debug)]
pub struct Store {
    shards: Vec<Arc<Shard>>,
    /// Every thread's histograms, merged at the last flush.
    merged: Mutex<BTreeMap<String, Merged>>,
}

impl Store {
    /// A store with one shard for the main thread and one per worker.
    pub fn new(workers: usize) -> Self {
        Self::with_matcher(workers, None)
    }

    /// A store whose shards keep only the stats `matcher` accepts.
    pub fn with_matcher(workers: usize, matcher: Option<Arc<StatsMatcher>>) -> Self {
        Store {
            shards: (0..=workers)
                .map(|_| Arc::new(Shard::with_matcher(matcher.clone())))
                .collect(),
            merged: Mutex::default(),
        }
    }

    /// The main thread's shard.
    pub fn main(&self) -> &Arc<Shard> {
        &self.shards[0]
    }

    /// Worker `n`'s shard.
    pub fn worker(&self, n: usize) -> &Arc<Shard> {
        &self.shards[n + 1]
    }

    /// Every shard: the main thread's, then the workers'.
    pub fn shards(&self) -> &[Arc<Shard>] {
        &self.shards
    }

    /// Removes the unheld stats under `prefix` from every shard; true when none is left.
    pub fn prune(&self, prefix: &str) -> bool {
        let gone = self.shards.iter().map(|s| s.prune(prefix)).sum::<usize>() == 0;
        if gone {
            let mut merged = self.merged.lock().unwrap_or_else(PoisonError::into_inner);
            merged.retain(|name, _| !name.starts_with(prefix));
        }
        gone
    }

    /// A stats flush: what every thread recorded since the last one becomes the histograms'
    /// interval values and is added to their cumulative ones.
    pub fn merge_histograms(&self) {
        let mut fresh: BTreeMap<String, histogram::Bins> = BTreeMap::new();
        for shard in &self.shards {
            let map = shard
                .histograms
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for (name, h) in map.iter() {
                histogram::add(fresh.entry(name.clone()).or_default(), &h.take());
            }
        }
        let mut merged = self.merged.lock().unwrap_or_else(PoisonError::into_inner);
        for m in merged.values_mut() {
            m.interval.clear();
        }
        for (name, bins) in fresh {
            let m = merged.entry(name).or_default();
            histogram::add(&mut m.cumulative, &bins);
            m.interval = bins;
        }
    }

    /// The histograms whose names `keep` accepts, as of the last flush (one made since shows
    /// with no values).
    pub fn histograms(&self, keep: impl Fn(&str) -> bool) -> BTreeMap<String, Merged> {
        let mut out: BTreeMap<String, Merged> = self
            .merged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(name, _)| keep(name))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for shard in &self.shards {
            let map = shard
                .histograms
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for name in map.keys() {
                if !out.contains_key(name) && keep(name) {
                    out.insert(name.clone(), Merged::default());
                }
            }
        }
        out
    }

    /// Every text readout, by name.
    pub fn texts(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for shard in &self.shards {
            let map = shard.texts.lock().unwrap_or_else(PoisonError::into_inner);
            out.extend(map.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        out
    }

    /// All stats, summed across shards, sorted by name.
    pub fn snapshot(&self) -> BTreeMap<String, StatValue> {
        self.snapshot_where(|_| true)
    }

    /// The stats whose names `keep` accepts, summed across shards, sorted by name (a name is
    /// copied once, whatever the number of shards that have it).
    pub fn snapshot_where(&self, keep: impl Fn(&str) -> bool) -> BTreeMap<String, StatValue> {
        fn add<T>(
            out: &mut BTreeMap<String, StatValue>,
            map: &Mutex<BTreeMap<String, T>>,
            keep: &impl Fn(&str) -> bool,
            value: impl Fn(&T) -> StatValue,
        ) {
            let map = map.lock().unwrap_or_else(PoisonError::into_inner);
            for (name, stat) in map.iter() {
                let v = value(stat);
                match out.get_mut(name.as_str()) {
                    Some(StatValue::Counter(c)) => {
                        if let StatValue::Counter(n) = v {
                            *c += n;
                        }
                    }
                    Some(StatValue::Gauge(g)) => {
                        if let StatValue::Gauge(n) = v {
                            *g += n;
                        }
                    }
                    None if keep(name) => {
                        out.insert(name.clone(), v);
                    }
                    None => {}
                }
            }
        }
        let mut out: BTreeMap<String, StatValue> = BTreeMap::new();
        for shard in &self.shards {
            add(&mut out, &shard.counters, &keep, |c| {
                StatValue::Counter(c.value())
            });
            add(&mut out, &shard.gauges, &keep, |g| {
                StatValue::Gauge(g.value())
            });
        }
        out
    }
}

pub use skiff_config::stats::{NameMatch, NameMatchKind, StatsMatcher, Tagging};

/// The metric name and tags of a stat, as `tagging` says.
fn extract(tagging: &Tagging, name: &str) -> (String, Vec<(String, String)>) {
    let mut rest = name.to_string();
    let mut tags: Vec<(String, String)> = Vec::new();
    for (tag, re) in &tagging.extractors {
        let Ok(Some(c)) = re.captures(&rest) else {
            continue;
        };
        let Some(remove) = c.get(1) else {
            continue;
        };
        let value = c.get(2).unwrap_or(remove).as_str().to_string();
        let (start, end) = (remove.start(), remove.end());
        tags.push((tag.clone(), value));
        rest = format!("{}{}", &rest[..start], &rest[end..]);
    }
    if tagging.defaults {
        let (metric, defaults) = extract_tags(&rest);
        rest = metric;
        // A `stats_tags` entry named like a default one (`envoy.cluster_name`) replaces it.
        let named: Vec<String> = tagging
            .extractors
            .iter()
            .map(|(t, _)| sanitize(t))
            .collect();
        let kept: Vec<(String, String)> = defaults
            .into_iter()
            .filter(|(k, _)| !named.iter().any(|t| t == k))
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        tags.extend(kept);
    }
    tags.extend(tagging.fixed.iter().cloned());
    (rest, tags)
}

/// Renders a snapshot in Prometheus text format with Envoy's default tag extraction for the
/// names skiff produces: cluster, listener, HCM and TCP proxy scopes, response codes and
/// classes, workers.
pub fn prometheus(snapshot: &BTreeMap<String, StatValue>) -> String {
    prometheus_tagged(snapshot, &Tagging::default())
}

/// [`prometheus`] with `stats_config`'s tags.
pub fn prometheus_tagged(snapshot: &BTreeMap<String, StatValue>, tagging: &Tagging) -> String {
    let mut families: BTreeMap<String, (bool, Vec<(String, String)>)> = BTreeMap::new();
    for (name, value) in snapshot {
        let (metric, tags) = extract(tagging, name);
        let metric = format!("envoy_{}", sanitize(&metric));
        let (is_counter, v) = match value {
            StatValue::Counter(v) => (true, v.to_string()),
            StatValue::Gauge(v) => (false, shown_gauge(*v).to_string()),
        };
        let labels = if tags.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", labels(&tags).join(","))
        };
        families
            .entry(metric)
            .or_insert((is_counter, Vec::new()))
            .1
            .push((labels, v));
    }
    let mut out = String::new();
    for (metric, (is_counter, samples)) in families {
        out.push_str(&format!(
            "# TYPE {metric} {}\n",
            if is_counter { "counter" } else { "gauge" }
        ));
        for (labels, v) in samples {
            out.push_str(&format!("{metric}{labels} {v}\n"));
        }
    }
    out
}

/// Histograms in Prometheus text format, after the counters and gauges: cumulative buckets
/// (`histogram_bucket_settings` or Envoy's defaults), `+Inf`, sum and count.
pub fn prometheus_histograms(
    histograms: &BTreeMap<String, Merged>,
    tagging: &Tagging,
    buckets: &skiff_config::stats::HistogramBuckets,
) -> String {
    let mut families: BTreeMap<String, Vec<(Vec<String>, &str)>> = BTreeMap::new();
    for (name, _) in histograms.iter() {
        let (metric, tags) = extract(tagging, name);
        let labels = labels(&tags);
        families
            .entry(format!("envoy_{}", sanitize(&metric)))
            .or_default()
            .push((labels, name.as_str()));
    }
    let mut out = String::new();
    for (metric, series) in families {
        out.push_str(&format!("# TYPE {metric} histogram\n"));
        for (labels, name) in series {
            let bins = &histograms[name].cumulative;
            let with = |extra: &str| {
                let mut l = labels.clone();
                l.push(extra.to_string());
                l.join(",")
            };
            for b in buckets.of(name) {
                out.push_str(&format!(
                    "{metric}_bucket{{{}}} {}\n",
                    with(&format!("le=\"{}\"", histogram::show(*b))),
                    histogram::count_below(bins, *b)
                ));
            }
            let count = histogram::count(bins);
            out.push_str(&format!(
                "{metric}_bucket{{{}}} {count}\n",
                with("le=\"+Inf\"")
            ));
            let plain = labels.join(",");
            out.push_str(&format!(
                "{metric}_sum{{{plain}}} {}\n",
                histogram::g32(histogram::sum(bins))
            ));
            out.push_str(&format!("{metric}_count{{{plain}}} {count}\n"));
        }
    }
    out
}

/// A series' labels, by name as Envoy orders them.
fn labels(tags: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<String> = tags
        .iter()
        .map(|(k, v)| format!("{}=\"{}\"", sanitize(k), escape(v)))
        .collect();
    out.sort();
    out
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Splits a stat name into the metric name and its tags, as Envoy's default tag extractors do.
fn extract_tags(name: &str) -> (String, Vec<(&'static str, String)>) {
    let mut tags = Vec::new();
    let mut rest = name.to_string();
    let scopes: [(&str, &str); 4] = [
        ("cluster.", "envoy_cluster_name"),
        ("listener.", "envoy_listener_address"),
        ("http.", "envoy_http_conn_manager_prefix"),
        ("tcp.", "envoy_tcp_prefix"),
    ];
    for (prefix, tag) in scopes {
        if let Some(tail) = rest.strip_prefix(prefix) {
            if let Some(dot) = scope_end(tail) {
                tags.push((tag, tail[..dot].to_string()));
                rest = format!("{}{}", prefix, &tail[dot + 1..]);
                // listener.X.http.P.… : the HCM prefix inside a listener scope.
                if prefix == "listener." {
                    if let Some(inner) = rest.strip_prefix("listener.http.") {
                        if let Some(d) = inner.find('.') {
                            tags.push(("envoy_http_conn_manager_prefix", inner[..d].to_string()));
                            rest = format!("listener.http.{}", &inner[d + 1..]);
                        }
                    }
                }
            }
            break;
        }
    }
    // vhost.<host>.vcluster.<cluster>.… and vhost.<host>.route.<stat_prefix>.… : a virtual
    // cluster's and a route's stats. As Envoy's extractors: the virtual host is the name's
    // first segment; the virtual cluster or route is tagged, by its first segment, only after
    // a virtual host of one segment.
    if let Some(tail) = rest.strip_prefix("vhost.") {
        if let Some((host, after)) = tail.split_once('.') {
            tags.push(("envoy_virtual_host", host.to_string()));
            let mut next = format!("vhost.{after}");
            for (kind, tag) in [
                ("vcluster.", "envoy_virtual_cluster"),
                ("route.", "envoy_route"),
            ] {
                if let Some((name, stat)) = after.strip_prefix(kind).and_then(|t| t.split_once('.'))
                {
                    tags.push((tag, name.to_string()));
                    next = format!("vhost.{kind}{stat}");
                }
            }
            rest = next;
        }
    }
    if let Some(pos) = rest.find(".worker_") {
        let tail = &rest[pos + 8..];
        if let Some(d) = tail.find('.') {
            tags.push(("envoy_worker_id", tail[..d].to_string()));
            rest = format!("{}{}", &rest[..pos + 1], &tail[d + 1..]);
        }
    }
    // downstream_rq_2xx → downstream_rq_xx{envoy_response_code_class="2"}; upstream_rq_200 → upstream_rq{code}.
    if let Some((head, last)) = rest.rsplit_once('_') {
        let b = last.as_bytes();
        if b.len() == 3 && b[0].is_ascii_digit() && &last[1..] == "xx" {
            tags.push(("envoy_response_code_class", last[..1].to_string()));
            rest = format!("{head}_xx");
        } else if b.len() == 3 && b.iter().all(u8::is_ascii_digit) {
            tags.push(("envoy_response_code", last.to_string()));
            rest = head.to_string();
        }
    }
    (rest, tags)
}

/// End of a scope name that may itself contain dots (an address like `127.0.0.1_10000`).
fn scope_end(tail: &str) -> Option<usize> {
    // Listener addresses end in `_<port>` and may contain dots; find the first dot after the
    // `_<digits>` that ends an address, else the first dot.
    let bytes = tail.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j].is_ascii_digit() {
                j += 1;
            }
            if j > i + 1 && j < bytes.len() && bytes[j] == b'.' && looks_like_address(&tail[..i]) {
                return Some(j);
            }
        }
        i += 1;
    }
    tail.find('.')
}

fn looks_like_address(s: &str) -> bool {
    s.starts_with('[')
        || (s.split('.').count() == 4 && s.split('.').all(|p| p.parse::<u8>().is_ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_add_up() {
        let store = Store::new(2);
        store.worker(0).counter("a").inc();
        store.worker(1).counter("a").add(2);
        store.worker(1).gauge("g").inc();
        store.worker(0).gauge("g").inc();
        let snap = store.snapshot();
        assert_eq!(snap["a"], StatValue::Counter(3));
        assert_eq!(snap["g"], StatValue::Gauge(2));
    }

    #[test]
    fn histograms_merge_small_and_large_values_into_their_bins() {
        let store = Store::new(2);
        let (a, b) = (
            store.worker(0).histogram("h"),
            store.worker(1).histogram("h"),
        );
        for v in [0, 3, 3, 9, 10, 250, 250] {
            a.record(v);
        }
        b.record(3);
        b.record(u64::MAX);
        store.merge_histograms();
        let merged = &store.histograms(|_| true)["h"];
        let expect = |pairs: &[(u64, u64)]| {
            let mut bins = histogram::Bins::new();
            for &(v, n) in pairs {
                *bins.entry(histogram::bin_of(v)).or_default() += n;
            }
            bins
        };
        let first = expect(&[(0, 1), (3, 3), (9, 1), (10, 1), (250, 2), (u64::MAX, 1)]);
        assert_eq!(merged.interval, first);
        assert_eq!(merged.cumulative, first);
        // The next flush starts from nothing: the recorders were emptied.
        a.record(3);
        store.merge_histograms();
        let merged = &store.histograms(|_| true)["h"];
        assert_eq!(merged.interval, expect(&[(3, 1)]));
        assert_eq!(histogram::count(&merged.cumulative), 10);
    }

    #[test]
    fn virtual_host_cluster_and_route_tags_as_envoys_extractors() {
        let tags = |n: &str| {
            let (name, t) = extract_tags(n);
            let t: Vec<String> = t.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{name} {}", t.join(" "))
        };
        assert_eq!(
            tags("vhost.vh.route.alpha.one.upstream_rq_total"),
            "vhost.route.one.upstream_rq_total envoy_virtual_host=vh envoy_route=alpha"
        );
        assert_eq!(
            tags("vhost.vh.vcluster.vc.upstream_rq_404"),
            "vhost.vcluster.upstream_rq envoy_virtual_host=vh envoy_virtual_cluster=vc envoy_response_code=404"
        );
        // After a virtual host of more than one segment, only the host's first is a tag.
        assert_eq!(
            tags("vhost.httpbin.default:8000.route.a.upstream_rq_total"),
            "vhost.default:8000.route.a.upstream_rq_total envoy_virtual_host=httpbin"
        );
    }

    #[test]
    fn tags() {
        assert_eq!(
            extract_tags("cluster.svc_a.upstream_rq_503"),
            (
                "cluster.upstream_rq".into(),
                vec![
                    ("envoy_cluster_name", "svc_a".into()),
                    ("envoy_response_code", "503".into())
                ]
            )
        );
        assert_eq!(
            extract_tags("http.ingress_http.downstream_rq_2xx"),
            (
                "http.downstream_rq_xx".into(),
                vec![
                    ("envoy_http_conn_manager_prefix", "ingress_http".into()),
                    ("envoy_response_code_class", "2".into())
                ]
            )
        );
        assert_eq!(
            extract_tags("listener.127.0.0.1_10000.worker_1.downstream_cx_total"),
            (
                "listener.downstream_cx_total".into(),
                vec![
                    ("envoy_listener_address", "127.0.0.1_10000".into()),
                    ("envoy_worker_id", "1".into())
                ]
            )
        );
        assert_eq!(
            extract_tags("listener.127.0.0.1_10000.http.ingress.downstream_rq_2xx").1,
            vec![
                ("envoy_listener_address", "127.0.0.1_10000".to_string()),
                ("envoy_http_conn_manager_prefix", "ingress".to_string()),
                ("envoy_response_code_class", "2".to_string())
            ]
        );
        let text = prometheus(
            &[(
                "cluster.a.upstream_rq_200".to_string(),
                StatValue::Counter(4),
            )]
            .into_iter()
            .collect(),
        );
        assert_eq!(text, "# TYPE envoy_cluster_upstream_rq counter\nenvoy_cluster_upstream_rq{envoy_cluster_name=\"a\",envoy_response_code=\"200\"} 4\n");
    }
}

/// `<prefix>upstream_rq_<code>` and `<prefix>upstream_rq_<N>xx`, made when a code is first seen
/// (a cluster's and a virtual cluster's response codes).
#[derive(Debug)]
pub struct CodeCounters {
    shard: Arc<Shard>,
    prefix: String,
    by_code: std::cell::RefCell<std::collections::HashMap<u16, (Counter, Counter)>>,
}

impl CodeCounters {
    /// The counters under `prefix` (ending in `.`).
    pub fn new(shard: Arc<Shard>, prefix: String) -> Self {
        CodeCounters {
            shard,
            prefix,
            by_code: Default::default(),
        }
    }

    /// A counter `name` under the same prefix.
    pub fn counter(&self, name: &str) -> Counter {
        self.shard.counter(&format!("{}{name}", self.prefix))
    }

    /// A histogram `name` under the same prefix.
    pub fn histogram(&self, name: &str) -> Histogram {
        self.shard.histogram(&format!("{}{name}", self.prefix))
    }

    /// Counts one response with `code`.
    pub fn count(&self, code: u16) {
        let mut map = self.by_code.borrow_mut();
        let (exact, class) = map.entry(code).or_insert_with(|| {
            (
                self.shard
                    .counter(&format!("{}upstream_rq_{code}", self.prefix)),
                self.shard
                    .counter(&format!("{}upstream_rq_{}xx", self.prefix, code / 100)),
            )
        });
        exact.inc();
        class.inc();
    }
}

/// Envoy's histograms (libcircllhist's log-linear bins): a value lands in the bin of its first
/// two significant digits, `[d.d × 10^e, (d.d + 0.1) × 10^e)`, or in the zero bin. A bin is kept
/// as `e * 100 + dd` (`dd` in 10..=99), so bins sort as their values do.
pub mod histogram {
    use std::collections::BTreeMap;

    /// The quantiles Envoy computes, as fractions.
    pub const QUANTILES: [f64; 10] = [0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0];
    /// The same, in percent, as the admin names them.
    pub const PERCENTS: [&str; 10] = [
        "0", "25", "50", "75", "90", "95", "99", "99.5", "99.9", "100",
    ];

    /// Counts per bin.
    pub type Bins = BTreeMap<u16, u64>;

    /// The bin of an integer value (Envoy records integers at scale 0).
    pub fn bin_of(v: u64) -> u16 {
        if v == 0 {
            return 0;
        }
        let (mut v, mut exp) = if v < 10 { (v * 10, 0u16) } else { (v, 1u16) };
        while v >= 100 {
            v /= 10;
            exp += 1;
        }
        exp * 100 + v as u16
    }

    fn pow10(e: i32) -> f64 {
        if e >= 0 {
            10f64.powi(e)
        } else {
            1.0 / 10f64.powi(-e)
        }
    }

    /// A bin's (two digits, exponent); `None` for the zero bin.
    fn parts(bin: u16) -> Option<(i32, i32)> {
        (bin != 0).then(|| (i32::from(bin % 100), i32::from(bin / 100)))
    }

    fn lower(bin: u16) -> f64 {
        parts(bin).map_or(0.0, |(d, e)| (f64::from(d) / 10.0) * pow10(e))
    }

    fn width(bin: u16) -> f64 {
        parts(bin).map_or(0.0, |(_, e)| pow10(e) / 10.0)
    }

    /// The value a bin stands for in a sum: nearer the bottom, as libcircllhist weighs it.
    fn midpoint(bin: u16) -> f64 {
        if bin == 0 {
            return 0.0;
        }
        let (bottom, w) = (lower(bin), width(bin));
        bottom + w * (bottom / (bottom + bottom + w))
    }

    /// The number of values.
    pub fn count(bins: &Bins) -> u64 {
        bins.values().sum()
    }

    /// The approximate sum of the values.
    pub fn sum(bins: &Bins) -> f64 {
        bins.iter().map(|(b, n)| midpoint(*b) * *n as f64).sum()
    }

    /// The values at or below `threshold`'s bin (Envoy's cumulative Prometheus buckets).
    pub fn count_below(bins: &Bins, threshold: f64) -> u64 {
        // The bin of a real threshold, as (exponent, digits), or below every positive bin.
        let target = if threshold.is_nan() || threshold < 0.0 {
            return 0;
        } else if threshold == 0.0 || threshold.is_infinite() {
            if threshold.is_infinite() {
                return 0;
            }
            None
        } else {
            let mut e = threshold.log10().floor() as i32;
            if e > 127 {
                return 0;
            }
            if e < -128 {
                None
            } else {
                let mut d = ((threshold / pow10(e)) * 10.0 + 1e-13).floor() as i32;
                if d == 100 {
                    d = 10;
                    e += 1;
                }
                (d != 0).then_some((e, d))
            }
        };
        bins.iter()
            .take_while(|(b, _)| match (parts(**b), target) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some((d, e)), Some((te, td))) => (e, d) <= (te, td),
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// Envoy's quantiles (libcircllhist's type-1 approximation); NaN when empty.
    pub fn quantiles(bins: &Bins) -> [f64; 10] {
        let total = count(bins) as f64;
        let mut out = [f64::NAN; 10];
        if total == 0.0 {
            return out;
        }
        let list: Vec<(u16, u64)> = bins.iter().map(|(b, n)| (*b, *n)).collect();
        let mut i = 0;
        let (mut lower_cnt, mut upper_cnt) = (0.0, list[0].1 as f64);
        for (q, slot) in QUANTILES.iter().zip(out.iter_mut()) {
            let qn = total * q;
            while i < list.len() - 1 && upper_cnt < qn {
                i += 1;
                lower_cnt = upper_cnt;
                upper_cnt = lower_cnt + list[i].1 as f64;
            }
            let (bin, n) = list[i];
            let w = width(bin);
            *slot = if w == 0.0 {
                lower(bin)
            } else {
                let k = (qn - lower_cnt).ceil();
                let k = if k == 0.0 { 1.0 } else { k };
                lower(bin) + k / (n as f64 + 1.0) * w
            };
        }
        out
    }

    /// A value as Envoy's admin prints it: the shortest form that reads back, `nan` for none.
    pub fn show(v: f64) -> String {
        if v.is_nan() {
            "nan".to_string()
        } else {
            format!("{v}")
        }
    }

    /// A value as `printf("%.32g")` writes it (Envoy's Prometheus sums).
    pub fn g32(v: f64) -> String {
        if v == 0.0 || !v.is_finite() {
            return show(v);
        }
        let sci = format!("{:.31e}", v);
        let exp: i32 = sci
            .rsplit_once('e')
            .and_then(|(_, e)| e.parse().ok())
            .unwrap_or(0);
        let trim = |s: String| -> String {
            if s.contains('.') {
                s.trim_end_matches('0').trim_end_matches('.').to_string()
            } else {
                s
            }
        };
        if (-4..32).contains(&exp) {
            trim(format!("{:.*}", (31 - exp) as usize, v))
        } else {
            let (m, _) = sci.split_once('e').unwrap_or((&sci, ""));
            format!(
                "{}e{}{:02}",
                trim(m.to_string()),
                if exp < 0 { '-' } else { '+' },
                exp.abs()
            )
        }
    }

    /// Adds `from`'s counts into `into`.
    pub fn add(into: &mut Bins, from: &Bins) {
        for (b, n) in from {
            *into.entry(*b).or_default() += n;
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn of(values: &[u64]) -> Bins {
            let mut b = Bins::new();
            for v in values {
                *b.entry(bin_of(*v)).or_default() += 1;
            }
            b
        }

        #[test]
        fn bins_as_libcircllhist() {
            assert_eq!(bin_of(0), 0);
            assert_eq!(bin_of(1), 10);
            assert_eq!(bin_of(9), 90);
            assert_eq!(bin_of(10), 110);
            assert_eq!(bin_of(99), 199);
            assert_eq!(bin_of(123), 212);
            assert_eq!((lower(212), width(212)), (120.0, 10.0));
        }

        /// Values Envoy 1.40 printed for the same samples.
        #[test]
        fn quantiles_and_sums_as_envoy() {
            let q = quantiles(&of(&[0, 2, 3, 3, 3]));
            let shown: Vec<String> = q.iter().map(|v| show(*v)).collect();
            assert_eq!(
                shown,
                [
                    "0", "2.05", "3.025", "3.05", "3.075", "3.075", "3.075", "3.075", "3.075",
                    "3.075"
                ]
            );
            assert_eq!(
                g32(sum(&of(&[0, 2, 3, 3, 3]))),
                "11.196321471411435410914236854296"
            );
            let q = quantiles(&of(&[1, 1, 1, 1, 1]));
            assert_eq!(show(q[0]), "1.0166666666666666");
            assert_eq!(show(q[1]), "1.0333333333333334");
            assert_eq!(show(q[9]), "1.0833333333333333");
            let q = quantiles(&of(&[1, 2, 3, 3, 4]));
            assert_eq!(show(q[2]), "3.033333333333333");
            assert_eq!(show(q[3]), "3.066666666666667");
            assert_eq!(show(quantiles(&of(&[33]))[0]), "33.5");
            assert!(quantiles(&Bins::new())[0].is_nan());
        }

        #[test]
        fn buckets_count_values_in_and_below_the_threshold_bin() {
            let b = of(&[0, 1, 5, 24, 25, 26, 2509, 2600]);
            assert_eq!(count_below(&b, 0.5), 1);
            assert_eq!(count_below(&b, 1.0), 2);
            assert_eq!(count_below(&b, 5.0), 3);
            assert_eq!(count_below(&b, 25.0), 5);
            assert_eq!(count_below(&b, 2500.0), 7);
            assert_eq!(count_below(&b, 3600000.0), 8);
            assert_eq!(g32(0.5), "0.5");
            assert_eq!(g32(3600000.0), "3600000");
        }
    }
}
