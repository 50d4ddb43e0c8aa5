//! The one description of an architecture that both renderings (candle, ONNX) read.

use serde::{Deserialize, Serialize};

/// How a down-sampling block (stride 2, more channels) joins its input to its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shortcut {
    /// He et al.'s option A, the CIFAR ResNets of the paper: take every second pixel and append
    /// zero channels. Parameter-free, so ResNet-20 has the paper's 0.27M parameters. Exported to ONNX
    /// as a fixed 0/1 1x1 stride-2 `Conv` (no `Pad`, which candle-onnx 0.11 rejects).
    A,
    /// Option B: a learned 1x1 stride-2 convolution followed by BatchNorm.
    B,
}

/// A CIFAR-style ResNet (He et al. 2015, §4.2): a 3x3 stem, three stages of `n` basic blocks,
/// global average pooling and a linear classifier; depth = 6n + 2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchConfig {
    /// Total weighted layers, 6n + 2: 20, 32, 44, 56, 110, …
    pub depth: usize,
    /// Input channels: 3 for CIFAR, 1 for (Fashion-)MNIST.
    pub in_channels: usize,
    /// Input height in pixels (32 for CIFAR, 28 for MNIST).
    pub height: usize,
    /// Input width in pixels.
    pub width: usize,
    /// Number of classes (10 for CIFAR-10).
    pub num_classes: usize,
    /// Channels of the three stages (the paper: 16, 32, 64).
    #[serde(default = "default_widths")]
    pub widths: [usize; 3],
    /// Shortcut of the down-sampling blocks.
    #[serde(default = "default_shortcut")]
    pub shortcut: Shortcut,
    /// BatchNorm running-statistics momentum, PyTorch convention
    /// (`running = (1 - m) * running + m * batch`). Caffe's moving_average_fraction f is m = 1 - f:
    /// the paper's CLR runs used f = 0.95, i.e. m = 0.05.
    #[serde(default = "default_bn_momentum")]
    pub bn_momentum: f64,
    /// BatchNorm epsilon.
    #[serde(default = "default_bn_eps")]
    pub bn_eps: f64,
    /// Stride of the first convolution: 1 for CIFAR-sized inputs; 2 (the downsampling stem) for
    /// inputs of 64 px and more, so that a 96x96 image costs 2.25x a 32x32 one instead of 9x.
    /// Left out of the serialized config when 1 (configs from before it read as they were).
    #[serde(default = "default_stem_stride", skip_serializing_if = "is_one")]
    pub stem_stride: usize,
}

fn default_stem_stride() -> usize {
    1
}
fn is_one(n: &usize) -> bool {
    *n == 1
}

/// Inputs whose shorter side is at least this many pixels get the downsampling stem.
pub const DOWNSAMPLING_STEM_FROM: usize = 64;

fn default_widths() -> [usize; 3] {
    [16, 32, 64]
}
fn default_shortcut() -> Shortcut {
    Shortcut::A
}
fn default_bn_momentum() -> f64 {
    0.1
}
fn default_bn_eps() -> f64 {
    1e-5
}

/// The model names `ArchConfig::from_name` knows.
pub const MODEL_NAMES: [&str; 5] = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"];

