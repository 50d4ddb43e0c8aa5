//! 2-D convolution (NCHW input, OIHW weight, no bias, square kernel, equal stride and zero padding
//! on both axes): forward, input gradient and weight gradient, parallel over images.
//!
//! Two layouts feed the tiles of [`super::micro`]:
//! - *flat* ("same" convolutions: stride 1, odd `k`, `pad = k / 2`): each channel is copied into
//!   a zero-padded plane whose rows are `W + pad` wide (neighbouring rows share their padding
//!   columns), so that every tap of the kernel is one constant shift of the flattened plane and
//!   no im2col matrix is built. Outputs are computed on the same `H x (W + pad)` grid and the
//!   padding columns dropped. The input gradient is the same kind of convolution (flipped,
//!   transposed kernel) of the padded output gradient.
//! - *col* (everything else, e.g. stride 2): an explicit im2col matrix per image; the input
//!   gradient goes through the transposed product and col2im.
//!
//! Weight gradients: when `cout` is a multiple of 8 and `k · cin` of 16 (every ResNet layer but
//! the stem), a channels-last copy of the input feeds the same broadcast tile as the forward
//! pass ([`ChannelsLast`]); otherwise a block of dot products over the layouts above. Either way
//! they accumulate per fixed chunk of images, reduced in a fixed order: results do not depend on
//! the thread count.

use super::bf16::{self, Pairing};
use super::micro::{self, Isa, F_ROWS, LANES};
use super::par;
use super::scratch::{self, SendPtr};

/// The shape of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geom {
    pub n: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub ho: usize,
    pub wo: usize,
}

/// The arithmetic of a convolution's products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    /// bf16 products summed in f32 ([`bf16`]): two input channels (forward), two output-gradient
    /// channels (input gradient) or two pixels (weight gradient) per step. A pass whose steps do
    /// not pair (an odd channel count: the 3-channel stem) runs in f32.
    Bf16,
}

impl Precision {
    /// `Ok` when this precision runs here ([`bf16::check`] for bf16: the CPU, and
    /// `SC_KERNELS_ISA`'s cap).
    pub fn check(self) -> Result<(), String> {
        match self {
            Precision::F32 => Ok(()),
            Precision::Bf16 => bf16::check(),
        }
    }

    /// `Ok` when the CPU has what this precision's kernels execute, whatever the cap: what they
    /// need to be sound. (The cap is the caller's policy, checked once with [`Precision::check`];
    /// it is process-wide and tests switch it.)
    fn check_cpu(self) -> Result<(), String> {
        match self {
            Precision::F32 => Ok(()),
            Precision::Bf16 => bf16::check_for(Isa::Avx512),
        }
    }
}

fn round_up(v: usize, m: usize) -> usize {
    v.div_ceil(m) * m
}

/// Copies a short row: an inlined loop (rows here are 8 to 32 values; a `memcpy` call per row
/// costs more than the copy).
#[inline(always)]
#[allow(clippy::manual_memcpy)] // the point: no memcpy call
fn copy_row(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    let src = &src[..n];
    for i in 0..n {
        dst[i] = src[i];
    }
}

/// The output columns `ow` whose input column `ow · s + kw - pad` lies in `0..w`.
fn valid_cols(wo: usize, w: usize, s: usize, kw: usize, pad: usize) -> std::ops::Range<usize> {
    // ow · s + kw >= pad  and  ow · s + kw < w + pad
    let lo = pad.saturating_sub(kw).div_ceil(s);
    let hi = if w + pad > kw {
        (w + pad - kw).div_ceil(s)
    } else {
        0
    };
    lo.min(wo)..hi.min(wo).max(lo.min(wo))
}

impl Geom {
    /// `None` when the output would be empty or the stride is zero.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        n: usize,
        cin: usize,
        h: usize,
        w: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Option<Geom> {
        if stride == 0 || k == 0 || h + 2 * pad < k || w + 2 * pad < k {
            return None;
        }
        let ho = (h + 2 * pad - k) / stride + 1;
        let wo = (w + 2 * pad - k) / stride + 1;
        if n == 0 || cin == 0 || cout == 0 {
            return None;
        }
        Some(Geom {
            n,
            cin,
            h,
            w,
            cout,
            k,
            stride,
            pad,
            ho,
            wo,
        })
    }

    /// Output pixels per channel.
    pub fn p(&self) -> usize {
        self.ho * self.wo
    }

    /// Input pixels per channel.
    pub fn hw(&self) -> usize {
        self.h * self.w
    }

    fn kk(&self) -> usize {
        self.k * self.k
    }

    fn flat(&self) -> bool {
        self.stride == 1 && self.k % 2 == 1 && self.pad == self.k / 2
    }

    /// Stride 2 with a 3x3 kernel and padding 1, or 1x1 and padding 0: the [`Parity`] layout.
    fn parity(&self) -> bool {
        self.stride == 2 && ((self.k == 3 && self.pad == 1) || (self.k == 1 && self.pad == 0))
    }

    /// The flat layout of the output grid (`ho x wo`, row pitch `wo + 1`): where the parity path
    /// keeps the output gradient.
    fn out_grid(&self) -> Flat {
        let mut og = *self;
        (og.h, og.w, og.k, og.pad, og.stride) = (self.ho, self.wo, 3, 1, 1);
        Flat::new(&og)
    }

    /// Multiply-adds of one pass (forward, or either gradient).
    pub fn macs(&self) -> u64 {
        (self.n * self.cout * self.p() * self.cin * self.kk()) as u64
    }
}

/// The padded plane layout of the flat path (also used for the output gradient, which has the
/// same size as the input there).
#[derive(Debug, Clone, Copy)]
struct Flat {
    /// Row pitch: `W + pad`.
    wp: usize,
    /// Leading zeros before the first plane.
    front: usize,
    /// Values per channel plane.
    plane: usize,
    /// Grid positions computed per channel: `H · wp`.
    pg: usize,
    /// `pg` rounded up to the tile width.
    pt: usize,
}

impl Flat {
    fn new(g: &Geom) -> Flat {
        let wp = g.w + g.pad;
        let front = g.pad;
        // Zero slack after each plane: reading a whole tile row past the last grid position
        // (the weight gradient's dot products) stays inside the plane and reads zeros.
        let plane = front + (g.h + 2 * g.pad) * wp + LANES;
        let pg = g.h * wp;
        Flat {
            wp,
            front,
            plane,
            pg,
            pt: round_up(pg, LANES),
        }
    }

    /// Length of a padded buffer of `c` planes, with slack for the last tile's over-read.
    fn len(&self, c: usize, k: usize) -> usize {
        c * self.plane + (self.pt - self.pg) + k * self.wp + k + LANES
    }

    /// Offset of tap (kh, kw) of channel `c` relative to grid position 0.
    fn off(&self, c: usize, kh: usize, kw: usize, k: usize) -> isize {
        (c * self.plane + self.front + kh * self.wp + kw) as isize - (k / 2) as isize
    }

    /// Copies one image `src[c][r][col]` (`c` channels of `h x w`) into the padded planes.
    fn fill(&self, src: &[f32], c: usize, h: usize, w: usize, pad: usize, dst: &mut [f32]) {
        for ci in 0..c {
            for r in 0..h {
                let s = &src[(ci * h + r) * w..][..w];
                let d = ci * self.plane + self.front + (r + pad) * self.wp;
                copy_row(&mut dst[d..d + w], s);
            }
        }
    }
}

