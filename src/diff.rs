//! Diffs of one query read through two sources: [`Chunked::diff`].
//!
//! The key range is cut into chunks by the left side's keys, with the crate's
//! key query (`SELECT <key> ... WHERE key > $last ORDER BY key LIMIT n + 1`);
//! each chunk `(lo, hi]` is then compared on both sides with the same range
//! predicate, the right side's statements running on a thread of their own
//! while the left side's run. The chunk after the left's last key is open
//! (`key > $last`), so rows only the right side has are found there too.
//!
//! When both sides are the same backend and it can hash rows
//! ([`KeysetBackend::row_hash`]: PostgreSQL, MySQL/MariaDB), each chunk is
//! first checksummed in the database, one statement per side:
//!
//! ```text
//! SELECT COUNT(*), COALESCE(bit_xor(t.h), 0)::text FROM (
//!   SELECT hash_record_extended(ROW(<M's columns>), 0) AS h
//!   FROM <the query> WHERE (<filters>) AND key > $lo AND key <= $hi) t
//! ```
//!
//! (MySQL/MariaDB: `BIT_XOR` of `CRC32(CONCAT_WS('#', <columns>,
//! CONCAT(ISNULL(<column>), ..))) * 2654435761`.) Equal counts and
//! checksums: the chunk matches. A chunk that differs is split by its left
//! keys into [`SPLIT`] parts, each checksummed again, down to [`LEAF_ROWS`]
//! rows; the rows of such a part are then loaded on both sides as `M` and
//! compared in Rust. Where the first checksum fails for a reason of the
//! query (a column type without a hash function, such as PostgreSQL's
//! `json`), the diff compares rows from the start instead. Elsewhere
//! (SQLite, or two backends) every chunk's rows are loaded and compared in
//! Rust: the left side's rows page by page, the right side's rows of each
//! page's key range in pages of the same size. A row found on one side only
//! is kept until the next page has been compared, in case its twin fell on
//! the other side of the page's end (keys stored in forms that compare
//! differently with a bound, such as SQLite timestamps in another text
//! format): at most a page of rows per side.
//!
//! The verdict on a row is always Rust's: `M == M` on the decoded models.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use diesel::backend::Backend;
use diesel::expression::{AppearsOnTable, Expression, SelectableExpression, ValidGrouping};
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::query_dsl::methods::{FilterDsl, SelectDsl};
use diesel::query_dsl::LoadQuery;
use diesel::sql_types::{BigInt, Text};
use diesel::{QueryResult, RunQueryDsl, Selectable, SelectableHelper};

use crate::backend::KeysetBackend;
use crate::builder::{Chunked, Db};
use crate::error::Error;
use crate::key::{Key, KeyPositions};
use crate::predicate::{Bounds, SeekPredicate};
use crate::query::{ChunkableQuery, DefaultSelection, PrepareKeys, PrepareModel, SeekQuery};
use crate::rows::{KeyRows, LoadedRow, ModelRows, Rows};
use crate::source::{AttemptError, ConnectionSource};
use crate::stored::StoredKey;

/// How many parts a chunk whose checksums differ is split into.
pub(crate) const SPLIT: usize = 8;

/// A part of a chunk with at most this many rows on the left side is
/// compared row by row instead of being split again.
pub(crate) const LEAF_ROWS: usize = 128;

/// The default of [`Diff::max_keys`].
pub(crate) const DEFAULT_MAX_KEYS: usize = 1000;

/// The keys of one kind of difference: how many, and the first of them.
///
/// ```
/// use diesel_chunked_iterator::DiffKeys;
///
/// let keys = DiffKeys { count: 3, keys: vec![1, 2] };
/// assert!(keys.is_truncated());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffKeys<V> {
    /// How many rows differ this way (exact, whatever the cap).
    pub count: u64,
    /// Their keys, in the order found (key order within a chunk), up to
    /// [`max_keys`](Diff::max_keys).
    pub keys: Vec<V>,
}

impl<V> Default for DiffKeys<V> {
    fn default() -> Self {
        Self {
            count: 0,
            keys: Vec::new(),
        }
    }
}

impl<V> DiffKeys<V> {
    /// Whether more rows differ than [`keys`](Self::keys) holds.
    pub fn is_truncated(&self) -> bool {
        self.count > self.keys.len() as u64
    }

    fn push(&mut self, key: V, cap: usize) {
        self.count += 1;
        if self.keys.len() < cap {
            self.keys.push(key);
        }
    }

    fn extend(&mut self, other: DiffKeys<V>, cap: usize) {
        self.count += other.count;
        let room = cap.saturating_sub(self.keys.len());
        self.keys.extend(other.keys.into_iter().take(room));
    }
}

