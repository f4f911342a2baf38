#![doc = include_str!("../README.md")]
#![warn(missing_docs, missing_debug_implementations)]
#![deny(unsafe_op_in_unsafe_fn)]

mod backend;
mod builder;
pub mod checkpoint;
mod commit;
mod control;
mod diff;
mod dsl;
mod engine;
mod error;
pub mod explain;
pub mod guide;
pub mod health;
mod iter;
#[cfg(feature = "jetstream")]
pub mod jetstream;
pub mod key;
mod load;
mod machine;
mod moved;
pub mod plan;
mod predicate;
mod query;
mod rows;
mod shared;
mod source;
mod stored;
#[cfg(feature = "async")]
mod stream;
mod trace;
mod transfer;
mod unique;
mod write;

pub use builder::{Chunked, RunChunkedDsl, DEFAULT_BATCH_SIZE};
pub use control::Control;
pub use diff::{DiffKeys, DiffReport};
pub use dsl::ChunkedDsl;
pub use engine::{EndReason, Progress};
pub use error::Error;
pub use explain::{DryRun, Explain, Verdict};
pub use iter::{LoadBatches, LoadIter, ThreadBatches, ThreadIter};
pub use key::typed;
pub use load::BatchLoading;
pub use plan::Partition;
pub use source::{AttemptError, ConnectionSource};
pub use stored::StoredKey;
pub use transfer::TransferDsl;
pub use unique::UniqueIndexes;
pub use write::{BatchStats, WriteObserver, WriteReport};

#[cfg(feature = "async")]
pub use stream::{
    AsyncConnectionSource, LoadBatchesStream, LoadStream, RowStream, RunChunkedAsyncDsl, ScanStream,
};

/// The types the scan methods return, by names a signature can use (as
/// Diesel's own `diesel::helper_types` names its query types):
/// `ModelIter<'q, C, S, M>` is what `scan.load_iter::<M>(source)` returns for
/// a scan `C` (a [`Chunked`]) on source `S`, `'q` being what the query
/// borrows; the others follow `load_batches`, the `*_keyed` variants and the
/// streams.
pub mod helper_types {
    pub use crate::builder::{KeyedBatches, KeyedIter, ModelBatches, ModelIter};
    pub use crate::diff::Diff;
    #[cfg(feature = "async")]
    pub use crate::stream::{KeyedBatchesStream, KeyedStream, ModelBatchesStream, ModelStream};
}

/// Everything a scan needs in scope: `use diesel_chunked_iterator::prelude::*;`.
///
/// ```
/// use diesel_chunked_iterator::prelude::*;
/// ```
pub mod prelude {
    pub use crate::dsl::ChunkedDsl;
    pub use crate::key::typed;
    pub use crate::RunChunkedDsl;
    pub use crate::TransferDsl;
    #[cfg(feature = "async")]
    pub use crate::{RunChunkedAsyncDsl, ScanStream};
}
