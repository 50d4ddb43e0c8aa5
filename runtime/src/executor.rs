//! The executor seam: which of the two executors runs a model, and why.
//!
//! Every model is planned by tract. A graph the native executor (`sc-kernels` convolutions)
//! compiles is then checked against tract's plan on probe inputs, and, when it agrees, both are
//! timed on the same input at load: the faster one runs, so the runtime never runs a model slower
//! than tract would. The decision is made once per loaded model, single-threaded, at the batch
//! size the correctness check used (the graph's fixed batch, else 1).
//!
//! `SC_RUNTIME_ENGINE=tract|native|auto` (read at load) forces one side or restores the timed
//! choice; `native` still requires the correctness check to pass.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::guard::catching;
use crate::native::Graph;
use crate::noise::unit_noise;

/// Environment variable that forces an executor.
pub const ENGINE_ENV: &str = "SC_RUNTIME_ENGINE";

/// Probe inputs the native executor must agree with tract on before it is used.
const PROBES: usize = 2;
/// Agreement needed: max |native - tract| <= this · max(1, max |tract|) over the probe logits.
const PROBE_TOLERANCE: f32 = 1e-3;
/// Timing: at least this many alternating rounds, more while under the time budget.
const MIN_ROUNDS: usize = 2;
const MAX_ROUNDS: usize = 7;
const TIMING_BUDGET: Duration = Duration::from_millis(300);

/// Refuses a mistyped `SC_RUNTIME_ENGINE` or `SC_KERNELS_ISA` (programs call it before any work;
/// a load would refuse the first, and the kernels would ignore the second with a warning).
pub fn check_environment() -> crate::Result<()> {
    Preference::from_env().map_err(crate::RuntimeError::InvalidArgument)?;
    sc_kernels::micro::env_cap().map_err(crate::RuntimeError::InvalidArgument)?;
    Ok(())
}

/// Which executor the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Preference {
    /// The faster of the two, timed at load (the default).
    Auto,
    Tract,
    Native,
}

impl Preference {
    /// From `SC_RUNTIME_ENGINE`; unset or empty means `Auto`.
    pub fn from_env() -> Result<Preference, String> {
        match std::env::var(ENGINE_ENV) {
            Err(_) => Ok(Preference::Auto),
            Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
                "" | "auto" => Ok(Preference::Auto),
                "tract" => Ok(Preference::Tract),
                "native" => Ok(Preference::Native),
                _ => Err(format!(
                    "{ENGINE_ENV}={v:?}: expected auto, tract or native"
                )),
            },
        }
    }
}

/// The outcome of choosing: the checked native graph (kept even when tract runs, so that
/// [`Choice::prefer_native`] can switch to it), which one runs, and a note saying why.
pub(crate) struct Choice {
    pub native: Option<Graph>,
    pub use_native: bool,
    pub note: String,
}

impl Choice {
    fn tract(note: String) -> Choice {
        Choice {
            native: None,
            use_native: false,
            note,
        }
    }

    /// Runs tract from now on.
    pub fn prefer_tract(&mut self) {
        if self.use_native || self.native.is_some() {
            self.use_native = false;
            self.note = "tract (asked for)".into();
        }
    }

    /// Runs the native graph from now on, if it compiled and agreed with tract; else says why not.
    pub fn prefer_native(&mut self) -> Result<(), String> {
        match &self.native {
            Some(_) => {
                if !self.use_native {
                    self.use_native = true;
                    self.note = format!(
                        "native (asked for; sc-kernels {} convolutions, checked against tract)",
                        isa_name()
                    );
                }
                Ok(())
            }
            None => Err(self.note.clone()),
        }
    }

    /// The graph that runs, when it is the native one.
    pub fn running_native(&self) -> Option<&Graph> {
        self.native.as_ref().filter(|_| self.use_native)
    }
}

/// The kernels' instruction set, as `sc-kernels` chose it for this CPU (and `SC_KERNELS_ISA`).
fn isa_name() -> &'static str {
    sc_kernels::micro::isa().name()
}

