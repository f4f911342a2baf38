//! Publishing a job, its status, waiting for it and deleting it.

use std::time::Duration;

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::kv::{self, CreateErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{consumer, stream, Context, ErrorCode};
use serde::{Deserialize, Serialize};

use super::status::{self, JobStatus, Record};
use super::{key_type, Error, Names, NatsContext, CONSUMER, JOB_KEY};
use crate::Partition;

/// A job's settings, chosen when it is first published.
///
/// ```
/// use std::time::Duration;
/// use diesel_chunked_iterator::jetstream::JobOptions;
///
/// let options = JobOptions::default()
///     .ack_wait(Duration::from_secs(60)) // longer than the slowest batch
///     .max_deliveries(3)
///     .retry_delay(Duration::from_secs(5));
/// assert_eq!(options.get_max_deliveries(), 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOptions {
    ack_wait: Duration,
    max_deliveries: u32,
    retry_delay: Duration,
}

impl Default for JobOptions {
    /// Ack deadline 30 s, 5 deliveries, 10 s between a failure and its retry.
    fn default() -> Self {
        JobOptions {
            ack_wait: Duration::from_secs(30),
            max_deliveries: 5,
            retry_delay: Duration::from_secs(10),
        }
    }
}

impl JobOptions {
    /// The ack deadline: a slice whose worker reported no committed batch for
    /// this long goes to another worker. Longer than the slowest batch, its
    /// pause included. Default 30 s.
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.ack_wait = d;
        self
    }

    /// How many times a slice is handed to a worker, in all, before it is
    /// marked failed (at least 1). Default 5.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n.max(1);
        self
    }

    /// How long a failed slice waits before it is handed out again. Default 10 s.
    pub fn retry_delay(mut self, d: Duration) -> Self {
        self.retry_delay = d;
        self
    }

    /// The ack deadline.
    pub fn get_ack_wait(&self) -> Duration {
        self.ack_wait
    }

    /// The delivery limit.
    pub fn get_max_deliveries(&self) -> u32 {
        self.max_deliveries
    }

    /// The delay before a retry.
    pub fn get_retry_delay(&self) -> Duration {
        self.retry_delay
    }
}

/// The job's description, bucket key `job`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub(crate) slices: usize,
    pub(crate) key_type: String,
    pub(crate) ack_wait_ms: u64,
    pub(crate) max_deliveries: u32,
    pub(crate) retry_delay_ms: u64,
    /// Every slice has been published.
    pub(crate) complete: bool,
}

/// A slice's message: the job, the key's Rust type and the partition.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SliceMessage<P> {
    pub(crate) job: String,
    pub(crate) key_type: String,
    pub(crate) partition: P,
}

/// A published job: its slices are in a JetStream work queue, its state in a
/// key-value bucket (see the [module docs](super)).
#[derive(Debug, Clone)]
pub struct Job {
    js: Context,
    names: Names,
    kv: kv::Store,
    meta: Meta,
    published: usize,
}

/// The job's bucket, `None` when the job was never published.
pub(crate) async fn bucket(js: &Context, names: &Names) -> Result<Option<kv::Store>, Error> {
    match js.get_stream(format!("KV_{}", names.bucket)).await {
        Ok(_) => {}
        Err(e) => {
            if let GetStreamErrorKind::JetStream(j) = e.kind() {
                if j.error_code() == ErrorCode::STREAM_NOT_FOUND {
                    return Ok(None);
                }
            }
            return Err(e).context(format!("reading bucket {}", names.bucket));
        }
    }
    js.get_key_value(names.bucket.clone())
        .await
        .context(format!("opening bucket {}", names.bucket))
        .map(Some)
}

pub(crate) async fn read_meta(kv: &kv::Store, names: &Names) -> Result<Meta, Error> {
    match kv.get(JOB_KEY).await.context("reading the job")? {
        Some(bytes) => names.json("the job's description", &bytes),
        None => Err(Error::NotFound {
            job: names.job.clone(),
        }),
    }
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("plain data serializes")
}

fn check_indexes<V>(parts: &[Partition<V>]) -> Result<(), Error> {
    let mut seen = vec![false; parts.len()];
    for p in parts {
        let fail = |reason: String| {
            Err(Error::Partitions {
                len: parts.len(),
                reason,
            })
        };
        match seen.get_mut(p.index) {
            None => return fail(format!("index {} is out of range", p.index)),
            Some(true) => return fail(format!("index {} appears twice", p.index)),
            Some(s) => *s = true,
        }
    }
    Ok(())
}

