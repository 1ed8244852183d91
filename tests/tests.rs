//! The integration tests of cws, one binary with a module per area.

mod common;

mod bad_input;
mod cli;
mod crf;
mod determinism;
mod hub;
mod hub_server;
mod model;
mod properties;
mod safety;
mod scale_out;
mod scoring;
mod script;
mod segment_io;
mod training;
mod units;
