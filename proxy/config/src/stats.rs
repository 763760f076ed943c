//! `stats_config`: which stats exist and how the Prometheus output tags them.

/// `stats_config.stats_matcher`: which stats exist.
#[derive(Debug, PartialEq)]
pub enum StatsMatcher {
    /// `reject_all: true`.
    RejectAll,
    /// `inclusion_list`: only stats one of these names.
    Inclusion(Vec<NameMatch>),
    /// `exclusion_list`: every stat but those these name.
    Exclusion(Vec<NameMatch>),
}

impl StatsMatcher {
    /// Whether a stat of this name is kept.
    pub fn accepts(&self, name: &str) -> bool {
        match self {
            StatsMatcher::RejectAll => false,
            StatsMatcher::Inclusion(list) => list.iter().any(|m| m.matches(name)),
            StatsMatcher::Exclusion(list) => !list.iter().any(|m| m.matches(name)),
        }
    }
}

/// One `StringMatcher` of a stats matcher list.
#[derive(Debug, PartialEq)]
pub struct NameMatch {
    /// What is compared.
    pub kind: NameMatchKind,
    /// `ignore_case` (not for regexes).
    pub ignore_case: bool,
}

/// The comparisons a stats matcher makes.
#[derive(Debug, PartialEq)]
pub enum NameMatchKind {
    /// `exact`.
    Exact(String),
    /// `prefix`.
    Prefix(String),
    /// `suffix`.
    Suffix(String),
    /// `contains`.
    Contains(String),
    /// `safe_regex`: the whole name.
    Regex(crate::pattern::Regex),
}

impl NameMatch {
    fn matches(&self, name: &str) -> bool {
        let lowered;
        let name = if self.ignore_case {
            lowered = name.to_ascii_lowercase();
            lowered.as_str()
        } else {
            name
        };
        let fold = |s: &str| {
            if self.ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.to_string()
            }
        };
        match &self.kind {
            NameMatchKind::Exact(s) => name == fold(s),
            NameMatchKind::Prefix(s) => name.starts_with(&fold(s)),
            NameMatchKind::Suffix(s) => name.ends_with(&fold(s)),
            NameMatchKind::Contains(s) => name.contains(&fold(s)),
            NameMatchKind::Regex(r) => r.is_match(name),
        }
    }
}

/// `stats_config`'s tag extraction for the Prometheus output: its `stats_tags` in order, then
/// Envoy's default extractors unless `use_all_default_tags` is false.
#[derive(Debug, PartialEq)]
pub struct Tagging {
    /// `stats_tags` with a regex: the first capture group leaves the name, the second (or the
    /// first, if there is one) is the tag's value.
    pub extractors: Vec<(String, crate::pattern::FancyRegex)>,
    /// `stats_tags` with a `fixed_value`: on every stat.
    pub fixed: Vec<(String, String)>,
    /// `use_all_default_tags` (default true).
    pub defaults: bool,
}

impl Default for Tagging {
    fn default() -> Self {
        Tagging {
            extractors: Vec::new(),
            fixed: Vec::new(),
            defaults: true,
        }
    }
}

/// `histogram_bucket_settings`: a histogram's Prometheus buckets by its name, the first match
/// winning; Envoy's defaults otherwise.
#[derive(Debug, Default, PartialEq)]
pub struct HistogramBuckets(pub Vec<(NameMatch, Vec<f64>)>);

/// Envoy's default histogram buckets (milliseconds, mostly).
pub const DEFAULT_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

impl HistogramBuckets {
    /// The buckets of the histogram called `name`.
    pub fn of(&self, name: &str) -> &[f64] {
        self.0
            .iter()
            .find(|(m, _)| m.matches(name))
            .map_or(&DEFAULT_BUCKETS[..], |(_, b)| b.as_slice())
    }
}
