//! The iterators a scan returns: [`LoadBatches`] yields one `Vec` per query,
//! [`LoadIter`] yields rows one by one and runs the next query only when its
//! buffer is empty.
//!
//! Both are fused: after `None`, or after an `Err`, they return `None`. A scan
//! that failed on a connection you lent it resumes without loss or duplication
//! with `.start_after(key)`, where `key` is [`LoadIter::last_key`] (the key of the
//! last item you received).

use std::fmt;

use crate::backend::KeysetBackend;
use crate::builder::Db;
use crate::engine::{check_probe, BatchPlan, EndReason, Engine, Handed, Progress, ScanConfig};
use crate::error::Error;
use crate::explain::{read_order, OrderCheck, OrderFound};
use crate::key::Key;
use crate::query::SeekQuery;
use crate::rows::{LoadedRow, RowType, Rows};
use crate::source::{AttemptError, ConnectionSource};
use crate::stored::StoredKey;
use crate::trace::Trace;
use crate::unique::{key_problem, UniqueIndexes};

mod thread;
pub use thread::{ThreadBatches, ThreadIter};

/// The I/O-free half of a scan's driver, shared by the synchronous driver
/// ([`Scan`]) and the async one: the prepared query, the row loader and the
/// [`Engine`], and what to run before, during and after each batch. A driver
/// only runs what this asks for on a connection of its source, and sleeps
/// between retries.
#[allow(missing_debug_implementations)]
pub(crate) struct ScanCore<B, K: Key, R> {
    query: Option<SeekQuery<B, K>>,
    rows: R,
    pub(crate) engine: Engine,
    /// The batch being loaded, until it is.
    plan: Option<BatchPlan>,
    /// A wait to hand out before the next step (a retry's back-off).
    wait: Option<std::time::Duration>,
    /// The current batch's tracing span.
    trace: Trace,
}

/// What a scan's driver does next (see [`ScanCore::step`]).
#[derive(Debug)]
pub(crate) enum ReadStep {
    /// Run these checks before the first batch on [`ScanCore::first`].
    Checks(FirstSteps),
    /// Load attempt `attempt` at batch `plan` with [`ScanCore::statement`];
    /// hand the rows to [`ScanCore::loaded`] or the failure to
    /// [`ScanCore::failed`].
    Load { plan: BatchPlan, attempt: u32 },
    /// Sleep this long (a retry's back-off), then step again.
    Wait(std::time::Duration),
    /// The scan is over.
    End,
}

/// What to run before the first batch of a scan.
#[derive(Debug, Default)]
pub(crate) struct FirstSteps {
    /// The rendered key columns to check for string columns that order
    /// inconsistently ([`key_problem`](crate::unique::key_problem)).
    pub(crate) key_check: Option<String>,
    /// Whether to load the row just before a start key given as a Rust value
    /// ([`ScanCore::probe_query`]).
    pub(crate) probe: bool,
    /// How to order the batches of a composite key, or whether to refuse a
    /// plan that sorts every batch ([`ScanCore::order_query`]).
    pub(crate) order: Option<OrderCheck>,
}

/// What the steps before the first batch read and set: the prepared query,
/// the row loader and the [`Engine`] of a scan ([`ScanCore::first`]) or of a
/// write job, which run the same steps.
pub(crate) struct FirstBatch<'s, B, K: Key, R> {
    pub(crate) query: &'s mut SeekQuery<B, K>,
    pub(crate) rows: &'s mut R,
    pub(crate) engine: &'s mut Engine,
}

impl FirstSteps {
    /// Whether there is a check to run.
    fn any(&self) -> bool {
        self.key_check.is_some() || self.probe || self.order.is_some()
    }
}

