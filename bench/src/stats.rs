//! Medians and percentiles: how repetitions and samples become one figure.

/// A figure over its repetitions: the median, with the spread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// The median repetition (the mean of the two middle ones for an even count).
    pub median: f64,
    /// The lowest repetition.
    pub min: f64,
    /// The highest repetition.
    pub max: f64,
}

/// The median, min and max of `values`; `None` when there are none.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    let sorted = sorted(values);
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        f64::midpoint(sorted[n / 2 - 1], sorted[n / 2])
    };
    Some(Summary {
        median,
        min: sorted[0],
        max: sorted[n - 1],
    })
}

/// The `p`th percentile (0 < p ≤ 100) by the nearest-rank method: the smallest sample that at
/// least `p`% of the samples do not exceed. A p99 of 200 samples is the 198th smallest, so one
/// outlier in a hundred does not hide.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    let sorted = sorted(samples);
    if sorted.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    // Ranks are small whole numbers: the casts are exact.
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_summary(values: &[f64], median: f64, min: f64, max: f64) {
        assert_eq!(
            summarize(values),
            Some(Summary { median, min, max }),
            "{values:?}"
        );
    }

    #[test]
    fn summaries_take_the_middle_and_the_ends() {
        check_summary(&[3.0, 1.0, 2.0], 2.0, 1.0, 3.0);
        check_summary(&[4.0, 1.0, 2.0, 3.0], 2.5, 1.0, 4.0);
        check_summary(&[7.0], 7.0, 7.0, 7.0);
        check_summary(&[f64::NAN, 5.0, 1.0], 3.0, 1.0, 5.0);
        assert_eq!(summarize(&[]), None);
    }

    fn check_percentile(samples: &[f64], p: f64, expected: Option<f64>) {
        assert_eq!(percentile(samples, p), expected, "p{p} of {samples:?}");
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        check_percentile(&hundred, 50.0, Some(50.0));
        check_percentile(&hundred, 99.0, Some(99.0));
        check_percentile(&hundred, 100.0, Some(100.0));
        let two_hundred: Vec<f64> = (1..=200).map(f64::from).collect();
        check_percentile(&two_hundred, 99.0, Some(198.0));
        check_percentile(&[5.0, 1.0, 3.0], 50.0, Some(3.0));
        check_percentile(&[5.0], 99.0, Some(5.0));
        check_percentile(&[], 50.0, None);
        check_percentile(&[1.0], 0.0, None);
        check_percentile(&[1.0], 101.0, None);
    }
}
