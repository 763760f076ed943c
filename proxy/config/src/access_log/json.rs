//! `json_format`: a JSON object per line whose string values are format strings. As Envoy 1.40
//! writes it: keys in sorted order, a value that is exactly one operator keeps its type
//! (numbers for codes, sizes, durations, ports and ids; `null` when there is no value), any
//! other string is text (a missing value inside it is `-`), and numbers, booleans, lists and
//! nested objects of the configuration are kept.

use std::fmt::Write as _;

use super::{parse_pieces, Extensions, Piece};

/// One value of a `json_format`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Node);

/// A [`Template`]'s value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
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

    /// What it holds.
    pub fn node(&self) -> &Node {
        &self.0
    }
}

/// Writes `s` as a JSON string literal.
pub fn string(s: &str, out: &mut String) {
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
