//! `sc-runtime quantize`: int8 QDQ models from a small ResNet-style graph built here (Conv, BN,
//! ReLU, a residual Add, ReduceMean, Gemm) and CIFAR-format training images written here.
//!
//! With `SC_INTEROP_DIR` set, the int8 model, inputs and tract's logits are also written there
//! (and every float model already there, e.g. from tests/export_parity.rs, is quantized too), for
//! `scripts/onnx-interop.sh` to check with `onnx.checker` and onnxruntime.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{int, ints, model, node, our_metadata, tensor, value_info, D};
use prost::Message;
use sc_runtime::data::write;
use sc_runtime::quantize::{quantize_file, Calibration, QuantizeOptions, Record};
use sc_runtime::{Classifier, RuntimeError};
use tract_onnx::pb;

const CLASSES: [&str; 10] = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];

/// Deterministic values in [-1, 1).
fn field(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn bn(name: &str, x: &str, y: &str, c: usize, seed: u64) -> (pb::NodeProto, Vec<pb::TensorProto>) {
    let f = field(4 * c, seed);
    let gamma: Vec<f32> = (0..c).map(|i| 1.0 + 0.5 * f[i]).collect();
    let beta: Vec<f32> = (0..c).map(|i| 0.2 * f[c + i]).collect();
    let mean: Vec<f32> = (0..c).map(|i| 0.3 * f[2 * c + i]).collect();
    let var: Vec<f32> = (0..c).map(|i| 0.5 + 0.4 * f[3 * c + i]).collect();
    let p = |s: &str| format!("{name}.{s}");
    let mut n = node(
        "BatchNormalization",
        &[x, &p("gamma"), &p("beta"), &p("mean"), &p("var")],
        y,
        vec![pb::AttributeProto {
            name: "epsilon".into(),
            r#type: pb::attribute_proto::AttributeType::Float as i32,
            f: 1e-5,
            ..Default::default()
        }],
    );
    n.name = name.into();
    let c = c as i64;
    let t = vec![
        tensor(&p("gamma"), &[c], &gamma),
        tensor(&p("beta"), &[c], &beta),
        tensor(&p("mean"), &[c], &mean),
        tensor(&p("var"), &[c], &var),
    ];
    (n, t)
}

/// `image [b,3,32,32] → Conv 3→8 → BN → ReLU → r1; Conv 8→8 (bias) → BN → Add r1 → ReLU →
/// ReduceMean → Gemm (transB) → logits`, with our metadata. `opset` is the default domain's.
fn tiny_resnet(opset: i64) -> pb::ModelProto {
    let conv = |x: &str, w: &str, b: Option<&str>, y: &str| {
        let mut i = vec![x, w];
        i.extend(b);
        let mut n = node(
            "Conv",
            &i,
            y,
            vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1, 1, 1, 1])],
        );
        n.name = format!("conv_{y}");
        n
    };
    let (bn1, t1) = bn("bn1", "c1", "b1", 8, 11);
    let (bn2, t2) = bn("bn2", "c2", "b2", 8, 12);
    let mut initializer = vec![
        tensor("conv1.weight", &[8, 3, 3, 3], &field(8 * 27, 1)),
        tensor(
            "conv2.weight",
            &[8, 8, 3, 3],
            &field(8 * 72, 2).iter().map(|v| v * 0.4).collect::<Vec<_>>(),
        ),
        tensor("conv2.bias", &[8], &field(8, 3)),
        tensor("fc.weight", &[10, 8], &field(80, 4)),
        tensor("fc.bias", &[10], &field(10, 5)),
    ];
    initializer.extend(t1);
    initializer.extend(t2);
    let graph = pb::GraphProto {
        name: "tiny-resnet".into(),
        node: vec![
            conv("image", "conv1.weight", None, "c1"),
            bn1,
            node("Relu", &["b1"], "r1", vec![]),
            conv("r1", "conv2.weight", Some("conv2.bias"), "c2"),
            bn2,
            node("Add", &["b2", "r1"], "s", vec![]),
            node("Relu", &["s"], "r2", vec![]),
            node(
                "ReduceMean",
                &["r2"],
                "m",
                vec![ints("axes", &[2, 3]), int("keepdims", 0)],
            ),
            node(
                "Gemm",
                &["m", "fc.weight", "fc.bias"],
                "logits",
                vec![int("transB", 1)],
            ),
        ],
        initializer,
        input: vec![value_info(
            "image",
            &[D::P("batch"), D::N(3), D::N(32), D::N(32)],
        )],
        output: vec![value_info("logits", &[D::P("batch"), D::N(10)])],
        ..Default::default()
    };
    let mut m = model(graph, &our_metadata(3, 32, &CLASSES));
    m.opset_import[0].version = opset;
    m
}

