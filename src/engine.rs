//! The scan's state machine, without I/O: what the next batch asks for, whether
//! a failed attempt is retried, what a loaded batch must satisfy, where the
//! next batch starts, and the counters.
//!
//! Every driver (the iterators, the batched writes) runs the same loop:
//!
//! ```text
//! loop {
//!     let plan = engine.plan()?            // batch number, LIMIT (one row more than kept)
//!     engine.attempt()                     // counts the attempt (1, 2, ... per batch)
//!     rows = run the batch statement       // on a connection: the driver's only job
//!       (failed? engine.failed(..) says: retry after a delay, or the error)
//!     rows = engine.accept(plan, rows)?    // checks, drops the look-ahead row, moves the bound
//! }
//! ```
//!
//! Each batch loads one row beyond its size. That row is not handed out (the
//! next batch starts with it), but it shows whether the batch's last key
//! repeats across the boundary, which would otherwise skip rows, and whether any
//! rows are left, which saves the final empty query.

use std::cmp::Ordering;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::key::Key;
use crate::predicate::Bounds;
use crate::source::AttemptError;
use crate::stored::StoredKey;

/// Configuration of a scan, from the builder.
#[derive(Debug, Clone)]
pub(crate) struct ScanConfig {
    pub(crate) batch_size: u64,
    pub(crate) limit_total: Option<u64>,
    pub(crate) max_retries: Option<u32>,
    pub(crate) cache_statements: bool,
    /// Run a plan that sorts every batch instead of refusing it.
    pub(crate) allow_sort: bool,
    /// Batches to load ahead of the one being handed out (`prefetch`).
    pub(crate) prefetch: usize,
}

/// Why a scan ended; see [`LoadIter::end_reason`](crate::LoadIter::end_reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// The last batch held every row that was left: none remain.
    Exhausted,
    /// `limit_total` rows were loaded.
    LimitReached,
    /// The bounds (`start_after` / `end_at`) leave no key; no query ran.
    EmptyBounds,
    /// An error was returned.
    Failed,
}

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

/// A scan's counters as of one batch ([`Engine::counters`]), kept by the
/// drivers that read ahead (the blocking scan on a thread, the async streams)
/// to show as of the last batch they handed out.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counters {
    batches: u64,
    queries: u64,
    retries: u64,
    started: Option<Instant>,
    /// Why the scan had ended, if it had.
    pub(crate) end: Option<EndReason>,
}

impl Counters {
    /// These counters with `rows` handed out, the last with key `last_key`;
    /// the time elapsed is up to now.
    pub(crate) fn progress<V>(&self, rows: u64, last_key: Option<V>) -> Progress<V> {
        Progress {
            rows,
            batches: self.batches,
            queries: self.queries,
            retries: self.retries,
            last_key,
            elapsed: self.started.map(|s| s.elapsed()).unwrap_or_default(),
        }
    }
}

/// What an iterator or a stream has handed to its caller so far: how many
/// rows, and the key of the last one.
#[derive(Debug)]
pub(crate) struct Handed<V> {
    rows: u64,
    last_key: Option<StoredKey<V>>,
}

impl<V> Handed<V> {
    pub(crate) fn new() -> Self {
        Self {
            rows: 0,
            last_key: None,
        }
    }

    /// Counts `rows` more rows handed out, the last one with key `last`.
    pub(crate) fn handed_out(&mut self, rows: u64, last: Option<StoredKey<V>>) {
        self.rows += rows;
        if last.is_some() {
            self.last_key = last;
        }
    }

    pub(crate) fn last_key(&self) -> Option<&V> {
        self.last_key.as_ref().map(|k| &k.value)
    }

    pub(crate) fn last_stored_key(&self) -> Option<&StoredKey<V>> {
        self.last_key.as_ref()
    }

    /// The counters of `engine`, with these rows and this last key.
    pub(crate) fn progress(&self, engine: &Engine) -> Progress<V>
    where
        V: Clone,
    {
        self.progress_as_of(&engine.counters())
    }

