//! Benchmarks: `tutti bench model` (the model runtime's stages, one job at a time and batched)
//! and `tutti bench serve` (the worker's engine with continuous batching against one job at a
//! time), and `tutti bench stable-audio` (one side of the Stable Audio benchmark against the
//! Python references, `scripts/bench/stable_audio.py`). A crate of its own because it needs both the trainer's pack writer and the serving
//! engine, which the worker build must not pull in.

mod host;
pub mod model;
pub mod serve;
pub mod stable_audio;
