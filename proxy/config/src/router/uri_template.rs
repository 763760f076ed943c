//! Envoy's URI templates (`envoy.path.match.uri_template.uri_template_matcher` and
//! `envoy.path.rewrite.uri_template.uri_template_rewriter`): a path template such as
//! `/videos/*/{id}/{rest=**}.ts` becomes an anchored regular expression whose named groups are
//! the variables, and a rewrite template such as `/{id}/{rest}` is filled from them. The syntax
//! and its limits are Envoy's: segments of `*` (one segment), `**` (any text, `/` included, and
//! nothing globbing after it), literals of RFC 3986 path characters, and at most five variables
//! `{name}` or `{name=segments}` with names of one to sixteen characters.

use crate::pattern::Regex;

/// RFC 3986's `pchar`, as Envoy 1.40's literals and globs allow them (`*` and `=` included:
/// observed).
const LITERAL: &str = "a-zA-Z0-9\\-._~%!$&'()+,;:@=*";
/// The characters of a literal besides letters and digits.
const LITERAL_PUNCT: &[u8] = b"-._~%!$&'()+,;:@=*";
const MAX_VARIABLES: usize = 5;
const MAX_NAME: usize = 16;

/// A parsed path template, matched against the path without its query or fragment.
#[derive(Debug, Clone, PartialEq)]
pub struct PathTemplate {
    regex: Regex,
    variables: Vec<String>,
}

#[derive(Debug)]
enum Piece<'a> {
    Literal(&'a str),
    /// `*` (false) or `**` (true).
    Glob(bool),
    Variable(&'a str, Vec<Piece<'a>>),
}

fn is_literal(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || LITERAL_PUNCT.contains(&b))
}