impl Job {
    /// Publishes a job: one message per partition in the job's work-queue
    /// stream, and the job's bucket, with the default [`JobOptions`].
    ///
    /// Publishing a job that exists (same name, as many slices, same key type)
    /// adds only the slices that are missing (a publish that stopped half-way),
    /// never a second copy of a slice; [`published`](Self::published) says how
    /// many this call added. Other slices or another key type under the same
    /// name are [`Error::Conflict`].
    ///
    /// ```no_run
    /// # async fn demo(parts: Vec<diesel_chunked_iterator::Partition<i32>>) -> Result<(), Box<dyn std::error::Error>> {
    /// use diesel_chunked_iterator::jetstream::Job;
    ///
    /// let js = async_nats::jetstream::new(async_nats::connect("127.0.0.1:4222").await?);
    /// let job = Job::publish(&js, "reencode-2026-12", &parts).await?;
    /// assert_eq!(job.slices(), parts.len());
    /// let again = Job::publish(&js, "reencode-2026-12", &parts).await?;
    /// assert_eq!(again.published(), 0);
    /// # Ok(()) }
    /// ```
    pub async fn publish<V: Serialize>(
        js: &Context,
        name: &str,
        parts: &[Partition<V>],
    ) -> Result<Job, Error> {
        Job::publish_with(js, name, parts, JobOptions::default()).await
    }

