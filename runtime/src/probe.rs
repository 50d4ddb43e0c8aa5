//! The correctness check the native executor passes before it is used: its logits against tract's
//! plan on reproducible probe inputs of its own (not the benchmark's).

use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::guard::catching;
use crate::native::Graph;
use crate::noise::unit_noise;

/// Probe inputs the native executor must agree with tract on before it is used.
const PROBES: usize = 2;
/// Agreement needed for float graphs: max |native - tract| <= this · max(1, max |tract|) over the
/// probe logits (int8 graphs: [`Graph::tolerance`]).
pub(crate) const TOLERANCE: f32 = 1e-3;
/// Seed of the probe inputs' generator.
const SEED: u64 = 0x2545_f491_4f6c_dd1d;

/// The probe inputs of `len` values each: reproducible pseudo-random values in [-1.5, 1.5).
pub(crate) fn inputs(len: usize) -> Vec<Vec<f32>> {
    let mut seed = SEED;
    (0..PROBES)
        .map(|_| {
            unit_noise(&mut seed, len)
                .iter()
                .map(|v| v * 3.0 - 1.5)
                .collect()
        })
        .collect()
}

/// Runs `graph` and tract's `plan` on each of `inputs` (of `shape`, `[batch, C, H, W]`) and checks
/// that their logits agree; else says why not. `bufs` holds the native graph's values.
pub(crate) fn check(
    graph: &Graph,
    plan: &Arc<TypedSimplePlan>,
    shape: [usize; 4],
    inputs: &[Vec<f32>],
    bufs: &mut Vec<Vec<f32>>,
) -> Result<(), String> {
    for (probe, input) in inputs.iter().enumerate() {
        let Ok(reference) = run_tract(plan, shape, input) else {
            return Err("the probe run failed".into());
        };
        let ours = catching("native", || graph.run(shape[0], input, bufs, None))
            .map_err(|panic| format!("native executor failed: {panic}"))?;
        let scale = reference.iter().fold(1f32, |m, v| m.max(v.abs()));
        // A NaN on either side counts as an unbounded disagreement.
        let err = ours.iter().zip(&reference).fold(0f32, |m, (a, b)| {
            let d = (a - b).abs();
            m.max(if d.is_nan() { f32::INFINITY } else { d })
        });
        if ours.len() != reference.len() || err > graph.tolerance(scale) {
            return Err(format!(
                "native executor disagrees with tract on probe {probe}: max error {err} at scale {scale}"
            ));
        }
    }
    Ok(())
}

/// tract's logits for `input` of `shape`.
fn run_tract(
    plan: &Arc<TypedSimplePlan>,
    shape: [usize; 4],
    input: &[f32],
) -> TractResult<Vec<f32>> {
    let t = Tensor::from_shape(&shape, input)?;
    let out = plan.spawn()?.run(tvec!(t.into_tvalue()))?;
    Ok(out[0].try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
}
