//! Learning-rate schedules, evaluated per iteration (pure functions).
//!
//! `it` counts optimiser steps from 0 (the lr used for the first step is `lr_at(0)`), like
//! upstream `PolyWarmupAdamW`, which sets the lr from its step counter before each step.
//!
//! * **Warmup** (all kinds, `warmup_iters = W > 0`): `lr = base · (it + 1) / W` for `it < W`,
//!   so the last warmup step uses the full `base` and no step uses lr 0.
//! * **Cosine**: for `it ≥ W`, `p = (it − W) / (T − W)` clamped to [0, 1] and
//!   `lr = min + (base − min) · (1 + cos(π p)) / 2`.
//! * **Poly** (upstream): `lr = base · (1 − it / T)^power` (clamped at 0 for `it ≥ T`); upstream
//!   uses power 1 and no warmup. With a warmup, the poly factor is still computed from the
//!   global `it` (upstream's formula), after the warmup ends.
//! * **Constant**: `base` after the warmup.

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Kind of schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Linear warmup then cosine decay to `min_lr`.
    #[default]
    Cosine,
    /// `base · (1 − it/T)^power`.
    Poly,
    /// Linear warmup then constant.
    Constant,
}

/// A per-iteration learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Schedule kind.
    pub kind: ScheduleKind,
    /// Peak learning rate.
    pub base_lr: f64,
    /// Final learning rate of the cosine schedule (ignored by the others).
    pub min_lr: f64,
    /// Linear-warmup iterations.
    pub warmup_iters: u64,
    /// Total iterations `T` of the run.
    pub total_iters: u64,
    /// Poly exponent.
    pub power: f64,
}

/// Epoch-based description of a schedule (what the config holds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScheduleOptions {
    /// Schedule kind.
    pub kind: ScheduleKind,
    /// Peak learning rate.
    pub base_lr: f64,
    /// Final learning rate of the cosine schedule.
    pub min_lr: f64,
    /// Warmup length in epochs (may be fractional); rounded to whole iterations.
    pub warmup_epochs: f64,
    /// Poly exponent.
    pub power: f64,
    /// Number of epochs.
    pub epochs: u64,
    /// Iterations per epoch.
    pub iterations_per_epoch: u64,
}

impl LrSchedule {
    /// Upstream PBIP: poly, power 1, no warmup.
    pub fn upstream_poly(base_lr: f64, total_iters: u64) -> Self {
        LrSchedule {
            kind: ScheduleKind::Poly,
            base_lr,
            min_lr: 0.0,
            warmup_iters: 0,
            total_iters,
            power: 1.0,
        }
    }

    /// From epoch-based options: `T = epochs · iterations_per_epoch`,
    /// `W = round(warmup_epochs · iterations_per_epoch)`.
    pub fn from_options(o: &ScheduleOptions) -> Result<Self> {
        let total = o
            .epochs
            .checked_mul(o.iterations_per_epoch)
            .ok_or_else(|| {
                DataError::InvalidOption(
                    "scheduler: epochs × iterations_per_epoch overflows".into(),
                )
            })?;
        if !(o.warmup_epochs.is_finite() && o.warmup_epochs >= 0.0) {
            return Err(DataError::InvalidOption(format!(
                "scheduler.warmup_epochs must be >= 0, got {}",
                o.warmup_epochs
            )));
        }
        let s = LrSchedule {
            kind: o.kind,
            base_lr: o.base_lr,
            min_lr: o.min_lr,
            warmup_iters: (o.warmup_epochs * o.iterations_per_epoch as f64).round() as u64,
            total_iters: total,
            power: o.power,
        };
        s.validate()?;
        Ok(s)
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(DataError::InvalidOption(format!("scheduler: {m}")));
        if !(self.base_lr.is_finite() && self.base_lr >= 0.0) {
            return bad(format!("lr must be finite and >= 0, got {}", self.base_lr));
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0 && self.min_lr <= self.base_lr) {
            return bad(format!("min_lr must be in [0, lr], got {}", self.min_lr));
        }
        if self.total_iters == 0 {
            return bad("total iterations must be > 0".into());
        }
        if self.kind == ScheduleKind::Poly && !(self.power.is_finite() && self.power > 0.0) {
            return bad(format!("poly power must be > 0, got {}", self.power));
        }
        if self.warmup_iters > self.total_iters {
            return bad(format!(
                "warmup ({} iterations) is longer than the run ({} iterations)",
                self.warmup_iters, self.total_iters
            ));
        }
        Ok(())
    }

