//! The iterators a scan returns: [`LoadBatches`] yields one `Vec` per query,
//! [`LoadIter`] yields rows one by one and runs the next query only when its
//! buffer is empty.
//!
//! Both are fused: after `None`, or after an `Err`, they return `None`. A scan
//! that failed on a connection you lent it resumes without loss or duplication
//! with `.start_after(key)`, where `key` is [`LoadIter::last_key`] (the key of the
//! last item you received).

use std::cmp::Ordering;
use std::fmt;
use std::time::{Duration, Instant};

use crate::builder::{LoadedRow, RowType, Rows};
use crate::error::Error;
use crate::key::Key;
use crate::query::SeekQuery;
use crate::source::{AttemptError, ConnectionSource};

/// Counters of a scan, for logs and progress bars.
///
/// ```
/// # include!("../tests/doc/setup.rs");
/// use diesel_chunked_iterator::prelude::*;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let conn = &mut doc_connection();
/// let mut it = posts::table.chunked_by(posts::id).batch_size(2).load_iter::<Post>(conn);
/// it.next().transpose()?;
/// let p = it.progress();
/// assert_eq!((p.rows, p.batches, p.queries), (1, 1, 1));
/// assert_eq!(p.last_key, Some(1));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Progress<V> {
    /// Rows handed to the caller so far.
    pub rows: u64,
    /// Non-empty batches loaded so far.
    pub batches: u64,
    /// Queries run so far, retries included.
    pub queries: u64,
    /// Batches that had to be run again after a transient failure.
    pub retries: u64,
    /// The key of the last row handed to the caller.
    pub last_key: Option<V>,
    /// Time since the first batch was asked for.
    pub elapsed: Duration,
}

/// Why a scan ended; see [`LoadIter::end_reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// A batch came back shorter than asked: no rows are left.
    Exhausted,
    /// `limit_total` rows were loaded.
    LimitReached,
    /// The bounds (`start_after` / `end_at`) leave no key; no query ran.
    EmptyBounds,
    /// An error was returned.
    Failed,
}

/// Configuration of a scan, from the builder.
#[derive(Debug, Clone)]
pub(crate) struct ScanConfig {
    pub(crate) batch_size: u64,
    pub(crate) limit_total: Option<u64>,
    pub(crate) max_retries: Option<u32>,
    pub(crate) cache_statements: bool,
}

/// The engine shared by both iterators: runs batches, moves the bound, counts.
#[doc(hidden)]
#[allow(missing_debug_implementations)]
pub struct Scan<S: ConnectionSource, B, K: Key, R> {
    source: S,
    query: Option<SeekQuery<B, K>>,
    pending_error: Option<Error>,
    rows: R,
    config: ScanConfig,
    done: bool,
    end: Option<EndReason>,
    /// Rows loaded so far (counted against `limit_total`).
    loaded: u64,
    batches: u64,
    queries: u64,
    retries: u64,
    started: Option<Instant>,
}

impl<S: ConnectionSource, B, K: Key, R> Scan<S, B, K, R> {
    pub(crate) fn new(
        source: S,
        query: Result<SeekQuery<B, K>, Error>,
        rows: R,
        config: ScanConfig,
    ) -> Self {
        let (query, pending_error) = match query {
            Ok(mut q) => {
                q.set_cache_statements(config.cache_statements);
                (Some(q), None)
            }
            Err(e) => (None, Some(e)),
        };
        // Bounds that cannot hold any row need no query.
        let done = query.as_ref().is_some_and(|q| bounds_are_empty(q));
        Self {
            end: done.then_some(EndReason::EmptyBounds),
            source,
            query,
            pending_error,
            rows,
            config,
            done,
            loaded: 0,
            batches: 0,
            queries: 0,
            retries: 0,
            started: None,
        }
    }

    pub(crate) fn progress(&self, rows: u64, last_key: Option<K::Value>) -> Progress<K::Value> {
        Progress {
            rows,
            batches: self.batches,
            queries: self.queries,
            retries: self.retries,
            last_key,
            elapsed: self.started.map(|s| s.elapsed()).unwrap_or_default(),
        }
    }

    fn finish(&mut self, reason: EndReason) {
        self.done = true;
        self.end.get_or_insert(reason);
    }

