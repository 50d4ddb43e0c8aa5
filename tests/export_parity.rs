//! The exported ONNX graph computes what the candle model computes, in tract-onnx and in
//! candle-onnx, for every family member we ship, at batch 1 and batch > 1.
//!
//! With `SC_INTEROP_DIR` set, the models, inputs and tract's logits are also written there, for
//! `scripts/onnx-interop.sh` to check with `onnx.checker` and onnxruntime.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, ModuleT, Tensor};
use sc_models::onnx::{resnet_to_onnx, to_bytes, ExportOptions, INPUT_NAME, OUTPUT_NAME};
use sc_models::{ArchConfig, Normalization, Shortcut};
use sc_trainer::train::Net;
use tract_onnx::prelude::*;

/// Random weights, with BatchNorm statistics and affine parameters moved away from their
/// initial values so that the inference-form BN is really exercised.
fn trained_looking_net(arch: &ArchConfig, seed: u64) -> Net {
    let net = Net::new(arch, seed, &Device::Cpu).unwrap();
    for (name, var) in net.vars() {
        let n = var.elem_count();
        let t = var.as_tensor();
        let bump = |lo: f64, hi: f64| {
            Tensor::rand(lo as f32, hi as f32, n, &Device::Cpu)
                .unwrap()
                .reshape(t.shape())
                .unwrap()
        };
        let new = if name.ends_with("running_var") {
            Some(bump(0.5, 2.0))
        } else if name.ends_with("running_mean") {
            Some(bump(-0.3, 0.3))
        } else if name.contains(".bn") || name.starts_with("bn1") {
            Some((t + bump(-0.2, 0.2)).unwrap())
        } else {
            None
        };
        if let Some(v) = new {
            var.set(&v).unwrap();
        }
    }
    net
}

fn normalization(c: usize) -> Normalization {
    Normalization {
        mean: (0..c).map(|i| 0.4 + 0.05 * i as f32).collect(),
        std: (0..c).map(|i| 0.25 - 0.02 * i as f32).collect(),
    }
}

