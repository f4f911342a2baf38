//! A job's slices as a NATS JetStream work queue, run by workers on many
//! machines (feature `jetstream`).
//!
//! A job is a key range cut into [`Partition`](crate::Partition)s (with
//! [`partitions`](crate::Chunked::partitions)), each slice run as a
//! checkpointed write job ([`for_each_batch`](crate::RunChunkedDsl::for_each_batch),
//! [`update_all`](crate::RunChunkedDsl::update_all), ...). This module hands the
//! slices to any number of worker processes through JetStream and keeps the
//! job's state; the crate adds no job system of its own.
//!
//! ```no_run
//! # #[cfg(all(feature = "sqlite", feature = "r2d2"))]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use diesel::prelude::*;
//! use diesel::r2d2::{ConnectionManager, Pool};
//! use diesel_chunked_iterator::jetstream::{Job, Worker};
//! use diesel_chunked_iterator::prelude::*;
//! # diesel::table! { posts (id) { id -> Integer, title -> Text } }
//! # #[derive(Queryable, Selectable)] #[diesel(table_name = posts)]
//! # struct Post { id: i32, title: String }
//!
//! let js = async_nats::jetstream::new(async_nats::connect("127.0.0.1:4222").await?);
//! let pool = Pool::new(ConnectionManager::<SqliteConnection>::new("posts.db"))?;
//!
//! // Once, anywhere: plan and publish.
//! let parts = posts::table.chunked_by(posts::id).partitions(64, &mut pool.get()?)?;
//! let job = Job::publish(&js, "reencode-2026-12", &parts).await?;
//!
//! // On every worker machine, any number of processes.
//! let pool2 = pool.clone();
//! Worker::new(&js, "reencode-2026-12")
//!     .run(move |slice| {
//!         posts::table
//!             .chunked_by(posts::id)
//!             .within(slice)
//!             .checkpoint(slice.checkpoint_name())
//!             .observe(slice.observer()) // tells JetStream after every committed batch
//!             .for_each_batch(&pool2, |conn, batch: Vec<Post>| -> QueryResult<()> {
//!                 for p in &batch {
//!                     diesel::update(posts::table.find(p.id))
//!                         .set(posts::title.eq(p.title.to_uppercase()))
//!                         .execute(conn)?;
//!                 }
//!                 Ok(())
//!             })
//!     })
//!     .await?;
//!
//! // Anyone: the job's progress, and waiting for its end.
//! let status = job.status().await?;
//! println!("{} of {} slices done, {} rows", status.done, status.slices, status.rows);
//! let end = job.wait(std::time::Duration::from_secs(1)).await?;
//! assert_eq!(end.failed, 0);
//! # Ok(()) }
//! ```
//!
//! ## What lives where
//!
//! For job `NAME` (letters, digits, `-` and `_`, at most 64 characters):
//!
//! - stream `CHUNKED_NAME`, subject `chunked.NAME.slices`, **work-queue**
//!   retention: one message per slice (the job's name, the key's Rust type and
//!   the serialized `Partition`), with the JetStream message id `NAME.INDEX`, so
//!   a message published again within the stream's duplicate window (one hour)
//!   is dropped by the server;
//! - its durable pull consumer `workers`, with explicit acks, the job's ack
//!   deadline and no server-side delivery limit (the workers enforce the job's
//!   limit, see below);
//! - key-value bucket `CHUNKED_NAME`: key `job` (slice count, key type,
//!   settings) and one key `slice.INDEX` per slice (state, worker, deliveries,
//!   rows, batches, last error). A slice's key is written once the stream
//!   has stored its message, and `publish` skips slices that have a key, so
//!   publishing a job again never adds a slice twice. A publish stopped
//!   between the two leaves a message without a key: published again within
//!   the duplicate window, the message is dropped by the server; later, the
//!   second copy is harmless, since a worker that gets a slice already done
//!   only acknowledges it, and two runs of one slice at once are kept apart
//!   by its checkpoint's lock.
//!
//! ## A slice's life
//!
//! A [`Worker`] takes one message at a time, marks the slice `running` in the
//! bucket (a compare-and-set on the key's revision: a worker whose slice was
//! handed to another notices it there and stops reporting), and runs the
//! slice's closure on a blocking thread (`tokio::task::spawn_blocking`).
//!
//! - **Progress.** The closure reports every committed batch through
//!   [`Slice::observer`] (the job's [`observe`](crate::Chunked::observe)), or
//!   [`Slice::committed`] for work that commits its own batches; the worker then sends `AckKind::Progress`, which
//!   resets the slice's ack deadline, and updates the slice's rows. Progress
//!   comes from committed batches, **not from a timer**: a worker that dies,
//!   and a worker whose thread hangs (a lock it never gets, a stuck network
//!   read), both stop reporting, and after the ack deadline JetStream hands
//!   the slice to another worker. A timer would keep a hung worker's slice
//!   forever. So the ack deadline ([`JobOptions::ack_wait`]) must be longer
//!   than the slowest batch, pause included.
//! - **Resumption.** The next worker runs the same closure; the slice's
//!   checkpoint ([`Slice::checkpoint_name`]) makes it continue right after
//!   the last committed batch. If the first worker was only slow and wakes
//!   up, its next batch finds the checkpoint advanced by another runner and
//!   fails ([`Error::CheckpointBusy`](crate::Error::CheckpointBusy)): no batch
//!   is written twice.
//! - **Success.** The worker records the slice `done` with the rows of the
//!   [`WriteReport`](crate::WriteReport) (all runs of the slice) and acks the
//!   message, which removes it from the stream.
//! - **Errors.** An `Err` (or a panic) of the closure is recorded with its
//!   text; the message is negatively acknowledged with the job's retry delay
//!   (`AckKind::Nak(Some(delay))`) and runs again, on any worker, up to
//!   [`JobOptions::max_deliveries`] deliveries in all. The last one marks
//!   the slice `failed` with the error text and terminates the message
//!   (`AckKind::Term`). A delivery past the limit (its earlier workers died)
//!   is failed without running. The other slices go on.
//!
//! [`Job::status`] reads the bucket: counts of done, running, waiting and
//! failed slices, and rows so far. A `running` slice whose last report is
//! older than the ack deadline is counted as `waiting` (and `stalled`): its
//! worker is gone and JetStream will redeliver it.

