//! Autocast (`ops::set_autocast`): convolutions and the classifier run in a 16-bit type,
//! everything else (weights, BatchNorm, loss, gradients) stays f32, and the result is the f32
//! network's up to 16-bit rounding. The trainer uses bf16 on CUDA; candle's CPU matmul has no bf16,
//! so on the CPU the same mechanism is checked with f16 (10 mantissa bits instead of 7).

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sc_models::config::ArchConfig;
use sc_models::ops;
use sc_models::resnet::ResNet;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    // A fixed pseudo-random field (xorshift), values in about [-1, 1].
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// The largest `|a - b|` of equal-length slices, a NaN on either side counting as an infinite
/// error (`f32::max` would skip it: `1f32.max(f32::NAN) == 1.0`).
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| match (x - y).abs() {
            d if d.is_nan() => f32::INFINITY,
            d => d,
        })
        .fold(0f32, f32::max)
}

#[test]
fn max_abs_diff_counts_nan_as_infinite_error() {
    assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.0, 2.5]), 0.5);
    assert_eq!(max_abs_diff(&[f32::NAN, 2.0], &[1.0, 2.0]), f32::INFINITY);
    assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.0, f32::NAN]), f32::INFINITY);
}

/// Loss, logits and every trainable parameter's gradient of one training step.
fn step(autocast: Option<DType>) -> Vec<(String, Tensor)> {
    let mut arch = ArchConfig::resnet(8, 3, 12, 12, 4).unwrap();
    arch.widths = [16, 16, 32];
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let model = ResNet::new(vb, &arch).unwrap();
    sc_models::init::initialize(&vm, model.params(), 3).unwrap();
    let x = randn(&[6, 3, 12, 12], 42);
    let y = Tensor::new(&[0u32, 1, 2, 3, 0, 1], &Device::Cpu).unwrap();
    ops::set_autocast(autocast);
    let logits = model.forward_t(&x, true).unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
    let grads = loss.backward().unwrap();
    ops::set_autocast(None);
    let data = vm.data().lock().unwrap();
    let mut out = vec![("loss".to_string(), loss), ("logits".to_string(), logits)];
    for (name, kind) in model.params() {
        if kind.is_trainable() {
            let g = grads.get(data[name].as_tensor()).expect("a gradient");
            out.push((format!("grad {name}"), g.clone()));
        }
    }
    out
}

#[test]
fn f16_autocast_matches_f32_up_to_rounding() {
    let full = step(None);
    let half = step(Some(DType::F16));
    let mut differs = false;
    for ((name, a), (_, b)) in full.iter().zip(&half) {
        assert_eq!(b.dtype(), DType::F32, "{name}: autocast must hand back f32");
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let err = max_abs_diff(&a, &b);
        // f16 rounds each operand to 2^-11 relative, and candle's CPU f16 convolution sums in
        // f16 (the stem's weight gradient: ~860 products, measured 3.6% of its scale). A wiring
        // mistake (a missing cast back, a wrong transpose, a lost gradient) is off by ~100%.
        assert!(
            err <= 0.06 * scale,
            "{name}: max error {err} vs scale {scale}"
        );
        differs |= err > 1e-6 * scale;
    }
    assert!(
        differs,
        "f16 autocast changed nothing: it is not running in f16"
    );
}

#[test]
fn autocast_is_per_thread_and_off_by_default() {
    assert_eq!(ops::autocast(), None);
    ops::set_autocast(Some(DType::BF16));
    let other = std::thread::spawn(ops::autocast).join().unwrap();
    assert_eq!(other, None);
    ops::set_autocast(None);
}