/// `n` CIFAR-10 records of smooth random colours (seeded from `seed`).
fn records(n: usize, seed: u64) -> Vec<(u8, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let f = field(3 * 1024, seed + i as u64);
            let px = (0..3 * 1024)
                .map(|k| {
                    let (c, y) = (k / 1024, (k % 1024) / 32);
                    let base = 128.0 + 100.0 * f[c * 7 + i % 5] * (y as f32 / 31.0);
                    (base + 20.0 * f[k]).clamp(0.0, 255.0) as u8
                })
                .collect();
            ((i % 10) as u8, px)
        })
        .collect()
}

/// A CIFAR-10 directory with `n` training images and a test batch.
fn cifar_dir(dir: &Path, n: usize) -> PathBuf {
    let d = dir.join("cifar");
    std::fs::create_dir_all(&d).unwrap();
    let records = records(n, 100);
    let part = n.div_ceil(5);
    for (b, chunk) in records.chunks(part).enumerate() {
        write::cifar10(&d.join(format!("data_batch_{}.bin", b + 1)), chunk).unwrap();
    }
    write::cifar10(&d.join("test_batch.bin"), &records[..4]).unwrap();
    d
}

fn opts(images: usize) -> QuantizeOptions {
    QuantizeOptions {
        images,
        ..Default::default()
    }
}

fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let m = dir.join("tiny.onnx");
    std::fs::write(&m, tiny_resnet(13).encode_to_vec()).unwrap();
    (m, cifar_dir(dir, 48))
}

/// `n` images like the training ones but not among them, as the graph takes them (pixels / 255).
fn inputs(n: usize) -> Vec<f32> {
    (records(n, 5000).iter())
        .flat_map(|(_, px)| px.iter().map(|&b| b as f32 / 255.0))
        .collect()
}

fn by_name(g: &pb::GraphProto) -> HashMap<&str, &pb::TensorProto> {
    g.initializer.iter().map(|t| (t.name.as_str(), t)).collect()
}

