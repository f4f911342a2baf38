//! A job's status: the slices' states in its bucket.

use std::time::{Duration, SystemTime};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::job::{millis, Meta};
use super::{Error, Names, NatsContext};

/// One slice's state, bucket key `slice.INDEX`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) state: SliceState,
    pub(crate) worker: Option<String>,
    pub(crate) deliveries: u64,
    pub(crate) rows: u64,
    pub(crate) batches: u64,
    pub(crate) resumed_after: Option<String>,
    pub(crate) error: Option<String>,
}

/// Where a slice is, in [`SliceStatus::state`].
///
/// ```
/// use diesel_chunked_iterator::jetstream::SliceState;
///
/// // in the status's JSON:
/// assert_eq!(serde_json::to_string(&SliceState::Done).unwrap(), r#""done""#);
/// assert_eq!(SliceState::default(), SliceState::Waiting);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum SliceState {
    /// Published, not taken by a worker yet.
    #[default]
    Waiting,
    /// A worker runs it.
    Running,
    /// Its last run failed; it waits for the retry delay, then runs again.
    Retrying,
    /// Its last batch committed and its message is acknowledged.
    Done,
    /// It failed on its last allowed delivery; its message is terminated.
    Failed,
}

/// One slice as [`Job::status`](super::Job::status) found it (see its example).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct SliceStatus {
    /// The slice's index (its `Partition::index`).
    pub index: usize,
    /// Its state.
    pub state: SliceState,
    /// Whether it is `Running` with no report for longer than the ack
    /// deadline: its worker died or hangs, and JetStream will hand it to
    /// another worker.
    pub stalled: bool,
    /// The worker that ran it last.
    pub worker: Option<String>,
    /// How many times it was handed to a worker.
    pub deliveries: u64,
    /// Rows written so far, all runs (exact once done; while running, a run
    /// after a killed one counts from the rows the killed one reported).
    pub rows: u64,
    /// Batches committed so far, counted as `rows`.
    pub batches: u64,
    /// The key after which its last run resumed (from its checkpoint, as JSON),
    /// if that run did not start at the beginning.
    pub resumed_after: Option<String>,
    /// The text of its last error.
    pub error: Option<String>,
    /// When its state was last written (JetStream's time); in JSON,
    /// milliseconds since the Unix epoch.
    #[serde(serialize_with = "unix_millis")]
    pub updated_at: Option<SystemTime>,
}

/// A job's progress: slices by state and rows so far (see [`Job::status`](super::Job::status)
/// and [`is_finished`](Self::is_finished)).
///
/// `done + running + waiting + failed == slices`; `retrying` and `stalled`
/// slices are counted in `waiting`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct JobStatus {
    /// The job's name.
    pub job: String,
    /// How many slices the job has.
    pub slices: usize,
    /// Slices done.
    pub done: usize,
    /// Slices a live worker is running.
    pub running: usize,
    /// Slices not done, not failed, and not running on a live worker.
    pub waiting: usize,
    /// Slices failed for good.
    pub failed: usize,
    /// Slices waiting for a retry after an error (part of `waiting`).
    pub retrying: usize,
    /// Slices whose worker stopped reporting (part of `waiting`).
    pub stalled: usize,
    /// Rows written so far, over all slices.
    pub rows: u64,
    /// Every slice, in index order.
    pub slice: Vec<SliceStatus>,
}

impl JobStatus {
    /// Whether every slice is done or failed.
    ///
    /// ```no_run
    /// # async fn demo(job: diesel_chunked_iterator::jetstream::Job) -> Result<(), Box<dyn std::error::Error>> {
    /// let s = job.status().await?;
    /// assert_eq!(s.done + s.running + s.waiting + s.failed, s.slices);
    /// if s.is_finished() {
    ///     println!("finished: {} done, {} failed", s.done, s.failed);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn is_finished(&self) -> bool {
        self.done + self.failed == self.slices
    }
}

/// Reads every slice's state.
pub(crate) async fn read(kv: &kv::Store, names: &Names, meta: &Meta) -> Result<JobStatus, Error> {
    let ack_wait = Duration::from_millis(meta.ack_wait_ms);
    let now = SystemTime::now();
    let entries: Vec<_> = futures_util::stream::iter(0..meta.slices)
        .map(|i| kv.entry(Names::slice_key(i)))
        .buffered(16)
        .collect()
        .await;
    let mut status = JobStatus {
        job: names.job.clone(),
        slices: meta.slices,
        done: 0,
        running: 0,
        waiting: 0,
        failed: 0,
        retrying: 0,
        stalled: 0,
        rows: 0,
        slice: Vec::with_capacity(meta.slices),
    };
    for (index, entry) in entries.into_iter().enumerate() {
        let entry = entry.context("reading a slice's state")?;
        let (record, updated_at) = match entry {
            Some(e) if e.operation == kv::Operation::Put => (
                names.json::<Record>("a slice's state", &e.value)?,
                Some(SystemTime::from(e.created)),
            ),
            _ => (Record::default(), None),
        };
        let stalled = record.state == SliceState::Running
            && updated_at
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > ack_wait);
        match record.state {
            SliceState::Done => status.done += 1,
            SliceState::Failed => status.failed += 1,
            SliceState::Running if !stalled => status.running += 1,
            SliceState::Retrying => {
                status.retrying += 1;
                status.waiting += 1;
            }
            _ => status.waiting += 1,
        }
        status.stalled += usize::from(stalled);
        status.rows += record.rows;
        status.slice.push(SliceStatus {
            index,
            state: record.state,
            stalled,
            worker: record.worker,
            deliveries: record.deliveries,
            rows: record.rows,
            batches: record.batches,
            resumed_after: record.resumed_after,
            error: record.error,
            updated_at,
        });
    }
    Ok(status)
}

fn unix_millis<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(millis)
        .serialize(s)
}
