//! Following an order: a client that holds an order as it is may wait for it to change instead
//! of asking again and again. Saves through [`OrderChanges::announcing`] end the waits for that
//! order at once. Another instance of the service saves orders too, unheard here, so a wait
//! also reads the order again every [`OrderChanges::look_again`].
//!
//! The same saves are remembered ([`OrderChanges::recent`]): the reservation's outcome starts
//! from the order as placed here instead of loading it, and a wait that a save ended answers
//! with the order as saved.

use super::ports::{IdempotencyKeyUse, OrderFilter, OrderPage, OrderStore};
use crate::domain::{Order, OrderId};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use messaging::{Effects, LoadError, Remembered, SaveError};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The waits for orders to change in this process.
pub struct OrderChanges {
    waits: Mutex<HashMap<OrderId, Arc<Notify>>>,
    /// Waits at once; past them a request is answered without waiting (waiting is the client's
    /// preference, not a promise).
    room: Arc<Semaphore>,
    look_again: Duration,
    closed: CancellationToken,
    recent: Remembered<OrderId, Order>,
}

impl OrderChanges {
    pub const DEFAULT_LOOK_AGAIN: Duration = Duration::from_millis(500);
    pub const DEFAULT_MAX_WAITS: usize = 4096;

    pub fn new() -> Self {
        Self::with(Self::DEFAULT_LOOK_AGAIN, Self::DEFAULT_MAX_WAITS)
    }

    /// Waits that read their order again every `look_again` (for the saves of other
    /// instances), at most `max_waits` of them at once.
    pub fn with(look_again: Duration, max_waits: usize) -> Self {
        Self {
            waits: Mutex::default(),
            room: Arc::new(Semaphore::new(max_waits)),
            look_again,
            closed: CancellationToken::new(),
            recent: Remembered::default(),
        }
    }

    pub fn look_again(&self) -> Duration {
        self.look_again
    }

    /// `store`, ending the waits for each order it saves.
    pub fn announcing(self: &Arc<Self>, store: Arc<dyn OrderStore>) -> Arc<dyn OrderStore> {
        Arc::new(Announcing { store, changes: self.clone() })
    }

    /// The orders as this process last saved them (see [`Remembered`]).
    pub(super) fn recent(&self) -> &Remembered<OrderId, Order> {
        &self.recent
    }

    /// Ends every wait (each answers with the order as it is) and starts no more: the service
    /// is stopping, and its HTTP server waits for the requests in flight.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// The order once `held` no longer holds for it (the client's copy is out of date), or
    /// after `wait` as it is then; `load` reads it. With whether it could wait: not when the
    /// service stops or holds as many waits as it takes.
    pub(super) async fn when_changed<F, E>(
        self: &Arc<Self>,
        id: OrderId,
        wait: Duration,
        held: impl Fn(&Order) -> bool,
        load: impl Fn() -> F,
    ) -> Result<(Order, bool), E>
    where
        F: Future<Output = Result<Order, E>>,
    {
        let Some(watch) = self.watch(id, wait) else {
            return Ok((load().await?, false));
        };
        let deadline = Instant::now() + wait;
        let mut just_saved = None;
        loop {
            // Listening before reading: a save in between is not missed.
            let mut saved = std::pin::pin!(watch.saved.notified());
            saved.as_mut().enable();
            let order = match just_saved.take() {
                Some(order) => order,
                None => load().await?,
            };
            if !held(&order) || Instant::now() >= deadline {
                return Ok((order, true));
            }
            tokio::select! {
                // The order as this process saved it a moment ago, the newest there was, unless
                // a unit of work took it since. (It is the order read before: whoever could see
                // that one can see this one.)
                () = saved => just_saved = self.recent.get(&id),
                () = tokio::time::sleep_until(deadline.min(Instant::now() + self.look_again)) => {}
                () = self.closed.cancelled() => return Ok((order, true)),
            }
        }
    }

    /// A wait for `id`, unless there is nothing to wait for, no room, or the service stops.
    fn watch(self: &Arc<Self>, id: OrderId, wait: Duration) -> Option<Watch> {
        if wait.is_zero() || self.closed.is_cancelled() {
            return None;
        }
        let room = self.room.clone().try_acquire_owned().ok()?;
        let saved = self.lock().entry(id).or_default().clone();
        Some(Watch { changes: self.clone(), id, saved, _room: room })
    }

    fn saved(&self, id: OrderId) {
        if let Some(saved) = self.lock().get(&id) {
            saved.notify_waiters();
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<OrderId, Arc<Notify>>> {
        self.waits.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for OrderChanges {
    fn default() -> Self {
        Self::new()
    }
}

/// One request waiting for an order; the last one for the order takes its entry away.
struct Watch {
    changes: Arc<OrderChanges>,
    id: OrderId,
    saved: Arc<Notify>,
    _room: OwnedSemaphorePermit,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut waits = self.changes.lock();
        // The map's and this one: no other wait holds it (they are taken under the lock).
        if Arc::strong_count(&self.saved) == 2 {
            waits.remove(&self.id);
        }
    }
}

/// An order store that ends the waits for each order it saved.
struct Announcing {
    store: Arc<dyn OrderStore>,
    changes: Arc<OrderChanges>,
}

#[async_trait]
impl OrderStore for Announcing {
    async fn load(&self, id: OrderId) -> Result<Option<Order>, LoadError> {
        self.store.load(id).await
    }

    async fn save(
        &self,
        order: &Order,
        idempotency: Option<IdempotencyKeyUse<'_>>,
        effects: &Effects<'_>,
    ) -> Result<(), SaveError> {
        self.store.save(order, idempotency, effects).await?;
        let mut saved = order.clone();
        saved.record_saved();
        self.changes.recent.put(order.id(), saved);
        self.changes.saved(order.id());
        Ok(())
    }

    async fn find_by_idempotency_key(
        &self,
        key: &str,
        expired_before: DateTime<Utc>,
    ) -> Result<Option<(OrderId, String)>, LoadError> {
        self.store.find_by_idempotency_key(key, expired_before).await
    }

    async fn forget_idempotency_keys(&self, expired_before: DateTime<Utc>) -> Result<u64, SaveError> {
        self.store.forget_idempotency_keys(expired_before).await
    }

    async fn list(&self, filter: &OrderFilter) -> Result<OrderPage, LoadError> {
        self.store.list(filter).await
    }
}
