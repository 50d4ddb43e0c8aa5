//! Calibration: the float model runs on tract with the activations to quantize as extra outputs,
//! and each activation's range is taken from the values seen.

use std::path::Path;

use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::SimpleState;

use crate::error::{boxed, Result, RuntimeError};
use crate::guard::catching;

/// How an activation's range is chosen from the calibration values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Calibration {
    /// The smallest and largest value seen.
    MinMax,
    /// The values between the `(100 - p)`-th and the `p`-th percentile (e.g. 99.99), which
    /// ignores rare outliers.
    Percentile(f64),
}

/// Bins of the histogram the percentile method reads.
const BINS: usize = 4096;

/// `(min, max)` of each of `names` (tensors of `model`) over `images` (`image_len` values each),
/// run `batch` at a time (the graph's fixed batch size, else 1).
#[allow(clippy::too_many_arguments)]
pub(super) fn ranges(
    path: &Path,
    model: &pb::ModelProto,
    names: &[String],
    images: &[f32],
    image_len: usize,
    chw: [usize; 3],
    fixed_batch: Option<usize>,
    method: Calibration,
) -> Result<Vec<(f32, f32)>> {
    let plan_err = |e: TractError| RuntimeError::Plan {
        path: path.to_path_buf(),
        source: boxed(e.context("building the calibration plan")),
    };
    let batch = fixed_batch.unwrap_or(1).max(1);
    let n = images.len() / image_len / batch * batch;
    if n == 0 {
        return Err(RuntimeError::InvalidArgument(format!(
            "the model takes batches of {batch}; give at least that many calibration images"
        )));
    }
    let [c, h, w] = chw;
    let plan = catching("tract", || -> TractResult<_> {
        let parsed = tract_onnx::onnx()
            .with_ignore_output_shapes(true)
            .with_ignore_value_info(true)
            .parse(model, None)?;
        let outlets = names
            .iter()
            .map(|n| {
                parsed
                    .outlets_by_name
                    .get(n)
                    .copied()
                    .ok_or_else(|| anyhow::anyhow!("no value named `{n}`"))
            })
            .collect::<TractResult<Vec<_>>>()?;
        let mut m = parsed.model;
        m.select_output_outlets(&outlets)?;
        m.with_input_fact(0, f32::fact([batch, c, h, w]).into())?
            .into_optimized()?
            .into_runnable()
    })
    .map_err(|panic| RuntimeError::Plan {
        path: path.to_path_buf(),
        source: panic.into(),
    })?
    .map_err(plan_err)?;
    let run_err = |e: TractError| RuntimeError::Inference {
        path: path.to_path_buf(),
        source: boxed(e.context("calibrating")),
    };
    let mut state = SimpleState::new(&plan).map_err(run_err)?;
    let mut each = |f: &mut dyn FnMut(usize, &[f32])| -> Result<()> {
        for start in (0..n).step_by(batch) {
            let x = &images[start * image_len..(start + batch) * image_len];
            let t = Tensor::from_shape(&[batch, c, h, w], x).map_err(run_err)?;
            let outs = state.run(tvec![t.into_tvalue()]).map_err(run_err)?;
            for (k, o) in outs.iter().enumerate() {
                let v = o.to_plain_array_view::<f32>().map_err(run_err)?;
                let v = v
                    .as_slice()
                    .ok_or_else(|| run_err(anyhow::anyhow!("`{}` is not contiguous", names[k])))?;
                f(k, v);
            }
        }
        Ok(())
    };
    let mut mm = vec![(f32::INFINITY, f32::NEG_INFINITY); names.len()];
    each(&mut |k, v| {
        for &x in v {
            if x.is_finite() {
                mm[k].0 = mm[k].0.min(x);
                mm[k].1 = mm[k].1.max(x);
            }
        }
    })?;
    if let Some(k) = mm.iter().position(|&(lo, hi)| lo > hi) {
        return Err(RuntimeError::Contract {
            path: path.to_path_buf(),
            problem: format!(
                "`{}` held no finite value on the calibration images",
                names[k]
            ),
        });
    }
    let Calibration::Percentile(p) = method else {
        return Ok(mm);
    };
    let mut hist = vec![vec![0u64; BINS]; names.len()];
    let bin = |k: usize, x: f32| -> usize {
        let (lo, hi) = mm[k];
        (((x - lo) / (hi - lo).max(f32::MIN_POSITIVE) * BINS as f32) as usize).min(BINS - 1)
    };
    each(&mut |k, v| {
        for &x in v {
            if x.is_finite() {
                hist[k][bin(k, x)] += 1;
            }
        }
    })?;
    Ok((0..names.len())
        .map(|k| percentile_range(&hist[k], mm[k], p))
        .collect())
}

/// The range between the `(100 - p)`-th and `p`-th percentiles of a histogram over `[lo, hi]`
/// (bin edges: the low edge of the first bin holding the low percentile, the high edge of the
/// last bin holding the high one).
fn percentile_range(hist: &[u64], (lo, hi): (f32, f32), p: f64) -> (f32, f32) {
    let total: u64 = hist.iter().sum();
    if total == 0 || hi <= lo {
        return (lo, hi);
    }
    let tail = ((1.0 - p / 100.0) * total as f64).floor() as u64;
    let width = (hi - lo) / hist.len() as f32;
    let mut seen = 0;
    let mut first = 0;
    for (i, &c) in hist.iter().enumerate() {
        seen += c;
        if seen > tail {
            first = i;
            break;
        }
    }
    let mut seen = 0;
    let mut last = hist.len() - 1;
    for (i, &c) in hist.iter().enumerate().rev() {
        seen += c;
        if seen > tail {
            last = i;
            break;
        }
    }
    (
        lo + first as f32 * width,
        (lo + (last + 1) as f32 * width).min(hi),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_drop_rare_outliers_and_keep_the_bulk() {
        // 10,000 values in bin 0..100 of [0, 100], one outlier at the top.
        let mut hist = vec![0u64; 1000];
        for b in 0..100 {
            hist[b] = 100;
        }
        hist[999] = 1;
        let (lo, hi) = percentile_range(&hist, (0.0, 100.0), 99.99);
        assert_eq!(lo, 0.0);
        assert!((hi - 10.0).abs() < 1e-4, "{hi}");
        // 100 keeps everything.
        assert_eq!(percentile_range(&hist, (0.0, 100.0), 100.0), (0.0, 100.0));
    }
}
