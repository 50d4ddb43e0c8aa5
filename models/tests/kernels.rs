//! The fast CPU kernels against candle's stock ops: values and gradients (through `backward`),
//! on odd shapes too, on every instruction set the CPU has.
//!
//! Tolerance: every result within `1e-4 · max(1, max |reference|)` of the stock result (f32
//! throughout; the kernels sum in a different order, BatchNorm statistics in f64).

use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{BatchNorm, BatchNormConfig, VarBuilder, VarMap};
use sc_models::custom_ops::{self, micro};
use sc_models::{ops, ArchConfig, ResNet, Shortcut};

const TOL: f32 = 1e-4;

fn assert_close(name: &str, ours: &Tensor, stock: &Tensor) {
    assert_eq!(ours.dims(), stock.dims(), "{name}: shapes");
    let a = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = stock.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    let (i, err) = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .enumerate()
        .fold((0, 0f32), |(bi, be), (i, e)| {
            if e > be || e.is_nan() {
                (i, e)
            } else {
                (bi, be)
            }
        });
    assert!(
        err <= TOL * scale,
        "{name}: max error {err} at {i} (ours {}, stock {}), scale {scale}",
        a[i],
        b[i]
    );
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    // A cheap deterministic generator: candle's randn is not seedable on the CPU.
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let mut u = [0f32; 2];
            for x in &mut u {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *x = ((s >> 40) as f32 + 0.5) / (1u64 << 24) as f32;
            }
            (-2.0 * u[0].ln()).sqrt() * (std::f32::consts::TAU * u[1]).cos()
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// (n, cin, h, w, cout, k, stride, pad)
type ConvShape = (usize, usize, usize, usize, usize, usize, usize, usize);

const CONV_SHAPES: [ConvShape; 13] = [
    (2, 16, 8, 8, 16, 3, 1, 1),
    (1, 3, 7, 7, 5, 3, 1, 1),
    (3, 17, 9, 11, 17, 3, 2, 1),
    (2, 5, 28, 28, 3, 3, 1, 1),
    (2, 16, 7, 7, 32, 1, 2, 0),
    (2, 5, 6, 6, 7, 1, 1, 0),
    (1, 8, 5, 5, 4, 5, 1, 2),
    (2, 4, 8, 8, 20, 3, 1, 0),
    (17, 3, 6, 6, 40, 3, 1, 1),
    (2, 6, 5, 7, 80, 3, 2, 1),
    (1, 32, 4, 4, 64, 3, 1, 1),
    // Channels-last weight gradient: several images per buffer, odd sides, stride 2, 3 row groups.
    (40, 16, 9, 11, 8, 3, 2, 1),
    (3, 48, 6, 5, 24, 3, 1, 1),
];

fn check_conv(shape: ConvShape, seed: u64) {
    let (n, cin, h, w, cout, k, stride, pad) = shape;
    let x = Var::from_tensor(&randn(&[n, cin, h, w], seed)).unwrap();
    let wt = Var::from_tensor(&randn(&[cout, cin, k, k], seed + 1)).unwrap();
    let run = |fast: bool| {
        let f = || {
            let y = ops::conv2d(x.as_tensor(), wt.as_tensor(), stride, pad).unwrap();
            let r = randn(y.dims(), seed + 2);
            let loss = (&y * &r).unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();
            (
                y,
                g.get(x.as_tensor()).unwrap().clone(),
                g.get(wt.as_tensor()).unwrap().clone(),
            )
        };
        if fast {
            f()
        } else {
            custom_ops::with_stock(f)
        }
    };
    let (y0, dx0, dw0) = run(false);
    let (y1, dx1, dw1) = run(true);
    let tag = format!("{shape:?} {:?}", micro::isa());
    assert_close(&format!("conv y {tag}"), &y1, &y0);
    assert_close(&format!("conv dx {tag}"), &dx1, &dx0);
    assert_close(&format!("conv dw {tag}"), &dw1, &dw0);
}

/// Runs `f` once under every instruction set this CPU can run (an AVX-512 machine checks the
/// AVX2 and portable bodies too), one test at a time: the choice is process-wide.
fn on_every_isa(f: impl Fn()) {
    static ISA_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ISA_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let native = micro::isa();
    for isa in micro::available() {
        micro::force_isa(isa);
        f();
    }
    micro::force_isa(native);
}

#[test]
fn conv_matches_stock_on_every_instruction_set() {
    on_every_isa(|| {
        for (i, &s) in CONV_SHAPES.iter().enumerate() {
            check_conv(s, 10 * i as u64);
        }
    });
}

/// Stride-2 convolutions of non-square inputs whose sides differ in parity, where candle's stock
/// backward returns a wrongly shaped input gradient: checked against plain loops instead.
#[test]
fn conv_on_mixed_parity_inputs_matches_direct_loops() {
    for (i, &(n, cin, h, w, cout, k, stride, pad)) in [
        (
            2usize, 3usize, 5usize, 4usize, 4usize, 3usize, 2usize, 1usize,
        ),
        (1, 5, 8, 7, 6, 1, 2, 0),
    ]
    .iter()
    .enumerate()
    {
        let x = Var::from_tensor(&randn(&[n, cin, h, w], 700 + i as u64)).unwrap();
        let wt = Var::from_tensor(&randn(&[cout, cin, k, k], 710 + i as u64)).unwrap();
        let y = ops::conv2d(x.as_tensor(), wt.as_tensor(), stride, pad).unwrap();
        let (ho, wo) = (
            (h + 2 * pad - k) / stride + 1,
            (w + 2 * pad - k) / stride + 1,
        );
        assert_eq!(y.dims(), [n, cout, ho, wo]);
        let r = randn(y.dims(), 720);
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let xs = x
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let ws = wt
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let rs = r.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (mut yr, mut dx, mut dw) = (
            vec![0f32; n * cout * ho * wo],
            vec![0f32; xs.len()],
            vec![0f32; ws.len()],
        );
        for b in 0..n {
            for co in 0..cout {
                for oh in 0..ho {
                    for ow in 0..wo {
                        let o = ((b * cout + co) * ho + oh) * wo + ow;
                        for ci in 0..cin {
                            for kh in 0..k {
                                for kw in 0..k {
                                    let (ih, iw) = (
                                        (oh * stride + kh) as isize - pad as isize,
                                        (ow * stride + kw) as isize - pad as isize,
                                    );
                                    if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                                        continue;
                                    }
                                    let xi = ((b * cin + ci) * h + ih as usize) * w + iw as usize;
                                    let wi = ((co * cin + ci) * k + kh) * k + kw;
                                    yr[o] += xs[xi] * ws[wi];
                                    dx[xi] += rs[o] * ws[wi];
                                    dw[wi] += rs[o] * xs[xi];
                                }
                            }
                        }
                    }
                }
            }
        }
        let t = |v: Vec<f32>, d: &[usize]| Tensor::from_vec(v, d, &Device::Cpu).unwrap();
        assert_close("mixed parity y", &y, &t(yr, y.dims()));
        assert_close(
            "mixed parity dx",
            g.get(x.as_tensor()).unwrap(),
            &t(dx, x.dims()),
        );
        assert_close(
            "mixed parity dw",
            g.get(wt.as_tensor()).unwrap(),
            &t(dw, wt.dims()),
        );
    }
}

