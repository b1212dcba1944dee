//! Types and plumbing shared by tutti's coordinator, workers and CLI.

pub mod prompt;
