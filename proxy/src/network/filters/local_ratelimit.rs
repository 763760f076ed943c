//! `envoy.filters.network.local_ratelimit`: the token bucket a filter's configuration stands
//! for. Every worker's copy of a filter chain takes from the same bucket, as in Envoy, so the
//! bucket belongs to the configuration object (one per [`model::LocalRateLimit`] in force),
//! not to a worker.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::model;

/// A token bucket: full at start; tokens come back `tokens_per_fill` at a time, once per whole
/// `fill_interval`, up to `max_tokens`.
#[derive(Debug)]
pub struct TokenBucket {
    max_tokens: u32,
    tokens_per_fill: u32,
    fill_interval: Duration,
    state: Mutex<(u32, Instant)>,
}

impl TokenBucket {
    /// A full bucket for `config`.
    pub fn new(config: &model::LocalRateLimit) -> Self {
        TokenBucket {
            max_tokens: config.max_tokens,
            tokens_per_fill: config.tokens_per_fill,
            fill_interval: config.fill_interval,
            state: Mutex::new((config.max_tokens, Instant::now())),
        }
    }

    /// Takes a token if there is one.
    pub fn try_take(&self, now: Instant) -> bool {
        let mut b = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, last) = &mut *b;
        let elapsed = now.saturating_duration_since(*last);
        let fills = (elapsed.as_nanos() / self.fill_interval.as_nanos().max(1)) as u64;
        if fills > 0 {
            let add = fills.saturating_mul(u64::from(self.tokens_per_fill));
            *tokens = (u64::from(*tokens) + add).min(u64::from(self.max_tokens)) as u32;
            // Whole intervals only, so the timing of fills does not drift.
            *last += self.fill_interval * fills.min(u64::from(u32::MAX)) as u32;
        }
        if *tokens == 0 {
            return false;
        }
        *tokens -= 1;
        true
    }
}

static BUCKETS: crate::attached::Attached<model::LocalRateLimit, TokenBucket> =
    crate::attached::Attached::new();

/// The bucket every worker shares for `config`: made by the first worker that builds a chain
/// with it, dropped with the configuration.
pub fn bucket(config: &Arc<model::LocalRateLimit>) -> Arc<TokenBucket> {
    BUCKETS.get_or_insert_with(config, || TokenBucket::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_tokens: u32) -> model::LocalRateLimit {
        model::LocalRateLimit {
            stat_prefix: "p".into(),
            max_tokens,
            tokens_per_fill: 1,
            fill_interval: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_bucket_starts_full_and_refills_whole_intervals_up_to_its_size() {
        let l = TokenBucket::new(&config(2));
        let t0 = Instant::now();
        assert!(l.try_take(t0));
        assert!(l.try_take(t0));
        assert!(!l.try_take(t0 + Duration::from_millis(999)));
        assert!(l.try_take(t0 + Duration::from_millis(1000)));
        assert!(!l.try_take(t0 + Duration::from_millis(1500)));
        // Ten intervals later the bucket holds its size, not ten tokens.
        let later = t0 + Duration::from_secs(11);
        assert!(l.try_take(later));
        assert!(l.try_take(later));
        assert!(!l.try_take(later));
    }

    #[test]
    fn workers_share_one_bucket_per_configuration_object() {
        let a = Arc::new(config(1));
        let b = Arc::new(config(1));
        let (a1, a2, b1) = (bucket(&a), bucket(&a), bucket(&b));
        assert!(Arc::ptr_eq(&a1, &a2));
        // An equal configuration from another update is another filter, with its own bucket.
        assert!(!Arc::ptr_eq(&a1, &b1));
        let now = Instant::now();
        assert!(a1.try_take(now));
        assert!(!a2.try_take(now));
        assert!(b1.try_take(now));
    }
}
