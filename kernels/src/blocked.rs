//! Convolutions in a channel-blocked layout (NCHWc, blocks of [`LANES`] = 8 channels), the layout
//! onnxruntime's MLAS runs CNNs in. Each value of an image is
//! `[channel block][h + 2·border][w + 2·border][8]`: the eight channels of a pixel are one vector,
//! and a zero border around every map is the convolution's padding, so no layer copies its input
//! into a padded buffer.
//!
//! The tile broadcasts one input value of each of 6 output pixels against the filter vectors of 2
//! output-channel blocks (12 accumulators, 2 filter loads and 6 broadcasts per step: all 16 ymm
//! registers). The loads are aligned to the 32-byte vectors whatever the tap, and a tile may span
//! rows, so small maps (8 x 8) and strided convolutions waste no lanes, unlike the flat layout's
//! pixel-vectorized tile ([`crate::conv`]), which the runtime keeps for the other graphs.
//!
//! Three bodies, chosen by [`crate::micro::isa`]:
//! - AVX2 + FMA, the tile above.
//! - AVX-512, with two blocks side by side in each zmm register (filters packed as pairs): 4
//!   blocks x 6 pixels where a layer has 4 blocks or more, else 2 x 12. Its odd last block goes to
//!   the AVX2 tile.
//! - A portable one on `[f32; 8]` lane arrays, vectorized by the compiler for what the target has.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use crate::conv::ForEach;
use crate::micro::{isa, Isa};
use crate::scratch::SendPtr;

/// Channels per block.
pub const LANES: usize = 8;
/// Most output pixels of a tile.
const MAX_PIXELS: usize = 16;

/// How a convolution's output is cut into tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    /// Output-channel blocks per tile.
    blocks: usize,
    /// Output pixels per tile (consecutive in the flattened map).
    pixels: usize,
    /// Every tile's pixels lie in one output row (the row is a multiple of `pixels` long) and the
    /// stride is 1 or 2: the tile addresses its pixels as fixed displacements from the first, so
    /// no register holds a pixel's offset ([`avx512::row`]).
    row: bool,
}

/// A tile's output-channel blocks and pixels for `cob` output blocks, output rows of `w` pixels
/// and `stride`: 2 x 6 with 16 ymm registers (12 accumulators). With 32 zmm registers, two blocks
/// per vector: where there are 4 blocks or more, 4 x 8 within a row (16 accumulators of two
/// vectors) where rows are a multiple of 8 long, else 4 x 6; below 4 blocks, 2 x 16 within a row
/// where rows are a multiple of 16 long, else 2 x 12. A row tile needs no register per pixel
/// ([`Geometry::row`]). On ResNet-20's layers, one core of a Xeon (family 6 model 207), old and new
/// alternating in one run (`cargo bench -p sc-kernels --bench blocked`): 16 channels at 32 x 32,
/// 2 x 16 in a row 151 GFLOP/s against 2 x 12's 131; the stem (3 -> 16) 104 against 83; from 32
/// channels up, 4 x 8 in a row 162-169 against 4 x 6's 156-165.
fn geometry(isa: Isa, cob: usize, w: usize, stride: usize) -> Geometry {
    let rows = |n: usize| w.is_multiple_of(n) && matches!(stride, 1 | 2);
    let (blocks, pixels, row) = match isa {
        Isa::Avx512 if cob >= 4 && rows(8) => (4, 8, true),
        Isa::Avx512 if cob >= 4 => (4, 6, false),
        Isa::Avx512 if rows(16) => (2, 16, true),
        Isa::Avx512 => (2, 12, false),
        _ => (2, 6, false),
    };
    Geometry {
        blocks,
        pixels,
        row,
    }
}

/// Where a `[c, h, w]` value lies in the blocked layout (per image). Border pixels and the lanes
/// past `c` in the last block are zero; every writer keeps them so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub border: usize,
}

impl Layout {
    pub fn blocks(&self) -> usize {
        self.c.div_ceil(LANES)
    }

    /// Stored pixels per row.
    pub fn row(&self) -> usize {
        self.w + 2 * self.border
    }

    /// Values per channel block.
    pub fn plane(&self) -> usize {
        (self.h + 2 * self.border) * self.row() * LANES
    }

