//! The `tutti` package's library: what the binary, its benchmarks and the integration tests
//! share outside the workspace crates.

pub mod process_farm;
