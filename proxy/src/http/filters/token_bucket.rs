//! Token buckets as Envoy's local rate limiter keeps them: full at the start, refilled
//! continuously at `tokens_per_fill / fill_interval`, never above `max_tokens`. One bucket is
//! shared by every worker (attached to the configuration, they live as long as it does).

use std::sync::Mutex;
use std::time::Instant;

use crate::config::model::{HttpLocalRateLimit, TokenBucket};

/// One bucket.
#[derive(Debug)]
pub struct Bucket {
    max: f64,
    /// Tokens per second.
    rate: f64,
    /// The tokens when last looked at, and when that was.
    state: Mutex<(f64, Instant)>,
}

/// What a bucket said to a request: whether it may go, and what the `x-ratelimit-*` headers
/// show.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// A token was taken.
    pub allowed: bool,
    /// `max_tokens`.
    pub limit: u32,
    /// Whole tokens left.
    pub remaining: u32,
    /// Seconds until a token is there again (rounded up; 0 while one is).
    pub reset: u64,
}

impl Bucket {
    /// A full bucket.
    pub fn new(b: &TokenBucket) -> Bucket {
        Bucket {
            max: f64::from(b.max_tokens),
            rate: f64::from(b.tokens_per_fill) / b.fill_interval.as_secs_f64(),
            state: Mutex::new((f64::from(b.max_tokens), Instant::now())),
        }
    }

    /// Takes a token if there is one.
    pub fn take(&self, now: Instant) -> Verdict {
        self.take_n(now, 1)
    }

    /// Takes `n` tokens if there are as many (a descriptor's `hits_addend`). Taking none is a
    /// refusal, as Envoy's bucket counts what it consumed.
    pub fn take_n(&self, now: Instant, n: u64) -> Verdict {
        let n = n as f64;
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        let tokens = (s.0 + elapsed * self.rate).min(self.max);
        let allowed = n > 0.0 && tokens >= n;
        let left = if allowed { tokens - n } else { tokens };
        *s = (left, now.max(s.1));
        Verdict {
            allowed,
            limit: self.max as u32,
            remaining: left.floor() as u32,
            reset: if left >= 1.0 {
                0
            } else {
                ((1.0 - left) / self.rate).ceil() as u64
            },
        }
    }

    /// Tokens per second: the more restrictive of two buckets refills slower.
    pub fn rate(&self) -> f64 {
        self.rate
    }
}

/// The buckets of one local rate limit configuration: the default one and one per descriptor.
#[derive(Debug, Default)]
pub struct Limiter {
    /// `token_bucket`.
    pub default: Option<Bucket>,
    /// `descriptors`, in the configuration's order.
    pub descriptors: Vec<Bucket>,
    /// For each wildcard descriptor (same order; `None` for the others), the buckets of the
    /// values it met.
    pub dynamic: Vec<Option<Dynamic>>,
}

impl Limiter {
    /// Fresh, full buckets for `c`.
    pub fn new(c: &HttpLocalRateLimit) -> Limiter {
        Limiter {
            default: c.bucket.as_ref().map(Bucket::new),
            descriptors: c
                .descriptors
                .iter()
                .map(|d| Bucket::new(&d.bucket))
                .collect(),
            dynamic: c
                .descriptors
                .iter()
                .map(|d| {
                    d.entries
                        .iter()
                        .any(|(_, v)| v.is_empty())
                        .then(|| Dynamic {
                            template: d.bucket,
                            capacity: c.max_dynamic_descriptors,
                            buckets: Mutex::new((0, Vec::new())),
                        })
                })
                .collect(),
        }
    }
}

/// The buckets a wildcard descriptor made, one per set of values, each a full copy of the
/// wildcard's when first met; past `max_dynamic_descriptors` the least recently used goes
/// (Envoy's dynamic descriptors).
#[derive(Debug)]
pub struct Dynamic {
    template: TokenBucket,
    capacity: usize,
    /// A use counter, and (values, bucket, last use).
    #[allow(clippy::type_complexity)]
    buckets: Mutex<(
        u64,
        Vec<(Vec<(String, String)>, std::sync::Arc<Bucket>, u64)>,
    )>,
}

