//! A subset of the Common Expression Language, as Envoy's CEL extensions evaluate it over a
//! stream's attributes (`request.path`, `response.code`, …): literals, lists, the logical,
//! relational and arithmetic operators, `in`, the conditional, indexing, and the functions
//! `size`, `contains`, `startsWith`, `endsWith`, `matches`, `int`, `uint`, `double` and
//! `string`. An attribute is known when the expression is read, so one skiff does not provide
//! is refused then; a value a stream does not have is an error when evaluated, as in Envoy.

use std::fmt;

/// A value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Double(f64),
    String(String),
    List(Vec<Value>),
    /// A map with string keys (request and response headers).
    Map(Vec<(String, Value)>),
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null_type",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Uint(_) => "uint",
            Value::Double(_) => "double",
            Value::String(_) => "string",
            Value::List(_) => "list",
            Value::Map(_) => "map",
        }
    }
}

/// An evaluation error (Envoy's CEL errors: the expression then decides nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct EvalError(pub String);

type Eval = Result<Value, EvalError>;

fn err<T>(msg: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError(msg.into()))
}

/// The attributes a stream offers: `(root, field)`, such as `("request", "path")`.
pub trait Attributes {
    /// The attribute's value, or `None` when the stream has none.
    fn attribute(&self, root: &str, field: &str) -> Option<Value>;
}

/// The attributes skiff offers, by root.
const ATTRIBUTES: &[(&str, &[&str])] = &[
    (
        "request",
        &[
            "path",
            "url_path",
            "host",
            "scheme",
            "method",
            "headers",
            "referer",
            "useragent",
            "id",
            "protocol",
            "query",
        ],
    ),
    ("response", &["code", "code_details", "headers"]),
    ("connection", &["id", "mtls", "requested_server_name"]),
    ("source", &["address", "port"]),
    ("destination", &["address", "port"]),
    ("upstream", &["address", "port"]),
    ("xds", &["route_name", "cluster_name"]),
];

/// Envoy's attribute roots skiff does not offer (refused, rather than always an error).
const OTHER_ROOTS: &[&str] = &["metadata", "filter_state", "plugin"];

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Lit(Value),
    Attr(String, String),
    List(Vec<Expr>),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
    Cond(Box<Expr>, Box<Expr>, Box<Expr>),
    Index(Box<Expr>, Box<Expr>),
    /// A function or method: its name, its receiver (a method's), its arguments.
    Call(String, Option<Box<Expr>>, Vec<Expr>),
    /// A regex compiled when read (`matches` with a literal pattern).
    Matches(Box<Expr>, crate::pattern::Regex),
}

impl fmt::Display for BinOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BinOp::Or => "||",
            BinOp::And => "&&",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::In => "in",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Int(i64),
    Uint(u64),
    Double(f64),
    Str(String),
    Op(&'static str),
}

