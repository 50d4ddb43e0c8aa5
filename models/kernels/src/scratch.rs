//! Per-thread scratch buffers, kept between calls so a training step allocates no temporaries.

use std::cell::RefCell;

/// A reusable buffer. [`Slot::zeroed`] zeroes only when the layout key changes: callers overwrite
/// every position that varies between calls and rely on the rest staying zero (padding).
#[derive(Default)]
pub struct Slot {
    buf: Vec<f32>,
    key: u64,
}

impl Slot {
    /// `len` values, all zero the first time `key` is seen (and whenever it changes).
    pub fn zeroed(&mut self, len: usize, key: u64) -> &mut [f32] {
        if self.key != key || self.buf.len() != len {
            self.buf.clear();
            self.buf.resize(len, 0.0);
            self.key = key;
        }
        &mut self.buf[..len]
    }

    /// `len` values of unspecified content.
    pub fn any(&mut self, len: usize) -> &mut [f32] {
        if self.buf.len() < len {
            self.buf.resize(len, 0.0);
        }
        self.key = 0;
        &mut self.buf[..len]
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
