//! The connection manager's timers, as Envoy's: per stream `stream_idle_timeout`,
//! `request_timeout` and `max_stream_duration`; per connection the idle timeout,
//! `max_connection_duration` (a write that the client never lets finish is bounded by
//! `io::WriteFlow::stall_limit`).
//!
//! Timers are lazy: activity only moves a timestamp, and a timer that wakes early (there was
//! activity since it was set) sets itself again for the new deadline, so a busy stream costs
//! no timer work per byte.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::config::model::{HcmTimeouts, ScaledTimer};
use crate::http::body::RequestProgress;
use crate::http::local_reply::LocalReply;
use crate::overload;
use crate::stream_info::ResponseFlag;

/// Which stream timer ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// `stream_idle_timeout`: no bytes either way for that long.
    Idle,
    /// `request_timeout`: the request had not fully arrived in time.
    Request,
    /// `max_stream_duration`.
    MaxDuration,
    /// The cluster's `max_stream_duration`: the upstream stream lasted too long.
    UpstreamMaxDuration,
}

impl Expiry {
    /// `%RESPONSE_CODE_DETAILS%` for the stream it ended.
    pub fn details(self) -> &'static str {
        match self {
            Expiry::Idle => "stream_idle_timeout",
            Expiry::Request => "request_overall_timeout",
            Expiry::MaxDuration => "max_duration_timeout",
            Expiry::UpstreamMaxDuration => "upstream_max_stream_duration_reached",
        }
    }

    /// The response flag Envoy sets (only the idle timeout has one).
    pub fn flag(self) -> Option<ResponseFlag> {
        match self {
            Expiry::Idle => Some(ResponseFlag::StreamIdleTimeout),
            Expiry::UpstreamMaxDuration => Some(ResponseFlag::UpstreamMaxStreamDurationReached),
            Expiry::Request | Expiry::MaxDuration => None,
        }
    }

    /// The local reply for a stream whose response has not started. The idle timeout of a
    /// request that has fully arrived (so the wait is on the upstream) is a 504, as in Envoy.
    pub fn reply(self, request_done: bool) -> LocalReply {
        let (status, body) = match self {
            Expiry::Idle if request_done => (http::StatusCode::GATEWAY_TIMEOUT, "stream timeout"),
            Expiry::Idle => (http::StatusCode::REQUEST_TIMEOUT, "stream timeout"),
            Expiry::Request => (http::StatusCode::REQUEST_TIMEOUT, "request timeout"),
            // Measured: 504 once the request is complete, as Envoy's
            // `maybeRequestTimeoutCode`.
            Expiry::MaxDuration if request_done => (
                http::StatusCode::GATEWAY_TIMEOUT,
                "downstream duration timeout",
            ),
            Expiry::MaxDuration => (
                http::StatusCode::REQUEST_TIMEOUT,
                "downstream duration timeout",
            ),
            Expiry::UpstreamMaxDuration if request_done => (
                http::StatusCode::GATEWAY_TIMEOUT,
                "upstream max stream duration reached",
            ),
            Expiry::UpstreamMaxDuration => (
                http::StatusCode::REQUEST_TIMEOUT,
                "upstream max stream duration reached",
            ),
        };
        LocalReply {
            status,
            body: bytes::Bytes::from_static(body.as_bytes()),
            details: self.details(),
            flag: self.flag(),
            ..LocalReply::TIMEOUT
        }
    }
}

/// The timers of one stream. Activity is recorded in the stream's [`RequestProgress`] (request
/// body) and by the response body ([`StreamTimers::touch`]).
#[derive(Debug)]
pub struct StreamTimers {
    started: Instant,
    /// `stream_idle_timeout`, then the route's `idle_timeout` once it is chosen.
    idle: Cell<Option<Duration>>,
    request_limit: Option<Duration>,
    /// `max_stream_duration`: the connection manager's, then the route's once it is chosen.
    max_duration: Cell<Option<Duration>>,
    /// The connection manager's, for a route that falls back to it.
    hcm_max_duration: Option<Duration>,
    request: Rc<RequestProgress>,
    /// Who waits on [`Self::fired`], woken when the route moves the deadline.
    waiter: RefCell<Option<std::task::Waker>>,
    /// The one timer, set for the earliest deadline; made on first use.
    sleep: RefCell<Option<Pin<Box<Sleep>>>>,
    /// With `reduce_timeouts` scaling the idle timer: a change of the action's state, to
    /// look at the deadline again.
    overload: RefCell<Option<Pin<Box<tokio::sync::futures::Notified<'static>>>>>,
}

impl StreamTimers {
    /// The timers `t` asks for on a stream that started now (none may run until a route
    /// sets a duration).
    pub fn new(t: &HcmTimeouts, request: Rc<RequestProgress>) -> Rc<StreamTimers> {
        Self::starting(t, request, Instant::now())
    }

