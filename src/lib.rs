//! device-taint-eviction: evicts pods whose DRA devices carry a `NoExecute` taint.

pub mod admin;
pub mod cli;
pub mod client;
pub mod leader;
pub mod metrics;
pub mod telemetry;
pub mod throttle;
