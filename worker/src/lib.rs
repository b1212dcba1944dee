//! tutti's worker: consumes denoise and vocode tasks and runs them with the model runtime.

pub mod model;
