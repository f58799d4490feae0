//! How long to wait before trying again: one exponential, capped backoff for every retry loop
//! (consumer retries, relay and subscription recovery, optimistic-concurrency conflicts).

use std::time::Duration;

/// Exponential backoff: `initial` after the first failure, doubled after each further one, never
/// more than `max`, optionally randomized so that contenders spread out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The pause after the first failure.
    pub initial: Duration,
    /// The longest pause.
    pub max: Duration,
    /// How the pause is randomized.
    pub jitter: Jitter,
}

/// How a [`Backoff`] randomizes the pause it computed (the "ceiling").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Exactly the ceiling.
    None,
    /// Anywhere between half the ceiling and the ceiling: spread out, yet never much shorter.
    Equal,
    /// Anywhere between zero and the ceiling: the widest spread, for contenders of one resource.
    Full,
}

impl Backoff {
    /// A backoff from `initial` to `max`, without jitter.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, jitter: Jitter::None }
    }

    /// The same backoff, randomized with `jitter`.
    pub const fn with_jitter(self, jitter: Jitter) -> Self {
        Self { jitter, ..self }
    }

    /// The pause after the `failures`-th failure in a row (counting from 1).
    pub fn pause(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        let ceiling = self.initial.saturating_mul(1 << doublings).min(self.max);
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::Equal => ceiling / 2 + ceiling.mul_f64(fastrand::f64() / 2.0),
            Jitter::Full => ceiling.mul_f64(fastrand::f64()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_pause_doubles_from_initial_up_to_max() {
        let backoff = Backoff::new(100 * MS, 1000 * MS);
        let pauses: Vec<Duration> = (1..=6).map(|failures| backoff.pause(failures)).collect();
        assert_eq!(pauses, [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]);
        assert_eq!(backoff.pause(0), 100 * MS, "no failure yet counts as the first");
        assert_eq!(backoff.pause(u32::MAX), 1000 * MS);
    }

    #[test]
    fn equal_jitter_stays_in_the_upper_half() {
        let backoff = Backoff::new(100 * MS, Duration::from_secs(1)).with_jitter(Jitter::Equal);
        for _ in 0..100 {
            let first = backoff.pause(1);
            assert!(first >= 50 * MS && first <= 100 * MS, "{first:?}");
            let third = backoff.pause(3);
            assert!(third >= 200 * MS && third <= 400 * MS, "{third:?}");
            assert!(backoff.pause(30) <= Duration::from_secs(1));
        }
    }

    #[test]
    fn full_jitter_spreads_from_zero_to_the_ceiling() {
        let backoff = Backoff::new(4 * MS, 128 * MS).with_jitter(Jitter::Full);
        let pauses: Vec<Duration> = (0..200).map(|_| backoff.pause(3)).collect();
        assert!(pauses.iter().all(|pause| *pause <= 16 * MS));
        assert!(pauses.iter().any(|pause| *pause < 8 * MS), "never in the lower half");
    }
}
