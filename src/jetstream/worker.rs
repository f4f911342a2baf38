//! A worker: takes a job's slices one at a time and runs them.

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use async_nats::jetstream::{AckKind, Context, Message};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;

use super::job::{to_json, Job, SliceMessage};
use super::slice::Slice;
use super::status::{Record, SliceState};
use super::{key_type, Error, Names, NatsContext, CONSUMER};
use crate::{Partition, WriteReport};

/// One worker process's loop over a job's slices (see the [module
/// docs](super) for what happens to a slice).
///
/// ```no_run
/// # #[cfg(feature = "sqlite")]
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use diesel::prelude::*;
/// use diesel_chunked_iterator::jetstream::Worker;
/// use diesel_chunked_iterator::prelude::*;
/// # diesel::table! { posts (id) { id -> Integer, archived -> Bool } }
///
/// let js = async_nats::jetstream::new(async_nats::connect("127.0.0.1:4222").await?);
/// let report = Worker::new(&js, "archive-2026")
///     .name("worker-7")
///     .run(|slice| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
///         let mut conn = SqliteConnection::establish("posts.db")?;
///         Ok(posts::table
///             .chunked_by(posts::id)
///             .within(slice)
///             .checkpoint(slice.checkpoint_name())
///             .observe(slice.observer())
///             .update_all(&mut conn, posts::archived.eq(true))?)
///     })
///     .await?;
/// println!("{} slices done here, {} rows", report.done, report.rows);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Worker {
    js: Context,
    job: String,
    name: String,
    poll: Duration,
}

/// What one [`Worker::run`] did (see its example).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Slices this worker finished.
    pub done: u64,
    /// Slices this worker marked failed for good.
    pub failed: u64,
    /// Runs that failed and were handed back for a retry.
    pub retried: u64,
    /// Slices handed to another worker while this one ran them (it stopped
    /// reporting for longer than the ack deadline).
    pub lost: u64,
    /// Rows this worker's runs wrote.
    pub rows: u64,
}

/// A slice's bucket key, held by the worker that claimed it: every write is a
/// compare-and-set on the revision it last wrote, so a worker whose slice was
/// handed to another finds out on its next write.
struct Owner<'a> {
    kv: &'a kv::Store,
    key: String,
    revision: u64,
    record: Record,
}

impl Owner<'_> {
    /// Writes `self.record`; false if another worker claimed the slice since.
    async fn write(&mut self) -> Result<bool, Error> {
        match self
            .kv
            .update(&self.key, to_json(&self.record).into(), self.revision)
            .await
        {
            Ok(revision) => {
                self.revision = revision;
                Ok(true)
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(e).context("writing a slice's state"),
        }
    }
}

/// What to do with a delivered slice after reading its state.
enum Claim<'a> {
    Run(Owner<'a>),
    /// Already done or failed: its message only needs acknowledging.
    Finished(SliceState),
}

fn default_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}

impl Worker {
    /// A worker of job `job`, named after the host and process id.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use diesel_chunked_iterator::jetstream::Worker;
    ///
    /// let js = async_nats::jetstream::new(async_nats::connect("127.0.0.1:4222").await?);
    /// let worker = Worker::new(&js, "reencode-2026-12")
    ///     .name(format!("batch-host-{}", std::process::id())) // shown in the job's status
    ///     .poll(Duration::from_millis(500));
    /// # Ok(()) }
    /// ```
    pub fn new(js: &Context, job: &str) -> Worker {
        Worker {
            js: js.clone(),
            job: job.into(),
            name: default_name(),
            poll: Duration::from_secs(1),
        }
    }

    /// The name the job's status shows for this worker (see [`new`](Self::new)).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How long one request for a slice waits when none is available before
    /// the worker checks whether the job is finished. Default 1 s (see
    /// [`new`](Self::new)).
    pub fn poll(mut self, d: Duration) -> Self {
        self.poll = d;
        self
    }

