//! Parallel loops over images (rayon's global pool, the one candle's stock CPU ops use too).

use rayon::prelude::*;

use super::scratch::SendPtr;

/// Runs `f(i)` for every `i < n`, spread over the pool's threads (work stealing).
pub fn for_each(n: usize, f: impl Fn(usize) + Sync + Send) {
    match n {
        0 => {}
        1 => f(0),
        _ => (0..n).into_par_iter().for_each(f),
    }
}

/// Runs `f(i, chunk)` for the consecutive `chunk`-long pieces of `data` (the last may be shorter).
pub fn chunks_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    let len = data.len();
    if len == 0 {
        return;
    }
    let p = SendPtr(data.as_mut_ptr());
    for_each(len.div_ceil(chunk), |i| {
        let start = i * chunk;
        let end = (start + chunk).min(len);
        // SAFETY: the pieces are disjoint, each handed to exactly one call.
        f(i, unsafe {
            std::slice::from_raw_parts_mut(p.get().add(start), end - start)
        })
    });
}

/// `f(i)` for every `i < n` in parallel, results in index order.
pub fn map<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    (0..n).into_par_iter().map(f).collect()
}

/// Threads of the pool.
pub fn threads() -> usize {
    rayon::current_num_threads()
}
