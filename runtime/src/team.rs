//! A small fork-join team for one request on several threads: the helpers spin briefly between
//! jobs (a convolution of one image takes tens of microseconds, less than waking a sleeping
//! thread costs), then back off to yielding and to short sleeps when idle.
//!
//! A job is `n` tasks; the caller and the helpers claim task indices from one atomic word that
//! also holds the job's generation, so a helper that arrives late can never claim a task of a job
//! that has ended. The caller runs tasks too and returns when every task has finished, so a job
//! completes even if no helper is awake.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Task = dyn Fn(usize) + Sync;

struct Shared {
    /// generation << 32 | next task index.
    state: AtomicU64,
    /// Tasks finished in the current job.
    done: AtomicUsize,
    /// The current job: its generation, its number of tasks and its task function (a fat
    /// pointer, valid while that generation is current and unfinished).
    job: Mutex<Option<(u64, usize, JobPtr)>>,
    stop: AtomicBool,
}

#[derive(Clone, Copy)]
struct JobPtr(*const Task);
// SAFETY: the pointee is `Sync` and outlives every use (the caller waits for all tasks).
unsafe impl Send for JobPtr {}

/// Threads that run one job's tasks together with the calling thread.
pub(crate) struct Team {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    /// One job at a time.
    running: Mutex<()>,
}

/// How long an idle helper spins before it yields, and yields before it sleeps.
const SPIN: Duration = Duration::from_micros(200);
const YIELD: Duration = Duration::from_millis(20);

impl Team {
    /// A team of `threads` (the caller and `threads - 1` helpers).
    pub fn new(threads: usize) -> Team {
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            job: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let helpers = (1..threads.max(1))
            .filter_map(|i| {
                let sh = shared.clone();
                std::thread::Builder::new()
                    .name(format!("sc-runtime-team-{i}"))
                    .spawn(move || helper(&sh))
                    .ok()
            })
            .collect();
        Team {
            shared,
            helpers,
            running: Mutex::new(()),
        }
    }

    pub fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Runs `f(i)` for every `i < n` on the team; returns when all have run.
    pub fn for_each(&self, n: usize, f: &(dyn Fn(usize) + Sync + '_)) {
        if n == 0 {
            return;
        }
        let _one = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let sh = &self.shared;
        let gen = (sh.state.load(Ordering::Acquire) >> 32).wrapping_add(1) & 0xffff_ffff;
        // SAFETY (lifetime): the pointer is only dereferenced for tasks claimed under this
        // generation, all of which finish before this function returns.
        let ptr: *const Task =
            unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static Task>(f) };
        *sh.job.lock().unwrap_or_else(|p| p.into_inner()) = Some((gen, n, JobPtr(ptr)));
        sh.done.store(0, Ordering::Relaxed);
        sh.state.store(gen << 32, Ordering::Release);
        work(sh, gen, n, f);
        // Helpers finish their claimed tasks; if one shares this core, yield it the core.
        let mut spins = 0u32;
        while sh.done.load(Ordering::Acquire) < n {
            spins += 1;
            if spins < 2000 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Claims and runs tasks of generation `gen` until none is left.
fn work(sh: &Shared, gen: u64, n: usize, f: &(dyn Fn(usize) + Sync + '_)) {
    loop {
        let s = sh.state.load(Ordering::Acquire);
        if s >> 32 != gen || (s & 0xffff_ffff) as usize >= n {
            return;
        }
        if sh
            .state
            .compare_exchange_weak(s, s + 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            f((s & 0xffff_ffff) as usize);
            sh.done.fetch_add(1, Ordering::Release);
        }
    }
}

fn helper(sh: &Shared) {
    let mut seen = 0u64;
    let mut idle_since = Instant::now();
    while !sh.stop.load(Ordering::Relaxed) {
        let gen = sh.state.load(Ordering::Acquire) >> 32;
        if gen != seen {
            // The job is published before its generation: this is `gen`'s job or a newer one
            // (then skipped here and taken on the next round).
            let job = *sh.job.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((jgen, n, JobPtr(f))) = job {
                if jgen == gen {
                    // SAFETY: tasks are claimed only while `gen` is current (see `work`), and
                    // the caller waits for every claimed task before the pointer goes away.
                    work(sh, gen, n, unsafe { &*f });
                }
            }
            seen = gen;
            idle_since = Instant::now();
            continue;
        }
        let idle = idle_since.elapsed();
        if idle < SPIN {
            std::hint::spin_loop();
        } else if idle < YIELD {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for h in self.helpers.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_per_job() {
        let team = Team::new(3);
        for n in [1, 2, 7, 64] {
            for _ in 0..200 {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                team.for_each(n, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
        assert_eq!(team.threads(), 3);
    }
}