/// Stride-2 layout: each input channel split into its four parity planes
/// `P[a][b][i][j] = x[2i + a][2j + b]`, each stored like a [`Flat`] plane on the output grid
/// (row pitch `wo + 1`, one zero row above, zero rows and columns beyond the data). Tap (kh, kw)
/// of a stride-2 convolution reads plane (a, b) = ((kh - pad) mod 2, (kw - pad) mod 2) shifted by
/// (⌊(kh - pad) / 2⌋, ⌊(kw - pad) / 2⌋) ∈ {-1, 0}²: a constant offset again, no im2col.
#[derive(Debug, Clone, Copy)]
struct Parity {
    grid: Flat,
}

impl Parity {
    fn new(g: &Geom) -> Parity {
        Parity { grid: g.out_grid() }
    }

    fn len(&self, c: usize) -> usize {
        4 * c * self.grid.plane + (self.grid.pt - self.grid.pg) + 2 * self.grid.wp + LANES
    }

    fn off(&self, ci: usize, kh: usize, kw: usize, pad: usize) -> isize {
        let (th, tw) = (kh as isize - pad as isize, kw as isize - pad as isize);
        let (a, b) = (th.rem_euclid(2) as usize, tw.rem_euclid(2) as usize);
        let (sh, sw) = (th.div_euclid(2), tw.div_euclid(2));
        let fl = &self.grid;
        ((ci * 4 + a * 2 + b) * fl.plane + fl.front) as isize + (sh + 1) * fl.wp as isize + sw
    }

    /// Splits one image (`c` channels of `h x w`) into the parity planes.
    fn fill(&self, src: &[f32], c: usize, h: usize, w: usize, dst: &mut [f32]) {
        let fl = &self.grid;
        for ci in 0..c {
            for r in 0..h {
                let row = &src[(ci * h + r) * w..][..w];
                let (a, i) = (r % 2, r / 2);
                for b in 0..2 {
                    let d = (ci * 4 + a * 2 + b) * fl.plane + fl.front + (i + 1) * fl.wp;
                    let dst_row = &mut dst[d..d + w.saturating_sub(b).div_ceil(2)];
                    for (j, v) in dst_row.iter_mut().enumerate() {
                        *v = row[2 * j + b];
                    }
                }
            }
        }
    }
}

/// A-operand of the forward tile: `[row tile][s = (ci, kh, kw)][8 output channels]`.
fn pack_forward(g: &Geom, w: &[f32]) -> Vec<f32> {
    let s_len = g.cin * g.kk();
    let tiles = g.cout.div_ceil(F_ROWS);
    let mut a = vec![0f32; tiles * s_len * F_ROWS];
    for co in 0..g.cout {
        let (t, j) = (co / F_ROWS, co % F_ROWS);
        for s in 0..s_len {
            a[(t * s_len + s) * F_ROWS + j] = w[co * s_len + s];
        }
    }
    a
}

/// A-operand of the flat input-gradient tile: rows are input channels, `s = (co, kh', kw')`
/// over the flipped kernel.
fn pack_backward_flat(g: &Geom, w: &[f32]) -> Vec<f32> {
    let (kk, k) = (g.kk(), g.k);
    let s_len = g.cout * kk;
    let tiles = g.cin.div_ceil(F_ROWS);
    let mut a = vec![0f32; tiles * s_len * F_ROWS];
    for ci in 0..g.cin {
        let (t, j) = (ci / F_ROWS, ci % F_ROWS);
        for co in 0..g.cout {
            for kh in 0..k {
                for kw in 0..k {
                    let s = co * kk + (k - 1 - kh) * k + (k - 1 - kw);
                    a[(t * s_len + s) * F_ROWS + j] = w[((co * g.cin + ci) * k + kh) * k + kw];
                }
            }
        }
    }
    a
}

/// A-operand of the col input-gradient tile: rows are `(ci, kh, kw)`, `s = co`.
fn pack_backward_col(g: &Geom, w: &[f32]) -> Vec<f32> {
    let kdim = g.cin * g.kk();
    let tiles = kdim.div_ceil(F_ROWS);
    let mut a = vec![0f32; tiles * g.cout * F_ROWS];
    for co in 0..g.cout {
        for kx in 0..kdim {
            let (t, j) = (kx / F_ROWS, kx % F_ROWS);
            a[(t * g.cout + co) * F_ROWS + j] = w[co * kdim + kx];
        }
    }
    a
}

/// `out[rt·8 + r][0..pt] = Σ_s a[rt][s][r] · b[offs[s] + ·]` for every row tile.
fn run_f(
    isa: Isa,
    a: &[f32],
    row_tiles: usize,
    offs: &[isize],
    b: &[f32],
    pt: usize,
    out: &mut [f32],
) {
    let s_len = offs.len();
    debug_assert!(a.len() >= row_tiles * s_len * F_ROWS);
    debug_assert!(out.len() >= row_tiles * F_ROWS * pt);
    debug_assert!(offs.iter().all(|&o| o >= 0 && o as usize + pt <= b.len()));
    for rt in 0..row_tiles {
        let ap = a[rt * s_len * F_ROWS..].as_ptr();
        let mut p0 = 0;
        while p0 < pt {
            let nv = ((pt - p0) / LANES).min(micro::F_MAX_NV);
            // SAFETY: the debug assertions above: every offset plus `pt` stays inside `b`, `a`
            // holds this tile's `s_len · 8` values and `out` its 8 rows of `pt`.
            unsafe {
                micro::f_tile(
                    isa,
                    nv,
                    ap,
                    offs,
                    b.as_ptr().add(p0),
                    out.as_mut_ptr().add(rt * F_ROWS * pt + p0),
                    pt,
                );
            }
            p0 += nv * LANES;
        }
    }
}

/// [`run_f`] at the pass's precision: with `paired` (the steps' [`Pairing`], made only where the
/// CPU has AVX512_BF16, and the A operand in its pairs), the parts of `b` the tiles read are first
/// packed into pairs in `slot`.
fn run_tiles(
    isa: Isa,
    (a, paired): (&[f32], Option<(&Pairing, &[u32])>),
    row_tiles: usize,
    offs: &[isize],
    b: &[f32],
    pt: usize,
    (out, slot): (&mut [f32], &mut scratch::Slot),
) {
    match paired {
        None => run_f(isa, a, row_tiles, offs, b, pt, out),
        Some((pairing, a2)) => {
            let b2 = slot.any_u32(b.len());
            pairing.pack_b(b, b2);
            // SAFETY: pairings exist only after Precision::check_cpu; a2 holds these tiles'
            // pairs; the offsets plus pt stay inside b (so b2), as for run_f; out holds
            // row_tiles · 8 rows of pt.
            unsafe { pairing.run(a2, row_tiles, b2, pt, out) };
        }
    }
}

