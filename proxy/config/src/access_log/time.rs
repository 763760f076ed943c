//! `%START_TIME(...)%` formats: the strftime-like specifiers of Envoy's (absl's) time formatter,
//! with Envoy's `%s`, `%f` and `%Nf` and absl's `%ENS`, `%E*S` and `%Ez`. The clock is read to
//! the microsecond, as Envoy's.

use std::fmt::Write as _;
use std::time::SystemTime;

use super::civil_from_days;

/// One piece of a parsed time format.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// `%Y`.
    Year,
    /// `%y`.
    Year2,
    /// `%m`.
    Month,
    /// `%d`.
    Day,
    /// `%e`: the day, space-padded.
    DaySpace,
    /// `%j`.
    DayOfYear,
    /// `%H`.
    Hour,
    /// `%M`.
    Minute,
    /// `%S`.
    Second,
    /// `%a`, `%A`.
    Weekday {
        long: bool,
    },
    /// `%b`, `%h`, `%B`.
    MonthName {
        long: bool,
    },
    /// `%z`, `%Ez`.
    Offset {
        colon: bool,
    },
    /// `%Z`.
    Zone,
    /// `%s`: seconds since the epoch.
    Epoch,
    /// `%f` (9 digits) and `%Nf`: the fraction of the second.
    Fraction(u8),
    /// `%ENS`: seconds with N fractional digits; `%E*S` (None): with all, trailing zeros cut.
    SecondsFraction(Option<u8>),
}

/// A parsed `%START_TIME(...)%` format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeFormat(Vec<Piece>);

const WEEKDAYS: [(&str, &str); 7] = [
    ("Thu", "Thursday"),
    ("Fri", "Friday"),
    ("Sat", "Saturday"),
    ("Sun", "Sunday"),
    ("Mon", "Monday"),
    ("Tue", "Tuesday"),
    ("Wed", "Wednesday"),
];

const MONTHS: [(&str, &str); 12] = [
    ("Jan", "January"),
    ("Feb", "February"),
    ("Mar", "March"),
    ("Apr", "April"),
    ("May", "May"),
    ("Jun", "June"),
    ("Jul", "July"),
    ("Aug", "August"),
    ("Sep", "September"),
    ("Oct", "October"),
    ("Nov", "November"),
    ("Dec", "December"),
];

