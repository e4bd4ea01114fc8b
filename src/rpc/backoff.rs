//! Reconnect delays: capped exponential backoff with jitter, reset after a connection that held.

use std::time::Duration;

use rand::Rng;

/// The first delay after a connection that held: short, so a broker restart costs little.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// A connection that lasted this long resets the backoff; one that drops sooner keeps growing it.
pub const HELD: Duration = Duration::from_secs(5);

/// Delays double from `first` up to `cap`; each is drawn uniformly from the upper half of the
/// step ("equal jitter"), so guests that lost the broker together do not retry in lockstep and
/// no delay is longer than `cap`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Self {
        let first = first.min(cap);
        Backoff { first, cap, step: first }
    }

    /// The delay before the next attempt; grows the step for the one after.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.cap);
        let half = step / 2;
        half + rng.gen_range(Duration::ZERO..=step - half)
    }

    /// Back to the first delay (after a connection that held).
    pub fn reset(&mut self) {
        self.step = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[test]
    fn schedule_doubles_within_the_upper_half_and_stops_at_the_cap() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
            let steps = [100u128, 200, 400, 800, 1600, 2000, 2000, 2000];
            for step in steps {
                let d = ms(b.next_delay(&mut rng));
                assert!(d >= step / 2 && d <= step, "delay {d} ms outside [{}, {step}]", step / 2);
            }
        }
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let mut rng = StdRng::seed_from_u64(1);
        let firsts: std::collections::HashSet<u128> =
            (0..50).map(|_| ms(Backoff::new(Duration::from_millis(1000), Duration::from_secs(10)).next_delay(&mut rng))).collect();
        assert!(firsts.len() > 20, "50 first delays took only {} distinct values", firsts.len());
    }

    #[test]
    fn reset_returns_to_the_first_delay() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut b = Backoff::new(FIRST_DELAY, Duration::from_secs(2));
        for _ in 0..10 {
            b.next_delay(&mut rng);
        }
        assert!(ms(b.next_delay(&mut rng)) >= 1000);
        b.reset();
        assert!(ms(b.next_delay(&mut rng)) <= 100);
    }

    #[test]
    fn a_cap_below_the_first_delay_wins() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        for _ in 0..5 {
            assert!(b.next_delay(&mut rng) <= Duration::from_secs(1));
        }
    }
}
