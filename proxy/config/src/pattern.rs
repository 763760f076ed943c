//! Compiled regular expressions that compare by their pattern, so the model that holds them is
//! comparable data.

use std::fmt;

/// A `regex` expression (RE2 syntax, as Envoy's `safe_regex`).
#[derive(Clone)]
pub struct Regex(regex::Regex);

impl Regex {
    /// Compiles `pattern`.
    pub fn new(pattern: &str) -> Result<Self, regex::Error> {
        regex::Regex::new(pattern).map(Regex)
    }
}

impl std::ops::Deref for Regex {
    type Target = regex::Regex;

    fn deref(&self) -> &regex::Regex {
        &self.0
    }
}

impl PartialEq for Regex {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for Regex {}

impl fmt::Debug for Regex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A `fancy_regex` expression (stats tag extractors use look-around, as Envoy's do).
#[derive(Clone)]
pub struct FancyRegex(fancy_regex::Regex);

impl FancyRegex {
    /// Compiles `pattern` (an error says why, in words).
    pub fn new(pattern: &str) -> Result<Self, String> {
        fancy_regex::Regex::new(pattern)
            .map(FancyRegex)
            .map_err(|e| e.to_string())
    }
}

impl std::ops::Deref for FancyRegex {
    type Target = fancy_regex::Regex;

    fn deref(&self) -> &fancy_regex::Regex {
        &self.0
    }
}

impl PartialEq for FancyRegex {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for FancyRegex {}

impl fmt::Debug for FancyRegex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_by_pattern() {
        assert_eq!(Regex::new("^a+$").ok(), Regex::new("^a+$").ok());
        assert_ne!(Regex::new("^a+$").ok(), Regex::new("^a*$").ok());
        assert!(Regex::new("^a+$").is_ok_and(|r| r.is_match("aa")));
        assert_eq!(FancyRegex::new("(?=x)").ok(), FancyRegex::new("(?=x)").ok());
    }
}
