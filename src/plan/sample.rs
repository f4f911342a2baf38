//! The sampled planner, [`Chunked::partitions_sampled`]: slices from a sample
//! of the keys instead of every key: a number of rows read (or index probes) per
//! slice that does not grow with the table.
//!
//! Both methods below run on the user's query as the scan would see it (its
//! filters and joins, the scan's bounds), with one more condition added to its
//! `WHERE` clause, and end like [`partitions`](Chunked::partitions): the
//! sampled keys, each with a weight (how many rows it stands for), sorted in key
//! order; the boundaries are the keys where the running weight crosses
//! `j · total / n`. On PostgreSQL the sample aims at [`SAMPLE_PER_SLICE`]
//! rows per slice, drawn independently: a slice then holds `ideal · (1 ± 0.1)`
//! rows (one standard deviation). The index probes of the other backends are
//! spread evenly instead, which needs fewer of them ([`POINTS_PER_SLICE`]).
//!
//! **PostgreSQL: random row addresses.** A heap table of `P` pages has at most
//! `P · S` row addresses `(page, slot)` (`S` = 291 for 8 kB pages). The planner
//! draws addresses uniformly at random and keeps the rows found there:
//!
//! ```text
//! SELECT d.k0 [, ...] FROM (
//!     SELECT <key columns> AS k0 [, ...] FROM ...
//!     WHERE (<the query's filters>) AND <the scan's bounds>
//!       AND "posts".ctid = ANY('{"(17,3)","(912,40)",...}'::tid[])
//! ) d ORDER BY d.k0 [, ...]
//! ```
//!
//! A TID scan fetches exactly those addresses, whatever the table's size; every
//! live row has the same chance to be drawn, so the sample is uniform over the
//! rows (not over the key range: skewed keys and gaps do not matter), and each
//! drawn row stands for `P · S / draws` rows. Draws start at the rate of live rows
//! per address that the table's statistics give (`reltuples`; four per wanted
//! key without them), and grow with the observed hit rate (deleted rows, the query's filters) until
//! the sample is large enough. Any key works, composite and text keys included
//! (the database sorts the sample). The table sampled is the one of the key's
//! first column; in a join, the other tables are joined to the sampled rows.
//!
//! **MariaDB/MySQL and SQLite: index probes.** InnoDB and SQLite have no row
//! addresses to draw. The planner probes the key's index instead, for integer
//! keys of one column: at a point `x` of the key range, the next key and its
//! predecessor, many probes per statement (`UNION ALL`):
//!
//! ```text
//! -- MariaDB/MySQL: MIN/MAX, answered from the index while the term is optimized
//! SELECT MIN(chunked_q0.chunked_k0) AS chunked_k0 FROM (
//!     SELECT `posts`.`id` AS chunked_k0 FROM `posts`
//!     WHERE (<the query's filters>) AND <the scan's bounds> AND `posts`.`id` >= 48213
//! ) chunked_q0 HAVING MIN(chunked_q0.chunked_k0) IS NOT NULL
//! UNION ALL ...
//! -- SQLite (which would scan for MIN): the first row in key order
//! SELECT chunked_q0.chunked_k0 FROM (
//!     SELECT "posts"."id" AS chunked_k0 FROM "posts" WHERE ... AND "posts"."id" >= 48213
//!     ORDER BY chunked_k0 LIMIT 1
//! ) chunked_q0 UNION ALL ...
//! ```
//!
//! A uniform point finds key `k` with probability `(k - pred(k)) / range`, so
//! each found key is weighted by the inverse (a Hansen–Hurwitz estimate: exact
//! in expectation, however gappy or skewed the keys). Since uniform points
//! rarely land in a dense part of a skewed range, a second round draws its
//! points from the density the first round found (over buckets of about four
//! first-round points each, mixed with 20 % uniform), and each key's weight is
//! the inverse of its expected number of hits over both rounds. Each round
//! draws [`POINTS_PER_SLICE`] points per slice, *stratified*: the `i`-th of `m`
//! points is the round's distribution inverted at a random place in
//! `[i / m, (i + 1) / m)`, so that every part of the range gets its share of
//! points give or take one (not give or take a square root, as with
//! independent draws), while each point alone keeps the round's distribution
//! and the weights stay exact. A composite or non-integer key is
//! [`Error::SamplingUnsupported`] there.
//!
//! Outliers make the key range far wider than the keys: ids `1..=20000` and
//! one row at `2147483647`, or rows at `i64::MIN` and `i64::MAX`. Nearly every
//! point then lands in the empty stretch before an outlier, and the dense keys
//! get no point, in either round. So the first round also measures the empty
//! stretches it found (from a hit back to its predecessor): when those longer
//! than two strata make up half of the range or more, they are taken out of
//! it, the keys that end them are counted exactly (weight 1), and the first
//! round starts again on what is left, at most 16 times (each halves the
//! range). The probes' points are then drawn over the positions of the range
//! that is left, and the weights stay exact there, since the stretch between a
//! found key and its predecessor is never cut.
//!
//! **Small inputs.** When the sample would touch about as many rows as the
//! input holds (a table of fewer than `4 · SAMPLE_PER_SLICE · n` row addresses
//! or a key range that short), every key is read instead, and the slices are
//! the exact planner's.
//!
//! The random draws come from a fixed seed: the same table gives the same
//! slices.

