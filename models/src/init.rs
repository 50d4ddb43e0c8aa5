//! Seeded initialisation: the same seed gives the same weights on every machine.

use candle_core::{Result, Tensor};
use candle_nn::VarMap;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};

use crate::resnet::ParamKind;

/// Fills the model's variables: He (MSRA) normal `N(0, 2 / fan_in)` for convolutions, as in the
/// paper's Caffe files; PyTorch's default `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` for the classifier;
/// BN scale 1, shift 0, running mean 0, running variance 1.
pub fn initialize(varmap: &VarMap, params: &[(String, ParamKind)], seed: u64) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = varmap.data().lock().expect("varmap lock");
    let mut fc_fan_in = 1usize;
    for (name, kind) in params {
        let var = data
            .get(name)
            .ok_or_else(|| candle_core::Error::msg(format!("no variable named {name}")))?;
        let shape = var.shape().clone();
        let n = shape.elem_count();
        let values: Vec<f32> = match kind {
            ParamKind::ConvWeight => {
                let fan_in: usize = shape.dims()[1..].iter().product();
                let normal = Normal::new(0.0, (2.0 / fan_in as f64).sqrt()).expect("valid std");
                (0..n).map(|_| normal.sample(&mut rng) as f32).collect()
            }
            ParamKind::LinearWeight | ParamKind::LinearBias => {
                if *kind == ParamKind::LinearWeight {
                    fc_fan_in = shape.dims()[1];
                }
                let bound = 1.0 / (fc_fan_in as f64).sqrt();
                let u = Uniform::new_inclusive(-bound, bound);
                (0..n).map(|_| u.sample(&mut rng) as f32).collect()
            }
            ParamKind::BnWeight | ParamKind::RunningVar => vec![1.0; n],
            ParamKind::BnBias | ParamKind::RunningMean => vec![0.0; n],
        };
        let t = Tensor::from_vec(values, shape, var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}
