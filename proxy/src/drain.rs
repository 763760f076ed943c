//! One drain primitive, used the same way at every level: the process (SIGTERM,
//! `/drain_listeners`) drains each listener, a listener (modified, removed, or drained by the
//! process) drains its connections. A drain has a kind, which decides whether a listener's
//! `drain_type` lets it ask connections to close, and a deadline, after which whatever is
//! still open is closed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use crate::config::model::DrainType;

/// Why a drain started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainKind {
    /// The listener itself was modified or removed: every `drain_type` drains.
    Modify,
    /// `/drain_listeners`: `MODIFY_ONLY` listeners stop accepting but do not ask their
    /// connections to close, as in Envoy.
    Server,
    /// The process is exiting (SIGTERM, SIGINT): everything drains.
    Shutdown,
}

/// `--drain-strategy`: how connections are asked to close during a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DrainStrategy {
    /// Envoy's default: the chance that a response closes its connection grows from 0 to 1
    /// over the drain time, and each HTTP/2 connection gets its GOAWAY at a random moment in it.
    #[default]
    Gradual,
    /// Every connection is asked to close at once.
    Immediate,
}

/// A drain in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draining {
    /// Why.
    pub kind: DrainKind,
    /// When it started.
    pub started: Instant,
    /// The end of the drain time: the gradual strategy has asked every connection by then,
    /// and with `force_close` whatever is still open is closed.
    pub deadline: Instant,
    /// Whether new connections are still accepted meanwhile (`/drain_listeners?graceful`).
    pub accepting: bool,
    /// Whether connections are asked to close (a plain `/drain_listeners` only stops
    /// accepting).
    pub asks_close: bool,
    /// Whether connections still open at the deadline are closed.
    pub force_close: bool,
}

/// Starts a drain; whoever owns the drained thing holds it.
#[derive(Debug)]
pub struct Drain(watch::Sender<Option<Draining>>);

impl Default for Drain {
    fn default() -> Self {
        Drain(watch::channel(None).0)
    }
}

impl Drain {
    /// Not draining yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts draining, or updates a drain in progress: the earlier deadline wins, a kind
    /// that drains more wins, and once not accepting a drain stays so.
    pub fn start(&self, d: Draining) {
        self.0.send_if_modified(|cur| {
            let next = match *cur {
                None => d,
                Some(c) => Draining {
                    kind: if rank(d.kind) > rank(c.kind) {
                        d.kind
                    } else {
                        c.kind
                    },
                    started: if c.asks_close { c.started } else { d.started },
                    deadline: match (c.force_close, d.force_close) {
                        (true, false) => c.deadline,
                        (false, true) => d.deadline,
                        _ => c.deadline.min(d.deadline),
                    },
                    accepting: c.accepting && d.accepting,
                    asks_close: c.asks_close || d.asks_close,
                    force_close: c.force_close || d.force_close,
                },
            };
            let changed = *cur != Some(next);
            *cur = Some(next);
            changed
        });
    }

    /// The current drain, if any.
    pub fn state(&self) -> Option<Draining> {
        *self.0.borrow()
    }

    /// A watch on this drain.
    pub fn watch(&self) -> DrainWatch {
        DrainWatch(self.0.subscribe())
    }
}

fn rank(k: DrainKind) -> u8 {
    match k {
        DrainKind::Server => 0,
        DrainKind::Modify => 1,
        DrainKind::Shutdown => 2,
    }
}

/// What a connection watches: its listener's drain, with the listener's `drain_type` and the
/// server's health-check state (a failed health check asks `DEFAULT` listeners' HTTP/1.1
/// connections to close, as Envoy's drain manager does).
#[derive(Debug, Clone)]
pub struct DrainWatch(watch::Receiver<Option<Draining>>);

impl DrainWatch {
    /// The current drain, if any.
    pub fn state(&self) -> Option<Draining> {
        *self.0.borrow()
    }

