//! The population stability index of one distribution against another, over the same buckets.

/// The least share a bucket counts with: an empty bucket (no served value in a reference bin, or
/// a category gone) reads as one in ten thousand, so its term is large but finite.
pub const EPSILON: f64 = 1e-4;

/// `Σ (o - r) ln(o / r)` over the buckets, with `observed` and `reference` the buckets' shares
/// (each list summing to 1, or to 0 when nothing was seen) and every share raised to at least
/// [`EPSILON`]. 0 for identical shares; symmetric in its arguments; never negative.
///
/// # Panics
/// Never; lists of different lengths are compared over the shorter one's buckets (callers build
/// both from one reference's buckets).
pub fn psi(observed: &[f64], reference: &[f64]) -> f64 {
    observed
        .iter()
        .zip(reference)
        .map(|(&o, &r)| {
            let (o, r) = (o.max(EPSILON), r.max(EPSILON));
            (o - r) * (o / r).ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_shares_give_zero_and_it_is_symmetric() {
        let a = [0.1; 10];
        assert_eq!(psi(&a, &a), 0.0);
        let b = [0.05, 0.15, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1];
        assert!((psi(&a, &b) - psi(&b, &a)).abs() < 1e-15);
        // (0.05 - 0.1) ln(0.5) + (0.15 - 0.1) ln(1.5)
        let expected = -0.05 * 0.5f64.ln() + 0.05 * 1.5f64.ln();
        assert!((psi(&b, &a) - expected).abs() < 1e-12);
    }

    #[test]
    fn an_empty_bucket_counts_as_epsilon() {
        let reference = [0.5, 0.5];
        let observed = [1.0, 0.0];
        let expected = 0.5 * 2f64.ln() + (EPSILON - 0.5) * (EPSILON / 0.5).ln();
        assert!((psi(&observed, &reference) - expected).abs() < 1e-12);
        assert!(psi(&observed, &reference) > 4.0);
        // Empty on both sides: no term.
        assert_eq!(psi(&[1.0, 0.0], &[1.0, 0.0]), 0.0);
    }
}