    /// Learning rate for iteration `it` (0-based).
    pub fn lr_at(&self, it: u64) -> f64 {
        if it < self.warmup_iters {
            return self.base_lr * (it + 1) as f64 / self.warmup_iters as f64;
        }
        match self.kind {
            ScheduleKind::Constant => self.base_lr,
            ScheduleKind::Poly => {
                let f = (1.0 - it as f64 / self.total_iters.max(1) as f64).max(0.0);
                self.base_lr * f.powf(self.power)
            }
            ScheduleKind::Cosine => {
                let span = self.total_iters.saturating_sub(self.warmup_iters);
                let p = if span == 0 {
                    1.0
                } else {
                    ((it - self.warmup_iters) as f64 / span as f64).clamp(0.0, 1.0)
                };
                self.min_lr
                    + (self.base_lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn poly_upstream_linear() {
        // lr 5e-5, T = 8 * ceil(23422/10) = 18744
        let s = LrSchedule::upstream_poly(5e-5, 18744);
        assert_eq!(s.lr_at(0), 5e-5);
        assert!(close(s.lr_at(9372), 2.5e-5));
        assert!(close(s.lr_at(18743), 5e-5 / 18744.0));
        assert_eq!(s.lr_at(18744), 0.0);
        assert_eq!(s.lr_at(20000), 0.0);
        // T = 10: lr0 (1 - 3/10) = 0.7 lr0
        let s = LrSchedule::upstream_poly(1.0, 10);
        assert!(close(s.lr_at(3), 0.7));
    }

    #[test]
    fn poly_power_two() {
        let s = LrSchedule {
            power: 2.0,
            ..LrSchedule::upstream_poly(2.0, 4)
        };
        // 2 * (1 - 1/4)^2 = 2 * 0.5625 = 1.125
        assert!(close(s.lr_at(1), 1.125));
        // 2 * (1/2)^2 = 0.5
        assert!(close(s.lr_at(2), 0.5));
    }

    #[test]
    fn cosine_with_warmup_hand_values() {
        // base 1e-3, 1 warmup epoch of 4 iterations, 3 epochs -> T = 12, W = 4.
        let s = LrSchedule::from_options(&ScheduleOptions {
            kind: ScheduleKind::Cosine,
            base_lr: 1e-3,
            min_lr: 0.0,
            warmup_epochs: 1.0,
            power: 1.0,
            epochs: 3,
            iterations_per_epoch: 4,
        })
        .unwrap();
        assert_eq!((s.warmup_iters, s.total_iters), (4, 12));
        // Warmup: 0.25e-3, 0.5e-3, 0.75e-3, 1e-3.
        assert!(close(s.lr_at(0), 0.25e-3));
        assert!(close(s.lr_at(1), 0.5e-3));
        assert!(close(s.lr_at(3), 1e-3));
        // it = 4: p = 0 -> base.
        assert!(close(s.lr_at(4), 1e-3));
        // it = 6: p = 2/8 = 0.25, (1 + cos(pi/4))/2 = (1 + 0.70710678)/2 = 0.85355339
        assert!((s.lr_at(6) - 0.853_553_390_593_273_8e-3).abs() < 1e-15);
        // it = 8: p = 0.5 -> half.
        assert!(close(s.lr_at(8), 0.5e-3));
        // it = 12: p = 1 -> min.
        assert!(s.lr_at(12).abs() < 1e-18);
    }

    #[test]
    fn cosine_to_min_lr() {
        let s = LrSchedule {
            kind: ScheduleKind::Cosine,
            base_lr: 1.0,
            min_lr: 0.1,
            warmup_iters: 0,
            total_iters: 10,
            power: 1.0,
        };
        assert!(close(s.lr_at(0), 1.0));
        // p = 0.5: 0.1 + 0.9 * 0.5 = 0.55
        assert!(close(s.lr_at(5), 0.55));
        assert!(close(s.lr_at(10), 0.1));
        assert!(close(s.lr_at(99), 0.1));
    }

    #[test]
    fn constant_and_fractional_warmup() {
        let s = LrSchedule::from_options(&ScheduleOptions {
            kind: ScheduleKind::Constant,
            base_lr: 2.0,
            min_lr: 0.0,
            warmup_epochs: 0.5,
            power: 1.0,
            epochs: 2,
            iterations_per_epoch: 5,
        })
        .unwrap();
        // W = round(2.5) = 3 (round half away from zero)
        assert_eq!(s.warmup_iters, 3);
        assert!(close(s.lr_at(0), 2.0 / 3.0));
        assert!(close(s.lr_at(2), 2.0));
        assert!(close(s.lr_at(7), 2.0));
    }

    #[test]
    fn invalid_rejected() {
        let mut o = ScheduleOptions {
            kind: ScheduleKind::Cosine,
            base_lr: 1.0,
            min_lr: 0.0,
            warmup_epochs: 5.0,
            power: 1.0,
            epochs: 2,
            iterations_per_epoch: 3,
        };
        assert!(LrSchedule::from_options(&o).is_err()); // warmup longer than run
        o.warmup_epochs = 0.0;
        o.epochs = 0;
        assert!(LrSchedule::from_options(&o).is_err());
        o.epochs = 1;
        o.min_lr = 2.0;
        assert!(LrSchedule::from_options(&o).is_err());
    }
}