    /// Resolves once a drain starts (at once if one has). Never resolves if the sender is gone
    /// without draining.
    pub async fn started(&mut self) {
        if self.0.wait_for(|s| s.is_some()).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves once a drain for which `applies` holds has started.
    pub async fn started_where(&mut self, applies: impl Fn(&Draining) -> bool) {
        if self
            .0
            .wait_for(|s| s.as_ref().is_some_and(&applies))
            .await
            .is_err()
        {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves at the deadline of a drain that closes what is left, once one has started.
    pub async fn deadline(&mut self) {
        loop {
            self.started_where(|d| d.force_close).await;
            let Some(d) = self.state() else { continue };
            tokio::select! {
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(d.deadline)) => return,
                // An earlier deadline may come.
                r = self.0.changed() => if r.is_err() {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(d.deadline)).await;
                    return;
                },
            }
        }
    }
}

/// A listener's view for its connections: its drain, its `drain_type`, and the server's
/// health-check state.
#[derive(Debug, Clone)]
pub struct ConnectionDrain {
    watch: DrainWatch,
    drain_type: DrainType,
    strategy: DrainStrategy,
    health_failed: Arc<AtomicBool>,
}

impl ConnectionDrain {
    /// The view of a listener's connections.
    pub fn new(
        watch: DrainWatch,
        drain_type: DrainType,
        strategy: DrainStrategy,
        health_failed: Arc<AtomicBool>,
    ) -> Self {
        ConnectionDrain {
            watch,
            drain_type,
            strategy,
            health_failed,
        }
    }

    /// Whether a drain under way asks now, by the strategy: a shutdown always does; gradually,
    /// with a chance equal to the part of the drain time gone by (Envoy's `drainClose()`).
    fn asks_now(&self, d: &Draining) -> bool {
        if self.strategy == DrainStrategy::Immediate || d.kind == DrainKind::Shutdown {
            return true;
        }
        let total = d.deadline.saturating_duration_since(d.started);
        let now = tokio::time::Instant::now().into_std();
        let elapsed = now.saturating_duration_since(d.started);
        if total.is_zero() || elapsed >= total {
            return true;
        }
        fastrand::f64() < elapsed.as_secs_f64() / total.as_secs_f64()
    }

    fn applies(drain_type: DrainType, d: &Draining) -> bool {
        d.asks_close && (drain_type == DrainType::Default || d.kind != DrainKind::Server)
    }

    /// Whether responses should ask the client to close its connection now (Envoy's
    /// `drainClose()`).
    pub fn drain_close(&self) -> bool {
        if self.drain_type == DrainType::Default && self.health_failed.load(Ordering::Relaxed) {
            return true;
        }
        match self.watch.state() {
            Some(d) if Self::applies(self.drain_type, &d) => self.asks_now(&d),
            _ => false,
        }
    }

    /// Resolves once a drain that asks this listener's connections to close has started: at
    /// once with the immediate strategy, else at a random moment within the drain time (so
    /// HTTP/2 clients get their GOAWAYs spread out, as Envoy spreads its drain callbacks).
    pub async fn close_requested(&mut self) {
        let t = self.drain_type;
        self.watch.started_where(move |d| Self::applies(t, d)).await;
        let Some(d) = self.watch.state() else { return };
        if self.strategy == DrainStrategy::Immediate || d.kind == DrainKind::Shutdown {
            return;
        }
        let total = d.deadline.saturating_duration_since(d.started);
        let at = d.started + total.mul_f64(fastrand::f64());
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
    }

    /// Whether the process is shutting down (then idle connections may be closed at once).
    pub fn shutting_down(&self) -> bool {
        self.watch
            .state()
            .is_some_and(|d| d.kind == DrainKind::Shutdown)
    }

