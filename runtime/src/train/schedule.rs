//! Schedules over optimizer steps (numbered from 1): the learning rate (linear warmup, then
//! cosine decay to a floor, or constant) and the batch-size ramp (micro-batches per step).

use crate::error::{Result, RuntimeError};

/// The learning rate at each step.
#[derive(Clone, Debug, PartialEq)]
pub struct LrSchedule {
    /// The rate after warmup.
    pub peak: f64,
    /// Steps of linear warmup from `peak / warmup` at step 1 to `peak` at step `warmup`.
    pub warmup: u64,
    /// The last step of the cosine decay; `None`: constant after warmup.
    pub decay_until: Option<u64>,
    /// The rate the cosine decays to (and stays at after `decay_until`).
    pub floor: f64,
}

impl LrSchedule {
    /// `peak` at every step.
    pub fn constant(peak: f64) -> LrSchedule {
        LrSchedule {
            peak,
            warmup: 0,
            decay_until: None,
            floor: peak,
        }
    }

    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(RuntimeError::new("<training options>", Some("lr"), m));
        if !(self.peak.is_finite() && self.peak > 0.0) {
            return bad(format!(
                "the learning rate must be positive, found {}",
                self.peak
            ));
        }
        if !(self.floor.is_finite() && (0.0..=self.peak).contains(&self.floor)) {
            return bad(format!(
                "the floor must be between 0 and the peak rate {}, found {}",
                self.peak, self.floor
            ));
        }
        if let Some(end) = self.decay_until {
            if end <= self.warmup {
                return bad(format!(
                    "the decay must end after the {} warmup steps, at step {end}",
                    self.warmup
                ));
            }
        }
        Ok(())
    }

    pub fn at(&self, step: u64) -> f64 {
        if step <= self.warmup && self.warmup > 0 {
            return self.peak * step as f64 / self.warmup as f64;
        }
        let Some(end) = self.decay_until else {
            return self.peak;
        };
        if step >= end {
            return self.floor;
        }
        let progress = (step - self.warmup) as f64 / (end - self.warmup) as f64;
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.floor + (self.peak - self.floor) * cosine
    }
}

/// Micro-batches per optimizer step: `(from_step, count)` stages, the first from step 1.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchRamp {
    stages: Vec<(u64, usize)>,
}

impl BatchRamp {
    pub fn constant(count: usize) -> BatchRamp {
        BatchRamp {
            stages: vec![(1, count)],
        }
    }

    /// Reads `STEP:COUNT,…` (e.g. `1:1,100:2,500:4`): from step `STEP` on, `COUNT`
    /// micro-batches per step. Steps must start at 1 and increase; counts must be positive.
    pub fn parse(text: &str) -> Result<BatchRamp> {
        let bad = |m: String| RuntimeError::new("<training options>", Some("batch-ramp"), m);
        let mut stages = Vec::new();
        for part in text.split(',') {
            let (step, count) = part
                .split_once(':')
                .ok_or_else(|| bad(format!("expected STEP:COUNT, found `{part}`")))?;
            let step: u64 = step
                .trim()
                .parse()
                .map_err(|_| bad(format!("bad step `{step}`")))?;
            let count: usize = count
                .trim()
                .parse()
                .map_err(|_| bad(format!("bad count `{count}`")))?;
            if count == 0 {
                return Err(bad("a stage needs at least one micro-batch".into()));
            }
            if stages.last().is_some_and(|&(s, _)| step <= s) {
                return Err(bad(format!("stage steps must increase, found {step}")));
            }
            stages.push((step, count));
        }
        if stages.first().map(|s| s.0) != Some(1) {
            return Err(bad("the first stage must start at step 1".into()));
        }
        Ok(BatchRamp { stages })
    }

    /// The most micro-batches any step takes.
    pub fn most(&self) -> usize {
        self.stages
            .iter()
            .map(|&(_, count)| count)
            .max()
            .unwrap_or(1)
    }

    pub fn at(&self, step: u64) -> usize {
        self.stages
            .iter()
            .rev()
            .find(|&&(from, _)| from <= step)
            .map_or(self.stages[0].1, |s| s.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_the_floor() {
        let s = LrSchedule {
            peak: 1.0,
            warmup: 4,
            decay_until: Some(14),
            floor: 0.1,
        };
        assert_eq!(s.at(1), 0.25);
        assert_eq!(s.at(4), 1.0);
        assert!(
            (s.at(9) - 0.55).abs() < 1e-12,
            "half way: the mean of peak and floor"
        );
        assert_eq!(s.at(14), 0.1);
        assert_eq!(s.at(100), 0.1);
        assert!(s.check().is_ok());
        assert_eq!(LrSchedule::constant(0.5).at(7), 0.5);
    }

    #[test]
    fn ramps_are_read_and_looked_up_by_step() {
        let r = BatchRamp::parse("1:1,3:2,10:4").unwrap();
        assert_eq!(
            [r.at(1), r.at(2), r.at(3), r.at(9), r.at(10), r.at(50)],
            [1, 1, 2, 2, 4, 4]
        );
        for bad in ["2:1", "1:0", "1:1,1:2", "1-1", "1:x"] {
            assert!(BatchRamp::parse(bad).is_err(), "{bad}");
        }
    }
}
