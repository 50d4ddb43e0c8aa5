//! A loaded model, kept private: tract's optimized plan per batch size actually used, shared by
//! all threads, the [`Executor`] that runs it (`executor.rs`: native graph or tract), and per-thread
//! sessions that reuse their state between runs.
//!
//! tract runs a plan on one thread, and a plan specialised to a fixed input shape is its fastest
//! path, so the engine never runs the symbolic-batch graph: it builds (once, lazily) a plan for each
//! concrete batch size it is asked for.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::error::{boxed, Result, RuntimeError};
use crate::executor::{self, Executor, Preference};
use crate::guard::catching;
use crate::team::Team;

type Plan = TypedSimplePlan;

/// A model ready to run on `[batch, C, H, W]` float input; `Send + Sync`.
pub(crate) struct Engine {
    source: PathBuf,
    template: InferenceModel,
    chw: [usize; 3],
    /// `Some(n)` when the graph's batch dimension is the fixed number `n`.
    fixed_batch: Option<usize>,
    plans: Mutex<HashMap<usize, Arc<Plan>>>,
    /// Number of logits per image, read from the first plan's output shape.
    classes: usize,
    /// Which executor runs the model, and why (the native graph when it compiled and agreed).
    executor: Executor,
    /// Thread teams for one request's convolutions, by size.
    teams: Mutex<HashMap<usize, Arc<Team>>>,
    /// The native executor's value buffers of finished sessions, for the next ones: a request
    /// neither allocates nor zeroes them again.
    spare_bufs: Mutex<Vec<Vec<Vec<f32>>>>,
}

/// Buffer sets [`Engine::spare_bufs`] keeps: one per core, as many as a request's workers (each
/// set is sized for the largest batch it ran, so more would only hold memory).
fn spare_bufs() -> usize {
    crate::classifier::default_threads()
}

impl Engine {
    /// Parses the graph with tract and builds the plan for the smallest usable batch, which also
    /// tells the output size. `dir` resolves external tensor data (None for in-memory models).
    pub fn new(
        source: &Path,
        proto: &pb::ModelProto,
        dir: Option<&str>,
        chw: [usize; 3],
        fixed_batch: Option<usize>,
    ) -> Result<Engine> {
        let plan_err = |e: TractError| RuntimeError::Plan {
            path: source.to_path_buf(),
            source: boxed(e),
        };
        crate::model_file::check_wiring(source, proto)?;
        let parsed = catching("tract", || {
            tract_onnx::onnx()
                .with_ignore_output_shapes(true)
                .with_ignore_value_info(true)
                .parse(proto, dir)
        })
        .map_err(|panic| RuntimeError::Plan {
            path: source.to_path_buf(),
            source: panic.into(),
        })?
        .map_err(plan_err)?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(RuntimeError::Contract {
                path: source.to_path_buf(),
                problem: format!(
                    "graph uses values nothing defines: {}",
                    parsed.unresolved_inputs.join(", ")
                ),
            });
        }
        let mut engine = Engine {
            source: source.to_path_buf(),
            template: parsed.model,
            chw,
            fixed_batch,
            plans: Mutex::new(HashMap::new()),
            classes: 0,
            executor: Executor::tract(String::new()),
            teams: Mutex::new(HashMap::new()),
            spare_bufs: Mutex::new(Vec::new()),
        };
        let batch = fixed_batch.unwrap_or(1);
        let plan = engine.build_plan(batch)?;
        let shape = plan.model().output_fact(0).map_err(plan_err)?.shape.clone();
        let dims: Option<Vec<usize>> = shape.as_concrete().map(|d| d.to_vec());
        engine.classes = match dims.as_deref() {
            Some(&[b, k]) if b == batch && k > 0 => k,
            _ => {
                return Err(RuntimeError::Contract {
                    path: source.to_path_buf(),
                    problem: format!(
                        "output has shape {shape:?} for a batch of {batch}, expected [{batch}, classes]"
                    ),
                })
            }
        };
        engine.plans.lock().unwrap().insert(batch, plan.clone());
        let preference = Preference::from_env().map_err(RuntimeError::InvalidArgument)?;
        engine.executor = executor::choose(proto, &plan, chw, engine.classes, batch, preference);
        Ok(engine)
    }

    /// A team of `threads` threads for one request's convolutions (made once per size).
    pub fn team(&self, threads: usize) -> Arc<Team> {
        let mut teams = self.teams.lock().unwrap_or_else(|p| p.into_inner());
        teams
            .entry(threads)
            .or_insert_with(|| Arc::new(Team::new(threads)))
            .clone()
    }

    /// Leaves the model to tract.
    pub fn use_tract(&mut self) {
        self.executor.prefer_tract();
    }

    /// Runs the model on the native executor, if it compiled and agreed with tract; else the
    /// reason it cannot.
    pub fn use_native(&mut self) -> std::result::Result<(), String> {
        self.executor.prefer_native()
    }

    /// Runs the native graph in the blocked layout (or the flat one) from now on; else the
    /// reason it cannot.
    pub fn use_layout(&mut self, blocked: bool) -> std::result::Result<(), String> {
        self.executor.prefer_layout(blocked)
    }

    /// Whether the native executor runs the model.
    pub fn is_native(&self) -> bool {
        self.executor.native().is_some()
    }

    /// Which executor runs the model (`native ...` or `tract ...`) and why.
    pub fn note(&self) -> &str {
        self.executor.reason()
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The batch size the graph forces, if any.
    pub fn fixed_batch(&self) -> Option<usize> {
        self.fixed_batch
    }

    fn build_plan(&self, batch: usize) -> Result<Arc<Plan>> {
        let [c, h, w] = self.chw;
        let fact = f32::fact([batch, c, h, w]).into();
        let context = format!("optimizing for input [{batch}, {c}, {h}, {w}]");
        catching("tract", || {
            self.template
                .clone()
                .with_input_fact(0, fact)
                .and_then(|m| m.into_optimized())
                .and_then(|m| m.into_runnable())
        })
        .map_err(|panic| anyhow::anyhow!(panic))
        .and_then(|r| r)
        .map_err(|e| RuntimeError::Plan {
            path: self.source.clone(),
            source: boxed(e.context(context)),
        })
    }

    /// The optimized plan for `batch` images, built on first use.
    fn plan(&self, batch: usize) -> Result<Arc<Plan>> {
        // Held while building, so that concurrent callers build each plan once.
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = plans.get(&batch) {
            return Ok(p.clone());
        }
        let p = self.build_plan(batch)?;
        plans.insert(batch, p.clone());
        Ok(p)
    }
}