    /// At most how many more rows can be loaded, if a total cap is set.
    ///
    /// An error still to be reported (a refused query, an invalid batch size) is
    /// the one item left, so it counts as one.
    fn rows_left(&self) -> Option<u64> {
        let bad_batch_size = !matches!(i64::try_from(self.config.batch_size), Ok(n) if n > 0);
        if self.pending_error.is_some() || (!self.done && bad_batch_size) {
            return Some(1);
        }
        if self.done {
            return Some(0);
        }
        self.config
            .limit_total
            .map(|t| t.saturating_sub(self.loaded))
    }
}

type BatchResult<T> = Option<Result<Vec<T>, Error>>;

impl<S, B, K, R> Scan<S, B, K, R>
where
    S: ConnectionSource,
    K: Key,
    R: Rows<S::Connection, B, K>,
{
    fn fail(&mut self, e: Error) -> BatchResult<R::Loaded> {
        self.finish(EndReason::Failed);
        Some(Err(e))
    }

    /// Loads the next non-empty batch, or `None` at the end.
    pub(crate) fn next_batch(&mut self) -> BatchResult<R::Loaded> {
        if let Some(e) = self.pending_error.take() {
            return self.fail(e);
        }
        if self.done {
            return None;
        }
        self.started.get_or_insert_with(Instant::now);
        let batch_size = match i64::try_from(self.config.batch_size) {
            Ok(n) if n > 0 => n,
            _ => {
                return self.fail(Error::InvalidBatchSize {
                    batch_size: self.config.batch_size,
                })
            }
        };
        let limit = match self.config.limit_total {
            Some(total) => {
                let left = total.saturating_sub(self.loaded);
                if left == 0 {
                    self.finish(EndReason::LimitReached);
                    return None;
                }
                batch_size.min(i64::try_from(left).unwrap_or(i64::MAX))
            }
            None => batch_size,
        };
        let batch_no = self.batches + 1;
        let query = self.query.as_ref()?;
        #[cfg(feature = "tracing")]
        let span = tracing::info_span!(
            "chunked_batch",
            batch = batch_no,
            key = %query.key().describe(),
            after = ?query.bounds().after,
            until = tracing::field::Empty,
            limit,
            rows = tracing::field::Empty,
            attempt = tracing::field::Empty,
            elapsed_ms = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        #[cfg(feature = "tracing")]
        let _entered = span.enter();
        #[cfg(feature = "tracing")]
        let batch_started = Instant::now();
        let max_retries = self.config.max_retries.unwrap_or(S::DEFAULT_MAX_RETRIES);
        let loader = &mut self.rows;
        let mut attempt = 0u32;
        let rows = loop {
            attempt += 1;
            self.queries += 1;
            #[cfg(feature = "tracing")]
            span.record("attempt", attempt);
            match self
                .source
                .run(attempt > 1, |conn| loader.load(query, conn, limit))
            {
                Ok(rows) => break rows,
                Err(e) => {
                    let retry = attempt <= max_retries && is_transient(&e);
                    if retry {
                        self.retries += 1;
                        std::thread::sleep(crate::source::retry_delay(attempt));
                        continue;
                    }
                    #[cfg(feature = "tracing")]
                    {
                        span.record("error", tracing::field::display(&e));
                        span.record("elapsed_ms", elapsed_ms(batch_started));
                    }
                    let last_key = query.bounds().after.as_ref().map(|k| format!("{k:?}"));
                    let err = match e {
                        AttemptError::Query(source) => Error::Database {
                            batch: batch_no,
                            last_key,
                            attempts: attempt,
                            source,
                        },
                        #[cfg(feature = "r2d2")]
                        AttemptError::Pool(source) => Error::Pool {
                            batch: batch_no,
                            attempts: attempt,
                            source,
                        },
                    };
                    return self.fail(err);
                }
            }
        };
        #[cfg(feature = "tracing")]
        {
            span.record("rows", rows.len());
            span.record("elapsed_ms", elapsed_ms(batch_started));
            if let Some(last) = rows.last() {
                span.record("until", tracing::field::debug(last.key()));
            }
        }
        if let Err(e) = self.check_batch(&rows, batch_no) {
            return self.fail(e);
        }
        if (rows.len() as u64) < limit as u64 {
            // A short batch is the last one: no query to find out there is nothing left.
            self.finish(EndReason::Exhausted);
        }
        let Some(last) = rows.last() else {
            self.finish(EndReason::Exhausted);
            return None;
        };
        let last = last.key().clone();
        self.loaded += rows.len() as u64;
        self.batches = batch_no;
        if let Some(q) = self.query.as_mut() {
            q.set_after(Some(last));
        }
        if self.config.limit_total.is_some_and(|t| self.loaded >= t) {
            self.finish(EndReason::LimitReached);
        }
        Some(Ok(rows))
    }

    /// Rejects a batch in which two rows share a key (the key is not unique, and
    /// rows at batch boundaries would be skipped), or that ended where it started
    /// (a key closure that does not return the key column).
    fn check_batch(&self, rows: &[R::Loaded], batch: u64) -> Result<(), Error> {
        let Some(query) = self.query.as_ref() else {
            return Ok(());
        };
        let columns = || query.key().describe();
        let desc = query.bounds().desc;
        // Whether `next` may follow `prev` in the scan's direction, where Rust
        // can tell (text keys follow the database's collation: only equality is
        // known). Rows loaded by the crate always do; a key closure that does not
        // return the key column may not, and would repeat or skip rows.
        let backwards = |prev: &K::Value, next: &K::Value| {
            matches!(
                (K::compare(prev, next), desc),
                (Some(Ordering::Greater), false) | (Some(Ordering::Less), true)
            )
        };
        for pair in rows.windows(2) {
            let (prev, next) = (pair[0].key(), pair[1].key());
            if prev == next {
                return Err(Error::DuplicateKey {
                    columns: columns(),
                    value: format!("{prev:?}"),
                    batch,
                });
            }
            if backwards(prev, next) {
                return Err(Error::KeyOutOfOrder {
                    columns: columns(),
                    previous: format!("{prev:?}"),
                    next: format!("{next:?}"),
                    batch,
                });
            }
        }
        if let (Some(after), Some(first)) = (&query.bounds().after, rows.first()) {
            let first = first.key();
            if first == after {
                return Err(Error::NoProgress {
                    columns: columns(),
                    value: format!("{after:?}"),
                    batch,
                });
            }
            if backwards(after, first) {
                return Err(Error::KeyOutOfOrder {
                    columns: columns(),
                    previous: format!("{after:?}"),
                    next: format!("{first:?}"),
                    batch,
                });
            }
        }
        Ok(())
    }
}

/// Whether the bounds leave no key at all: `start_after` at or past `end_at` in
/// the scan's direction, when Rust can compare the values for certain.
fn bounds_are_empty<B, K: Key>(q: &SeekQuery<B, K>) -> bool {
    let (lows, highs) = q.bounds().ends();
    lows.iter().any(|(low, low_excl)| {
        highs
            .iter()
            .any(|(high, high_excl)| match K::compare(low, high) {
                Some(Ordering::Greater) => true,
                Some(Ordering::Equal) => *low_excl || *high_excl,
                Some(Ordering::Less) | None => false,
            })
    })
}

#[cfg(feature = "tracing")]
fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn is_transient(e: &AttemptError) -> bool {
    crate::source::is_transient(e)
}

/// Yields one `Vec` per query; made by `load_batches` / `load_batches_keyed`.
///
/// No `Vec` is empty. Each is one `SELECT … LIMIT n`, run when `next()` is called.
pub struct LoadBatches<S: ConnectionSource, B, K: Key, R> {
    scan: Scan<S, B, K, R>,
    rows: u64,
    last_key: Option<K::Value>,
}

impl<S: ConnectionSource, B, K: Key, R> LoadBatches<S, B, K, R> {
    pub(crate) fn new(scan: Scan<S, B, K, R>) -> Self {
        Self {
            scan,
            rows: 0,
            last_key: None,
        }
    }

    /// The key of the last row of the last batch handed out: pass it to
    /// `start_after` to resume after that batch.
    pub fn last_key(&self) -> Option<&K::Value> {
        self.last_key.as_ref()
    }

    /// Counters of the scan so far.
    pub fn progress(&self) -> Progress<K::Value> {
        self.scan.progress(self.rows, self.last_key.clone())
    }

    /// Why the scan ended, once it has: for example
    /// [`EndReason::EmptyBounds`] when `start_after` / `end_at` leave no key.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.scan.end
    }
}

