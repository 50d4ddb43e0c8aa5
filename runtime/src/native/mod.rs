//! The native executor: runs the image-classifier graphs this project exports, and CIFAR ResNets
//! exported from PyTorch, on `sc-kernels` (the trainer's convolutions: AVX-512, AVX2+FMA or
//! portable) instead of tract's interpreter. tract stays the loader, the reference and the
//! fallback: a graph is compiled here only when every node is one of the operations below with
//! constant weights, and it is used only after its logits agree with tract's plan on probe inputs
//! and it runs faster than that plan ([`crate::executor`]).
//!
//! Operations (NCHW, float32, the batch axis untouched): `Conv` (square kernel, equal strides and
//! symmetric padding, no groups or dilation, optional bias), `BatchNormalization` (inference form),
//! `Relu`, `Add`, `Sub`/`Mul`/`Div` by a per-channel or scalar constant, `Pad` (zeros),
//! `Slice` (positive steps), `GlobalAveragePool`, `ReduceMean` over H and W, `Flatten`, `Reshape`
//! (to `[batch, features]`), `Gemm`/`MatMul` by constant weights, `Identity`, `Dropout`, `Constant`;
//! `Concat` of a value with zeros for every image along the channels (as `Pad`).
//!
//! Shape subgraphs are folded at compile time (`fold.rs`): `Shape`, `Gather`, `Unsqueeze`,
//! `Squeeze`, `Concat`, `ConstantOfShape`, `Cast`, `Transpose`, `Reshape` and `Slice` of constants
//! become constants, the batch size (unknown when compiling) marked where `Shape` put it.
//!
//! Compilation folds BatchNorm into the preceding convolution's weights and bias, and a ReLU into the
//! operation before it, when nothing else reads the intermediate value.
//!
//! The module is split by job: `graph.rs` holds the step representation, `compile.rs` turns ONNX
//! nodes into steps (one function per operation, found in a table), `fold.rs` evaluates the
//! operations on constants, `fuse.rs` folds steps into their neighbours and `run.rs` executes them; `blocked.rs` is the
//! same graph in the channel-blocked layout (NCHWc), which runs instead when it is the faster.

mod blocked;
mod compile;
mod fold;
mod fuse;
mod graph;
mod int8;
mod run;

pub(crate) use compile::read_tensor;
pub(crate) use fuse::{batch_norm_affine, fold_affine_into_conv};
pub(crate) use graph::Graph;

/// Why a graph is left to tract.
pub(crate) type Unsupported = String;