    /// `counters`, with these rows and this last key.
    pub(crate) fn progress_as_of(&self, counters: &Counters) -> Progress<V>
    where
        V: Clone,
    {
        counters.progress(self.rows, self.last_key().cloned())
    }
}

/// Where a scan's keys come from: read by the crate from the rows, or returned
/// by a closure of the user's. Only the second can be wrong about the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    /// Read by the crate from the rows.
    Rows,
    /// Returned by the user's closure.
    Closure,
}

/// One batch to run: its number and how many rows to keep. The statement asks
/// for [`fetch`](Self::fetch) rows, one more.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BatchPlan {
    pub(crate) batch: u64,
    pub(crate) limit: i64,
}

impl BatchPlan {
    /// The statement's `LIMIT`: the batch and one look-ahead row.
    pub(crate) fn fetch(&self) -> i64 {
        self.limit.saturating_add(1)
    }
}

/// The largest `batch_size`: SQL's `LIMIT` is an `i64`.
pub(crate) const MAX_BATCH_SIZE: u64 = i64::MAX as u64;

/// The most batches a scan reads ahead (`prefetch`): each is a batch in
/// memory, so a scan holds at most this many plus the one handed out.
pub(crate) const MAX_PREFETCH: usize = 16;

/// The state of one scan.
#[derive(Debug)]
pub(crate) struct Engine {
    pub(crate) config: ScanConfig,
    origin: KeyOrigin,
    pending_error: Option<Error>,
    done: bool,
    pub(crate) end: Option<EndReason>,
    /// Rows loaded so far (counted against `limit_total`).
    loaded: u64,
    pub(crate) batches: u64,
    pub(crate) queries: u64,
    pub(crate) retries: u64,
    /// Attempts at the current batch so far.
    attempt: u32,
    started: Option<Instant>,
}

impl Engine {
    /// A scan with `bounds`, or one that fails on its first step with
    /// `pending_error`.
    pub(crate) fn new<V: PartialEq>(
        config: ScanConfig,
        origin: KeyOrigin,
        bounds: Option<&Bounds<V>>,
        compare: fn(&V, &V) -> Option<Ordering>,
        pending_error: Option<Error>,
    ) -> Self {
        // Bounds that cannot hold any row need no query.
        let done = pending_error.is_none() && bounds.is_some_and(|b| bounds_are_empty(b, compare));
        Self {
            config,
            origin,
            pending_error,
            done,
            end: done.then_some(EndReason::EmptyBounds),
            loaded: 0,
            batches: 0,
            queries: 0,
            retries: 0,
            attempt: 0,
            started: None,
        }
    }

    /// The counters as of now, to show later: what a driver that reads
    /// ahead shows as of the last batch it handed out.
    pub(crate) fn counters(&self) -> Counters {
        Counters {
            batches: self.batches,
            queries: self.queries,
            retries: self.retries,
            started: self.started,
            end: self.end,
        }
    }

    /// Whether a driver holding `ready` loaded batches that are not handed out
    /// yet should start loading another one now: the scan reads `prefetch`
    /// batches ahead, and is not over.
    #[cfg_attr(not(feature = "async"), allow(dead_code))]
    pub(crate) fn wants_ahead(&self, ready: usize) -> bool {
        ready < self.config.prefetch.min(MAX_PREFETCH) && !self.is_done()
    }

    pub(crate) fn finish(&mut self, reason: EndReason) {
        self.done = true;
        self.end.get_or_insert(reason);
    }

    /// Ends the scan with `e`.
    pub(crate) fn fail(&mut self, e: Error) -> Error {
        self.finish(EndReason::Failed);
        e
    }

    fn batch_size(&self) -> Option<i64> {
        match self.config.batch_size {
            n @ 1..=MAX_BATCH_SIZE => i64::try_from(n).ok(),
            _ => None,
        }
    }

