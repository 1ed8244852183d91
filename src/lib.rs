//! cws: BERT-based Chinese word segmentation. The pipeline stages, in the order
//! data flows through them:
//! corpus → units → bies → (hub → model) → segment / score.

pub mod bies;
pub mod checkpoint;
pub mod commands;
pub mod config;
pub mod corpus;
pub mod dict;
pub mod encode;
pub mod hub;
pub mod score;
pub mod segment;
pub mod units;
