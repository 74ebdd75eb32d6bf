//! The upload rate cap: peers' block data leaves no faster, on average, than the cap.

use std::time::{Duration, Instant};

/// Spaces sends so that on average at most `rate` bytes per second leave: a send is due when
/// the sends before it would be done at that rate, or at once if they are.
pub(crate) struct Shaper {
    rate: u64,
    next_free: Option<Instant>,
}

impl Shaper {
    pub(crate) fn new(rate: u64) -> Self {
        Self {
            rate: rate.max(1),
            next_free: None,
        }
    }

    /// How long `bytes` ready to leave at `now` must wait; the wait is booked.
    pub(crate) fn delay(&mut self, now: Instant, bytes: u64) -> Duration {
        let start = self.next_free.map_or(now, |t| t.max(now));
        self.next_free = Some(start + Duration::from_secs_f64(bytes as f64 / self.rate as f64));
        start - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_are_spaced_at_the_rate_and_an_idle_link_sends_at_once() {
        let mut s = Shaper::new(1 << 20);
        let t = Instant::now();
        let waits: Vec<Duration> = (0..3).map(|_| s.delay(t, 1 << 20)).collect();
        let second = Duration::from_secs(1);
        assert_eq!(waits, [Duration::ZERO, second, 2 * second]);
        // Half a second later the third is still a second and a half away.
        assert_eq!(s.delay(t + second / 2, 1 << 19), 5 * second / 2);
        // Long after everything left, the next send goes at once.
        assert_eq!(s.delay(t + 10 * second, 1 << 20), Duration::ZERO);
    }
}