use std::any::{Any, TypeId};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A statement of the sample, running (ready at once on a blocking
/// connection).
pub(crate) type BoxFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

use diesel::backend::Backend;
use diesel::connection::Connection;
use diesel::query_builder::SqlQuery;
use diesel::query_dsl::methods::FilterDsl;
use diesel::query_dsl::LoadQuery;
use diesel::RunQueryDsl;

use super::{KeyColumns, Partition, PreparePlan};
use crate::backend::KeysetBackend;
use crate::builder::{Chunked, PlanInner};
use crate::error::Error;
use crate::key::{Key, KeySql, KeyValue};
use crate::stored::StoredKey;

mod sql;

use sql::{render, table_of, tid_condition, FirstColumn};
pub use sql::{SampleFilter, SampleQuery, SampleRow, Shared, TableSize};

/// How many sampled keys [`Chunked::partitions_sampled`] aims at per slice.
pub const SAMPLE_PER_SLICE: u64 = 200;

/// Probes per statement on MariaDB/MySQL and SQLite (SQLite allows 500 terms
/// in a compound `SELECT`).
const PROBES_PER_STATEMENT: usize = 250;

/// Points per slice in each of the two rounds of index probes on
/// MariaDB/MySQL and SQLite (see the module docs).
pub const POINTS_PER_SLICE: u64 = 48;

impl<Q, K: Key> Chunked<Q, K> {
    /// Splits the key range of the query into `n` disjoint slices that
    /// together cover it, like [`partitions`](Self::partitions), from a sample
    /// of the keys: the rows it reads (or the index probes it makes) do not grow
    /// with the table, and each slice holds the ideal `rows / n` rows to within
    /// 1.5× (measured: 1.20× at most), on uniform and on skewed keys.
    ///
    /// The slices are the same kind of value as those of `partitions`, with the
    /// same ends (the first starts where the scan starts, the last ends where
    /// it ends: the scan's bounds, or open), and a worker scans one with
    /// [`within`](Self::within) on the same query; every row is in exactly one
    /// slice. Only their sizes are estimates: a slice's `rows` is the number of
    /// rows the sample says it holds. A descending scan with `start_after` or
    /// `end_at` is [`Error::PartitionBounds`], as there; `n = 0` and `n` above
    /// [`MAX_PARTITIONS`](crate::plan::MAX_PARTITIONS) are
    /// [`Error::InvalidPartitionCount`].
    ///
    /// How the sample is drawn (module [`plan::sample`](crate::plan::sample)):
    ///
    /// - **PostgreSQL:** rows at random addresses of the key's table (a TID
    ///   scan), about [`SAMPLE_PER_SLICE`] per slice; any key, composite
    ///   included.
    /// - **MariaDB/MySQL, SQLite:** probes of the key's index at points of the
    ///   key range, weighted by the gaps they find; integer keys of one
    ///   column, else [`Error::SamplingUnsupported`] (use `partitions`). About
    ///   `4 · POINTS_PER_SLICE · n` probes (two rounds of points, and each
    ///   key's predecessor), 250 per statement, each an index descent; keys
    ///   with outliers far from the others (a row at `i32::MAX` after ids
    ///   from 1) cost another first round or a few, which leave the outliers'
    ///   empty stretches out.
    ///
    /// Where the input is about as small as the sample, every key is read and
    /// the slices are exactly those of `partitions`. The sampled rows are read
    /// through the query, so its filters apply; a filter that keeps few rows of
    /// the sampled table makes the sample costlier (more draws per kept row),
    /// and a query that the database cannot run as an index range per probe
    /// (`DISTINCT`, a grouped join) makes each probe a scan: plan such queries
    /// with `partitions`.
    ///
    /// ```
    /// # include!("../../tests/doc/setup.rs");
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let conn = &mut doc_connection();
    /// let parts = posts::table.chunked_by(posts::id).partitions_sampled(2, conn)?;
    /// // five rows: every key is read, the slices are the exact ones
    /// assert_eq!(parts, posts::table.chunked_by(posts::id).partitions(2, conn)?);
    ///
    /// // every slice scanned: each row exactly once
    /// let mut ids = Vec::new();
    /// for p in &parts {
    ///     for post in posts::table.chunked_by(posts::id).within(p).load_iter::<Post>(&mut *conn) {
    ///         ids.push(post?.id);
    ///     }
    /// }
    /// assert_eq!(ids, [1, 2, 3, 4, 5]);
    /// # Ok(()) }
    /// ```
    pub fn partitions_sampled<'a, C>(
        self,
        n: usize,
        conn: &mut C,
    ) -> Result<Vec<Partition<K::Value>>, Error>
    where
        C: Connection,
        C::Backend: KeysetBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        K: KeySql<C::Backend>,
        Q: PreparePlan<'a, K, KeyColumns<K>, C::Backend>,
        PlanInner<'a, Q, K, KeyColumns<K>, C::Backend>: FilterDsl<SampleFilter>,
        SampleQuery<Shared<SampledInner<'a, Q, K, C::Backend>>, K>: LoadQuery<'a, C, SampleRow<K>>,
        SqlQuery: LoadQuery<'a, C, TableSize>,
    {
        let filter = SampleFilter::default();
        let (setup, inner) = self.sampled::<C::Backend>(n, &filter)?;
        let mut run = Runner {
            inner: Shared(Arc::new(inner)),
            filter,
            conn,
            _key: std::marker::PhantomData,
        };
        // The blocking statements answer at once: the sampler's futures are
        // ready when polled.
        let sample = ready(setup.sample(&mut run))?;
        setup.slices(sample)
    }

    /// What [`partitions_sampled`](Self::partitions_sampled) and its async
    /// twin start from: the checks of `n` and of the key, and the prepared
    /// query with its sampling condition `filter`.
    #[allow(clippy::type_complexity)]
    pub(crate) fn sampled<'a, DB>(
        self,
        n: usize,
        filter: &SampleFilter,
    ) -> Result<(Sampling<K>, SampledInner<'a, Q, K, DB>), Error>
    where
        DB: KeysetBackend + Default,
        DB::QueryBuilder: Default,
        K: KeySql<DB>,
        Q: PreparePlan<'a, K, KeyColumns<K>, DB>,
        PlanInner<'a, Q, K, KeyColumns<K>, DB>: FilterDsl<SampleFilter>,
    {
        if n == 0 || n > super::MAX_PARTITIONS {
            return Err(Error::InvalidPartitionCount { n });
        }
        let bounds = self.bounds();
        let ends = super::outer_ends::<K>(&bounds)?;
        let key = self.key;
        let column = render::<DB, _>(&FirstColumn(key))?;
        let pg = DB::TID_SAMPLING;
        if !pg && !is_int::<K::Value>() {
            return Err(Error::SamplingUnsupported {
                columns: key.describe(),
                reason: "on this backend the sample probes the key's index at points of \
                         the key range, which needs an integer key of one column; use \
                         partitions(n), which reads every key"
                    .into(),
            });
        }
        let inner = self
            .query
            .prepare_plan(key, bounds, super::key_columns(key))?;
        let inner = FilterDsl::filter(inner, filter.clone());
        let setup = Sampling {
            key,
            n,
            ends,
            column,
            pg,
        };
        Ok((setup, inner))
    }
}

