//! Per-thread scratch buffers, kept between calls so a training step allocates no temporaries.

use std::cell::RefCell;

/// Reusable buffers. [`Slot::zeroed`] keeps one buffer per layout key (the last few keys seen)
/// and zeroes it only when first made: callers overwrite every position that varies between calls
/// and rely on the rest staying zero (padding), so a network whose layers alternate between
/// layouts neither re-zeroes nor re-allocates.
#[derive(Default)]
pub struct Slot {
    keyed: Vec<(u64, Vec<f32>)>,
    free: Vec<f32>,
}

/// Layouts kept per slot.
const KEYS_KEPT: usize = 8;

impl Slot {
    /// `len` values, all zero the first time (`key`, `len`) is seen.
    pub fn zeroed(&mut self, len: usize, key: u64) -> &mut [f32] {
        let i = match self
            .keyed
            .iter()
            .position(|(k, b)| *k == key && b.len() == len)
        {
            Some(i) => i,
            None => {
                if self.keyed.len() >= KEYS_KEPT {
                    self.keyed.remove(0);
                }
                self.keyed.push((key, vec![0.0; len]));
                self.keyed.len() - 1
            }
        };
        &mut self.keyed[i].1[..]
    }

    /// `len` values of unspecified content.
    pub fn any(&mut self, len: usize) -> &mut [f32] {
        if self.free.len() < len {
            self.free.resize(len, 0.0);
        }
        &mut self.free[..len]
    }

    /// [`Slot::any`] as `u32`s (bf16 pairs).
    pub fn any_u32(&mut self, len: usize) -> &mut [u32] {
        let f = self.any(len);
        // SAFETY: f32 and u32 have the same size and alignment, and every bit pattern is a valid
        // u32; the borrow of `self` carries over.
        unsafe { std::slice::from_raw_parts_mut(f.as_mut_ptr() as *mut u32, len) }
    }
}

/// The scratch buffers of one thread.
#[derive(Default)]
pub struct Scratch {
    /// Padded image (or im2col matrix) read by the forward / input-gradient tile.
    pub src: Slot,
    /// Output tile rows before they are copied to the NCHW result.
    pub out: Slot,
    /// Channels-last padded input (or transposed im2col) read by the weight-gradient tile.
    pub src_t: Slot,
    /// Output gradient, channels last, on the output pixel grid.
    pub dy_t: Slot,
    /// One image's output gradient, NCHW.
    pub dy_img: Slot,
    /// Output gradients of several images packed `[channel / 8][image][pixel][8]`.
    pub dy_p: Slot,
    /// bf16 pairs of a source buffer ([`crate::bf16::Pairing::pack_b`]).
    pub pairs: Slot,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch buffers.
pub fn with<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|s| f(&mut s.borrow_mut()))
}

/// A layout key from a few numbers.
pub fn key(parts: &[usize]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    h.finish() | 1
}

/// A raw pointer that may cross threads: each user writes a disjoint part.
pub struct SendPtr<T>(pub *mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the whole `SendPtr`).
    pub fn get(self) -> *mut T {
        self.0
    }
}
// SAFETY: users only write disjoint regions through it, from inside one parallel loop.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// A vector of `len` values that the caller overwrites entirely (no zeroing pass).
pub fn uninit_vec(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: f32 has no invalid bit patterns, and every caller writes all `len` values before
    // reading any (the kernels fill whole images or whole rows).
    #[allow(clippy::uninit_vec)]
    unsafe {
        v.set_len(len)
    };
    v
}