/// What a [`diff`](Chunked::diff) found.
///
/// Which differences are reported: a key of the query on one side only
/// (`missing_in_right`, `missing_in_left`), and a key on both sides whose
/// rows, decoded as the model `M`, are not equal (`M: PartialEq`):
/// `different`. Only what `M` selects is compared, as Rust sees it: two
/// stored forms that decode to equal values (timestamps stored with
/// another precision, numbers with another scale, text in another encoding
/// or collation, a `NULL` the model reads as `None` on both sides) are no
/// difference, whether or not the database checksums of their chunk were
/// equal.
///
/// Where chunks are checksummed in the database, a chunk whose checksums
/// and row counts are equal is taken as matching without loading its rows.
/// So a difference is missed only if it leaves the checksum unchanged: on
/// MySQL/MariaDB, a 32-bit `CRC32` per row (about one changed chunk in 2³²);
/// on PostgreSQL, values the database's own hash functions treat as equal
/// although they decode differently (`citext` or a case-insensitive
/// nondeterministic collation: `'a'` and `'A'`).
///
/// ```
/// # include!("../tests/doc/setup.rs");
/// use diesel_chunked_iterator::prelude::*;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (mut left, mut right) = (doc_connection(), doc_connection());
/// diesel::delete(posts::table.find(2)).execute(&mut right)?;
/// diesel::update(posts::table.find(4)).set(posts::title.eq("FOUR")).execute(&mut right)?;
/// let diff = posts::table
///     .chunked_by(posts::id)
///     .diff::<Post>(&mut left, &mut right)
///     .batch_size(2)
///     .run()?;
/// assert_eq!(diff.missing_in_right.keys, [2]);
/// assert_eq!(diff.different.keys, [4]);
/// assert_eq!(diff.missing_in_left.count, 0);
/// assert!(!diff.is_identical());
/// assert_eq!(diff.chunks, 3);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DiffReport<V> {
    /// Keys the left side has and the right side has not.
    pub missing_in_right: DiffKeys<V>,
    /// Keys the right side has and the left side has not.
    pub missing_in_left: DiffKeys<V>,
    /// Keys both sides have, with rows that differ as `M`.
    pub different: DiffKeys<V>,
    /// Chunks compared (the key ranges of `batch_size` left rows, and the
    /// open range after the left's last key).
    pub chunks: u64,
    /// Chunks whose rows (some or all) had to be loaded and compared in Rust:
    /// every chunk when the sides are not checksummed in the database.
    pub chunks_loaded: u64,
    /// Rows compared in Rust: pairs of rows with the same key, and rows
    /// found on one side only.
    pub rows_compared: u64,
    /// Checksum statements run on each side (0 when the sides were compared
    /// row by row).
    pub checksums: u64,
    /// Whether chunks were checksummed in the database (both sides the same
    /// backend, PostgreSQL or MySQL/MariaDB).
    pub in_database: bool,
    /// Time the diff took, pauses included.
    pub elapsed: Duration,
}

impl<V> DiffReport<V> {
    /// Whether no difference was found.
    pub fn is_identical(&self) -> bool {
        self.missing_in_right.count == 0
            && self.missing_in_left.count == 0
            && self.different.count == 0
    }
}

/// A diff of one query read through two sources, made by
/// [`Chunked::diff`]; run it with [`run`](Self::run).
///
/// ```
/// # include!("../tests/doc/setup.rs");
/// use diesel_chunked_iterator::prelude::*;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (mut a, mut b) = (doc_connection(), doc_connection());
/// let diff = posts::table
///     .filter(posts::published.eq(true))
///     .chunked_by(posts::id)
///     .start_after(1)
///     .diff::<Post>(&mut a, &mut b)
///     .batch_size(1)
///     .max_keys(10);
/// let report = diff.run()?;
/// assert_eq!((report.chunks, report.rows_compared), (2, 2)); // posts 3 and 5
/// # Ok(()) }
/// ```
#[must_use = "a diff does nothing until `run` runs it"]
pub struct Diff<Q, K: Key, M, L, R> {
    chunked: Chunked<Q, K>,
    left: L,
    right: R,
    max_keys: usize,
    _model: PhantomData<fn() -> M>,
}

impl<Q, K: Key, M, L, R> std::fmt::Debug for Diff<Q, K, M, L, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Diff")
            .field("chunked", &self.chunked)
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl<Q, K: Key> Chunked<Q, K> {
    /// Compares the rows of this query, decoded as `M`, on two sources: two
    /// databases (or two copies in one) of the same backend or of two
    /// backends. Returns a [`Diff`] to configure; [`Diff::run`] runs it.
    ///
    /// The key range is cut into chunks of [`batch_size`](Self::batch_size)
    /// rows by the left side's keys, and each chunk is compared on both
    /// sides with the same key range; the range after the left's last key
    /// is compared too. Between two sources of the same backend that can
    /// hash rows (PostgreSQL, MySQL/MariaDB), a chunk costs one checksum
    /// statement per side, and only chunks whose checksums differ are split
    /// and have rows loaded; otherwise (SQLite, or two backends) each chunk's
    /// rows are loaded on both sides and compared in Rust. At most one
    /// chunk's rows are held per side. See [`DiffReport`] for which
    /// differences are reported.
    ///
    /// The scan's bounds ([`start_after`](Self::start_after),
    /// [`end_at`](Self::end_at), [`within`](Self::within): diff the
    /// [`partitions`](Self::partitions) in parallel), its
    /// [`max_retries`](Self::max_retries) (per statement) and
    /// [`cache_statements`](Self::cache_statements) apply, and so do
    /// [`pause`](Self::pause) and [`throttle`](Self::throttle) (after each
    /// chunk but the last; the closure's [`BatchStats`](crate::BatchStats)
    /// count the chunk's left rows). [`desc`](Self::desc) and
    /// [`limit_total`](Self::limit_total) are [`Error::DiffUnsupported`].
    ///
    /// Only what `M` selects is compared. A diff is not a snapshot: each
    /// chunk is read on each side at its own moment, so rows written
    /// meanwhile may show as differences; diff sources at rest, or check
    /// the reported keys again.
    ///
    /// The checksum needs PostgreSQL 14 or later (`bit_xor`,
    /// `hash_record_extended`) or MySQL/MariaDB; where the first checksum
    /// fails for a reason of the query (an older server, a column type
    /// without a hash function such as `json`), the diff compares rows
    /// from the start instead ([`DiffReport::in_database`] says which).
    ///
    /// The key must order the same on both sides (integers, dates and
    /// times, UUIDs; text keys only in collations that agree, such as binary
    /// ones on both), and its Rust values must be `Ord`; the query must be
    /// `Clone` (not boxed), as each side prepares its own statements from it.
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (mut primary, mut copy) = (doc_connection(), doc_connection());
    /// let diff = posts::table
    ///     .chunked_by(posts::id)
    ///     .diff::<Post>(&mut primary, &mut copy)
    ///     .batch_size(10_000)
    ///     .run()?;
    /// assert!(diff.is_identical());
    /// assert_eq!(diff.rows_compared, 5);
    /// # Ok(()) }
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn diff<'a, M>(
        self,
        left: impl DiffSource<'a, Q, K, M>,
        right: impl DiffSource<'a, Q, K, M>,
    ) -> Diff<Q, K, M, impl DiffSource<'a, Q, K, M>, impl DiffSource<'a, Q, K, M>> {
        Diff {
            chunked: self,
            left,
            right,
            max_keys: DEFAULT_MAX_KEYS,
            _model: PhantomData,
        }
    }
}

