//! The one quantile and the one median every experiment reports with. Both are nearest rank:
//! the value at rank ⌈q·n⌉ of the sorted values, so a figure is always a value that was measured
//! (with an even count the median is the lower of the two middle values, not their mean), and an
//! infinite value — a session that timed out — stays infinite instead of being averaged away.

use serde::Serialize;

/// The `q` quantile of sorted values (nearest rank), `NaN` when empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median (nearest rank: [`quantile`] 0.5) of values in any order, `NaN` when empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    quantile(&values, 0.5)
}

/// Median and min–max of a figure over repetitions (seeds, rounds).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// Over the values that are not `NaN` (a figure that was undefined in one repetition);
    /// all `NaN` when none is left.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        Spread::try_of(values).unwrap_or(Spread {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        })
    }

    /// Over the values that are not `NaN`; `None` when none is left.
    pub fn try_of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        Some(Spread {
            median: quantile(&v, 0.5),
            min: *v.first()?,
            max: *v.last()?,
        })
    }
}

/// Mean, sample standard deviation, min and max of `xs`.
pub fn mean_sd_min_max(xs: &[f64]) -> (f64, f64, f64, f64) {
    let n = xs.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    let sd = if n > 1 {
        (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        f64::NAN
    };
    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (mean, sd, min, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_is_nearest_rank() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&xs, 0.5), 50.0);
        assert_eq!(quantile(&xs, 0.99), 99.0);
        assert_eq!(quantile(&xs, 1.0), 100.0);
        assert_eq!(quantile(&xs, 0.0), 1.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn percentiles_count_timeouts_as_infinitely_late() {
        let mut v: Vec<f64> = (1..=99).map(|x| x as f64).collect();
        v.push(f64::INFINITY);
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert!(quantile(&v, 0.999).is_infinite());
        let s = Spread::of([3.0, 1.0, 2.0, f64::NAN, 5.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 5.0));
    }

    #[test]
    fn the_median_of_an_even_count_is_the_lower_middle_value() {
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.0);
        assert_eq!(median(vec![2.0, 9.0, 1.0]), 2.0);
        assert!(median(Vec::new()).is_nan());
        assert_eq!(Spread::of([4.0, 1.0, 3.0, 2.0]).median, 2.0);
        assert!(Spread::try_of([f64::NAN]).is_none());
        assert!(Spread::of([]).median.is_nan());
    }

    #[test]
    fn spread_of_known_values() {
        let (m, sd, lo, hi) = mean_sd_min_max(&[1.0, 2.0, 3.0]);
        assert_eq!((m, lo, hi), (2.0, 1.0, 3.0));
        assert!((sd - 1.0).abs() < 1e-12);
    }
}