/// A sampled planning of `n` slices, once its query is prepared: what is
/// sampled and how the sample becomes slices. The statements run on a
/// [`SampleStatements`], blocking or async.
pub(crate) struct Sampling<K: Key> {
    key: K,
    n: usize,
    ends: super::OuterEnds<K::Value>,
    column: String,
    pg: bool,
}

impl<K: Key> Sampling<K> {
    /// Draws the sample, with the statements of `run`.
    pub(crate) async fn sample<S>(&self, run: &mut S) -> Result<Weighted<K::Value>, Error>
    where
        S: SampleStatements<K::Value>,
    {
        let target = SAMPLE_PER_SLICE * self.n as u64;
        match self.pg {
            true => tid_sample(run, &self.column, target).await,
            false => {
                let per_round = POINTS_PER_SLICE * self.n as u64;
                probe_sample(run, &self.column, target, per_round).await
            }
        }
    }

    /// The slices the sample gives.
    pub(crate) fn slices(
        self,
        sample: Weighted<K::Value>,
    ) -> Result<Vec<Partition<K::Value>>, Error> {
        if let Some((k, _)) = sample.iter().find(|(k, _)| k.has_stored_form()) {
            return Err(Error::StoredForm {
                columns: self.key.describe(),
                value: format!("{k:?}"),
            });
        }
        let sample = sample.into_iter().map(|(k, w)| (k.value, w)).collect();
        Ok(super::slices_of(boundaries(sample, self.n), self.ends))
    }
}

