//! A handle to a running write job: [`Control`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;

/// A handle to a write job, to pause, resume or cancel it, or change its
/// batch size or its pause, from another thread or task while it runs.
///
/// Take it from the job's builder with [`Chunked::control`](crate::Chunked::control)
/// before running the job; it is cheap to clone, and every clone steers the
/// same job. The job reads it between batches, never inside one: a paused
/// job finishes the batch it is in, then waits holding no transaction and no
/// connection, checking the handle every 50 ms; a cancelled job stops before
/// its next batch (also in the middle of a wait) and returns its report with
/// `done: false` and `cancelled: true`, its checkpoint after its last
/// committed batch, so that the job run again resumes exactly.
///
/// ```
/// # include!("../tests/doc/setup.rs");
/// use diesel_chunked_iterator::prelude::*;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let conn = &mut doc_connection();
/// let job = posts::table.chunked_by(posts::id).batch_size(2);
/// let control = job.control();
/// // Here another thread would hold a clone; the throttle runs between batches.
/// let report = job
///     .throttle(move |stats| {
///         if stats.batch == 1 {
///             control.cancel();
///         }
///         None
///     })
///     .update_all(conn, posts::published.eq(true))?;
/// // BEGIN; SELECT posts.id ... LIMIT 3; UPDATE ... WHERE posts.id <= 2; COMMIT -- and no more
/// assert_eq!((report.batches, report.last_key, report.done, report.cancelled), (1, Some(2), false, true));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Control {
    state: Arc<State>,
}

#[derive(Debug, Default)]
struct State {
    paused: AtomicBool,
    cancelled: AtomicBool,
    /// A new batch size; 0: none.
    batch_size: AtomicU64,
    /// A new pause in microseconds, plus 1; 0: none.
    pause: AtomicU64,
}

/// How often a paused job reads its handle, and the longest a wait runs
/// without reading it.
pub(crate) const POLL: Duration = Duration::from_millis(50);

impl Control {
    /// Pauses the job after the batch it is in (until [`resume`](Self::resume)).
    pub fn pause(&self) {
        self.state.paused.store(true, Ordering::SeqCst);
    }

    /// Lets a paused job go on.
    pub fn resume(&self) {
        self.state.paused.store(false, Ordering::SeqCst);
    }

    /// Stops the job before its next batch, for good: it returns its report
    /// (`done: false`, `cancelled: true`). Run the job again to resume it.
    pub fn cancel(&self) {
        self.state.cancelled.store(true, Ordering::SeqCst);
    }

    /// Whether the job is paused.
    pub fn is_paused(&self) -> bool {
        self.state.paused.load(Ordering::SeqCst)
    }

    /// Whether the job was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.state.cancelled.load(Ordering::SeqCst)
    }

    /// Asks the batches from the next one on for `n` rows (with
    /// [`target_batch_time`](crate::Chunked::target_batch_time), the size it
    /// goes on from). `Error::InvalidBatchSize` for 0 or more than `i64::MAX`,
    /// and the job is not changed.
    pub fn set_batch_size(&self, n: u64) -> Result<(), Error> {
        if n == 0 || n > crate::engine::MAX_BATCH_SIZE {
            return Err(Error::InvalidBatchSize { batch_size: n });
        }
        self.state.batch_size.store(n, Ordering::SeqCst);
        Ok(())
    }

    /// Waits `d` after each committed batch from now on, instead of the
    /// builder's [`pause`](crate::Chunked::pause).
    pub fn set_pause(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX - 1);
        self.state
            .pause
            .store(micros.saturating_add(1), Ordering::SeqCst);
    }

    /// A new batch size asked for since the last call, if any.
    pub(crate) fn take_batch_size(&self) -> Option<u64> {
        match self.state.batch_size.swap(0, Ordering::SeqCst) {
            0 => None,
            n => Some(n),
        }
    }

    /// A new pause asked for since the last call, if any.
    pub(crate) fn take_pause(&self) -> Option<Duration> {
        match self.state.pause.swap(0, Ordering::SeqCst) {
            0 => None,
            n => Some(Duration::from_micros(n - 1)),
        }
    }
}
