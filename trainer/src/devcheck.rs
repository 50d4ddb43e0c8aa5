//! `sc-trainer device-check`: the same weights and batch through forward and backward on the CPU
//! and on another device; reports the largest differences (the GPU smoke test's first step).

use candle_core::{DType, Device, ModuleT, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use sc_models::ArchConfig;

use crate::train::Net;

#[derive(Debug, Serialize)]
pub struct DeviceCheck {
    pub device: String,
    pub model: String,
    pub batch: usize,
    pub loss_cpu: f32,
    pub loss_device: f32,
    /// max |logits_cpu - logits_dev| / max |logits_cpu|
    pub logits_rel_diff: f32,
    /// The worst parameter's max |grad_cpu - grad_dev| / max |grad_cpu|.
    pub grad_rel_diff: f32,
    pub worst_grad: String,
    pub tolerance: f32,
    pub ok: bool,
}

fn rel_diff(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
    let a = a
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?;
    let b = b
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?;
    let scale = a.abs()?.max(0)?.to_scalar::<f32>()?.max(1e-12);
    Ok((a - b)?.abs()?.max(0)?.to_scalar::<f32>()? / scale)
}

/// Runs the comparison; `tolerance` is relative to each tensor's largest magnitude.
pub fn check(
    model: &str,
    device: &str,
    batch: usize,
    seed: u64,
    tolerance: f32,
) -> anyhow::Result<DeviceCheck> {
    let depth = ArchConfig::depth_from_name(model).map_err(anyhow::Error::msg)?;
    let arch = ArchConfig::resnet(depth, 3, 32, 32, 10).map_err(anyhow::Error::msg)?;
    let dev = crate::device::open(device)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x: Vec<f32> = (0..batch * 3 * 32 * 32)
        .map(|_| rng.gen_range(-2.0..2.0))
        .collect();
    let y: Vec<u32> = (0..batch).map(|_| rng.gen_range(0..10)).collect();
    let run =
        |d: &Device| -> anyhow::Result<(Net, Tensor, Tensor, candle_core::backprop::GradStore)> {
            let net = Net::new(&arch, seed, d)?;
            let xt = Tensor::from_slice(&x, (batch, 3, 32, 32), d)?;
            let yt = Tensor::from_slice(&y, batch, d)?;
            let logits = net.model.forward_t(&xt, true)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &yt)?;
            let grads = loss.backward()?;
            Ok((net, logits, loss, grads))
        };
    let (cpu_net, cpu_logits, cpu_loss, cpu_grads) = run(&Device::Cpu)?;
    let (dev_net, dev_logits, dev_loss, dev_grads) = run(&dev)?;
    let cpu_vars = cpu_net.vars();
    let dev_vars = dev_net.vars();
    let (mut worst, mut worst_name) = (0f32, String::new());
    for (name, kind) in cpu_net.model.params() {
        if !kind.is_trainable() {
            continue;
        }
        let cv = &cpu_vars[name];
        let dv = &dev_vars[name];
        let (Some(gc), Some(gd)) = (cpu_grads.get(cv.as_tensor()), dev_grads.get(dv.as_tensor()))
        else {
            anyhow::bail!("no gradient for {name}");
        };
        let d = rel_diff(gc, gd)?;
        if d > worst || worst_name.is_empty() {
            worst = d;
            worst_name = name.clone();
        }
    }
    let logits_rel_diff = rel_diff(&cpu_logits, &dev_logits)?;
    Ok(DeviceCheck {
        device: device.to_string(),
        model: model.to_string(),
        batch,
        loss_cpu: cpu_loss.to_device(&Device::Cpu)?.to_scalar()?,
        loss_device: dev_loss.to_device(&Device::Cpu)?.to_scalar()?,
        logits_rel_diff,
        grad_rel_diff: worst,
        worst_grad: worst_name,
        tolerance,
        ok: logits_rel_diff <= tolerance && worst <= tolerance,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_against_itself_is_exact() {
        let r = super::check("resnet8", "cpu", 4, 1, 1e-3).unwrap();
        assert!(r.ok, "{r:?}");
        assert_eq!(r.logits_rel_diff, 0.0);
        assert_eq!(r.grad_rel_diff, 0.0);
        assert!(super::check("resnet8", "cuda:0", 4, 1, 1e-3).is_err() || cfg!(feature = "cuda"));
    }
}
