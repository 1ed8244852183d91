//! Single integration-test binary; each module covers one part of the crate.

mod model;