/// The output of a future that is ready when first polled (the sampler on
/// blocking statements, whose futures are `std::future::ready`).
fn ready<T>(future: impl std::future::Future<Output = Result<T, Error>>) -> Result<T, Error> {
    use std::task::{Context, Poll, Waker};
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(out) => out,
        Poll::Pending => Err(Error::SamplingUnsupported {
            columns: String::new(),
            reason: "a blocking statement of the sample did not answer".into(),
        }),
    }
}

/// The statements a sample runs: on a blocking connection (whose futures
/// are ready at once) or an async one. One sampler, two ways to run its
/// statements.
pub(crate) trait SampleStatements<V> {
    /// The query's keys, in key order, where `condition` holds.
    fn keys(&mut self, condition: String) -> BoxFuture<'_, Result<Vec<StoredKey<V>>, Error>>;
    /// One statement of probes (see [`SampleQuery`]).
    fn load(
        &mut self,
        probes: Vec<(String, bool)>,
    ) -> BoxFuture<'_, Result<Vec<StoredKey<V>>, Error>>;
    /// PostgreSQL: the size of `table`, in pages, slots and rows.
    fn size(&mut self, table: String) -> BoxFuture<'_, Result<TableSize, Error>>;
}

/// The next key (or, with `desc`, the previous one) of each probe, a
/// condition on the key; a probe that finds none gives no row.
async fn probe<V, S: SampleStatements<V>>(
    run: &mut S,
    probes: Vec<(String, bool)>,
) -> Result<Vec<StoredKey<V>>, Error> {
    let mut out = Vec::with_capacity(probes.len());
    for chunk in probes.chunks(PROBES_PER_STATEMENT) {
        out.extend(run.load(chunk.to_vec()).await?);
    }
    Ok(out)
}

/// The statement of a sample's probes, as its twin on a blocking connection
/// and on an async one runs it.
pub(crate) fn sample_query<I, K: Key>(
    inner: I,
    filter: &SampleFilter,
    probes: Vec<(String, bool)>,
) -> SampleQuery<I, K> {
    SampleQuery {
        inner,
        filter: filter.clone(),
        probes,
        _key: std::marker::PhantomData,
    }
}

/// The statement that reads the size of `table` (PostgreSQL).
pub(crate) fn size_query(table: &str) -> SqlQuery {
    let literal = table.replace('\'', "''");
    diesel::sql_query(format!(
        "SELECT CAST(COALESCE(pg_relation_size(to_regclass('{literal}')), -1) \
         / current_setting('block_size')::bigint AS BIGINT) AS pages, \
         CAST((current_setting('block_size')::bigint - 24) / 28 AS BIGINT) AS slots, \
         CAST(COALESCE((SELECT reltuples FROM pg_class \
         WHERE oid = to_regclass('{literal}')), -1) AS BIGINT) AS tuples"
    ))
}

/// The error of a statement of the sample.
pub(crate) fn sample_error(context: &'static str) -> impl FnOnce(diesel::result::Error) -> Error {
    move |source| Error::Query { context, source }
}

/// The prepared query of [`Chunked::partitions_sampled`]: the planning query
/// with the sampling condition.
pub type SampledInner<'a, Q, K, DB> =
    diesel::dsl::Filter<PlanInner<'a, Q, K, KeyColumns<K>, DB>, SampleFilter>;

/// Sampled keys, each with the rows it stands for.
type Weighted<V> = Vec<(StoredKey<V>, f64)>;

/// The sample's statements on a blocking connection.
struct Runner<'c, I, K, C> {
    inner: Shared<I>,
    filter: SampleFilter,
    conn: &'c mut C,
    _key: std::marker::PhantomData<K>,
}

impl<'a, I, K: Key, C: Connection> SampleStatements<K::Value> for Runner<'_, I, K, C>
where
    SampleQuery<Shared<I>, K>: LoadQuery<'a, C, SampleRow<K>>,
    SqlQuery: LoadQuery<'a, C, TableSize>,
{
    fn keys(
        &mut self,
        condition: String,
    ) -> BoxFuture<'_, Result<Vec<StoredKey<K::Value>>, Error>> {
        self.filter.set(&condition);
        self.load(Vec::new())
    }

    fn load(
        &mut self,
        probes: Vec<(String, bool)>,
    ) -> BoxFuture<'_, Result<Vec<StoredKey<K::Value>>, Error>> {
        let query = sample_query::<_, K>(self.inner.clone(), &self.filter, probes);
        let rows = query
            .load::<SampleRow<K>>(self.conn)
            .map_err(sample_error("sampling the keys for the partitions"));
        Box::pin(std::future::ready(
            rows.map(|rows| rows.into_iter().map(|r| r.0).collect()),
        ))
    }

    fn size(&mut self, table: String) -> BoxFuture<'_, Result<TableSize, Error>> {
        let size = size_query(&table)
            .get_result::<TableSize>(self.conn)
            .map_err(sample_error("reading the size of the sampled table"));
        Box::pin(std::future::ready(size))
    }
}

