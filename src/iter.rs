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
use crate::engine::{check_probe, EndReason, Engine, Progress, ScanConfig};
use crate::error::Error;
use crate::key::Key;
use crate::query::SeekQuery;
use crate::rows::{LoadedRow, RowType, Rows};
use crate::source::ConnectionSource;
use crate::stored::StoredKey;
use crate::unique::{key_problem, UniqueIndexes};

/// The synchronous driver of a scan: runs each batch the [`Engine`] plans on a
/// connection of the source, sleeping between retries.
#[doc(hidden)]
#[allow(missing_debug_implementations)]
pub struct Scan<S: ConnectionSource, B, K: Key, R> {
    source: S,
    query: Option<SeekQuery<B, K>>,
    rows: R,
    engine: Engine,
}

impl<S: ConnectionSource, B, K: Key, R: RowType<K>> Scan<S, B, K, R> {
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
        let engine = Engine::new(
            config,
            R::ORIGIN,
            query.as_ref().map(|q| q.bounds()),
            K::compare,
            pending_error,
        );
        Self {
            source,
            query,
            rows,
            engine,
        }
    }
}

type BatchResult<T> = Option<Result<Vec<T>, Error>>;

impl<S, B, K, R> Scan<S, B, K, R>
where
    S: ConnectionSource,
    S::Connection: UniqueIndexes,
    Db<S>: KeysetBackend,
    K: Key,
    R: Rows<S::Connection, B, K>,
{
    /// Before the first batch of a scan by a string key on a backend where some
    /// string columns order inconsistently: refuses such a column.
    fn check_key(&mut self) -> Result<(), Error> {
        let Some(key_sql) = self.query.as_ref().and_then(|q| q.key_sql()) else {
            return Ok(());
        };
        self.engine.attempted();
        match self.source.run(false, |conn| key_problem(conn, key_sql)) {
            Ok(None) => Ok(()),
            Ok(Some(reason)) => {
                let columns = self
                    .query
                    .as_ref()
                    .map(|q| q.key().describe())
                    .unwrap_or_default();
                Err(self.engine.fail(Error::UnsupportedKey { columns, reason }))
            }
            Err(e) => {
                let plan = crate::engine::BatchPlan { batch: 1, limit: 1 };
                Err(self.engine.error::<K::Value>(&plan, 1, e, None))
            }
        }
    }

    /// Before the first batch of a scan that starts after a key given as a Rust
    /// value, on a key the backend may store in forms of its own: loads the row
    /// just before that key and refuses the scan if it is stored so.
    fn probe(&mut self) -> Result<(), Error> {
        let Some(query) = self.query.as_mut() else {
            return Ok(());
        };
        let inexact_start = query.bounds().after.as_ref().is_some_and(|a| !a.is_exact());
        if !(Db::<S>::STORED_FORMS && K::STORED_FORMS && inexact_start) {
            return Ok(());
        }
        query.set_probe(true);
        let query = &*query;
        let loader = &mut self.rows;
        self.engine.attempted();
        let rows = self.source.run(false, |conn| loader.load(query, conn, 1));
        if let Some(q) = self.query.as_mut() {
            q.set_probe(false);
        }
        let Some(query) = self.query.as_ref() else {
            return Ok(());
        };
        match rows {
            Ok(rows) => {
                check_probe(query.key(), &rows, |r| r.key()).map_err(|e| self.engine.fail(e))
            }
            Err(e) => {
                let plan = crate::engine::BatchPlan { batch: 1, limit: 1 };
                Err(self
                    .engine
                    .error(&plan, 1, e, query.bounds().after.as_ref()))
            }
        }
    }

    /// Before the first batch: how the batches are ordered, or the refusal of
    /// a plan that sorts every batch (see [`crate::explain`]).
    fn check_order(&mut self) -> Result<(), Error> {
        let Some(query) = self.query.as_ref().filter(|q| q.order_sql().is_some()) else {
            return Ok(());
        };
        let (rows, config) = (&mut self.rows, &self.engine.config);
        let (batch_size, allow_sort) = (config.batch_size, config.allow_sort);
        self.engine.attempted();
        let decided = self.source.run(false, |conn| {
            crate::explain::order_before_first_batch(conn, query, rows, batch_size, allow_sort)
        });
        match decided {
            Ok(Ok(prefix)) => {
                if let Some(q) = self.query.as_mut() {
                    q.set_order_prefix(prefix);
                }
                Ok(())
            }
            Ok(Err(refusal)) => Err(self.engine.fail(refusal)),
            Err(e) => {
                let plan = crate::engine::BatchPlan { batch: 1, limit: 1 };
                Err(self.engine.error::<K::Value>(&plan, 1, e, None))
            }
        }
    }

    /// Loads the next non-empty batch, or `None` at the end.
    pub(crate) fn next_batch(&mut self) -> BatchResult<R::Loaded> {
        let plan = match self.engine.plan() {
            Ok(Some(plan)) => plan,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        if plan.batch == 1 && self.engine.queries == 0 {
            let checked = self.check_key().and_then(|()| self.probe());
            if let Err(e) = checked.and_then(|()| self.check_order()) {
                return Some(Err(e));
            }
        }
        let query = self.query.as_ref()?;
        #[cfg(feature = "tracing")]
        let span = tracing::info_span!(
            "chunked_batch",
            batch = plan.batch,
            key = %query.key().describe(),
            after = ?query.bounds().after,
            until = tracing::field::Empty,
            limit = plan.limit,
            rows = tracing::field::Empty,
            attempt = tracing::field::Empty,
            elapsed_ms = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        #[cfg(feature = "tracing")]
        let _entered = span.enter();
        #[cfg(feature = "tracing")]
        let batch_started = std::time::Instant::now();
        let loader = &mut self.rows;
        let mut attempt = 0u32;
        let mut rows = loop {
            attempt += 1;
            self.engine.attempted();
            #[cfg(feature = "tracing")]
            span.record("attempt", attempt);
            match self
                .source
                .run(attempt > 1, |conn| loader.load(query, conn, plan.fetch()))
            {
                Ok(rows) => break rows,
                Err(e) => {
                    let after = query.bounds().after.as_ref();
                    match self
                        .engine
                        .failed(&plan, attempt, S::DEFAULT_MAX_RETRIES, e, after)
                    {
                        Ok(delay) => std::thread::sleep(delay),
                        Err(e) => {
                            #[cfg(feature = "tracing")]
                            {
                                span.record("error", tracing::field::display(&e));
                                span.record("elapsed_ms", elapsed_ms(batch_started));
                            }
                            return Some(Err(e));
                        }
                    }
                }
            }
        };
        let accepted = self
            .engine
            .accept(&plan, query.key(), query.bounds(), &mut rows, |r| r.key());
        #[cfg(feature = "tracing")]
        {
            span.record("rows", rows.len());
            span.record("elapsed_ms", elapsed_ms(batch_started));
            if let Some(last) = rows.last() {
                span.record("until", tracing::field::debug(last.key()));
            }
        }
        match accepted {
            Ok(Some(last)) => {
                if let Some(q) = self.query.as_mut() {
                    q.set_after(Some(last));
                }
                Some(Ok(rows))
            }
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

#[cfg(feature = "tracing")]
fn elapsed_ms(since: std::time::Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Yields one `Vec` per query; made by `load_batches` / `load_batches_keyed`.
///
/// No `Vec` is empty. Each is one `SELECT … LIMIT n`, run when `next()` is called.
pub struct LoadBatches<S: ConnectionSource, B, K: Key, R> {
    scan: Scan<S, B, K, R>,
    rows: u64,
    last_key: Option<StoredKey<K::Value>>,
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
        self.last_key.as_ref().map(|k| &k.value)
    }

    /// The key of the last row of the last batch handed out, as the database
    /// stored it: `start_after(it.last_stored_key().cloned().unwrap())`
    /// resumes exactly after that batch whatever format the column holds (see
    /// [`StoredKey`]).
    pub fn last_stored_key(&self) -> Option<&StoredKey<K::Value>> {
        self.last_key.as_ref()
    }

    /// Counters of the scan so far.
    pub fn progress(&self) -> Progress<K::Value> {
        let last = self.last_key().cloned();
        self.scan.engine.progress(self.rows, last)
    }

    /// Why the scan ended, once it has: for example
    /// [`EndReason::EmptyBounds`] when `start_after` / `end_at` leave no key.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.scan.engine.end
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
        self.rows += rows.len() as u64;
        self.last_key = rows.last().map(|r| r.key().clone());
        // Collected in place: the batch's allocation is reused where the layouts
        // allow, rather than every row copied into a new `Vec`.
        Some(Ok(rows.into_iter().map(|r| r.into_parts().1).collect()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let batch = self.scan.engine.config.batch_size.max(1);
        let upper = self
            .scan
            .engine
            .rows_left()
            .map(|left| usize::try_from(left.div_ceil(batch)).unwrap_or(usize::MAX));
        (0, upper)
    }
}

impl<S, B, K, R> std::iter::FusedIterator for LoadBatches<S, B, K, R>
where
    S: ConnectionSource,
    S::Connection: UniqueIndexes,
    Db<S>: KeysetBackend,
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
    last_key: Option<StoredKey<K::Value>>,
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
    ///
    /// On SQLite, a key column holding text in another format than Diesel
    /// writes (a timestamp written by another program) needs the stored form to
    /// resume: use [`last_stored_key`](Self::last_stored_key), which works
    /// everywhere.
    pub fn last_key(&self) -> Option<&K::Value> {
        self.last_key.as_ref().map(|k| &k.value)
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
        self.last_key.as_ref()
    }

    /// Counters of the scan so far.
    pub fn progress(&self) -> Progress<K::Value> {
        let last = self.last_key().cloned();
        self.scan.engine.progress(self.rows, last)
    }

    /// Why the scan ended, once it has: for example
    /// [`EndReason::EmptyBounds`] when `start_after` / `end_at` leave no key.
    pub fn end_reason(&self) -> Option<EndReason> {
        if self.buffer.len() > 0 {
            return None;
        }
        self.scan.engine.end
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
            .engine
            .rows_left()
            .and_then(|left| usize::try_from(left).ok())
            .map(|left| left.saturating_add(buffered));
        (buffered, upper)
    }
}

impl<S, B, K, R> std::iter::FusedIterator for LoadIter<S, B, K, R>
where
    S: ConnectionSource,
    S::Connection: UniqueIndexes,
    Db<S>: KeysetBackend,
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
