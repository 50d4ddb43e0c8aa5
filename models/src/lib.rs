//! `sc-models`: each network is described once (an [`ArchConfig`]) and rendered twice:
//! as a candle module for training ([`ResNet`]) and as an ONNX graph for deployment ([`onnx`]).
//!
//! Weight names are the candle `VarBuilder` paths (`layer1.0.bn1.weight`, …), and the ONNX
//! initializers carry the same names, so a checkpoint maps onto the graph one to one.

pub mod config;
pub mod custom_ops;
pub mod init;
pub mod onnx;
pub mod ops;
pub mod resnet;

pub use config::{ArchConfig, Normalization, Shortcut};
pub use resnet::ResNet;