impl TimeFormat {
    /// Parses a format; a specifier skiff does not know is an error naming it.
    pub fn parse(text: &str) -> Result<TimeFormat, String> {
        let mut out = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                literal.push(c);
                continue;
            }
            let mut spec = String::from("%");
            let push = |out: &mut Vec<Piece>, literal: &mut String, p: Vec<Piece>| {
                if !literal.is_empty() {
                    out.push(Piece::Text(std::mem::take(literal)));
                }
                out.extend(p);
            };
            let Some(next) = chars.next() else {
                return Err("START_TIME: a format ends with a lone '%'".into());
            };
            spec.push(next);
            let pieces = match next {
                '%' => {
                    literal.push('%');
                    continue;
                }
                'Y' => vec![Piece::Year],
                'y' => vec![Piece::Year2],
                'm' => vec![Piece::Month],
                'd' => vec![Piece::Day],
                'e' => vec![Piece::DaySpace],
                'j' => vec![Piece::DayOfYear],
                'H' => vec![Piece::Hour],
                'M' => vec![Piece::Minute],
                'S' => vec![Piece::Second],
                'a' => vec![Piece::Weekday { long: false }],
                'A' => vec![Piece::Weekday { long: true }],
                'b' | 'h' => vec![Piece::MonthName { long: false }],
                'B' => vec![Piece::MonthName { long: true }],
                'z' => vec![Piece::Offset { colon: false }],
                'Z' => vec![Piece::Zone],
                's' => vec![Piece::Epoch],
                'f' => vec![Piece::Fraction(9)],
                'F' => vec![
                    Piece::Year,
                    Piece::Text("-".into()),
                    Piece::Month,
                    Piece::Text("-".into()),
                    Piece::Day,
                ],
                'T' => vec![
                    Piece::Hour,
                    Piece::Text(":".into()),
                    Piece::Minute,
                    Piece::Text(":".into()),
                    Piece::Second,
                ],
                'D' => vec![
                    Piece::Month,
                    Piece::Text("/".into()),
                    Piece::Day,
                    Piece::Text("/".into()),
                    Piece::Year2,
                ],
                d @ '1'..='9' if chars.peek() == Some(&'f') => {
                    chars.next();
                    vec![Piece::Fraction(d as u8 - b'0')]
                }
                'E' => {
                    let what: String = chars.clone().take(2).collect();
                    let piece = match what.as_str() {
                        "*S" => Piece::SecondsFraction(None),
                        w if w.starts_with('z') => {
                            chars.next();
                            push(&mut out, &mut literal, vec![Piece::Offset { colon: true }]);
                            continue;
                        }
                        w if w.len() == 2
                            && w.as_bytes()[0].is_ascii_digit()
                            && w.ends_with('S') =>
                        {
                            Piece::SecondsFraction(Some(w.as_bytes()[0] - b'0'))
                        }
                        _ => {
                            return Err(format!(
                                "START_TIME: unsupported time format specifier '%E{what}'"
                            ))
                        }
                    };
                    chars.next();
                    chars.next();
                    vec![piece]
                }
                _ => {
                    return Err(format!(
                        "START_TIME: unsupported time format specifier '{spec}'"
                    ))
                }
            };
            push(&mut out, &mut literal, pieces);
        }
        if !literal.is_empty() {
            out.push(Piece::Text(literal));
        }
        Ok(TimeFormat(out))
    }

    /// Formats `t` (UTC).
    pub fn format(&self, t: SystemTime) -> String {
        let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs() as i64;
        // Envoy's clock has microseconds; finer digits are zero.
        let nanos = d.subsec_micros() * 1000;
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, day) = civil_from_days(days);
        let mut s = String::new();
        for p in &self.0 {
            let _ = match p {
                Piece::Text(t) => {
                    s.push_str(t);
                    Ok(())
                }
                Piece::Year => write!(s, "{y:04}"),
                Piece::Year2 => write!(s, "{:02}", y.rem_euclid(100)),
                Piece::Month => write!(s, "{m:02}"),
                Piece::Day => write!(s, "{day:02}"),
                Piece::DaySpace => write!(s, "{day:>2}"),
                Piece::DayOfYear => write!(s, "{:03}", day_of_year(y, m, day)),
                Piece::Hour => write!(s, "{:02}", rem / 3600),
                Piece::Minute => write!(s, "{:02}", (rem % 3600) / 60),
                Piece::Second => write!(s, "{:02}", rem % 60),
                Piece::Weekday { long } => {
                    let (short, full) = WEEKDAYS[days.rem_euclid(7) as usize];
                    s.push_str(if *long { full } else { short });
                    Ok(())
                }
                Piece::MonthName { long } => {
                    let (short, full) = MONTHS[(m as usize).saturating_sub(1) % 12];
                    s.push_str(if *long { full } else { short });
                    Ok(())
                }
                Piece::Offset { colon: false } => write!(s, "+0000"),
                Piece::Offset { colon: true } => write!(s, "+00:00"),
                Piece::Zone => write!(s, "UTC"),
                Piece::Epoch => write!(s, "{secs}"),
                Piece::Fraction(n) => {
                    let digits = format!("{nanos:09}");
                    s.push_str(&digits[..usize::from(*n).min(9)]);
                    Ok(())
                }
                Piece::SecondsFraction(n) => {
                    let _ = write!(s, "{:02}", rem % 60);
                    let digits = format!("{nanos:09}");
                    let frac = match n {
                        Some(n) => &digits[..usize::from(*n).min(9)],
                        None => digits.trim_end_matches('0'),
                    };
                    if !frac.is_empty() {
                        s.push('.');
                        s.push_str(frac);
                    }
                    Ok(())
                }
            };
        }
        s
    }
}

/// 1-based day of the year.
fn day_of_year(y: i64, m: u32, d: u32) -> u32 {
    const BEFORE: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let idx = (m as usize).saturating_sub(1) % 12;
    BEFORE[idx] + d + u32::from(leap && m > 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_as_envoy_printed_them() {
        // Envoy 1.40 printed these for 2026-12-02T07:53:08.868664Z.
        let t = UNIX_EPOCH + Duration::from_nanos(1_796_197_988_868_664_123);
        let f = |s: &str| TimeFormat::parse(s).expect("parses").format(t);
        assert_eq!(f("%Y-%m-%dT%H:%M:%S%z"), "2026-12-02T07:53:08+0000");
        assert_eq!(f("%s"), "1796197988");
        assert_eq!(f("%s.%3f"), "1796197988.868");
        assert_eq!(f("%f"), "868664000");
        assert_eq!(f("%6f"), "868664");
        assert_eq!(f("%E3S"), "08.868");
        assert_eq!(
            f("%a %A %b %B %e %j %y %Z %F %T %D %%"),
            "Wed Wednesday Dec December  2 336 26 UTC 2026-12-02 07:53:08 12/02/26 %"
        );
        assert_eq!(f("plain"), "plain");
        assert_eq!(f("%H%M"), "0753");
        assert_eq!(f("%Ez %E*S %1f"), "+00:00 08.868664 8");
    }

    #[test]
    fn unknown_specifiers_are_named() {
        assert_eq!(
            TimeFormat::parse("%Q").unwrap_err(),
            "START_TIME: unsupported time format specifier '%Q'"
        );
        assert!(TimeFormat::parse("%").is_err());
        assert!(TimeFormat::parse("%E").is_err());
    }
}
