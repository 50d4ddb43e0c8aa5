//! Weight averaging for the end of a run: an exponential moving average (EMA) of every variable
//! (weights and BatchNorm statistics), updated every few steps once the run is far enough in.
//! Validation, the test split and the export use the average once it exists; the checkpoint keeps
//! it, so a resumed run goes on exactly.

use std::collections::HashMap;

use anyhow::bail;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

/// `ema` in the config: `avg = decay * avg + (1 - decay) * weights` every `every` iterations from
/// `start` (a fraction of the run) on; the first update copies the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmaConfig {
    /// Weight of the average so far, in (0, 1) (0.99: about the last 100 updates).
    pub decay: f64,
    /// Iterations between updates.
    #[serde(default = "default_every")]
    pub every: usize,
    /// Where the averaging starts, as a fraction of the run in [0, 1).
    #[serde(default)]
    pub start: f64,
}

fn default_every() -> usize {
    5
}

impl EmaConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.decay > 0.0 && self.decay < 1.0) {
            bail!("ema.decay must be in (0, 1), got {}", self.decay);
        }
        if self.every == 0 {
            bail!("ema.every must be at least 1");
        }
        if !(0.0..1.0).contains(&self.start) {
            bail!(
                "ema.start must be a fraction of the run in [0, 1), got {}",
                self.start
            );
        }
        Ok(())
    }
}

/// The running average of a run's variables.
pub struct Averager {
    decay: f64,
    every: usize,
    first: usize,
    avg: HashMap<String, Tensor>,
}

impl Averager {
    /// For a run of `total` iterations (`None` when the config has no `ema`).
    pub fn new(cfg: Option<&EmaConfig>, total: usize) -> Option<Averager> {
        cfg.map(|c| Averager {
            decay: c.decay,
            every: c.every,
            first: ((c.start * total as f64).floor() as usize).max(1),
            avg: HashMap::new(),
        })
    }

    /// Whether the average exists yet (it stands in for the weights from then on).
    pub fn active(&self) -> bool {
        !self.avg.is_empty()
    }

    /// Folds the weights in after iteration `done` when an update is due.
    pub fn step(&mut self, done: usize, vars: &HashMap<String, Var>) -> anyhow::Result<()> {
        if done < self.first || (done - self.first) % self.every != 0 {
            return Ok(());
        }
        for (name, var) in vars {
            let w = var.as_detached_tensor();
            let next = match self.avg.get(name) {
                None => w.copy()?,
                Some(a) => ((a * self.decay)? + (w * (1.0 - self.decay))?)?,
            };
            self.avg.insert(name.clone(), next);
        }
        Ok(())
    }

    /// The average, for the checkpoint.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.avg
            .iter()
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect()
    }

    /// Takes the checkpoint's average back (empty: not started yet).
    pub fn restore(&mut self, avg: &HashMap<String, Tensor>) {
        self.avg = avg.clone();
    }

    /// Puts the average into the variables; returns the weights it replaced ([`Averager::put`]
    /// puts them back).
    pub fn swap_in(&self, vars: &HashMap<String, Var>) -> anyhow::Result<HashMap<String, Tensor>> {
        let mut kept = HashMap::new();
        for (name, var) in vars {
            let Some(a) = self.avg.get(name) else {
                bail!("the weight average has no {name}");
            };
            kept.insert(name.clone(), var.as_detached_tensor().copy()?);
            var.set(a)?;
        }
        Ok(kept)
    }

    /// Sets the variables to `weights` (what [`Averager::swap_in`] returned).
    pub fn put(
        vars: &HashMap<String, Var>,
        weights: &HashMap<String, Tensor>,
    ) -> anyhow::Result<()> {
        for (name, var) in vars {
            if let Some(w) = weights.get(name) {
                var.set(w)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn vars(v: f32) -> HashMap<String, Var> {
        HashMap::from([(
            "w".to_string(),
            Var::from_tensor(&Tensor::new(&[v, 2.0 * v], &Device::Cpu).unwrap()).unwrap(),
        )])
    }

    fn get(m: &HashMap<String, Var>) -> Vec<f32> {
        m["w"].as_tensor().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn updates_start_late_come_every_few_steps_and_swap_both_ways() {
        let cfg = EmaConfig {
            decay: 0.5,
            every: 2,
            start: 0.5,
        };
        cfg.validate().unwrap();
        let mut a = Averager::new(Some(&cfg), 8).unwrap();
        let v = vars(0.0);
        for done in 1..=8 {
            v["w"]
                .set(&Tensor::new(&[done as f32, 2.0 * done as f32], &Device::Cpu).unwrap())
                .unwrap();
            a.step(done, &v).unwrap();
            // Nothing before half the run.
            assert_eq!(a.active(), done >= 4, "after {done}");
        }
        // Updates at 4 (copy), 6 and 8: ((4 * .5 + 6 * .5) * .5 + 8 * .5) = 6.5.
        let kept = a.swap_in(&v).unwrap();
        assert_eq!(get(&v), [6.5, 13.0]);
        Averager::put(&v, &kept).unwrap();
        assert_eq!(get(&v), [8.0, 16.0]);
        for bad in [0.0, 1.0, f64::NAN] {
            let c = EmaConfig {
                decay: bad,
                ..cfg.clone()
            };
            assert!(c.validate().unwrap_err().to_string().contains("ema.decay"));
        }
        assert!(EmaConfig {
            every: 0,
            ..cfg.clone()
        }
        .validate()
        .is_err());
        assert!(EmaConfig { start: 1.0, ..cfg }.validate().is_err());
    }
}
