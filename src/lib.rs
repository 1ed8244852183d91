//! cws: BERT-based Chinese word segmentation. The pipeline stages, in the order
//! data flows through them:
//! corpus → units → bies → encode (ids, windows, batches) → features (lexicon,
//! bigrams) → hub/weights → model
//! → tagger (label scores, decoding) → segment / score; train and optim drive
//! learning, config and checkpoint hold its settings and results.

pub mod bench;
pub mod bies;
pub mod blas;
pub mod checkpoint;
pub mod commands;
pub mod config;
pub mod corpus;
pub mod dict;
pub mod encode;
pub mod features;
pub mod fused;
pub mod hub;
pub mod model;
pub mod optim;
pub mod output;
pub mod score;
pub mod segment;
pub mod tagger;
pub mod train;
pub mod units;
pub mod weights;