    /// [`publish`](Self::publish) with options. The options of a job that
    /// already exists stay as they were.
    ///
    /// ```no_run
    /// # async fn demo(parts: Vec<diesel_chunked_iterator::Partition<i64>>) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use diesel_chunked_iterator::jetstream::{Job, JobOptions};
    ///
    /// let js = async_nats::jetstream::new(async_nats::connect("127.0.0.1:4222").await?);
    /// let options = JobOptions::default().ack_wait(Duration::from_secs(120)).max_deliveries(3);
    /// let job = Job::publish_with(&js, "purge-tenant-7", &parts, options).await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_with<V: Serialize>(
        js: &Context,
        name: &str,
        parts: &[Partition<V>],
        options: JobOptions,
    ) -> Result<Job, Error> {
        let names = Names::new(name)?;
        check_indexes(parts)?;
        let key = key_type::<V>();
        let stream = js
            .get_or_create_stream(stream::Config {
                name: names.stream.clone(),
                subjects: vec![names.subject.clone()],
                retention: stream::RetentionPolicy::WorkQueue,
                duplicate_window: Duration::from_secs(3600),
                ..Default::default()
            })
            .await
            .context(format!("creating stream {}", names.stream))?;
        stream
            .get_or_create_consumer(
                CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(CONSUMER.into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: options.ack_wait,
                    // The workers count deliveries themselves (see the module docs).
                    max_deliver: -1,
                    ..Default::default()
                },
            )
            .await
            .context(format!("creating consumer {CONSUMER}"))?;
        let kv = match bucket(js, &names).await? {
            Some(kv) => kv,
            None => {
                // The bucket's stream as `create_key_value` makes it, without
                // its account query, whose answer older servers (2.9) shape
                // differently.
                let config = stream::Config {
                    name: format!("KV_{}", names.bucket),
                    subjects: vec![format!("$KV.{}.>", names.bucket)],
                    max_messages_per_subject: 1,
                    max_bytes: -1,
                    max_message_size: -1,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    discard: stream::DiscardPolicy::New,
                    num_replicas: 1,
                    ..Default::default()
                };
                match js.create_stream(config).await {
                    Ok(_) => bucket(js, &names).await?.ok_or_else(|| Error::NotFound {
                        job: names.job.clone(),
                    })?,
                    // Another publisher created it meanwhile.
                    Err(e) => match bucket(js, &names).await? {
                        Some(kv) => kv,
                        None => return Err(e).context(format!("creating bucket {}", names.bucket)),
                    },
                }
            }
        };
        let fresh = Meta {
            slices: parts.len(),
            key_type: key.clone(),
            ack_wait_ms: millis(options.ack_wait),
            max_deliveries: options.max_deliveries,
            retry_delay_ms: millis(options.retry_delay),
            complete: false,
        };
        let mut meta = match kv.create(JOB_KEY, to_json(&fresh).into()).await {
            Ok(_) => fresh,
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                let meta = read_meta(&kv, &names).await?;
                if meta.slices != parts.len() || meta.key_type != key {
                    return Err(Error::Conflict {
                        job: names.job.clone(),
                        published: meta.slices,
                        published_key: meta.key_type,
                        slices: parts.len(),
                        key,
                    });
                }
                meta
            }
            Err(e) => return Err(e).context("writing the job's description"),
        };
        let mut published = 0;
        for p in parts {
            let slice_key = Names::slice_key(p.index);
            if kv
                .entry(slice_key.clone())
                .await
                .context("reading a slice")?
                .is_some()
            {
                continue; // published before
            }
            let message = SliceMessage {
                job: names.job.clone(),
                key_type: key.clone(),
                partition: p,
            };
            let ack = js
                .send_publish(
                    names.subject.clone(),
                    PublishMessage::build()
                        .payload(to_json(&message).into())
                        .message_id(format!("{}.{}", names.job, p.index)),
                )
                .await
                .context("publishing a slice")?
                .await
                .context("publishing a slice (acknowledgement)")?;
            if !ack.duplicate {
                published += 1;
            }
            match kv
                .create(slice_key, to_json(&Record::default()).into())
                .await
            {
                // A worker that was quicker wrote it: fine.
                Err(e) if e.kind() != CreateErrorKind::AlreadyExists => {
                    return Err(e).context("writing a slice's state")
                }
                _ => {}
            }
        }
        if !meta.complete {
            meta.complete = true;
            kv.put(JOB_KEY, to_json(&meta).into())
                .await
                .context("writing the job's description")?;
        }
        Ok(Job {
            js: js.clone(),
            names,
            kv,
            meta,
            published,
        })
    }

    /// A job published earlier, by name; [`Error::NotFound`] if there is none.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use diesel_chunked_iterator::jetstream::Job;
    ///
    /// let js = async_nats::jetstream::new(async_nats::connect("127.0.0.1:4222").await?);
    /// let job = Job::open(&js, "reencode-2026-12").await?;
    /// println!("{} slices", job.slices());
    /// # Ok(()) }
    /// ```
    pub async fn open(js: &Context, name: &str) -> Result<Job, Error> {
        let names = Names::new(name)?;
        let kv = bucket(js, &names).await?.ok_or_else(|| Error::NotFound {
            job: names.job.clone(),
        })?;
        let meta = read_meta(&kv, &names).await?;
        Ok(Job {
            js: js.clone(),
            names,
            kv,
            meta,
            published: 0,
        })
    }

    /// The job's name.
    ///
    /// ```no_run
    /// # async fn demo(parts: Vec<diesel_chunked_iterator::Partition<i32>>) -> Result<(), Box<dyn std::error::Error>> {
    /// use diesel_chunked_iterator::jetstream::Job;
    ///
    /// let js = async_nats::jetstream::new(async_nats::connect("127.0.0.1:4222").await?);
    /// let job = Job::publish(&js, "reencode-2026-12", &parts).await?;
    /// println!(
    ///     "job {}: {} slices, {} published now, ack deadline {:?}",
    ///     job.name(),
    ///     job.slices(),
    ///     job.published(),
    ///     job.options().get_ack_wait()
    /// );
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &str {
        &self.names.job
    }

    /// How many slices the job has (see [`name`](Self::name)).
    pub fn slices(&self) -> usize {
        self.meta.slices
    }

    /// How many slices the call that returned this job published; 0 when all
    /// were published before (see [`publish`](Self::publish)).
    pub fn published(&self) -> usize {
        self.published
    }

    /// The job's options, as published first (see [`name`](Self::name)).
    pub fn options(&self) -> JobOptions {
        JobOptions {
            ack_wait: Duration::from_millis(self.meta.ack_wait_ms),
            max_deliveries: self.meta.max_deliveries,
            retry_delay: Duration::from_millis(self.meta.retry_delay_ms),
        }
    }

    /// The job's progress, read from its bucket: correct while workers come
    /// and go, since every state change and every committed batch's report is
    /// written there, and a worker that stops reporting shows as `stalled`
    /// after the ack deadline. Compares JetStream's time stamps with this
    /// machine's clock.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use diesel_chunked_iterator::jetstream::{Job, SliceState};
    ///
    /// let js = async_nats::jetstream::new(async_nats::connect("127.0.0.1:4222").await?);
    /// let s = Job::open(&js, "reencode-2026-12").await?.status().await?;
    /// println!("done {} running {} waiting {} failed {}; {} rows",
    ///          s.done, s.running, s.waiting, s.failed, s.rows);
    /// for slice in s.slice.iter().filter(|x| x.state == SliceState::Failed) {
    ///     println!("slice {} failed: {:?}", slice.index, slice.error);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn status(&self) -> Result<JobStatus, Error> {
        let meta = read_meta(&self.kv, &self.names).await?;
        status::read(&self.kv, &self.names, &meta).await
    }

    /// Waits until every slice is done or failed, reading the status every
    /// `poll`, and returns the last status. Check
    /// [`failed`](JobStatus::failed) for the outcome.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use diesel_chunked_iterator::jetstream::Job;
    ///
    /// let js = async_nats::jetstream::new(async_nats::connect("127.0.0.1:4222").await?);
    /// let job = Job::open(&js, "reencode-2026-12").await?;
    /// let end = job.wait(Duration::from_secs(2)).await?;
    /// if end.failed > 0 {
    ///     eprintln!("{} slices failed", end.failed);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn wait(&self, poll: Duration) -> Result<JobStatus, Error> {
        loop {
            let status = self.status().await?;
            if status.is_finished() {
                return Ok(status);
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Deletes the job's stream (with its consumer and any slice left in it)
    /// and its bucket. Workers still running it stop with an error. The
    /// slices' checkpoints are in the database and stay there.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use diesel_chunked_iterator::jetstream::Job;
    ///
    /// let js = async_nats::jetstream::new(async_nats::connect("127.0.0.1:4222").await?);
    /// Job::open(&js, "reencode-2026-12").await?.delete().await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete(self) -> Result<(), Error> {
        self.js
            .delete_stream(&self.names.stream)
            .await
            .context(format!("deleting stream {}", self.names.stream))?;
        self.js
            .delete_key_value(&self.names.bucket)
            .await
            .context(format!("deleting bucket {}", self.names.bucket))?;
        Ok(())
    }

    pub(crate) fn meta(&self) -> &Meta {
        &self.meta
    }

    pub(crate) fn kv(&self) -> &kv::Store {
        &self.kv
    }

    pub(crate) fn names(&self) -> &Names {
        &self.names
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