impl<B, K: Key, R: RowType<K>> FirstBatch<'_, B, K, R> {
    /// What to run before the first batch. `stored_forms` is the backend's
    /// [`KeysetBackend::STORED_FORMS`](crate::backend::KeysetBackend).
    pub(crate) fn steps(&self, stored_forms: bool) -> FirstSteps {
        let query = &*self.query;
        // A scan by a string key, on every backend: a key the database cannot
        // order and compare consistently is refused (MySQL/MariaDB: some string
        // column types; SQLite, PostgreSQL: a key held unique by an index in
        // another collation than it is compared in).
        let key_check = query.key_sql().map(str::to_owned);
        // A scan that starts after a key given as a Rust value, on a key the
        // backend may store in forms of its own: the row just before that key
        // is loaded, and the scan refused if it is stored so.
        let inexact_start = query.bounds().after.as_ref().is_some_and(|a| !a.is_exact());
        // A scan by a composite key on a backend that may sort every batch
        // (MySQL/MariaDB): a unique prefix of the key, or else the plan of a
        // batch.
        let order = OrderCheck::new(query, self.engine.config.allow_sort);
        FirstSteps {
            key_check,
            probe: stored_forms && K::STORED_FORMS && inexact_start,
            order,
        }
    }

    /// Counts the key check's query.
    pub(crate) fn key_check_attempted(&mut self) {
        self.engine.attempted();
    }

    /// The outcome of the key check: why the key cannot be scanned, if it
    /// cannot.
    pub(crate) fn key_checked(
        &mut self,
        problem: Result<Option<String>, AttemptError>,
    ) -> Result<(), Error> {
        match problem {
            Ok(None) => Ok(()),
            Ok(Some(reason)) => {
                let columns = self.query.key().describe();
                Err(self.engine.fail(Error::UnsupportedKey { columns, reason }))
            }
            Err(e) => Err(self.engine.error::<K::Value>(&FIRST, 1, e, None)),
        }
    }

    /// The probe's statement (one row, loaded with [`Rows::load`] and a limit
    /// of 1), counted as a query; [`probed`](Self::probed) restores the scan's.
    pub(crate) fn probe_query(&mut self) -> (&mut SeekQuery<B, K>, &mut R) {
        self.query.set_probe(true);
        self.engine.attempted();
        (&mut *self.query, &mut *self.rows)
    }

    /// The outcome of the probe.
    pub(crate) fn probed(
        &mut self,
        rows: Result<Vec<R::Loaded>, AttemptError>,
    ) -> Result<(), Error> {
        self.query.set_probe(false);
        match rows {
            Ok(rows) => {
                check_probe(self.query.key(), &rows, |r| r.key()).map_err(|e| self.engine.fail(e))
            }
            Err(e) => Err(self
                .engine
                .error(&FIRST, 1, e, self.query.bounds().after.as_ref())),
        }
    }

    /// The statement and row loader the order check explains a batch with
    /// (see [`OrderCheck`]); the check counts as one query.
    pub(crate) fn order_query(&mut self) -> (&mut SeekQuery<B, K>, &mut R) {
        self.engine.attempted();
        (&mut *self.query, &mut *self.rows)
    }

    /// The outcome of the order check on backend `DB`: the batches order by
    /// the key's unique prefix, or the scan is refused.
    pub(crate) fn order_checked<DB: KeysetBackend>(
        &mut self,
        check: &OrderCheck,
        found: Result<OrderFound, AttemptError>,
    ) -> Result<(), Error> {
        let found = found.map_err(|e| self.engine.error::<K::Value>(&FIRST, 1, e, None))?;
        let bounded = self.query.bounds().after.is_some();
        let batch_size = self.engine.config.batch_size;
        match check.decide(self.query.key(), found, DB::EXPLAIN, bounded, batch_size) {
            Ok(prefix) => {
                self.query.set_order_prefix(prefix);
                Ok(())
            }
            Err(refusal) => Err(self.engine.fail(refusal)),
        }
    }

    /// Runs `steps` on connections of `source`: the blocking drivers' first
    /// steps (a scan's, and a write job's before its first transaction).
    pub(crate) fn run<S>(&mut self, source: &mut S, steps: FirstSteps) -> Result<(), Error>
    where
        S: ConnectionSource,
        S::Connection: UniqueIndexes,
        Db<S>: KeysetBackend,
        R: Rows<S::Connection, B, K>,
    {
        if let Some(key_sql) = steps.key_check {
            self.key_check_attempted();
            let problem = source.run(false, |conn| key_problem(conn, &key_sql));
            self.key_checked(problem)?;
        }
        if steps.probe {
            let (query, loader) = self.probe_query();
            let rows = source.run(false, |conn| loader.load(query, conn, 1));
            self.probed(rows)?;
        }
        if let Some(check) = steps.order {
            let (query, loader) = self.order_query();
            let found = source.run(false, |conn| read_order(&check, conn, query, loader));
            self.order_checked::<Db<S>>(&check, found)?;
        }
        Ok(())
    }
}

