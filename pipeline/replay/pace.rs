//! Pacing of a replay: a fixed schedule on the tokio clock.
//!
//! Record `n` (0-based) is due `n / rate` seconds after the first one. Waiting
//! for each record's slot on that schedule, rather than for a fixed gap after
//! the previous send, keeps the average rate exact although tokio timers tick
//! in milliseconds and sends take time: when the loop falls behind, the
//! records already due go out back to back until it has caught up, which also
//! lets the producer batch them.

use std::time::Duration;

use tokio::time::Instant;

/// A replay rate that is neither a positive number of records per second nor
/// one of the "as fast as possible" values (0 and infinity).
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("invalid replay rate {rate}: give records per second above 0, or 0 (or inf) for as fast as possible")]
pub struct InvalidRate {
    /// The rate given.
    pub rate: f64,
}

/// Hands out send slots at a fixed rate.
#[derive(Debug)]
pub(super) struct Pacer {
    /// Seconds between slots; `None` when unthrottled.
    seconds_per_record: Option<f64>,
    /// When the first slot was taken; the schedule counts from there, so time
    /// spent before the first record does not turn into a burst.
    start: Option<Instant>,
    /// Slots taken so far.
    taken: u64,
}

impl Pacer {
    /// A pacer for `rate_per_sec` records per second; 0 or infinity means no
    /// pacing.
    pub(super) fn new(rate_per_sec: f64) -> Result<Self, InvalidRate> {
        let seconds_per_record = if rate_per_sec == 0.0 || rate_per_sec == f64::INFINITY {
            None
        } else if rate_per_sec.is_finite() && rate_per_sec > 0.0 {
            Some(1.0 / rate_per_sec)
        } else {
            return Err(InvalidRate { rate: rate_per_sec });
        };
        Ok(Self {
            seconds_per_record,
            start: None,
            taken: 0,
        })
    }

    /// When slot `n` is due, counted from the first slot; `None` when
    /// unthrottled. Saturates for absurd schedules (centuries away) instead
    /// of failing: tokio sleeps that long as "forever", which is what the
    /// caller asked for.
    pub(super) fn offset(&self, n: u64) -> Option<Duration> {
        let seconds = self.seconds_per_record? * n as f64;
        Some(Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX))
    }

    /// Waits until the next slot is due and takes it.
    pub(super) async fn wait(&mut self) {
        let n = self.taken;
        self.taken += 1;
        let start = *self.start.get_or_insert_with(Instant::now);
        let Some(offset) = self.offset(n) else {
            return;
        };
        let elapsed = start.elapsed();
        if offset > elapsed {
            // `sleep` (unlike `sleep_until`) accepts any duration, so a
            // saturated offset cannot overflow the deadline.
            tokio::time::sleep(offset - elapsed).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_infinity_mean_unthrottled() {
        for rate in [0.0, f64::INFINITY] {
            let pacer = Pacer::new(rate).expect("valid");
            assert_eq!(pacer.offset(1_000), None);
        }
    }

    #[test]
    fn negative_and_nan_rates_are_rejected_with_the_value() {
        for rate in [-1.0, f64::NAN, f64::NEG_INFINITY] {
            let err = Pacer::new(rate).expect_err("invalid");
            assert!(err.to_string().contains(&rate.to_string()), "{err}");
        }
    }

    #[test]
    fn slots_follow_the_rate() {
        let pacer = Pacer::new(200.0).expect("valid");
        assert_eq!(pacer.offset(0), Some(Duration::ZERO));
        assert_eq!(pacer.offset(200), Some(Duration::from_secs(1)));
        assert_eq!(pacer.offset(50), Some(Duration::from_millis(250)));
        let slow = Pacer::new(1e-300).expect("valid");
        assert_eq!(slow.offset(2), Some(Duration::MAX));
    }

    #[tokio::test]
    async fn waiting_holds_the_average_rate() {
        let mut pacer = Pacer::new(100.0).expect("valid");
        let start = std::time::Instant::now();
        for _ in 0..21 {
            pacer.wait().await;
        }
        // The 21st slot is due 200 ms after the first. Only a lower bound: a
        // busy machine may be late, never early.
        assert!(
            start.elapsed() >= Duration::from_millis(200),
            "{:?}",
            start.elapsed()
        );
    }
}