mod job;
mod slice;
mod status;
mod worker;

pub use job::{Job, JobOptions};
pub use slice::{Slice, SliceObserver};
pub use status::{JobStatus, SliceState, SliceStatus};
pub use worker::{Worker, WorkerReport};

/// What can go wrong with a distributed job.
///
/// ```
/// use diesel_chunked_iterator::jetstream::Error;
///
/// let e = Error::JobName { name: "a.b".into() };
/// assert!(e.to_string().contains("a.b"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A job name that cannot name a stream, a subject and a bucket.
    #[error(
        "invalid job name {name:?}: use 1 to 64 letters, digits, '-' and '_' \
         (it names a JetStream stream, subject and key-value bucket)"
    )]
    JobName {
        /// The name given.
        name: String,
    },

    /// No job of this name was published (its bucket is missing).
    #[error("job {job:?} is not published (no key-value bucket CHUNKED_{job})")]
    NotFound {
        /// The job's name.
        job: String,
    },

    /// A job of this name exists with other slices.
    #[error(
        "job {job:?} was published with {published} slices of key {published_key}, \
         not {slices} of {key}; use another name or delete the job"
    )]
    Conflict {
        /// The job's name.
        job: String,
        /// Slices of the published job.
        published: usize,
        /// Key type of the published job.
        published_key: String,
        /// Slices asked for now.
        slices: usize,
        /// Key type asked for now.
        key: String,
    },

    /// The partitions handed to `publish` do not number `0..n` once each.
    #[error("the partitions must have the indexes 0..{len}, each once: {reason}")]
    Partitions {
        /// How many there were.
        len: usize,
        /// What is wrong.
        reason: String,
    },

    /// A worker reads keys of another type than the job's slices.
    #[error("job {job:?} has slices of key type {published}; this worker reads {expected}")]
    KeyType {
        /// The job's name.
        job: String,
        /// The key type of the published slices.
        published: String,
        /// The worker's key type.
        expected: String,
    },

    /// A message or bucket entry that does not parse.
    #[error("job {job:?}: {what} does not parse: {source}")]
    Json {
        /// The job's name.
        job: String,
        /// What was read.
        what: String,
        /// The parse error.
        source: serde_json::Error,
    },

    /// A JetStream request that failed.
    #[error("NATS JetStream, {context}: {source}")]
    Nats {
        /// What was being done.
        context: String,
        /// The client's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Converts any client error into [`Error::Nats`] with a context.
pub(crate) trait NatsContext<T> {
    fn context(self, what: impl Into<String>) -> Result<T, Error>;
}

impl<T, E: Into<Box<dyn std::error::Error + Send + Sync>>> NatsContext<T> for Result<T, E> {
    fn context(self, what: impl Into<String>) -> Result<T, Error> {
        self.map_err(|e| Error::Nats {
            context: what.into(),
            source: e.into(),
        })
    }
}

/// The names of a job's stream, subject and bucket.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub(crate) job: String,
    pub(crate) stream: String,
    pub(crate) subject: String,
    pub(crate) bucket: String,
}

/// The durable consumer every worker of a job shares.
pub(crate) const CONSUMER: &str = "workers";
/// The bucket key of the job's description.
pub(crate) const JOB_KEY: &str = "job";

impl Names {
    pub(crate) fn new(job: &str) -> Result<Names, Error> {
        let ok = !job.is_empty()
            && job.len() <= 64
            && job
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(Error::JobName { name: job.into() });
        }
        Ok(Names {
            job: job.into(),
            stream: format!("CHUNKED_{job}"),
            subject: format!("chunked.{job}.slices"),
            bucket: format!("CHUNKED_{job}"),
        })
    }

    pub(crate) fn slice_key(index: usize) -> String {
        format!("slice.{index}")
    }

    pub(crate) fn json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        bytes: &[u8],
    ) -> Result<T, Error> {
        serde_json::from_slice(bytes).map_err(|source| Error::Json {
            job: self.job.clone(),
            what: what.into(),
            source,
        })
    }
}

/// The Rust type of a job's key values, as carried in its messages.
pub(crate) fn key_type<V>() -> String {
    std::any::type_name::<V>().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_checked() {
        for good in ["a", "reencode-2026-12", "A_b-9", &"x".repeat(64)] {
            let n = Names::new(good).unwrap();
            assert_eq!(n.stream, format!("CHUNKED_{good}"));
            assert_eq!(n.subject, format!("chunked.{good}.slices"));
        }
        for bad in ["", "a.b", "a b", "a*", "a>", "é", &"x".repeat(65)] {
            assert!(
                matches!(Names::new(bad), Err(Error::JobName { .. })),
                "{bad:?}"
            );
        }
    }
}
