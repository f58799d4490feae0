//! The catalog copy with a short memory: an order's lines are priced from products read at
//! most [`RecentCatalog::FRESH_FOR`] ago instead of one read per order.
//!
//! The copy itself trails inventory by the time its messages take, so a price up to that much
//! older changes nothing in kind. Updates through this catalog (the catalog handler of this
//! process) are seen at once; those another instance applies within `FRESH_FOR`.

use super::ports::Catalog;
use crate::domain::{CatalogItem, ProductId};
use async_trait::async_trait;
use hashlink::LruCache;
use messaging::{Effects, LoadError, SaveError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

pub struct RecentCatalog {
    catalog: Arc<dyn Catalog>,
    /// Each product as read, and when.
    read: Mutex<LruCache<ProductId, (CatalogItem, Instant)>>,
}

impl RecentCatalog {
    /// How old a product read may be when it prices a line.
    pub const FRESH_FOR: Duration = Duration::from_secs(1);
    /// Products remembered at most.
    const CAPACITY: usize = 4096;

    pub fn new(catalog: Arc<dyn Catalog>) -> Self {
        Self { catalog, read: Mutex::new(LruCache::new(Self::CAPACITY)) }
    }

    fn lock(&self) -> MutexGuard<'_, LruCache<ProductId, (CatalogItem, Instant)>> {
        self.read.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Catalog for RecentCatalog {
    /// The products read within [`Self::FRESH_FOR`], and the others in one read. A product the
    /// catalog does not hold is not remembered: it may arrive any moment.
    async fn find_many(&self, product_ids: &[ProductId]) -> Result<Vec<CatalogItem>, LoadError> {
        let mut found = Vec::with_capacity(product_ids.len());
        let mut missing = Vec::new();
        {
            let mut read = self.lock();
            for id in product_ids {
                match read.get(id) {
                    Some((item, at)) if at.elapsed() < Self::FRESH_FOR => found.push(item.clone()),
                    _ => missing.push(*id),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let at = Instant::now();
        let fetched = self.catalog.find_many(&missing).await?;
        let mut read = self.lock();
        for item in &fetched {
            read.insert(item.product_id, (item.clone(), at));
        }
        found.extend(fetched);
        Ok(found)
    }

    async fn list(&self) -> Result<Vec<CatalogItem>, LoadError> {
        self.catalog.list().await
    }

    async fn upsert(&self, item: &CatalogItem, version: i64, effects: &Effects<'_>) -> Result<(), SaveError> {
        let upserted = self.catalog.upsert(item, version, effects).await;
        // Whatever the outcome: the next read sees the copy as it is.
        self.lock().remove(&item.product_id);
        upserted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A catalog of one product, counting its reads.
    #[derive(Default)]
    struct Counted {
        item: Mutex<Option<CatalogItem>>,
        reads: AtomicUsize,
    }

    #[async_trait]
    impl Catalog for Counted {
        async fn find_many(&self, ids: &[ProductId]) -> Result<Vec<CatalogItem>, LoadError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            let item = self.item.lock().unwrap().clone();
            Ok(item.into_iter().filter(|item| ids.contains(&item.product_id)).collect())
        }
        async fn list(&self) -> Result<Vec<CatalogItem>, LoadError> {
            Ok(self.item.lock().unwrap().clone().into_iter().collect())
        }
        async fn upsert(&self, item: &CatalogItem, _: i64, _: &Effects<'_>) -> Result<(), SaveError> {
            *self.item.lock().unwrap() = Some(item.clone());
            Ok(())
        }
    }

    fn kettle(price: &str) -> CatalogItem {
        CatalogItem { product_id: ProductId::new(1).unwrap(), name: "Kettle".into(), price: price.parse().unwrap() }
    }

    #[tokio::test]
    async fn a_product_read_a_moment_ago_is_not_read_again_until_it_changes_here() {
        let copy = Arc::new(Counted::default());
        let catalog = RecentCatalog::new(copy.clone());
        let id = [kettle("1").product_id];
        assert_eq!(catalog.find_many(&id).await.unwrap(), [], "not in the copy yet");
        catalog.upsert(&kettle("24.90"), 1, &Effects::new()).await.unwrap();
        assert_eq!(catalog.find_many(&id).await.unwrap(), [kettle("24.90")], "an unknown product was remembered");
        assert_eq!(catalog.find_many(&id).await.unwrap(), [kettle("24.90")]);
        assert_eq!(copy.reads.load(Ordering::Relaxed), 2);

        catalog.upsert(&kettle("19.90"), 2, &Effects::new()).await.unwrap();
        assert_eq!(catalog.find_many(&id).await.unwrap(), [kettle("19.90")], "a change here is seen at once");
        assert_eq!(copy.reads.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_product_read_longer_ago_than_it_stays_fresh_is_read_again() {
        let copy = Arc::new(Counted::default());
        copy.upsert(&kettle("24.90"), 1, &Effects::new()).await.unwrap();
        let catalog = RecentCatalog::new(copy.clone());
        let id = [kettle("1").product_id];
        catalog.find_many(&id).await.unwrap();
        // Changed on another instance: unheard here.
        copy.upsert(&kettle("19.90"), 2, &Effects::new()).await.unwrap();
        assert_eq!(catalog.find_many(&id).await.unwrap(), [kettle("24.90")]);
        tokio::time::advance(RecentCatalog::FRESH_FOR).await;
        assert_eq!(catalog.find_many(&id).await.unwrap(), [kettle("19.90")]);
    }
}