/// PostgreSQL: rows at random addresses (see the module docs), each weighted
/// by `addresses / draws`; every row when the table is small.
async fn tid_sample<V: KeyValue, S: SampleStatements<V>>(
    run: &mut S,
    column: &str,
    target: u64,
) -> Result<Weighted<V>, Error> {
    let table = table_of(column).ok_or_else(|| Error::SamplingUnsupported {
        columns: column.to_string(),
        reason: "the key column's table could not be read from its SQL".into(),
    })?;
    let size = run.size(table.to_string()).await?;
    if size.pages < 0 {
        return Err(Error::SamplingUnsupported {
            columns: column.to_string(),
            reason: format!("no table {table} found to sample (a view?); use partitions(n)"),
        });
    }
    let slots = (size.pages as u64).saturating_mul(size.slots.max(1) as u64);
    if slots <= 4 * target {
        return all(run).await;
    }
    let mut rng = Rng::new(target);
    let mut drawn: HashSet<u64> = HashSet::new();
    // draws for `target` rows at the hit rate the statistics give (filters
    // lower it; the loop below draws more then), four per key without them
    let mut want = if size.tuples > 0 {
        let per_row = slots as f64 / size.tuples as f64;
        ((target as f64 * per_row * 1.15).ceil() as u64).clamp(target, slots)
    } else {
        4 * target
    };
    loop {
        while (drawn.len() as u64) < want {
            drawn.insert(rng.below(slots));
        }
        // In order: the same draws give the same statement.
        let mut tids: Vec<u64> = drawn.iter().copied().collect();
        tids.sort_unstable();
        let keys = run.keys(tid_condition(table, &tids, size.slots)).await?;
        let got = keys.len() as u64;
        if got >= target {
            let w = slots as f64 / tids.len() as f64;
            return Ok(keys.into_iter().map(|k| (k, w)).collect());
        }
        want = next_draws(want, got, target);
        if want >= slots / 2 {
            return all(run).await;
        }
    }
}

/// Every key of the query, each standing for itself.
async fn all<V, S: SampleStatements<V>>(run: &mut S) -> Result<Weighted<V>, Error> {
    let keys = run.keys("1 = 1".into()).await?;
    Ok(keys.into_iter().map(|k| (k, 1.0)).collect())
}

/// The draws the next round needs, from the hit rate so far (at most eight
/// times as many).
fn next_draws(drawn: u64, got: u64, target: u64) -> u64 {
    let rate = got.max(1) as f64 / drawn as f64;
    let need = (target as f64 / rate * 1.2).ceil() as u64;
    need.clamp(drawn + 1, drawn.saturating_mul(8))
}

