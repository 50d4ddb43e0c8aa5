//! The candle glue for the fast CPU kernels of `sc-kernels` on the training hot path
//! (convolution, BatchNorm, ReLU, residual add): candle custom ops with their own backward
//! passes ([`op`]); see [`crate::ops`] for the entry points and when they apply.
//!
//! `SC_STOCK_KERNELS=1` in the environment (read once) forces candle's stock ops everywhere,
//! for comparisons and debugging.

pub use sc_kernels::{bn, conv, elementwise, micro, par, scratch};

pub mod op;

use std::cell::Cell;
use std::sync::OnceLock;

use candle_core::{DType, Tensor};

/// Whether `SC_STOCK_KERNELS` asks for candle's stock ops (set and neither empty nor `0`).
pub fn stock_forced() -> bool {
    static FORCED: OnceLock<bool> = OnceLock::new();
    *FORCED
        .get_or_init(|| std::env::var("SC_STOCK_KERNELS").is_ok_and(|v| !v.is_empty() && v != "0"))
}

thread_local! {
    static STOCK_HERE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the stock ops on this thread only (tests compare both paths in one process).
pub fn with_stock<R>(f: impl FnOnce() -> R) -> R {
    let before = STOCK_HERE.with(|s| s.replace(true));
    let r = f();
    STOCK_HERE.with(|s| s.set(before));
    r
}

/// Whether the fast kernels can take these tensors: all f32 on the CPU, not forced off, and no
/// low-precision autocast on this thread ([`crate::ops::set_autocast`]; the kernels are f32).
pub fn applicable(ts: &[&Tensor]) -> bool {
    !stock_forced()
        && !STOCK_HERE.with(|s| s.get())
        && crate::ops::autocast().is_none()
        && ts
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// A training step frees and re-allocates every activation and gradient (candle owns them). glibc
/// serves allocations above its mmap threshold (dynamic, at most 32 MiB) with fresh pages that the
/// kernel must fault in and zero (~15% of a step here), and trims the heap top back to the system.
/// For a training process (the trainer's `main` calls it once, explicitly: it changes the whole
/// process): serve everything from the heap and never trim, so that memory freed in one step is
/// reused in the next. The peak footprint is unchanged; memory is not handed back to the system
/// until the process ends. `SC_KEEP_MALLOC=1` leaves glibc as it is.
pub fn keep_freed_memory() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            if std::env::var("SC_KEEP_MALLOC").is_ok_and(|v| !v.is_empty() && v != "0") {
                return;
            }
            extern "C" {
                fn mallopt(param: i32, value: i32) -> i32;
            }
            const M_TRIM_THRESHOLD: i32 = -1;
            const M_MMAP_MAX: i32 = -4;
            // SAFETY: mallopt only changes glibc's allocation policy; both settings are valid.
            unsafe {
                mallopt(M_MMAP_MAX, 0);
                mallopt(M_TRIM_THRESHOLD, i32::MAX);
            }
        }
    });
}

/// Threads the kernels run on: rayon's global pool (`RAYON_NUM_THREADS` sets it).
pub fn threads() -> usize {
    par::threads()
}
