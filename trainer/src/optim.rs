//! SGD with momentum, Nesterov and weight decay — candle-nn's `SGD` has neither momentum nor decay.
//!
//! Two momentum formulations, which differ when the LR moves fast (as in one cycle):
//! - `pytorch`: `v = m·v + g;  w -= lr·v` (Nesterov: `w -= lr·(g + m·v)`);
//! - `caffe`:   `v = m·v + lr·g;  w -= v` (the paper's Caffe solver; Nesterov: `w -= (1+m)·v - m·v_prev`).
//!
//! Weight decay is L2 added to the gradient (`g += wd·w`), optionally skipped for BN and biases.
//! BatchNorm running statistics are never touched.

use std::collections::HashMap;

use candle_core::{backprop::GradStore, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

use sc_models::resnet::ParamKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MomentumStyle {
    /// `v = m·v + g; w -= lr·v` (PyTorch, TensorFlow's MomentumOptimizer).
    #[default]
    Pytorch,
    /// `v = m·v + lr·g; w -= v` (Caffe, the paper's solver).
    Caffe,
}

/// Optimizer settings (SGD); a file may leave out any of them ([`SgdConfig::default`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SgdConfig {
    /// Momentum when the schedule does not set it (paper: 0.9).
    pub momentum: f64,
    pub nesterov: bool,
    /// L2 weight decay (paper: 1e-4).
    pub weight_decay: f64,
    /// Also decay BatchNorm scales/shifts and biases (Caffe and the paper: yes; many modern recipes: no).
    pub decay_bn_and_bias: bool,
    pub style: MomentumStyle,
}

impl Default for SgdConfig {
    /// The paper's SGD: momentum 0.9 (PyTorch style), weight decay 1e-4 on every parameter.
    fn default() -> Self {
        SgdConfig {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-4,
            decay_bn_and_bias: true,
            style: MomentumStyle::Pytorch,
        }
    }
}

impl SgdConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(format!("momentum must be in [0, 1), got {}", self.momentum));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(format!(
                "weight_decay must be >= 0, got {}",
                self.weight_decay
            ));
        }
        Ok(())
    }
}

struct Param {
    name: String,
    var: Var,
    decay: bool,
}

/// The optimizer: parameters in a fixed order, one momentum buffer each.
pub struct Sgd {
    cfg: SgdConfig,
    params: Vec<Param>,
    velocity: Vec<Option<Tensor>>,
}

impl Sgd {
    /// `vars`: every variable by name; `kinds`: the model's names and kinds (decides what trains).
    pub fn new(
        cfg: SgdConfig,
        vars: &HashMap<String, Var>,
        kinds: &[(String, ParamKind)],
    ) -> Result<Self> {
        let mut params = Vec::new();
        for (name, kind) in kinds {
            if !kind.is_trainable() {
                continue;
            }
            let var = vars
                .get(name)
                .ok_or_else(|| candle_core::Error::msg(format!("no variable {name}")))?
                .clone();
            params.push(Param {
                name: name.clone(),
                var,
                decay: cfg.decay_bn_and_bias || !kind.is_bias_or_bn(),
            });
        }
        let velocity = vec![None; params.len()];
        Ok(Sgd {
            cfg,
            params,
            velocity,
        })
    }

    /// The trained variables, in order.
    pub fn vars(&self) -> Vec<Var> {
        self.params.iter().map(|p| p.var.clone()).collect()
    }

    /// The momentum of a step: the schedule's when it sets one, else the configured constant.
    pub fn momentum(&self, scheduled: Option<f64>) -> f64 {
        scheduled.unwrap_or(self.cfg.momentum)
    }

    /// One update with the given LR and momentum (`None`: the configured momentum).
    pub fn step(&mut self, grads: &GradStore, lr: f64, momentum: Option<f64>) -> Result<()> {
        let m = self.momentum(momentum);
        let wd = self.cfg.weight_decay;
        for (p, v) in self.params.iter().zip(self.velocity.iter_mut()) {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            // Detach: a kept gradient would otherwise chain every step's graph.
            let w = p.var.as_detached_tensor();
            let mut g = g.detach();
            if wd > 0.0 && p.decay {
                g = (g + (&w * wd)?)?;
            }
            let new_w = match self.cfg.style {
                MomentumStyle::Pytorch => {
                    let buf = match v.take() {
                        Some(prev) if m > 0.0 => ((prev * m)? + &g)?,
                        _ => g.clone(),
                    };
                    let upd = if self.cfg.nesterov {
                        (&g + (&buf * m)?)?
                    } else {
                        buf.clone()
                    };
                    *v = Some(buf);
                    (w - (upd * lr)?)?
                }
                MomentumStyle::Caffe => {
                    let prev = v.take();
                    let buf = match &prev {
                        Some(prev) if m > 0.0 => ((prev * m)? + (&g * lr)?)?,
                        _ => (&g * lr)?,
                    };
                    let upd = match (&prev, self.cfg.nesterov) {
                        (Some(prev), true) => ((&buf * (1.0 + m))? - (prev * m)?)?,
                        (None, true) => (&buf * (1.0 + m))?,
                        _ => buf.clone(),
                    };
                    *v = Some(buf);
                    (w - upd)?
                }
            };
            p.var.set(&new_w)?;
        }
        Ok(())
    }