/// MariaDB/MySQL and SQLite: weighted index probes (see the module docs);
/// every key when the key range is short.
async fn probe_sample<V: KeyValue, S: SampleStatements<V>>(
    run: &mut S,
    column: &str,
    target: u64,
    per_round: u64,
) -> Result<Weighted<V>, Error> {
    let int = |k: &StoredKey<V>| int_of(&k.value).unwrap_or(0);
    let ends = probe(run, vec![("1 = 1".into(), false), ("1 = 1".into(), true)]).await?;
    let (Some(min), Some(max)) = (ends.iter().map(int).min(), ends.iter().map(int).max()) else {
        return Ok(Vec::new());
    };
    let mut rng = Rng::new(target);
    let m1 = per_round;
    // The part of the key range still sampled, and the keys of the empty
    // stretches taken out of it, counted exactly (see `Line`).
    let mut line = Line::new(min, max);
    let mut exact: Vec<(StoredKey<V>, f64)> = Vec::new();
    let mut pred = HashMap::new();
    let mut restarts = 0;
    let (range, mut hits, buckets) = loop {
        let range = line.len();
        if range <= 4 * i128::from(target) {
            return all(run).await;
        }
        // about four first-round points per bucket, so that a bucket's
        // density is read from more than one key
        let buckets = (i128::from(m1) / 4).clamp(1, range);
        let widths = Buckets { range, buckets };
        // Round 1: uniform points, spread evenly over the range.
        let uniform = cumulative((0..buckets as usize).map(|b| widths.width(b) / range as f64));
        let points = stratified(m1, &uniform, |b| widths.start(b), &mut rng);
        let points: Vec<i128> = points.into_iter().map(|c| line.to_real(c)).collect();
        let hits = probe(run, next_probes(column, &points)).await?;
        pred = predecessors(run, column, &hits, min, pred).await?;
        // Empty stretches longer than two strata: the outliers of a key
        // range much wider than its keys (a row at i32::MAX after ids from
        // 1) leave most points there, and the keys elsewhere unseen. When
        // they make up half of what is left, they are taken out and counted
        // exactly, and round 1 starts again on the rest.
        let stratum = range / i128::from(m1);
        let mut gaps: Vec<(i128, usize)> = Vec::new();
        for (i, k) in hits.iter().enumerate() {
            let (v, p) = (int(k), pred[&int(k)]);
            if v - p > 2 * stratum && !gaps.iter().any(|(g, _)| *g == v) {
                gaps.push((v, i));
            }
        }
        let empty: i128 = gaps.iter().map(|(v, _)| v - pred[v]).sum();
        if restarts < MAX_RESTARTS && 2 * empty >= range {
            restarts += 1;
            for (v, i) in gaps {
                line.remove(pred[&v] + 1, v);
                exact.push((hits[i].clone(), 1.0));
            }
            continue;
        }
        break (range, hits, buckets);
    };
    let widths = Buckets { range, buckets };
    let width = |b: usize| widths.width(b);
    // Positions on the line (the range without what was taken out).
    let at = |v: i128| line.to_line(v);
    // The first round's density over the buckets, mixed with 20 % uniform.
    let mut mass = vec![0f64; buckets as usize];
    for k in &hits {
        let (v, p) = (int(k), pred[&int(k)]);
        mass[widths.of(at(v))] += range as f64 / (v - p) as f64;
    }
    let total: f64 = mass.iter().sum::<f64>().max(f64::MIN_POSITIVE);
    let cdf = cumulative(
        mass.iter()
            .enumerate()
            .map(|(b, m)| 0.8 * m / total + 0.2 * width(b) / range as f64),
    );
    // P(point <= c) under the second round's density, for a position c.
    let below = |c: i128| -> f64 {
        if c < 0 {
            return 0.0;
        }
        let b = widths.of(c);
        let s = widths.start(b as i128);
        cdf[b] + (cdf[b + 1] - cdf[b]) * (c - s + 1) as f64 / width(b)
    };
    // Round 2: points from that density, spread evenly over it.
    let m2 = per_round;
    let points = stratified(m2, &cdf, |b| widths.start(b), &mut rng);
    let points: Vec<i128> = points.into_iter().map(|c| line.to_real(c)).collect();
    let second = probe(run, next_probes(column, &points)).await?;
    pred = predecessors(run, column, &second, min, pred).await?;
    hits.extend(second);
    // Each hit weighted by the inverse of its key's chance over both rounds.
    // (The stretch from a hit's predecessor to it holds no other key, so it
    // lies on the line in one piece: it ends at the hit's position.)
    let mut sample: Vec<(StoredKey<V>, f64)> = hits
        .into_iter()
        .map(|k| {
            let (v, p) = (int(&k), pred[&int(&k)]);
            let c = at(v);
            let chance = m1 as f64 * (v - p) as f64 / range as f64
                + m2 as f64 * (below(c) - below(c - (v - p)));
            (k, 1.0 / chance)
        })
        .chain(exact)
        .collect();
    sample.sort_by_key(|(k, _)| int(k));
    Ok(sample)
}

/// How many times the first round of index probes starts again on a smaller
/// line (see `probe_sample`); each time at least halves the line.
const MAX_RESTARTS: u32 = 16;

/// `buckets` buckets of about equal width over the positions `0..range`:
/// bucket `b` holds the positions `c` with `c · buckets / range = b`.
struct Buckets {
    range: i128,
    buckets: i128,
}

impl Buckets {
    fn start(&self, b: i128) -> i128 {
        (b * self.range + self.buckets - 1) / self.buckets
    }
    fn of(&self, c: i128) -> usize {
        ((c * self.buckets / self.range) as usize).min(self.buckets as usize - 1)
    }
    fn width(&self, b: usize) -> f64 {
        (self.start(b as i128 + 1) - self.start(b as i128)) as f64
    }
}