/// One thread's handle on an engine: keeps a tract state per batch size between runs.
pub(crate) struct Session<'a> {
    engine: &'a Engine,
    states: HashMap<usize, TypedSimpleState>,
    /// The native executor's intermediate values, kept between runs.
    bufs: Vec<Vec<f32>>,
    /// When set, each native convolution splits over this team (one request, several threads).
    team: Option<Arc<Team>>,
}

impl Drop for Session<'_> {
    /// Hands the value buffers back to the engine. Their content does not matter: the native graph
    /// tags which layout they hold and starts afresh on a mismatch.
    fn drop(&mut self) {
        if self.bufs.is_empty() {
            return;
        }
        if let Ok(mut spare) = self.engine.spare_bufs.lock() {
            if spare.len() < spare_bufs() {
                spare.push(std::mem::take(&mut self.bufs));
            }
        }
    }
}

impl<'a> Session<'a> {
    pub fn new(engine: &'a Engine) -> Self {
        let bufs = engine
            .spare_bufs
            .lock()
            .map(|mut spare| spare.pop().unwrap_or_default())
            .unwrap_or_default();
        Session {
            engine,
            states: HashMap::new(),
            bufs,
            team: None,
        }
    }

    /// Runs each native convolution over `team`'s threads.
    pub fn with_team(mut self, team: Option<Arc<Team>>) -> Self {
        self.team = team;
        self
    }

    /// Runs `batch` images held in `input` (`batch * C * H * W` values) and returns
    /// `batch * classes` logits.
    pub fn run(&mut self, batch: usize, input: &[f32]) -> Result<Vec<f32>> {
        if let Some(g) = self.engine.executor.native() {
            let bufs = &mut self.bufs;
            let team = self.team.as_deref();
            let run = || g.run(batch, input, bufs, team);
            return catching("native", run).map_err(|panic| RuntimeError::Inference {
                path: self.engine.source.clone(),
                source: panic.into(),
            });
        }
        match catching("tract", || self.run_plan(batch, input)) {
            Ok(result) => result,
            Err(panic) => {
                // The state may be half-updated: the next run of this size starts afresh.
                self.states.remove(&batch);
                Err(RuntimeError::Inference {
                    path: self.engine.source.clone(),
                    source: panic.into(),
                })
            }
        }
    }

    fn run_plan(&mut self, batch: usize, input: &[f32]) -> Result<Vec<f32>> {
        let e = self.engine;
        let fail = |err: TractError| RuntimeError::Inference {
            path: e.source.clone(),
            source: boxed(err),
        };
        let [c, h, w] = e.chw;
        let state = match self.states.entry(batch) {
            std::collections::hash_map::Entry::Occupied(s) => s.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(e.plan(batch)?.spawn().map_err(fail)?)
            }
        };
        let tensor = Tensor::from_shape(&[batch, c, h, w], input).map_err(fail)?;
        let out = state.run(tvec!(tensor.into_tvalue())).map_err(fail)?;
        let view = out[0].try_as_plain_ram().map_err(fail)?;
        let logits = view.as_slice::<f32>().map_err(fail)?;
        if logits.len() != batch * e.classes {
            return Err(RuntimeError::Inference {
                path: e.source.clone(),
                source: format!(
                    "output holds {} values, expected {batch} x {}",
                    logits.len(),
                    e.classes
                )
                .into(),
            });
        }
        Ok(logits.to_vec())
    }
}