impl<Q, K: Key, M, L, R> Diff<Q, K, M, L, R> {
    /// Rows per chunk (see [`Chunked::batch_size`]); 1000 by default.
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (mut a, mut b) = (doc_connection(), doc_connection());
    /// let diff = posts::table.chunked_by(posts::id).diff::<Post>(&mut a, &mut b).batch_size(2).run()?;
    /// assert_eq!(diff.chunks, 3);
    /// # Ok(()) }
    /// ```
    pub fn batch_size(mut self, n: u64) -> Self {
        self.chunked = self.chunked.batch_size(n);
        self
    }

    /// How many keys of each kind of difference the report keeps (the
    /// counts stay exact); 1000 by default.
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (mut a, mut b) = (doc_connection(), doc_connection());
    /// diesel::delete(posts::table).execute(&mut b)?;
    /// let diff = posts::table.chunked_by(posts::id).diff::<Post>(&mut a, &mut b).max_keys(2).run()?;
    /// assert_eq!((diff.missing_in_right.count, diff.missing_in_right.keys), (5, vec![1, 2]));
    /// # Ok(()) }
    /// ```
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// Runs the diff.
    ///
    /// Errors: [`Error::InvalidBatchSize`], [`Error::DiffUnsupported`] (a
    /// descending or `limit_total` scan), the query's own errors as a scan
    /// has them, [`Error::DuplicateKey`] (two rows of one side share a key),
    /// and [`Error::DiffFailed`] for a statement that failed on either side
    /// (after the retries of a pool).
    ///
    /// ```
    /// # include!("../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (mut a, mut b) = (doc_connection(), doc_connection());
    /// diesel::insert_into(posts::table)
    ///     .values((posts::id.eq(6), posts::title.eq("six"), posts::published.eq(false)))
    ///     .execute(&mut b)?;
    /// let diff = posts::table.chunked_by(posts::id).diff::<Post>(&mut a, &mut b).run()?;
    /// assert_eq!(diff.missing_in_left.keys, [6]);
    /// # Ok(()) }
    /// ```
    pub fn run<'a>(self) -> Result<DiffReport<K::Value>, Error>
    where
        Q: Clone,
        K::Value: Ord,
        M: PartialEq + Send,
        L: DiffSource<'a, Q, K, M>,
        R: DiffSource<'a, Q, K, M>,
    {
        let started = Instant::now();
        let config = self.chunked.config();
        let bounds = self.chunked.bounds();
        if bounds.desc {
            return Err(Error::DiffUnsupported {
                reason: "a diff compares in ascending key order: drop .desc()".into(),
            });
        }
        if config.limit_total.is_some() {
            return Err(Error::DiffUnsupported {
                reason: "a diff compares the whole key range: bound it with end_at(..) or \
                         within(..) instead of limit_total(..)"
                    .into(),
            });
        }
        let batch = match usize::try_from(config.batch_size) {
            Ok(n) if n > 0 && n < usize::MAX / 2 && i64::try_from(n + 1).is_ok() => n,
            _ => {
                return Err(Error::InvalidBatchSize {
                    batch_size: config.batch_size,
                })
            }
        };
        let key = self.chunked.key;
        let query = self.chunked.query;
        let setup = Setup {
            key,
            bounds: bounds.clone(),
            cache: config.cache_statements,
            batch: config.batch_size,
            retries: config.max_retries,
        };
        let mut left = self.left.prepare(query.clone(), &setup)?;
        let mut right = self.right.prepare(query, &setup)?;
        let same = L::backend() == R::backend();
        let mut run = Run {
            left: &mut left,
            right: &mut right,
            same,
            batch,
            cap: self.max_keys,
            chunk: 0,
            columns: key.describe(),
            left_rows: 0,
            write: &self.chunked.write,
            report: DiffReport {
                missing_in_right: DiffKeys::default(),
                missing_in_left: DiffKeys::default(),
                different: DiffKeys::default(),
                chunks: 0,
                chunks_loaded: 0,
                rows_compared: 0,
                checksums: 0,
                in_database: same && L::CHECKSUMS,
                elapsed: Duration::ZERO,
            },
            started,
            _key: PhantomData::<K>,
        };
        let (start, end) = (bounds.after, bounds.until);
        if run.report.in_database {
            run.by_checksums(start, end)?;
        } else {
            run.by_rows(start, end)?;
        }
        let mut report = run.report;
        report.elapsed = started.elapsed();
        Ok(report)
    }
}

/// What each side's statements are prepared with.
pub struct Setup<K: Key> {
    key: K,
    bounds: Bounds<K::Value>,
    cache: bool,
    batch: u64,
    retries: Option<u32>,
}

impl<K: Key> std::fmt::Debug for Setup<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup")
            .field("key", &self.key.describe())
            .finish_non_exhaustive()
    }
}

/// A source a [`diff`](Chunked::diff) can read query `Q` from, as model `M`
/// ordered by key `K`: any [`ConnectionSource`] that is `Send` and on which
/// the scan `load_iter::<M>` and a write job's key query work.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a side of a diff of this query as this model",
    label = "not a connection source that can load the query's keys and its rows as the model",
    note = "a side is `&mut conn` or `&pool` (both `Send`), on which `load_iter::<M>` of the \
            same query works; the query must be `Clone` (not boxed)"
)]
pub trait DiffSource<'a, Q, K: Key, M>: Sized {
    /// The side's prepared statements.
    type Side: DiffSide<K, M>;
    /// Whether this backend checksums chunks in the database.
    const CHECKSUMS: bool;
    /// The source's backend.
    fn backend() -> TypeId;
    /// Prepares the side's statements.
    fn prepare(self, query: Q, setup: &Setup<K>) -> Result<Self::Side, Error>;
}

