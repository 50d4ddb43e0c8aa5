//! The seam for data-parallel training: the few collective operations the training loop needs.
//!
//! [`Single`] is the single process (every operation does nothing); [`Mpi`] (cargo feature `mpi`)
//! is one rank of an `mpirun -np N` job. The loop calls [`Collective::allreduce_sum`] once per
//! step on one flat buffer (gradients, BatchNorm running statistics and the step's loss, accuracy
//! and stop flag), so nothing MPI-specific appears in `train.rs`.

use std::sync::Arc;

/// Collective operations over the processes of one training job.
pub trait Collective: std::fmt::Debug + Send + Sync {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// The number of processes.
    fn size(&self) -> usize;
    /// Replaces `buf` by its elementwise sum over all ranks.
    fn allreduce_sum(&self, buf: &mut [f32]) -> anyhow::Result<()>;
    /// Replaces `buf` by rank `root`'s bytes on every rank.
    fn broadcast(&self, buf: &mut [u8], root: usize) -> anyhow::Result<()>;
    /// Waits until every rank is here.
    fn barrier(&self) -> anyhow::Result<()>;
    /// Ends every rank of the job at once (a rank's error must not leave the others waiting in a
    /// collective). The single process just exits.
    fn abort(&self, code: i32) -> !;
    /// What this is, for logs: `single process` or `MPI rank 1 of 4 (Open MPI v4.1.4)`.
    fn describe(&self) -> String;

    /// Replaces `buf` by its elementwise mean over all ranks.
    fn allreduce_mean(&self, buf: &mut [f32]) -> anyhow::Result<()> {
        if self.size() > 1 {
            self.allreduce_sum(buf)?;
            let n = self.size() as f32;
            buf.iter_mut().for_each(|v| *v /= n);
        }
        Ok(())
    }
}

/// One process: every collective operation is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn allreduce_sum(&self, _buf: &mut [f32]) -> anyhow::Result<()> {
        Ok(())
    }
    fn broadcast(&self, _buf: &mut [u8], root: usize) -> anyhow::Result<()> {
        if root != 0 {
            anyhow::bail!("broadcast from rank {root} in a single process");
        }
        Ok(())
    }
    fn barrier(&self) -> anyhow::Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn describe(&self) -> String {
        "single process".into()
    }
}

/// The single process, as the loop's default.
pub fn single() -> Arc<dyn Collective> {
    Arc::new(Single)
}

/// The world size a launcher announces in the environment (Open MPI, MPICH/Hydra, PMIx, Slurm's
/// `srun --mpi`), or `None` outside a parallel launch.
pub fn launcher_world_size() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_SIZE",
        "MPI_LOCALNRANKS",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok()?.parse().ok())
}

/// Processes of this job on this machine (for dividing the cores among them).
pub fn launcher_local_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
}

/// The job's collective: MPI when started by a launcher with more than one process (and built
/// with feature `mpi`), the single process otherwise. Under a launcher without the feature it is
/// an error: N independent processes would each train the whole run into the same directory.
pub fn from_launcher() -> anyhow::Result<Arc<dyn Collective>> {
    match launcher_world_size() {
        Some(n) if n > 1 => open_mpi(n),
        _ => Ok(single()),
    }
}

#[cfg(feature = "mpi")]
fn open_mpi(_n: usize) -> anyhow::Result<Arc<dyn Collective>> {
    Ok(Arc::new(mpi_impl::Mpi::init()?))
}

#[cfg(not(feature = "mpi"))]
fn open_mpi(n: usize) -> anyhow::Result<Arc<dyn Collective>> {
    anyhow::bail!(
        "started as one of {n} MPI processes, but this sc-trainer was built without MPI: \
         build it with `cargo build --release -p sc-trainer --features mpi` (docs/CLUSTER.md)"
    )
}

#[cfg(feature = "mpi")]
pub use mpi_impl::Mpi;

#[cfg(feature = "mpi")]
mod mpi_impl {
    use anyhow::bail;
    use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
    use mpi::environment::Universe;
    use mpi::topology::{Communicator, SimpleCommunicator};

    use super::Collective;

    /// One rank of an MPI job (`MPI_COMM_WORLD`).
    pub struct Mpi {
        // Kept alive for the whole process: dropping it calls MPI_Finalize.
        _universe: Universe,
        world: SimpleCommunicator,
        rank: usize,
        size: usize,
        library: String,
    }

    // MPI is initialized with MPI_THREAD_SINGLE semantics and every call comes from the thread
    // that runs the training loop; the handle is only shared to sit in `FitOptions`.
    unsafe impl Send for Mpi {}
    unsafe impl Sync for Mpi {}

    impl std::fmt::Debug for Mpi {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}", self.describe())
        }
    }

    impl Mpi {
        pub fn init() -> anyhow::Result<Mpi> {
            let Some(universe) = mpi::initialize() else {
                bail!("MPI was already initialized in this process");
            };
            let world = universe.world();
            let (rank, size) = (world.rank() as usize, world.size() as usize);
            let library = mpi::environment::library_version()
                .map(|v| v.split([',', '\n']).next().unwrap_or("").trim().to_string())
                .unwrap_or_else(|_| "unknown MPI library".into());
            Ok(Mpi {
                _universe: universe,
                world,
                rank,
                size,
                library,
            })
        }
    }

    impl Collective for Mpi {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn allreduce_sum(&self, buf: &mut [f32]) -> anyhow::Result<()> {
            // rsmpi has no in-place allreduce: reduce a copy into the buffer (3.4 MB for
            // ResNet-56, a memcpy next to a step of milliseconds).
            let send = buf.to_vec();
            self.world
                .all_reduce_into(&send[..], buf, SystemOperation::sum());
            Ok(())
        }
        fn broadcast(&self, buf: &mut [u8], root: usize) -> anyhow::Result<()> {
            if root >= self.size {
                bail!("broadcast from rank {root} in a job of {} ranks", self.size);
            }
            self.world.process_at_rank(root as i32).broadcast_into(buf);
            Ok(())
        }
        fn barrier(&self) -> anyhow::Result<()> {
            self.world.barrier();
            Ok(())
        }
        fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }
        fn describe(&self) -> String {
            format!("MPI rank {} of {} ({})", self.rank, self.size, self.library)
        }
    }
}
