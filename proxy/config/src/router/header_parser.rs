//! `request_headers_to_add|remove` and `response_headers_to_add|remove` of a route, a virtual
//! host or a route configuration: Envoy's `HeaderParser`.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::access_log::Format;

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

/// A value to add: fixed, or a format in Envoy's substitution language (`%REQ(x)%`,
/// `%DOWNSTREAM_REMOTE_ADDRESS%`, …) rendered for each stream.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderText {
    /// A value without operators (`%%` already read as `%`).
    Fixed(HeaderValue),
    /// A value with operators; a value the stream does not have renders empty.
    Format(Arc<Format>),
}

/// Renders a [`HeaderText::Format`] for the stream being forwarded, given the headers being
/// changed (what `%REQ%` reads on requests and `%RESP%` on responses).
pub type Render<'a> = &'a dyn Fn(&Format, &HeaderMap) -> String;

/// One level's header changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderParser {
    /// `*_headers_to_remove`.
    pub remove: Vec<HeaderName>,
    /// `*_headers_to_add`: name, value, action, `keep_empty_value`.
    pub add: Vec<(HeaderName, HeaderText, AppendAction, bool)>,
}

impl HeaderParser {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }

    /// Whether a value needs the stream to render.
    pub fn formats(&self) -> bool {
        self.add
            .iter()
            .any(|(_, v, _, _)| matches!(v, HeaderText::Format(_)))
    }

    /// [`Self::apply_with`] where no value has operators, or where no stream is there to
    /// render them (they render empty).
    pub fn apply(&self, headers: &mut HeaderMap) {
        self.apply_with(headers, &|_, _| String::new())
    }

    /// Applies the changes as Envoy's `evaluateHeaders`: removals first; then every value is
    /// rendered and the condition of every addition judged on the headers as they are before
    /// any addition, the overwrites are made, and then the additions.
    pub fn apply_with(&self, headers: &mut HeaderMap, render: Render<'_>) {
        for name in &self.remove {
            headers.remove(name);
        }
        let mut overwrite = Vec::new();
        let mut append = Vec::new();
        for (name, text, action, keep_empty) in &self.add {
            let rendered;
            let value = match text {
                HeaderText::Fixed(v) => v,
                HeaderText::Format(f) => {
                    // A rendered value that is not a valid header value is not added.
                    match HeaderValue::try_from(render(f, headers)) {
                        Ok(v) => {
                            rendered = v;
                            &rendered
                        }
                        Err(_) => continue,
                    }
                }
            };
            if value.is_empty() && !keep_empty {
                continue;
            }
            let present = headers.contains_key(name);
            match action {
                AppendAction::AppendIfExistsOrAdd => append.push((name, value.clone())),
                AppendAction::AddIfAbsent if !present => append.push((name, value.clone())),
                AppendAction::AddIfAbsent => {}
                AppendAction::OverwriteIfExists if !present => {}
                AppendAction::OverwriteIfExists | AppendAction::OverwriteIfExistsOrAdd => {
                    overwrite.push((name, value.clone()))
                }
            }
        }
        for (name, value) in overwrite {
            headers.insert(name.clone(), value);
        }
        for (name, value) in append {
            headers.append(name.clone(), value);
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
                        HeaderText::Fixed(HeaderValue::from_static(v)),
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

    #[test]
    fn formats_render_against_the_headers_before_this_level() {
        let format = |t: &str| HeaderText::Format(Arc::new(Format::parse(t).unwrap()));
        let parser = HeaderParser {
            remove: vec![],
            add: vec![
                (
                    HeaderName::from_static("x-copy"),
                    format("%REQ(x-in)%"),
                    AppendAction::AppendIfExistsOrAdd,
                    false,
                ),
                (
                    HeaderName::from_static("x-in"),
                    format("again"),
                    AppendAction::OverwriteIfExistsOrAdd,
                    false,
                ),
                (
                    HeaderName::from_static("x-empty"),
                    format("%REQ(x-none)%"),
                    AppendAction::AppendIfExistsOrAdd,
                    false,
                ),
                (
                    HeaderName::from_static("x-kept"),
                    format("%REQ(x-none)%"),
                    AppendAction::AppendIfExistsOrAdd,
                    true,
                ),
            ],
        };
        assert!(parser.formats());
        let mut h = HeaderMap::new();
        h.insert("x-in", HeaderValue::from_static("1"));
        // A stand-in renderer: the value of the header a `%REQ(name)%` names, `again` as is.
        let render = |f: &Format, h: &HeaderMap| match f.body() {
            crate::access_log::Body::Text(p) => match p.as_slice() {
                [crate::access_log::Piece::Op(crate::access_log::Op::Req(n, _), _)] => h
                    .get(n.as_str())
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string(),
                _ => "again".to_string(),
            },
            _ => String::new(),
        };
        parser.apply_with(&mut h, &render);
        assert_eq!(h.get("x-copy").unwrap(), "1");
        assert_eq!(h.get("x-in").unwrap(), "again");
        assert!(h.get("x-empty").is_none());
        assert_eq!(h.get("x-kept").unwrap(), "");
    }
}