/// im2col of one image: `col[(ci, kh, kw)][p]`, rows `pt` long (the tail stays zero).
fn im2col(g: &Geom, x: &[f32], pt: usize, col: &mut [f32]) {
    let (k, s, pad) = (g.k, g.stride, g.pad);
    for ci in 0..g.cin {
        let plane = &x[ci * g.hw()..][..g.hw()];
        for kh in 0..k {
            for kw in 0..k {
                let row = &mut col[((ci * k + kh) * k + kw) * pt..][..g.p()];
                let cols = valid_cols(g.wo, g.w, s, kw, pad);
                for oh in 0..g.ho {
                    let ih = oh * s + kh;
                    let dst = &mut row[oh * g.wo..][..g.wo];
                    if ih < pad || ih >= g.h + pad {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[(ih - pad) * g.w..][..g.w];
                    dst[..cols.start].fill(0.0);
                    dst[cols.end..].fill(0.0);
                    if s == 1 && !cols.is_empty() {
                        let from = cols.start + kw - pad;
                        copy_row(&mut dst[cols.clone()], &src[from..from + cols.len()]);
                    } else {
                        for ow in cols.clone() {
                            dst[ow] = src[ow * s + kw - pad];
                        }
                    }
                }
            }
        }
    }
}

/// Forward: `y[n][co][p] = Σ x ⋆ w`. `hook(n, y_n)` runs on each image's output while it is hot
/// (for BatchNorm statistics).
pub fn forward(g: &Geom, x: &[f32], w: &[f32], y: &mut [f32], hook: impl Fn(usize, &[f32]) + Sync) {
    assert_eq!(w.len(), g.cout * g.cin * g.kk());
    forward_packed(g, &Packed::new(g, w), x, y, Epilogue::NONE, |n, y_n| {
        hook(n, y_n)
    });
}

/// A convolution's weights packed for [`forward_packed`], with the layout of its input (pack once,
/// run many times: inference).
pub struct Packed {
    a: Vec<f32>,
    plan: Plan,
    /// `(cin, h, w, cout, k, stride, pad)` it was packed for (any batch size).
    shape: [usize; 7],
    /// bf16: the steps' pairing and the weights in pairs (None: f32).
    pairs: Option<(Pairing, Vec<u32>)>,
}

impl Packed {
    /// Packs OIHW weights `w` (`cout · cin · k · k` values) for convolutions of geometry `g`.
    pub fn new(g: &Geom, w: &[f32]) -> Packed {
        assert_eq!(w.len(), g.cout * g.cin * g.kk());
        Packed {
            a: pack_forward(g, w),
            plan: Plan::new(g),
            shape: [g.cin, g.h, g.w, g.cout, g.k, g.stride, g.pad],
            pairs: None,
        }
    }

    /// [`Packed::new`] at a precision; an error when the CPU cannot run it. bf16 pairs two input
    /// channels per step; with an odd count the products stay f32.
    pub fn with_precision(g: &Geom, w: &[f32], precision: Precision) -> Result<Packed, String> {
        precision.check_cpu()?;
        let mut p = Packed::new(g, w);
        if precision == Precision::Bf16 {
            // Steps (ci, kh, kw): ci pairs with ci + 1 at the same tap, kk steps later.
            if let Some(pairing) = Pairing::new(&p.plan.offs, g.kk(), p.plan.pt) {
                let a2 = pairing.pack_a(&p.a, g.cout.div_ceil(F_ROWS));
                p.pairs = Some((pairing, a2));
            }
        }
        Ok(p)
    }

    /// Whether the products run in bf16.
    pub fn is_bf16(&self) -> bool {
        self.pairs.is_some()
    }

    /// Image `n`'s output channels of row tiles `tiles`, from its source buffer (laid out by
    /// the plan), through the epilogue into `y_n`; `out` holds the tile rows in between.
    #[allow(clippy::too_many_arguments)]
    fn tiles(
        &self,
        isa: Isa,
        g: &Geom,
        src: &[f32],
        tiles: std::ops::Range<usize>,
        (out, pairs): (&mut scratch::Slot, &mut scratch::Slot),
        ep: Epilogue,
        n: usize,
        y_n: &mut [f32],
    ) {
        let plan = &self.plan;
        let count = tiles.len();
        let out = out.any(count * F_ROWS * plan.pt);
        let a = &self.a[tiles.start * plan.offs.len() * F_ROWS..];
        let paired = (self.pairs.as_ref())
            .map(|(pairing, a2)| (pairing, &a2[tiles.start * pairing.len() * F_ROWS..]));
        run_tiles(
            isa,
            (a, paired),
            count,
            &plan.offs,
            src,
            plan.pt,
            (out, pairs),
        );
        let cos = tiles.start * F_ROWS..(tiles.end * F_ROWS).min(g.cout);
        plan.emit(g, out, cos, ep, n, y_n);
    }
}

/// What is applied to each output value as it is written:
/// `y = act(conv + bias[co] + residual[n][co][p])`.
#[derive(Debug, Clone, Copy)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    /// Added before the activation: the whole batch, shaped like the output.
    pub residual: Option<&'a [f32]>,
    pub relu: bool,
}

impl Epilogue<'_> {
    /// The plain convolution.
    pub const NONE: Epilogue<'static> = Epilogue {
        bias: None,
        residual: None,
        relu: false,
    };
}

/// How one image is laid out for the forward tile: padded planes (flat, parity) or im2col rows.
enum Layout {
    Flat(Flat),
    Parity(Parity),
    Col,
}

/// The per-geometry constants of a forward pass.
struct Plan {
    layout: Layout,
    offs: Vec<isize>,
    /// Row length of the tile's output (`pt`) and the row pitch of the output grid in it.
    pt: usize,
    pitch: usize,
    src_len: usize,
    key: u64,
}

impl Plan {
    fn new(g: &Geom) -> Plan {
        let taps = |f: &dyn Fn(usize, usize, usize) -> isize| -> Vec<isize> {
            (0..g.cin)
                .flat_map(|ci| (0..g.k).flat_map(move |kh| (0..g.k).map(move |kw| (ci, kh, kw))))
                .map(|(ci, kh, kw)| f(ci, kh, kw))
                .collect()
        };
        if g.flat() {
            let fl = Flat::new(g);
            Plan {
                offs: taps(&|ci, kh, kw| fl.off(ci, kh, kw, g.k)),
                pt: fl.pt,
                pitch: fl.wp,
                src_len: fl.len(g.cin, g.k),
                key: scratch::key(&[1, g.cin, g.h, g.w, g.k]),
                layout: Layout::Flat(fl),
            }
        } else if g.parity() {
            let par_l = Parity::new(g);
            Plan {
                offs: taps(&|ci, kh, kw| par_l.off(ci, kh, kw, g.pad)),
                pt: par_l.grid.pt,
                pitch: par_l.grid.wp,
                src_len: par_l.len(g.cin),
                key: scratch::key(&[11, g.cin, g.h, g.w, g.k]),
                layout: Layout::Parity(par_l),
            }
        } else {
            let pt = round_up(g.p(), LANES);
            let kdim = g.cin * g.kk();
            Plan {
                offs: (0..kdim).map(|s| (s * pt) as isize).collect(),
                pt,
                pitch: g.wo,
                src_len: kdim * pt,
                key: scratch::key(&[2, g.cin, g.h, g.w, g.k, g.stride, g.pad]),
                layout: Layout::Col,
            }
        }
    }

