//! The candle rendering of [`ArchConfig`]: a module to train and evaluate.

use candle_core::{ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, BatchNormConfig, Linear, VarBuilder};

use crate::config::{ArchConfig, Shortcut};
use crate::ops;

/// What a named variable is, for initialisation, weight decay and the optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// Convolution weight `[out, in, k, k]`: He (MSRA) normal init.
    ConvWeight,
    /// Linear weight `[out, in]`.
    LinearWeight,
    /// Linear bias.
    LinearBias,
    /// BatchNorm scale (gamma).
    BnWeight,
    /// BatchNorm shift (beta).
    BnBias,
    /// BatchNorm running mean: a buffer, not trained.
    RunningMean,
    /// BatchNorm running variance: a buffer, not trained.
    RunningVar,
}

impl ParamKind {
    /// Trained by the optimizer (everything but the BN running statistics).
    pub fn is_trainable(self) -> bool {
        !matches!(self, ParamKind::RunningMean | ParamKind::RunningVar)
    }
    /// Biases and BN parameters, which many recipes exclude from weight decay.
    pub fn is_bias_or_bn(self) -> bool {
        matches!(
            self,
            ParamKind::LinearBias | ParamKind::BnWeight | ParamKind::BnBias
        )
    }
}

/// A convolution (no bias) followed by BatchNorm.
#[derive(Debug, Clone)]
pub struct ConvBn {
    weight: Tensor,
    bn: BatchNorm,
    stride: usize,
    padding: usize,
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn new(
        vb: &VarBuilder,
        conv_name: &str,
        bn_name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        cfg: &ArchConfig,
        params: &mut Vec<(String, ParamKind)>,
    ) -> Result<Self> {
        let weight = vb.pp(conv_name).get((c_out, c_in, k, k), "weight")?;
        let bn_cfg = BatchNormConfig {
            eps: cfg.bn_eps,
            remove_mean: true,
            affine: true,
            momentum: cfg.bn_momentum,
        };
        let bn = candle_nn::batch_norm(c_out, bn_cfg, vb.pp(bn_name))?;
        let path = |n: &str, leaf: &str| {
            let prefix = vb.prefix();
            if prefix.is_empty() {
                format!("{n}.{leaf}")
            } else {
                format!("{prefix}.{n}.{leaf}")
            }
        };
        params.push((path(conv_name, "weight"), ParamKind::ConvWeight));
        params.push((path(bn_name, "weight"), ParamKind::BnWeight));
        params.push((path(bn_name, "bias"), ParamKind::BnBias));
        params.push((path(bn_name, "running_mean"), ParamKind::RunningMean));
        params.push((path(bn_name, "running_var"), ParamKind::RunningVar));
        Ok(ConvBn {
            weight,
            bn,
            stride,
            padding: k / 2,
        })
    }

    /// `relu(bn(conv(x)))`.
    fn forward_relu_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        ops::conv_bn(
            x,
            &self.weight,
            &self.bn,
            self.stride,
            self.padding,
            train,
            None,
            true,
        )
    }

    fn parts(&self) -> ops::ConvBnParts<'_> {
        ops::ConvBnParts {
            weight: &self.weight,
            bn: &self.bn,
            stride: self.stride,
            padding: self.padding,
        }
    }
}

#[derive(Debug, Clone)]
enum BlockShortcut {
    Identity,
    /// Option A: subsample and append zero channels.
    ZeroPad {
        out_channels: usize,
    },
    /// Option B: 1x1 projection + BN.
    Projection(ConvBn),
}

/// The basic residual block: conv3x3-BN-ReLU, conv3x3-BN, add the shortcut, ReLU (see
/// [`ops::basic_block`]).
#[derive(Debug, Clone)]
pub struct BasicBlock {
    c1: ConvBn,
    c2: ConvBn,
    shortcut: BlockShortcut,
}

impl BasicBlock {
    pub fn new(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        stride: usize,
        cfg: &ArchConfig,
        params: &mut Vec<(String, ParamKind)>,
    ) -> Result<Self> {
        let c1 = ConvBn::new(&vb, "conv1", "bn1", c_in, c_out, 3, stride, cfg, params)?;
        let c2 = ConvBn::new(&vb, "conv2", "bn2", c_out, c_out, 3, 1, cfg, params)?;
        let shortcut = if stride == 1 && c_in == c_out {
            BlockShortcut::Identity
        } else {
            match cfg.shortcut {
                Shortcut::A => BlockShortcut::ZeroPad {
                    out_channels: c_out,
                },
                Shortcut::B => BlockShortcut::Projection(ConvBn::new(
                    &vb.pp("shortcut"),
                    "0",
                    "1",
                    c_in,
                    c_out,
                    1,
                    stride,
                    cfg,
                    params,
                )?),
            }
        };
        Ok(BasicBlock { c1, c2, shortcut })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let shortcut = match &self.shortcut {
            BlockShortcut::Identity => ops::ShortcutParts::Identity,
            BlockShortcut::ZeroPad { out_channels } => ops::ShortcutParts::Subsample {
                out_channels: *out_channels,
            },
            BlockShortcut::Projection(p) => ops::ShortcutParts::Projection(p.parts()),
        };
        ops::basic_block(x, &self.c1.parts(), &self.c2.parts(), &shortcut, train)
    }
}

/// A CIFAR ResNet (6n + 2 layers). Input: normalized images `[N, C, H, W]`; output: logits.
#[derive(Debug, Clone)]
pub struct ResNet {
    cfg: ArchConfig,
    stem: ConvBn,
    blocks: Vec<BasicBlock>,
    fc: Linear,
    params: Vec<(String, ParamKind)>,
}

impl ResNet {
    pub fn new(vb: VarBuilder, cfg: &ArchConfig) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let mut params = Vec::new();
        let stem = ConvBn::new(
            &vb,
            "conv1",
            "bn1",
            cfg.in_channels,
            cfg.widths[0],
            3,
            cfg.stem_stride,
            cfg,
            &mut params,
        )?;
        let mut blocks = Vec::new();
        for (name, c_in, c_out, stride) in cfg.blocks() {
            blocks.push(BasicBlock::new(
                vb.pp(&name),
                c_in,
                c_out,
                stride,
                cfg,
                &mut params,
            )?);
        }
        let fc = candle_nn::linear(cfg.widths[2], cfg.num_classes, vb.pp("fc"))?;
        let fc_name = |leaf: &str| {
            if vb.prefix().is_empty() {
                format!("fc.{leaf}")
            } else {
                format!("{}.fc.{leaf}", vb.prefix())
            }
        };
        params.push((fc_name("weight"), ParamKind::LinearWeight));
        params.push((fc_name("bias"), ParamKind::LinearBias));
        Ok(ResNet {
            cfg: cfg.clone(),
            stem,
            blocks,
            fc,
            params,
        })
    }

    pub fn config(&self) -> &ArchConfig {
        &self.cfg
    }

    /// Every variable's full name and kind, in construction order.
    pub fn params(&self) -> &[(String, ParamKind)] {
        &self.params
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = self.stem.forward_relu_t(x, train)?;
        for b in &self.blocks {
            x = b.forward_t(&x, train)?;
        }
        let pooled = x.mean((2, 3))?;
        ops::linear(&pooled, &self.fc)
    }
}
