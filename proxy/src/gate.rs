//! Futures polled only when they asked to be.
//!
//! A connection's task is woken for every read and write, and `select!` polls each of its
//! branches at every wake. Branches that wait for rare events (a drain, a shutdown notice, a
//! timer minutes away) would each cost a poll every time, and a `Notify` or a watch takes a
//! lock to be polled. A [`Gated`] future is polled once, then again only after one of the
//! wakers it handed out was woken.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// What the inner future's wakers share: whether one was woken, and whom to wake then.
#[derive(Default)]
struct Signal {
    woken: AtomicBool,
    outer: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.outer.wake();
    }
}

pin_project_lite::pin_project! {
    /// `inner`, polled on the first poll and after its own wakers were woken; other polls
    /// (the task woken for something else) return `Pending` at once.
    pub struct Gated<F> {
        #[pin]
        inner: F,
        signal: Arc<Signal>,
        // The waker given to `inner`, made once.
        waker: Waker,
        // The outer waker registered last, while no wake has taken it since.
        outer: Option<Waker>,
        polled: bool,
    }
}

impl<F: Future> Gated<F> {
    /// Gates `inner`.
    pub fn new(inner: F) -> Self {
        let signal = Arc::new(Signal::default());
        Gated {
            inner,
            waker: Waker::from(signal.clone()),
            signal,
            outer: None,
            polled: false,
        }
    }
}

/// Gates `inner` (see [`Gated`]).
pub fn gated<F: Future>(inner: F) -> Gated<F> {
    Gated::new(inner)
}

/// The future `make` returns, pinned in a box it is written into directly. `Box::pin(f)`
/// builds the whole future on the stack and copies it, however little of it is set before its
/// first poll; writing the fresh future into an allocation made first stores only its
/// arguments.
#[inline(always)]
pub fn boxed<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Registered before the flag is read, so a wake between the two is not lost. A wake
        // takes the registered waker: it is registered again after one, and whenever the
        // task's waker changes; otherwise the one registered is still there.
        let current = this.outer.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if !current {
            this.signal.outer.register(cx.waker());
            *this.outer = Some(cx.waker().clone());
        }
        if *this.polled && !this.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        if current {
            // Woken (which took the registered waker), or first polled: registered again.
            this.signal.outer.register(cx.waker());
        }
        *this.polled = true;
        this.inner.poll(&mut Context::from_waker(this.waker))
    }
}

/// A `tokio::sync::Notify` for one waiter on one thread: what a connection's own events need
/// (a request asks the connection to finish, abuse ends it), without the atomics and the lock
/// of a waiter list. A notification with no one waiting is kept for the next wait, as
/// `Notify::notify_one` keeps its permit.
#[derive(Default)]
pub struct LocalNotify {
    permit: std::cell::Cell<bool>,
    waiter: std::cell::Cell<Option<Waker>>,
}

impl LocalNotify {
    /// Wakes the waiter, or lets the next wait end at once.
    pub fn notify_one(&self) {
        self.permit.set(true);
        if let Some(w) = self.waiter.take() {
            w.wake();
        }
    }

    /// Ends at the next notification (or at once, for one kept). The last future polled is
    /// the one woken.
    pub fn notified(&self) -> Notified<'_> {
        Notified(self)
    }
}

/// What [`LocalNotify::notified`] returns.
pub struct Notified<'a>(&'a LocalNotify);

impl Future for Notified<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let n = self.0;
        if n.permit.replace(false) {
            return Poll::Ready(());
        }
        let waker = match n.waiter.take() {
            Some(w) if w.will_wake(cx.waker()) => w,
            _ => cx.waker().clone(),
        };
        n.waiter.set(Some(waker));
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::Duration;

    /// Counts its polls; ready once `ready` is set, waking through the waker it last saw.
    struct Probe {
        polls: Rc<Cell<u32>>,
        ready: Rc<Cell<bool>>,
        waker: Rc<std::cell::RefCell<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.set(self.polls.get() + 1);
            if self.ready.get() {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[test]
    fn polled_first_then_only_when_its_waker_fires() {
        let polls = Rc::new(Cell::new(0));
        let ready = Rc::new(Cell::new(false));
        let slot = Rc::new(std::cell::RefCell::new(None::<Waker>));
        let mut g = Box::pin(gated(Probe {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: slot.clone(),
        }));
        let outer = Arc::new(Signal::default());
        let outer_waker = Waker::from(outer.clone());
        let mut cx = Context::from_waker(&outer_waker);
        assert!(g.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.get(), 1);
        // The task woken for something else: the inner future is not polled.
        for _ in 0..5 {
            assert!(g.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.get(), 1);
        // Its own waker fires: the outer task is woken, and the next poll reaches it.
        ready.set(true);
        let w = slot.borrow_mut().take().expect("registered");
        w.wake();
        assert!(outer.woken.load(Ordering::Acquire));
        assert!(g.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_gated_timer_fires_in_a_select() {
        let timer = gated(tokio::time::sleep(Duration::from_secs(5)));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let busy = async move {
            // Wakes the task often, without finishing.
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            rx.await.ok();
        };
        let start = tokio::time::Instant::now();
        tokio::select! {
            () = timer => {}
            () = busy => panic!("the other branch ended first"),
        }
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        drop(tx);
    }

    #[test]
    fn a_local_notify_wakes_its_waiter_and_keeps_a_notice_no_one_waited_for() {
        let outer = Arc::new(Signal::default());
        let outer_waker = Waker::from(outer.clone());
        let mut cx = Context::from_waker(&outer_waker);
        let n = LocalNotify::default();
        // Kept: the next wait ends at once, and only that one.
        n.notify_one();
        n.notify_one();
        assert!(Pin::new(&mut n.notified()).poll(&mut cx).is_ready());
        let mut waiting = n.notified();
        assert!(Pin::new(&mut waiting).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut waiting).poll(&mut cx).is_pending());
        assert!(!outer.woken.load(Ordering::Acquire));
        // Notified while waiting: woken, then ready.
        n.notify_one();
        assert!(outer.woken.load(Ordering::Acquire));
        assert!(Pin::new(&mut waiting).poll(&mut cx).is_ready());
        // A wait dropped before its notice leaves the notice for the next.
        {
            let mut dropped = n.notified();
            assert!(Pin::new(&mut dropped).poll(&mut cx).is_pending());
        }
        n.notify_one();
        assert!(Pin::new(&mut n.notified()).poll(&mut cx).is_ready());
    }

    #[tokio::test]
    async fn a_notify_from_another_thread_reaches_it() {
        let notify = Arc::new(tokio::sync::Notify::new());
        let n = notify.clone();
        let waiting = gated(n.notified());
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            notify.notify_waiters();
        });
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken");
        t.join().expect("thread");
    }
}