impl ArchConfig {
    /// A CIFAR ResNet of the given depth for inputs of `in_channels x height x width`.
    pub fn resnet(
        depth: usize,
        in_channels: usize,
        height: usize,
        width: usize,
        num_classes: usize,
    ) -> Result<Self, String> {
        let cfg = ArchConfig {
            depth,
            in_channels,
            height,
            width,
            num_classes,
            widths: default_widths(),
            shortcut: default_shortcut(),
            bn_momentum: default_bn_momentum(),
            bn_eps: default_bn_eps(),
            stem_stride: if height.min(width) >= DOWNSAMPLING_STEM_FROM {
                2
            } else {
                1
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// `resnet20` … `resnet110` (also `resnet-56`, `ResNet56`, or a bare depth such as `56`).
    pub fn depth_from_name(name: &str) -> Result<usize, String> {
        let lower = name.to_ascii_lowercase().replace(['-', '_'], "");
        let digits = lower.strip_prefix("resnet").unwrap_or(&lower);
        let depth: usize = digits.parse().map_err(|_| {
            format!(
                "unknown model '{name}': expected one of {} (or resnetN with N = 6n + 2)",
                MODEL_NAMES.join(", ")
            )
        })?;
        if depth < 8 || !(depth - 2).is_multiple_of(6) {
            return Err(format!(
                "model '{name}': a CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, 110), not {depth}"
            ));
        }
        Ok(depth)
    }

    /// Blocks per stage.
    pub fn blocks_per_stage(&self) -> usize {
        (self.depth - 2) / 6
    }

    /// The canonical name, `resnet{depth}`.
    pub fn name(&self) -> String {
        format!("resnet{}", self.depth)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.depth < 8 || !(self.depth - 2).is_multiple_of(6) {
            return Err(format!(
                "depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110), got {}",
                self.depth
            ));
        }
        if self.in_channels == 0 || self.height == 0 || self.width == 0 {
            return Err(format!(
                "input shape {}x{}x{} has a zero dimension",
                self.in_channels, self.height, self.width
            ));
        }
        if self.height < 4 || self.width < 4 {
            return Err(format!(
                "input {}x{} is too small: two stride-2 stages need at least 4x4",
                self.height, self.width
            ));
        }
        if self.num_classes < 2 {
            return Err(format!(
                "num_classes must be >= 2, got {}",
                self.num_classes
            ));
        }
        if self.widths.contains(&0) {
            return Err("stage widths must be positive".into());
        }
        if !(1..=2).contains(&self.stem_stride) {
            return Err(format!(
                "stem_stride must be 1 or 2, got {}",
                self.stem_stride
            ));
        }
        if self.height.div_ceil(self.stem_stride) < 4 || self.width.div_ceil(self.stem_stride) < 4 {
            return Err(format!(
                "input {}x{} is too small for a stride-{} stem",
                self.height, self.width, self.stem_stride
            ));
        }
        if !(0.0..=1.0).contains(&self.bn_momentum) {
            return Err(format!(
                "bn_momentum must be in [0, 1] (PyTorch convention), got {}",
                self.bn_momentum
            ));
        }
        if self.bn_eps <= 0.0 || !self.bn_eps.is_finite() {
            return Err(format!("bn_eps must be positive, got {}", self.bn_eps));
        }
        Ok(())
    }

    /// Every stage's blocks as `(name, in_channels, out_channels, stride)`, in order.
    pub fn blocks(&self) -> Vec<(String, usize, usize, usize)> {
        let mut out = Vec::new();
        let mut c_in = self.widths[0];
        for (s, &c_out) in self.widths.iter().enumerate() {
            for b in 0..self.blocks_per_stage() {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                out.push((format!("layer{}.{b}", s + 1), c_in, c_out, stride));
                c_in = c_out;
            }
        }
        out
    }

    /// Learned parameters (conv and linear weights, BN scale and shift; not BN running statistics).
    pub fn parameter_count(&self) -> usize {
        let conv = |ci: usize, co: usize, k: usize| ci * co * k * k;
        let bn = |c: usize| 2 * c;
        let mut n = conv(self.in_channels, self.widths[0], 3) + bn(self.widths[0]);
        for (_, ci, co, stride) in self.blocks() {
            n += conv(ci, co, 3) + bn(co) + conv(co, co, 3) + bn(co);
            if (stride != 1 || ci != co) && self.shortcut == Shortcut::B {
                n += conv(ci, co, 1) + bn(co);
            }
        }
        n + self.widths[2] * self.num_classes + self.num_classes
    }

    /// Multiply-adds of one forward pass of one image (convolutions and the classifier).
    pub fn multiply_adds(&self) -> u64 {
        let s = self.stem_stride as u64;
        let (mut h, mut w) = (
            (self.height as u64).div_ceil(s),
            (self.width as u64).div_ceil(s),
        );
        let mut n = (self.in_channels * self.widths[0] * 9) as u64 * h * w;
        for (_, ci, co, stride) in self.blocks() {
            if stride == 2 {
                h = h.div_ceil(2);
                w = w.div_ceil(2);
            }
            n += (ci * co * 9 + co * co * 9) as u64 * h * w;
            if (stride != 1 || ci != co) && self.shortcut == Shortcut::B {
                n += (ci * co) as u64 * h * w;
            }
        }
        n + (self.widths[2] * self.num_classes) as u64
    }
}

/// Per-channel input normalization, part of the model contract (`sc-data`).
pub use sc_data::Normalization;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_downsampling_stem_cuts_large_inputs_to_a_quarter() {
        let small = ArchConfig::resnet(20, 3, 32, 32, 10).unwrap();
        let large = ArchConfig::resnet(20, 3, 96, 96, 10).unwrap();
        assert_eq!((small.stem_stride, large.stem_stride), (1, 2));
        assert_eq!(small.parameter_count(), large.parameter_count());
        let ratio = large.multiply_adds() as f64 / small.multiply_adds() as f64;
        assert!((ratio - 2.25).abs() < 0.05, "{ratio}");
        // Serialized only when not 1, so configs and names from before it stay the same.
        assert!(!serde_json::to_string(&small)
            .unwrap()
            .contains("stem_stride"));
        let back: ArchConfig =
            serde_json::from_str(&serde_json::to_string(&large).unwrap()).unwrap();
        assert_eq!(back, large);
        let mut bad = large.clone();
        bad.stem_stride = 3;
        assert!(bad.validate().unwrap_err().contains("stem_stride"));
    }

    #[test]
    fn parameter_counts_match_the_paper() {
        // He et al. 2015, Table 6: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M.
        let expect = [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85), (110, 1.7)];
        for (depth, millions) in expect {
            let cfg = ArchConfig::resnet(depth, 3, 32, 32, 10).unwrap();
            let m = cfg.parameter_count() as f64 / 1e6;
            let digits = if millions >= 1.0 { 10.0 } else { 100.0 };
            assert_eq!(
                (m * digits).round() / digits,
                millions,
                "resnet{depth}: {m}M"
            );
        }
        assert_eq!(
            ArchConfig::resnet(20, 3, 32, 32, 10)
                .unwrap()
                .parameter_count(),
            269_722
        );
        // The paper's multiply-adds for ResNet-20: 40.6M.
        let ma = ArchConfig::resnet(20, 3, 32, 32, 10)
            .unwrap()
            .multiply_adds();
        assert!((ma as f64 / 1e6 - 40.6).abs() < 0.5, "{ma}");
    }

    #[test]
    fn names_and_depths() {
        assert_eq!(ArchConfig::depth_from_name("resnet56").unwrap(), 56);
        assert_eq!(ArchConfig::depth_from_name("ResNet-110").unwrap(), 110);
        assert_eq!(ArchConfig::depth_from_name("20").unwrap(), 20);
        assert!(ArchConfig::depth_from_name("resnet21")
            .unwrap_err()
            .contains("6n + 2"));
        assert!(ArchConfig::depth_from_name("vgg16")
            .unwrap_err()
            .contains("unknown model"));
        let cfg = ArchConfig::resnet(20, 1, 28, 28, 10).unwrap();
        assert_eq!(cfg.blocks().len(), 9);
        assert_eq!(cfg.blocks()[3], ("layer2.0".to_string(), 16, 32, 2));
    }
}