impl Dynamic {
    /// The bucket of these values.
    pub fn bucket(&self, values: &[(String, String)]) -> std::sync::Arc<Bucket> {
        let mut g = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        let tick = g.0;
        if let Some(e) = g.1.iter_mut().find(|e| e.0 == values) {
            e.2 = tick;
            return e.1.clone();
        }
        let b = std::sync::Arc::new(Bucket::new(&self.template));
        if self.capacity == 0 {
            return b;
        }
        if g.1.len() >= self.capacity {
            if let Some(oldest) =
                g.1.iter()
                    .enumerate()
                    .min_by_key(|(_, e)| e.2)
                    .map(|(i, _)| i)
            {
                g.1.swap_remove(oldest);
            }
        }
        g.1.push((values.to_vec(), b.clone(), tick));
        b
    }
}

static LIMITERS: crate::attached::Attached<HttpLocalRateLimit, Limiter> =
    crate::attached::Attached::new();

/// The buckets every worker shares for `config`: made by the first stream that needs them,
/// dropped with the configuration.
pub fn shared(config: &std::sync::Arc<HttpLocalRateLimit>) -> std::sync::Arc<Limiter> {
    LIMITERS.get_or_insert_with(config, || Limiter::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn starts_full_and_refills_continuously() {
        let b = Bucket::new(&TokenBucket {
            max_tokens: 2,
            tokens_per_fill: 1,
            fill_interval: Duration::from_secs(1),
        });
        let t0 = Instant::now();
        assert!(b.take(t0).allowed);
        let v = b.take(t0);
        assert!(v.allowed);
        assert_eq!((v.remaining, v.reset), (0, 1));
        assert!(!b.take(t0).allowed);
        // Half a second gives half a token: not enough.
        assert!(!b.take(t0 + Duration::from_millis(500)).allowed);
        assert!(b.take(t0 + Duration::from_millis(1000)).allowed);
        // Never above max_tokens.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.take(later).remaining, 1);
    }

    #[test]
    fn takes_several_tokens_or_none() {
        let b = Bucket::new(&TokenBucket {
            max_tokens: 5,
            tokens_per_fill: 1,
            fill_interval: Duration::from_secs(1),
        });
        let t0 = Instant::now();
        let v = b.take_n(t0, 3);
        assert!(v.allowed);
        assert_eq!(v.remaining, 2);
        // Too few for three: nothing is taken.
        assert!(!b.take_n(t0, 3).allowed);
        assert_eq!(b.take_n(t0, 2).remaining, 0);
        // Taking nothing is a refusal, whatever is left.
        let later = t0 + Duration::from_secs(60);
        assert!(!b.take_n(later, 0).allowed);
        assert_eq!(b.take_n(later, 0).remaining, 5);
    }

    #[test]
    fn a_wildcard_keeps_a_bucket_per_value_and_drops_the_least_recently_used() {
        let d = Dynamic {
            template: TokenBucket {
                max_tokens: 1,
                tokens_per_fill: 1,
                fill_interval: Duration::from_secs(3600),
            },
            capacity: 2,
            buckets: Mutex::new((0, Vec::new())),
        };
        let v = |s: &str| vec![("client".to_string(), s.to_string())];
        let now = Instant::now();
        assert!(d.bucket(&v("a")).take(now).allowed);
        assert!(
            !d.bucket(&v("a")).take(now).allowed,
            "a's own bucket, empty"
        );
        assert!(d.bucket(&v("b")).take(now).allowed);
        // c pushes out a (b was used after it); a comes back with a full bucket.
        assert!(d.bucket(&v("c")).take(now).allowed);
        assert!(d.bucket(&v("a")).take(now).allowed);
        // ... which pushed out b.
        assert!(d.bucket(&v("b")).take(now).allowed);
        assert!(!d.bucket(&v("a")).take(now).allowed, "a kept its bucket");
    }
}
