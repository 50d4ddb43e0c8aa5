//! The native executor (sc-kernels convolutions) against tract on graphs shaped like PyTorch's
//! CIFAR ResNet exports: Conv with bias, ReLU, the option-A shortcut as Slice + Pad (also with
//! the pad amounts computed by a constant subgraph, and as zeros shaped from `Shape` concatenated
//! along the channels, as PyTorch writes them), Add, GlobalAveragePool, Flatten, Gemm; and our own
//! exports' BatchNormalization, Sub/Div and ReduceMean. Also: what it does not take falls back to
//! tract, with the reason.

mod common;

use common::{int, ints, node, tensor, value_info, D};
use prost::Message;
use sc_runtime::{Classifier, NativeLayout, Preprocessing};
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

/// A `Constant` node holding `t`.
fn constant(name: &str, t: pb::TensorProto) -> pb::NodeProto {
    let value = pb::AttributeProto {
        name: "value".into(),
        r#type: pb::attribute_proto::AttributeType::Tensor as i32,
        t: Some(t),
        ..Default::default()
    };
    node("Constant", &[], name, vec![value])
}

/// How the option-A shortcut pads 8 channels to 16 (4 zero channels each side).
#[derive(Clone, Copy, Debug)]
enum Shortcut {
    /// `Pad` by constant amounts, as our exporter writes it.
    Pad,
    /// `Pad` by amounts computed from constants, as PyTorch writes `F.pad(x, (0, 0, 0, 0, 4, 4))`:
    /// ConstantOfShape, Concat, Reshape, Slice (step -1), Transpose, Reshape, Cast.
    TorchPad,
    /// Zeros for every image concatenated along the channels, shaped from the batch size:
    /// Shape, Gather, Unsqueeze, Slice, Concat, ConstantOfShape, Concat (`torch.cat` with
    /// `torch.zeros(x.size(0), ...)` under a dynamic batch axis); the classifier's flatten is then
    /// `Reshape` to `[x.size(0), -1]` too.
    Concat,
    /// As `Concat`, but ones instead of zeros: not a padding, so left to tract.
    ConcatOnes,
}

/// The shortcut `shortcut` of `x` into `y`.
fn shortcut_nodes(shortcut: Shortcut, x: &str, y: &str, half: i64) -> Vec<pb::NodeProto> {
    let i64t = |name: &str, dims: &[i64], v: &[i64]| pb::TensorProto {
        dims: dims.to_vec(),
        ..i64s(name, v)
    };
    match shortcut {
        Shortcut::Pad => vec![node("Pad", &[x, "pads"], y, vec![])],
        Shortcut::TorchPad => vec![
            constant("k2", i64s("", &[2])),
            constant("torch_pads", i64s("", &[0, 0, 0, 0, half, half])),
            node(
                "ConstantOfShape",
                &["k2"],
                "z2",
                vec![pb::AttributeProto {
                    name: "value".into(),
                    r#type: pb::attribute_proto::AttributeType::Tensor as i32,
                    t: Some(i64s("", &[0])),
                    ..Default::default()
                }],
            ),
            node("Concat", &["torch_pads", "z2"], "p8", vec![int("axis", 0)]),
            constant("pairs", i64s("", &[-1, 2])),
            node("Reshape", &["p8", "pairs"], "p4x2", vec![]),
            constant("m1", i64s("", &[-1])),
            constant("lowest", i64s("", &[-i64::MAX])),
            constant("ax0", i64s("", &[0])),
            node(
                "Slice",
                &["p4x2", "m1", "lowest", "ax0", "m1"],
                "rev",
                vec![],
            ),
            node("Transpose", &["rev"], "tr", vec![ints("perm", &[1, 0])]),
            node("Reshape", &["tr", "m1"], "flat_pads", vec![]),
            node("Cast", &["flat_pads"], "cast_pads", vec![int("to", 7)]),
            node("Pad", &[x, "cast_pads"], y, vec![]),
        ],
        Shortcut::Concat | Shortcut::ConcatOnes => vec![
            node("Shape", &[x], "shp", vec![]),
            constant("zero", i64t("", &[], &[0])),
            node("Gather", &["shp", "zero"], "n", vec![int("axis", 0)]),
            constant("ax0", i64s("", &[0])),
            node("Unsqueeze", &["n", "ax0"], "n1", vec![]),
            constant("four", i64s("", &[half])),
            constant("two", i64s("", &[2])),
            constant("end", i64s("", &[i64::MAX])),
            node("Slice", &["shp", "two", "end"], "hw", vec![]),
            node(
                "Concat",
                &["n1", "four", "hw"],
                "zshape",
                vec![int("axis", 0)],
            ),
            node("ConstantOfShape", &["zshape"], "zeros", {
                let one = matches!(shortcut, Shortcut::ConcatOnes);
                vec![pb::AttributeProto {
                    name: "value".into(),
                    r#type: pb::attribute_proto::AttributeType::Tensor as i32,
                    t: Some(tensor("", &[1], &[if one { 1.0 } else { 0.0 }])),
                    ..Default::default()
                }]
            }),
            node("Concat", &["zeros", x, "zeros"], y, vec![int("axis", 1)]),
        ],
    }
}

