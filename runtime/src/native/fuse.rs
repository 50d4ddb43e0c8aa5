//! Fusions: BatchNorm into the convolution before it, a residual Add into a convolution, and
//! ReLU into the step before it.

use std::collections::HashMap;

use super::graph::{Graph, Step};

/// Inference-form BatchNormalization as a per-channel affine map `x · scale + shift`:
/// `scale = gamma / sqrt(var + eps)`, `shift = beta - mean · scale`. Shared by the native
/// executor and the int8 quantizer (`crate::quantize`), which fold BatchNorm the same way.
pub(crate) fn batch_norm_affine(
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = (gamma.iter().zip(var))
        .map(|(&g, &v)| g / (v + eps).sqrt())
        .collect();
    let shift = (beta.iter().zip(mean).zip(&scale))
        .map(|((&b, &m), &a)| b - m * a)
        .collect();
    (scale, shift)
}

/// A per-output-channel affine map applied after a convolution, folded into it: each output
/// channel's weights (`weight` is `[cout, ...]`, `cout = scale.len()`) times `scale[co]`, its bias
/// `bias[co] · scale[co] + shift[co]`.
pub(crate) fn fold_affine_into_conv(
    weight: &mut [f32],
    bias: &mut [f32],
    scale: &[f32],
    shift: &[f32],
) {
    let per = weight.len() / scale.len().max(1);
    for (co, (&a, &t)) in scale.iter().zip(shift).enumerate() {
        for w in &mut weight[co * per..(co + 1) * per] {
            *w *= a;
        }
        bias[co] = bias[co] * a + t;
    }
}

impl Graph {
    /// How many steps read each value (the graph output counts as a reader).
    fn readers(&self) -> Vec<usize> {
        let mut r = vec![0; self.shapes.len()];
        for s in &self.steps {
            for i in s.inputs() {
                r[i] += 1;
            }
        }
        r[self.output] += 1;
        r
    }

    /// The step that computes each computed value.
    fn producers(&self) -> HashMap<usize, usize> {
        self.steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.output(), i))
            .collect()
    }

    /// BatchNorm into the convolution before it, a residual Add into the convolution that makes
    /// one of its operands (the convolution moves down to the Add's place, where the other operand
    /// exists), and ReLU into the step before it, wherever the value between them has no other
    /// reader.
    pub(super) fn fuse(&mut self) {
        self.fuse_pairs();
        while self.fuse_residual() {}
        self.fuse_pairs();
    }

    fn fuse_residual(&mut self) -> bool {
        let readers = self.readers();
        let producer = self.producers();
        for i in 0..self.steps.len() {
            let Step::Add { a, b, y, relu } = self.steps[i] else {
                continue;
            };
            for (mine, other) in [(a, b), (b, a)] {
                let Some(&p) = producer.get(&mine) else {
                    continue;
                };
                let fusable = readers[mine] == 1
                    && mine != other
                    && matches!(
                        self.steps[p],
                        Step::Conv {
                            residual: None,
                            relu: false,
                            ..
                        }
                    );
                if !fusable {
                    continue;
                }
                let mut conv = self.steps.remove(p);
                if let Step::Conv {
                    residual,
                    relu: r,
                    y: cy,
                    ..
                } = &mut conv
                {
                    *residual = Some(other);
                    *r = relu;
                    *cy = y;
                }
                // The Add is now at i - 1; the convolution takes its place.
                self.steps[i - 1] = conv;
                return true;
            }
        }
        false
    }

    fn fuse_pairs(&mut self) {
        loop {
            let readers = self.readers();
            let producer = self.producers();
            let mut fused = None;
            for (i, s) in self.steps.iter().enumerate() {
                let (x, y) = match *s {
                    Step::Affine {
                        x, y, relu: false, ..
                    }
                    | Step::Relu { x, y } => (x, y),
                    _ => continue,
                };
                let Some(&p) = producer.get(&x) else { continue };
                if readers[x] != 1 {
                    continue;
                }
                let ok = matches!(
                    (&self.steps[p], s),
                    (
                        Step::Conv {
                            relu: false,
                            residual: None,
                            ..
                        },
                        Step::Affine { .. }
                    ) | (Step::Conv { relu: false, .. }, Step::Relu { .. })
                        | (Step::Affine { relu: false, .. }, Step::Relu { .. })
                        | (Step::Add { relu: false, .. }, Step::Relu { .. })
                );
                if ok {
                    fused = Some((p, i, y));
                    break;
                }
            }
            let Some((p, i, y)) = fused else { break };
            let step = self.steps.remove(i);
            let target = &mut self.steps[p];
            match (target, step) {
                (
                    Step::Conv {
                        dims,
                        weight,
                        bias,
                        y: cy,
                        ..
                    },
                    Step::Affine { scale, shift, .. },
                ) => {
                    debug_assert_eq!(weight.len(), dims[3] * dims[0] * dims[4] * dims[4]);
                    fold_affine_into_conv(weight, bias, &scale, &shift);
                    *cy = y;
                }
                (Step::Conv { relu, y: py, .. }, Step::Relu { .. })
                | (Step::Affine { relu, y: py, .. }, Step::Relu { .. })
                | (Step::Add { relu, y: py, .. }, Step::Relu { .. }) => {
                    *relu = true;
                    *py = y;
                }
                _ => unreachable!("only the pairs matched above are fused"),
            }
        }
    }
}
