//! The model's analytic gradients against finite differences (f64, training-mode BatchNorm).

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sc_models::{ArchConfig, ResNet};

#[test]
fn resnet_block_gradients_match_finite_differences() {
    let dev = Device::Cpu;
    let mut arch = ArchConfig::resnet(8, 2, 6, 6, 3).unwrap();
    arch.widths = [3, 4, 5]; // small, and both down-sampling blocks exercise the option-A shortcut
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, &dev);
    let model = ResNet::new(vb, &arch).unwrap();
    sc_models::init::initialize(&varmap, model.params(), 3).unwrap();
    // A fixed input (candle's CPU randn is not seedable): the check must not depend on the draw.
    let xs: Vec<f64> = (0..4 * 2 * 6 * 6)
        .map(|i| (i as f64 * 0.37).sin() * 1.3 + (i as f64 * 0.11).cos() * 0.4)
        .collect();
    let x = Tensor::from_vec(xs, (4, 2, 6, 6), &dev).unwrap();
    let y = Tensor::new(&[0u32, 1, 2, 1], &dev).unwrap();
    let loss_of = || -> f64 {
        let logits = model.forward_t(&x, true).unwrap();
        candle_nn::loss::cross_entropy(&logits, &y)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let logits = model.forward_t(&x, true).unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
    let grads = loss.backward().unwrap();
    let vars = varmap.data().lock().unwrap().clone();
    let mut checked = 0;
    for (name, kind) in model.params() {
        if !kind.is_trainable() {
            continue;
        }
        let var = &vars[name];
        let g = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let w0 = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        // A few coordinates of each parameter.
        for &i in &[0, w0.len() / 2, w0.len() - 1] {
            let eps = 1e-5;
            let mut w = w0.clone();
            w[i] += eps;
            var.set(&Tensor::from_vec(w.clone(), var.shape(), &dev).unwrap())
                .unwrap();
            let lp = loss_of();
            w[i] -= 2.0 * eps;
            var.set(&Tensor::from_vec(w, var.shape(), &dev).unwrap())
                .unwrap();
            let lm = loss_of();
            var.set(&Tensor::from_vec(w0.clone(), var.shape(), &dev).unwrap())
                .unwrap();
            let fd = (lp - lm) / (2.0 * eps);
            let err = (fd - g[i]).abs() / (1e-6 + fd.abs().max(g[i].abs()));
            assert!(
                err < 1e-4 || (fd - g[i]).abs() < 1e-8,
                "{name}[{i}]: analytic {} vs numeric {fd}",
                g[i]
            );
            checked += 1;
        }
    }
    assert!(checked > 30);
}
