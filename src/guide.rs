//! Guides: the depth behind the front page, one topic a module. Every Rust example in
//! them is a doctest that compiles (and, where it needs no server, runs on SQLite).
//!
//! | guide | what |
//! | --- | --- |
//! | [`reads`] | Reading: the scan methods, their options, counters and tracing. |
//! | [`keys`] | Keys: which columns can be keys, how they are compared, what is refused, and the limits. |
//! | [`partitions`] | Many workers: splitting a scan into slices with `partitions` and `partitions_sampled`. |
//! | [`writes`] | Batched writes: `update_all`, `delete_all`, `for_each_batch`, checkpoints and throttling. |
//! | [`moving`] | Moving and copying rows: `move_into`, `copy_into`, `move_to`, `copy_to`, exactly once. |
//! | [`distributed`] | Many machines: a job's slices as a NATS JetStream work queue (feature `jetstream`). |
//! | [`sql`] | The SQL that runs: one batch's statement, composite keys, plans and sorts. |
//! | [`streams`] | Async: the same scans as `Stream`s on diesel-async connections and pools. |
//! | [`pools`] | Pools, poolers and retries: r2d2, pgbouncer, what is retried and how long. |
//! | [`performance`] | Performance: what was measured, how, and how to reproduce it. |

#[doc = include_str!("guide/reads.md")]
pub mod reads {}

#[doc = include_str!("guide/keys.md")]
pub mod keys {}

#[doc = include_str!("guide/partitions.md")]
pub mod partitions {}

#[doc = include_str!("guide/writes.md")]
pub mod writes {}

#[doc = include_str!("guide/moving.md")]
pub mod moving {}

#[doc = include_str!("guide/distributed.md")]
pub mod distributed {}

#[doc = include_str!("guide/sql.md")]
pub mod sql {}

#[doc = include_str!("guide/streams.md")]
pub mod streams {}

#[doc = include_str!("guide/pools.md")]
pub mod pools {}

#[doc = include_str!("guide/performance.md")]
pub mod performance {}