/// A literal as Envoy puts it in its regex: only `$`, `(`, `)`, `+` and `.` escaped, so a `*`
/// repeats what precedes it (observed: `/a*b` matches `/aaab` and `/b`).
fn literal_regex(l: &str) -> String {
    let mut out = String::with_capacity(l.len());
    for c in l.chars() {
        if matches!(c, '$' | '(' | ')' | '+' | '.') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn is_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic())
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// A literal up to the next `/` (or the end).
fn literal(rest: &str) -> Result<(&str, &str), String> {
    let end = rest.find('/').unwrap_or(rest.len());
    let lit = &rest[..end];
    if !is_literal(lit) {
        return Err("Invalid literal".into());
    }
    Ok((lit, &rest[end..]))
}

fn glob(rest: &str) -> (bool, &str) {
    match rest.strip_prefix("**") {
        Some(r) => (true, r),
        None => (false, &rest[1..]),
    }
}

fn variable(rest: &str) -> Result<(Piece<'_>, &str), String> {
    let inner = &rest[1..];
    let (body, after) = inner
        .split_once('}')
        .ok_or_else(|| "Unmatched variable bracket".to_string())?;
    let (name, matcher) = match body.split_once('=') {
        Some((n, m)) => (n, Some(m)),
        None => (body, None),
    };
    if !is_name(name) {
        return Err("Invalid variable name".into());
    }
    let mut pieces = Vec::new();
    if let Some(mut m) = matcher {
        if m.is_empty() {
            return Err("Empty variable match".into());
        }
        while !m.is_empty() {
            if m.starts_with('*') {
                let (text, r) = glob(m);
                pieces.push(Piece::Glob(text));
                m = r;
            } else {
                let (lit, r) = literal(m)?;
                pieces.push(Piece::Literal(lit));
                m = r;
            }
            if !m.is_empty() {
                if !m.starts_with('/') || m.len() == 1 {
                    return Err("Invalid variable match".into());
                }
                m = &m[1..];
            }
        }
    }
    Ok((Piece::Variable(name, pieces), after))
}

fn regex_of(p: &Piece<'_>, out: &mut String) {
    match p {
        Piece::Literal(l) => out.push_str(&literal_regex(l)),
        Piece::Glob(false) => out.push_str(&format!("[{LITERAL}]+")),
        Piece::Glob(true) => out.push_str(&format!("[{LITERAL}/]*")),
        Piece::Variable(name, pieces) => {
            out.push_str(&format!("(?P<{name}>"));
            if pieces.is_empty() {
                regex_of(&Piece::Glob(false), out);
            }
            for (i, q) in pieces.iter().enumerate() {
                if i > 0 {
                    out.push('/');
                }
                regex_of(q, out);
            }
            out.push(')');
        }
    }
}

impl PathTemplate {
    /// Parses `template` as Envoy does; the error is Envoy's reason.
    pub fn parse(template: &str) -> Result<PathTemplate, String> {
        let valid = template.starts_with('/') && template.bytes().all(|b| b.is_ascii_graphic());
        if !valid {
            return Err("Invalid pattern".into());
        }
        let mut rest = &template[1..];
        let mut segments = Vec::new();
        let mut suffix = None;
        while !rest.is_empty() {
            let (piece, r) = if rest.starts_with('*') {
                let (text, r) = glob(rest);
                (Piece::Glob(text), r)
            } else if rest.starts_with('{') {
                variable(rest)?
            } else {
                let (lit, r) = literal(rest)?;
                (Piece::Literal(lit), r)
            };
            segments.push(piece);
            rest = r;
            if rest.is_empty() {
                break;
            }
            if rest == "/" {
                // A trailing `/`: an empty last segment.
                segments.push(Piece::Literal(""));
                break;
            }
            if let Some(r) = rest.strip_prefix('/') {
                rest = r;
                continue;
            }
            // Text right after a segment, to the end: a suffix.
            let (lit, r) = literal(rest)?;
            if !r.is_empty() {
                return Err("Prefix match not supported.".into());
            }
            suffix = Some(lit);
            break;
        }
        let mut variables = Vec::new();
        for p in &segments {
            if let Piece::Variable(name, _) = p {
                if variables.len() >= MAX_VARIABLES {
                    return Err("Exceeded variable count limit".into());
                }
                if name.len() > MAX_NAME {
                    return Err("Invalid variable length".into());
                }
                if variables.iter().any(|v| v == name) {
                    return Err("Repeated variable name".into());
                }
                variables.push(name.to_string());
            }
        }
        let mut text_glob = false;
        for p in &segments {
            let globs: Vec<bool> = match p {
                Piece::Glob(t) => vec![*t],
                Piece::Variable(_, pieces) if pieces.is_empty() => vec![false],
                Piece::Variable(_, pieces) => pieces
                    .iter()
                    .filter_map(|q| match q {
                        Piece::Glob(t) => Some(*t),
                        _ => None,
                    })
                    .collect(),
                Piece::Literal(_) => Vec::new(),
            };
            for t in globs {
                if text_glob {
                    return Err("Glob after text glob.".into());
                }
                text_glob = t;
            }
        }
        let mut re = String::from("^/");
        for (i, p) in segments.iter().enumerate() {
            if i > 0 {
                re.push('/');
            }
            regex_of(p, &mut re);
        }
        if let Some(s) = suffix {
            re.push_str(&literal_regex(s));
        }
        re.push('$');
        let regex = Regex::new(&re).map_err(|e| e.to_string())?;
        Ok(PathTemplate { regex, variables })
    }

    /// Whether `path` (query and fragment removed first) matches.
    pub fn matches(&self, path: &str) -> bool {
        self.regex.is_match(bare(path))
    }

    /// Whether the template captures `name`.
    pub fn has_variable(&self, name: &str) -> bool {
        self.variables.iter().any(|v| v == name)
    }
}

fn bare(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

/// A rewrite template: literals and variables of the route's path template.
#[derive(Debug, Clone, PartialEq)]
pub struct RewriteTemplate {
    parts: Vec<RewritePart>,
}

#[derive(Debug, Clone, PartialEq)]
enum RewritePart {
    Literal(String),
    Variable(String),
}

impl RewriteTemplate {
    /// Parses `template` as Envoy does, against the variables `matcher` captures.
    pub fn parse(template: &str, matcher: &PathTemplate) -> Result<RewriteTemplate, String> {
        if !template.starts_with('/') {
            return Err("Invalid rewrite variable placement".into());
        }
        if template.contains("//") {
            return Err("Invalid rewrite literal".into());
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            let (lit, after) = match rest.split_once('{') {
                Some((l, a)) => (l, Some(a)),
                None => (rest, None),
            };
            if !lit.is_empty() {
                let ok = lit
                    .bytes()
                    .all(|b| b == b'/' || b.is_ascii_alphanumeric() || LITERAL_PUNCT.contains(&b));
                if !ok {
                    return Err("Invalid rewrite literal pattern".into());
                }
                parts.push(RewritePart::Literal(lit.to_string()));
            }
            let Some(after) = after else {
                break;
            };
            let (name, r) = after
                .split_once('}')
                .ok_or_else(|| "Unmatched variable bracket".to_string())?;
            if !is_name(name) {
                return Err("Invalid variable name".into());
            }
            if !matcher.has_variable(name) {
                return Err("Nonexisting variable name".into());
            }
            parts.push(RewritePart::Variable(name.to_string()));
            rest = r;
        }
        Ok(RewriteTemplate { parts })
    }

    /// The new path for `path` matched by `matcher` (its query kept), or `None` when the
    /// path does not match (Envoy then leaves it as it is).
    pub fn rewrite(&self, matcher: &PathTemplate, path: &str) -> Option<String> {
        let b = bare(path);
        let caps = matcher.regex.captures(b)?;
        let mut out = String::new();
        for p in &self.parts {
            match p {
                RewritePart::Literal(l) => out.push_str(l),
                RewritePart::Variable(v) => out.push_str(caps.name(v).map_or("", |m| m.as_str())),
            }
        }
        out.push_str(&path[b.len()..]);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> PathTemplate {
        PathTemplate::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn templates_match_as_envoy_documents_them() {
        let p = t("/videos/*/{id}/{format}/{rendition}/{segment=**}.ts");
        assert!(p.matches("/videos/lib/123/hls/1080p/a/b/c.ts?x=1"));
        assert!(!p.matches("/videos/lib/123/hls/1080p/a/b/c.mp4"));
        let q = t("/bar/{lang}/{country}");
        assert!(q.matches("/bar/en/us"));
        assert!(!q.matches("/bar/en/us/x"));
        assert!(!q.matches("/bar/en"));
        assert!(t("/api/**").matches("/api/"));
        assert!(t("/a/").matches("/a/"));
        assert!(!t("/a/").matches("/a"));
        // As Envoy 1.40: `*` in a literal repeats, `=` and `*` are in globs.
        assert!(t("/a*b").matches("/aaab"));
        assert!(t("/a*b").matches("/b"));
        assert!(!t("/a*b").matches("/axb"));
        assert!(t("/s/*").matches("/s/a*b=c"));
        assert!(t("/x=y/{v=p=q}").matches("/x=y/p=q"));
    }

    #[test]
    fn bad_templates_are_refused_with_envoys_reasons() {
        for (s, why) in [
            ("nope", "Invalid pattern"),
            ("/a b", "Invalid pattern"),
            ("/{1a}", "Invalid variable name"),
            ("/{a", "Unmatched variable bracket"),
            ("/**/*", "Glob after text glob."),
            ("/{a=**}/{b}", "Glob after text glob."),
            ("/{a}/{a}", "Repeated variable name"),
            ("/{a}/{b}/{c}/{d}/{e}/{f}", "Exceeded variable count limit"),
            ("/{abcdefghijklmnopq}", "Invalid variable length"),
            ("/a\"b", "Invalid literal"),
            ("/{x}.a/b", "Prefix match not supported."),
        ] {
            assert_eq!(PathTemplate::parse(s).err().as_deref(), Some(why), "{s}");
        }
    }

    #[test]
    fn rewrites_fill_the_variables() {
        let m = t("/bar/{lang}/{country}");
        let r = RewriteTemplate::parse("/{country}/{lang}", &m).expect("rewrite");
        assert_eq!(
            r.rewrite(&m, "/bar/en/us?q=1").as_deref(),
            Some("/us/en?q=1")
        );
        let m = t("/videos/{rest=**}");
        let r = RewriteTemplate::parse("/v2/{rest}", &m).expect("rewrite");
        assert_eq!(r.rewrite(&m, "/videos/a/b").as_deref(), Some("/v2/a/b"));
        assert_eq!(
            RewriteTemplate::parse("/{nope}", &m).err().as_deref(),
            Some("Nonexisting variable name")
        );
        assert_eq!(
            RewriteTemplate::parse("//{rest}", &m).err().as_deref(),
            Some("Invalid rewrite literal")
        );
    }
}