/// Compiles `proto` for the native executor, checks it against tract's `plan` for `batch`
/// images of shape `chw` (whose output has `classes` logits), and picks an executor.
pub(crate) fn choose(
    proto: &pb::ModelProto,
    plan: &Arc<TypedSimplePlan>,
    chw: [usize; 3],
    classes: usize,
    batch: usize,
    preference: Preference,
) -> Choice {
    if preference == Preference::Tract {
        return Choice::tract(format!("tract ({ENGINE_ENV}=tract)"));
    }
    let graph = match catching("native", || Graph::compile(proto, chw)) {
        Ok(Ok(g)) if g.classes() == classes => g,
        Ok(Ok(g)) => {
            return Choice::tract(format!(
                "tract (native: {} outputs, tract {classes})",
                g.classes()
            ))
        }
        Ok(Err(why)) => return Choice::tract(format!("tract (native executor: {why})")),
        Err(panic) => return Choice::tract(format!("tract (native executor failed: {panic})")),
    };
    let [c, h, w] = chw;
    let len = batch * c * h * w;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut bufs = Vec::new();
    let mut input = Vec::new();
    for probe in 0..PROBES {
        input = unit_noise(&mut seed, len)
            .iter()
            .map(|v| v * 3.0 - 1.5)
            .collect();
        let Ok(reference) = run_tract(plan, [batch, c, h, w], &input) else {
            return Choice::tract("tract (the probe run failed)".into());
        };
        let ours = match catching("native", || graph.run(batch, &input, &mut bufs, None)) {
            Ok(v) => v,
            Err(panic) => return Choice::tract(format!("tract (native executor failed: {panic})")),
        };
        let scale = reference.iter().fold(1f32, |m, v| m.max(v.abs()));
        // A NaN on either side counts as an unbounded disagreement.
        let err = ours.iter().zip(&reference).fold(0f32, |m, (a, b)| {
            let d = (a - b).abs();
            m.max(if d.is_nan() { f32::INFINITY } else { d })
        });
        if ours.len() != reference.len() || err > PROBE_TOLERANCE * scale {
            return Choice::tract(format!(
                "tract (native executor disagrees with tract on probe {probe}: max error {err} at scale {scale})"
            ));
        }
    }
    let isa = isa_name();
    if preference == Preference::Native {
        return Choice {
            native: Some(graph),
            use_native: true,
            note: format!(
                "native ({ENGINE_ENV}=native; sc-kernels {isa} convolutions, checked against tract)"
            ),
        };
    }
    let timed = catching("native", || {
        race(&graph, plan, [batch, c, h, w], &input, &mut bufs)
    });
    let (native_s, tract_s) = match timed {
        Ok(Ok(t)) => t,
        _ => return Choice::tract("tract (timing the native executor failed)".into()),
    };
    if native_s <= tract_s {
        Choice {
            native: Some(graph),
            use_native: true,
            note: format!(
                "native (sc-kernels {isa} convolutions, checked against tract; {:.1}x tract's speed at batch {batch})",
                tract_s / native_s
            ),
        }
    } else {
        Choice {
            native: Some(graph),
            use_native: false,
            note: format!(
                "tract (its plan ran {:.1}x the native executor's speed with {isa} kernels at batch {batch})",
                native_s / tract_s
            ),
        }
    }
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

/// Best-of-rounds seconds per run of the native graph and of tract's plan, on one thread,
/// alternating so that both see the same machine load.
fn race(
    graph: &Graph,
    plan: &Arc<TypedSimplePlan>,
    shape: [usize; 4],
    input: &[f32],
    bufs: &mut Vec<Vec<f32>>,
) -> TractResult<(f64, f64)> {
    let mut state = plan.spawn()?;
    let tensor = Tensor::from_shape(&shape, input)?;
    // Warm-up: the tract state's first run allocates its buffers.
    state.run(tvec!(tensor.clone().into_tvalue()))?;
    let (mut native, mut tract) = (f64::INFINITY, f64::INFINITY);
    let started = Instant::now();
    for round in 0..MAX_ROUNDS {
        if round >= MIN_ROUNDS && started.elapsed() > TIMING_BUDGET {
            break;
        }
        let t = Instant::now();
        std::hint::black_box(graph.run(shape[0], input, bufs, None));
        native = native.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        std::hint::black_box(state.run(tvec!(tensor.clone().into_tvalue()))?);
        tract = tract.min(t.elapsed().as_secs_f64());
    }
    Ok((native, tract))
}