    /// One image `x_n` into the tile's source buffer (whose padding is zero).
    fn fill(&self, g: &Geom, x_n: &[f32], src: &mut [f32]) {
        match &self.layout {
            Layout::Flat(fl) => fl.fill(x_n, g.cin, g.h, g.w, g.pad, src),
            Layout::Parity(p) => p.fill(x_n, g.cin, g.h, g.w, src),
            Layout::Col => im2col(g, x_n, self.pt, src),
        }
    }

    /// Values of the source buffer per input channel (each channel one block), `None` for im2col.
    fn channel_stride(&self) -> Option<usize> {
        match &self.layout {
            Layout::Flat(fl) => Some(fl.plane),
            Layout::Parity(p) => Some(4 * p.grid.plane),
            Layout::Col => None,
        }
    }

    /// Input channels `c0..c1` of one image into their blocks (`dst` starts at block `c0`).
    fn fill_channels(&self, g: &Geom, x_n: &[f32], c0: usize, c1: usize, dst: &mut [f32]) {
        let part = &x_n[c0 * g.hw()..c1 * g.hw()];
        match &self.layout {
            Layout::Flat(fl) => fl.fill(part, c1 - c0, g.h, g.w, g.pad, dst),
            Layout::Parity(p) => p.fill(part, c1 - c0, g.h, g.w, dst),
            Layout::Col => unreachable!("im2col is filled whole"),
        }
    }

    /// Output channels `cos` of one image from the tile's rows (`out[co - cos.start]`), through
    /// the epilogue.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &self,
        g: &Geom,
        out: &[f32],
        cos: std::ops::Range<usize>,
        ep: Epilogue,
        n: usize,
        y_n: &mut [f32],
    ) {
        let (ho, wo) = (g.ho, g.wo);
        let out_img = g.cout * g.p();
        let res_n = ep.residual.map(|r| &r[n * out_img..][..out_img]);
        for (i, co) in cos.enumerate() {
            let b = ep.bias.map_or(0.0, |b| b[co]);
            for r in 0..ho {
                let at = (co * ho + r) * wo;
                let dst = &mut y_n[at..][..wo];
                let src = &out[i * self.pt + r * self.pitch..][..wo];
                match (res_n, ep.bias.is_some() || ep.relu) {
                    (None, false) => copy_row(dst, src),
                    (None, true) => {
                        for (d, &v) in dst.iter_mut().zip(src) {
                            let v = v + b;
                            *d = if ep.relu { v.max(0.0) } else { v };
                        }
                    }
                    (Some(res), _) => {
                        for ((d, &v), &q) in dst.iter_mut().zip(src).zip(&res[at..][..wo]) {
                            let v = v + b + q;
                            *d = if ep.relu { v.max(0.0) } else { v };
                        }
                    }
                }
            }
        }
    }
}

/// [`forward`] with weights packed beforehand and an epilogue (bias, ReLU) applied as the output
/// is written; `hook(n, y_n)` then runs on each image's output while it is hot. Parallel over
/// images (rayon's pool); one image runs on the calling thread.
pub fn forward_packed(
    g: &Geom,
    packed: &Packed,
    x: &[f32],
    y: &mut [f32],
    ep: Epilogue,
    hook: impl Fn(usize, &mut [f32]) + Sync,
) {
    let isa = micro::isa();
    let (cin_hw, out_img) = check_forward(g, packed, x, y, ep);
    let plan = &packed.plan;
    let row_tiles = g.cout.div_ceil(F_ROWS);
    par::chunks_mut(y, out_img, |n, y_n| {
        scratch::with(|s| {
            let src = s.src.zeroed(plan.src_len, plan.key);
            plan.fill(g, &x[n * cin_hw..][..cin_hw], src);
            packed.tiles(
                isa,
                g,
                src,
                0..row_tiles,
                (&mut s.out, &mut s.pairs),
                ep,
                n,
                y_n,
            );
        });
        hook(n, y_n);
    });
}

/// Runs `task(i)` for every `i < n` and returns when all have run (see [`forward_packed_within`]).
pub type ForEach<'a> = dyn Fn(usize, &(dyn Fn(usize) + Sync)) + 'a;

/// [`forward_packed`] for few images (inference of one request): each image's output channels are
/// cut into `groups` parts, and `for_each(groups, task)` must run `task(i)` once for every
/// `i < groups`, in any order, on any threads, and return when all have run (the caller's thread
/// team). Results do not depend on `groups`.
pub fn forward_packed_within(
    g: &Geom,
    packed: &Packed,
    x: &[f32],
    y: &mut [f32],
    ep: Epilogue,
    groups: usize,
    for_each: &ForEach<'_>,
) {
    let isa = micro::isa();
    let (cin_hw, out_img) = check_forward(g, packed, x, y, ep);
    let plan = &packed.plan;
    let row_tiles = g.cout.div_ceil(F_ROWS);
    let groups = row_tiles.min(groups).max(1);
    let per = row_tiles.div_ceil(groups);
    // Filled on the calling thread into a buffer outside its scratch (the tasks below may run on
    // this thread and use the scratch), kept per layout between calls.
    thread_local! {
        static SRC: std::cell::RefCell<scratch::Slot> = Default::default();
    }
    SRC.with(|cell| {
        let mut slot = cell.borrow_mut();
        let src = slot.zeroed(plan.src_len, plan.key);
        for (n, y_n) in y.chunks_mut(out_img).enumerate() {
            let x_n = &x[n * cin_hw..][..cin_hw];
            match plan.channel_stride() {
                // The copy into the padded layout, split by input channels too.
                Some(stride) if groups > 1 => {
                    let fill_groups = groups.min(g.cin);
                    let per_c = g.cin.div_ceil(fill_groups);
                    let sp = SendPtr(src.as_mut_ptr());
                    assert!(src.len() >= g.cin * stride);
                    for_each(fill_groups, &|grp: usize| {
                        let (c0, c1) = (grp * per_c, ((grp + 1) * per_c).min(g.cin));
                        if c0 < c1 {
                            // SAFETY: channel blocks c0..c1 of `src` (inside it, asserted
                            // above), written by this task only.
                            let dst = unsafe {
                                std::slice::from_raw_parts_mut(
                                    sp.get().add(c0 * stride),
                                    (c1 - c0) * stride,
                                )
                            };
                            plan.fill_channels(g, x_n, c0, c1, dst);
                        }
                    });
                }
                _ => plan.fill(g, x_n, src),
            }
            let yp = SendPtr(y_n.as_mut_ptr());
            let src = &*src;
            for_each(groups, &|grp: usize| {
                let (t0, t1) = (grp * per, ((grp + 1) * per).min(row_tiles));
                if t0 < t1 {
                    // SAFETY: each group writes only its own output channels of this image.
                    let y_n = unsafe { std::slice::from_raw_parts_mut(yp.get(), out_img) };
                    scratch::with(|s| {
                        packed.tiles(isa, g, src, t0..t1, (&mut s.out, &mut s.pairs), ep, n, y_n)
                    });
                }
            });
        }
    });
}

fn check_forward(g: &Geom, packed: &Packed, x: &[f32], y: &[f32], ep: Epilogue) -> (usize, usize) {
    let (cin_hw, out_img) = (g.cin * g.hw(), g.cout * g.p());
    assert_eq!(x.len(), g.n * cin_hw);
    assert_eq!(
        packed.shape,
        [g.cin, g.h, g.w, g.cout, g.k, g.stride, g.pad],
        "weights packed for another shape"
    );
    assert_eq!(y.len(), g.n * out_img);
    if let Some(b) = ep.bias {
        assert_eq!(b.len(), g.cout);
    }
    if let Some(r) = ep.residual {
        assert_eq!(r.len(), y.len());
    }
    (cin_hw, out_img)
}