fn bn_pair(c: usize, seed: u64) -> (VarMap, BatchNorm, VarMap, BatchNorm) {
    let cfg = BatchNormConfig {
        eps: 1e-5,
        remove_mean: true,
        affine: true,
        momentum: 0.1,
    };
    let make = || {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let bn = candle_nn::batch_norm(c, cfg, vb).unwrap();
        let data = vm.data().lock().unwrap();
        data["weight"]
            .set(&randn(&[c], seed).affine(0.5, 1.0).unwrap())
            .unwrap();
        data["bias"].set(&randn(&[c], seed + 1)).unwrap();
        data["running_mean"].set(&randn(&[c], seed + 2)).unwrap();
        data["running_var"]
            .set(
                &randn(&[c], seed + 3)
                    .abs()
                    .unwrap()
                    .affine(1.0, 0.5)
                    .unwrap(),
            )
            .unwrap();
        drop(data);
        (vm, bn)
    };
    let (a, b) = make();
    let (c2, d) = make();
    (a, b, c2, d)
}

#[allow(clippy::type_complexity)]
fn check_conv_bn(shape: ConvShape, train: bool, residual: bool, relu: bool, seed: u64) {
    let (n, cin, h, w, cout, k, stride, pad) = shape;
    let x = Var::from_tensor(&randn(&[n, cin, h, w], seed)).unwrap();
    let wt = Var::from_tensor(&randn(&[cout, cin, k, k], seed + 1)).unwrap();
    let ho = (h + 2 * pad - k) / stride + 1;
    let wo = (w + 2 * pad - k) / stride + 1;
    let res = Var::from_tensor(&randn(&[n, cout, ho, wo], seed + 2)).unwrap();
    let r = randn(&[n, cout, ho, wo], seed + 3);
    let (vm_fast, bn_fast, vm_stock, bn_stock) = bn_pair(cout, seed + 4);
    let run = |bn: &BatchNorm, vm: &VarMap, fast: bool| {
        let f = || {
            let z = ops::conv_bn(
                x.as_tensor(),
                wt.as_tensor(),
                bn,
                stride,
                pad,
                train,
                residual.then_some(res.as_tensor()),
                relu,
            )
            .unwrap();
            let loss = (&z * &r).unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();
            let data = vm.data().lock().unwrap();
            let get = |t: &Tensor| g.get(t).unwrap().clone();
            (
                z.clone(),
                get(x.as_tensor()),
                get(wt.as_tensor()),
                get(data["weight"].as_tensor()),
                get(data["bias"].as_tensor()),
                residual.then(|| get(res.as_tensor())),
                data["running_mean"].as_tensor().copy().unwrap(),
                data["running_var"].as_tensor().copy().unwrap(),
            )
        };
        if fast {
            f()
        } else {
            custom_ops::with_stock(f)
        }
    };
    let a = run(&bn_stock, &vm_stock, false);
    let b = run(&bn_fast, &vm_fast, true);
    let tag = format!(
        "{shape:?} train {train} residual {residual} relu {relu} {:?}",
        micro::isa()
    );
    assert_close(&format!("z {tag}"), &b.0, &a.0);
    assert_close(&format!("dx {tag}"), &b.1, &a.1);
    assert_close(&format!("dw {tag}"), &b.2, &a.2);
    assert_close(&format!("dgamma {tag}"), &b.3, &a.3);
    assert_close(&format!("dbeta {tag}"), &b.4, &a.4);
    if let (Some(x), Some(y)) = (&b.5, &a.5) {
        assert_close(&format!("dresidual {tag}"), x, y);
    }
    assert_close(&format!("running_mean {tag}"), &b.6, &a.6);
    assert_close(&format!("running_var {tag}"), &b.7, &a.7);
}

