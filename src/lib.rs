#![doc = include_str!("../README.md")]
#![warn(missing_docs, missing_debug_implementations)]
#![deny(unsafe_op_in_unsafe_fn)]

mod builder;
mod dsl;
mod error;
mod iter;
pub mod key;
pub mod plan;
pub mod query;
mod source;
mod unique;

pub use builder::{
    Chunked, Db, KeyedBase, KeyedBatches, KeyedIter, KeyedRows, ModelBase, ModelBatches, ModelIter,
    ModelRows, PlanInner, RowType, Rows, RunChunkedDsl, ScanKeyed, ScanModel, DEFAULT_BATCH_SIZE,
};
pub use dsl::ChunkedDsl;
pub use error::Error;
pub use iter::{EndReason, LoadBatches, LoadIter, Progress};
pub use key::typed;
pub use plan::Partition;
pub use source::{AttemptError, ConnectionSource};
pub use unique::UniqueIndexes;

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