    /// Runs slices, one at a time, until every slice of the job is done or
    /// failed (also those other workers run); returns what this worker did.
    ///
    /// `f` runs each slice on a blocking thread and returns its
    /// [`WriteReport`]; it should resume from [`Slice::checkpoint_name`] and
    /// report its batches with [`Slice::observer`]. A report that is not
    /// `done` (the run stopped early, `limit_total`) counts as an error.
    ///
    /// Fails when the job does not exist or was deleted, when its slices have
    /// another key type than `V` ([`Error::KeyType`], before any slice is
    /// taken, so none loses a delivery), or when JetStream stops answering; a
    /// slice's own error never stops the worker.
    ///
    /// ```no_run
    /// # #[cfg(all(feature = "sqlite", feature = "r2d2"))]
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use diesel::prelude::*;
    /// use diesel::r2d2::{ConnectionManager, Pool};
    /// use diesel_chunked_iterator::jetstream::Worker;
    /// use diesel_chunked_iterator::prelude::*;
    /// # diesel::table! { posts (id) { id -> Integer, tenant_id -> Integer } }
    ///
    /// let js = async_nats::jetstream::new(async_nats::connect("127.0.0.1:4222").await?);
    /// let pool = Pool::new(ConnectionManager::<SqliteConnection>::new("posts.db"))?;
    /// let report = Worker::new(&js, "purge-tenant-7")
    ///     .run(move |slice| {
    ///         posts::table
    ///             .filter(posts::tenant_id.eq(7))
    ///             .chunked_by(posts::id)
    ///             .within(slice)
    ///             .checkpoint(slice.checkpoint_name())
    ///             .observe(slice.observer())
    ///             .delete_all(&pool)
    ///     })
    ///     .await?;
    /// println!("{} slices here, {} rows deleted, {} failed", report.done, report.rows, report.failed);
    /// # Ok(()) }
    /// ```
    pub async fn run<V, F, E>(self, f: F) -> Result<WorkerReport, Error>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: Fn(&Slice<V>) -> Result<WriteReport<V>, E> + Send + Sync + 'static,
        E: Display + Send + 'static,
    {
        let job = Job::open(&self.js, &self.job).await?;
        let names = job.names().clone();
        // Refused before any message is taken: a slice this worker cannot
        // run must not use up one of its deliveries.
        if job.meta().key_type != key_type::<V>() {
            return Err(Error::KeyType {
                job: names.job,
                published: job.meta().key_type.clone(),
                expected: key_type::<V>(),
            });
        }
        let consumer: PullConsumer = self
            .js
            .get_stream(&names.stream)
            .await
            .context(format!("opening stream {}", names.stream))?
            .get_consumer(CONSUMER)
            .await
            .context(format!("opening consumer {CONSUMER}"))?;
        let f = Arc::new(f);
        let mut report = WorkerReport::default();
        loop {
            let mut batch = consumer
                .batch()
                .max_messages(1)
                .expires(self.poll)
                .messages()
                .await
                .context("asking for a slice")?;
            match batch.next().await {
                Some(message) => {
                    let message = message.context("receiving a slice")?;
                    self.handle(&job, message, &f, &mut report).await?;
                }
                None => {
                    if job.status().await?.is_finished() {
                        return Ok(report);
                    }
                }
            }
        }
    }