/// A small residual network, 3x12x12 -> 5 classes: stem Conv3x3(3->8, bias) Relu; block
/// Conv3x3 s2 (8->16, bias) Relu Conv3x3 (16->16) [BN] plus the shortcut Slice(::2, ::2)
/// Pad(channels 4+4) (written as `shortcut`), Add, Relu; GlobalAveragePool, Flatten, Gemm.
/// `extra` inserts one more node after the stem (an op the native executor may not take).
fn resnet_like(bn: bool, normalize: bool, extra: Option<&str>, shortcut: Shortcut) -> Vec<u8> {
    resnet_of_width(8, bn, normalize, extra, shortcut)
}

/// [`resnet_like`] with `c` stem channels (`2c` in the block, `c / 2` padded on each side).
fn resnet_of_width(
    c: usize,
    bn: bool,
    normalize: bool,
    extra: Option<&str>,
    shortcut: Shortcut,
) -> Vec<u8> {
    let (ci, c2, half) = (c as i64, 2 * c as i64, c as i64 / 2);
    let mut nodes = Vec::new();
    let mut init = vec![
        tensor("w0", &[ci, 3, 3, 3], &field(c * 27, 1)),
        tensor("b0", &[ci], &field(c, 2)),
        tensor("w1", &[c2, ci, 3, 3], &field(2 * c * c * 9, 3)),
        tensor("b1", &[c2], &field(2 * c, 4)),
        tensor("w2", &[c2, c2, 3, 3], &field(4 * c * c * 9, 5)),
        tensor("fc.w", &[5, c2], &field(10 * c, 6)),
        tensor("fc.b", &[5], &field(5, 7)),
        i64s("starts", &[0, 0]),
        i64s("ends", &[i64::MAX, i64::MAX]),
        i64s("axes", &[2, 3]),
        i64s("steps", &[2, 2]),
        i64s("pads", &[0, half, 0, 0, 0, half, 0, 0]),
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
            &[c2],
            &field(2 * c, 8)
                .iter()
                .map(|v| 1.0 + 0.5 * v)
                .collect::<Vec<_>>(),
        ));
        init.push(tensor("be", &[c2], &field(2 * c, 9)));
        init.push(tensor("m", &[c2], &field(2 * c, 10)));
        init.push(tensor(
            "v",
            &[c2],
            &field(2 * c, 11)
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
    nodes.extend(shortcut_nodes(shortcut, "s0", "p0", half));
    nodes.push(node("Add", &[&main, "p0"], "a0", vec![]));
    nodes.push(node("Relu", &["a0"], "r2", vec![]));
    nodes.push(node("GlobalAveragePool", &["r2"], "gap", vec![]));
    if let Shortcut::Concat | Shortcut::ConcatOnes = shortcut {
        // PyTorch's `x.view(x.size(0), -1)`, reusing the shortcut's constants `zero` and `ax0`.
        nodes.push(node("Shape", &["gap"], "gap_shape", vec![]));
        nodes.push(node(
            "Gather",
            &["gap_shape", "zero"],
            "n2",
            vec![int("axis", 0)],
        ));
        nodes.push(node("Unsqueeze", &["n2", "ax0"], "n2u", vec![]));
        nodes.push(constant("rest", i64s("", &[-1])));
        nodes.push(node(
            "Concat",
            &["n2u", "rest"],
            "flat_shape",
            vec![int("axis", 0)],
        ));
        nodes.push(node("Reshape", &["gap", "flat_shape"], "flat", vec![]));
    } else {
        nodes.push(node("Flatten", &["gap"], "flat", vec![int("axis", 1)]));
    }
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
    for (bn, normalize, shortcut) in [
        (false, false, Shortcut::Pad),
        (true, false, Shortcut::Pad),
        (true, true, Shortcut::Pad),
        (true, false, Shortcut::TorchPad),
        (false, true, Shortcut::Concat),
    ] {
        let bytes = resnet_like(bn, normalize, None, shortcut);
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
        let tag = format!("bn {bn}, normalize {normalize}, shortcut {shortcut:?}");
        assert_agree(&native.logits_for_input(&input).unwrap(), &want, &tag);
        // One request on two threads: each convolution split over a thread team.
        let two = load(&bytes).with_native().unwrap().with_threads(2);
        for i in 0..4 {
            let one = &input[i * 432..(i + 1) * 432];
            assert_agree(&two.logits_for_input(one).unwrap(), &want[i..i + 1], &tag);
        }
    }
}

/// Channel counts in whole blocks of 8 (16 -> 32, the shortcut padding 8 + 8) give the graph a
/// blocked form: forced either way, it agrees with tract and with the flat layout, on one thread
/// and on two, and the note says which layout runs. With 8 -> 16 (padding 4 + 4, not whole
/// blocks) the blocked layout is refused with the reason.
#[test]
fn the_blocked_layout_agrees_with_tract_and_the_flat_one() {
    let input = field(3 * 3 * 12 * 12, 98);
    for (bn, normalize, shortcut) in [
        (true, true, Shortcut::Pad),
        (false, false, Shortcut::TorchPad),
        (true, false, Shortcut::Concat),
    ] {
        let bytes = resnet_of_width(16, bn, normalize, None, shortcut);
        let tag = format!("bn {bn}, normalize {normalize}, shortcut {shortcut:?}");
        let want = load(&bytes).with_tract().logits_for_input(&input).unwrap();
        for threads in [1, 2] {
            for layout in [
                NativeLayout::Blocked,
                NativeLayout::Flat,
                NativeLayout::Blocked,
            ] {
                let clf = load(&bytes)
                    .with_native()
                    .unwrap()
                    .with_layout(layout)
                    .unwrap_or_else(|e| panic!("{tag}: {e}"))
                    .with_threads(threads);
                let words = if layout == NativeLayout::Blocked {
                    "blocked"
                } else {
                    "flat"
                };
                assert!(clf.executor().contains(words), "{}", clf.executor());
                assert_agree(&clf.logits_for_input(&input).unwrap(), &want, &tag);
                // One image at a time too (a request on the thread team).
                let one = clf.logits_for_input(&input[..432]).unwrap();
                assert_agree(&one, &want[..1], &tag);
            }
        }
        // Switching layouts on one classifier keeps its results.
        let clf = load(&bytes).with_native().unwrap();
        let a = clf.logits_for_input(&input).unwrap();
        let clf = clf.with_layout(NativeLayout::Flat).unwrap();
        let b = clf.logits_for_input(&input).unwrap();
        let clf = clf.with_layout(NativeLayout::Blocked).unwrap();
        assert_agree(&clf.logits_for_input(&input).unwrap(), &b, &tag);
        assert_agree(&a, &want, &tag);
    }
    let narrow = load(&resnet_like(true, false, None, Shortcut::Pad))
        .with_native()
        .unwrap();
    let Err(e) = narrow.with_layout(NativeLayout::Blocked) else {
        panic!("a blocked layout for channels padded by 4")
    };
    let e = e.to_string();
    assert!(
        e.contains("no blocked form") && e.contains("channel padding by 4"),
        "{e}"
    );
}

#[test]
fn other_operations_fall_back_to_tract_with_the_reason() {
    let bytes = resnet_like(true, false, Some("Sigmoid"), Shortcut::Pad);
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

#[test]
fn batch_dependent_values_other_than_zero_padding_fall_back_to_tract() {
    let bytes = resnet_like(false, false, None, Shortcut::ConcatOnes);
    let clf = load(&bytes);
    assert!(
        clf.executor().starts_with("tract") && clf.executor().contains("ConstantOfShape"),
        "{}",
        clf.executor()
    );
    let input = field(2 * 432, 5);
    assert_eq!(clf.logits_for_input(&input).unwrap().len(), 2);
}
