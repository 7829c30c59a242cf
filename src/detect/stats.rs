//! Tail probabilities of counts and sizes: statrs turns a learned summary (mean, variance) into
//! the smallest count, or the surprise of a size, that the summary makes improbable.

use statrs::distribution::{ContinuousCDF, DiscreteCDF, NegativeBinomial, Normal, Poisson};

/// One hour in ms.
pub const HOUR_MS: i64 = 3_600_000;

/// Mean and variance of a count whose rate varies from day to day by the coefficient of
/// variation `cv`: Poisson noise plus the rate's own spread.
pub fn rate_variance(mean: f64, cv: f64) -> f64 {
    mean + (cv * mean).powi(2)
}

/// Smallest number of sessions (calls, turns) that is improbable — tail below `alpha` — where `e`
/// are expected and the rate varies from day to day by the coefficient of variation `cv`.
pub fn improbable_sessions(e: f64, cv: f64, alpha: f64) -> u32 {
    u32::try_from(count_threshold(e, rate_variance(e, cv), alpha)).unwrap_or(u32::MAX)
}

/// One step of an exponentially weighted mean and variance with weight `alpha` for `x`.
pub fn ew_update(mean: &mut f32, var: &mut f32, x: f32, alpha: f32) {
    let diff = x - *mean;
    let incr = alpha * diff;
    *mean += incr;
    *var = (1.0 - alpha) * (*var + diff * incr);
}

/// Surprise of a standard score: −log10 of the upper tail probability P(Z ≥ z), capped at `cap`.
pub fn surprise(z: f64, cap: f64) -> f64 {
    if !z.is_finite() {
        return if z > 0.0 { cap } else { 0.0 };
    }
    let p = Normal::standard().sf(z);
    if p <= 0.0 {
        cap
    } else {
        (-p.log10()).clamp(0.0, cap)
    }
}

/// Upper tail P(X ≥ k) of a count of this mean and variance (negative binomial when
/// over-dispersed, Poisson otherwise); 1 when the summary is degenerate.
pub fn count_tail(k: u64, mean: f64, var: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    let mean = if mean.is_finite() {
        mean.max(1e-3)
    } else {
        return 1.0;
    };
    let var = if var.is_finite() { var } else { mean };
    if var > mean * 1.05 {
        let r = mean * mean / (var - mean);
        NegativeBinomial::new(r, r / (r + mean)).map_or(1.0, |d| d.sf(k - 1))
    } else {
        Poisson::new(mean).map_or(1.0, |d| d.sf(k - 1))
    }
}

/// Smallest count `c` with P(X ≥ c) < `alpha` for hourly counts of this mean and variance:
/// negative binomial when over-dispersed, Poisson otherwise.
pub fn count_threshold(mean: f64, var: f64, alpha: f64) -> u64 {
    let mean = if mean.is_finite() {
        mean.max(0.05)
    } else {
        0.05
    };
    let var = if var.is_finite() { var } else { mean };
    enum Dist {
        NegBin(NegativeBinomial),
        Poisson(Poisson),
    }
    let dist = if var > mean * 1.05 {
        let r = mean * mean / (var - mean);
        match NegativeBinomial::new(r, r / (r + mean)) {
            Ok(d) => Dist::NegBin(d),
            Err(_) => return u64::MAX,
        }
    } else {
        match Poisson::new(mean) {
            Ok(d) => Dist::Poisson(d),
            Err(_) => return u64::MAX,
        }
    };
    let sf = |x: u64| match &dist {
        Dist::NegBin(d) => d.sf(x),
        Dist::Poisson(d) => d.sf(x),
    };
    // Exponential then binary search for the smallest x with P(X > x) < alpha.
    let mut hi = (mean.ceil() as u64).max(1);
    while sf(hi) >= alpha {
        if hi > (1 << 40) {
            return u64::MAX;
        }
        hi *= 2;
    }
    let mut lo = 0;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if sf(mid) < alpha {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_threshold_is_far_in_the_tail() {
        let t = count_threshold(10.0, 10.0, 1e-6);
        // P(Poisson(10) >= 28) ~ 2.3e-6, P(>= 29) ~ 7.6e-7
        assert_eq!(t, 29);
        assert!(count_threshold(10.0, 10.0, 1e-3) < t);
    }

    #[test]
    fn overdispersed_counts_raise_the_threshold() {
        assert!(count_threshold(10.0, 100.0, 1e-6) > count_threshold(10.0, 10.0, 1e-6));
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        for (m, v) in [
            (0.0, 0.0),
            (f64::NAN, 1.0),
            (1.0, f64::INFINITY),
            (1e9, 1e18),
            (-1.0, -1.0),
        ] {
            let _ = count_threshold(m, v, 1e-6);
        }
    }
}
