//! The native executor's graph: steps over numbered values, each with a per-image shape.

use sc_kernels::conv::Packed;

/// A compiled graph: steps over numbered values, each with a per-image shape.
pub(crate) struct Graph {
    pub(super) steps: Vec<Step>,
    /// Per-image shape of each value.
    pub(super) shapes: Vec<Vec<usize>>,
    pub(super) input: usize,
    pub(super) output: usize,
    pub(super) classes: usize,
    /// The same graph in the channel-blocked layout, when every step has a blocked form; else
    /// why not.
    pub(super) blocked: Result<super::blocked::Plan, String>,
    /// Runs [`Graph::blocked`] (chosen at load, see [`crate::executor`]).
    pub(super) use_blocked: bool,
    /// An int8 (QDQ) graph runs on the int8 executor instead of `steps`.
    pub(super) int8: Option<Box<super::int8::QPlan>>,
}

pub(super) enum Step {
    Conv {
        x: usize,
        y: usize,
        /// (cin, h, w, cout, k, stride, pad)
        dims: [usize; 7],
        weight: Vec<f32>,
        packed: Option<Packed>,
        bias: Vec<f32>,
        /// A value added before the ReLU (a residual Add folded in).
        residual: Option<usize>,
        relu: bool,
    },
    /// `y = x · scale[c] + shift[c]` over the first per-image axis.
    Affine {
        x: usize,
        y: usize,
        scale: Vec<f32>,
        shift: Vec<f32>,
        relu: bool,
    },
    Relu {
        x: usize,
        y: usize,
    },
    Add {
        a: usize,
        b: usize,
        y: usize,
        relu: bool,
    },
    /// Zero padding of a `[c, h, w]` image: `begin` per axis (the output shape has the rest).
    Pad {
        x: usize,
        y: usize,
        begin: [usize; 3],
    },
    /// `y[i][j][k] = x[start + i · step]...` per axis of a `[c, h, w]` image.
    Slice {
        x: usize,
        y: usize,
        start: [usize; 3],
        step: [usize; 3],
    },
    /// Mean over H and W of a `[c, h, w]` image.
    Mean {
        x: usize,
        y: usize,
    },
    /// `y = W x + b`, `W` is `[out][in]`.
    Dense {
        x: usize,
        y: usize,
        w: Vec<f32>,
        b: Vec<f32>,
    },
    Copy {
        x: usize,
        y: usize,
    },
}

impl Step {
    pub(super) fn inputs(&self) -> Vec<usize> {
        match *self {
            Step::Add { a, b, .. } => vec![a, b],
            Step::Conv {
                x,
                residual: Some(r),
                ..
            } => vec![x, r],
            Step::Conv { x, .. }
            | Step::Affine { x, .. }
            | Step::Relu { x, .. }
            | Step::Pad { x, .. }
            | Step::Slice { x, .. }
            | Step::Mean { x, .. }
            | Step::Dense { x, .. }
            | Step::Copy { x, .. } => vec![x],
        }
    }

    pub(super) fn output(&self) -> usize {
        match *self {
            Step::Conv { y, .. }
            | Step::Affine { y, .. }
            | Step::Relu { y, .. }
            | Step::Add { y, .. }
            | Step::Pad { y, .. }
            | Step::Slice { y, .. }
            | Step::Mean { y, .. }
            | Step::Dense { y, .. }
            | Step::Copy { y, .. } => y,
        }
    }
}

impl Graph {
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Whether the graph runs on the int8 executor.
    pub fn is_int8(&self) -> bool {
        self.int8.is_some()
    }

    /// The kernels the graph runs on, in words (for the executor's reason).
    pub fn kernels(&self) -> String {
        match &self.int8 {
            Some(q) => {
                let (convs, fused) = q.convolutions();
                format!(
                    "int8 {} ({convs} uint8 convolutions, {fused} with the residual fused)",
                    q.isa()
                )
            }
            None => format!("{} convolutions", sc_kernels::micro::isa().name()),
        }
    }

    /// The largest difference from tract's logits the probe check accepts, when tract's largest
    /// logit magnitude (at least 1) is `scale`: relative for float graphs, in quantization steps
    /// for int8 ones ([`super::int8::TOLERANCE_STEPS`]).
    pub fn tolerance(&self, scale: f32) -> f32 {
        match &self.int8 {
            Some(q) => q.tolerance(),
            None => crate::probe::TOLERANCE * scale,
        }
    }

    /// Whether the graph has a channel-blocked form ([`super::blocked`]); else why not.
    pub fn blocked_form(&self) -> Result<(), &str> {
        self.blocked.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// Runs the blocked form from now on (when it has one) or the flat one. The value buffers of
    /// one layout must not be reused with the other.
    pub fn set_blocked(&mut self, on: bool) {
        self.use_blocked = on && self.blocked.is_ok();
    }

    /// Forgets the blocked form (it disagreed with tract, or was not checked), saying why.
    pub fn drop_blocked(&mut self, why: String) {
        self.blocked = Err(why);
        self.use_blocked = false;
    }
}