const OPS: &[&str] = &[
    "||", "&&", "==", "!=", "<=", ">=", "<", ">", "!", "+", "-", "*", "/", "%", "?", ":", ".", ",",
    "(", ")", "[", "]",
];

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let b = src.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(src[start..i].to_string()));
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let mut float = false;
            if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
                float = true;
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            let text = &src[start..i];
            if float {
                out.push(Tok::Double(text.parse().map_err(|_| "bad number")?));
            } else if i < b.len() && (b[i] == b'u' || b[i] == b'U') {
                i += 1;
                out.push(Tok::Uint(
                    text.parse()
                        .map_err(|_| format!("integer out of range: {text}"))?,
                ));
            } else {
                out.push(Tok::Int(
                    text.parse()
                        .map_err(|_| format!("integer out of range: {text}"))?,
                ));
            }
            continue;
        }
        if c == b'\'' || c == b'"' {
            let quote = c;
            i += 1;
            let mut s = String::new();
            loop {
                let Some(&d) = b.get(i) else {
                    return Err("unterminated string".into());
                };
                if d == quote {
                    i += 1;
                    break;
                }
                if d == b'\\' {
                    let e = *b.get(i + 1).ok_or("unterminated string")?;
                    s.push(match e {
                        b'n' => '\n',
                        b't' => '\t',
                        b'r' => '\r',
                        b'\\' => '\\',
                        b'\'' => '\'',
                        b'"' => '"',
                        _ => return Err(format!("unsupported escape \\{}", e as char)),
                    });
                    i += 2;
                    continue;
                }
                let ch = src[i..].chars().next().ok_or("bad string")?;
                s.push(ch);
                i += ch.len_utf8();
            }
            out.push(Tok::Str(s));
            continue;
        }
        match OPS.iter().find(|op| src[i..].starts_with(**op)) {
            Some(op) => {
                out.push(Tok::Op(op));
                i += op.len();
            }
            None => {
                let ch = src[i..].chars().next().unwrap_or('?');
                return Err(format!("unexpected character '{ch}'"));
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
    depth: usize,
}

/// How deep an expression may nest.
const MAX_DEPTH: usize = 64;

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn eat(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Op(o)) if *o == op) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, op: &str) -> Result<(), String> {
        if self.eat(op) {
            Ok(())
        } else {
            Err(format!("expected '{op}'"))
        }
    }

    fn nest(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err("expression nested too deeply".into());
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Expr, String> {
        self.nest()?;
        let cond = self.binary(0)?;
        let out = if self.eat("?") {
            let a = self.expr()?;
            self.expect(":")?;
            let b = self.expr()?;
            Expr::Cond(Box::new(cond), Box::new(a), Box::new(b))
        } else {
            cond
        };
        self.depth -= 1;
        Ok(out)
    }

    /// Binary operators by precedence level: `||`, `&&`, relations, additive,
    /// multiplicative.
    fn binary(&mut self, level: usize) -> Result<Expr, String> {
        if level == 5 {
            return self.unary();
        }
        let mut left = self.binary(level + 1)?;
        loop {
            let op = match (level, self.peek()) {
                (0, Some(Tok::Op("||"))) => BinOp::Or,
                (1, Some(Tok::Op("&&"))) => BinOp::And,
                (2, Some(Tok::Op("=="))) => BinOp::Eq,
                (2, Some(Tok::Op("!="))) => BinOp::Ne,
                (2, Some(Tok::Op("<"))) => BinOp::Lt,
                (2, Some(Tok::Op("<="))) => BinOp::Le,
                (2, Some(Tok::Op(">"))) => BinOp::Gt,
                (2, Some(Tok::Op(">="))) => BinOp::Ge,
                (2, Some(Tok::Ident(w))) if w == "in" => BinOp::In,
                (3, Some(Tok::Op("+"))) => BinOp::Add,
                (3, Some(Tok::Op("-"))) => BinOp::Sub,
                (4, Some(Tok::Op("*"))) => BinOp::Mul,
                (4, Some(Tok::Op("/"))) => BinOp::Div,
                (4, Some(Tok::Op("%"))) => BinOp::Rem,
                _ => return Ok(left),
            };
            self.at += 1;
            let right = self.binary(level + 1)?;
            left = Expr::Bin(op, Box::new(left), Box::new(right));
        }
    }

    fn unary(&mut self) -> Result<Expr, String> {
        self.nest()?;
        let out = if self.eat("!") {
            Expr::Not(Box::new(self.unary()?))
        } else if self.eat("-") {
            match self.unary()? {
                Expr::Lit(Value::Int(n)) => Expr::Lit(Value::Int(-n)),
                Expr::Lit(Value::Double(d)) => Expr::Lit(Value::Double(-d)),
                e => Expr::Neg(Box::new(e)),
            }
        } else {
            self.member()?
        };
        self.depth -= 1;
        Ok(out)
    }

    fn args(&mut self) -> Result<Vec<Expr>, String> {
        let mut out = Vec::new();
        if self.eat(")") {
            return Ok(out);
        }
        loop {
            out.push(self.expr()?);
            if self.eat(")") {
                return Ok(out);
            }
            self.expect(",")?;
        }
    }

    fn member(&mut self) -> Result<Expr, String> {
        let mut e = self.primary()?;
        loop {
            if self.eat(".") {
                let Some(Tok::Ident(name)) = self.peek().cloned() else {
                    return Err("expected a field or method name after '.'".into());
                };
                self.at += 1;
                if self.eat("(") {
                    let args = self.args()?;
                    e = method(name, e, args)?;
                } else {
                    return Err(format!("unsupported field selection '.{name}'"));
                }
            } else if self.eat("[") {
                let i = self.expr()?;
                self.expect("]")?;
                e = Expr::Index(Box::new(e), Box::new(i));
            } else {
                return Ok(e);
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, String> {
        let Some(t) = self.peek().cloned() else {
            return Err("unexpected end of expression".into());
        };
        self.at += 1;
        Ok(match t {
            Tok::Int(n) => Expr::Lit(Value::Int(n)),
            Tok::Uint(n) => Expr::Lit(Value::Uint(n)),
            Tok::Double(d) => Expr::Lit(Value::Double(d)),
            Tok::Str(s) => Expr::Lit(Value::String(s)),
            Tok::Op("(") => {
                let e = self.expr()?;
                self.expect(")")?;
                e
            }
            Tok::Op("[") => {
                let mut items = Vec::new();
                if !self.eat("]") {
                    loop {
                        items.push(self.expr()?);
                        if self.eat("]") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                Expr::List(items)
            }
            Tok::Ident(name) => match name.as_str() {
                "true" => Expr::Lit(Value::Bool(true)),
                "false" => Expr::Lit(Value::Bool(false)),
                "null" => Expr::Lit(Value::Null),
                _ if self.eat("(") => {
                    let args = self.args()?;
                    function(name, args)?
                }
                _ => self.attribute(name)?,
            },
            Tok::Op(op) => return Err(format!("unexpected '{op}'")),
        })
    }

    /// `root.field`, checked against what skiff offers.
    fn attribute(&mut self, root: String) -> Result<Expr, String> {
        let Some((_, fields)) = ATTRIBUTES.iter().find(|(r, _)| *r == root) else {
            if OTHER_ROOTS.contains(&root.as_str()) {
                return Err(format!("unsupported attribute '{root}'"));
            }
            return Err(format!("undeclared reference to '{root}'"));
        };
        if !self.eat(".") {
            return Err(format!(
                "unsupported attribute '{root}' (a field of it is needed)"
            ));
        }
        let Some(Tok::Ident(field)) = self.peek().cloned() else {
            return Err(format!("expected a field of '{root}'"));
        };
        self.at += 1;
        if !fields.contains(&field.as_str()) {
            return Err(format!("unsupported attribute '{root}.{field}'"));
        }
        Ok(Expr::Attr(root, field))
    }
}

fn method(name: String, target: Expr, args: Vec<Expr>) -> Result<Expr, String> {
    let arity = match name.as_str() {
        "contains" | "startsWith" | "endsWith" | "matches" => 1,
        "size" => 0,
        _ => return Err(format!("unsupported function '{name}'")),
    };
    if args.len() != arity {
        return Err(format!("'{name}' takes {arity} argument(s)"));
    }
    if name == "matches" {
        if let Some(Expr::Lit(Value::String(p))) = args.first() {
            let re = crate::pattern::Regex::new(&format!("(?:{p})"))
                .map_err(|e| format!("invalid regex in matches(): {e}"))?;
            return Ok(Expr::Matches(Box::new(target), re));
        }
        return Err("'matches' needs a literal pattern".into());
    }
    Ok(Expr::Call(name, Some(Box::new(target)), args))
}

fn function(name: String, args: Vec<Expr>) -> Result<Expr, String> {
    match name.as_str() {
        "size" | "int" | "uint" | "double" | "string" if args.len() == 1 => {
            Ok(Expr::Call(name, None, args))
        }
        "size" | "int" | "uint" | "double" | "string" => Err(format!("'{name}' takes 1 argument")),
        _ => Err(format!("unsupported function '{name}'")),
    }
}

/// How many tokens an expression may have (which bounds its tree's depth: a chain of binary
/// operators nests one level per operator).
const MAX_TOKENS: usize = 1000;

/// Parses an expression; the error says what is wrong.
pub fn parse(src: &str) -> Result<Expr, String> {
    let toks = lex(src)?;
    if toks.len() > MAX_TOKENS {
        return Err(format!("expression longer than {MAX_TOKENS} tokens"));
    }
    let mut p = Parser {
        toks,
        at: 0,
        depth: 0,
    };
    let e = p.expr()?;
    if p.at != p.toks.len() {
        return Err("unexpected text after the expression".into());
    }
    Ok(e)
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(n) => Some(*n as f64),
        Value::Uint(n) => Some(*n as f64),
        Value::Double(d) => Some(*d),
        _ => None,
    }
}

fn equal(a: &Value, b: &Value) -> Result<bool, EvalError> {
    Ok(match (a, b) {
        (Value::Int(_) | Value::Uint(_) | Value::Double(_), _) if number(b).is_some() => {
            match (a, b) {
                (Value::Int(x), Value::Int(y)) => x == y,
                (Value::Uint(x), Value::Uint(y)) => x == y,
                (Value::Int(x), Value::Uint(y)) | (Value::Uint(y), Value::Int(x)) => {
                    u64::try_from(*x).is_ok_and(|x| x == *y)
                }
                _ => number(a) == number(b),
            }
        }
        (Value::List(x), Value::List(y)) => {
            if x.len() != y.len() {
                return Ok(false);
            }
            for (p, q) in x.iter().zip(y) {
                if !equal(p, q)? {
                    return Ok(false);
                }
            }
            true
        }
        _ if std::mem::discriminant(a) == std::mem::discriminant(b) => a == b,
        _ => {
            return err(format!(
                "no such overload: {} == {}",
                a.type_name(),
                b.type_name()
            ))
        }
    })
}

fn compare(op: BinOp, a: &Value, b: &Value) -> Eval {
    let ord = match (a, b) {
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Int(x), Value::Int(y)) => x.cmp(y),
        (Value::Uint(x), Value::Uint(y)) => x.cmp(y),
        _ => match (number(a), number(b)) {
            (Some(x), Some(y)) => match x.partial_cmp(&y) {
                Some(o) => o,
                None => return Ok(Value::Bool(false)),
            },
            _ => {
                return err(format!(
                    "no such overload: {} {op} {}",
                    a.type_name(),
                    b.type_name()
                ))
            }
        },
    };
    use std::cmp::Ordering::*;
    Ok(Value::Bool(match op {
        BinOp::Lt => ord == Less,
        BinOp::Le => ord != Greater,
        BinOp::Gt => ord == Greater,
        _ => ord != Less,
    }))
}

fn arith(op: BinOp, a: Value, b: Value) -> Eval {
    let overflow = || EvalError("return error for overflow".into());
    Ok(match (a, b) {
        (Value::Int(x), Value::Int(y)) => Value::Int(match op {
            BinOp::Add => x.checked_add(y).ok_or_else(overflow)?,
            BinOp::Sub => x.checked_sub(y).ok_or_else(overflow)?,
            BinOp::Mul => x.checked_mul(y).ok_or_else(overflow)?,
            BinOp::Div if y == 0 => return err("divide by zero"),
            BinOp::Div => x.checked_div(y).ok_or_else(overflow)?,
            BinOp::Rem if y == 0 => return err("modulus by zero"),
            _ => x.checked_rem(y).ok_or_else(overflow)?,
        }),
        (Value::Uint(x), Value::Uint(y)) => Value::Uint(match op {
            BinOp::Add => x.checked_add(y).ok_or_else(overflow)?,
            BinOp::Sub => x.checked_sub(y).ok_or_else(overflow)?,
            BinOp::Mul => x.checked_mul(y).ok_or_else(overflow)?,
            BinOp::Div if y == 0 => return err("divide by zero"),
            BinOp::Div => x / y,
            BinOp::Rem if y == 0 => return err("modulus by zero"),
            _ => x % y,
        }),
        (Value::Double(x), Value::Double(y)) => Value::Double(match op {
            BinOp::Add => x + y,
            BinOp::Sub => x - y,
            BinOp::Mul => x * y,
            BinOp::Div => x / y,
            _ => return err("no such overload: double % double"),
        }),
        (Value::String(x), Value::String(y)) if op == BinOp::Add => Value::String(x + &y),
        (Value::List(mut x), Value::List(y)) if op == BinOp::Add => {
            x.extend(y);
            Value::List(x)
        }
        (a, b) => {
            return err(format!(
                "no such overload: {} {op} {}",
                a.type_name(),
                b.type_name()
            ))
        }
    })
}

fn as_bool(v: Value) -> Result<bool, EvalError> {
    match v {
        Value::Bool(b) => Ok(b),
        other => err(format!(
            "no such overload: expected bool, got {}",
            other.type_name()
        )),
    }
}

fn string_arg(v: Value, what: &str) -> Result<String, EvalError> {
    match v {
        Value::String(s) => Ok(s),
        other => err(format!("no such overload: {what}({})", other.type_name())),
    }
}

impl Expr {
    /// Evaluates the expression over a stream's attributes.
    pub fn eval(&self, a: &dyn Attributes) -> Eval {
        match self {
            Expr::Lit(v) => Ok(v.clone()),
            Expr::Attr(root, field) => a
                .attribute(root, field)
                .map_or_else(|| err(format!("no such attribute: {root}.{field}")), Ok),
            Expr::List(items) => Ok(Value::List(
                items.iter().map(|e| e.eval(a)).collect::<Result<_, _>>()?,
            )),
            Expr::Not(e) => Ok(Value::Bool(!as_bool(e.eval(a)?)?)),
            Expr::Neg(e) => match e.eval(a)? {
                Value::Int(n) => n
                    .checked_neg()
                    .map(Value::Int)
                    .ok_or(EvalError("return error for overflow".into())),
                Value::Double(d) => Ok(Value::Double(-d)),
                other => err(format!("no such overload: -{}", other.type_name())),
            },
            // CEL's logical operators absorb an error when the other side decides.
            Expr::Bin(BinOp::Or, l, r) => {
                let left = l.eval(a).and_then(as_bool);
                if left == Ok(true) {
                    return Ok(Value::Bool(true));
                }
                let right = r.eval(a).and_then(as_bool);
                match (left, right) {
                    (_, Ok(true)) => Ok(Value::Bool(true)),
                    (Ok(false), Ok(false)) => Ok(Value::Bool(false)),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                    _ => Ok(Value::Bool(false)),
                }
            }
            Expr::Bin(BinOp::And, l, r) => {
                let left = l.eval(a).and_then(as_bool);
                if left == Ok(false) {
                    return Ok(Value::Bool(false));
                }
                let right = r.eval(a).and_then(as_bool);
                match (left, right) {
                    (_, Ok(false)) => Ok(Value::Bool(false)),
                    (Ok(true), Ok(true)) => Ok(Value::Bool(true)),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                    _ => Ok(Value::Bool(true)),
                }
            }
            Expr::Bin(op, l, r) => {
                let (x, y) = (l.eval(a)?, r.eval(a)?);
                match op {
                    BinOp::Eq => Ok(Value::Bool(equal(&x, &y)?)),
                    BinOp::Ne => Ok(Value::Bool(!equal(&x, &y)?)),
                    BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => compare(*op, &x, &y),
                    BinOp::In => match y {
                        Value::List(items) => {
                            for i in &items {
                                if equal(&x, i).unwrap_or(false) {
                                    return Ok(Value::Bool(true));
                                }
                            }
                            Ok(Value::Bool(false))
                        }
                        Value::Map(entries) => match x {
                            Value::String(k) => {
                                Ok(Value::Bool(entries.iter().any(|(key, _)| *key == k)))
                            }
                            other => err(format!("no such overload: {} in map", other.type_name())),
                        },
                        other => err(format!("no such overload: in {}", other.type_name())),
                    },
                    _ => arith(*op, x, y),
                }
            }
            Expr::Cond(c, x, y) => {
                if as_bool(c.eval(a)?)? {
                    x.eval(a)
                } else {
                    y.eval(a)
                }
            }
            Expr::Index(target, index) => match (target.eval(a)?, index.eval(a)?) {
                (Value::Map(entries), Value::String(k)) => entries
                    .into_iter()
                    .find(|(key, _)| *key == k)
                    .map(|(_, v)| v)
                    .map_or_else(|| err(format!("no such key: {k}")), Ok),
                (Value::List(items), i) => {
                    let at = match i {
                        Value::Int(n) => usize::try_from(n).ok(),
                        Value::Uint(n) => usize::try_from(n).ok(),
                        _ => return err("no such overload: list index"),
                    };
                    at.and_then(|n| items.into_iter().nth(n))
                        .map_or_else(|| err("index out of range"), Ok)
                }
                (t, i) => err(format!(
                    "no such overload: {}[{}]",
                    t.type_name(),
                    i.type_name()
                )),
            },
            Expr::Matches(target, re) => match target.eval(a)? {
                Value::String(s) => Ok(Value::Bool(re.is_match(&s))),
                other => err(format!("no such overload: {}.matches", other.type_name())),
            },
            Expr::Call(name, target, args) => {
                let mut vals = Vec::with_capacity(args.len() + 1);
                if let Some(t) = target {
                    vals.push(t.eval(a)?);
                }
                for e in args {
                    vals.push(e.eval(a)?);
                }
                call(name, vals)
            }
        }
    }
}

fn call(name: &str, mut vals: Vec<Value>) -> Eval {
    let first = vals.remove(0);
    match name {
        "size" => Ok(Value::Int(match first {
            Value::String(s) => s.chars().count() as i64,
            Value::List(l) => l.len() as i64,
            Value::Map(m) => m.len() as i64,
            other => return err(format!("no such overload: size({})", other.type_name())),
        })),
        "contains" | "startsWith" | "endsWith" => {
            let s = string_arg(first, name)?;
            let arg = string_arg(vals.remove(0), name)?;
            Ok(Value::Bool(match name {
                "contains" => s.contains(&arg),
                "startsWith" => s.starts_with(&arg),
                _ => s.ends_with(&arg),
            }))
        }
        "int" => match first {
            Value::Int(n) => Ok(Value::Int(n)),
            Value::Uint(n) => i64::try_from(n)
                .map(Value::Int)
                .map_err(|_| EvalError("range error".into())),
            Value::Double(d) if d.is_finite() && d.abs() < 9.2e18 => Ok(Value::Int(d as i64)),
            Value::String(s) => s
                .parse()
                .map(Value::Int)
                .map_err(|_| EvalError("cannot convert to int".into())),
            other => err(format!("no such overload: int({})", other.type_name())),
        },
        "uint" => match first {
            Value::Uint(n) => Ok(Value::Uint(n)),
            Value::Int(n) => u64::try_from(n)
                .map(Value::Uint)
                .map_err(|_| EvalError("range error".into())),
            Value::Double(d) if d.is_finite() && (0.0..1.8e19).contains(&d) => {
                Ok(Value::Uint(d as u64))
            }
            Value::String(s) => s
                .parse()
                .map(Value::Uint)
                .map_err(|_| EvalError("cannot convert to uint".into())),
            other => err(format!("no such overload: uint({})", other.type_name())),
        },
        "double" => match first {
            Value::Double(d) => Ok(Value::Double(d)),
            Value::Int(n) => Ok(Value::Double(n as f64)),
            Value::Uint(n) => Ok(Value::Double(n as f64)),
            Value::String(s) => s
                .parse()
                .map(Value::Double)
                .map_err(|_| EvalError("cannot convert to double".into())),
            other => err(format!("no such overload: double({})", other.type_name())),
        },
        _ => match first {
            Value::String(s) => Ok(Value::String(s)),
            Value::Int(n) => Ok(Value::String(n.to_string())),
            Value::Uint(n) => Ok(Value::String(n.to_string())),
            Value::Double(d) => Ok(Value::String(d.to_string())),
            Value::Bool(b) => Ok(Value::String(b.to_string())),
            other => err(format!("no such overload: string({})", other.type_name())),
        },
    }
}

/// Whether an expression holds for a stream: an error or a value that is not a bool does
/// not (Envoy's CEL filters).
pub fn holds(e: &Expr, a: &dyn Attributes) -> bool {
    matches!(e.eval(a), Ok(Value::Bool(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Stream;

    impl Attributes for Stream {
        fn attribute(&self, root: &str, field: &str) -> Option<Value> {
            Some(match (root, field) {
                ("request", "path") => Value::String("/api/v1beta3/x?q=1".into()),
                ("request", "url_path") => Value::String("/api/v1beta3/x".into()),
                ("request", "headers") => {
                    Value::Map(vec![("x-user".into(), Value::String("ann".into()))])
                }
                ("response", "code") => Value::Int(503),
                _ => return None,
            })
        }
    }

    fn eval(src: &str) -> Eval {
        parse(src).expect("parses").eval(&Stream)
    }

    #[test]
    fn evaluates_as_cel() {
        let t = Ok(Value::Bool(true));
        let f = Ok(Value::Bool(false));
        assert_eq!(eval("response.code >= 400"), t);
        assert_eq!(eval("request.url_path.contains('v1beta3')"), t);
        assert_eq!(eval("request.headers['x-user'] == 'ann'"), t);
        assert_eq!(
            eval("'x-user' in request.headers && !('y' in request.headers)"),
            t
        );
        assert_eq!(
            eval("response.code / 100 == 5 && response.code % 100 == 3"),
            t
        );
        assert_eq!(eval("(response.code < 500 ? 'ok' : 'bad') == 'bad'"), t);
        assert_eq!(
            eval("size(request.url_path) == 14 && request.path.size() > 14"),
            t
        );
        assert_eq!(eval("request.url_path.matches('^/api/v[0-9]')"), t);
        assert_eq!(
            eval("response.code in [500, 503] && 503u == response.code"),
            t
        );
        assert_eq!(
            eval("int('7') + 1 == 8 && double(1) == 1.0 && string(5) == '5'"),
            t
        );
        assert_eq!(eval("request.url_path.startsWith('/web')"), f);
        // An error decides nothing, unless the other side of || or && does.
        assert!(eval("request.headers['nope'] == 'x'").is_err());
        assert!(eval("request.host == 'x'").is_err());
        assert_eq!(eval("request.host == 'x' || response.code == 503"), t);
        assert_eq!(eval("request.host == 'x' && response.code == 200"), f);
        assert!(eval("response.code == 'x'").is_err());
        assert!(eval("1 / 0 == 1").is_err());
        assert!(eval("9223372036854775807 + 1 > 0").is_err());
        assert!(!holds(&parse("response.code").unwrap(), &Stream));
    }

    #[test]
    fn refuses_what_it_does_not_read() {
        for bad in [
            "",
            "response.code >=",
            "metadata.filter_metadata",
            "request.nope == 1",
            "request",
            "foo == 1",
            "request.path.nope()",
            "request.path.matches(request.path)",
            "'unterminated",
            "has(request.path)",
            "1 ? 2",
            &"(".repeat(100),
            &"1 + ".repeat(600),
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
