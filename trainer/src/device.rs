//! `--device cpu|cuda[:N]`.

use anyhow::bail;
use candle_core::Device;

/// Which device a string names (checked without touching the device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

pub fn parse(s: &str) -> anyhow::Result<DeviceSpec> {
    match s.trim().to_ascii_lowercase().as_str() {
        "cpu" => Ok(DeviceSpec::Cpu),
        "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
        other => match other.strip_prefix("cuda:") {
            Some(n) => match n.parse() {
                Ok(i) => Ok(DeviceSpec::Cuda(i)),
                Err(_) => bail!("device '{s}': expected cuda:N with N a GPU index"),
            },
            None => bail!("unknown device '{s}': expected cpu, cuda or cuda:N"),
        },
    }
}

/// Opens the device; `cuda` without the `cuda` cargo feature is a clear error.
pub fn open(s: &str) -> anyhow::Result<Device> {
    match parse(s)? {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(i) => open_cuda(i),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(i: usize) -> anyhow::Result<Device> {
    Device::new_cuda(i).map_err(|e| anyhow::anyhow!("cannot open CUDA device {i}: {e}"))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_i: usize) -> anyhow::Result<Device> {
    bail!(
        "this sc-trainer was built without CUDA support: rebuild with \
         `cargo build --release --features cuda` (see scripts/build-cuda.sh), or use --device cpu"
    )
}

/// One line naming the machine a run trains on, for run.json and model cards: the CPU's model
/// name with its family/model numbers (which tell AMD generations apart when the name does not),
/// the cores this process may use, and the kernels' instruction set; or the CUDA device's index
/// on that CPU.
pub fn machine(spec: &str) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let name = field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let numbers = match (field("cpu family"), field("model")) {
        (Some(f), Some(m)) => format!(" (family {f} model {m})"),
        _ => String::new(),
    };
    let cpu = format!("{name}{numbers}, {cores} cores");
    match parse(spec) {
        Ok(DeviceSpec::Cuda(i)) => format!("CUDA device {i} on {cpu}"),
        _ => format!("{cpu}, kernels {}", sc_kernels::micro::isa()),
    }
}
