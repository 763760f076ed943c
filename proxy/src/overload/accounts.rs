//! Buffer memory accounts for `reset_high_memory_stream` (Envoy's `BufferMemoryAccount` and
//! the watermark buffer factory's size classes).
//!
//! Each HTTP/2 downstream stream has an [`Account`] when the action is configured with
//! `buffer_factory_config`. Every body chunk the stream holds in skiff, in either direction,
//! is charged to it from the moment skiff takes it from a codec until the last copy of it is
//! dropped (written by the other codec, or let go by a retry or mirror buffer):
//! [`charge`] wraps the chunk so that dropping it credits the account. Data a codec has
//! received and skiff has not read yet (at most the stream's flow-control window, which skiff
//! sizes from `per_connection_buffer_limit_bytes`) is not charged.
//!
//! A worker files its accounts by size class, as Envoy's factory does: an account holding
//! `b` bytes is in class `bit_width(b >> (n - 1)) - 1` (capped at 7) for
//! `minimum_account_to_track_power_of_two: n`, and untracked below `2^(n-1)`. When the action's
//! state changes to `p`, the worker resets the streams of the `floor(8p) + 1` highest classes,
//! at most 50 at a time ([`Registry::reset_given_pressure`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use skiff_config::model::ActionName;

use crate::stats::Counter;

/// Envoy's `NUM_MEMORY_CLASSES_`.
pub const CLASSES: usize = 8;
/// Envoy's `kMaxNumberOfStreamsToResetPerInvocation`.
const MAX_RESETS: usize = 50;
/// No class: the account holds less than the minimum tracked.
const UNTRACKED: u8 = u8::MAX;

/// One worker's accounts by size class.
#[derive(Debug)]
pub struct Registry {
    /// `minimum_account_to_track_power_of_two - 1`.
    shift: u32,
    next_id: AtomicU64,
    classes: Mutex<[HashMap<u64, Weak<Account>>; CLASSES]>,
}

