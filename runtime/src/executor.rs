//! The executor seam: which of the two executors runs a model, and why.
//!
//! Every model is planned by tract. A graph the native executor (`sc-kernels` convolutions)
//! compiles is then checked against tract's plan on probe inputs (`probe.rs`), and, when it
//! agrees, both are timed on the same input at load: the faster one runs, so the runtime never
//! runs a model slower than tract would. The decision ([`Executor`]) is made once per loaded
//! model, single-threaded, at the batch size the correctness check used (the graph's fixed batch,
//! else 1).
//!
//! `SC_RUNTIME_ENGINE=tract|native|auto` (read at load) forces one side or restores the timed
//! choice; `native` still requires the correctness check to pass.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::guard::catching;
use crate::native::Graph;
use crate::probe;

/// Environment variable that forces an executor.
pub const ENGINE_ENV: &str = "SC_RUNTIME_ENGINE";

/// Environment variable that forces the native executor's layout.
pub const LAYOUT_ENV: &str = "SC_RUNTIME_LAYOUT";

/// `SC_RUNTIME_LAYOUT`: `None` (unset, empty or `auto`: the faster, timed at load), `Some(false)`
/// for `flat`, `Some(true)` for `blocked`.
fn layout_from_env() -> Result<Option<bool>, String> {
    match std::env::var(LAYOUT_ENV) {
        Err(_) => Ok(None),
        Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(None),
            "flat" => Ok(Some(false)),
            "blocked" => Ok(Some(true)),
            _ => Err(format!(
                "{LAYOUT_ENV}={v:?}: expected auto, flat or blocked"
            )),
        },
    }
}

/// Timing: at least this many alternating rounds, more while under the time budget.
const MIN_ROUNDS: usize = 2;
const MAX_ROUNDS: usize = 7;
const TIMING_BUDGET: Duration = Duration::from_millis(300);