impl<B, K: Key, R: RowType<K>> ScanCore<B, K, R> {
    pub(crate) fn new(query: Result<SeekQuery<B, K>, Error>, rows: R, config: ScanConfig) -> Self {
        let (query, pending_error) = match query {
            Ok(mut q) => {
                q.set_statements(config.cache_statements, config.batch_size);
                (Some(q), None)
            }
            Err(e) => (None, Some(e)),
        };
        let engine = Engine::new(
            config,
            R::ORIGIN,
            query.as_ref().map(|q| q.bounds()),
            K::compare,
            pending_error,
        );
        Self {
            query,
            rows,
            engine,
            plan: None,
            wait: None,
            trace: Trace::none(),
        }
    }

    /// What the driver does next: a retry's wait; else the next batch (after
    /// the checks before the first one), attempt by attempt; or the end.
    /// `stored_forms` is the backend's
    /// [`KeysetBackend::STORED_FORMS`](crate::backend::KeysetBackend).
    pub(crate) fn step(&mut self, stored_forms: bool) -> Result<ReadStep, Error> {
        if self.engine.is_done() {
            // Over, or failed (in a check before the first batch too).
            self.plan = None;
            return Ok(ReadStep::End);
        }
        if let Some(wait) = self.wait.take() {
            return Ok(ReadStep::Wait(wait));
        }
        let plan = match self.plan {
            Some(plan) => plan,
            None => {
                let Some(plan) = self.engine.plan()? else {
                    return Ok(ReadStep::End);
                };
                self.plan = Some(plan);
                let steps = self.first_steps(&plan, stored_forms);
                if steps.any() {
                    return Ok(ReadStep::Checks(steps));
                }
                plan
            }
        };
        if self.engine.attempts() == 0 {
            self.trace = self.trace(&plan);
        }
        let attempt = self.engine.attempt();
        self.trace.attempt(attempt);
        Ok(ReadStep::Load { plan, attempt })
    }

    /// The statement and the row loader of [`ReadStep::Load`], and the span
    /// to run them in.
    pub(crate) fn statement(&mut self) -> Option<(&mut SeekQuery<B, K>, &mut R, &Trace)> {
        Some((self.query.as_mut()?, &mut self.rows, &self.trace))
    }

    /// What to run before `plan`: nothing unless it is the scan's first batch.
    /// `stored_forms` is the backend's
    /// [`KeysetBackend::STORED_FORMS`](crate::backend::KeysetBackend).
    pub(crate) fn first_steps(&mut self, plan: &BatchPlan, stored_forms: bool) -> FirstSteps {
        if plan.batch != 1 || self.engine.queries != 0 {
            return FirstSteps::default();
        }
        self.first()
            .map(|first| first.steps(stored_forms))
            .unwrap_or_default()
    }