/// Number of image chunks the weight gradient is split into (fixed, so the summation order is).
fn chunks(n: usize) -> usize {
    n.min(16)
}

/// Bytes of per-image buffers the weight gradient batches together (their dot products then
/// run over several images before the lanes are summed).
const DOT_BATCH_BYTES: usize = 512 << 10;

/// Backward: `dx` (when asked) and `dw` (overwritten) from the output gradient, which
/// `dy(n, buf)` writes into `buf` (`cout · ho · wo` values, NCHW) for image `n`.
/// `dx_hook(n, dx_n)` runs on each image's input gradient once written (to add other paths'
/// gradients while it is in cache).
///
/// Per image, the output gradient is laid out like the forward pass's input (padded planes, or
/// rows of `pt` values), the input gradient is an [`micro::f_tile`] pass over it, and the weight
/// gradient is a block of dot products ([`micro::dot_tile`]) between the input's tap rows and the
/// output gradient's channel rows, accumulated per fixed chunk of images.
pub fn backward(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    dy: impl Fn(usize, &mut [f32]) + Sync,
    dx_hook: impl Fn(usize, &mut [f32]) + Sync,
) {
    backward_with(Precision::F32, g, x, w, dx, dw, dy, dx_hook)
}

/// [`backward`] at a precision (a CPU without it panics: [`Precision::check`] first). bf16 pairs
/// two output-gradient
/// channels per step of the input gradient and two output pixels per step of the channels-last
/// weight gradient; a pass whose steps do not pair, and the dot-product weight gradient of other
/// shapes (the stem's), stay f32.
#[allow(clippy::too_many_arguments)]
pub fn backward_with(
    precision: Precision,
    g: &Geom,
    x: &[f32],
    w: &[f32],
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    dy: impl Fn(usize, &mut [f32]) + Sync,
    dx_hook: impl Fn(usize, &mut [f32]) + Sync,
) {
    if let Err(e) = precision.check_cpu() {
        panic!("conv::backward_with: {e}");
    }
    let bf16 = precision == Precision::Bf16;
    let isa = micro::isa();
    let (cin_hw, out_img, kk) = (g.cin * g.hw(), g.cout * g.p(), g.kk());
    assert_eq!(x.len(), g.n * cin_hw);
    assert_eq!(w.len(), g.cout * g.cin * kk);
    assert_eq!(dw.len(), w.len());
    if let Some(dx) = &dx {
        assert_eq!(dx.len(), x.len());
    }
    let dx_ptr = dx.map(|d| SendPtr(d.as_mut_ptr()));
    let flat = g.flat();
    let s_len = g.cin * kk;
    let parity = !flat && g.parity();
    let fl = Flat::new(g);
    let par_l = Parity::new(g);
    // The output gradient's layout on the parity path: padded planes on the output grid.
    let og = par_l.grid;
    let pt = if flat {
        fl.pt
    } else if parity {
        og.pt
    } else {
        round_up(g.p(), LANES)
    };
    let taps = |f: &dyn Fn(usize, usize, usize) -> isize, c: usize| -> Vec<isize> {
        let mut v = Vec::with_capacity(c * kk);
        for ci in 0..c {
            for kh in 0..g.k {
                for kw in 0..g.k {
                    v.push(f(ci, kh, kw));
                }
            }
        }
        v
    };
    // The output gradient's rows (one per output channel) in its buffer: where the input-gradient
    // pass (and the dot-product weight gradient) reads them.
    let (dy_len, doffs): (usize, Vec<isize>) = if flat {
        let d0 = fl.front + g.pad * fl.wp;
        let dof = (0..g.cout)
            .map(|co| (co * fl.plane + d0) as isize)
            .collect();
        (fl.len(g.cout, g.k), dof)
    } else if parity {
        let d0 = og.front + og.wp;
        let dof = (0..g.cout)
            .map(|co| (co * og.plane + d0) as isize)
            .collect();
        (og.len(g.cout, 3), dof)
    } else {
        (
            g.cout * pt,
            (0..g.cout).map(|co| (co * pt) as isize).collect(),
        )
    };
    // The input-gradient pass: A operand and offsets into one image's gradient buffer.
    let (a, a_tiles, f_offs) = if flat {
        let offs = taps(&|co, kh, kw| fl.off(co, kh, kw, g.k), g.cout);
        (pack_backward_flat(g, w), g.cin.div_ceil(F_ROWS), offs)
    } else {
        // Transposed product onto an im2col-shaped buffer, then col2im.
        (
            pack_backward_col(g, w),
            s_len.div_ceil(F_ROWS),
            doffs.clone(),
        )
    };
    // One image's output gradient (NCHW) into the layout the input-gradient pass reads.
    let lay_dy = |img: &[f32], dj: &mut [f32]| {
        if flat {
            fl.fill(img, g.cout, g.h, g.w, g.pad, dj);
        } else if parity {
            og.fill(img, g.cout, g.ho, g.wo, 1, dj);
        } else {
            for co in 0..g.cout {
                dj[co * pt..][..g.p()].copy_from_slice(&img[co * g.p()..][..g.p()]);
            }
        }
    };
    // bf16: output-gradient channels in pairs (flat: steps (co, kh, kw), kk apart; col: co).
    let dx_pairs = bf16
        .then(|| Pairing::new(&f_offs, if flat { kk } else { 1 }, pt))
        .flatten()
        .map(|p| {
            let a2 = p.pack_a(&a, a_tiles);
            (p, a2)
        });
    // The input gradient of image `n` from its laid-out output gradient `dj`.
    let dx_image = |n: usize, dj: &[f32], out: &mut [f32], pairs: &mut scratch::Slot| {
        if let Some(dxp) = dx_ptr {
            let paired = dx_pairs.as_ref().map(|(pairing, a2)| (pairing, &a2[..]));
            run_tiles(isa, (&a, paired), a_tiles, &f_offs, dj, pt, (out, pairs));
            // SAFETY: image n's slice of dx, written by this task only.
            let dxn = unsafe { std::slice::from_raw_parts_mut(dxp.get().add(n * cin_hw), cin_hw) };
            if flat {
                for ci in 0..g.cin {
                    for r in 0..g.h {
                        copy_row(
                            &mut dxn[(ci * g.h + r) * g.w..][..g.w],
                            &out[ci * pt + r * fl.wp..],
                        );
                    }
                }
            } else {
                let pitch = if parity { og.wp } else { g.wo };
                col2im(g, out, pt, pitch, dxn);
            }
            dx_hook(n, dxn);
        }
    };
    let layout = flat as usize + 2 * parity as usize;
    let nchunks = chunks(g.n);
    let per = g.n.div_ceil(nchunks);
    let partials = if channels_last_ok(g) {
        let cl = ChannelsLast::new(g);
        let sub = (DOT_BATCH_BYTES / (4 * (cl.x_len + out_img))).clamp(1, per);
        let offs = cl.offsets(g, sub);
        let keys = [
            scratch::key(&[11, g.cin, g.h, g.w, g.k, g.stride, g.pad, sub]),
            scratch::key(&[12, layout, g.cout, g.h, g.w, g.k, g.stride, g.pad]),
        ];
        par::map(nchunks, |c| {
            let mut acc = vec![0f32; g.cout * s_len];
            let (first, last) = (c * per, ((c + 1) * per).min(g.n));
            scratch::with(|s| {
                let xb = aligned(s.src_t.zeroed(sub * cl.x_len + LANES, keys[0]));
                let dp = aligned(s.dy_p.any(sub * out_img + LANES));
                let mut i0 = first;
                while i0 < last {
                    let cnt = sub.min(last - i0);
                    for j in 0..cnt {
                        let n = i0 + j;
                        let img = s.dy_img.any(out_img);
                        dy(n, img);
                        if dx_ptr.is_some() {
                            let dj = s.dy_t.zeroed(dy_len, keys[1]);
                            lay_dy(img, dj);
                            dx_image(n, dj, s.out.any(a_tiles * F_ROWS * pt), &mut s.pairs);
                        }
                        cl.fill(isa, g, &x[n * cin_hw..][..cin_hw], &mut xb[j * cl.x_len..]);
                        cl.pack_dy(g, img, sub, j, dp);
                    }
                    let offs = &offs[..cnt * g.p()];
                    let pairs = bf16.then_some(&mut s.pairs);
                    cl.accumulate(isa, g, sub, cnt, offs, (xb, dp), pairs, &mut acc);
                    i0 += cnt;
                }
            });
            // From [co][kh][kw][ci] into dw's layout [co][ci][kh][kw].
            let mut out = vec![0f32; g.cout * s_len];
            for co in 0..g.cout {
                for t in 0..kk {
                    for ci in 0..g.cin {
                        out[(co * g.cin + ci) * kk + t] = acc[(co * kk + t) * g.cin + ci];
                    }
                }
            }
            out
        })
    } else {
        dot_partials(
            g,
            x,
            &dy,
            &doffs,
            dy_len,
            (flat, parity, fl, par_l, pt),
            &lay_dy,
            &dx_image,
            (a_tiles, nchunks, per),
        )
    };
    // dw[co][s] = Σ over chunks, in chunk order.
    for (i, d) in dw.iter_mut().enumerate() {
        *d = partials.iter().map(|p| p[i]).sum();
    }
}

