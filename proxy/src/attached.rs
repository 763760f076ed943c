//! Runtime objects attached to configuration objects. The configuration model is plain data;
//! what a piece of it needs at run time and must share between workers (a token bucket, a TLS
//! configuration that follows its files) is made once per configuration object in force and
//! found again by it. An entry lives while its configuration object does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

/// Entries by the address of their key: the key (to tell a live one from a dead one whose
/// address was reused) and the attached object.
type Entries<K, V> = HashMap<usize, (Weak<K>, Arc<V>)>;

/// The `V` of each live `K`, by the address of the `K` (never compared by value: two equal
/// configurations from two updates are two filters, each with its own state).
pub struct Attached<K, V> {
    map: Mutex<Option<Entries<K, V>>>,
}

impl<K, V> Attached<K, V> {
    /// An empty registry (for a `static`).
    pub const fn new() -> Self {
        Attached {
            map: Mutex::new(None),
        }
    }

    fn find(&self, key: &Arc<K>) -> Option<Arc<V>> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let (k, v) = map.as_ref()?.get(&(Arc::as_ptr(key) as usize))?;
        // The address may be another object's that took a dead one's place.
        k.upgrade()
            .is_some_and(|k| Arc::ptr_eq(&k, key))
            .then(|| v.clone())
    }

    /// The object attached to `key`, made by `make` (outside the lock) if there is none.
    pub fn get_or_insert_with(&self, key: &Arc<K>, make: impl FnOnce() -> V) -> Arc<V> {
        match self.get_or_try_insert_with(key, || Ok::<V, std::convert::Infallible>(make())) {
            Ok(v) => v,
            Err(never) => match never {},
        }
    }

    /// The object attached to `key`, made by `make` if there is none; an error attaches
    /// nothing.
    pub fn get_or_try_insert_with<E>(
        &self,
        key: &Arc<K>,
        make: impl FnOnce() -> Result<V, E>,
    ) -> Result<Arc<V>, E> {
        if let Some(v) = self.find(key) {
            return Ok(v);
        }
        let made = Arc::new(make()?);
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let map = map.get_or_insert_with(HashMap::new);
        map.retain(|_, (k, _)| k.strong_count() > 0);
        let entry = map
            .entry(Arc::as_ptr(key) as usize)
            .or_insert_with(|| (Arc::downgrade(key), made.clone()));
        if entry.0.upgrade().is_some_and(|k| Arc::ptr_eq(&k, key)) {
            // Another thread may have made it first: everyone uses that one.
            Ok(entry.1.clone())
        } else {
            *entry = (Arc::downgrade(key), made.clone());
            Ok(made)
        }
    }

    /// The object attached to `key`, if any.
    pub fn get(&self, key: &Arc<K>) -> Option<Arc<V>> {
        self.find(key)
    }

    /// How many entries are alive (for tests).
    pub fn live(&self) -> usize {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.as_ref().map_or(0, |m| {
            m.values().filter(|(k, _)| k.strong_count() > 0).count()
        })
    }
}

impl<K, V> Default for Attached<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_object_per_key_for_as_long_as_the_key_lives() {
        let reg: Attached<String, u32> = Attached::new();
        let a = Arc::new("a".to_string());
        let b = Arc::new("a".to_string());
        let a1 = reg.get_or_insert_with(&a, || 1);
        let a2 = reg.get_or_insert_with(&a, || 2);
        assert!(Arc::ptr_eq(&a1, &a2), "made once");
        assert_eq!(
            *reg.get_or_insert_with(&b, || 3),
            3,
            "equal value, other key"
        );
        assert_eq!(reg.live(), 2);
        drop(a);
        assert_eq!(reg.live(), 1);
        assert!(reg.get(&b).is_some());
        // A dead entry is dropped at the next insert.
        let c = Arc::new("c".to_string());
        reg.get_or_insert_with(&c, || 4);
        assert_eq!(
            reg.map.lock().expect("lock").as_ref().map(HashMap::len),
            Some(2)
        );
    }
}
