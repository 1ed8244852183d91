//! cws: BERT-based Chinese word segmentation. The pipeline stages, in the order
//! data flows through them:
//! corpus → units (script: traditional read as simplified) → bies → encode
//! (ids, windows, batches) → features (lexicon, bigrams) → hub/weights → model
//! → tagger (label scores, decoding) → segment / score; train and optim drive
//! learning, config holds its settings; model_dir is the model folder's one
//! contract (its files, loader and writer), checkpoint writes folders atomically.

pub mod bench;
pub mod bies;
pub mod blas;
pub mod checkpoint;
pub mod commands;
pub mod config;
pub mod corpus;
pub mod crf;
pub mod dict;
pub mod encode;
pub mod features;
pub mod fused;
pub mod hub;
pub mod model;
pub mod model_dir;
pub mod optim;
pub mod output;
pub mod score;
pub mod script;
pub mod segment;
pub mod tagger;
pub mod train;
pub mod units;
pub mod weights;