/// The first 64-byte aligned part of a scratch buffer that has `LANES` values of slack.
fn aligned(buf: &mut [f32]) -> &mut [f32] {
    let skip = buf.as_ptr().align_offset(64).min(LANES);
    &mut buf[skip..]
}

/// Whether [`ChannelsLast`] handles the weight gradient of this shape.
fn channels_last_ok(g: &Geom) -> bool {
    g.cout.is_multiple_of(F_ROWS) && (g.k * g.cin).is_multiple_of(LANES)
}

/// The channels-last weight gradient: per kernel row `kh`, the `k` taps of a row of the kernel
/// read `k · cin` consecutive values of a zero-padded channels-last image (`[h + 2 pad][w + 2 pad]
/// [cin]`), so `dw[co][kh][(kw, ci)] = Σ_(n, p) dy[n][co][p] · x_cl[n][row(p, kh)][col(p)..]`
/// is an [`micro::f_tile`] product: rows are 8 output channels (broadcast from the output
/// gradient packed `[co / 8][image][p][8]`), columns 16-48 consecutive `(kw, ci)` values,
/// summed over the output pixels of several images. No im2col, aligned loads.
struct ChannelsLast {
    /// Row pitch of the padded image, in pixels.
    wp: usize,
    /// Values of one padded channels-last image.
    x_len: usize,
}

impl ChannelsLast {
    fn new(g: &Geom) -> ChannelsLast {
        let wp = g.w + 2 * g.pad;
        ChannelsLast {
            wp,
            x_len: (g.h + 2 * g.pad) * wp * g.cin,
        }
    }

    /// Offsets of output pixel `p` of image `j < sub`: its top-left tap in the padded image.
    fn offsets(&self, g: &Geom, sub: usize) -> Vec<isize> {
        let mut v = Vec::with_capacity(sub * g.p());
        for j in 0..sub {
            for oh in 0..g.ho {
                for ow in 0..g.wo {
                    v.push(
                        (j * self.x_len + (oh * g.stride * self.wp + ow * g.stride) * g.cin)
                            as isize,
                    );
                }
            }
        }
        v
    }

    /// Image `x` (NCHW, one image) into the padded channels-last buffer `dst` (padding stays).
    fn fill(&self, isa: Isa, g: &Geom, x: &[f32], dst: &mut [f32]) {
        let (hw, cin) = (g.hw(), g.cin);
        assert!(x.len() >= cin * hw);
        for r in 0..g.h {
            let d = &mut dst[((r + g.pad) * self.wp + g.pad) * cin..][..g.w * cin];
            // SAFETY: reads `x[ci · hw + r · w + c]` for ci < cin, c < w (inside `x`, asserted
            // above) and writes the row's `w · cin` values of `d`.
            unsafe {
                micro::to_channels_last(isa, x[r * g.w..].as_ptr(), hw, cin, g.w, d.as_mut_ptr());
            }
        }
    }

    /// One image's output gradient (NCHW) into slot `j` of the packed `[co / 8][sub][p][8]`.
    fn pack_dy(&self, g: &Geom, img: &[f32], sub: usize, j: usize, dp: &mut [f32]) {
        let p = g.p();
        for grp in 0..g.cout / F_ROWS {
            let dst = &mut dp[((grp * sub + j) * p) * F_ROWS..][..p * F_ROWS];
            let src = &img[grp * F_ROWS * p..][..F_ROWS * p];
            for (px, d) in dst.chunks_exact_mut(F_ROWS).enumerate() {
                for (r, v) in d.iter_mut().enumerate() {
                    *v = src[r * p + px];
                }
            }
        }
    }

    /// `acc[co][(kh, kw, ci)] += Σ` over the `cnt` images in the buffers. `pairs`: bf16, with a
    /// scratch slot for the paired input (pixels `t` and `t + 1` of a row: `stride · cin`
    /// apart); f32 when the pixels do not pair so (an odd row).
    #[allow(clippy::too_many_arguments)]
    fn accumulate(
        &self,
        isa: Isa,
        g: &Geom,
        sub: usize,
        cnt: usize,
        offs: &[isize],
        (xb, dp): (&[f32], &[f32]),
        pairs: Option<&mut scratch::Slot>,
        acc: &mut [f32],
    ) {
        let (kc, p) = (g.k * g.cin, g.p());
        let row = g.k * kc;
        let mut tile = vec![0f32; F_ROWS * kc];
        let paired = pairs.and_then(|slot| Some((Pairing::new(offs, 1, kc)?, slot)));
        // The whole paired input once: x2[q] = (x_cl[q], x_cl[q + d]), read at every kh.
        let x2 = paired.map(|(pairing, slot)| {
            let d = (offs[1] - offs[0]) as usize;
            let x2 = slot.any_u32(xb.len());
            bf16::pack_pairs(&xb[..xb.len() - d], Some(&xb[d..]), &mut x2[..xb.len() - d]);
            (pairing, &*x2)
        });
        for grp in 0..g.cout / F_ROWS {
            let a = &dp[grp * sub * p * F_ROWS..][..cnt * p * F_ROWS];
            let a2 = x2.as_ref().map(|(pairing, _)| pairing.pack_a(a, 1));
            for kh in 0..g.k {
                let at = kh * self.wp * g.cin;
                match (&x2, &a2) {
                    // SAFETY: check_cpu passed in backward_with; a2 holds this group's pairs; the
                    // offsets plus kc stay inside xb past `at` (as in f32), and x2 pairs every
                    // position up to xb.len() - d, which every pair's low offset + kc is below.
                    (Some((pairing, x2)), Some(a2)) => unsafe {
                        pairing.run(a2, 1, &x2[at..], kc, &mut tile)
                    },
                    // tile[r][(kw, ci)] = Σ_t a[t][r] · x_cl[offs[t] + kh row + (kw, ci)]
                    _ => run_f(isa, a, 1, offs, &xb[at..], kc, &mut tile),
                }
                for r in 0..F_ROWS {
                    let dst = &mut acc[(grp * F_ROWS + r) * row + kh * kc..][..kc];
                    for (d, t) in dst.iter_mut().zip(&tile[r * kc..]) {
                        *d += t;
                    }
                }
            }
        }
    }
}

