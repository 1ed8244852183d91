//! cws: BERT-based Chinese word segmentation — library crate behind the `cws` binary.

pub mod fused;
pub mod model;
pub mod optim;
pub mod weights;
