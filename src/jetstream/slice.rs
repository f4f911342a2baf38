//! The slice handed to a worker's closure.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::{BatchStats, Partition};

/// The slice a worker runs: its partition (`Deref`s to
/// [`Partition`], so `.within(slice)` works), the name of its checkpoint,
/// and the progress reports that keep it assigned to this worker.
///
/// ```no_run
/// # #[cfg(feature = "sqlite")]
/// # fn job(slice: &diesel_chunked_iterator::jetstream::Slice<i32>, conn: &mut diesel::SqliteConnection)
/// #     -> Result<diesel_chunked_iterator::WriteReport<i32>, diesel_chunked_iterator::Error> {
/// use diesel::prelude::*;
/// use diesel_chunked_iterator::prelude::*;
/// # diesel::table! { posts (id) { id -> Integer, archived -> Bool } }
///
/// posts::table
///     .chunked_by(posts::id)
///     .within(slice)                        // its key range
///     .checkpoint(slice.checkpoint_name())  // "JOB/slice-INDEX"
///     .observe(slice.observer())           // a report per committed batch
///     .update_all(conn, posts::archived.eq(true))
/// # }
/// ```
#[derive(Debug)]
pub struct Slice<V> {
    pub(crate) job: String,
    pub(crate) partition: Partition<V>,
    pub(crate) delivery: u64,
    pub(crate) worker: String,
    pub(crate) tx: mpsc::UnboundedSender<Progress>,
}

/// One committed batch, as reported to the worker's loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    pub(crate) rows: u64,
    pub(crate) batches: u64,
}

impl<V> std::ops::Deref for Slice<V> {
    type Target = Partition<V>;

    fn deref(&self) -> &Partition<V> {
        &self.partition
    }
}

impl<V> Slice<V> {
    /// The slice's key range.
    ///
    /// ```no_run
    /// # fn job(slice: &diesel_chunked_iterator::jetstream::Slice<i32>) {
    /// let p = slice.partition();
    /// println!("slice {} of ids ({:?}, {:?}], {} rows when planned", p.index, p.start_after, p.end_at, p.rows);
    /// # }
    /// ```
    pub fn partition(&self) -> &Partition<V> {
        &self.partition
    }

    /// The job's name.
    ///
    /// ```no_run
    /// # fn job(slice: &diesel_chunked_iterator::jetstream::Slice<i32>) {
    /// assert!(slice.checkpoint_name().starts_with(slice.job()));
    /// # }
    /// ```
    pub fn job(&self) -> &str {
        &self.job
    }

    /// The name of the slice's checkpoint, `JOB/slice-INDEX`: a worker that
    /// runs the slice after another died resumes after its last committed
    /// batch.
    ///
    /// ```no_run
    /// # fn job(slice: &diesel_chunked_iterator::jetstream::Slice<i32>) {
    /// // Job "reencode-2026-12", slice 7: "reencode-2026-12/slice-7".
    /// let name = slice.checkpoint_name();
    /// assert_eq!(name, format!("{}/slice-{}", slice.job(), slice.index));
    /// # }
    /// ```
    pub fn checkpoint_name(&self) -> String {
        format!("{}/slice-{}", self.job, self.partition.index)
    }

    /// How many times the slice has been handed to a worker, this time
    /// included (1 on its first run).
    ///
    /// ```no_run
    /// # fn job(slice: &diesel_chunked_iterator::jetstream::Slice<i32>) {
    /// if slice.delivery() > 1 {
    ///     eprintln!("slice {} again (delivery {}): it resumes at its checkpoint", slice.index, slice.delivery());
    /// }
    /// # }
    /// ```
    pub fn delivery(&self) -> u64 {
        self.delivery
    }

    /// The name of the worker running it.
    ///
    /// ```no_run
    /// # fn job(slice: &diesel_chunked_iterator::jetstream::Slice<i32>) {
    /// eprintln!("{} runs slice {}", slice.worker(), slice.index);
    /// # }
    /// ```
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// Reports committed batches: `rows` and `batches` committed so far in
    /// this run. The worker resets the slice's ack deadline
    /// (`AckKind::Progress`) and records the rows in the job's status. For
    /// work that commits its own batches; a write job uses
    /// [`progress`](Self::progress).
    ///
    /// ```no_run
    /// # fn job(slice: &diesel_chunked_iterator::jetstream::Slice<i32>) {
    /// # let chunks: Vec<Vec<i32>> = vec![];
    /// # fn commit(_: &[i32]) {}
    /// let mut rows = 0;
    /// for (n, chunk) in chunks.iter().enumerate() {
    ///     commit(chunk); // your own transaction
    ///     rows += chunk.len() as u64;
    ///     slice.committed(rows, n as u64 + 1);
    /// }
    /// # }
    /// ```
    pub fn committed(&self, rows: u64, batches: u64) {
        let _ = self.tx.send(Progress { rows, batches });
    }