/// A failed statement of one side: its attempts and the last error.
#[derive(Debug)]
pub struct Failed {
    attempts: u32,
    source: AttemptError,
}

/// One side's statements, run through its source.
pub trait DiffSide<K: Key, M>: Send {
    /// Up to `limit` keys in `(after, until]`, in key order.
    fn keys(
        &mut self,
        after: Option<StoredKey<K::Value>>,
        until: Option<StoredKey<K::Value>>,
        limit: i64,
    ) -> Result<Vec<StoredKey<K::Value>>, Failed>;
    /// Up to `limit` rows in `(after, until]`, in key order.
    #[allow(clippy::type_complexity)]
    fn rows(
        &mut self,
        after: Option<StoredKey<K::Value>>,
        until: Option<StoredKey<K::Value>>,
        limit: i64,
    ) -> Result<Vec<(StoredKey<K::Value>, M)>, Failed>;
    /// The row count and checksum of `(after, until]`.
    fn checksum(
        &mut self,
        after: Option<StoredKey<K::Value>>,
        until: Option<StoredKey<K::Value>>,
    ) -> Result<(i64, String), Failed>;
}

/// The statements of one side on source `S`.
pub struct Side<S, KB, MB, CB, K: Key, M> {
    source: S,
    retries: u32,
    keys: SeekQuery<KB, K>,
    rows: SeekQuery<MB, K>,
    at: KeyPositions,
    sums: SeekQuery<CB, K>,
    _model: PhantomData<fn() -> M>,
}

impl<S, KB, MB, CB, K: Key, M> std::fmt::Debug for Side<S, KB, MB, CB, K, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Side")
    }
}

/// Runs `f` on `source` until it succeeds, fails for a reason not worth
/// another attempt, or has had `retries` retries.
fn attempt<S: ConnectionSource, T>(
    source: &mut S,
    retries: u32,
    mut f: impl FnMut(&mut S::Connection) -> QueryResult<T>,
) -> Result<T, Failed> {
    let mut n = 0;
    loop {
        n += 1;
        match source.run(n > 1, &mut f) {
            Ok(v) => return Ok(v),
            Err(e) if n <= retries && crate::source::is_transient(&e) => {
                std::thread::sleep(crate::source::retry_delay(n));
            }
            Err(e) => {
                return Err(Failed {
                    attempts: n,
                    source: e,
                })
            }
        }
    }
}

/// The prepared key query of a side on `DB`.
type KeyBase<'a, Q, K, DB> = <Q as PrepareKeys<'a, K, DB>>::Base;
/// The prepared row query of a side on `DB`.
type RowBase<'a, Q, K, M, DB> = <Q as PrepareModel<'a, K, M, DB>>::Base;
/// The prepared checksum query of a side on `DB`.
type SumBase<'a, Q, K, M, DB> = <Q as PrepareChecksum<'a, K, M, DB>>::Base;

impl<'a, S, Q, K, M> DiffSource<'a, Q, K, M> for S
where
    S: ConnectionSource + Send,
    Db<S>: KeysetBackend + 'static,
    K: Key,
    Q: Clone
        + PrepareKeys<'a, K, Db<S>>
        + PrepareModel<'a, K, M, Db<S>>
        + PrepareChecksum<'a, K, M, Db<S>>,
    KeyBase<'a, Q, K, Db<S>>: Send,
    RowBase<'a, Q, K, M, Db<S>>: Send,
    SumBase<'a, Q, K, M, Db<S>>: Send,
    KeyRows: Rows<S::Connection, KeyBase<'a, Q, K, Db<S>>, K>,
    ModelRows<M>: Rows<S::Connection, RowBase<'a, Q, K, M, Db<S>>, K, Item = M>,
    for<'q> Checksum<'q, SumBase<'a, Q, K, M, Db<S>>>: LoadQuery<'q, S::Connection, (i64, String)>,
{
    type Side = Side<
        S,
        KeyBase<'a, Q, K, Db<S>>,
        RowBase<'a, Q, K, M, Db<S>>,
        SumBase<'a, Q, K, M, Db<S>>,
        K,
        M,
    >;
    const CHECKSUMS: bool = !<Db<S> as KeysetBackend>::HASH_SUM.is_empty();

    fn backend() -> TypeId {
        TypeId::of::<Db<S>>()
    }

    fn prepare(self, query: Q, setup: &Setup<K>) -> Result<Self::Side, Error> {
        let mut keys = query
            .clone()
            .prepare_keys(setup.key, setup.bounds.clone())?;
        keys.set_statements(setup.cache, setup.batch);
        let (mut rows, at) = PrepareModel::<K, M, Db<S>>::prepare_model(
            query.clone(),
            setup.key,
            setup.bounds.clone(),
        )?;
        rows.set_statements(setup.cache, setup.batch);
        let mut sums = query.prepare_checksum(setup.key, setup.bounds.clone())?;
        sums.set_statements(setup.cache, setup.batch);
        Ok(Side {
            source: self,
            retries: setup.retries.unwrap_or(S::DEFAULT_MAX_RETRIES),
            keys,
            rows,
            at,
            sums,
            _model: PhantomData,
        })
    }
}

