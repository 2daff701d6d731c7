//! device-taint-eviction: evicts pods whose DRA devices carry a `NoExecute` taint.
//!
//! ```text
//!  Pod ──spec.resourceClaims──▶ ResourceClaim ──status.allocation──▶ device (driver/pool/device)
//!   ▲                               │                                   ▲            ▲
//!   └──────status.reservedFor───────┘                 ResourceSlice taints   DeviceTaintRule taints
//! ```
//!
//! [`watch`] turns API objects into views ([`view`]) and feeds them to [`index::State`]
//! (synchronous, no I/O); pure functions in [`eviction`] decide when each pod must go and why,
//! and [`guard`] which of those evictions the blast-radius guard holds;
//! the pending-eviction map in the index is the truth and a timed queue ([`queue`]) wakes workers
//! at the deadlines; [`rule_status`] words the rules' status; one [`actuator`] does every API
//! write. [`controller`] is the glue (shared state, workers, wiring, signals).
//!
//! The command line sits on top: [`cli`] parses flags and builds the configs
//! ([`controller::Config`], [`client::ClientSettings`], [`telemetry::LogSettings`], the [`ops`]
//! requests); no other module imports it. Only [`watch`], [`actuator`], [`leader`], [`admin`],
//! [`client`] and [`ops`] do I/O (plus the start-up discovery in [`k8s`]). See README.md,
//! "Architecture".

pub mod actuator;
pub mod admin;
pub mod cli;
pub mod client;
pub mod controller;
pub mod eviction;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod fixtures;
/// Checks behind the fuzz targets in `fuzz/`; compiled for tests and `--features testing` only.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod fuzz_targets;
pub mod guard;
pub mod index;
pub mod k8s;
pub mod leader;
pub mod metrics;
pub mod ops;
pub mod protobuf;
pub mod queue;
pub mod rule_status;
pub mod telemetry;
pub mod throttle;
pub mod view;
pub mod watch;

/// Name of the controller: Event source, field manager of the rule status, prefix of the Lease
/// holder's field manager and the default Lease name (upstream controller name).
pub const CONTROLLER_NAME: &str = "device-taint-eviction-controller";

/// 64-bit FNV-1a: stable across builds and platforms, unlike `std`'s hasher. Shortened names
/// (derived rule names, field managers) end in it so that distinct long names stay distinct.
#[must_use]
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