/// Pixels in [0, 1]: random noise and a smooth "real-looking" gradient image.
fn inputs(b: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut v = Tensor::rand(0f32, 1f32, (b, c, h, w), &Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let per = c * h * w;
    for i in 0..per {
        let (y, x) = ((i % (h * w)) / w, i % w);
        v[i] = ((x + y) as f32 / (h + w) as f32).clamp(0.0, 1.0);
    }
    v
}

fn candle_logits(
    net: &Net,
    norm: &Normalization,
    x: &[f32],
    shape: (usize, usize, usize, usize),
) -> Vec<f32> {
    let (b, c, h, w) = shape;
    let x = Tensor::from_slice(x, shape, &Device::Cpu).unwrap();
    let mean = Tensor::from_slice(&norm.mean, (1, c, 1, 1), &Device::Cpu).unwrap();
    let std = Tensor::from_slice(&norm.std, (1, c, 1, 1), &Device::Cpu).unwrap();
    let xn = x.broadcast_sub(&mean).unwrap().broadcast_div(&std).unwrap();
    let y = net.model.forward_t(&xn, false).unwrap();
    assert_eq!(y.dims()[0], b);
    let _ = (h, w);
    y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn tract_logits(bytes: &[u8], x: &[f32], shape: (usize, usize, usize, usize)) -> Vec<f32> {
    let (b, c, h, w) = shape;
    let model = tract_onnx::onnx()
        .model_for_read(&mut std::io::Cursor::new(bytes))
        .unwrap()
        .with_input_fact(0, f32::fact([b, c, h, w]).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let input = tract_ndarray::Array4::from_shape_vec((b, c, h, w), x.to_vec()).unwrap();
    let out = model
        .run(tvec!(tract_onnx::prelude::Tensor::from(input).into()))
        .unwrap();
    out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

fn candle_onnx_logits(bytes: &[u8], x: &[f32], shape: (usize, usize, usize, usize)) -> Vec<f32> {
    let model = <candle_onnx::onnx::ModelProto as prost::Message>::decode(bytes).unwrap();
    let t = candle_core::Tensor::from_slice(x, shape, &Device::Cpu).unwrap();
    let out =
        candle_onnx::simple_eval(&model, HashMap::from([(INPUT_NAME.to_string(), t)])).unwrap();
    out[OUTPUT_NAME]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
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
    assert_eq!(
        max_abs_diff(&[f32::INFINITY], &[f32::INFINITY]),
        f32::INFINITY
    );
}

fn assert_close(what: &str, a: &[f32], b: &[f32], classes: usize) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    let diff = max_abs_diff(a, b);
    assert!(
        diff <= 1e-4 * scale,
        "{what}: max abs diff {diff} (logit scale {scale})"
    );
    // The predicted class agrees wherever the reference's top two logits are not a near-tie
    // (inputs are random draws; a tie within the tolerance may legitimately flip).
    for (ra, rb) in a.chunks(classes).zip(b.chunks(classes)) {
        let mut order: Vec<usize> = (0..classes).collect();
        order.sort_by(|&i, &j| rb[j].total_cmp(&rb[i]));
        if rb[order[0]] - rb[order[1]] > 2e-4 * scale {
            let top_a = (0..classes).fold(0, |bi, i| if ra[i] > ra[bi] { i } else { bi });
            assert_eq!(top_a, order[0], "{what}: argmax differs");
        }
    }
}

fn check(arch: ArchConfig, tag: &str) {
    let net = trained_looking_net(&arch, 11);
    let norm = normalization(arch.in_channels);
    let classes: Vec<String> = (0..arch.num_classes).map(|i| format!("class{i}")).collect();
    let weights = net.tensors();
    let opts = ExportOptions {
        normalization: norm.clone(),
        class_names: classes,
        extra_metadata: vec![("sc.producer".into(), "parity-test".into())],
    };
    let bytes = to_bytes(&resnet_to_onnx(&arch, &weights, &opts).unwrap());
    let (c, h, w) = (arch.in_channels, arch.height, arch.width);
    let dump = std::env::var_os("SC_INTEROP_DIR").map(PathBuf::from);
    if let Some(d) = &dump {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join(format!("{tag}.onnx")), &bytes).unwrap();
    }
    for b in [1usize, 3] {
        let x = inputs(b, c, h, w);
        let shape = (b, c, h, w);
        let reference = candle_logits(&net, &norm, &x, shape);
        let t = tract_logits(&bytes, &x, shape);
        assert_close(
            &format!("{tag} b{b} tract"),
            &t,
            &reference,
            arch.num_classes,
        );
        // Our runtime's native executor (the sc-kernels convolutions) on the same file; the
        // runtime takes gray or RGB models only.
        if c == 1 || c == 3 {
            let native = sc_runtime::Classifier::from_bytes(&bytes, tag)
                .unwrap()
                .with_native()
                .unwrap();
            let n = native.logits_for_input(&x).unwrap().concat();
            assert_close(
                &format!("{tag} b{b} native"),
                &n,
                &reference,
                arch.num_classes,
            );
        }
        let co = candle_onnx_logits(&bytes, &x, shape);
        assert_close(
            &format!("{tag} b{b} candle-onnx"),
            &co,
            &reference,
            arch.num_classes,
        );
        if let Some(d) = &dump {
            let raw = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
            std::fs::write(d.join(format!("{tag}.b{b}.input.f32")), raw(&x)).unwrap();
            std::fs::write(d.join(format!("{tag}.b{b}.tract.f32")), raw(&t)).unwrap();
            std::fs::write(
                d.join(format!("{tag}.b{b}.shape")),
                format!("{b} {c} {h} {w} {}", arch.num_classes),
            )
            .unwrap();
        }
    }
}

#[test]
fn resnet20_cifar_agrees_in_all_runtimes() {
    check(ArchConfig::resnet(20, 3, 32, 32, 10).unwrap(), "resnet20");
}

#[test]
fn resnet56_cifar_agrees_in_all_runtimes() {
    check(ArchConfig::resnet(56, 3, 32, 32, 10).unwrap(), "resnet56");
}

#[test]
fn resnet20_fashion_mnist_agrees_in_all_runtimes() {
    check(
        ArchConfig::resnet(20, 1, 28, 28, 10).unwrap(),
        "resnet20-1x28",
    );
}

#[test]
fn projection_shortcut_and_odd_sizes_agree() {
    let mut a = ArchConfig::resnet(8, 3, 13, 11, 7).unwrap();
    a.shortcut = Shortcut::B;
    check(a, "resnet8-b-13x11");
    check(ArchConfig::resnet(8, 2, 9, 9, 4).unwrap(), "resnet8-a-9x9");
}

#[test]
fn the_downsampling_stem_of_large_inputs_agrees() {
    let a = ArchConfig::resnet(8, 3, 64, 64, 5).unwrap();
    assert_eq!(a.stem_stride, 2, "64 px and more get the stride-2 stem");
    assert_eq!(ArchConfig::resnet(8, 3, 63, 80, 5).unwrap().stem_stride, 1);
    check(a, "resnet8-stem2-64x64");
    check(
        ArchConfig::resnet(8, 3, 70, 97, 3).unwrap(),
        "resnet8-stem2-70x97",
    );
}

#[test]
fn metadata_is_complete() {
    let arch = ArchConfig::resnet(20, 3, 32, 32, 10).unwrap();
    let net = Net::new(&arch, 0, &Device::Cpu).unwrap();
    let opts = ExportOptions {
        normalization: normalization(3),
        class_names: (0..10).map(|i| i.to_string()).collect(),
        extra_metadata: vec![],
    };
    let m = resnet_to_onnx(&arch, &net.tensors(), &opts).unwrap();
    let keys: Vec<&str> = m.metadata_props.iter().map(|p| p.key.as_str()).collect();
    for k in [
        "sc.classes",
        "sc.input",
        "sc.normalization",
        "sc.architecture",
        "sc.parameters",
    ] {
        assert!(keys.contains(&k), "{k} missing");
    }
    let params = m
        .metadata_props
        .iter()
        .find(|p| p.key == "sc.parameters")
        .unwrap();
    assert_eq!(params.value, "269722");
    // A weight missing from the map is a clear error.
    let mut w = net.tensors();
    w.remove("layer2.0.bn1.running_var");
    let e = resnet_to_onnx(&arch, &w, &opts).unwrap_err().to_string();
    assert!(e.contains("layer2.0.bn1.running_var"), "{e}");
    let _ = DType::F32;
}