fn f32s(t: &pb::TensorProto) -> Vec<f32> {
    if !t.float_data.is_empty() {
        return t.float_data.clone();
    }
    t.raw_data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn the_qdq_model_has_the_standard_form_and_agrees_with_the_float_one() {
    let dir = tempfile::tempdir().unwrap();
    let (m, data) = setup(dir.path());
    let q = quantize_file(&m, None, &data, &opts(48)).unwrap();
    let proto = pb::ModelProto::decode(&q.bytes[..]).unwrap();
    let g = proto.graph.as_ref().unwrap();
    let count = |op: &str| g.node.iter().filter(|n| n.op_type == op).count();
    // BatchNorm folded; 3 weights + 2 biases (one made by folding) dequantized; 4 activations
    // (image, r1, b2, r2... : conv1's, conv2's = Add's r1, Add's b2, ReduceMean's r2, Gemm's m).
    assert_eq!(count("BatchNormalization"), 0);
    assert_eq!(count("QuantizeLinear"), 5);
    assert_eq!(count("DequantizeLinear"), 5 + 3 + 3);
    let inits = by_name(g);
    for w in ["conv1.weight", "conv2.weight", "fc.weight"] {
        assert!(!inits.contains_key(w), "{w} kept in float");
        let t = inits[format!("{w}_quantized").as_str()];
        assert_eq!(t.data_type, pb::tensor_proto::DataType::Int8 as i32);
        assert_eq!(
            inits[format!("{w}_zero_point").as_str()].raw_data,
            vec![0; t.dims[0] as usize]
        );
        let dq = g
            .node
            .iter()
            .find(|n| n.input[0] == format!("{w}_quantized"))
            .unwrap();
        assert_eq!(dq.attribute.iter().find(|a| a.name == "axis").unwrap().i, 0);
    }
    // int32 bias with scale = input scale x weight scale.
    let bq = inits["conv2.bias_quantized"];
    assert_eq!(bq.data_type, pb::tensor_proto::DataType::Int32 as i32);
    let (sx, sw, sb) = (
        f32s(inits["r1_scale"])[0],
        f32s(inits["conv2.weight_scale"]),
        f32s(inits["conv2.bias_scale"]),
    );
    for (w, b) in sw.iter().zip(&sb) {
        assert_eq!(*b, w * sx);
    }
    // Conv reads DQ outputs; the residual Add reads two.
    let add = g.node.iter().find(|n| n.op_type == "Add").unwrap();
    assert_eq!(add.input, ["b2_dequantized", "r1_dequantized"]);
    // Metadata kept, record added.
    let meta: HashMap<_, _> = (proto.metadata_props.iter())
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    assert!(meta.contains_key("sc.classes") && meta.contains_key("sc.architecture"));
    let rec: Record = serde_json::from_str(meta["sc.quantization"]).unwrap();
    assert_eq!((rec.method.as_str(), rec.images), ("minmax", 48));
    assert_eq!((rec.folded_batchnorms, rec.quantized_nodes), (2, 5));
    assert!(rec.float_layers.is_empty());
    assert_eq!(q.record, rec);
    // Loads in tract; logits close to the float model's on inputs it was not calibrated on.
    let f = Classifier::load(&m).unwrap();
    let i8 = Classifier::from_bytes(&q.bytes, "tiny-int8.onnx").unwrap();
    assert!(i8.executor().contains("int8"), "{}", i8.executor());
    let x = inputs(16);
    // The native int8 executor (8 channels: a partial block of 16) against tract on the same
    // file: logits within two quantization steps of the pooled features, top classes equal.
    let native = Classifier::from_bytes(&q.bytes, "tiny-int8.onnx")
        .unwrap()
        .with_native()
        .unwrap();
    assert!(
        native.executor().starts_with("native") && native.executor().contains("int8"),
        "{}",
        native.executor()
    );
    assert!(
        native.executor().contains("1 with the residual fused"),
        "{}",
        native.executor()
    );
    let tract = Classifier::from_bytes(&q.bytes, "tiny-int8.onnx")
        .unwrap()
        .with_tract();
    let (n, t) = (
        native.logits_for_input(&x).unwrap(),
        tract.logits_for_input(&x).unwrap(),
    );
    let argmax = |v: &[f32]| (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap();
    let mut same_top = 0;
    for (a, b) in n.iter().zip(&t) {
        let d = a.iter().zip(b).fold(0f32, |m, (u, v)| m.max((u - v).abs()));
        let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
        assert!(d <= 0.02 * scale, "native int8 {a:?} vs tract {b:?}");
        same_top += usize::from(argmax(a) == argmax(b));
    }
    assert!(same_top >= 15, "top classes agree on {same_top} of 16");
    let (a, b) = (
        f.logits_for_input(&x).unwrap(),
        i8.logits_for_input(&x).unwrap(),
    );
    let scale = a.iter().flatten().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff =
        (a.iter().flatten().zip(b.iter().flatten())).fold(0.0f32, |m, (u, v)| m.max((u - v).abs()));
    assert!(
        diff < 0.05 * scale,
        "int8 logits differ by {diff} (scale {scale})"
    );
    assert!(
        diff > 0.0,
        "no quantization error at all: nothing was quantized"
    );
    assert!(q.agreement >= 0.9, "{}", q.agreement);
    interop_dump(&q.bytes, "tiny-resnet-int8", &data);
}

#[test]
fn percentile_calibration_and_float_layers_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (m, data) = setup(dir.path());
    let o = QuantizeOptions {
        images: 20,
        calibration: Calibration::Percentile(99.0),
        keep_float: vec!["first-conv".into(), "classifier".into()],
    };
    let q = quantize_file(&m, None, &data, &o).unwrap();
    let rec = &q.record;
    assert_eq!(
        (rec.method.as_str(), rec.percentile, rec.images),
        ("percentile", Some(99.0), 20)
    );
    let names: Vec<(&str, &str)> = (rec.float_layers.iter())
        .map(|f| (f.op.as_str(), f.node.as_str()))
        .collect();
    assert_eq!(names, [("Conv", "conv_c1"), ("Gemm", "Gemm_logits")]);
    let proto = pb::ModelProto::decode(&q.bytes[..]).unwrap();
    let inits = by_name(proto.graph.as_ref().unwrap());
    assert!(inits.contains_key("conv1.weight") && inits.contains_key("fc.weight"));
    assert!(inits.contains_key("conv2.weight_quantized"));
    // A narrower range than min-max on some activation.
    let mm = quantize_file(
        &m,
        None,
        &data,
        &QuantizeOptions {
            keep_float: o.keep_float.clone(),
            ..opts(20)
        },
    )
    .unwrap();
    let pm = pb::ModelProto::decode(&mm.bytes[..]).unwrap();
    let mm_inits = by_name(pm.graph.as_ref().unwrap());
    let s = |i: &HashMap<&str, &pb::TensorProto>| f32s(i["r2_scale"])[0];
    assert!(
        s(&inits) < s(&mm_inits),
        "{} vs {}",
        s(&inits),
        s(&mm_inits)
    );
    // A float first convolution is not the int8 executor's pattern: tract runs it, saying why.
    let c = Classifier::from_bytes(&q.bytes, "p.onnx").unwrap();
    assert!(
        c.executor().starts_with("tract") && c.executor().contains("does not take: Conv `conv_c1`"),
        "{}",
        c.executor()
    );
}

fn err(r: Result<sc_runtime::quantize::Quantized, RuntimeError>) -> String {
    r.err().expect("refused").to_string()
}

#[test]
fn bad_input_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (m, data) = setup(dir.path());
    let e = err(quantize_file(
        &m,
        None,
        &data.join("test_batch.bin"),
        &opts(4),
    ));
    assert!(
        e.contains("test_batch.bin") && e.contains("training images only"),
        "{e}"
    );
    let e = err(quantize_file(
        &m,
        None,
        &dir.path().join("nowhere"),
        &opts(4),
    ));
    assert!(e.contains("nowhere"), "{e}");
    let e = err(quantize_file(
        &m,
        None,
        &data,
        &QuantizeOptions {
            keep_float: vec!["conv9".into()],
            ..opts(4)
        },
    ));
    assert!(e.contains("--keep-float conv9"), "{e}");
    let e = err(quantize_file(&m, None, &data, &opts(0)));
    assert!(e.contains("--images"), "{e}");
    let old = dir.path().join("old.onnx");
    std::fs::write(&old, tiny_resnet(11).encode_to_vec()).unwrap();
    let e = err(quantize_file(&old, None, &data, &opts(4)));
    assert!(e.contains("old.onnx") && e.contains("opset 11"), "{e}");
    let q = quantize_file(&m, None, &data, &opts(4)).unwrap();
    let twice = dir.path().join("twice.onnx");
    std::fs::write(&twice, &q.bytes).unwrap();
    let e = err(quantize_file(&twice, None, &data, &opts(4)));
    assert!(
        e.contains("twice.onnx") && e.contains("already quantized"),
        "{e}"
    );
}

fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sc-runtime"))
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .unwrap()
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn the_commands_take_int8_files() {
    let dir = tempfile::tempdir().unwrap();
    let (m, data) = setup(dir.path());
    let out = dir.path().join("tiny-int8.onnx");
    let text = ok(&run(&[
        &"quantize",
        &m,
        &"--data",
        &data,
        &"--images",
        &"16",
        &"--keep-float",
        &"classifier",
        &"--out",
        &out,
    ]));
    assert!(
        text.contains("agreement") && text.contains("float layers: Gemm Gemm_logits"),
        "{text}"
    );
    let info = ok(&run(&[&"info", &out]));
    assert!(
        info.contains("int8        QDQ (minmax on 16 training images"),
        "{info}"
    );
    assert!(
        info.contains("Gemm Gemm_logits (kept float on request (classifier))"),
        "{info}"
    );
    // A float classifier is part of the int8 executor's pattern (the head runs in float).
    let executor = info
        .lines()
        .find(|l| l.starts_with("executor"))
        .unwrap_or_default();
    assert!(executor.contains("int8"), "{info}");
    assert!(!executor.contains("does not take"), "{info}");
    let eval = ok(&run(&[
        &"eval",
        &out,
        &data.join("test_batch.bin"),
        &"--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&eval).unwrap();
    assert_eq!(v["images"], 4);
    ok(&run(&[
        &"bench",
        &out,
        &"--batch",
        &"1,2",
        &"--seconds",
        &"0",
    ]));
    let png = dir.path().join("x.png");
    std::fs::write(&png, common::png(4, 4, None, &[9, 200, 30].repeat(16))).unwrap();
    ok(&run(&[&"predict", &out, &png]));
    // The CLI refuses to overwrite the model and unknown methods.
    let same = run(&[&"quantize", &m, &"--data", &data, &"--out", &m]);
    assert!(
        !same.status.success()
            && String::from_utf8_lossy(&same.stderr).contains("is the model itself")
    );
    let bad = run(&[
        &"quantize",
        &m,
        &"--data",
        &data,
        &"--calibration",
        &"entropy",
    ]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("entropy"));
}

/// With `SC_INTEROP_DIR`: the int8 model, inputs and tract's logits for `onnx_interop.py`, and
/// every float model there quantized on `data` (when its input is 3x32x32) the same way.
fn interop_dump(bytes: &[u8], tag: &str, data: &Path) {
    let Some(d) = std::env::var_os("SC_INTEROP_DIR").map(PathBuf::from) else {
        return;
    };
    std::fs::create_dir_all(&d).unwrap();
    let mut todo = vec![(tag.to_string(), bytes.to_vec())];
    for e in std::fs::read_dir(&d).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".onnx") || name.contains("-int8") {
            continue;
        }
        let Ok(clf) = Classifier::load(&p) else {
            continue;
        };
        let i = clf.input();
        if (i.channels, i.height, i.width) != (3, 32, 32) {
            continue;
        }
        let q = quantize_file(&p, None, data, &opts(48)).unwrap();
        todo.push((format!("{}-int8", name.trim_end_matches(".onnx")), q.bytes));
    }
    for (tag, bytes) in todo {
        std::fs::write(d.join(format!("{tag}.onnx")), &bytes).unwrap();
        let clf = Classifier::from_bytes(&bytes, &tag).unwrap();
        let b = 4;
        let x = inputs(b);
        let logits: Vec<f32> = clf.logits_for_input(&x).unwrap().concat();
        let k = logits.len() / b;
        let stem = d.join(format!("{tag}.b{b}"));
        let le = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
        std::fs::write(stem.with_extension("b4.shape"), format!("{b} 3 32 32 {k}")).unwrap();
        std::fs::write(stem.with_extension("b4.input.f32"), le(&x)).unwrap();
        std::fs::write(stem.with_extension("b4.tract.f32"), le(&logits)).unwrap();
    }
}
