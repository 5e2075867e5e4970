//! Medians and percentiles of measured samples.

use std::time::Duration;

/// The median of `values` (the upper one for an even count); NaN when there are none.
pub(crate) fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Latency samples in nanoseconds.
#[derive(Debug, Default, Clone)]
pub(crate) struct Latencies {
    nanos: Vec<u64>,
    sorted: bool,
}

impl Latencies {
    pub(crate) fn push(&mut self, latency: Duration) {
        self.nanos
            .push(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
        self.sorted = false;
    }

    pub(crate) fn extend(&mut self, other: &Latencies) {
        self.nanos.extend_from_slice(&other.nanos);
        self.sorted = false;
    }

    pub(crate) fn len(&self) -> usize {
        self.nanos.len()
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.nanos.sort_unstable();
            self.sorted = true;
        }
    }

    /// The nearest-rank percentile `p` (0..=100), or `None` without samples.
    pub(crate) fn percentile(&mut self, p: f64) -> Option<Duration> {
        if self.nanos.is_empty() {
            return None;
        }
        self.sort();
        let rank = ((p / 100.0) * self.nanos.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.nanos.len()) - 1;
        Some(Duration::from_nanos(self.nanos[index]))
    }

    pub(crate) fn mean(&self) -> Option<Duration> {
        if self.nanos.is_empty() {
            return None;
        }
        let sum: u128 = self.nanos.iter().map(|&n| u128::from(n)).sum();
        Some(Duration::from_nanos(
            (sum / self.nanos.len() as u128) as u64,
        ))
    }

    /// The samples in ascending order, in nanoseconds.
    pub(crate) fn sorted_nanos(&mut self) -> &[u64] {
        self.sort();
        &self.nanos
    }
}

/// `1.23 ms`, `45.6 µs`, `789 ns`: three significant figures in a readable unit.
pub(crate) fn format_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos() as f64;
    if nanos >= 1e9 {
        format!("{:.3} s", nanos / 1e9)
    } else if nanos >= 1e6 {
        format!("{} ms", three_figures(nanos / 1e6))
    } else if nanos >= 1e3 {
        format!("{} µs", three_figures(nanos / 1e3))
    } else {
        format!("{nanos:.0} ns")
    }
}

fn three_figures(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut latencies = Latencies::default();
        for n in 1..=100 {
            latencies.push(Duration::from_nanos(n));
        }
        assert_eq!(latencies.percentile(50.0), Some(Duration::from_nanos(50)));
        assert_eq!(latencies.percentile(99.0), Some(Duration::from_nanos(99)));
        assert_eq!(latencies.percentile(100.0), Some(Duration::from_nanos(100)));
        assert_eq!(latencies.percentile(0.0), Some(Duration::from_nanos(1)));
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn durations_read_in_their_unit() {
        assert_eq!(format_duration(Duration::from_nanos(789)), "789 ns");
        assert_eq!(format_duration(Duration::from_nanos(45_600)), "45.6 µs");
        assert_eq!(format_duration(Duration::from_micros(1_234)), "1.23 ms");
    }
}
