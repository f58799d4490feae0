//! Aggregates as this process last committed them, so that the next unit of work on one can
//! start from memory instead of a load: one statement less on the busiest path.
//!
//! Memory is an assumption, never a fact: another instance may have committed the aggregate
//! since. The save's version check is what settles it. A unit of work that commits on a
//! remembered aggregate proves it was current; any other outcome (a conflict, a refusal, nothing
//! to commit) proves nothing, and the work is done again on a fresh load
//! ([`Remembered::work_on`]).

use hashlink::LruCache;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// How a unit of work ended, for [`Remembered::work_on`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Worked {
    /// It committed, or the inbox showed its messages committed before: what it started from
    /// does not matter any more.
    Committed,
    /// It found nothing to commit.
    Unchanged,
}

/// The last committed state of up to `capacity` aggregates, by key; the least recently used
/// is forgotten first.
pub struct Remembered<K, V> {
    entries: Mutex<LruCache<K, V>>,
}

impl<K: Hash + Eq, V> Remembered<K, V> {
    /// Enough for every aggregate in flight at several hundred units of work per second.
    pub const DEFAULT_CAPACITY: usize = 2048;

    /// Remembers at most `capacity` aggregates (at least one).
    pub fn new(capacity: usize) -> Self {
        Self { entries: Mutex::new(LruCache::new(capacity.max(1))) }
    }

    /// Remembers `value` as just committed under `key`.
    pub fn put(&self, key: K, value: V) {
        self.lock().insert(key, value);
    }

    /// A copy of what is remembered of `key`, left remembered: for reading only, since another
    /// instance may have committed since.
    pub fn get(&self, key: &K) -> Option<V>
    where
        V: Clone,
    {
        self.lock().get(key).cloned()
    }

    /// Takes what is remembered of `key`: a unit of work that starts from it puts back what it
    /// commits, and one that fails leaves nothing stale behind.
    pub fn take(&self, key: &K) -> Option<V> {
        self.lock().remove(key)
    }

    /// Does `work` on what is remembered of `key`, if anything, and again on what `load` reads
    /// unless that committed. `work` gets `None` where there is nothing to start from.
    // Closures returning futures rather than async closures: the futures of those cannot be
    // shown to be `Send` yet.
    pub async fn work_on<E, L, W>(
        &self,
        key: &K,
        load: impl FnOnce() -> L,
        work: impl Fn(Option<V>) -> W,
    ) -> Result<Worked, E>
    where
        L: Future<Output = Result<Option<V>, E>>,
        W: Future<Output = Result<Worked, E>>,
    {
        if let Some(remembered) = self.take(key)
            && let Ok(Worked::Committed) = work(Some(remembered)).await
        {
            return Ok(Worked::Committed);
        }
        work(load().await?).await
    }

    fn lock(&self) -> MutexGuard<'_, LruCache<K, V>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<K: Hash + Eq, V> Default for Remembered<K, V> {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    #[tokio::test]
    async fn work_that_commits_on_memory_spares_the_load() {
        let remembered = Remembered::new(8);
        remembered.put(1, "v1");
        let loads = Cell::new(0);
        let load = || async {
            loads.set(loads.get() + 1);
            Ok::<_, ()>(Some("fresh"))
        };
        let worked = remembered
            .work_on(&1, load, |v| async move {
                assert_eq!(v, Some("v1"));
                Ok(Worked::Committed)
            })
            .await;
        assert_eq!((worked, loads.get()), (Ok(Worked::Committed), 0));
        assert_eq!(remembered.take(&1), None, "taken: the work puts back what it commits");
    }

    #[tokio::test]
    async fn work_that_does_not_commit_on_memory_is_done_again_on_a_load() {
        let remembered = Remembered::new(8);
        for outcome in [Err("conflict"), Ok(Worked::Unchanged)] {
            remembered.put(1, "stale");
            let seen = &RefCell::new(Vec::new());
            let worked = remembered
                .work_on(
                    &1,
                    || async { Ok(Some("fresh")) },
                    |v| async move {
                        seen.borrow_mut().push(v);
                        if v == Some("stale") { outcome } else { Ok(Worked::Unchanged) }
                    },
                )
                .await;
            assert_eq!(worked, Ok(Worked::Unchanged));
            assert_eq!(*seen.borrow(), [Some("stale"), Some("fresh")]);
            assert_eq!(remembered.take(&1), None, "a failed start leaves nothing stale behind");
        }
    }

    #[tokio::test]
    async fn without_memory_the_work_starts_from_the_load() {
        let remembered: Remembered<u8, &str> = Remembered::new(8);
        let seen = &RefCell::new(Vec::new());
        let worked = remembered
            .work_on(
                &1,
                || async { Ok::<_, ()>(Some("fresh")) },
                |v| async move {
                    seen.borrow_mut().push(v);
                    Ok(Worked::Committed)
                },
            )
            .await;
        assert_eq!((worked, seen.take()), (Ok(Worked::Committed), vec![Some("fresh")]));
    }

    #[test]
    fn the_least_recently_used_is_forgotten_first() {
        let remembered = Remembered::new(2);
        remembered.put(1, 'a');
        remembered.put(2, 'b');
        remembered.put(3, 'c');
        assert_eq!((remembered.take(&1), remembered.take(&2), remembered.take(&3)), (None, Some('b'), Some('c')));
    }
}
