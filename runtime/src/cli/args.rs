//! Command-line arguments (clap derive). Every flag says its unit and default.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Run super-convergence image classifiers (ONNX) on the CPU with tract.
#[derive(Debug, Parser)]
#[command(name = "sc-runtime", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Accuracy, per-class accuracy, confusion matrix and throughput on a labelled test set.
    Eval {
        /// The model (.onnx).
        model: PathBuf,
        /// The test set: an official archive as downloaded (cifar-10-binary.tar.gz,
        /// cifar-100-binary.tar.gz; read without unpacking), a CIFAR-10/100 binary test batch
        /// (e.g. test_batch.bin), an IDX images file (t10k-images-idx3-ubyte[.gz]), a directory
        /// holding any of these or the directory an archive unpacks to, a short name for a set
        /// `sc-trainer data fetch` put in the data home (cifar-test or cifar10, cifar100-test,
        /// mnist-test, fashion-mnist-test; $SC_DATA_DIR, else ~/.local/share/super-convergence),
        /// or a folder of images (DIR/test/<class>/*, else DIR/val/<class>/*, else
        /// DIR/<class>/*), fitted as the trainer fitted them, class names matched to the model's.
        data: PathBuf,
        /// Evaluate only the first N images [default: all].
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Image folders: go on without files that are not images or do not decode.
        #[arg(long)]
        skip_bad_images: bool,
        /// Print one JSON object instead of text (and no progress bar).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        pre: PreArgs,
    },
    /// Top-k classes of each image file (PNG, JPEG, BMP, GIF, TIFF, WebP).
    Predict {
        /// The model (.onnx).
        model: PathBuf,
        /// Image files.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Classes shown per image.
        #[arg(long, default_value_t = 3, value_name = "K")]
        top_k: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        pre: PreArgs,
    },
    /// Images/s and request latency (p50, p99) per batch size, on synthetic input.
    Bench {
        /// The model (.onnx); a foreign model needs no flags (its graph must fix C, H, W).
        model: PathBuf,
        /// Images per request, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "1,64",
            value_name = "N,.."
        )]
        batch: Vec<usize>,
        /// Minimum measuring time per batch size, in seconds.
        #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
        seconds: f64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        pre: PreArgs,
    },
    /// Serve models over HTTP with the Open Inference Protocol (KServe v2), batching
    /// concurrent requests. Stops on SIGTERM or Ctrl-C after finishing accepted requests.
    #[cfg(feature = "serve")]
    Serve(ServeArgs),
    /// Quantize a float model to int8 (ONNX QDQ: int8 weights per output channel, uint8
    /// activations), calibrated on training images (docs/INT8.md).
    Quantize {
        /// The float model (.onnx).
        model: PathBuf,
        /// The data set whose training split calibrates (never its test images): a CIFAR
        /// directory or archive, an IDX directory, a folder of images (DIR/train/<class>/*, else
        /// DIR/<class>/*) or a short name of a fetched set.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Where to write the int8 model [default: MODEL-int8.onnx beside the model].
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Calibration images, spread evenly over the training split.
        #[arg(long, value_name = "N", default_value_t = sc_runtime::quantize::DEFAULT_IMAGES)]
        images: usize,
        /// How each activation's range is chosen: `minmax` (smallest to largest value seen) or
        /// `percentile` (see --percentile).
        #[arg(long, value_name = "METHOD", default_value = "minmax")]
        calibration: String,
        /// The percentile kept by `--calibration percentile` (both tails), in (50, 100].
        #[arg(long, value_name = "P", default_value_t = 99.99)]
        percentile: f64,
        /// Layers left in float, comma-separated: `first-conv`, `classifier` or node names
        /// [default: none].
        #[arg(long, value_delimiter = ',', value_name = "LAYER,..")]
        keep_float: Vec<String>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        pre: PreArgs,
    },
    /// Inputs, outputs, metadata and operator counts of a model file.
    Info {
        /// The model (.onnx).
        model: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// How inference is spread over the CPU.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Worker threads sharing the model [default: the machine's available cores].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Images per tract run; one optimized plan is built per size used [default: 1, the fastest
    /// per image for tract].
    #[arg(long, value_name = "N")]
    pub chunk: Option<usize>,
    /// Test-time augmentation: none, or flip (each image and its left-right mirror, logits
    /// averaged: twice the work).
    #[arg(long, default_value = "none", value_name = "none|flip")]
    pub tta: sc_runtime::Tta,
}

/// The preprocessing of a foreign model (one without sc.* metadata). Our models carry their own:
/// do not give these for them.
#[derive(Debug, Args, Default)]
pub struct PreArgs {
    /// Per-channel mean subtracted after scaling to the pixel range, comma-separated: 1 value
    /// (gray) or 3 (RGB), e.g. 0.4914,0.4822,0.4465 [default: none].
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "M,..",
        allow_negative_numbers = true
    )]
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviation divided by after the mean, comma-separated, e.g.
    /// 0.2470,0.2435,0.2616 [default: none].
    #[arg(long, value_delimiter = ',', value_name = "S,..")]
    pub std: Option<Vec<f32>>,
    /// Class names in logit order: `cifar10`, `fashion-mnist`, `mnist`, a count N (named 0..N-1),
    /// `@FILE` (one name per line) or a comma-separated list [default: none].
    #[arg(long, value_name = "SPEC")]
    pub classes: Option<String>,
    /// Input size HxW in pixels, e.g. 32x32 [default: the graph's fixed input size].
    #[arg(long, value_name = "HxW")]
    pub input_size: Option<String>,
    /// The values a 0 byte and a 255 byte map to before mean/std, e.g. 0,255 [default: 0,1].
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "LO,HI",
        allow_negative_numbers = true
    )]
    pub pixel_range: Option<Vec<f32>>,
}

/// `sc-runtime serve` flags.
#[cfg(feature = "serve")]
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Models (.onnx with our metadata), each served under its file stem or as NAME=PATH.
    #[arg(required = true, value_name = "MODEL")]
    pub models: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// TCP port; 0 picks a free one (the address is printed on stdout).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Worker threads per model run [default: the machine's available cores].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Most images per model run and per request.
    #[arg(long, default_value_t = 64, value_name = "B")]
    pub max_batch: usize,
    /// Longest wait, in milliseconds, for more requests once one is queued. 0 (Triton's default)
    /// runs at once; requests that arrive while a run is under way still go into the next run
    /// together (measured: docs/PERFORMANCE.md, "Serving").
    #[arg(long, default_value_t = 0.0, value_name = "MS")]
    pub max_delay_ms: f64,
    /// Requests waiting per model before new ones are refused with 503.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_queue: usize,
    /// Largest request body in MiB (413 above).
    #[arg(long, default_value_t = 32.0, value_name = "MIB")]
    pub max_body_mb: f64,
    /// Per-request time limit in milliseconds: reading headers and body, queueing and running.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    pub timeout_ms: u64,
    /// Log one line per request on stderr (debug level; off by default).
    #[arg(long)]
    pub log_requests: bool,
    /// Test-time augmentation for every model: none, or flip (each image and its left-right
    /// mirror, logits averaged: twice the work per image).
    #[arg(long, default_value = "none", value_name = "none|flip")]
    pub tta: sc_runtime::Tta,
}