    /// Values per image.
    pub fn len(&self) -> usize {
        self.blocks() * self.plane()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Offset of lane 0 of pixel (`r`, `q`) of block `b`.
    pub fn at(&self, b: usize, r: usize, q: usize) -> usize {
        b * self.plane() + ((r + self.border) * self.row() + q + self.border) * LANES
    }

    /// Writes one NCHW image (`c · h · w` values) into its place; the border and spare lanes of
    /// `out` are left as they are.
    pub fn fill_from(&self, x: &[f32], out: &mut [f32]) {
        assert_eq!(x.len(), self.c * self.h * self.w);
        assert_eq!(out.len(), self.len());
        for (ci, plane) in x.chunks_exact(self.h * self.w).enumerate() {
            let (b, l) = (ci / LANES, ci % LANES);
            for (r, row) in plane.chunks_exact(self.w).enumerate() {
                let o = self.at(b, r, 0) + l;
                for (q, &v) in row.iter().enumerate() {
                    out[o + q * LANES] = v;
                }
            }
        }
    }

    /// Reads one image back as NCHW.
    pub fn copy_to(&self, src: &[f32], out: &mut [f32]) {
        assert_eq!(src.len(), self.len());
        assert_eq!(out.len(), self.c * self.h * self.w);
        for (ci, plane) in out.chunks_exact_mut(self.h * self.w).enumerate() {
            let (b, l) = (ci / LANES, ci % LANES);
            for (r, row) in plane.chunks_exact_mut(self.w).enumerate() {
                let o = self.at(b, r, 0) + l;
                for (q, v) in row.iter_mut().enumerate() {
                    *v = src[o + q * LANES];
                }
            }
        }
    }
}

/// A convolution's filters and bias, packed for the blocked tile.
#[derive(Debug)]
pub struct Conv {
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    /// `[cout block][cin block][kh][kw][cin lane][cout lane]`, zero past `cin` and `cout`.
    w: Vec<f32>,
    /// `cout` rounded up to pairs of blocks, zero past `cout`.
    bias: Vec<f32>,
    /// The AVX-512 tile's filters (on CPUs that have it): two blocks per vector,
    /// `[pair of cout blocks][cin block][kh][kw][cin lane][16 cout lanes]`.
    w16: Vec<f32>,
    /// The offsets of the last pair of layouts used, kept between calls: they depend on the
    /// layouts only, and a request of one image would otherwise recompute them for every layer
    /// on one thread before the tiles fan out.
    offsets: Mutex<Option<Arc<Offsets>>>,
}

impl Clone for Conv {
    /// A copy with the same filters and its own (empty) offsets.
    fn clone(&self) -> Conv {
        Conv {
            cin: self.cin,
            cout: self.cout,
            k: self.k,
            stride: self.stride,
            pad: self.pad,
            w: self.w.clone(),
            bias: self.bias.clone(),
            w16: self.w16.clone(),
            offsets: Mutex::default(),
        }
    }
}

/// A convolution's tap offsets and per-pixel input and output offsets for one pair of layouts.
#[derive(Debug)]
struct Offsets {
    xl: Layout,
    yl: Layout,
    /// Each tap's offset from a pixel's first tap, in the input.
    taps: Vec<usize>,
    /// Each output pixel's input offset (its first tap, lane 0 of block 0) and output offset.
    at: Vec<[usize; 2]>,
}

/// Tasks per thread when a convolution's tiles are split over a team ([`Conv::forward`]). With
/// the row tiles, one (a contiguous half of the tiles each on 2 threads) measured 1.17-1.21x of
/// 4 on ResNet-20 at batch 1 (medians of 12 interleaved rounds; 16 or one task per tile: 0.81x,
/// shrinking chunks: 0.88x of one), and the same at batch 64; halves from which a thread that
/// ends early steals tiles one by one measured the same as plain halves (0.99x, 20 rounds).
/// Before the row tiles, 4 measured 1.08x of 1.
const TASKS_PER_THREAD: usize = 1;

/// The part of an output a tile writes: `NP` pixels of `OB` channel blocks.
#[derive(Clone, Copy)]
struct Tile<'a> {
    /// Input offsets of the pixels' first tap, lane 0 of block 0.
    x_at: [usize; MAX_PIXELS],
    /// Output offsets of the pixels, block 0.
    y_at: [usize; MAX_PIXELS],
    /// The tile's first output block.
    ob: usize,
    conv: &'a Conv,
    taps: &'a [usize],
    x_plane: usize,
    y_plane: usize,
}