/// Refuses a mistyped `SC_RUNTIME_ENGINE` or `SC_KERNELS_ISA` (programs call it before any work;
/// a load would refuse the first, and the kernels would ignore the second with a warning).
pub fn check_environment() -> crate::Result<()> {
    Preference::from_env().map_err(crate::RuntimeError::InvalidArgument)?;
    layout_from_env().map_err(crate::RuntimeError::InvalidArgument)?;
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

/// Which executor runs a loaded model, each with the reason (what `info` and the benchmark print).
pub(crate) enum Executor {
    /// The native graph runs: it compiled, agreed with tract on the probes, and timed faster
    /// (or was asked for).
    Native { graph: Graph, reason: String },
    /// tract's plan runs. `standby` is the checked native graph when there is one (tract timed
    /// faster, or was asked for), so that [`Executor::prefer_native`] can switch to it.
    Tract {
        standby: Option<Graph>,
        reason: String,
    },
}

impl Executor {
    /// tract, with no native graph to switch to.
    pub fn tract(reason: String) -> Executor {
        Executor::Tract {
            standby: None,
            reason,
        }
    }

    /// Which executor runs (`native ...` or `tract ...`) and why.
    pub fn reason(&self) -> &str {
        match self {
            Executor::Native { reason, .. } | Executor::Tract { reason, .. } => reason,
        }
    }

    /// Runs tract from now on.
    pub fn prefer_tract(&mut self) {
        if let Executor::Tract { standby: None, .. } = self {
            return;
        }
        let standby = match std::mem::replace(self, Executor::tract(String::new())) {
            Executor::Native { graph, .. } => Some(graph),
            Executor::Tract { standby, .. } => standby,
        };
        *self = Executor::Tract {
            standby,
            reason: "tract (asked for)".into(),
        };
    }

    /// Runs the native graph from now on, if it compiled and agreed with tract; else says why not.
    pub fn prefer_native(&mut self) -> Result<(), String> {
        let Executor::Tract { standby, reason } = self else {
            return Ok(());
        };
        let Some(graph) = standby.take() else {
            return Err(reason.clone());
        };
        let kernels = graph.kernels();
        *self = Executor::Native {
            graph,
            reason: format!("native (asked for; sc-kernels {kernels}, checked against tract)"),
        };
        Ok(())
    }

    /// Runs the native graph (running now, or on standby) in the blocked layout, or the flat one,
    /// from now on; else says why it cannot.
    pub fn prefer_layout(&mut self, blocked: bool) -> Result<(), String> {
        let graph = match self {
            Executor::Native { graph, .. } => graph,
            Executor::Tract {
                standby: Some(graph),
                ..
            } => graph,
            Executor::Tract { reason, .. } => return Err(reason.clone()),
        };
        if blocked {
            graph
                .blocked_form()
                .map_err(|why| format!("no blocked form: {why}"))?;
        }
        graph.set_blocked(blocked);
        let kernels = graph.kernels();
        if let Executor::Native { reason, .. } = self {
            *reason = format!(
                "native (asked for the {} layout; sc-kernels {}, checked against tract)",
                if blocked { "8-channel blocked" } else { "flat" },
                kernels
            );
        }
        Ok(())
    }

    /// The graph that runs, when it is the native one.
    pub fn native(&self) -> Option<&Graph> {
        match self {
            Executor::Native { graph, .. } => Some(graph),
            Executor::Tract { .. } => None,
        }
    }
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
) -> Executor {
    if preference == Preference::Tract {
        return Executor::tract(format!("tract ({ENGINE_ENV}=tract)"));
    }
    let mut graph = match catching("native", || Graph::compile(proto, chw)) {
        Ok(Ok(g)) if g.classes() == classes => g,
        Ok(Ok(g)) => {
            return Executor::tract(format!(
                "tract (native: {} outputs, tract {classes})",
                g.classes()
            ))
        }
        Ok(Err(why)) => return Executor::tract(format!("tract (native executor: {why})")),
        Err(panic) => return Executor::tract(format!("tract (native executor failed: {panic})")),
    };
    let [c, h, w] = chw;
    let shape = [batch, c, h, w];
    let inputs = probe::inputs(batch * c * h * w);
    let mut bufs = Vec::new();
    if let Err(why) = probe::check(&graph, plan, shape, &inputs, &mut bufs) {
        return Executor::tract(format!("tract ({why})"));
    }
    let layout = pick_layout(&mut graph, plan, shape, &inputs);
    // An int8 graph has one layout of its own: the kernels say all there is.
    let isa = if graph.is_int8() {
        graph.kernels()
    } else {
        format!("{}, {layout}", graph.kernels())
    };
    if preference == Preference::Native {
        return Executor::Native {
            graph,
            reason: format!(
                "native ({ENGINE_ENV}=native; sc-kernels {isa}, checked against tract)"
            ),
        };
    }
    // Timed on the last probe input, with buffers of the chosen layout only.
    let input = inputs.last().map_or(&[][..], Vec::as_slice);
    let mut bufs = Vec::new();
    let timed = catching("native", || race(&graph, plan, shape, input, &mut bufs));
    let (native_s, tract_s) = match timed {
        Ok(Ok(t)) => t,
        _ => return Executor::tract("tract (timing the native executor failed)".into()),
    };
    if native_s <= tract_s {
        Executor::Native {
            graph,
            reason: format!(
                "native (sc-kernels {isa}, checked against tract; {:.1}x tract's speed at batch {batch})",
                tract_s / native_s
            ),
        }
    } else {
        Executor::Tract {
            standby: Some(graph),
            reason: format!(
                "tract (its plan ran {:.1}x the native executor's speed with {isa} at batch {batch})",
                native_s / tract_s
            ),
        }
    }
}

/// Chooses the native graph's layout: the channel-blocked form when the graph has one, it agrees
/// with tract on the probes, and it times faster than the flat one on the machine's cores (or
/// `SC_RUNTIME_LAYOUT` asks for it); returns the choice in words, for the executor's reason.
fn pick_layout(
    graph: &mut Graph,
    plan: &Arc<TypedSimplePlan>,
    shape: [usize; 4],
    inputs: &[Vec<f32>],
) -> String {
    let wanted = layout_from_env().unwrap_or(None);
    graph.set_blocked(false);
    if let Err(why) = graph.blocked_form() {
        return format!("flat layout (no blocked form: {why})");
    }
    if wanted == Some(false) {
        graph.drop_blocked(format!("not checked ({LAYOUT_ENV}=flat)"));
        return format!("flat layout ({LAYOUT_ENV}=flat)");
    }
    graph.set_blocked(true);
    if let Err(why) = probe::check(graph, plan, shape, inputs, &mut Vec::new()) {
        graph.drop_blocked(why.clone());
        return format!("flat layout (the blocked one: {why})");
    }
    if wanted == Some(true) {
        return format!("8-channel blocked layout ({LAYOUT_ENV}=blocked)");
    }
    let input = inputs.last().map_or(&[][..], Vec::as_slice);
    let threads = crate::classifier::default_threads();
    match catching("native", || race_layouts(graph, shape[0], input, threads)) {
        Ok((flat, blocked)) if blocked <= flat => {
            graph.set_blocked(true);
            format!(
                "8-channel blocked layout, {:.1}x the flat one's speed",
                flat / blocked
            )
        }
        Ok((flat, blocked)) => {
            graph.set_blocked(false);
            format!(
                "flat layout, {:.1}x the blocked one's speed",
                blocked / flat
            )
        }
        Err(why) => {
            graph.set_blocked(false);
            format!("flat layout (timing the blocked one failed: {why})")
        }
    }
}

/// Best-of-rounds seconds per run of the flat and the blocked layout, alternating, on a team of
/// `threads` (as one request of few images runs: the layouts split a convolution over threads
/// differently, and the flat one copies its input on one thread).
fn race_layouts(graph: &mut Graph, n: usize, input: &[f32], threads: usize) -> (f64, f64) {
    let team = (threads > 1).then(|| crate::team::Team::new(threads));
    let (mut flat_bufs, mut blocked_bufs) = (Vec::new(), Vec::new());
    let mut best = [f64::INFINITY; 2];
    let started = Instant::now();
    for round in 0..=MAX_ROUNDS {
        if round > MIN_ROUNDS && started.elapsed() > TIMING_BUDGET {
            break;
        }
        for (i, bufs) in [&mut flat_bufs, &mut blocked_bufs].into_iter().enumerate() {
            graph.set_blocked(i == 1);
            let t = Instant::now();
            std::hint::black_box(graph.run(n, input, bufs, team.as_ref()));
            // Round 0 is a warm-up (buffers allocated, weights brought into cache).
            if round > 0 {
                best[i] = best[i].min(t.elapsed().as_secs_f64());
            }
        }
    }
    graph.set_blocked(false);
    (best[0], best[1])
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A native graph that flattens a `[2, 1, 1]` image into 2 logits.
    fn graph() -> Graph {
        let value = |name: &str| pb::ValueInfoProto {
            name: name.into(),
            ..Default::default()
        };
        let proto = pb::ModelProto {
            graph: Some(pb::GraphProto {
                node: vec![pb::NodeProto {
                    op_type: "Flatten".into(),
                    input: vec!["x".into()],
                    output: vec!["y".into()],
                    ..Default::default()
                }],
                input: vec![value("x")],
                output: vec![value("y")],
                ..Default::default()
            }),
            ..Default::default()
        };
        Graph::compile(&proto, [2, 1, 1]).expect("a Flatten compiles")
    }

    #[test]
    fn tract_without_a_graph_keeps_its_reason() {
        let mut e = Executor::tract("tract (why)".into());
        e.prefer_tract();
        assert_eq!(e.reason(), "tract (why)");
        assert_eq!(e.prefer_native(), Err("tract (why)".into()));
        assert!(e.native().is_none());
    }

    #[test]
    fn switches_between_native_and_a_standby_graph() {
        let mut e = Executor::Native {
            graph: graph(),
            reason: "native (timed)".into(),
        };
        assert!(e.native().is_some());
        e.prefer_tract();
        assert!(e.native().is_none());
        assert_eq!(e.reason(), "tract (asked for)");
        assert_eq!(e.prefer_native(), Ok(()));
        assert_eq!(e.native().map(Graph::classes), Some(2));
        assert!(e.reason().starts_with("native (asked for; sc-kernels "));
        let reason = e.reason().to_string();
        assert_eq!(e.prefer_native(), Ok(()));
        assert_eq!(e.reason(), reason);
    }
}
