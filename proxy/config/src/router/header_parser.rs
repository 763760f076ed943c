//! `request_headers_to_add|remove` and `response_headers_to_add|remove` of a route, a virtual
//! host or a route configuration: Envoy's `HeaderParser`.

use http::{HeaderMap, HeaderName, HeaderValue};

/// `HeaderValueOption.append_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    /// `APPEND_IF_EXISTS_OR_ADD` (the default).
    AppendIfExistsOrAdd,
    /// `ADD_IF_ABSENT`.
    AddIfAbsent,
    /// `OVERWRITE_IF_EXISTS_OR_ADD`.
    OverwriteIfExistsOrAdd,
    /// `OVERWRITE_IF_EXISTS`.
    OverwriteIfExists,
}

/// One level's header changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderParser {
    /// `*_headers_to_remove`.
    pub remove: Vec<HeaderName>,
    /// `*_headers_to_add`: name, value, action, `keep_empty_value`.
    pub add: Vec<(HeaderName, HeaderValue, AppendAction, bool)>,
}

impl HeaderParser {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }

    /// Applies the changes as Envoy's `evaluateHeaders`: removals first; then the conditions
    /// of every addition are judged on the headers as they are before any addition, the
    /// overwrites are made, and then the additions.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        let mut overwrite = Vec::new();
        let mut append = Vec::new();
        for (name, value, action, keep_empty) in &self.add {
            if value.is_empty() && !keep_empty {
                continue;
            }
            let present = headers.contains_key(name);
            match action {
                AppendAction::AppendIfExistsOrAdd => append.push((name, value)),
                AppendAction::AddIfAbsent if !present => append.push((name, value)),
                AppendAction::AddIfAbsent => {}
                AppendAction::OverwriteIfExists if !present => {}
                AppendAction::OverwriteIfExists | AppendAction::OverwriteIfExistsOrAdd => {
                    overwrite.push((name, value))
                }
            }
        }
        for (name, value) in overwrite {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in append {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// The parsers of a route, its virtual host and its route configuration in the order Envoy
/// evaluates them: the most specific first (so the least specific wins an overwrite), or the
/// reverse with `most_specific_header_mutations_wins`.
pub fn in_order<'a>(
    global: &'a HeaderParser,
    vhost: &'a HeaderParser,
    route: &'a HeaderParser,
    most_specific_wins: bool,
) -> [&'a HeaderParser; 3] {
    if most_specific_wins {
        [global, vhost, route]
    } else {
        [route, vhost, global]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(
        add: &[(&'static str, &'static str, AppendAction)],
        remove: &[&'static str],
    ) -> HeaderParser {
        HeaderParser {
            remove: remove.iter().map(|n| HeaderName::from_static(n)).collect(),
            add: add
                .iter()
                .map(|(n, v, a)| {
                    (
                        HeaderName::from_static(n),
                        HeaderValue::from_static(v),
                        *a,
                        false,
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn actions_are_judged_on_the_headers_before_this_level() {
        use AppendAction::*;
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        p(
            &[
                ("x-a", "2", AppendIfExistsOrAdd),
                ("x-b", "1", AddIfAbsent),
                ("x-b", "2", AddIfAbsent),
                ("x-a", "3", OverwriteIfExists),
                ("x-c", "1", OverwriteIfExists),
                ("x-d", "", OverwriteIfExistsOrAdd),
            ],
            &["x-gone"],
        )
        .apply(&mut h);
        let all = |n: &str| {
            h.get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap_or(""))
                .collect::<Vec<_>>()
        };
        assert_eq!(all("x-a"), ["3", "2"]);
        assert_eq!(all("x-b"), ["1", "2"]);
        assert!(all("x-c").is_empty() && all("x-d").is_empty() && all("x-gone").is_empty());
    }
}