    /// The [`WriteObserver`](crate::WriteObserver) of a write job that runs
    /// this slice: reports every committed batch (rows and batches of this
    /// run, see [`committed`](Self::committed)): `.observe(slice.observer())`.
    /// The job's `throttle` stays yours.
    pub fn observer(&self) -> SliceObserver {
        SliceObserver {
            tx: self.tx.clone(),
        }
    }

    /// A [`throttle`](crate::Chunked::throttle) closure that reports every
    /// committed batch as [`observer`](Self::observer) does (except the
    /// job's last, which the worker counts when the job returns) and asks for
    /// no wait: `.throttle(slice.progress())`. To throttle too, call it from
    /// your own closure; [`observer`](Self::observer) leaves the throttle free.
    ///
    /// ```no_run
    /// # #[cfg(feature = "sqlite")]
    /// # fn job(slice: &diesel_chunked_iterator::jetstream::Slice<i32>, conn: &mut diesel::SqliteConnection)
    /// #     -> Result<diesel_chunked_iterator::WriteReport<i32>, diesel_chunked_iterator::Error> {
    /// use std::time::Duration;
    /// use diesel::prelude::*;
    /// use diesel_chunked_iterator::prelude::*;
    /// # diesel::table! { posts (id) { id -> Integer, archived -> Bool } }
    ///
    /// let report = slice.progress();
    /// posts::table
    ///     .chunked_by(posts::id)
    ///     .within(slice)
    ///     .checkpoint(slice.checkpoint_name())
    ///     .throttle(move |stats| {
    ///         report(stats);
    ///         // and wait after slow batches
    ///         (stats.duration > Duration::from_secs(1)).then_some(Duration::from_millis(500))
    ///     })
    ///     .update_all(conn, posts::archived.eq(true))
    /// # }
    /// ```
    pub fn progress(&self) -> impl Fn(&BatchStats) -> Option<Duration> + Send + Sync + 'static {
        let tx = self.tx.clone();
        move |stats| {
            let _ = tx.send(Progress {
                rows: stats.total_rows,
                batches: stats.batch,
            });
            None
        }
    }
}

/// What [`Slice::observer`] returns: reports a write job's committed batches
/// to the worker that runs the slice.
#[derive(Debug, Clone)]
pub struct SliceObserver {
    tx: mpsc::UnboundedSender<Progress>,
}

impl crate::WriteObserver for SliceObserver {
    fn on_batch(&self, stats: &BatchStats) {
        let _ = self.tx.send(Progress {
            rows: stats.total_rows,
            batches: stats.batch,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(index: usize) -> (Slice<i32>, mpsc::UnboundedReceiver<Progress>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let partition = Partition {
            index,
            start_after: Some(100),
            end_at: Some(200),
            rows: 100,
        };
        let slice = Slice {
            job: "reencode-2026-12".into(),
            partition,
            delivery: 2,
            worker: "w1".into(),
            tx,
        };
        (slice, rx)
    }

    #[test]
    fn a_slice_names_its_checkpoint_and_reports_each_batch() {
        let (slice, mut rx) = slice(7);
        assert_eq!(slice.checkpoint_name(), "reencode-2026-12/slice-7");
        assert_eq!(
            (slice.index, slice.start_after, slice.end_at),
            (7, Some(100), Some(200))
        );
        assert_eq!(
            (slice.job(), slice.worker(), slice.delivery()),
            ("reencode-2026-12", "w1", 2)
        );

        let throttle = slice.progress();
        for batch in 1..=3 {
            let stats = BatchStats {
                batch,
                rows: 10,
                duration: Duration::from_millis(5),
                total_rows: batch * 10,
                elapsed: Duration::from_millis(batch * 5),
                next_batch_size: 10,
                waited: Duration::ZERO,
                waits: Vec::new(),
            };
            assert_eq!(throttle(&stats), None, "progress asks for no wait");
        }
        slice.committed(45, 4);
        let seen: Vec<(u64, u64)> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|p| (p.rows, p.batches))
            .collect();
        assert_eq!(seen, vec![(10, 1), (20, 2), (30, 3), (45, 4)]);
    }
}