    /// What the steps before the first batch read and set.
    pub(crate) fn first(&mut self) -> Option<FirstBatch<'_, B, K, R>> {
        Some(FirstBatch {
            query: self.query.as_mut()?,
            rows: &mut self.rows,
            engine: &mut self.engine,
        })
    }

    /// The tracing span of batch `plan`.
    fn trace(&self, plan: &BatchPlan) -> Trace {
        let key = self.query.as_ref().map(|q| q.key().describe());
        let after = self.query.as_ref().and_then(|q| q.bounds().after.as_ref());
        Trace::read(plan, &key.unwrap_or_default(), after)
    }

    /// The current attempt at the batch failed with `e` on a source that
    /// retries `default_retries` times: the next step waits and tries again,
    /// or this is the scan's error.
    pub(crate) fn failed(&mut self, default_retries: u32, e: AttemptError) -> Result<(), Error> {
        let Some(plan) = self.plan else {
            return Err(self.engine.error::<K::Value>(&FIRST, 1, e, None));
        };
        let after = self.query.as_ref().and_then(|q| q.bounds().after.as_ref());
        let delay = self
            .engine
            .failed(&plan, default_retries, e, after)
            .inspect_err(|e| self.trace.failed(e))?;
        self.wait = Some(delay);
        Ok(())
    }

    /// The batch's loaded rows: checked, its look-ahead row dropped, the
    /// bound moved past it; `None` at the end.
    pub(crate) fn loaded(&mut self, mut rows: Vec<R::Loaded>) -> BatchResult<R::Loaded> {
        let plan = self.plan.take()?;
        let query = self.query.as_mut()?;
        let accepted = self
            .engine
            .accept(&plan, query.key(), query.bounds(), &mut rows, |r| r.key());
        self.trace.loaded(rows.len(), rows.last().map(|r| r.key()));
        match accepted {
            Ok(Some(last)) => {
                query.set_after(Some(last));
                Some(Ok(rows))
            }
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

/// The plan errors of the checks before the first batch are reported under.
const FIRST: BatchPlan = BatchPlan { batch: 1, limit: 1 };

/// The synchronous driver of a scan: runs what its [`ScanCore`] asks for on a
/// connection of the source, sleeping between retries.
#[allow(missing_debug_implementations)]
pub struct Scan<S: ConnectionSource, B, K: Key, R> {
    source: S,
    core: ScanCore<B, K, R>,
}

impl<S: ConnectionSource, B, K: Key, R: RowType<K>> Scan<S, B, K, R> {
    pub(crate) fn new(
        source: S,
        query: Result<SeekQuery<B, K>, Error>,
        rows: R,
        config: ScanConfig,
    ) -> Self {
        Self {
            source,
            core: ScanCore::new(query, rows, config),
        }
    }
}

pub(crate) type BatchResult<T> = Option<Result<Vec<T>, Error>>;

impl<S, B, K, R> Scan<S, B, K, R>
where
    S: ConnectionSource,
    S::Connection: UniqueIndexes,
    Db<S>: KeysetBackend,
    K: Key,
    R: Rows<S::Connection, B, K>,
{
    /// Loads the next non-empty batch, or `None` at the end: runs the steps
    /// the scan's core asks for.
    pub(crate) fn next_batch(&mut self) -> BatchResult<R::Loaded> {
        loop {
            let step = self.core.step(Db::<S>::STORED_FORMS);
            match step {
                Err(e) => return Some(Err(e)),
                Ok(ReadStep::Checks(steps)) => {
                    let mut first = self.core.first()?;
                    if let Err(e) = first.run(&mut self.source, steps) {
                        return Some(Err(e));
                    }
                }
                Ok(ReadStep::Load { plan, attempt }) => {
                    let (query, loader, trace) = self.core.statement()?;
                    let loaded = {
                        let _span = trace.enter();
                        let fetch = plan.fetch();
                        self.source
                            .run(attempt > 1, |conn| loader.load(query, conn, fetch))
                    };
                    match loaded {
                        Ok(rows) => return self.core.loaded(rows),
                        Err(e) => {
                            if let Err(e) = self.core.failed(S::DEFAULT_MAX_RETRIES, e) {
                                return Some(Err(e));
                            }
                        }
                    }
                }
                Ok(ReadStep::Wait(wait)) => std::thread::sleep(wait),
                Ok(ReadStep::End) => return None,
            }
        }
    }
}

/// Yields one `Vec` per query; made by `load_batches` / `load_batches_keyed`.
///
/// No `Vec` is empty. Each is one `SELECT … LIMIT n`, run when `next()` is called.
pub struct LoadBatches<S: ConnectionSource, B, K: Key, R> {
    scan: Scan<S, B, K, R>,
    handed: Handed<K::Value>,
}

impl<S: ConnectionSource, B, K: Key, R> LoadBatches<S, B, K, R> {
    pub(crate) fn new(scan: Scan<S, B, K, R>) -> Self {
        Self {
            scan,
            handed: Handed::new(),
        }
    }

    /// The key of the last row of the last batch handed out: pass it to
    /// `start_after` to resume after that batch.
    pub fn last_key(&self) -> Option<&K::Value> {
        self.handed.last_key()
    }

    /// The key of the last row of the last batch handed out, as the database
    /// stored it: `start_after(it.last_stored_key().cloned().unwrap())`
    /// resumes exactly after that batch whatever format the column holds (see
    /// [`StoredKey`]).
    pub fn last_stored_key(&self) -> Option<&StoredKey<K::Value>> {
        self.handed.last_stored_key()
    }

    /// Counters of the scan so far.
    pub fn progress(&self) -> Progress<K::Value> {
        self.handed.progress(&self.scan.core.engine)
    }

    /// Why the scan ended, once it has: for example
    /// [`EndReason::EmptyBounds`] when `start_after` / `end_at` leave no key.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.scan.core.engine.end
    }
}

impl<S, B, K, R> Iterator for LoadBatches<S, B, K, R>
where
    S: ConnectionSource,
    S::Connection: UniqueIndexes,
    Db<S>: KeysetBackend,
    K: Key,
    R: Rows<S::Connection, B, K>,
{
    type Item = Result<Vec<R::Item>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let rows = match self.scan.next_batch()? {
            Ok(rows) => rows,
            Err(e) => return Some(Err(e)),
        };
        let last = rows.last().map(|r| r.key().clone());
        self.handed.handed_out(rows.len() as u64, last);
        // Collected in place: the batch's allocation is reused where the layouts
        // allow, rather than every row copied into a new `Vec`.
        Some(Ok(rows.into_iter().map(|r| r.into_parts().1).collect()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let batch = self.scan.core.engine.config.batch_size.max(1);
        let upper = self
            .scan
            .core
            .engine
            .rows_left()
            .map(|left| usize::try_from(left.div_ceil(batch)).unwrap_or(usize::MAX));
        (0, upper)
    }
}

// Fused wherever it is an iterator: `next` returns `None` for good once the
// scan has ended or failed.
impl<S: ConnectionSource, B, K: Key, R> std::iter::FusedIterator for LoadBatches<S, B, K, R> where
    Self: Iterator
{
}

/// Yields rows one at a time; made by `load_iter` / `load_iter_keyed`.
///
/// Holds at most one batch in memory and runs the next query only when that batch
/// is used up, so `it.take(3)` runs one query.
pub struct LoadIter<S: ConnectionSource, B, K: Key, R: RowType<K>> {
    scan: Scan<S, B, K, R>,
    buffer: std::vec::IntoIter<R::Loaded>,
    handed: Handed<K::Value>,
}

impl<S: ConnectionSource, B, K: Key, R: RowType<K>> LoadIter<S, B, K, R> {
    pub(crate) fn new(scan: Scan<S, B, K, R>) -> Self {
        Self {
            scan,
            buffer: Vec::new().into_iter(),
            handed: Handed::new(),
        }
    }

    /// The key of the last row handed to the caller, not of the last row loaded:
    /// `start_after(it.last_key())` resumes with exactly the next unprocessed row.
    ///
    /// On SQLite, a key column holding text in another format than Diesel
    /// writes (a timestamp written by another program) needs the stored form to
    /// resume: use [`last_stored_key`](Self::last_stored_key), which works
    /// everywhere.
    pub fn last_key(&self) -> Option<&K::Value> {
        self.handed.last_key()
    }

    /// The key of the last row handed to the caller, as the database stored it:
    /// `start_after(it.last_stored_key().cloned().unwrap())` resumes with
    /// exactly the next unprocessed row whatever format the column holds (see
    /// [`StoredKey`]).
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// let mut it = posts::table.chunked_by(posts::id).batch_size(2).load_iter::<Post>(&mut *conn);
    /// it.next().transpose()?;
    /// let saved = it.last_stored_key().cloned().unwrap();
    /// let rest: Vec<i32> = posts::table.chunked_by(posts::id).start_after(saved)
    ///     .load_iter::<Post>(conn).map(|p| p.map(|p| p.id)).collect::<Result<_, _>>()?;
    /// assert_eq!(rest, [2, 3, 4, 5]);
    /// # Ok(()) }
    /// ```
    pub fn last_stored_key(&self) -> Option<&StoredKey<K::Value>> {
        self.handed.last_stored_key()
    }

    /// Counters of the scan so far.
    pub fn progress(&self) -> Progress<K::Value> {
        self.handed.progress(&self.scan.core.engine)
    }

    /// Why the scan ended, once it has: for example
    /// [`EndReason::EmptyBounds`] when `start_after` / `end_at` leave no key.
    pub fn end_reason(&self) -> Option<EndReason> {
        if self.buffer.len() > 0 {
            return None;
        }
        self.scan.core.engine.end
    }
}

impl<S, B, K, R> Iterator for LoadIter<S, B, K, R>
where
    S: ConnectionSource,
    S::Connection: UniqueIndexes,
    Db<S>: KeysetBackend,
    K: Key,
    R: Rows<S::Connection, B, K>,
{
    type Item = Result<R::Item, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(row) = self.buffer.next() {
                let (k, t) = row.into_parts();
                self.handed.handed_out(1, Some(k));
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
            .core
            .engine
            .rows_left()
            .and_then(|left| usize::try_from(left).ok())
            .map(|left| left.saturating_add(buffered));
        (buffered, upper)
    }
}

impl<S: ConnectionSource, B, K: Key, R: RowType<K>> std::iter::FusedIterator
    for LoadIter<S, B, K, R>
where
    Self: Iterator,
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