#[test]
fn conv_bn_matches_stock_in_training_and_inference_on_every_instruction_set() {
    let shapes = [
        (4, 16, 8, 8, 16, 3, 1, 1),
        (1, 3, 7, 7, 5, 3, 1, 1),
        (3, 17, 9, 11, 17, 3, 2, 1),
        (2, 5, 28, 28, 3, 3, 1, 1),
        (2, 16, 7, 7, 32, 1, 2, 0),
    ];
    on_every_isa(|| {
        let mut seed = 100;
        for &s in &shapes {
            for train in [true, false] {
                for (residual, relu) in [(false, false), (false, true), (true, true), (true, false)]
                {
                    check_conv_bn(s, train, residual, relu, seed);
                    seed += 10;
                }
            }
        }
    });
}

#[test]
fn subsample_pad_matches_stock() {
    for (i, dims) in [[2usize, 3, 8, 8], [1, 5, 7, 9], [3, 16, 1, 1]]
        .into_iter()
        .enumerate()
    {
        let x = Var::from_tensor(&randn(&dims, 500 + i as u64)).unwrap();
        let run = |fast: bool| {
            let f = || {
                let y = ops::subsample_pad_channels(x.as_tensor(), dims[1] * 2 + 1).unwrap();
                let r = randn(y.dims(), 7);
                let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                (y, g.get(x.as_tensor()).unwrap().clone())
            };
            if fast {
                f()
            } else {
                custom_ops::with_stock(f)
            }
        };
        let (y0, d0) = run(false);
        let (y1, d1) = run(true);
        assert_close(&format!("subsample y {dims:?}"), &y1, &y0);
        assert_close(&format!("subsample dx {dims:?}"), &d1, &d0);
    }
}

/// A whole network, both shortcut options, batch 1 with one input channel too: loss, every
/// gradient, the running statistics and the inference-mode logits.
#[test]
fn resnet_step_matches_stock() {
    // (shortcut, batch, channels, height, width); mixed-parity non-square inputs are avoided:
    // candle's stock conv2d backward gets their input-gradient shape wrong.
    let cases = [
        (Shortcut::A, 6, 3, 14, 10),
        (Shortcut::B, 6, 3, 14, 10),
        (Shortcut::A, 1, 1, 7, 7),
    ];
    for (shortcut, batch, channels, h, w) in cases {
        let mut arch = ArchConfig::resnet(8, channels, h, w, 5).unwrap();
        arch.widths = [5, 8, 17];
        arch.shortcut = shortcut;
        let build = || {
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
            let model = ResNet::new(vb, &arch).unwrap();
            sc_models::init::initialize(&vm, model.params(), 5).unwrap();
            (vm, model)
        };
        let x = randn(&[batch, channels, h, w], 900);
        let labels: Vec<u32> = (0..batch as u32).map(|i| i % 5).collect();
        let y = Tensor::new(labels.as_slice(), &Device::Cpu).unwrap();
        let step = |vm: &VarMap, model: &ResNet| {
            let logits = model.forward_t(&x, true).unwrap();
            let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
            let grads = loss.backward().unwrap();
            let eval = model.forward_t(&x, false).unwrap();
            let data = vm.data().lock().unwrap();
            let mut out = vec![
                ("loss".to_string(), loss),
                ("eval logits".to_string(), eval),
            ];
            for (name, kind) in model.params() {
                let t = data[name].as_tensor();
                if kind.is_trainable() {
                    out.push((format!("grad {name}"), grads.get(t).unwrap().clone()));
                } else {
                    out.push((name.clone(), t.copy().unwrap()));
                }
            }
            out
        };
        let (vm0, m0) = build();
        let (vm1, m1) = build();
        let stock = custom_ops::with_stock(|| step(&vm0, &m0));
        let fast = step(&vm1, &m1);
        for ((name, a), (_, b)) in fast.iter().zip(&stock) {
            assert_close(
                &format!("{shortcut:?} b{batch} {channels}x{h}x{w} {name}"),
                a,
                b,
            );
        }
    }
}
