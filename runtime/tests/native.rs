//! The native executor (sc-kernels convolutions) against tract on graphs shaped like PyTorch's
//! CIFAR ResNet exports: Conv with bias, ReLU, the option-A shortcut as Slice + Pad, Add,
//! GlobalAveragePool, Flatten, Gemm; and our own exports' BatchNormalization, Sub/Div and
//! ReduceMean. Also: what it does not take falls back to tract, with the reason.

mod common;

use common::{int, ints, node, tensor, value_info, D};
use prost::Message;
use sc_runtime::{Classifier, Preprocessing};
use tract_onnx::pb;

fn field(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn i64s(name: &str, v: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: vec![v.len() as i64],
        data_type: pb::tensor_proto::DataType::Int64 as i32,
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

/// A small residual network, 3x12x12 -> 5 classes: stem Conv3x3(3->8, bias) Relu; block
/// Conv3x3 s2 (8->16, bias) Relu Conv3x3 (16->16) [BN] plus the shortcut Slice(::2, ::2)
/// Pad(channels 4+4), Add, Relu; GlobalAveragePool, Flatten, Gemm. `extra` inserts one more
/// node after the stem (an op the native executor may not take).
fn resnet_like(bn: bool, normalize: bool, extra: Option<&str>) -> Vec<u8> {
    let mut nodes = Vec::new();
    let mut init = vec![
        tensor("w0", &[8, 3, 3, 3], &field(8 * 27, 1)),
        tensor("b0", &[8], &field(8, 2)),
        tensor("w1", &[16, 8, 3, 3], &field(16 * 72, 3)),
        tensor("b1", &[16], &field(16, 4)),
        tensor("w2", &[16, 16, 3, 3], &field(16 * 144, 5)),
        tensor("fc.w", &[5, 16], &field(80, 6)),
        tensor("fc.b", &[5], &field(5, 7)),
        i64s("starts", &[0, 0]),
        i64s("ends", &[i64::MAX, i64::MAX]),
        i64s("axes", &[2, 3]),
        i64s("steps", &[2, 2]),
        i64s("pads", &[0, 4, 0, 0, 0, 4, 0, 0]),
    ];
    let mut x = "input".to_string();
    if normalize {
        init.push(tensor("mean", &[1, 3, 1, 1], &[0.5, 0.4, 0.3]));
        init.push(tensor("std", &[1, 3, 1, 1], &[0.25, 0.2, 0.3]));
        nodes.push(node("Sub", &[&x, "mean"], "xs", vec![]));
        nodes.push(node("Div", &["xs", "std"], "xn", vec![]));
        x = "xn".into();
    }
    let conv = |i: &str, w: &str, b: Option<&str>, o: &str, stride: i64| {
        let mut inputs = vec![i, w];
        if let Some(b) = b {
            inputs.push(b);
        }
        node(
            "Conv",
            &inputs,
            o,
            vec![
                ints("kernel_shape", &[3, 3]),
                ints("strides", &[stride, stride]),
                ints("pads", &[1, 1, 1, 1]),
            ],
        )
    };
    nodes.push(conv(&x, "w0", Some("b0"), "c0", 1));
    nodes.push(node("Relu", &["c0"], "r0", vec![]));
    let mut stem = "r0".to_string();
    if let Some(op) = extra {
        nodes.push(node(op, &["r0"], "e0", vec![]));
        stem = "e0".into();
    }
    nodes.push(conv(&stem, "w1", Some("b1"), "c1", 2));
    nodes.push(node("Relu", &["c1"], "r1", vec![]));
    nodes.push(conv("r1", "w2", None, "c2", 1));
    let mut main = "c2".to_string();
    if bn {
        init.push(tensor(
            "g",
            &[16],
            &field(16, 8)
                .iter()
                .map(|v| 1.0 + 0.5 * v)
                .collect::<Vec<_>>(),
        ));
        init.push(tensor("be", &[16], &field(16, 9)));
        init.push(tensor("m", &[16], &field(16, 10)));
        init.push(tensor(
            "v",
            &[16],
            &field(16, 11)
                .iter()
                .map(|v| 1.0 + 0.9 * v)
                .collect::<Vec<_>>(),
        ));
        nodes.push(node(
            "BatchNormalization",
            &["c2", "g", "be", "m", "v"],
            "bn",
            vec![],
        ));
        main = "bn".into();
    }
    nodes.push(node(
        "Slice",
        &[&stem, "starts", "ends", "axes", "steps"],
        "s0",
        vec![],
    ));
    nodes.push(node("Pad", &["s0", "pads"], "p0", vec![]));
    nodes.push(node("Add", &[&main, "p0"], "a0", vec![]));
    nodes.push(node("Relu", &["a0"], "r2", vec![]));
    nodes.push(node("GlobalAveragePool", &["r2"], "gap", vec![]));
    nodes.push(node("Flatten", &["gap"], "flat", vec![int("axis", 1)]));
    nodes.push(node(
        "Gemm",
        &["flat", "fc.w", "fc.b"],
        "logits",
        vec![int("transB", 1)],
    ));
    let graph = pb::GraphProto {
        name: "resnet-like".into(),
        node: nodes,
        initializer: init,
        input: vec![value_info(
            "input",
            &[D::P("batch"), D::N(3), D::N(12), D::N(12)],
        )],
        output: vec![value_info("logits", &[D::P("batch"), D::N(5)])],
        ..Default::default()
    };
    common::model(graph, &[]).encode_to_vec()
}

fn load(bytes: &[u8]) -> Classifier {
    let pre = Preprocessing {
        mean: vec![0.0; 3],
        std: vec![1.0; 3],
        classes: (0..5).map(|i| format!("c{i}")).collect(),
        input_size: None,
        pixel_range: [0.0, 1.0],
    };
    Classifier::from_bytes_with(bytes, "resnet-like.onnx", pre).unwrap()
}

fn assert_agree(a: &[Vec<f32>], b: &[Vec<f32>], what: &str) {
    let scale = b.iter().flatten().fold(1f32, |m, v| m.max(v.abs()));
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        assert!(
            (x - y).abs() <= 1e-4 * scale,
            "{what}: {x} vs {y} (scale {scale})"
        );
    }
    assert_eq!(a.len(), b.len());
}

#[test]
fn resnet_like_graphs_run_natively_and_agree_with_tract() {
    let input = field(4 * 3 * 12 * 12, 99);
    for (bn, normalize) in [(false, false), (true, false), (true, true)] {
        let bytes = resnet_like(bn, normalize, None);
        // The timed choice at load may go either way on these small graphs; the native graph
        // must exist (compiled and agreed with tract), and the note says why the choice was made.
        let auto = load(&bytes);
        assert!(
            auto.executor().contains("speed"),
            "no timing in the note: {}",
            auto.executor()
        );
        let native = load(&bytes).with_native().unwrap().with_threads(1);
        assert!(
            native.executor().starts_with("native"),
            "{}",
            native.executor()
        );
        let tract = load(&bytes).with_tract();
        assert!(tract.executor().starts_with("tract"));
        let want = tract.logits_for_input(&input).unwrap();
        let tag = format!("bn {bn}, normalize {normalize}");
        assert_agree(&native.logits_for_input(&input).unwrap(), &want, &tag);
        // One request on two threads: each convolution split over a thread team.
        let two = load(&bytes).with_native().unwrap().with_threads(2);
        for i in 0..4 {
            let one = &input[i * 432..(i + 1) * 432];
            assert_agree(&two.logits_for_input(one).unwrap(), &want[i..i + 1], &tag);
        }
    }
}

#[test]
fn other_operations_fall_back_to_tract_with_the_reason() {
    let bytes = resnet_like(true, false, Some("Sigmoid"));
    let clf = load(&bytes);
    assert!(
        clf.executor().starts_with("tract") && clf.executor().contains("Sigmoid"),
        "{}",
        clf.executor()
    );
    let input = field(2 * 432, 5);
    assert_eq!(clf.logits_for_input(&input).unwrap().len(), 2);
    // Asking for the native executor anyway is an error with the same reason.
    let err = load(&bytes)
        .with_native()
        .err()
        .expect("no native graph")
        .to_string();
    assert!(err.contains("Sigmoid"), "{err}");
}