impl Conv {
    /// From `[cout][cin][k][k]` weights and an optional bias.
    pub fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        weight: &[f32],
        bias: Option<&[f32]>,
    ) -> Conv {
        assert_eq!(weight.len(), cout * cin * k * k, "weights of another shape");
        assert!(
            k > 0 && stride > 0,
            "a {k}x{k} convolution of stride {stride}"
        );
        let (cib, cob) = (cin.div_ceil(LANES), cout.div_ceil(LANES));
        let mut w = vec![0.0; cob * cib * k * k * LANES * LANES];
        for co in 0..cout {
            for ci in 0..cin {
                for kh in 0..k {
                    for kw in 0..k {
                        let (ob, o, ib, l) = (co / LANES, co % LANES, ci / LANES, ci % LANES);
                        let at = (((((ob * cib + ib) * k + kh) * k + kw) * LANES + l) * LANES) + o;
                        w[at] = weight[((co * cin + ci) * k + kh) * k + kw];
                    }
                }
            }
        }
        let mut b = vec![0.0; cob.next_multiple_of(2) * LANES];
        if let Some(bias) = bias {
            assert_eq!(bias.len(), cout);
            b[..cout].copy_from_slice(bias);
        }
        // Pairs of blocks side by side, for the AVX-512 tile.
        let mut w16 = Vec::new();
        if crate::micro::detected() == Isa::Avx512 {
            let per = cib * k * k * LANES;
            w16 = vec![0.0; cob.div_ceil(2) * per * 2 * LANES];
            for ob in 0..cob {
                for s in 0..per {
                    let from = (ob * per + s) * LANES;
                    let to = ((ob / 2 * per + s) * 2 + ob % 2) * LANES;
                    w16[to..to + LANES].copy_from_slice(&w[from..from + LANES]);
                }
            }
        }
        Conv {
            cin,
            cout,
            k,
            stride,
            pad,
            w,
            bias: b,
            w16,
            offsets: Mutex::default(),
        }
    }

    /// The offsets for `xl` and `yl`: the kept ones when the layouts are the same, else computed
    /// (and kept).
    fn offsets(&self, xl: &Layout, yl: &Layout) -> Arc<Offsets> {
        // A poisoned lock only means another thread panicked while holding it; the cache is
        // either a complete entry or none.
        let mut kept = self.offsets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = kept.as_ref().filter(|o| o.xl == *xl && o.yl == *yl) {
            return o.clone();
        }
        let taps = (0..self.k)
            .flat_map(|kh| (0..self.k).map(move |kw| (kh * xl.row() + kw) * LANES))
            .collect();
        let at = (0..yl.h * yl.w)
            .map(|p| {
                let (r, q) = (p / yl.w, p % yl.w);
                let ir = r * self.stride + xl.border - self.pad;
                let iq = q * self.stride + xl.border - self.pad;
                [(ir * xl.row() + iq) * LANES, yl.at(0, r, q)]
            })
            .collect();
        let o = Arc::new(Offsets {
            xl: *xl,
            yl: *yl,
            taps,
            at,
        });
        *kept = Some(o.clone());
        o
    }

    /// The output's `(h, w)` for an input of `(h, w)`.
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (
            (h + 2 * self.pad - self.k) / self.stride + 1,
            (w + 2 * self.pad - self.k) / self.stride + 1,
        )
    }

    /// Tiles per image of an output laid out as `yl`, on `isa`.
    fn tiles(&self, isa: Isa, yl: &Layout) -> usize {
        let cob = self.cout.div_ceil(LANES);
        let g = geometry(isa, cob, yl.w, self.stride);
        cob.div_ceil(g.blocks) * (yl.h * yl.w).div_ceil(g.pixels)
    }

    /// `y = act(conv(x) + bias + residual)` for `n` images laid out as `xl` and `yl` (`residual`
    /// like `y`). `within`: `(groups, for_each)` splits each image's tiles over the caller's
    /// threads (see [`crate::conv::forward_packed_within`]); without, images spread over rayon's
    /// pool.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        n: usize,
        (xl, x): (&Layout, &[f32]),
        (yl, y): (&Layout, &mut [f32]),
        residual: Option<&[f32]>,
        relu: bool,
        within: Option<(usize, &ForEach<'_>)>,
    ) {
        self.forward_on(isa(), n, (xl, x), (yl, y), residual, relu, within)
    }

    /// [`Conv::forward`] on the body of `isa` (one the CPU has).
    #[allow(clippy::too_many_arguments)]
    fn forward_on(
        &self,
        isa: Isa,
        n: usize,
        (xl, x): (&Layout, &[f32]),
        (yl, y): (&Layout, &mut [f32]),
        residual: Option<&[f32]>,
        relu: bool,
        within: Option<(usize, &ForEach<'_>)>,
    ) {
        assert!(isa <= crate::micro::detected(), "{isa}: not on this CPU");
        assert_eq!((xl.c, yl.c), (self.cin, self.cout), "channels");
        assert_eq!(self.out_hw(xl.h, xl.w), (yl.h, yl.w), "output size");
        assert!(
            xl.border >= self.pad,
            "an input border narrower than the padding"
        );
        assert_eq!(x.len(), n * xl.len());
        assert_eq!(y.len(), n * yl.len());
        if let Some(r) = residual {
            assert_eq!(r.len(), y.len());
        }
        let offsets = self.offsets(xl, yl);
        let (taps, at) = (&offsets.taps[..], &offsets.at[..]);
        let per = self.tiles(isa, yl);
        let yp = SendPtr(y.as_mut_ptr());
        let run = |tiles: Range<usize>| {
            for t in tiles {
                let img = t / per;
                let (xi, yi) = (&x[img * xl.len()..][..xl.len()], img * yl.len());
                // SAFETY: `y` holds `n` images of `yl.len()` values (asserted above). Tiles on
                // other threads write other pixels or channel blocks of the same image, so the
                // image is passed as a pointer, never as a `&mut` slice.
                let y_img = unsafe { yp.get().add(yi) };
                let r_img = residual.map(|r| &r[yi..][..yl.len()]);
                self.tile(isa, t % per, (xl, xi), (yl, y_img), r_img, relu, taps, at);
            }
        };
        match within {
            Some((threads, for_each)) => {
                // One contiguous run of tiles per thread (claimed as threads come free, so a
                // helper that wakes late leaves its run to the caller): each thread then reads
                // only its own output blocks' filters and its own rows of the input.
                // With two images or more per thread, one task per image instead: claimed one
                // at a time, they balance a core slowed by a neighbour, and a thread still runs
                // whole images.
                let total = n * per;
                let groups = if n >= 2 * threads {
                    n
                } else {
                    threads * TASKS_PER_THREAD
                };
                let groups = groups.clamp(1, total.max(1));
                let chunk = total.div_ceil(groups);
                for_each(groups, &|g| run(g * chunk..((g + 1) * chunk).min(total)));
            }
            None => crate::par::for_each(n, |img| run(img * per..(img + 1) * per)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn tile(
        &self,
        isa: Isa,
        t: usize,
        (xl, x): (&Layout, &[f32]),
        (yl, y): (&Layout, *mut f32),
        residual: Option<&[f32]>,
        relu: bool,
        taps: &[usize],
        at: &[[usize; 2]],
    ) {
        let g = geometry(isa, self.cout.div_ceil(LANES), yl.w, self.stride);
        let (blocks, pixels) = (g.blocks, g.pixels);
        let npix = yl.h * yl.w;
        let pixel_tiles = npix.div_ceil(pixels);
        let (group, p0) = (t / pixel_tiles, (t % pixel_tiles) * pixels);
        let np = (npix - p0).min(pixels);
        let ob = group * blocks;
        let nb = (self.cout.div_ceil(LANES) - ob).min(blocks);
        let mut tile = Tile {
            x_at: [0; MAX_PIXELS],
            y_at: [0; MAX_PIXELS],
            ob,
            conv: self,
            taps,
            x_plane: xl.plane(),
            y_plane: yl.plane(),
        };
        for (i, &[xa, ya]) in at[p0..p0 + np].iter().enumerate() {
            tile.x_at[i] = xa;
            tile.y_at[i] = ya;
        }
        // The highest offsets any tap of the tile reads and any pixel writes are in bounds.
        let last_x = tile.x_at[np - 1].max(tile.x_at[0]) + taps.last().copied().unwrap_or(0);
        assert!((xl.blocks() - 1) * xl.plane() + last_x + LANES <= x.len());
        // `y` points at one image of `yl.len()` values (`forward_on`).
        assert!((ob + nb - 1) * yl.plane() + tile.y_at[np - 1] + LANES <= yl.len());
        let r = residual.map_or(std::ptr::null(), |r| r.as_ptr());
        let x = x.as_ptr();
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512 {
            let pairs = nb / 2;
            if pairs > 0 {
                // SAFETY: the CPU has AVX-512F (`forward_on` checked it), so `w16` was packed;
                // offsets asserted above. A row tile's pixels are `np` (= `pixels`) consecutive
                // ones of one output row (`geometry`: the row is a multiple of `pixels` long),
                // so its last pixel's offsets are the ones asserted.
                unsafe {
                    if g.row {
                        debug_assert_eq!(np, pixels);
                        avx512::row(pairs, np, self.stride, &tile, x, y, r, relu)
                    } else {
                        avx512::dispatch(pairs, np, &tile, x, y, r, relu)
                    }
                };
            }
            if nb % 2 == 1 {
                // The odd block: the 8-lane tile, 6 pixels at a time.
                for c in (0..np).step_by(6) {
                    let k = (np - c).min(6);
                    let mut rest = tile;
                    rest.ob = ob + 2 * pairs;
                    rest.x_at[..k].copy_from_slice(&tile.x_at[c..c + k]);
                    rest.y_at[..k].copy_from_slice(&tile.y_at[c..c + k]);
                    // SAFETY: as above (an AVX-512 CPU has AVX2 and FMA); a subset of its pixels.
                    unsafe { eight(Isa::Avx2, 1, k, &rest, x, y, r, relu) };
                }
            }
            return;
        }
        // SAFETY: `isa` is one the CPU has; offsets asserted above.
        unsafe { eight(isa, nb, np, &tile, x, y, r, relu) }
    }
}

/// The 8-lane tile of `nb` (1 or 2) blocks and `np` (1 to 6) pixels on `isa`.
///
/// # Safety
/// `isa` is one the CPU has; every offset the tile reads or writes is inside `x`, `y` and `r`.
#[allow(clippy::too_many_arguments)]
unsafe fn eight(
    isa: Isa,
    nb: usize,
    np: usize,
    tile: &Tile,
    x: *const f32,
    y: *mut f32,
    r: *const f32,
    relu: bool,
) {
    let avx2 = cfg!(target_arch = "x86_64") && isa >= Isa::Avx2;
    macro_rules! go {
        ($ob:literal, $np:literal) => {
            if avx2 {
                #[cfg(target_arch = "x86_64")]
                avx2::tile::<$ob, $np>(tile, x, y, r, relu)
            } else {
                portable::<$ob, $np>(tile, x, y, r, relu)
            }
        };
    }
    match (nb, np) {
        (2, 6) => go!(2, 6),
        (2, 5) => go!(2, 5),
        (2, 4) => go!(2, 4),
        (2, 3) => go!(2, 3),
        (2, 2) => go!(2, 2),
        (2, _) => go!(2, 1),
        (_, 6) => go!(1, 6),
        (_, 5) => go!(1, 5),
        (_, 4) => go!(1, 4),
        (_, 3) => go!(1, 3),
        (_, 2) => go!(1, 2),
        (_, _) => go!(1, 1),
    }
}

/// The tile on `[f32; 8]` lane arrays.
///
/// # Safety
/// Every offset the tile reads or writes is inside `x`, `y` and `r` (null: no residual).
#[inline(always)]
unsafe fn portable<const OB: usize, const NP: usize>(
    t: &Tile,
    x: *const f32,
    y: *mut f32,
    r: *const f32,
    relu: bool,
) {
    let c = t.conv;
    let cib = c.cin.div_ceil(LANES);
    let wb = cib * c.k * c.k * LANES * LANES;
    let mut acc = [[[0f32; LANES]; OB]; NP];
    for ib in 0..cib {
        let xb = x.add(ib * t.x_plane);
        for (tap, &off) in t.taps.iter().enumerate() {
            let w0 =
                c.w.as_ptr()
                    .add(t.ob * wb + (ib * t.taps.len() + tap) * LANES * LANES);
            // The lanes past `cin` are zero on both sides.
            let lanes = (c.cin - ib * LANES).min(LANES);
            for l in 0..lanes {
                let mut wv = [[0f32; LANES]; OB];
                for (j, v) in wv.iter_mut().enumerate() {
                    *v = *(w0.add(j * wb + l * LANES) as *const [f32; LANES]);
                }
                for i in 0..NP {
                    let s = *xb.add(t.x_at[i] + off + l);
                    for j in 0..OB {
                        for o in 0..LANES {
                            acc[i][j][o] += s * wv[j][o];
                        }
                    }
                }
            }
        }
    }
    for (i, a) in acc.iter().enumerate() {
        for (j, a) in a.iter().enumerate() {
            let at = (t.ob + j) * t.y_plane + t.y_at[i];
            let b = &c.bias[(t.ob + j) * LANES..][..LANES];
            for o in 0..LANES {
                let mut v = a[o] + b[o];
                if !r.is_null() {
                    v += *r.add(at + o);
                }
                *y.add(at + o) = if relu { v.max(0.0) } else { v };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Tile, LANES};

    /// The tile in AVX2 + FMA.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; every offset the tile reads or writes is inside `x`, `y` and `r`
    /// (null: no residual).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const OB: usize, const NP: usize>(
        t: &Tile,
        x: *const f32,
        y: *mut f32,
        r: *const f32,
        relu: bool,
    ) {
        let c = t.conv;
        let cib = c.cin.div_ceil(LANES);
        let wb = cib * c.k * c.k * LANES * LANES;
        let mut acc = [[_mm256_setzero_ps(); OB]; NP];
        let mut w = c.w.as_ptr().add(t.ob * wb);
        // Whole input blocks with the lane loop unrolled, then the channels of a partial one.
        macro_rules! block {
            ($ib:expr, $lanes:expr) => {
                let xb = x.add($ib * t.x_plane);
                for &off in t.taps {
                    let xo = xb.add(off);
                    for l in 0..$lanes {
                        let mut wv = [_mm256_setzero_ps(); OB];
                        for (j, v) in wv.iter_mut().enumerate() {
                            *v = _mm256_loadu_ps(w.add(j * wb + l * LANES));
                        }
                        for i in 0..NP {
                            let s = _mm256_broadcast_ss(&*xo.add(t.x_at[i] + l));
                            for j in 0..OB {
                                acc[i][j] = _mm256_fmadd_ps(s, wv[j], acc[i][j]);
                            }
                        }
                    }
                    w = w.add(LANES * LANES);
                }
            };
        }
        for ib in 0..c.cin / LANES {
            block!(ib, LANES);
        }
        if c.cin % LANES != 0 {
            block!(cib - 1, c.cin % LANES);
        }
        let zero = _mm256_setzero_ps();
        for (i, a) in acc.iter().enumerate() {
            for (j, &a) in a.iter().enumerate() {
                let at = (t.ob + j) * t.y_plane + t.y_at[i];
                let mut v =
                    _mm256_add_ps(a, _mm256_loadu_ps(c.bias.as_ptr().add((t.ob + j) * LANES)));
                if !r.is_null() {
                    v = _mm256_add_ps(v, _mm256_loadu_ps(r.add(at)));
                }
                if relu {
                    v = _mm256_max_ps(v, zero);
                }
                _mm256_storeu_ps(y.add(at), v);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Tile, LANES, MAX_PIXELS};

    /// A tile's end: bias, residual and ReLU on the accumulators `$acc` (`[[__m512; OZ]; NP]`),
    /// each vector stored as its two blocks' halves at the tile's output offsets.
    ///
    /// Each accumulator is taken by a constant index: a loop over them that LLVM leaves rolled
    /// (it does from about 8 pixels up) indexes the array at run time, and the array then lives
    /// in memory, stored after every product: the 1 x 16 row tile, written
    /// that way first, ran at 0.4x of this (58 against 151 GFLOP/s).
    macro_rules! epilogue {
        ($acc:ident, $t:ident, $y:ident, $r:ident, $relu:ident) => {{
            let zero = _mm512_setzero_ps();
            let finish = |i: usize, j: usize, a: __m512| {
                let ob = $t.ob + 2 * j;
                let lo = ob * $t.y_plane + $t.y_at[i];
                let hi = lo + $t.y_plane;
                let mut v =
                    _mm512_add_ps(a, _mm512_loadu_ps($t.conv.bias.as_ptr().add(ob * LANES)));
                if !$r.is_null() {
                    v = _mm512_add_ps(v, load2($r.add(lo), $r.add(hi)));
                }
                if $relu {
                    v = _mm512_max_ps(v, zero);
                }
                let v = _mm512_castps_pd(v);
                _mm256_storeu_ps($y.add(lo), _mm256_castpd_ps(_mm512_castpd512_pd256(v)));
                _mm256_storeu_ps($y.add(hi), _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(v)));
            };
            const { assert!(NP <= MAX_PIXELS) };
            each!($acc, finish; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
        }};
    }

    /// `f(i, j, acc[i][j])` for each `i` in the list that `acc` has, `i` a constant.
    macro_rules! each {
        ($acc:ident, $f:ident; $($i:literal)*) => {
            $(if let Some(a) = $acc.get($i) {
                for (j, &a) in a.iter().enumerate() {
                    $f($i, j, a);
                }
            })*
        };
    }

    /// The tile of `pairs` pairs of blocks (1, or 2 with at most 6 pixels) and `np` pixels.
    ///
    /// # Safety
    /// As [`tile`].
    pub(super) unsafe fn dispatch(
        pairs: usize,
        np: usize,
        t: &Tile,
        x: *const f32,
        y: *mut f32,
        r: *const f32,
        relu: bool,
    ) {
        macro_rules! go {
            ($($np:literal)*) => {
                match np {
                    $($np => tile::<1, $np>(t, x, y, r, relu),)*
                    _ => unreachable!("a tile of {np} pixels"),
                }
            };
        }
        if pairs == 2 {
            match np {
                6 => return tile::<2, 6>(t, x, y, r, relu),
                5 => return tile::<2, 5>(t, x, y, r, relu),
                4 => return tile::<2, 4>(t, x, y, r, relu),
                3 => return tile::<2, 3>(t, x, y, r, relu),
                2 => return tile::<2, 2>(t, x, y, r, relu),
                _ => return tile::<2, 1>(t, x, y, r, relu),
            }
        }
        go!(12 11 10 9 8 7 6 5 4 3 2 1)
    }

    /// The row tiles ([`super::Geometry::row`]): `pairs` pairs of blocks (1 or 2) by `np`
    /// consecutive pixels of one output row (16 for one pair, 8 for two or one), at `stride` 1
    /// or 2.
    ///
    /// # Safety
    /// As [`tile`]; the tile's 16 pixels are consecutive in one output row.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn row(
        pairs: usize,
        np: usize,
        stride: usize,
        t: &Tile,
        x: *const f32,
        y: *mut f32,
        r: *const f32,
        relu: bool,
    ) {
        match (pairs, np, stride) {
            (1, 16, 1) => row_tile::<1, 16, 1>(t, x, y, r, relu),
            (1, 16, 2) => row_tile::<1, 16, 2>(t, x, y, r, relu),
            (2, 8, 1) => row_tile::<2, 8, 1>(t, x, y, r, relu),
            (2, 8, 2) => row_tile::<2, 8, 2>(t, x, y, r, relu),
            (1, 8, 1) => row_tile::<1, 8, 1>(t, x, y, r, relu),
            (1, 8, 2) => row_tile::<1, 8, 2>(t, x, y, r, relu),
            _ => unreachable!("a row tile of {pairs} pairs by {np} pixels at stride {stride}"),
        }
    }

    /// `OZ` vectors of 16 output channels by `NP` consecutive pixels of one output row, stride
    /// `S`: pixel `i` reads the input `i · S` pixels after pixel 0 and writes the output `i`
    /// after it, fixed displacements in the instructions.
    ///
    /// # Safety
    /// As [`tile`]; the pixels are consecutive in one output row.
    #[target_feature(enable = "avx512f")]
    unsafe fn row_tile<const OZ: usize, const NP: usize, const S: usize>(
        t: &Tile,
        x: *const f32,
        y: *mut f32,
        r: *const f32,
        relu: bool,
    ) {
        let c = t.conv;
        let cib = c.cin.div_ceil(LANES);
        let wb = cib * c.k * c.k * LANES * 2 * LANES;
        let mut acc = [[_mm512_setzero_ps(); OZ]; NP];
        let mut w = c.w16.as_ptr().add(t.ob / 2 * wb);
        let x0 = x.add(t.x_at[0]);
        // One input channel `l` of one tap: OZ filter vectors against NP broadcasts.
        macro_rules! step {
            ($xo:expr, $l:expr) => {
                let mut wv = [_mm512_setzero_ps(); OZ];
                for (j, v) in wv.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(w.add(j * wb + $l * 2 * LANES));
                }
                for i in 0..NP {
                    let s = _mm512_set1_ps(*$xo.add(i * S * LANES + $l));
                    for j in 0..OZ {
                        acc[i][j] = _mm512_fmadd_ps(s, wv[j], acc[i][j]);
                    }
                }
            };
        }
        // Whole input blocks with the channel loop written out (LLVM keeps the accumulators in
        // registers only then), then the channels of a partial one.
        for ib in 0..c.cin / LANES {
            let xb = x0.add(ib * t.x_plane);
            for &off in t.taps {
                let xo = xb.add(off);
                step!(xo, 0);
                step!(xo, 1);
                step!(xo, 2);
                step!(xo, 3);
                step!(xo, 4);
                step!(xo, 5);
                step!(xo, 6);
                step!(xo, 7);
                w = w.add(2 * LANES * LANES);
            }
        }
        if c.cin % LANES != 0 {
            let xb = x0.add((cib - 1) * t.x_plane);
            for &off in t.taps {
                let xo = xb.add(off);
                for l in 0..c.cin % LANES {
                    step!(xo, l);
                }
                w = w.add(2 * LANES * LANES);
            }
        }
        epilogue!(acc, t, y, r, relu);
        const { assert!(NP <= 16) };
    }

    /// Two 8-lane halves of a vector from two places.
    #[inline(always)]
    unsafe fn load2(lo: *const f32, hi: *const f32) -> __m512 {
        let lo = _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_loadu_ps(lo)));
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(
            lo,
            _mm256_castps_pd(_mm256_loadu_ps(hi)),
        ))
    }

    /// The tile: `OZ` vectors of 16 output channels (pairs of blocks) by `NP` pixels.
    ///
    /// # Safety
    /// The CPU has AVX-512F and the filters were packed for it; every offset the tile reads or
    /// writes is inside `x`, `y` and `r` (null: no residual).
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const OZ: usize, const NP: usize>(
        t: &Tile,
        x: *const f32,
        y: *mut f32,
        r: *const f32,
        relu: bool,
    ) {
        let c = t.conv;
        let cib = c.cin.div_ceil(LANES);
        let wb = cib * c.k * c.k * LANES * 2 * LANES;
        let pair = t.ob / 2;
        let mut acc = [[_mm512_setzero_ps(); OZ]; NP];
        let mut w = c.w16.as_ptr().add(pair * wb);
        // Whole input blocks with the lane loop unrolled, then the channels of a partial one.
        macro_rules! block {
            ($ib:expr, $lanes:expr) => {
                let xb = x.add($ib * t.x_plane);
                for &off in t.taps {
                    let xo = xb.add(off);
                    for l in 0..$lanes {
                        let mut wv = [_mm512_setzero_ps(); OZ];
                        for (j, v) in wv.iter_mut().enumerate() {
                            *v = _mm512_loadu_ps(w.add(j * wb + l * 2 * LANES));
                        }
                        for i in 0..NP {
                            let s = _mm512_set1_ps(*xo.add(t.x_at[i] + l));
                            for j in 0..OZ {
                                acc[i][j] = _mm512_fmadd_ps(s, wv[j], acc[i][j]);
                            }
                        }
                    }
                    w = w.add(2 * LANES * LANES);
                }
            };
        }
        for ib in 0..c.cin / LANES {
            block!(ib, LANES);
        }
        if c.cin % LANES != 0 {
            block!(cib - 1, c.cin % LANES);
        }
        epilogue!(acc, t, y, r, relu);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::{forward, Geom};

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

    #[test]
    fn layouts_round_trip_and_keep_borders_and_spare_lanes_zero() {
        let l = Layout {
            c: 11,
            h: 3,
            w: 5,
            border: 1,
        };
        assert_eq!((l.blocks(), l.row(), l.plane()), (2, 7, 5 * 7 * 8));
        let x: Vec<f32> = (0..11 * 15).map(|i| i as f32 + 1.0).collect();
        let mut b = vec![0.0; l.len()];
        l.fill_from(&x, &mut b);
        assert_eq!(b.iter().filter(|&&v| v != 0.0).count(), x.len());
        let mut back = vec![0.0; x.len()];
        l.copy_to(&b, &mut back);
        assert_eq!(back, x);
        assert_eq!(b[l.at(1, 2, 4) + 2], x[(10 * 3 + 2) * 5 + 4]);
    }

    /// One convolution called on maps of different sizes in turn (its kept offsets replaced each
    /// time) gives what a fresh one gives on each.
    #[test]
    fn a_convolution_called_on_other_map_sizes_gives_what_a_fresh_one_gives() {
        let mut seed = 11;
        let (cin, cout) = (16, 24);
        let (wt, bias) = (rnd(cout * cin * 9, &mut seed), rnd(cout, &mut seed));
        let kept = Conv::new(cin, cout, 3, 2, 1, &wt, Some(&bias));
        for (h, w) in [(8, 8), (6, 10), (8, 8), (9, 5)] {
            let xl = Layout {
                c: cin,
                h,
                w,
                border: 1,
            };
            let (oh, ow) = kept.out_hw(h, w);
            let yl = Layout {
                c: cout,
                h: oh,
                w: ow,
                border: 1,
            };
            let mut xb = vec![0.0; xl.len()];
            xl.fill_from(&rnd(cin * h * w, &mut seed), &mut xb);
            let run = |conv: &Conv| {
                let mut y = vec![0.0; yl.len()];
                conv.forward(1, (&xl, &xb), (&yl, &mut y), None, true, None);
                y
            };
            let fresh = Conv::new(cin, cout, 3, 2, 1, &wt, Some(&bias));
            assert_eq!(run(&kept), run(&fresh), "{h}x{w}");
        }
    }

    /// Every shape class (ragged channels, strides, 1x1, no padding, residual, ReLU), on every
    /// instruction set this CPU has, against the NCHW reference convolution.
    #[test]
    fn the_blocked_convolution_matches_the_reference_on_every_isa() {
        let mut seed = 7;
        let shapes = [
            // (n, cin, h, w, cout, k, stride, pad)
            (2, 3, 9, 7, 16, 3, 1, 1),
            (1, 16, 8, 8, 16, 3, 1, 1),
            (1, 16, 10, 10, 32, 3, 2, 1),
            (3, 8, 5, 6, 24, 3, 2, 1),
            (1, 5, 6, 6, 8, 1, 2, 0),
            (2, 13, 7, 7, 11, 3, 1, 0),
            (1, 32, 4, 4, 64, 3, 1, 1),
            // Row tiles (AVX-512, outputs a multiple of 16 wide): stride 1 and 2, ragged input
            // channels, an odd output block, a 1x1 shortcut.
            (2, 16, 3, 16, 16, 3, 1, 1),
            (1, 5, 6, 32, 16, 3, 2, 1),
            (2, 11, 4, 16, 24, 3, 1, 1),
            (1, 16, 4, 32, 16, 1, 2, 0),
            // 4 blocks x 8 pixels in a row: an odd block alone in the last group, a pair alone,
            // stride 2, a 1x1 stride-2 shortcut.
            (1, 16, 8, 8, 40, 3, 1, 1),
            (2, 9, 6, 16, 48, 3, 2, 1),
            (1, 16, 16, 16, 32, 1, 2, 0),
        ];
        for isa in crate::micro::available() {
            for &(n, cin, h, w, cout, k, s, p) in &shapes {
                let g = Geom::new(n, cin, h, w, cout, k, s, p).unwrap();
                let (x, wt, bias) = (
                    rnd(n * cin * h * w, &mut seed),
                    rnd(cout * cin * k * k, &mut seed),
                    rnd(cout, &mut seed),
                );
                let mut want = vec![0.0; n * cout * g.p()];
                forward(&g, &x, &wt, &mut want, |_, _| {});
                let conv = Conv::new(cin, cout, k, s, p, &wt, Some(&bias));
                let (oh, ow) = conv.out_hw(h, w);
                let xl = Layout {
                    c: cin,
                    h,
                    w,
                    border: 1,
                };
                let yl = Layout {
                    c: cout,
                    h: oh,
                    w: ow,
                    border: 1,
                };
                let mut xb = vec![0.0; n * xl.len()];
                for (i, xi) in x.chunks_exact(cin * h * w).enumerate() {
                    xl.fill_from(xi, &mut xb[i * xl.len()..][..xl.len()]);
                }
                let res_nchw = rnd(n * cout * oh * ow, &mut seed);
                let mut res = vec![0.0; n * yl.len()];
                for (i, ri) in res_nchw.chunks_exact(cout * oh * ow).enumerate() {
                    yl.fill_from(ri, &mut res[i * yl.len()..][..yl.len()]);
                }
                for (with_res, relu, groups) in [
                    (false, false, None),
                    (true, true, Some(3)),
                    (true, false, Some(1)),
                ] {
                    let mut yb = vec![0.0; n * yl.len()];
                    let for_each = |k: usize, f: &(dyn Fn(usize) + Sync)| (0..k).rev().for_each(f);
                    conv.forward_on(
                        isa,
                        n,
                        (&xl, &xb),
                        (&yl, &mut yb),
                        with_res.then_some(&res[..]),
                        relu,
                        groups.map(|g| (g, &for_each as &ForEach)),
                    );
                    for img in 0..n {
                        let ys = &yb[img * yl.len()..][..yl.len()];
                        let mut got = vec![0.0; cout * oh * ow];
                        yl.copy_to(ys, &mut got);
                        for (j, &g) in got.iter().enumerate() {
                            let co = j / (oh * ow);
                            let mut v = want[img * cout * oh * ow + j] + bias[co];
                            if with_res {
                                v += res_nchw[img * cout * oh * ow + j];
                            }
                            if relu {
                                v = v.max(0.0);
                            }
                            assert!(
                                (g - v).abs() < 1e-4,
                                "{isa} {:?} at {j}: {g} vs {v}",
                                (n, cin, h, w, cout, k, s, p)
                            );
                        }
                        // The border and the spare lanes stay zero.
                        let nonzero = ys.iter().filter(|&&v| v != 0.0).count();
                        assert!(nonzero <= cout * oh * ow, "{isa}: writes outside the map");
                    }
                }
            }
        }
    }
}
