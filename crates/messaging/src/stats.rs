//! What a consumer did lately, counted by the consumer itself, for the operators' console:
//! messages handled and dead-lettered since start, and per second over the last minute.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Seconds the rates are averaged over.
pub const RATE_WINDOW_SECS: u64 = 60;

/// The counts of one consumer. Cheap to update from every lane.
#[derive(Debug)]
pub struct ConsumerStats {
    handled: Counter,
    dead_lettered: Counter,
}

/// What a [`ConsumerStats`] says now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConsumerFigures {
    /// Messages handled (acknowledged, copies included) since this process started.
    pub handled: u64,
    /// Messages moved to the error queue since this process started.
    pub dead_lettered: u64,
    /// Messages handled per second over the last minute.
    pub handled_per_second: f64,
    /// Messages dead-lettered per second over the last minute.
    pub dead_lettered_per_second: f64,
}

impl Default for ConsumerStats {
    fn default() -> Self {
        let started = Instant::now();
        Self { handled: Counter::new(started), dead_lettered: Counter::new(started) }
    }
}

impl ConsumerStats {
    /// Counts a handled (or skipped duplicate) message.
    pub fn record_handled(&self) {
        self.handled.add();
    }

    /// Counts a dead-lettered message.
    pub fn record_dead_lettered(&self) {
        self.dead_lettered.add();
    }

    /// Totals and rates now.
    pub fn figures(&self) -> ConsumerFigures {
        ConsumerFigures {
            handled: self.handled.total(),
            dead_lettered: self.dead_lettered.total(),
            handled_per_second: self.handled.per_second(),
            dead_lettered_per_second: self.dead_lettered.per_second(),
        }
    }
}

/// A total, and counts per second of the last [`RATE_WINDOW_SECS`] seconds in a ring of buckets.
#[derive(Debug)]
struct Counter {
    started: Instant,
    total: AtomicU64,
    /// (second since `started`, count in that second), indexed by second modulo the window.
    buckets: Mutex<[(u64, u64); RATE_WINDOW_SECS as usize]>,
}

impl Counter {
    fn new(started: Instant) -> Self {
        Self { started, total: AtomicU64::new(0), buckets: Mutex::new([(u64::MAX, 0); RATE_WINDOW_SECS as usize]) }
    }

    fn second(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    fn add(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let second = self.second();
        let mut buckets = self.buckets.lock().expect("stats lock poisoned");
        let bucket = &mut buckets[(second % RATE_WINDOW_SECS) as usize];
        if bucket.0 == second {
            bucket.1 += 1;
        } else {
            *bucket = (second, 1);
        }
    }

    fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The average over the last minute, or over the time since start when that is shorter.
    fn per_second(&self) -> f64 {
        let now = self.second();
        let buckets = self.buckets.lock().expect("stats lock poisoned");
        let counted: u64 = buckets
            .iter()
            .filter(|(second, _)| *second != u64::MAX && now.saturating_sub(*second) < RATE_WINDOW_SECS)
            .map(|(_, count)| count)
            .sum();
        let span = self.started.elapsed().as_secs_f64().clamp(1.0, RATE_WINDOW_SECS as f64);
        counted as f64 / span
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_give_a_rate() {
        let stats = ConsumerStats::default();
        for _ in 0..30 {
            stats.record_handled();
        }
        stats.record_dead_lettered();
        let figures = stats.figures();
        assert_eq!((figures.handled, figures.dead_lettered), (30, 1));
        // Within the first second the rate is over one second.
        assert_eq!(figures.handled_per_second, 30.0);
        assert_eq!(figures.dead_lettered_per_second, 1.0);
    }

    #[test]
    fn counts_older_than_the_window_leave_the_rate() {
        let counter = Counter::new(Instant::now() - std::time::Duration::from_secs(200));
        {
            let mut buckets = counter.buckets.lock().unwrap();
            buckets[0] = (120, 50); // a minute and more ago
            buckets[1] = (181, 6);
        }
        assert_eq!(counter.per_second(), 6.0 / 60.0);
    }
}
