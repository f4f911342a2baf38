//! The integration tests, as one binary: each module was a test file of its own.
//! One binary links the crate once instead of once per file.
//!
//! `cargo test --all-features --test it -- write_jobs::` runs one module.

#[macro_use]
mod common;

mod async_core;
mod async_pool;
mod async_write;
mod checkpoint;
mod collation;
mod composite;
mod concurrent;
mod control;
mod core_scans;
mod correctness;
mod diff;
#[cfg(all(feature = "jetstream", feature = "r2d2"))]
mod distributed;
mod explain;
mod explain_verdicts;
mod filters;
mod health;
mod lock_rollback;
mod lost_commit;
mod moved_key;
mod pgbouncer;
mod plan;
mod plan_sampled;
mod pool;
mod prefetch;
mod restart;
mod retry;
mod smoke;
mod statements;
mod stored_keys;
mod tracing_spans;
mod transfer;
mod unique;
mod write;
mod write_jobs;