impl<S, B, K, R> Iterator for LoadBatches<S, B, K, R>
where
    S: ConnectionSource,
    K: Key,
    R: Rows<S::Connection, B, K>,
{
    type Item = Result<Vec<R::Item>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let rows = match self.scan.next_batch()? {
            Ok(rows) => rows,
            Err(e) => return Some(Err(e)),
        };
        self.rows += rows.len() as u64;
        self.last_key = rows.last().map(|r| r.key().clone());
        // Collected in place: the batch's allocation is reused where the layouts
        // allow, rather than every row copied into a new `Vec`.
        Some(Ok(rows.into_iter().map(|r| r.into_parts().1).collect()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let batch = self.scan.config.batch_size.max(1);
        let upper = self
            .scan
            .rows_left()
            .map(|left| usize::try_from(left.div_ceil(batch)).unwrap_or(usize::MAX));
        (0, upper)
    }
}

impl<S, B, K, R> std::iter::FusedIterator for LoadBatches<S, B, K, R>
where
    S: ConnectionSource,
    K: Key,
    R: Rows<S::Connection, B, K>,
{
}

/// Yields rows one at a time; made by `load_iter` / `load_iter_keyed`.
///
/// Holds at most one batch in memory and runs the next query only when that batch
/// is used up, so `it.take(3)` runs one query.
pub struct LoadIter<S: ConnectionSource, B, K: Key, R: RowType<K>> {
    scan: Scan<S, B, K, R>,
    buffer: std::vec::IntoIter<R::Loaded>,
    rows: u64,
    last_key: Option<K::Value>,
}

impl<S: ConnectionSource, B, K: Key, R: RowType<K>> LoadIter<S, B, K, R> {
    pub(crate) fn new(scan: Scan<S, B, K, R>) -> Self {
        Self {
            scan,
            buffer: Vec::new().into_iter(),
            rows: 0,
            last_key: None,
        }
    }

    /// The key of the last row handed to the caller, not of the last row loaded:
    /// `start_after(it.last_key())` resumes with exactly the next unprocessed row.
    pub fn last_key(&self) -> Option<&K::Value> {
        self.last_key.as_ref()
    }

    /// Counters of the scan so far.
    pub fn progress(&self) -> Progress<K::Value> {
        self.scan.progress(self.rows, self.last_key.clone())
    }

    /// Why the scan ended, once it has: for example
    /// [`EndReason::EmptyBounds`] when `start_after` / `end_at` leave no key.
    pub fn end_reason(&self) -> Option<EndReason> {
        if self.buffer.len() > 0 {
            return None;
        }
        self.scan.end
    }
}

impl<S, B, K, R> Iterator for LoadIter<S, B, K, R>
where
    S: ConnectionSource,
    K: Key,
    R: Rows<S::Connection, B, K>,
{
    type Item = Result<R::Item, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(row) = self.buffer.next() {
                let (k, t) = row.into_parts();
                self.rows += 1;
                self.last_key = Some(k);
                return Some(Ok(t));
            }
            match self.scan.next_batch()? {
                Ok(rows) => self.buffer = rows.into_iter(),
                Err(e) => return Some(Err(e)),
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let buffered = self.buffer.len();
        let upper = self
            .scan
            .rows_left()
            .and_then(|left| usize::try_from(left).ok())
            .map(|left| left.saturating_add(buffered));
        (buffered, upper)
    }
}

impl<S, B, K, R> std::iter::FusedIterator for LoadIter<S, B, K, R>
where
    S: ConnectionSource,
    K: Key,
    R: Rows<S::Connection, B, K>,
{
}

impl<S: ConnectionSource, B, K: Key, R: RowType<K>> fmt::Debug for LoadIter<S, B, K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadIter")
            .field("progress", &self.progress())
            .finish_non_exhaustive()
    }
}

impl<S: ConnectionSource, B, K: Key, R> fmt::Debug for LoadBatches<S, B, K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadBatches")
            .field("progress", &self.progress())
            .finish_non_exhaustive()
    }
}
