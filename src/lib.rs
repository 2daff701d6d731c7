//! device-taint-eviction: evicts pods whose DRA devices carry a `NoExecute` taint.
//!
//! ```text
//!  Pod ──spec.resourceClaims──▶ ResourceClaim ──status.allocation──▶ device (driver/pool/device)
//!   ▲                               │                                   ▲            ▲
//!   └──────status.reservedFor───────┘                 ResourceSlice taints   DeviceTaintRule taints
//! ```
//!
//! Watches feed [`index::State`] (synchronous, no I/O); pure functions in [`eviction`] decide
//! when each pod must go and why; the pending-eviction map in the index is the truth and a timed
//! queue ([`queue`]) wakes workers at the deadlines; one actuator does every API write.

pub mod actuator;
pub mod admin;
pub mod cli;
pub mod client;
pub mod controller;
pub mod eviction;
#[doc(hidden)]
pub mod fixtures;
/// Checks behind the fuzz targets in `fuzz/`; compiled for tests and `--features fuzzing` only.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz_targets;
pub mod index;
pub mod k8s;
pub mod leader;
pub mod metrics;
pub mod ops;
pub mod queue;
pub mod telemetry;
pub mod throttle;
pub mod view;