/// The dot-product weight gradient (any shape), per fixed chunk of images, in `dw`'s layout
/// `[co][(ci, kh, kw)]`; runs the input-gradient pass on the way.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn dot_partials(
    g: &Geom,
    x: &[f32],
    dy: &(impl Fn(usize, &mut [f32]) + Sync),
    doffs: &[isize],
    dy_len: usize,
    (flat, parity, fl, par_l, pt): (bool, bool, Flat, Parity, usize),
    lay_dy: &(impl Fn(&[f32], &mut [f32]) + Sync),
    dx_image: &(impl Fn(usize, &[f32], &mut [f32], &mut scratch::Slot) + Sync),
    (a_tiles, nchunks, per): (usize, usize, usize),
) -> Vec<Vec<f32>> {
    use micro::{DOT_C, DOT_R};
    let isa = micro::isa();
    let (cin_hw, out_img, kk) = (g.cin * g.hw(), g.cout * g.p(), g.kk());
    let s_len = g.cin * kk;
    let (rows, cols) = (round_up(s_len, DOT_R), round_up(g.cout, DOT_C));
    let taps = |f: &dyn Fn(usize, usize, usize) -> isize| -> Vec<isize> {
        let mut v = Vec::with_capacity(s_len);
        for ci in 0..g.cin {
            for kh in 0..g.k {
                for kw in 0..g.k {
                    v.push(f(ci, kh, kw));
                }
            }
        }
        v
    };
    // Per-image buffer length and the input's tap rows.
    let (x_len, xoffs): (usize, Vec<isize>) = if flat {
        (
            fl.len(g.cin, g.k),
            taps(&|ci, kh, kw| fl.off(ci, kh, kw, g.k)),
        )
    } else if parity {
        (
            par_l.len(g.cin),
            taps(&|ci, kh, kw| par_l.off(ci, kh, kw, g.pad)),
        )
    } else {
        (s_len * pt, (0..s_len).map(|s| (s * pt) as isize).collect())
    };
    let sub = (DOT_BATCH_BYTES / (4 * (x_len + dy_len))).clamp(1, per);
    let layout = flat as usize + 2 * parity as usize;
    let keys = [
        scratch::key(&[9, layout, g.cin, g.h, g.w, g.k, g.stride, g.pad, sub]),
        scratch::key(&[
            10, layout, g.cout, g.h, g.w, g.k, g.stride, g.pad, g.ho, g.wo, sub,
        ]),
    ];
    par::map(nchunks, |c| {
        let mut acc = vec![0f32; rows * cols];
        let (first, last) = (c * per, ((c + 1) * per).min(g.n));
        scratch::with(|s| {
            let xb = s.src_t.zeroed(sub * x_len, keys[0]);
            let db = s.dy_t.zeroed(sub * dy_len, keys[1]);
            let mut i0 = first;
            while i0 < last {
                let cnt = sub.min(last - i0);
                for j in 0..cnt {
                    let n = i0 + j;
                    let img = s.dy_img.any(out_img);
                    dy(n, img);
                    let (xj, dj) = (
                        &mut xb[j * x_len..][..x_len],
                        &mut db[j * dy_len..][..dy_len],
                    );
                    let xn = &x[n * cin_hw..][..cin_hw];
                    if flat {
                        fl.fill(xn, g.cin, g.h, g.w, g.pad, xj);
                    } else if parity {
                        par_l.fill(xn, g.cin, g.h, g.w, xj);
                    } else {
                        im2col(g, xn, pt, xj);
                    }
                    lay_dy(img, dj);
                    dx_image(n, dj, s.out.any(a_tiles * F_ROWS * pt), &mut s.pairs);
                }
                // Weight gradient: dot products of tap rows and gradient rows over these images.
                let xp: Vec<*const f32> = (0..cnt).map(|j| xb[j * x_len..].as_ptr()).collect();
                let dp: Vec<*const f32> = (0..cnt).map(|j| db[j * dy_len..].as_ptr()).collect();
                for r0 in (0..rows).step_by(DOT_R) {
                    let xo: [isize; DOT_R] =
                        std::array::from_fn(|r| xoffs[(r0 + r).min(s_len - 1)]);
                    for c0 in (0..cols).step_by(DOT_C) {
                        let dof: [isize; DOT_C] =
                            std::array::from_fn(|q| doffs[(c0 + q).min(g.cout - 1)]);
                        debug_assert!(xo.iter().all(|&o| o >= 0 && o as usize + pt <= x_len));
                        debug_assert!(dof.iter().all(|&o| o >= 0 && o as usize + pt <= dy_len));
                        // SAFETY: every row read stays inside its image's buffer (the
                        // assertions above), and `acc` holds rows x cols values.
                        unsafe {
                            micro::dot_tile(
                                isa,
                                &xp,
                                &xo,
                                &dp,
                                &dof,
                                pt / LANES,
                                acc.as_mut_ptr().add(r0 * cols + c0),
                                cols,
                            );
                        }
                    }
                }
                i0 += cnt;
            }
        });
        // Into dw's layout [co][s].
        let mut out = vec![0f32; g.cout * s_len];
        for co in 0..g.cout {
            for sx in 0..s_len {
                out[co * s_len + sx] = acc[sx * cols + co];
            }
        }
        out
    })
}