impl<S, KB, MB, CB, K, M> DiffSide<K, M> for Side<S, KB, MB, CB, K, M>
where
    S: ConnectionSource + Send,
    K: Key,
    KB: Send,
    MB: Send,
    CB: Send,
    KeyRows: Rows<S::Connection, KB, K>,
    ModelRows<M>: Rows<S::Connection, MB, K, Item = M>,
    for<'q> Checksum<'q, CB>: LoadQuery<'q, S::Connection, (i64, String)>,
{
    fn keys(
        &mut self,
        after: Option<StoredKey<K::Value>>,
        until: Option<StoredKey<K::Value>>,
        limit: i64,
    ) -> Result<Vec<StoredKey<K::Value>>, Failed> {
        self.keys.set_range(after, until);
        let query = &self.keys;
        let mut rows = KeyRows;
        let loaded = attempt(&mut self.source, self.retries, |conn| {
            Rows::<S::Connection, KB, K>::load(&mut rows, query, conn, limit)
        })?;
        Ok(loaded
            .into_iter()
            .map(|r| LoadedRow::into_parts(r).0)
            .collect())
    }

    fn rows(
        &mut self,
        after: Option<StoredKey<K::Value>>,
        until: Option<StoredKey<K::Value>>,
        limit: i64,
    ) -> Result<Vec<(StoredKey<K::Value>, M)>, Failed> {
        self.rows.set_range(after, until);
        let query = &self.rows;
        let mut rows = ModelRows::<M>::new(self.at);
        let loaded = attempt(&mut self.source, self.retries, |conn| {
            Rows::<S::Connection, MB, K>::load(&mut rows, query, conn, limit)
        })?;
        Ok(loaded.into_iter().map(LoadedRow::into_parts).collect())
    }

    fn checksum(
        &mut self,
        after: Option<StoredKey<K::Value>>,
        until: Option<StoredKey<K::Value>>,
    ) -> Result<(i64, String), Failed> {
        self.sums.set_range(after, until);
        let base = self.sums.base();
        attempt(&mut self.source, self.retries, |conn| {
            Checksum { base }.get_result::<(i64, String)>(conn)
        })
    }
}

/// The `SELECT` list of a checksum's subquery: one hash per row, of the
/// model's columns ([`KeysetBackend::row_hash`]), as rendered once.
#[derive(Debug, Clone)]
pub struct RowHash<MS> {
    model: MS,
    sql: Option<String>,
}

impl<MS> Expression for RowHash<MS> {
    type SqlType = diesel::sql_types::Untyped;
}

impl<MS: AppearsOnTable<QS>, QS> AppearsOnTable<QS> for RowHash<MS> {}

impl<MS: SelectableExpression<QS>, QS> SelectableExpression<QS> for RowHash<MS> {}

impl<MS: ValidGrouping<GB>, GB> ValidGrouping<GB> for RowHash<MS> {
    type IsAggregate = MS::IsAggregate;
}

impl<MS> QueryId for RowHash<MS> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<MS, DB: KeysetBackend> QueryFragment<DB> for RowHash<MS> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let _ = &self.model;
        match &self.sql {
            Some(sql) => {
                out.push_sql(sql);
                Ok(())
            }
            None => Err(diesel::result::Error::QueryBuilderError(
                "no row checksum for this backend or model".into(),
            )),
        }
    }
}

/// The checksum statement of a chunk: its row count and the `XOR` of its
/// rows' hashes ([`KeysetBackend::HASH_SUM`]) over the prepared subquery.
#[allow(missing_debug_implementations)]
pub struct Checksum<'q, B> {
    base: &'q B,
}

impl<B> Query for Checksum<'_, B> {
    type SqlType = (BigInt, Text);
}

impl<B> QueryId for Checksum<'_, B> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<B: QueryFragment<DB>, DB: KeysetBackend> QueryFragment<DB> for Checksum<'_, B> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql(DB::HASH_SUM);
        self.base.walk_ast(out.reborrow())?;
        out.push_sql(") t");
        Ok(())
    }
}

impl<B, Conn> RunQueryDsl<Conn> for Checksum<'_, B> {}

/// Everything a diff's checksum needs of a query: it can be chunked, it
/// selects the default columns, and selecting the hash of `M::as_select()`
/// and adding the seek predicate type-check on `DB`.
pub trait PrepareChecksum<'a, K: Key, M, DB: Backend> {
    /// The prepared query's type.
    type Base;

    /// Boxes the query, selects [`RowHash`], adds the seek predicate.
    fn prepare_checksum(
        self,
        key: K,
        bounds: Bounds<K::Value>,
    ) -> Result<SeekQuery<Self::Base, K>, Error>;
}

/// The hash selection of model `M` on `DB`.
type HashOf<M, DB> = RowHash<diesel::helper_types::AsSelect<M, DB>>;

impl<'a, Q, K, M, DB> PrepareChecksum<'a, K, M, DB> for Q
where
    DB: KeysetBackend + Default,
    DB::QueryBuilder: Default,
    K: Key,
    M: Selectable<DB>,
    diesel::helper_types::AsSelect<M, DB>: QueryFragment<DB>,
    Q: ChunkableQuery<'a, DB> + DefaultSelection,
    Q::Boxed: SelectDsl<HashOf<M, DB>>,
    diesel::dsl::Select<Q::Boxed, HashOf<M, DB>>: FilterDsl<SeekPredicate<K>>,
{
    type Base = diesel::dsl::Filter<diesel::dsl::Select<Q::Boxed, HashOf<M, DB>>, SeekPredicate<K>>;

    fn prepare_checksum(
        self,
        key: K,
        bounds: Bounds<K::Value>,
    ) -> Result<SeekQuery<Self::Base, K>, Error> {
        let boxed = self.into_boxed_checked()?;
        let model = M::as_select();
        // The model's columns, when they render with no bind value (columns,
        // not expressions with parameters): the hash is written around them.
        let rendered = crate::write::debug_sql::<DB, _>(&model);
        let sql = rendered
            .strip_suffix(" -- binds: []")
            .and_then(|columns| DB::row_hash(&crate::query::top_level_items(columns)));
        let selected = SelectDsl::select(boxed, RowHash { model, sql });
        Ok(SeekQuery::new(selected, key, bounds))
    }
}