    /// Claims a delivered slice in the bucket: marks it running by this
    /// worker, or says it is finished already.
    async fn claim<'a>(
        &self,
        kv: &'a kv::Store,
        key: String,
        delivery: u64,
    ) -> Result<Claim<'a>, Error> {
        loop {
            let entry = kv.entry(key.clone()).await.context("reading a slice")?;
            let (mut record, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    serde_json::from_slice::<Record>(&e.value).unwrap_or_default(),
                    Some(e.revision),
                ),
                Some(e) => (Record::default(), Some(e.revision)),
                None => (Record::default(), None),
            };
            if matches!(record.state, SliceState::Done | SliceState::Failed) {
                return Ok(Claim::Finished(record.state));
            }
            record.state = SliceState::Running;
            record.worker = Some(self.name.clone());
            record.deliveries = delivery;
            let value = to_json(&record);
            let written = match revision {
                Some(r) => match kv.update(&key, value.into(), r).await {
                    Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => None,
                    other => Some(other.context("claiming a slice")?),
                },
                None => match kv.create(&key, value.into()).await {
                    Err(e) if e.kind() == CreateErrorKind::AlreadyExists => None,
                    other => Some(other.context("claiming a slice")?),
                },
            };
            if let Some(revision) = written {
                return Ok(Claim::Run(Owner {
                    kv,
                    key,
                    revision,
                    record,
                }));
            }
        }
    }

    async fn handle<V, F, E>(
        &self,
        job: &Job,
        message: Message,
        f: &Arc<F>,
        report: &mut WorkerReport,
    ) -> Result<(), Error>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: Fn(&Slice<V>) -> Result<WriteReport<V>, E> + Send + Sync + 'static,
        E: Display + Send + 'static,
    {
        let names = job.names();
        let message = &message;
        let ack =
            |kind: AckKind| async move { message.ack_with(kind).await.context("acknowledging") };
        let delivery = message
            .info()
            .map_err(|e| Error::Nats {
                context: "reading a slice's delivery".into(),
                source: e,
            })?
            .delivered;
        let delivery = u64::try_from(delivery).unwrap_or(1);
        let slice: SliceMessage<serde_json::Value> =
            names.json("a slice's message", &message.payload)?;
        if slice.key_type != key_type::<V>() {
            ack(AckKind::Nak(None)).await?;
            return Err(Error::KeyType {
                job: names.job.clone(),
                published: slice.key_type,
                expected: key_type::<V>(),
            });
        }
        let partition: Partition<V> =
            serde_json::from_value(slice.partition).map_err(|source| Error::Json {
                job: names.job.clone(),
                what: "a slice's partition".into(),
                source,
            })?;
        let meta = job.meta();
        let key = Names::slice_key(partition.index);
        let mut owner = match self.claim(job.kv(), key, delivery).await? {
            Claim::Finished(SliceState::Failed) => return ack(AckKind::Term).await,
            Claim::Finished(_) => return ack(AckKind::Ack).await,
            Claim::Run(owner) => owner,
        };
        let max = u64::from(meta.max_deliveries);
        if delivery > max {
            // Its earlier workers died without a result.
            let last = owner.record.error.take().unwrap_or_else(|| "none".into());
            owner.record.error = Some(format!(
                "handed out {delivery} times, more than the job's {max}, and no run \
                 finished (its workers died?); last error: {last}"
            ));
            owner.record.state = SliceState::Failed;
            if owner.write().await? {
                report.failed += 1;
                ack(AckKind::Term).await?;
            }
            return Ok(());
        }
        ack(AckKind::Progress).await?;

        let (tx, mut rx) = mpsc::unbounded_channel();
        let handle = Slice {
            job: names.job.clone(),
            partition,
            delivery,
            worker: self.name.clone(),
            tx,
        };
        let run = Arc::clone(f);
        let mut task = tokio::task::spawn_blocking(move || run(&handle));
        let (base_rows, base_batches) = (owner.record.rows, owner.record.batches);
        let mut lost = false;
        let result = loop {
            tokio::select! {
                result = &mut task => break result,
                Some(p) = rx.recv() => {
                    if lost {
                        continue;
                    }
                    // A lost connection must not stop the slice: JetStream
                    // redelivers it if the reports stay away too long.
                    let _ = message.ack_with(AckKind::Progress).await;
                    owner.record.rows = base_rows + p.rows;
                    owner.record.batches = base_batches + p.batches;
                    lost = matches!(owner.write().await, Ok(false));
                }
            }
        };
        // Reports the run sent before it ended, not taken yet when it did.
        while let Ok(p) = rx.try_recv() {
            owner.record.rows = base_rows + p.rows;
            owner.record.batches = base_batches + p.batches;
        }
        let outcome = match result {
            Ok(Ok(r)) if r.done => Ok(r),
            Ok(Ok(r)) => Err(format!(
                "the slice's run stopped after {} rows, before its end (limit_total?)",
                r.rows
            )),
            Ok(Err(e)) => Err(e.to_string()),
            Err(join) => Err(match join.try_into_panic() {
                Ok(panic) => panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .map_or_else(
                        || "the slice's run panicked".into(),
                        |p| format!("panic: {p}"),
                    ),
                Err(e) => e.to_string(),
            }),
        };
        if lost {
            report.lost += 1;
            return Ok(());
        }
        match outcome {
            Ok(r) => {
                owner.record.state = SliceState::Done;
                owner.record.rows = r.total_rows;
                owner.record.batches = r.total_batches;
                owner.record.resumed_after = r
                    .resumed_after
                    .as_ref()
                    .and_then(|k| serde_json::to_string(k).ok());
                if owner.write().await? {
                    message
                        .double_ack()
                        .await
                        .context("acknowledging a finished slice")?;
                    report.done += 1;
                    report.rows += r.rows;
                } else {
                    report.lost += 1;
                }
            }
            Err(text) => {
                owner.record.error = Some(text);
                let last = delivery >= max;
                owner.record.state = if last {
                    SliceState::Failed
                } else {
                    SliceState::Retrying
                };
                if !owner.write().await? {
                    report.lost += 1;
                } else if last {
                    report.failed += 1;
                    ack(AckKind::Term).await?;
                } else {
                    report.retried += 1;
                    let delay = Duration::from_millis(meta.retry_delay_ms);
                    ack(AckKind::Nak(Some(delay))).await?;
                }
            }
        }
        Ok(())
    }
}
