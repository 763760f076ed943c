//! `json_format`: a JSON object per line whose string values are format strings. As Envoy 1.40
//! writes it: keys in sorted order, a value that is exactly one operator keeps its type
//! (numbers for codes, sizes, durations, ports and ids; `null` when there is no value), any
//! other string is text (a missing value inside it is `-`), and numbers, booleans, lists and
//! nested objects of the configuration are kept.

use std::fmt::Write as _;

use super::{numeric, parse_pieces, render_pieces, truncated, value, Extensions, Piece};
use crate::stream_info::StreamInfo;

/// One value of a `json_format`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Node);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    /// A nested object, keys sorted.
    Object(Vec<(String, Template)>),
    /// A list.
    List(Vec<Template>),
    /// A format string.
    Text(Vec<Piece>),
    /// A number, boolean or null of the configuration, as JSON text.
    Literal(String),
}

impl Template {
    /// An object of these fields, in Envoy's (sorted) order.
    pub fn object(mut fields: Vec<(String, Template)>) -> Template {
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        Template(Node::Object(fields))
    }

    /// A list.
    pub fn list(items: Vec<Template>) -> Template {
        Template(Node::List(items))
    }

    /// A format string value.
    pub fn string(text: &str, ext: Extensions) -> Result<Template, String> {
        Ok(Template(Node::Text(parse_pieces(text, ext)?)))
    }

    /// A number of the configuration: an integral one stays a number, any other becomes a
    /// string (`2.5` → `"2.5"`), as Envoy 1.40 writes them.
    pub fn number(n: f64) -> Template {
        if n.is_finite() && n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
            Template(Node::Literal(format!("{}", n as i64)))
        } else if n.is_finite() {
            let mut text = String::new();
            string(&n.to_string(), &mut text);
            Template(Node::Literal(text))
        } else {
            Template::null()
        }
    }

    /// A boolean.
    pub fn bool(b: bool) -> Template {
        Template(Node::Literal(b.to_string()))
    }

    /// `null`.
    pub fn null() -> Template {
        Template(Node::Literal("null".into()))
    }

    /// Writes the value for a stream.
    pub fn render(&self, info: &StreamInfo, out: &mut String) {
        match &self.0 {
            Node::Object(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    string(k, out);
                    out.push(':');
                    v.render(info, out);
                }
                out.push('}');
            }
            Node::List(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.render(info, out);
                }
                out.push(']');
            }
            Node::Literal(text) => out.push_str(text),
            Node::Text(pieces) => match pieces.as_slice() {
                [Piece::Op(op, max)] => match value(op, info) {
                    None => out.push_str("null"),
                    Some(v) => {
                        let v = truncated(&v, *max);
                        if numeric(op) && v.parse::<i64>().is_ok() {
                            out.push_str(v);
                        } else {
                            string(v, out);
                        }
                    }
                },
                _ => {
                    let mut text = String::new();
                    render_pieces(pieces, info, &mut text);
                    string(&text, out);
                }
            },
        }
    }
}

/// A JSON string literal.
fn string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::Format;

    #[test]
    fn typed_values_sorted_keys_and_nulls_as_envoy_writes_them() {
        let ext = Extensions::default();
        let s = |t: &str| Template::string(t, ext).expect("parses");
        let t = Template::object(vec![
            ("zeta".into(), s("%PROTOCOL%")),
            ("alpha".into(), s("%RESPONSE_CODE%")),
            (
                "mid".into(),
                Template::object(vec![
                    ("b".into(), s("%UPSTREAM_HOST%")),
                    ("a".into(), s("x %BYTES_SENT% y \"%UPSTREAM_HOST%\"")),
                ]),
            ),
            ("n".into(), Template::number(5.0)),
            ("t".into(), Template::bool(true)),
            ("missing".into(), s("%REQ(X-NOPE)%")),
            ("trunc".into(), s("%REQ(:PATH):3%")),
            ("flags".into(), s("%RESPONSE_FLAGS%")),
            (
                "list".into(),
                Template::list(vec![s("%PROTOCOL%"), Template::number(3.5)]),
            ),
            ("empty".into(), s("")),
        ]);
        let mut info = StreamInfo::new(
            "127.0.0.1:5000".parse().expect("addr"),
            "127.0.0.1:10000".parse().expect("addr"),
        );
        info.protocol = Some("HTTP/1.1");
        info.response_code = Some(404);
        info.bytes_sent = 335;
        info.path = Some("/a/b".into());
        let mut line = String::new();
        Format::json(t).render(&info, &mut line);
        assert_eq!(
            line,
            "{\"alpha\":404,\"empty\":\"\",\"flags\":\"-\",\"list\":[\"HTTP/1.1\",\"3.5\"],\"mid\":{\"a\":\"x 335 y \\\"-\\\"\",\"b\":null},\"missing\":null,\"n\":5,\"t\":true,\"trunc\":\"/a/\",\"zeta\":\"HTTP/1.1\"}\n"
        );
        let parsed: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(parsed["alpha"], 404);
    }
}