/// Runs `a` here and `b` on a thread of its own, and returns both results.
fn both<A: Send, B: Send>(a: impl FnOnce() -> A, b: impl FnOnce() -> B + Send) -> (A, B) {
    std::thread::scope(|s| {
        let other = s.spawn(b);
        let here = a();
        let there = other
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (here, there)
    })
}

/// What one comparison of rows found.
struct Tally<V> {
    missing_in_right: DiffKeys<V>,
    missing_in_left: DiffKeys<V>,
    different: DiffKeys<V>,
    rows: u64,
}

impl<V> Default for Tally<V> {
    fn default() -> Self {
        Self {
            missing_in_right: DiffKeys::default(),
            missing_in_left: DiffKeys::default(),
            different: DiffKeys::default(),
            rows: 0,
        }
    }
}

/// The running diff.
struct Run<'r, 'w, A, B, K: Key> {
    left: &'r mut A,
    right: &'r mut B,
    /// Both sides are one backend: a left key binds on the right as stored.
    same: bool,
    batch: usize,
    cap: usize,
    chunk: u64,
    /// The key's columns, for errors.
    columns: String,
    /// The left's rows of the chunks done, for a throttle.
    left_rows: u64,
    write: &'w crate::write::WriteConfig,
    report: DiffReport<K::Value>,
    started: Instant,
    _key: PhantomData<K>,
}

type Bound<V> = Option<StoredKey<V>>;

/// The checksums of one key range on the left and on the right.
type Sums = (Result<(i64, String), Failed>, Result<(i64, String), Failed>);

