//! Loss-spike and non-finite detection: a step whose loss or gradient norm is NaN or infinite is
//! always rejected; with a factor set, so is a step whose loss exceeds `factor ×` the mean of the
//! last accepted losses (once `window / 2` of them are known). The training step applies the same
//! test itself, given [`SpikeDetector::max_loss`], so a rejected step leaves the state as it was;
//! what happens next is the trainer's policy: skip it, or roll back to the last checkpoint.

use std::collections::VecDeque;

/// What the trainer does with a rejected step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpikePolicy {
    /// Keep the weights and moments from before the step; the batch is consumed.
    Skip,
    /// Restore the last checkpoint (weights, moments, step); the data moves on past the batch.
    Rollback,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SpikeOptions {
    /// Reject a loss above `factor ×` the recent mean; `None`: only non-finite values.
    pub factor: Option<f64>,
    /// How many accepted losses the mean covers.
    pub window: usize,
    pub policy: SpikePolicy,
}

impl Default for SpikeOptions {
    fn default() -> SpikeOptions {
        SpikeOptions {
            factor: None,
            window: 20,
            policy: SpikePolicy::Skip,
        }
    }
}

/// The recent accepted losses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpikeDetector {
    recent: VecDeque<f64>,
}

impl SpikeDetector {
    /// The recent mean, once enough losses are known for the spike test.
    fn mean(&self, options: &SpikeOptions) -> Option<f64> {
        let known = self.recent.len() >= options.window.div_ceil(2).max(1);
        known.then(|| self.recent.iter().sum::<f64>() / self.recent.len() as f64)
    }

    /// The highest loss the next step may have: `factor ×` the recent mean, or `inf`.
    pub fn max_loss(&self, options: &SpikeOptions) -> f64 {
        match (options.factor, self.mean(options)) {
            (Some(factor), Some(mean)) => factor * mean,
            _ => f64::INFINITY,
        }
    }

    /// Why a step with this loss and gradient norm must not be applied, if it must not: the
    /// words for the test the step itself applies (its `accepted` output decides).
    pub fn judge(&self, options: &SpikeOptions, loss: f64, grad_norm: f64) -> Option<String> {
        if !loss.is_finite() {
            return Some(format!("the loss is {loss}"));
        }
        if !grad_norm.is_finite() {
            return Some(format!("the gradient norm is {grad_norm}"));
        }
        let (factor, mean) = (options.factor?, self.mean(options)?);
        (loss > factor * mean)
            .then(|| format!("the loss {loss:.4} is above {factor} × the recent mean {mean:.4}"))
    }

    pub fn accept(&mut self, options: &SpikeOptions, loss: f64) {
        self.recent.push_back(loss);
        while self.recent.len() > options.window {
            self.recent.pop_front();
        }
    }

    pub fn losses(&self) -> impl Iterator<Item = f64> + '_ {
        self.recent.iter().copied()
    }

    pub fn from_losses(losses: impl IntoIterator<Item = f64>) -> SpikeDetector {
        SpikeDetector {
            recent: losses.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_are_always_rejected_and_spikes_when_asked() {
        let mut options = SpikeOptions::default();
        let mut d = SpikeDetector::default();
        assert!(d.judge(&options, f64::NAN, 1.0).is_some());
        assert!(d.judge(&options, 1.0, f64::INFINITY).is_some());
        for _ in 0..10 {
            d.accept(&options, 2.0);
        }
        assert!(
            d.judge(&options, 100.0, 1.0).is_none(),
            "no factor: no spike check"
        );
        options.factor = Some(3.0);
        assert!(d.judge(&options, 5.9, 1.0).is_none());
        assert!(d.judge(&options, 6.1, 1.0).is_some());
    }
}
