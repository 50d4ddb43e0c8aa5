//! `sc-kernels`: the CPU arithmetic of the CIFAR ResNets on plain `f32` slices, with no framework
//! underneath. The trainer plugs these into candle as custom ops with their own backward passes
//! (`sc_models::custom_ops::op`); the runtime runs inference on them (`sc_runtime`'s native
//! executor). Neither framework is a dependency here.
//!
//! - [`micro`]: the register-blocked tiles (AVX-512, AVX2+FMA or portable, detected at run time).
//! - [`bf16`]: the same tile in bf16 pairs with f32 sums (AVX512_BF16), for bf16 training.
//! - [`conv`]: NCHW convolution forward, input gradient and weight gradient.
//! - [`blocked`]: inference convolutions in the channel-blocked (NCHWc) layout.
//! - [`bn`], [`elementwise`]: BatchNorm (training and inference form) fused with ReLU and the
//!   residual add, and its backward passes.
//! - [`int8`]: uint8 × int8 products (AVX512-VNNI, AVX-VNNI, AVX2, portable) and requantization.
//! - [`par`], [`scratch`]: parallel loops over images (rayon's global pool) and per-thread
//!   reusable buffers.

pub mod bf16;
pub mod blocked;
pub mod bn;
pub mod conv;
pub mod elementwise;
pub mod int8;
pub mod micro;
pub mod par;
pub mod qconv;
pub mod scratch;