/// col2im of one image: `dx[ci][ih][iw] = Σ dcol[(ci, kh, kw)][oh · pitch + ow]` over the taps
/// that read it.
fn col2im(g: &Geom, dcol: &[f32], pt: usize, pitch: usize, dx: &mut [f32]) {
    dx.fill(0.0);
    let (k, s, pad) = (g.k, g.stride, g.pad);
    for ci in 0..g.cin {
        let plane = &mut dx[ci * g.hw()..][..g.hw()];
        for kh in 0..k {
            for kw in 0..k {
                let row = &dcol[((ci * k + kh) * k + kw) * pt..][..pt];
                let cols = valid_cols(g.wo, g.w, s, kw, pad);
                for oh in 0..g.ho {
                    let ih = oh * s + kh;
                    if ih < pad || ih >= g.h + pad {
                        continue;
                    }
                    let dst = &mut plane[(ih - pad) * g.w..][..g.w];
                    let src = &row[oh * pitch..][..g.wo];
                    for ow in cols.clone() {
                        dst[ow * s + kw - pad] += src[ow];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rnd(n: usize, seed: &mut u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    /// The input pixel (ci, ih, iw) under output pixel (oh, ow) and tap (kh, kw), if not padding.
    fn tap(g: &Geom, oh: usize, ow: usize, kh: usize, kw: usize) -> Option<(usize, usize)> {
        let (ih, iw) = (oh * g.stride + kh, ow * g.stride + kw);
        (ih >= g.pad && ih < g.h + g.pad && iw >= g.pad && iw < g.w + g.pad)
            .then(|| (ih - g.pad, iw - g.pad))
    }

    fn close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            let d = (a - b).abs();
            assert!(!d.is_nan() && d <= 1e-4 * scale, "{what}[{i}]: {a} vs {b}");
        }
    }

    /// Direct loops: the forward output, input gradient and weight gradient.
    fn direct(g: &Geom, x: &[f32], wt: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (n, cin, cout, k) = (g.n, g.cin, g.cout, g.k);
        let mut y = vec![0f32; n * cout * g.p()];
        let (mut dx, mut dw) = (vec![0f32; x.len()], vec![0f32; wt.len()]);
        for b in 0..n {
            for co in 0..cout {
                for oh in 0..g.ho {
                    for ow in 0..g.wo {
                        let o = (b * cout + co) * g.p() + oh * g.wo + ow;
                        for ci in 0..cin {
                            for kh in 0..k {
                                for kw in 0..k {
                                    let Some((ih, iw)) = tap(g, oh, ow, kh, kw) else {
                                        continue;
                                    };
                                    let xi = (b * cin + ci) * g.h * g.w + ih * g.w + iw;
                                    let wi = ((co * cin + ci) * k + kh) * k + kw;
                                    y[o] += x[xi] * wt[wi];
                                    dx[xi] += dy[o] * wt[wi];
                                    dw[wi] += dy[o] * x[xi];
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, dx, dw)
    }

    /// bf16 products: every pass of these shapes pairs (even channel counts, even rows), so each
    /// result is the f32 sum of the operands rounded to bf16, up to summation order: the flat,
    /// parity (3x3 and 1x1 stride 2) layouts and the channels-last weight gradient. A shape whose
    /// steps do not pair (3 input channels) keeps its forward in f32, exactly.
    #[test]
    fn bf16_passes_sum_the_rounded_operands() {
        if let Err(e) = Precision::Bf16.check_cpu() {
            eprintln!("skipped: {e}");
            return;
        }
        let mut seed = 11u64;
        let r = |v: &[f32]| v.iter().map(|&x| bf16::round(x)).collect::<Vec<_>>();
        for (n, cin, h, w, cout, k, s, pad) in [
            (2, 16, 8, 8, 16, 3, 1, 1),
            (2, 16, 8, 8, 32, 3, 2, 1),
            (1, 16, 8, 8, 32, 1, 2, 0),
            (3, 32, 4, 6, 16, 3, 1, 1),
        ] {
            let g = Geom::new(n, cin, h, w, cout, k, s, pad).unwrap();
            let what = format!("{g:?}");
            let x = rnd(n * cin * h * w, &mut seed);
            let wt = rnd(cout * cin * k * k, &mut seed);
            let dy = rnd(n * cout * g.p(), &mut seed);
            let (y_ref, dx_ref, dw_ref) = direct(&g, &r(&x), &r(&wt), &r(&dy));
            let packed = Packed::with_precision(&g, &wt, Precision::Bf16).unwrap();
            assert!(packed.is_bf16(), "{what}");
            let mut y = vec![f32::NAN; y_ref.len()];
            forward_packed(&g, &packed, &x, &mut y, Epilogue::NONE, |_, _| {});
            close(&y, &y_ref, &format!("bf16 y {what}"));
            let (mut dx, mut dw) = (vec![f32::NAN; x.len()], vec![f32::NAN; wt.len()]);
            let out_img = cout * g.p();
            backward_with(
                Precision::Bf16,
                &g,
                &x,
                &wt,
                Some(&mut dx),
                &mut dw,
                |b, buf| buf.copy_from_slice(&dy[b * out_img..][..out_img]),
                |_, _| {},
            );
            close(&dx, &dx_ref, &format!("bf16 dx {what}"));
            close(&dw, &dw_ref, &format!("bf16 dw {what}"));
            // Not the f32 results: the rounding is there.
            let (y32, _, _) = direct(&g, &x, &wt, &dy);
            assert!(
                y.iter().zip(&y32).any(|(a, b)| (a - b).abs() > 1e-4),
                "{what}"
            );
        }
        let g = Geom::new(2, 3, 8, 8, 16, 3, 1, 1).unwrap();
        let (x, wt) = (rnd(2 * 3 * 64, &mut seed), rnd(16 * 27, &mut seed));
        let packed = Packed::with_precision(&g, &wt, Precision::Bf16).unwrap();
        assert!(!packed.is_bf16());
        let (mut a, mut b) = (vec![0f32; 2 * 16 * 64], vec![0f32; 2 * 16 * 64]);
        forward_packed(&g, &packed, &x, &mut a, Epilogue::NONE, |_, _| {});
        forward(&g, &x, &wt, &mut b, |_, _| {});
        assert_eq!(a, b);
    }

    /// Forward and both gradients against direct loops, on geometries of each layout (flat,
    /// parity, general), at the instruction set in use: the crate's own test of the paths whose
    /// bounds are `debug_assert!`s (run with debug assertions by scripts/test.sh).
    #[test]
    fn forward_and_backward_match_direct_loops() {
        let mut seed = 7u64;
        for (n, cin, h, w, cout, k, s, pad) in [
            (2, 3, 9, 7, 5, 3, 1, 1),
            (1, 16, 6, 6, 20, 3, 1, 1),
            (2, 4, 8, 10, 6, 3, 2, 1),
            (1, 3, 9, 9, 4, 1, 2, 0),
            (2, 3, 8, 9, 5, 3, 1, 0),
            (1, 3, 13, 11, 8, 7, 2, 3),
        ] {
            let g = Geom::new(n, cin, h, w, cout, k, s, pad).unwrap();
            let what = format!("{g:?}");
            let x = rnd(n * cin * h * w, &mut seed);
            let wt = rnd(cout * cin * k * k, &mut seed);
            let dy = rnd(n * cout * g.p(), &mut seed);
            let (y_ref, dx_ref, dw_ref) = direct(&g, &x, &wt, &dy);
            let mut y = vec![f32::NAN; y_ref.len()];
            forward(&g, &x, &wt, &mut y, |_, _| {});
            close(&y, &y_ref, &format!("y {what}"));
            let (mut dx, mut dw) = (vec![f32::NAN; x.len()], vec![f32::NAN; wt.len()]);
            let out_img = cout * g.p();
            backward(
                &g,
                &x,
                &wt,
                Some(&mut dx),
                &mut dw,
                |b, buf| buf.copy_from_slice(&dy[b * out_img..][..out_img]),
                |_, _| {},
            );
            close(&dx, &dx_ref, &format!("dx {what}"));
            close(&dw, &dw_ref, &format!("dw {what}"));
        }
    }
}