    /// At most how many more rows can be loaded, if a total cap is set.
    ///
    /// An error still to be reported (a refused query, an invalid batch size) is
    /// the one item left, so it counts as one.
    pub(crate) fn rows_left(&self) -> Option<u64> {
        let invalid = self.batch_size().is_none() || self.config.prefetch > MAX_PREFETCH;
        if self.pending_error.is_some() || (!self.done && invalid) {
            return Some(1);
        }
        if self.done {
            return Some(0);
        }
        self.config
            .limit_total
            .map(|t| t.saturating_sub(self.loaded))
    }

    /// The next batch to run, `Ok(None)` at the end.
    pub(crate) fn plan(&mut self) -> Result<Option<BatchPlan>, Error> {
        if let Some(e) = self.pending_error.take() {
            return Err(self.fail(e));
        }
        if self.done {
            return Ok(None);
        }
        self.started.get_or_insert_with(Instant::now);
        let Some(batch_size) = self.batch_size() else {
            let batch_size = self.config.batch_size;
            return Err(self.fail(Error::InvalidBatchSize { batch_size }));
        };
        if self.config.prefetch > MAX_PREFETCH {
            let prefetch = self.config.prefetch;
            return Err(self.fail(Error::InvalidPrefetch { prefetch }));
        }
        let limit = match self.config.limit_total {
            Some(total) => {
                let left = total.saturating_sub(self.loaded);
                if left == 0 {
                    self.finish(EndReason::LimitReached);
                    return Ok(None);
                }
                batch_size.min(i64::try_from(left).unwrap_or(i64::MAX))
            }
            None => batch_size,
        };
        self.attempt = 0;
        Ok(Some(BatchPlan {
            batch: self.batches + 1,
            limit,
        }))
    }

    /// Counts one statement run outside the batches' attempts (the checks
    /// before the first batch).
    pub(crate) fn attempted(&mut self) {
        self.queries += 1;
    }

    /// Counts one attempt at the current batch's statement: its number, from
    /// 1 (a later one is a retry).
    pub(crate) fn attempt(&mut self) -> u32 {
        self.queries += 1;
        self.attempt += 1;
        self.attempt
    }

    /// The number of the current batch's attempt (0 before the first).
    pub(crate) fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The retry rule: whether attempt `attempt` (1-based), failed for a
    /// reason worth another, may have one (`max_retries`, or the source's
    /// `default_retries`).
    pub(crate) fn may_retry(&self, attempt: u32, default_retries: u32) -> bool {
        attempt <= self.config.max_retries.unwrap_or(default_retries)
    }

    /// Counts a retry after attempt `attempt`: how long to wait before it.
    pub(crate) fn retry(&mut self, attempt: u32) -> Duration {
        self.retries += 1;
        crate::source::retry_delay(attempt)
    }

    /// What to do after the current attempt at `plan` failed with `e`: wait
    /// the returned time and try again, or give up with the error.
    pub(crate) fn failed<V: std::fmt::Debug>(
        &mut self,
        plan: &BatchPlan,
        default_retries: u32,
        e: AttemptError,
        after: Option<&StoredKey<V>>,
    ) -> Result<Duration, Error> {
        self.failed_at(plan, self.attempt, default_retries, e, after)
    }

    /// As [`failed`](Self::failed), after attempt `attempt` (1-based) at a
    /// statement counted apart from the batches' attempts.
    pub(crate) fn failed_at<V: std::fmt::Debug>(
        &mut self,
        plan: &BatchPlan,
        attempt: u32,
        default_retries: u32,
        e: AttemptError,
        after: Option<&StoredKey<V>>,
    ) -> Result<Duration, Error> {
        if self.may_retry(attempt, default_retries) && crate::source::is_transient(&e) {
            return Ok(self.retry(attempt));
        }
        Err(self.error(plan, attempt, e, after))
    }