impl<A, B, K> Run<'_, '_, A, B, K>
where
    K: Key,
    K::Value: Ord,
{
    /// A left key as the right side binds it: as stored on the same
    /// backend, as its Rust value on another.
    fn for_right(&self, key: &Bound<K::Value>) -> Bound<K::Value> {
        match self.same {
            true => key.clone(),
            false => key.as_ref().map(|k| StoredKey::from(k.value.clone())),
        }
    }

    fn failed(&self, side: &'static str, after: &Bound<K::Value>, e: Failed) -> Error {
        Error::DiffFailed {
            side,
            chunk: self.chunk,
            after: after.as_ref().map(|k| format!("{:?}", k.value)),
            attempts: e.attempts,
            source: e.source,
        }
    }

    fn add(&mut self, t: Tally<K::Value>) {
        let cap = self.cap;
        self.report.missing_in_right.extend(t.missing_in_right, cap);
        self.report.missing_in_left.extend(t.missing_in_left, cap);
        self.report.different.extend(t.different, cap);
        self.report.rows_compared += t.rows;
    }

    /// Waits after a chunk of `rows` left rows that took `took`, unless it
    /// was the last one (see [`Chunked::pause`], [`Chunked::throttle`]).
    fn pause(&mut self, rows: usize, took: Duration) {
        self.left_rows += rows as u64;
        let mut wait = self.write.pause.unwrap_or_default();
        if let Some(throttle) = &self.write.throttle {
            let stats = crate::BatchStats {
                batch: self.chunk,
                rows: rows as u64,
                duration: took,
                total_rows: self.left_rows,
                elapsed: self.started.elapsed(),
                next_batch_size: self.batch as u64,
                waited: Duration::ZERO,
                waits: Vec::new(),
            };
            wait = wait.saturating_add(throttle(&stats).unwrap_or_default());
        }
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

impl<A, B, K> Run<'_, '_, A, B, K>
where
    K: Key,
    K::Value: Ord,
{
    /// Compares `(start, end]` chunk by chunk, checksums first.
    fn by_checksums<M>(&mut self, start: Bound<K::Value>, end: Bound<K::Value>) -> Result<(), Error>
    where
        A: DiffSide<K, M>,
        B: DiffSide<K, M>,
        M: PartialEq + Send,
    {
        let n = self.batch;
        let mut lo = start;
        loop {
            let began = Instant::now();
            self.chunk += 1;
            self.report.chunks += 1;
            let mut keys = self
                .left
                .keys(lo.clone(), end.clone(), n as i64 + 1)
                .map_err(|e| self.failed("left", &lo, e))?;
            let more = keys.len() > n;
            keys.truncate(n);
            let hi = match more {
                true => keys.last().cloned(),
                false => end.clone(),
            };
            let mut loaded = false;
            let mut known = None;
            if self.report.checksums == 0 {
                // The first checksum tells whether the sides can checksum
                // this query at all (a column type without a hash function,
                // a model selecting a bound expression): if not, rows.
                let sums = self.checksums(&lo, &hi);
                let unusable = |r: &Result<_, Failed>| {
                    matches!(r, Err(Failed { source: AttemptError::Query(e), .. })
                        if !crate::source::connection_lost(e))
                };
                if unusable(&sums.0) || unusable(&sums.1) {
                    self.report.in_database = false;
                    self.report.checksums = 0;
                    self.report.chunks = 0;
                    self.chunk = 0;
                    return self.by_rows(lo, end);
                }
                known = Some(sums);
            }
            self.split(lo, hi.clone(), &keys, &mut loaded, known)?;
            if loaded {
                self.report.chunks_loaded += 1;
            }
            if !more {
                return Ok(());
            }
            self.pause(keys.len(), began.elapsed());
            lo = hi;
        }
    }

    /// Checksums `(lo, hi]` on both sides (`keys`: its left keys); splits it
    /// if they differ, down to rows.
    fn split<M>(
        &mut self,
        lo: Bound<K::Value>,
        hi: Bound<K::Value>,
        keys: &[StoredKey<K::Value>],
        loaded: &mut bool,
        known: Option<Sums>,
    ) -> Result<(), Error>
    where
        A: DiffSide<K, M>,
        B: DiffSide<K, M>,
        M: PartialEq + Send,
    {
        let (l, r) = match known {
            Some(sums) => sums,
            None => self.checksums(&lo, &hi),
        };
        let l = l.map_err(|e| self.failed("left", &lo, e))?;
        let r = r.map_err(|e| self.failed("right", &lo, e))?;
        if l == r {
            return Ok(());
        }
        if keys.len() <= LEAF_ROWS {
            *loaded = true;
            // the right side in pages of a chunk: the last, open range may
            // hold many rows the left lacks
            return self.compare_rows::<M>(lo, hi, self.batch);
        }
        let part = keys.len().div_ceil(SPLIT);
        let mut sub_lo = lo;
        let mut parts = keys.chunks(part).peekable();
        while let Some(sub) = parts.next() {
            let sub_hi = match parts.peek() {
                Some(_) => sub.last().cloned(),
                None => hi.clone(),
            };
            self.split::<M>(sub_lo, sub_hi.clone(), sub, loaded, None)?;
            sub_lo = sub_hi;
        }
        Ok(())
    }

    /// The checksums of `(lo, hi]` on both sides, the right's on a thread
    /// of its own.
    fn checksums<M>(&mut self, lo: &Bound<K::Value>, hi: &Bound<K::Value>) -> Sums
    where
        A: DiffSide<K, M>,
        B: DiffSide<K, M>,
    {
        let (r_lo, r_hi) = (self.for_right(lo), self.for_right(hi));
        let (left, right) = (&mut *self.left, &mut *self.right);
        self.report.checksums += 1;
        both(
            || left.checksum(lo.clone(), hi.clone()),
            || right.checksum(r_lo, r_hi),
        )
    }

    /// Compares `(start, end]` row by row in chunks.
    fn by_rows<M>(&mut self, start: Bound<K::Value>, end: Bound<K::Value>) -> Result<(), Error>
    where
        A: DiffSide<K, M>,
        B: DiffSide<K, M>,
        M: PartialEq + Send,
    {
        self.compare_rows::<M>(start, end, self.batch)
    }

    /// Compares the rows of `(lo, hi]`: the left's in pages of `page` rows,
    /// each page against the right's rows of its key range (in pages of the
    /// same size), on the right's thread while the left loads its next page.
    fn compare_rows<M>(
        &mut self,
        lo: Bound<K::Value>,
        hi: Bound<K::Value>,
        page: usize,
    ) -> Result<(), Error>
    where
        A: DiffSide<K, M>,
        B: DiffSide<K, M>,
        M: PartialEq + Send,
    {
        let by_rows = !self.report.in_database;
        let fetch = page as i64 + 1;
        let mut lo = lo;
        let mut carry = Carry::default();
        let mut rows = self
            .left
            .rows(lo.clone(), hi.clone(), fetch)
            .map_err(|e| self.failed("left", &lo, e))?;
        loop {
            let began = Instant::now();
            if by_rows {
                self.chunk += 1;
                self.report.chunks += 1;
                self.report.chunks_loaded += 1;
            }
            let more = rows.len() > page;
            rows.truncate(page);
            let upto = match more {
                true => rows.last().map(|r| r.0.clone()),
                false => hi.clone(),
            };
            let n = rows.len();
            let (r_lo, r_upto) = (self.for_right(&lo), self.for_right(&upto));
            let (cap, columns, chunk) = (self.cap, self.columns.clone(), self.chunk);
            let (left, right) = (&mut *self.left, &mut *self.right);
            let carried = std::mem::take(&mut carry);
            let (next, matched) = both(
                || match more {
                    true => left.rows(upto.clone(), hi.clone(), fetch).map(Some),
                    false => Ok(None),
                },
                move || {
                    let range = (r_lo, r_upto);
                    match_rows(
                        right,
                        rows,
                        range,
                        page,
                        cap,
                        (columns, chunk),
                        carried,
                        !more,
                    )
                },
            );
            let (tally, carried) = matched.map_err(|e| match e {
                Matched::Failed(e) => self.failed("right", &lo, e),
                Matched::Error(e) => e,
            })?;
            carry = carried;
            self.add(tally);
            let next = next.map_err(|e| self.failed("left", &upto, e))?;
            match next {
                Some(next) => {
                    if by_rows {
                        self.pause(n, began.elapsed());
                    }
                    rows = next;
                    lo = upto;
                }
                None => return Ok(()),
            }
        }
    }
}

/// Why [`match_rows`] stopped.
enum Matched {
    Failed(Failed),
    Error(Error),
}

/// Rows of the last page that found no twin on the other side, kept to be
/// matched with the next page's: where the two sides store a key in forms
/// that compare differently with a bound (SQLite text timestamps of another
/// format), a row may fall on the other side of a page's end than its twin.
struct Carry<V, M> {
    left: BTreeMap<V, M>,
    right: BTreeMap<V, M>,
}

impl<V, M> Default for Carry<V, M> {
    fn default() -> Self {
        Self {
            left: BTreeMap::new(),
            right: BTreeMap::new(),
        }
    }
}

/// The left's rows of a page, matched with the right's as these arrive: in
/// the same order as the left's while they can be (no lookup), through an
/// index of the rows left once one comes out of order.
struct LeftRows<V, M> {
    rows: Vec<Option<(V, M)>>,
    /// The first row not matched in order.
    next: usize,
    index: Option<BTreeMap<V, usize>>,
}

impl<V: Ord + Clone, M> LeftRows<V, M> {
    /// The rows, in key order; a key twice is `Err(key)`.
    fn new(rows: Vec<(StoredKey<V>, M)>) -> Result<Self, V> {
        let mut out: Vec<Option<(V, M)>> = Vec::with_capacity(rows.len());
        for (key, model) in rows {
            if let Some(Some((last, _))) = out.last() {
                if *last == key.value {
                    return Err(key.value);
                }
            }
            out.push(Some((key.value, model)));
        }
        Ok(Self {
            rows: out,
            next: 0,
            index: None,
        })
    }

    /// The row of `key`, if it is here and not taken yet.
    fn take(&mut self, key: &V) -> Option<M> {
        while matches!(self.rows.get(self.next), Some(None)) {
            self.next += 1;
        }
        if let Some(Some((k, _))) = self.rows.get(self.next) {
            if k == key {
                self.next += 1;
                return self.rows[self.next - 1].take().map(|(_, m)| m);
            }
        }
        let rows = &self.rows;
        let index = self.index.get_or_insert_with(|| {
            rows.iter()
                .enumerate()
                .filter_map(|(i, r)| r.as_ref().map(|(k, _)| (k.clone(), i)))
                .collect()
        });
        let at = index.remove(key)?;
        self.rows[at].take().map(|(_, m)| m)
    }

    /// The rows not taken.
    fn into_remaining(self) -> impl Iterator<Item = (V, M)> {
        self.rows.into_iter().flatten()
    }
}

/// Compares `theirs` (a left row) with `model` (its right twin).
fn compare<V, M: PartialEq>(tally: &mut Tally<V>, key: V, theirs: M, model: &M, cap: usize) {
    if theirs != *model {
        tally.different.push(key, cap);
    }
}

/// Matches the left's rows `rows` of `(lo, upto]` (bounds as the right
/// binds them) with the right's rows of that range, loaded in pages of
/// `page` rows, and with the unmatched rows of the page before (`carry`).
/// Returns what was found and the rows left unmatched, which the next page
/// gets; after the `last` page they are reported.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn match_rows<B, K, M>(
    right: &mut B,
    rows: Vec<(StoredKey<K::Value>, M)>,
    (lo, upto): (Bound<K::Value>, Bound<K::Value>),
    page: usize,
    cap: usize,
    (columns, chunk): (String, u64),
    carry: Carry<K::Value, M>,
    last: bool,
) -> Result<(Tally<K::Value>, Carry<K::Value, M>), Matched>
where
    B: DiffSide<K, M>,
    K: Key,
    K::Value: Ord,
    M: PartialEq,
{
    let duplicate = |value: &K::Value| {
        Matched::Error(Error::DuplicateKey {
            columns: columns.clone(),
            value: format!("{value:?}"),
            batch: chunk,
        })
    };
    let mut tally = Tally::default();
    let mut left = LeftRows::new(rows).map_err(|twice| duplicate(&twice))?;
    let Carry {
        left: mut left_before,
        right: right_before,
    } = carry;
    // right rows of the page before whose twin is in this page
    for (key, model) in right_before {
        tally.rows += 1;
        match left.take(&key) {
            Some(theirs) => compare(&mut tally, key, theirs, &model, cap),
            None => tally.missing_in_left.push(key, cap),
        }
    }
    let mut right_now: BTreeMap<K::Value, M> = BTreeMap::new();
    let mut after = lo;
    loop {
        let mut loaded = right
            .rows(after.clone(), upto.clone(), page as i64 + 1)
            .map_err(Matched::Failed)?;
        let more = loaded.len() > page;
        loaded.truncate(page);
        let next = loaded.last().map(|r| r.0.clone());
        let mut seen: Option<K::Value> = None;
        for (key, model) in loaded {
            if seen.as_ref() == Some(&key.value) {
                return Err(duplicate(&key.value));
            }
            let theirs = match left.take(&key.value) {
                Some(theirs) => Some(theirs),
                None => left_before.remove(&key.value),
            };
            match theirs {
                Some(theirs) => {
                    tally.rows += 1;
                    compare(&mut tally, key.value.clone(), theirs, &model, cap);
                }
                // kept for the next page, up to a page of them
                None if !last && right_now.len() < page => {
                    if right_now.insert(key.value.clone(), model).is_some() {
                        return Err(duplicate(&key.value));
                    }
                }
                None => {
                    tally.rows += 1;
                    tally.missing_in_left.push(key.value.clone(), cap);
                }
            }
            seen = Some(key.value);
        }
        if !more {
            break;
        }
        after = next;
    }
    for (key, _) in left_before {
        tally.rows += 1;
        tally.missing_in_right.push(key, cap);
    }
    let mut carry = Carry {
        left: left.into_remaining().collect(),
        right: right_now,
    };
    if last {
        for (key, _) in std::mem::take(&mut carry.left) {
            tally.rows += 1;
            tally.missing_in_right.push(key, cap);
        }
    }
    Ok((tally, carry))
}

#[cfg(test)]
mod tests {
    use super::{DiffKeys, LeftRows};
    use crate::stored::StoredKey;

    fn rows(keys: &[i32]) -> Vec<(StoredKey<i32>, char)> {
        keys.iter()
            .map(|&k| (StoredKey::from(k), char::from(b'a' + k as u8)))
            .collect()
    }

    #[test]
    fn left_rows_match_in_order_and_out_of_it() {
        let mut left = LeftRows::new(rows(&[1, 2, 3, 5, 8])).unwrap();
        assert_eq!(left.take(&1), Some('b'));
        assert_eq!(left.take(&2), Some('c'));
        // out of order: through the index
        assert_eq!(left.take(&5), Some('f'));
        assert_eq!(left.take(&4), None);
        // back in order after the index was built
        assert_eq!(left.take(&3), Some('d'));
        assert_eq!(left.take(&3), None, "a row is taken once");
        assert_eq!(left.take(&5), None);
        let rest: Vec<(i32, char)> = left.into_remaining().collect();
        assert_eq!(rest, [(8, 'i')]);
        assert_eq!(LeftRows::new(rows(&[1, 2, 2])).err(), Some(2));
    }

    #[test]
    fn keys_are_capped_and_counts_exact() {
        let mut keys = DiffKeys::default();
        for k in 0..5 {
            keys.push(k, 3);
        }
        let mut more = DiffKeys::default();
        more.push(9, 3);
        keys.extend(more, 4);
        assert_eq!((keys.count, keys.keys.clone()), (6, vec![0, 1, 2, 9]));
        assert!(keys.is_truncated());
        let mut none: DiffKeys<i32> = DiffKeys::default();
        none.push(1, 0);
        assert_eq!((none.count, none.keys.len()), (1, 0));
    }
}