    /// As [`StreamTimers::new`], for a stream that started at `started`.
    pub fn starting(
        t: &HcmTimeouts,
        request: Rc<RequestProgress>,
        started: Instant,
    ) -> Rc<StreamTimers> {
        if t.stream_idle.is_some() {
            request.track_activity(started);
        }
        Rc::new(StreamTimers {
            started,
            idle: Cell::new(t.stream_idle),
            request_limit: t.request,
            max_duration: Cell::new(t.max_stream_duration),
            hcm_max_duration: t.max_stream_duration,
            request,
            waiter: RefCell::new(None),
            sleep: RefCell::new(None),
            overload: RefCell::new(
                (t.stream_idle.is_some() && overload::minimum(ScaledTimer::StreamIdle).is_some())
                    .then(|| Box::pin(overload::changed())),
            ),
        })
    }

    /// The route's `max_stream_duration` for a request with this `grpc-timeout`: the
    /// stream's limit from now on, counted from its start (Envoy's `refreshDurationTimeout`).
    pub fn route_duration(
        &self,
        d: &crate::router::StreamDuration,
        grpc_timeout: Option<Duration>,
    ) {
        self.max_duration
            .set(d.limit(grpc_timeout, self.hcm_max_duration));
        if let Some(w) = self.waiter.borrow_mut().take() {
            w.wake();
        }
    }

    /// The route's `idle_timeout`: the stream's idle timeout from now on, counted from now
    /// (Envoy resets the idle timer when the route sets it); zero turns it off.
    pub fn route_idle(&self, d: Duration) {
        if d.is_zero() {
            self.idle.set(None);
        } else {
            self.request.track_activity(Instant::now());
            self.idle.set(Some(d));
        }
        if let Some(w) = self.waiter.borrow_mut().take() {
            w.wake();
        }
    }

    /// Whether any timer can run out.
    pub fn active(&self) -> bool {
        self.idle.get().is_some()
            || self.request_limit.is_some()
            || self.max_duration.get().is_some()
    }

    /// Records activity on the stream (bytes of the response).
    pub fn touch(&self) {
        self.request.touch();
    }

    /// The request has fully arrived.
    pub fn request_done(&self) -> bool {
        self.request.done_at().is_some()
    }

    /// The earliest time a timer may run out.
    fn next(&self) -> Option<Instant> {
        let idle = self
            .idle
            .get()
            .map(|d| self.request.last_activity() + overload::scaled(ScaledTimer::StreamIdle, d));
        let request = self
            .request_limit
            .filter(|_| self.request.done_at().is_none())
            .map(|d| self.started + d);
        let max = self.max_duration.get().map(|d| self.started + d);
        [idle, request, max].into_iter().flatten().min()
    }

    /// The timer that has run out by `now`, if one has.
    fn expired(&self, now: Instant) -> Option<Expiry> {
        if self
            .max_duration
            .get()
            .is_some_and(|d| now >= self.started + d)
        {
            return Some(Expiry::MaxDuration);
        }
        if self.request.done_at().is_none()
            && self.request_limit.is_some_and(|d| now >= self.started + d)
        {
            return Some(Expiry::Request);
        }
        if self.idle.get().is_some_and(|d| {
            now >= self.request.last_activity() + overload::scaled(ScaledTimer::StreamIdle, d)
        }) {
            return Some(Expiry::Idle);
        }
        None
    }

    /// Resolves when a timer runs out.
    pub async fn fired(&self) -> Expiry {
        std::future::poll_fn(|cx| match self.poll_expired(cx) {
            Some(e) => Poll::Ready(e),
            None => Poll::Pending,
        })
        .await
    }

    /// Whether a timer has run out, waking `cx` when one may.
    pub fn poll_expired(&self, cx: &mut Context<'_>) -> Option<Expiry> {
        {
            let mut waiter = self.waiter.borrow_mut();
            if !waiter.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waiter = Some(cx.waker().clone());
            }
        }
        let mut sleep = self.sleep.borrow_mut();
        loop {
            // A change of reduce_timeouts' state moves the idle deadline.
            if let Some(changed) = self.overload.borrow_mut().as_mut() {
                if changed.as_mut().poll(cx).is_ready() {
                    changed.set(overload::changed());
                    continue;
                }
            }
            let next = self.next()?;
            match sleep.as_mut() {
                // A deadline that moved later (activity) keeps the timer: it wakes early, and
                // is set again then.
                Some(s) if s.deadline() <= next && !s.is_elapsed() => {}
                Some(s) => s.as_mut().reset(next),
                None => *sleep = Some(Box::pin(tokio::time::sleep_until(next))),
            }
            let s = sleep.as_mut()?;
            if s.as_mut().poll(cx).is_pending() {
                return None;
            }
            if let Some(e) = self.expired(Instant::now()) {
                return Some(e);
            }
        }
    }
}

/// A connection's streams in flight, for its idle timeout: the time it became idle, if it is.
#[derive(Debug)]
pub struct Activity {
    active: Cell<u32>,
    idle_since: Cell<Option<Instant>>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            active: Cell::new(0),
            idle_since: Cell::new(Some(Instant::now())),
        }
    }
}