/// The part of the key range the index probes still sample: the range
/// `min..=max` without the empty stretches taken out, each of them up to and
/// including the key that ends it (that key is counted exactly instead). Its
/// values are numbered by position, `0..len()`, and the probes' points are
/// drawn over the positions. A key that a point finds lies on the line, and
/// so does the stretch from its predecessor to it: every piece of the line
/// ends at a key on the line (the predecessor of a stretch taken out, or
/// `max`), so the next key after a point on the line is in the same piece.
struct Line {
    /// The pieces, `(first, last)` values, in order.
    pieces: Vec<(i128, i128)>,
    /// The position of each piece's first value.
    offsets: Vec<i128>,
}

impl Line {
    fn new(min: i128, max: i128) -> Self {
        Line {
            pieces: vec![(min, max)],
            offsets: vec![0],
        }
    }

    fn len(&self) -> i128 {
        let (last, (a, b)) = (self.offsets.len() - 1, self.pieces[self.pieces.len() - 1]);
        self.offsets[last] + (b - a + 1)
    }

    /// The value at position `c` (`0..len()`).
    fn to_real(&self, c: i128) -> i128 {
        let i = self.offsets.partition_point(|o| *o <= c).saturating_sub(1);
        self.pieces[i].0 + (c - self.offsets[i])
    }

    /// The position of value `v`, which is on the line (a value before the
    /// line's first gives a negative position).
    fn to_line(&self, v: i128) -> i128 {
        let i = self
            .pieces
            .partition_point(|(a, _)| *a <= v)
            .saturating_sub(1);
        self.offsets[i] + (v - self.pieces[i].0)
    }

    /// Takes the values `a..=b` out; they lie in one piece.
    fn remove(&mut self, a: i128, b: i128) {
        let Some(i) = self.pieces.iter().position(|(s, e)| *s <= a && b <= *e) else {
            return;
        };
        let (s, e) = self.pieces[i];
        let mut parts = Vec::with_capacity(2);
        if s < a {
            parts.push((s, a - 1));
        }
        if b < e {
            parts.push((b + 1, e));
        }
        self.pieces.splice(i..=i, parts);
        let mut offset = 0;
        self.offsets = self
            .pieces
            .iter()
            .map(|(s, e)| {
                let o = offset;
                offset += e - s + 1;
                o
            })
            .collect();
    }
}

/// The running sums of `weights`, from 0: a cumulative distribution over the
/// buckets when the weights sum to 1.
fn cumulative(weights: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut cdf = vec![0.0];
    for w in weights {
        cdf.push(cdf[cdf.len() - 1] + w);
    }
    cdf
}

/// `m` points of a density that is uniform within each bucket, bucket `b`
/// holding `cdf[b + 1] - cdf[b]` of it: the `i`-th point is the inverse of the
/// distribution at a random place in `[i / m, (i + 1) / m)`. Each point taken
/// alone still follows the density (the expected number of points at or below
/// `v` is `m · cdf(v)`), but together they cover it evenly, so a region gets
/// its share of points give or take one, not give or take a square root.
fn stratified(
    m: u64,
    cdf: &[f64],
    bucket_start: impl Fn(i128) -> i128,
    rng: &mut Rng,
) -> Vec<i128> {
    let (last, total) = (cdf.len() - 2, cdf[cdf.len() - 1]);
    (0..m)
        .map(|i| {
            let u = (i as f64 + rng.unit()) / m as f64 * total;
            let b = cdf.partition_point(|c| *c <= u).saturating_sub(1).min(last);
            let (s, e) = (bucket_start(b as i128), bucket_start(b as i128 + 1));
            let within = (u - cdf[b]) / (cdf[b + 1] - cdf[b]).max(f64::MIN_POSITIVE);
            s + ((within * (e - s) as f64) as i128).clamp(0, e - s - 1)
        })
        .collect()
}

/// `column >= x` probes, ascending, one per point.
fn next_probes(column: &str, points: &[i128]) -> Vec<(String, bool)> {
    points
        .iter()
        .map(|x| (format!("{column} >= {x}"), false))
        .collect()
}

/// The predecessor of every key of `hits` not yet in `known` (`min - 1` for the
/// first key): the largest key below it.
async fn predecessors<V: KeyValue, S: SampleStatements<V>>(
    run: &mut S,
    column: &str,
    hits: &[StoredKey<V>],
    min: i128,
    mut known: HashMap<i128, i128>,
) -> Result<HashMap<i128, i128>, Error> {
    let mut keys: Vec<i128> = hits
        .iter()
        .filter_map(|k| int_of(&k.value))
        .filter(|k| !known.contains_key(k))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let probes = keys
        .iter()
        .map(|k| (format!("{column} < {k}"), true))
        .collect();
    let mut found: Vec<i128> = probe(run, probes)
        .await?
        .iter()
        .filter_map(|k| int_of(&k.value))
        .collect();
    found.sort_unstable();
    // The predecessor grows with the key: the i-th found one belongs to the
    // i-th key, shifted by one when the smallest key has none.
    let shift = keys.len() - found.len().min(keys.len());
    for (i, k) in keys.iter().enumerate() {
        let p = if i < shift { min - 1 } else { found[i - shift] };
        known.insert(*k, p);
    }
    Ok(known)
}

