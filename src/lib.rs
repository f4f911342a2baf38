#![doc = include_str!("../README.md")]
#![warn(missing_docs, missing_debug_implementations)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod backend;
mod builder;
pub mod checkpoint;
mod dsl;
mod engine;
mod error;
pub mod explain;
mod iter;
#[cfg(feature = "jetstream")]
pub mod jetstream;
pub mod key;
pub mod plan;
mod predicate;
pub mod query;
mod rows;
mod source;
mod stored;
mod unique;
pub mod write;

pub use builder::{
    Chunked, Db, KeyedBase, KeyedBatches, KeyedIter, ModelBase, ModelBatches, ModelIter, PlanInner,
    RunChunkedDsl, ScanKeyed, ScanModel, DEFAULT_BATCH_SIZE,
};
pub use dsl::ChunkedDsl;
pub use engine::{EndReason, Progress};
pub use error::Error;
pub use explain::{Explain, Verdict};
pub use iter::{LoadBatches, LoadIter};
pub use key::typed;
pub use plan::Partition;
pub use rows::{KeyedRows, LoadedRow, ModelRows, RowType, Rows};
pub use source::{AttemptError, ConnectionSource};
pub use stored::StoredKey;
pub use unique::UniqueIndexes;
pub use write::{BatchStats, WriteReport};

/// Everything a scan needs in scope: `use diesel_chunked_iterator::prelude::*;`.
///
/// ```
/// use diesel_chunked_iterator::prelude::*;
/// ```
pub mod prelude {
    pub use crate::dsl::ChunkedDsl;
    pub use crate::key::typed;
    pub use crate::RunChunkedDsl;
}