    /// Ends the scan with the error of `attempts` failed attempts at `plan`.
    pub(crate) fn error<V: std::fmt::Debug>(
        &mut self,
        plan: &BatchPlan,
        attempts: u32,
        e: AttemptError,
        after: Option<&StoredKey<V>>,
    ) -> Error {
        let attempt = attempts;
        let err = match e {
            AttemptError::Query(source) => Error::Database {
                batch: plan.batch,
                last_key: after.map(|k| format!("{k:?}")),
                attempts: attempt,
                source,
            },
            #[cfg(feature = "r2d2")]
            AttemptError::Pool(source) => Error::Pool {
                batch: plan.batch,
                attempts: attempt,
                source,
            },
            #[cfg(any(feature = "deadpool", feature = "bb8"))]
            AttemptError::AsyncPool(source) => Error::AsyncPool {
                batch: plan.batch,
                attempts: attempt,
                source,
            },
        };
        self.fail(err)
    }

    /// Checks a loaded batch, drops its look-ahead row, counts it, and returns
    /// the key the next batch starts after; `Ok(None)` when the batch is empty
    /// (the scan is over).
    ///
    /// `rows` are in the statement's order; `key` reads a row's key.
    pub(crate) fn accept<K: Key, T>(
        &mut self,
        plan: &BatchPlan,
        key: &K,
        bounds: &Bounds<K::Value>,
        rows: &mut Vec<T>,
        key_of: impl Fn(&T) -> &StoredKey<K::Value>,
    ) -> Result<Option<StoredKey<K::Value>>, Error> {
        match self.check(plan, key, bounds, rows, key_of) {
            Ok(Checked { last, more }) => Ok(self.count(plan, rows.len(), last, more)),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// The first half of [`accept`](Self::accept), which changes nothing: checks
    /// the batch and drops its look-ahead row. A write job calls it inside the
    /// batch's transaction and [`count`](Self::count) once that committed.
    pub(crate) fn check<K: Key, T>(
        &self,
        plan: &BatchPlan,
        key: &K,
        bounds: &Bounds<K::Value>,
        rows: &mut Vec<T>,
        key_of: impl Fn(&T) -> &StoredKey<K::Value>,
    ) -> Result<Checked<K::Value>, Error> {
        check_batch(key, self.origin, bounds, rows, &key_of, plan.batch)?;
        let limit = usize::try_from(plan.limit).unwrap_or(usize::MAX);
        let more = rows.len() > limit;
        // The look-ahead row: the next batch starts with it.
        rows.truncate(limit);
        Ok(Checked {
            last: rows.last().map(|r| key_of(r).clone()),
            more,
        })
    }

    /// The second half of [`accept`](Self::accept): counts a batch of `n` rows
    /// ending at `last`, and ends the scan when no rows are left (`!more`) or
    /// `limit_total` is reached. Returns the key the next batch starts after.
    pub(crate) fn count<V>(
        &mut self,
        plan: &BatchPlan,
        n: usize,
        last: Option<StoredKey<V>>,
        more: bool,
    ) -> Option<StoredKey<V>> {
        if !more {
            self.finish(EndReason::Exhausted);
        }
        let last = last?;
        let limit = self.reaches_limit(n);
        self.loaded += n as u64;
        self.batches = plan.batch;
        if limit {
            self.finish(EndReason::LimitReached);
        }
        Some(last)
    }

    /// Whether a batch of `n` rows, rows left after it if `more`, would end
    /// the scan once [`count`](Self::count)ed: no rows left, or
    /// `limit_total` reached.
    pub(crate) fn would_end(&self, n: usize, more: bool) -> bool {
        !more || self.reaches_limit(n)
    }

    /// Whether `n` rows more reach `limit_total`.
    fn reaches_limit(&self, n: usize) -> bool {
        self.config
            .limit_total
            .is_some_and(|t| self.loaded + n as u64 >= t)
    }

    /// Whether the scan has ended.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }
}

/// A checked batch: its last key, and whether rows are left after it.
#[derive(Debug)]
pub(crate) struct Checked<V> {
    pub(crate) last: Option<StoredKey<V>>,
    pub(crate) more: bool,
}

/// Rejects a batch in which two rows share a key, across the boundary to the
/// look-ahead row too (the key is not unique over the query, and rows at batch
/// boundaries would be skipped); whose keys go backwards or do not move past the
/// bound (a key closure that does not return the key column, or a database
/// whose `ORDER BY` and comparison disagree); or whose keys are stored in a form
/// a bound given as a Rust value cannot be compared with.
fn check_batch<K: Key, T>(
    key: &K,
    origin: KeyOrigin,
    bounds: &Bounds<K::Value>,
    rows: &[T],
    key_of: &impl Fn(&T) -> &StoredKey<K::Value>,
    batch: u64,
) -> Result<(), Error> {
    let columns = || key.describe();
    let desc = bounds.desc;
    // Whether `next` may follow `prev` in the scan's direction, where Rust can
    // tell: not for text (collations), nor for values stored in a form of their
    // own (SQLite orders those by storage class and text).
    let backwards = |prev: &StoredKey<K::Value>, next: &StoredKey<K::Value>| {
        !prev.has_stored_form()
            && !next.has_stored_form()
            && matches!(
                (K::compare(&prev.value, &next.value), desc),
                (Some(Ordering::Greater), false) | (Some(Ordering::Less), true)
            )
    };
    let out_of_order = |prev: &StoredKey<K::Value>, next: &StoredKey<K::Value>| {
        let (previous, next) = (format!("{prev:?}"), format!("{next:?}"));
        match origin {
            KeyOrigin::Closure => Error::KeyOutOfOrder {
                columns: columns(),
                previous,
                next,
                batch,
            },
            KeyOrigin::Rows => Error::InconsistentOrder {
                columns: columns(),
                previous,
                next,
                batch,
            },
        }
    };
    if let (Some(after), Some(first)) = (&bounds.after, rows.first()) {
        let first = key_of(first);
        if first == after {
            return Err(match origin {
                KeyOrigin::Closure => Error::NoProgress {
                    columns: columns(),
                    value: format!("{after:?}"),
                    batch,
                },
                KeyOrigin::Rows => out_of_order(after, first),
            });
        }
        if backwards(after, first) {
            return Err(out_of_order(after, first));
        }
    }
    for pair in rows.windows(2) {
        let (prev, next) = (key_of(&pair[0]), key_of(&pair[1]));
        if prev == next {
            return Err(Error::DuplicateKey {
                columns: columns(),
                value: format!("{prev:?}"),
                batch,
            });
        }
        if backwards(prev, next) {
            return Err(out_of_order(prev, next));
        }
    }
    // A bound given as a Rust value binds as Diesel encodes it; rows stored in
    // another form (SQLite) do not compare with it as with their own kind.
    let (lows, highs) = bounds.ends();
    let rust_bound = lows.iter().chain(&highs).any(|(k, _)| !k.is_exact());
    if rust_bound {
        if let Some(row) = rows.iter().map(key_of).find(|k| k.has_stored_form()) {
            return Err(Error::StoredForm {
                columns: columns(),
                value: format!("{row:?}"),
            });
        }
    }
    Ok(())
}

/// Checks the rows just before a start key given as a Rust value (the probe):
/// if the database stores them in a form of its own, the start key does not
/// compare with them as with their kind, and rows would be skipped or
/// repeated at the start.
pub(crate) fn check_probe<K: Key, T>(
    key: &K,
    rows: &[T],
    key_of: impl Fn(&T) -> &StoredKey<K::Value>,
) -> Result<(), Error> {
    match rows.iter().map(key_of).find(|k| k.has_stored_form()) {
        Some(k) => Err(Error::StoredForm {
            columns: key.describe(),
            value: format!("{k:?}"),
        }),
        None => Ok(()),
    }
}

/// Whether the bounds leave no key at all: a lower end at or past an upper end,
/// when Rust can compare the values for certain.
fn bounds_are_empty<V>(b: &Bounds<V>, compare: fn(&V, &V) -> Option<Ordering>) -> bool {
    let (lows, highs) = b.ends();
    lows.iter().any(|(low, low_excl)| {
        highs.iter().any(|(high, high_excl)| {
            if low.has_stored_form() || high.has_stored_form() {
                return false;
            }
            match compare(&low.value, &high.value) {
                Some(Ordering::Greater) => true,
                Some(Ordering::Equal) => *low_excl || *high_excl,
                Some(Ordering::Less) | None => false,
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::{DatabaseErrorKind, Error as DieselError};

    fn lost() -> AttemptError {
        AttemptError::Query(DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection,
            Box::new("server closed the connection unexpectedly".to_string()),
        ))
    }

    #[test]
    fn reads_ahead_at_most_prefetch_batches_and_refuses_too_many() {
        let config = |prefetch| ScanConfig {
            batch_size: 2,
            limit_total: Some(3),
            max_retries: None,
            cache_statements: false,
            allow_sort: false,
            prefetch,
        };
        let compare = |a: &i64, b: &i64| a.partial_cmp(b);
        let mut e = Engine::new(config(2), KeyOrigin::Rows, None, compare, None);
        assert!(e.wants_ahead(0) && e.wants_ahead(1) && !e.wants_ahead(2));
        e.finish(EndReason::LimitReached);
        assert!(
            !e.wants_ahead(0),
            "nothing to read ahead once the scan is over"
        );
        let e = Engine::new(config(0), KeyOrigin::Rows, None, compare, None);
        assert!(!e.wants_ahead(0));

        let mut e = Engine::new(
            config(MAX_PREFETCH + 1),
            KeyOrigin::Rows,
            None,
            compare,
            None,
        );
        assert_eq!(e.rows_left(), Some(1), "the error is the one item left");
        assert!(matches!(
            e.plan(),
            Err(Error::InvalidPrefetch { prefetch: 17 })
        ));
        assert_eq!((e.queries, e.end), (0, Some(EndReason::Failed)));
        assert!(matches!(e.plan(), Ok(None)));
    }

    #[test]
    fn each_batch_has_its_own_attempts_under_one_retry_rule() {
        let config = ScanConfig {
            batch_size: 2,
            limit_total: None,
            max_retries: Some(1),
            cache_statements: false,
            allow_sort: false,
            prefetch: 0,
        };
        let compare = |a: &i64, b: &i64| a.partial_cmp(b);
        let mut e = Engine::new(config, KeyOrigin::Rows, None, compare, None);
        let plan = e.plan().unwrap().unwrap();
        // A statement before the batch counts as a query, not as an attempt.
        e.attempted();
        assert_eq!((e.attempt(), e.attempts()), (1, 1));
        let d = e.failed::<i64>(&plan, 3, lost(), None).unwrap();
        assert!(d <= Duration::from_millis(5));
        assert_eq!(e.attempt(), 2);
        // `max_retries` (1) caps the source's default (3).
        assert!(!e.may_retry(2, 3));
        assert!(matches!(
            e.failed::<i64>(&plan, 3, lost(), None),
            Err(Error::Database { attempts: 2, .. })
        ));
        assert_eq!((e.queries, e.retries), (3, 1));

        // The next batch starts at attempt 1 again.
        let mut e = Engine::new(
            ScanConfig {
                max_retries: None,
                ..e.config.clone()
            },
            KeyOrigin::Rows,
            None,
            compare,
            None,
        );
        let plan = e.plan().unwrap().unwrap();
        e.attempt();
        e.failed::<i64>(&plan, 3, lost(), None).unwrap();
        assert_eq!(e.attempt(), 2);
        let last = e.count(&plan, 2, Some(StoredKey::new(2i64, None)), true);
        assert!(last.is_some());
        assert_eq!(e.plan().unwrap().unwrap().batch, 2);
        assert_eq!(e.attempt(), 1);
        // An error of the query is not retried, whatever the retries left.
        let plan = BatchPlan { batch: 2, limit: 2 };
        assert!(matches!(
            e.failed::<i64>(&plan, 3, AttemptError::Query(DieselError::NotFound), None),
            Err(Error::Database { attempts: 1, .. })
        ));
    }
}