impl Activity {
    /// A stream started.
    pub fn stream_started(&self) {
        self.active.set(self.active.get() + 1);
        self.idle_since.set(None);
    }

    /// A stream ended.
    pub fn stream_ended_at(&self, now: Instant) {
        let n = self.active.get().saturating_sub(1);
        self.active.set(n);
        if n == 0 {
            self.idle_since.set(Some(now));
        }
    }

    /// No stream is in flight.
    pub fn is_idle(&self) -> bool {
        self.active.get() == 0
    }

    /// Resolves once the connection has had no stream for `limit`.
    /// With `reduce_timeouts` scaling it, `limit` shrinks as the action's state grows.
    pub async fn idle_for(&self, limit: Duration) {
        let scaled = overload::minimum(ScaledTimer::ConnectionIdle).is_some();
        let length = || overload::scaled(ScaledTimer::ConnectionIdle, limit);
        let mut sleep = Box::pin(tokio::time::sleep(length()));
        loop {
            if scaled {
                let changed = overload::changed();
                tokio::select! {
                    _ = sleep.as_mut() => {}
                    _ = changed => {}
                }
            } else {
                sleep.as_mut().await;
            }
            let now = Instant::now();
            let length = length();
            match self.idle_since.get() {
                Some(since) if now >= since + length => return,
                Some(since) => sleep.as_mut().reset(since + length),
                None => sleep.as_mut().reset(now + length),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::FlowPair;

    fn timers(t: HcmTimeouts) -> (Rc<StreamTimers>, Rc<RequestProgress>) {
        let request = Rc::new(RequestProgress::new(FlowPair::default()));
        (StreamTimers::new(&t, request.clone()), request)
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timer_moves_with_activity() {
        let (t, _) = timers(HcmTimeouts {
            stream_idle: Some(Duration::from_secs(5)),
            ..HcmTimeouts::default()
        });
        let start = Instant::now();
        let fired = t.fired();
        tokio::pin!(fired);
        tokio::select! {
            _ = &mut fired => panic!("fired early"),
            _ = tokio::time::sleep(Duration::from_secs(3)) => {}
        }
        t.touch();
        let e = fired.await;
        assert_eq!(e, Expiry::Idle);
        assert_eq!(Instant::now() - start, Duration::from_secs(8));
    }

    #[tokio::test(start_paused = true)]
    async fn the_route_idle_timeout_replaces_the_connection_managers_from_when_it_is_set() {
        let (t, _) = timers(HcmTimeouts {
            stream_idle: Some(Duration::from_secs(5)),
            ..HcmTimeouts::default()
        });
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(4)).await;
        t.route_idle(Duration::from_secs(2));
        assert_eq!(t.fired().await, Expiry::Idle);
        assert_eq!(Instant::now() - start, Duration::from_secs(6));
        // Zero: none, even where the connection manager had one.
        let (t, _) = timers(HcmTimeouts {
            stream_idle: Some(Duration::from_secs(1)),
            ..HcmTimeouts::default()
        });
        t.route_idle(Duration::ZERO);
        assert!(!t.active());
        // A route's timeout where the connection manager has none.
        let (t, _) = timers(HcmTimeouts::default());
        let start = Instant::now();
        t.route_idle(Duration::from_secs(3));
        assert_eq!(t.fired().await, Expiry::Idle);
        assert_eq!(Instant::now() - start, Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn request_timer_stops_when_the_request_is_done() {
        let (t, request) = timers(HcmTimeouts {
            stream_idle: None,
            request: Some(Duration::from_secs(2)),
            max_stream_duration: Some(Duration::from_secs(10)),
            ..HcmTimeouts::default()
        });
        let start = Instant::now();
        request.mark_done();
        assert_eq!(t.fired().await, Expiry::MaxDuration);
        assert_eq!(Instant::now() - start, Duration::from_secs(10));
        let (t, _) = timers(HcmTimeouts {
            stream_idle: Some(Duration::from_secs(5)),
            request: Some(Duration::from_secs(2)),
            ..HcmTimeouts::default()
        });
        assert_eq!(t.fired().await, Expiry::Request);
    }

    #[test]
    fn replies_as_envoy() {
        assert_eq!(Expiry::Idle.reply(true).status, 504);
        assert_eq!(Expiry::Idle.reply(false).status, 408);
        assert_eq!(
            Expiry::Request.reply(false).body,
            "request timeout".as_bytes()
        );
        assert_eq!(Expiry::MaxDuration.reply(true).flag, None);
    }

    #[tokio::test(start_paused = true)]
    async fn connection_idle_counts_from_the_last_stream() {
        let a = Activity::default();
        let start = Instant::now();
        a.stream_started();
        let wait = a.idle_for(Duration::from_secs(10));
        tokio::pin!(wait);
        tokio::select! {
            _ = &mut wait => panic!("idle while a stream is active"),
            _ = tokio::time::sleep(Duration::from_secs(15)) => {}
        }
        a.stream_ended_at(Instant::now());
        wait.await;
        assert_eq!(Instant::now() - start, Duration::from_secs(25));
    }
}