/// The kept rows for [`slices_of`](super::slices_of): the sampled keys where the
/// running weight crosses `j · total / n`, with the rounded running weight and
/// total; equal keys are merged first. With weights of 1 these are the rows
/// the exact planner keeps.
fn boundaries<V: PartialEq>(sample: Vec<(V, f64)>, n: usize) -> Vec<(V, i64, i64)> {
    let mut merged: Vec<(V, f64)> = Vec::with_capacity(sample.len());
    for (k, w) in sample {
        match merged.last_mut() {
            Some((last, lw)) if *last == k => *lw += w,
            _ => merged.push((k, w)),
        }
    }
    let total: f64 = merged.iter().map(|(_, w)| w).sum();
    let cnt = total.round() as i64;
    let mut kept = Vec::new();
    let mut cum = 0.0;
    let mut j = 1usize;
    let eps = total * 1e-9;
    for (k, w) in merged {
        cum += w;
        if j <= n && cum >= j as f64 * total / n as f64 - eps {
            while j <= n && cum >= j as f64 * total / n as f64 - eps {
                j += 1;
            }
            kept.push((k, cum.round() as i64, cnt));
        }
    }
    kept
}

/// Splitmix64, seeded: the same input gives the same sample.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Whether `V` is one of the integer types [`int_of`] reads.
fn is_int<V: 'static>() -> bool {
    [
        TypeId::of::<i16>(),
        TypeId::of::<i32>(),
        TypeId::of::<i64>(),
        TypeId::of::<u32>(),
        TypeId::of::<u64>(),
    ]
    .contains(&TypeId::of::<V>())
}

/// A key value as an integer, for the integer types.
fn int_of<V: Any>(value: &V) -> Option<i128> {
    let v = value as &dyn Any;
    v.downcast_ref::<i16>()
        .map(|x| i128::from(*x))
        .or_else(|| v.downcast_ref::<i32>().map(|x| i128::from(*x)))
        .or_else(|| v.downcast_ref::<i64>().map(|x| i128::from(*x)))
        .or_else(|| v.downcast_ref::<u32>().map(|x| i128::from(*x)))
        .or_else(|| v.downcast_ref::<u64>().map(|x| i128::from(*x)))
}

#[cfg(test)]
mod tests {
    use super::boundaries;

    #[test]
    fn unit_weights_keep_the_exact_rows() {
        // 10 rows, n = 3: rows 4, 7 and 10, as the exact planner keeps them
        let sample: Vec<(i32, f64)> = (1..=10).map(|k| (k * 10, 1.0)).collect();
        assert_eq!(
            boundaries(sample, 3),
            [(40, 4, 10), (70, 7, 10), (100, 10, 10)]
        );
        // fewer rows than slices: every row
        let sample: Vec<(i32, f64)> = (1..=2).map(|k| (k, 1.0)).collect();
        assert_eq!(boundaries(sample, 5), [(1, 1, 2), (2, 2, 2)]);
        assert!(boundaries(Vec::<(i32, f64)>::new(), 4).is_empty());
    }

    #[test]
    fn a_line_numbers_what_is_left_of_the_range() {
        use super::Line;
        let mut line = Line::new(-5, 100);
        assert_eq!(
            (line.len(), line.to_real(0), line.to_line(100)),
            (106, -5, 105)
        );
        // ids up to 20, then an empty stretch up to the outlier at 90
        line.remove(21, 90);
        assert_eq!(line.len(), 36);
        assert_eq!(line.pieces, [(-5, 20), (91, 100)]);
        assert_eq!(
            (line.to_real(25), line.to_real(26), line.to_real(35)),
            (20, 91, 100)
        );
        assert_eq!(
            (line.to_line(20), line.to_line(91), line.to_line(-6)),
            (25, 26, -1)
        );
        line.remove(-5, -5);
        line.remove(100, 100);
        assert_eq!(line.pieces, [(-4, 20), (91, 99)]);
        assert_eq!(
            (line.len(), line.to_real(0), line.to_real(33)),
            (34, -4, 99)
        );
    }

    #[test]
    fn weights_and_equal_keys() {
        // key 5 weighs as much as all the others
        let sample = vec![(1, 1.0), (2, 1.0), (5, 1.0), (5, 1.0), (9, 2.0)];
        assert_eq!(boundaries(sample, 2), [(5, 4, 6), (9, 6, 6)]);
    }
}
