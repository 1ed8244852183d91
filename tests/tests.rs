//! Integration tests of the `cws` library, one binary so the crate links once.

mod hub;