    /// Resolves when the drain's deadline passes: the connection is then closed.
    pub async fn deadline(&mut self) {
        self.watch.deadline().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn draining(kind: DrainKind, after: Duration) -> Draining {
        // From tokio's clock, which the paused tests move.
        let now = tokio::time::Instant::now().into_std();
        Draining {
            kind,
            started: now,
            deadline: now + after,
            accepting: false,
            asks_close: true,
            force_close: true,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn connections_see_the_drain_and_its_deadline() {
        let drain = Drain::new();
        let mut c = ConnectionDrain::new(
            drain.watch(),
            DrainType::Default,
            DrainStrategy::Immediate,
            Arc::new(AtomicBool::new(false)),
        );
        assert!(!c.drain_close());
        let waiter = tokio::spawn({
            let mut c = c.clone();
            async move { c.close_requested().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drain.start(draining(DrainKind::Modify, Duration::from_secs(30)));
        waiter.await.expect("close requested");
        assert!(c.drain_close());
        let t0 = tokio::time::Instant::now();
        c.deadline().await;
        assert!(
            t0.elapsed() >= Duration::from_secs(29),
            "{:?}",
            t0.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_cuts_a_drain_short() {
        let drain = Drain::new();
        let mut w = drain.watch();
        drain.start(draining(DrainKind::Modify, Duration::from_secs(600)));
        let t0 = tokio::time::Instant::now();
        let late = tokio::spawn(async move { w.deadline().await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drain.start(draining(DrainKind::Shutdown, Duration::from_secs(5)));
        late.await.expect("deadline");
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_secs(6) && took < Duration::from_secs(7),
            "{took:?}"
        );
        assert_eq!(drain.state().map(|d| d.kind), Some(DrainKind::Shutdown));
    }

    #[tokio::test(start_paused = true)]
    async fn modify_only_listeners_ignore_server_drains_and_health_checks() {
        let failed = Arc::new(AtomicBool::new(true));
        let drain = Drain::new();
        let modify_only = ConnectionDrain::new(
            drain.watch(),
            DrainType::ModifyOnly,
            DrainStrategy::Immediate,
            failed.clone(),
        );
        let default = ConnectionDrain::new(
            drain.watch(),
            DrainType::Default,
            DrainStrategy::Immediate,
            failed.clone(),
        );
        assert!(default.drain_close(), "a failed health check closes");
        assert!(!modify_only.drain_close());
        failed.store(false, Ordering::Relaxed);
        drain.start(draining(DrainKind::Server, Duration::from_secs(5)));
        assert!(default.drain_close());
        assert!(!modify_only.drain_close());
        let mut m = modify_only.clone();
        let waiter = tokio::spawn(async move { m.close_requested().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drain.start(draining(DrainKind::Modify, Duration::from_secs(5)));
        waiter.await.expect("modify drains MODIFY_ONLY");
        assert!(modify_only.drain_close());
    }
}

#[cfg(test)]
mod gradual_tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn gradually_the_chance_to_close_grows_with_the_drain_time() {
        let drain = Drain::new();
        let c = ConnectionDrain::new(
            drain.watch(),
            DrainType::Default,
            DrainStrategy::Gradual,
            Arc::new(AtomicBool::new(false)),
        );
        let now = tokio::time::Instant::now().into_std();
        drain.start(Draining {
            kind: DrainKind::Modify,
            started: now,
            deadline: now + Duration::from_secs(100),
            accepting: false,
            asks_close: true,
            force_close: true,
        });
        let share = |c: &ConnectionDrain| (0..2000).filter(|_| c.drain_close()).count();
        assert!(share(&c) < 20, "at the start almost none");
        tokio::time::advance(Duration::from_secs(50)).await;
        let half = share(&c);
        assert!((800..1200).contains(&half), "half way: {half}");
        tokio::time::advance(Duration::from_secs(50)).await;
        assert_eq!(share(&c), 2000, "at the end all");
        // The GOAWAY moment falls within the drain time.
        let drain = Drain::new();
        let mut c = ConnectionDrain::new(
            drain.watch(),
            DrainType::Default,
            DrainStrategy::Gradual,
            Arc::new(AtomicBool::new(false)),
        );
        let t0 = tokio::time::Instant::now();
        drain.start(Draining {
            kind: DrainKind::Modify,
            started: t0.into_std(),
            deadline: t0.into_std() + Duration::from_secs(10),
            accepting: false,
            asks_close: true,
            force_close: false,
        });
        c.close_requested().await;
        assert!(t0.elapsed() <= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_plain_drain_listeners_asks_nothing_and_closes_nothing() {
        let drain = Drain::new();
        let mut c = ConnectionDrain::new(
            drain.watch(),
            DrainType::Default,
            DrainStrategy::Immediate,
            Arc::new(AtomicBool::new(false)),
        );
        let now = tokio::time::Instant::now().into_std();
        drain.start(Draining {
            kind: DrainKind::Server,
            started: now,
            deadline: now + Duration::from_secs(1),
            accepting: false,
            asks_close: false,
            force_close: false,
        });
        assert!(!c.drain_close());
        let deadline = tokio::time::timeout(Duration::from_secs(5), c.deadline()).await;
        assert!(deadline.is_err(), "no forced close");
    }
}
