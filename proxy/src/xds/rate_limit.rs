//! `rate_limit_settings` of a gRPC config source: Envoy's token bucket in front of the stream's
//! requests. It starts full; each request takes a token; tokens come back at `fill_rate` a
//! second up to `max_tokens`. A request that finds the bucket empty waits for the next token
//! and counts `control_plane.rate_limit_enforced`; `control_plane.pending_requests` shows how
//! many wait. The bucket outlives reconnections, as Envoy's belongs to the stream's owner.
//!
//! While requests wait, a newer state-of-the-world request for a type takes the place of the
//! one queued for it: it carries the whole state of that type (version, nonce, names), and
//! Envoy, which builds each queued request from the current state when a token comes, sends
//! one ACK for a burst of responses too (measured: 8 responses, 3 paced ACKs). Delta requests
//! each carry their own change and nonce, and all go out.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::model::XdsRateLimit;
use crate::stats::{Counter, Gauge};

/// Which queued request a newer one replaces.
pub trait Coalesce {
    /// The type a state-of-the-world request is for; none: never replaced.
    fn coalesce_key(&self) -> Option<&str>;
}

impl Coalesce for DiscoveryRequest {
    fn coalesce_key(&self) -> Option<&str> {
        Some(&self.type_url)
    }
}

impl Coalesce for DeltaDiscoveryRequest {
    fn coalesce_key(&self) -> Option<&str> {
        None
    }
}

/// The requests of one connection, let out as the bucket allows.
pub struct Limiter<R> {
    pub bucket: Arc<Mutex<Bucket>>,
    pub enforced: Counter,
    pub pending: Gauge,
    pub queue: VecDeque<R>,
}

impl<R: Coalesce> Limiter<R> {
    fn push(&mut self, m: R) {
        if let Some(k) = m.coalesce_key() {
            if let Some(slot) = self.queue.iter_mut().find(|q| q.coalesce_key() == Some(k)) {
                *slot = m;
                return;
            }
        }
        self.queue.push_back(m);
    }

    /// The next request to send, once a token allows it; none when the sender is gone and
    /// nothing waits.
    pub async fn next(&mut self, rx: &mut mpsc::UnboundedReceiver<R>) -> Option<R> {
        loop {
            while let Ok(m) = rx.try_recv() {
                self.push(m);
            }
            if self.queue.is_empty() {
                let m = rx.recv().await?;
                self.push(m);
                continue;
            }
            let taken = match self.bucket.lock() {
                Ok(mut b) => b.take(Instant::now()),
                Err(_) => Ok(()),
            };
            match taken {
                Ok(()) => {
                    let m = self.queue.pop_front();
                    self.pending.set(self.queue.len() as i64);
                    return m;
                }
                Err(wait) => {
                    self.enforced.inc();
                    self.pending.set(self.queue.len() as i64);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

#[derive(Debug)]
pub struct Bucket {
    max: f64,
    tokens: f64,
    refill: Duration,
    last: Instant,
}

impl Bucket {
    pub fn new(settings: XdsRateLimit) -> Bucket {
        Bucket {
            max: f64::from(settings.max_tokens),
            tokens: f64::from(settings.max_tokens),
            refill: settings.refill,
            last: Instant::now(),
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        if self.refill.is_zero() {
            self.tokens = self.max;
        } else {
            let gained = elapsed.as_secs_f64() / self.refill.as_secs_f64();
            self.tokens = (self.tokens + gained).min(self.max);
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let missing = 1.0 - self.tokens;
        Err(self.refill.mul_f64(missing).max(Duration::from_millis(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_bucket_then_one_token_per_refill() {
        let mut b = Bucket::new(XdsRateLimit {
            max_tokens: 3,
            refill: Duration::from_millis(500),
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(b.take(t0), Ok(()));
        }
        assert_eq!(b.take(t0), Err(Duration::from_millis(500)));
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(b.take(t1), Err(Duration::from_millis(250)));
        assert_eq!(b.take(t0 + Duration::from_millis(500)), Ok(()));
        // Never more than max_tokens, however long it rests.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(b.take(later), Ok(()));
        }
        assert!(b.take(later).is_err());
    }

    fn sotw(type_url: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_state_of_the_world_requests_keep_only_the_latest_per_type() {
        let mut l = Limiter {
            bucket: Arc::new(Mutex::new(Bucket::new(XdsRateLimit {
                max_tokens: 1,
                refill: Duration::from_secs(1),
            }))),
            enforced: Counter::default(),
            pending: Gauge::default(),
            queue: VecDeque::new(),
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        for (t, n) in [("c", "1"), ("l", "2"), ("c", "3"), ("c", "4")] {
            let _ = tx.send(sotw(t, n));
        }
        let t0 = Instant::now();
        let mut sent = Vec::new();
        for _ in 0..2 {
            let m = l.next(&mut rx).await.expect("a request");
            sent.push((m.type_url, m.response_nonce, t0.elapsed().as_secs()));
            if sent.len() == 1 {
                let _ = tx.send(sotw("l", "5"));
                let _ = tx.send(sotw("c", "6"));
            }
        }
        // c's slot came first and its latest request went with the one token there was;
        // a second later the next token took l's latest (c 6 waits for the one after).
        assert_eq!(
            sent,
            [("c".into(), "4".into(), 0), ("l".into(), "5".into(), 1)]
        );
        assert_eq!(l.queue.len(), 1);
        assert_eq!(l.enforced.value(), 1);
    }
}
