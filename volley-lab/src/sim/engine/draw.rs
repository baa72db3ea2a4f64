//! The random draws of a run: exponential samples, a starting queue drawn from a tail
//! distribution, and the tail of a sampled histogram.

use rand::Rng;

/// An exponential sample with the given mean.
pub fn exp_sample(rng: &mut impl Rng, mean: f64) -> f64 {
    let u: f64 = rng.r#gen();
    -(1.0 - u).ln() * mean
}

/// A draw from a tail distribution: the number of `i ≥ 1` with `tail[i-1] > u`.
pub(super) fn draw_from_tail(rng: &mut impl Rng, tail: &[f64]) -> u32 {
    let u: f64 = rng.r#gen();
    tail.iter().take_while(|s| **s > u).count() as u32
}

/// P(N ≥ i), i ≥ 1, of a histogram of N (index = value).
pub fn tail_of_histogram(hist: &[u64]) -> Vec<f64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return Vec::new();
    }
    let mut tail = Vec::new();
    let mut at_least = total;
    for h in hist.iter().take(hist.len().saturating_sub(1)) {
        at_least -= h;
        if at_least == 0 {
            break;
        }
        tail.push(at_least as f64 / total as f64);
    }
    tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_tail() {
        // Values 0, 1, 1, 3.
        let t = tail_of_histogram(&[1, 2, 0, 1]);
        assert_eq!(t, vec![0.75, 0.25, 0.25]);
        assert!(tail_of_histogram(&[]).is_empty());
        assert!(tail_of_histogram(&[5]).is_empty());
    }
}
