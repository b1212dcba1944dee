//! Types and plumbing shared by tutti's coordinator, workers and CLI.

pub mod audio;
pub mod blob;
pub mod config;
pub mod encode;
pub mod job;
pub mod loudness;
pub mod messages;
pub mod metrics;
pub mod models;
pub mod prompt;
pub mod queue;
pub mod song;
pub mod taskqueue;
pub mod telemetry;
