//! cws: BERT-based Chinese word segmentation — library crate behind the `cws` binary.

pub mod checkpoint;
pub mod hub;