    /// Momentum buffers by parameter name (for checkpoints).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.velocity)
            .filter_map(|(p, v)| v.as_ref().map(|v| (p.name.clone(), v.clone())))
            .collect()
    }

    /// Restores momentum buffers saved by [`Sgd::state`].
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        for (p, v) in self.params.iter().zip(self.velocity.iter_mut()) {
            *v = match state.get(&p.name) {
                Some(t) => {
                    if t.dims() != p.var.dims() {
                        candle_core::bail!(
                            "momentum buffer {} has shape {:?}, the parameter {:?}",
                            p.name,
                            t.dims(),
                            p.var.dims()
                        );
                    }
                    Some(t.to_device(p.var.device())?)
                }
                None => None,
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn run(style: MomentumStyle, nesterov: bool, lrs: &[f64]) -> f32 {
        // Minimise f(w) = w² / 2 (gradient w) from w = 1.
        let var = Var::from_tensor(&Tensor::new(&[1f32], &Device::Cpu).unwrap()).unwrap();
        let vars = HashMap::from([("w".to_string(), var.clone())]);
        let cfg = SgdConfig {
            momentum: 0.9,
            nesterov,
            weight_decay: 0.0,
            decay_bn_and_bias: true,
            style,
        };
        let mut opt = Sgd::new(cfg, &vars, &[("w".into(), ParamKind::ConvWeight)]).unwrap();
        for &lr in lrs {
            let loss = (var.as_tensor().sqr().unwrap() * 0.5)
                .unwrap()
                .sum_all()
                .unwrap();
            let grads = loss.backward().unwrap();
            opt.step(&grads, lr, None).unwrap();
        }
        var.as_tensor()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0]
    }

    #[test]
    fn formulations_by_hand() {
        // PyTorch: v1 = g0 = 1, w1 = 1 - 0.1 = 0.9; v2 = 0.9 + 0.9 = 1.8, w2 = 0.9 - 0.18 = 0.72.
        assert!((run(MomentumStyle::Pytorch, false, &[0.1, 0.1]) - 0.72).abs() < 1e-6);
        // Caffe with a changing LR: v1 = 0.1, w1 = 0.9; v2 = 0.09 + 0.2·0.9 = 0.27, w2 = 0.63.
        assert!((run(MomentumStyle::Caffe, false, &[0.1, 0.2]) - 0.63).abs() < 1e-6);
        // PyTorch with the same LR sequence: v2 = 1.8, w2 = 0.9 - 0.36 = 0.54 — they differ.
        assert!((run(MomentumStyle::Pytorch, false, &[0.1, 0.2]) - 0.54).abs() < 1e-6);
        // Nesterov (PyTorch): w1 = 1 - 0.1·(1 + 0.9) = 0.81.
        assert!((run(MomentumStyle::Pytorch, true, &[0.1]) - 0.81).abs() < 1e-6);
    }

    #[test]
    fn weight_decay_skips_bn_when_asked() {
        let w = Var::from_tensor(&Tensor::new(&[1f32], &Device::Cpu).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::new(&[1f32], &Device::Cpu).unwrap()).unwrap();
        let vars = HashMap::from([("w".to_string(), w.clone()), ("b".to_string(), b.clone())]);
        let cfg = SgdConfig {
            momentum: 0.0,
            weight_decay: 0.5,
            decay_bn_and_bias: false,
            ..Default::default()
        };
        let kinds = [
            ("w".to_string(), ParamKind::ConvWeight),
            ("b".to_string(), ParamKind::BnBias),
        ];
        let mut opt = Sgd::new(cfg, &vars, &kinds).unwrap();
        // loss = w + b: gradient 1 for both; only w also gets 0.5·w of decay.
        let loss = (w.as_tensor() + b.as_tensor()).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        opt.step(&grads, 1.0, None).unwrap();
        assert_eq!(w.as_tensor().to_vec1::<f32>().unwrap(), [-0.5]);
        assert_eq!(b.as_tensor().to_vec1::<f32>().unwrap(), [0.0]);
    }
}