/// The memory one stream holds, and whether it was asked to reset.
#[derive(Debug)]
pub struct Account {
    id: u64,
    registry: Arc<Registry>,
    balance: AtomicU64,
    /// Its class in the registry; changed only under the registry's lock.
    class: AtomicU8,
    /// The stream ended: the account is no longer filed.
    closed: AtomicBool,
    reset: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Registry {
    /// The accounts of a worker that tracks from `2^(power_of_two - 1)` bytes.
    pub fn new(power_of_two: u32) -> Arc<Registry> {
        Arc::new(Registry {
            shift: power_of_two.saturating_sub(1).min(63),
            next_id: AtomicU64::new(0),
            classes: Mutex::new(Default::default()),
        })
    }

    /// A new stream's account.
    pub fn account(self: &Arc<Self>) -> Arc<Account> {
        Arc::new(Account {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            registry: self.clone(),
            balance: AtomicU64::new(0),
            class: AtomicU8::new(UNTRACKED),
            closed: AtomicBool::new(false),
            reset: AtomicBool::new(false),
            waker: Mutex::new(None),
        })
    }

    /// The class of an account holding `balance` bytes (Envoy's `balanceToClassIndex`).
    fn class_of(&self, balance: u64) -> u8 {
        let shifted = balance >> self.shift;
        if shifted == 0 {
            return UNTRACKED;
        }
        (63 - shifted.leading_zeros()).min(CLASSES as u32 - 1) as u8
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [HashMap<u64, Weak<Account>>; CLASSES]> {
        self.classes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resets the streams of the highest classes for the action's state `pressure`: the
    /// `floor(8 × pressure) + 1` highest, at most 50 streams (Envoy's
    /// `resetAccountsGivenPressure`). Returns how many were asked to reset.
    pub fn reset_given_pressure(&self, pressure: f32) -> u64 {
        let pressure = pressure.clamp(0.0, 1.0);
        let to_clear = ((pressure * CLASSES as f32).floor() as usize + 1).min(CLASSES);
        let mut reset = Vec::new();
        {
            let mut classes = self.lock();
            for cleared in 0..to_clear {
                let class = &mut classes[CLASSES - cleared - 1];
                let ids: Vec<u64> = class
                    .keys()
                    .copied()
                    .take(MAX_RESETS - reset.len())
                    .collect();
                for id in ids {
                    if let Some(a) = class.remove(&id).and_then(|w| w.upgrade()) {
                        a.class.store(UNTRACKED, Ordering::Relaxed);
                        a.closed.store(true, Ordering::Relaxed);
                        reset.push(a);
                    }
                }
                if reset.len() >= MAX_RESETS {
                    break;
                }
            }
        }
        let n = reset.len() as u64;
        if n > 0 {
            tracing::warn!(
                streams = n,
                pressure,
                "resetting streams holding the most memory"
            );
        }
        for a in reset {
            a.request_reset();
        }
        n
    }

    /// Accounts filed in each class (tests).
    pub fn filed(&self) -> [usize; CLASSES] {
        let classes = self.lock();
        std::array::from_fn(|i| classes[i].len())
    }
}

impl Account {
    /// Bytes the stream holds now.
    pub fn balance(&self) -> u64 {
        self.balance.load(Ordering::Relaxed)
    }

    fn charge(self: &Arc<Self>, n: u64) {
        let b = self.balance.fetch_add(n, Ordering::Relaxed) + n;
        self.refile(b);
    }

    fn credit(self: &Arc<Self>, n: u64) {
        let b = self
            .balance
            .fetch_sub(n, Ordering::Relaxed)
            .saturating_sub(n);
        self.refile(b);
    }

    /// Moves the account to the class of `balance` when it changed.
    fn refile(self: &Arc<Self>, balance: u64) {
        let r = &self.registry;
        if self.closed.load(Ordering::Relaxed)
            || r.class_of(balance) == self.class.load(Ordering::Relaxed)
        {
            return;
        }
        let mut classes = r.lock();
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let new = r.class_of(self.balance());
        let old = self.class.load(Ordering::Relaxed);
        if new == old {
            return;
        }
        if let Some(c) = classes.get_mut(old as usize) {
            c.remove(&self.id);
        }
        if let Some(c) = classes.get_mut(new as usize) {
            c.insert(self.id, Arc::downgrade(self));
        }
        self.class.store(new, Ordering::Relaxed);
    }

    /// The stream ended: it is filed no more (Envoy's `clearDownstream`).
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::Relaxed) {
            return;
        }
        let mut classes = self.registry.lock();
        let old = self.class.swap(UNTRACKED, Ordering::Relaxed);
        if let Some(c) = classes.get_mut(old as usize) {
            c.remove(&self.id);
        }
    }

    fn request_reset(&self) {
        self.reset.store(true, Ordering::Release);
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether the overload manager reset this stream.
    pub fn is_reset(&self) -> bool {
        self.reset.load(Ordering::Acquire)
    }

    /// Ready once the overload manager resets this stream; wakes `cx` then.
    pub fn poll_reset(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_reset() {
            return Poll::Ready(());
        }
        {
            let mut w = self.waker.lock().unwrap_or_else(|e| e.into_inner());
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
        }
        if self.is_reset() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Resolves once the overload manager resets this stream.
    pub async fn reset(&self) {
        std::future::poll_fn(|cx| self.poll_reset(cx)).await
    }
}

/// A chunk charged to an account until its last copy is dropped.
struct Charged {
    data: Bytes,
    account: Arc<Account>,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Charged {
    fn drop(&mut self) {
        self.account.credit(self.data.len() as u64);
    }
}

/// `data`, charged to `account` for as long as any copy of it lives.
pub fn charge(account: &Arc<Account>, data: Bytes) -> Bytes {
    if data.is_empty() {
        return data;
    }
    account.charge(data.len() as u64);
    Bytes::from_owner(Charged {
        data,
        account: account.clone(),
    })
}

thread_local! {
    /// This worker's accounts, when streams are tracked.
    static REGISTRY: std::cell::RefCell<Option<Arc<Registry>>> = const { std::cell::RefCell::new(None) };
}

/// A new account for a stream on this worker, when `reset_high_memory_stream` is configured.
pub fn new_account() -> Option<Arc<Account>> {
    REGISTRY.with(|r| r.borrow().as_ref().map(|r| r.account()))
}

/// Starts tracking this worker's streams when `reset_high_memory_stream` is configured: each
/// change of the action's state resets streams by it, counted in `resets`
/// (`envoy.overload_actions.reset_high_memory_stream.count`). Call on the worker's thread.
pub fn start_worker(resets: Counter) {
    let Some(power) = super::account_power_of_two() else {
        return;
    };
    if !super::configured(ActionName::ResetHighMemoryStream) {
        return;
    }
    let registry = Registry::new(power);
    REGISTRY.with(|r| *r.borrow_mut() = Some(registry.clone()));
    tokio::task::spawn_local(async move {
        let mut last = 0.0f32;
        loop {
            let changed = super::changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let state = super::state(ActionName::ResetHighMemoryStream);
            if state != last {
                // Every change counts, the fall to 0 included: Envoy's workers reset the
                // highest class then too.
                last = state;
                resets.add(registry.reset_given_pressure(state));
            }
            changed.await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(a: &Arc<Account>, n: usize) -> Bytes {
        charge(a, Bytes::from(vec![0u8; n]))
    }

    #[test]
    fn accounts_are_filed_by_size_class_as_envoy() {
        // minimum_account_to_track_power_of_two: 13 tracks from 4 KiB.
        let r = Registry::new(13);
        assert_eq!(r.class_of(4095), UNTRACKED);
        assert_eq!(r.class_of(4096), 0);
        assert_eq!(r.class_of(8191), 0);
        assert_eq!(r.class_of(8192), 1);
        assert_eq!(r.class_of(16384), 2);
        assert_eq!(r.class_of(512 << 10), 7);
        assert_eq!(r.class_of(1 << 40), 7);
        let a = r.account();
        let first = held(&a, 3000);
        assert_eq!(r.filed(), [0; CLASSES]);
        let second = held(&a, 6000);
        assert_eq!(a.balance(), 9000);
        assert_eq!(r.filed()[1], 1);
        // A slice keeps the whole chunk charged until every copy is gone.
        let part = second.slice(0..10);
        drop(second);
        assert_eq!(r.filed()[1], 1);
        drop(part);
        assert_eq!(r.filed(), [0; CLASSES]);
        assert_eq!(a.balance(), 3000);
        drop(first);
        assert_eq!(a.balance(), 0);
        // A closed account is filed no more.
        let kept = held(&a, 20_000);
        assert_eq!(r.filed()[2], 1);
        a.close();
        assert_eq!(r.filed(), [0; CLASSES]);
        drop(kept);
        assert_eq!(a.balance(), 0);
    }

    #[test]
    fn pressure_resets_the_highest_classes() {
        let r = Registry::new(13);
        let small = r.account();
        let medium = r.account();
        let large = r.account();
        let _s = held(&small, 8 << 10); // class 1
        let _m = held(&medium, 32 << 10); // class 3
        let _l = held(&large, 512 << 10); // class 7
                                          // Scaled 0.90–0.98 at 0.91: state 0.125, two classes (7 and 6).
        assert_eq!(r.reset_given_pressure(0.125), 1);
        assert!(large.is_reset() && !medium.is_reset());
        // 0.375: four classes (7 to 4), not the medium one's 3; 0.5: five.
        assert_eq!(r.reset_given_pressure(0.375), 0);
        assert_eq!(r.reset_given_pressure(0.5), 1);
        assert!(medium.is_reset() && !small.is_reset());
        // The fall to 0 clears the highest class only.
        assert_eq!(r.reset_given_pressure(0.0), 0);
        assert_eq!(r.reset_given_pressure(1.0), 1);
        assert!(small.is_reset());
        // A reset account is filed no more, though it still holds its bytes.
        assert_eq!(r.filed(), [0; CLASSES]);
        assert_eq!(large.balance(), 512 << 10);
    }

    #[test]
    fn at_most_fifty_streams_reset_at_a_time() {
        let r = Registry::new(10);
        let accounts: Vec<_> = (0..60).map(|_| r.account()).collect();
        let _held: Vec<_> = accounts.iter().map(|a| held(a, 4096)).collect();
        assert_eq!(r.reset_given_pressure(1.0), 50);
        assert_eq!(r.reset_given_pressure(1.0), 10);
    }

    #[tokio::test]
    async fn a_reset_wakes_the_stream() {
        let r = Registry::new(10);
        let a = r.account();
        let _chunk = held(&a, 1 << 20);
        let waiting = {
            let a = a.clone();
            tokio::spawn(async move { a.reset().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(r.reset_given_pressure(1.0), 1);
        waiting.await.expect("woken");
    }
}
