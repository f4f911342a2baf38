//! The planning calls on async connections, twins of the blocking ones:
//! [`partitions_async`](Chunked::partitions_async),
//! [`estimate_total_async`](Chunked::estimate_total_async),
//! [`verify_unique_async`](Chunked::verify_unique_async) and
//! [`explain_async`](Chunked::explain_async). Each builds the same statements
//! as its twin and reads the answer the same way; only the connection is
//! awaited.

use std::future::Future;

use diesel::backend::Backend;
use diesel::query_builder::QueryFragment;
use diesel_async::methods::LoadQuery;
use diesel_async::{AsyncConnection, RunQueryDsl};
use futures_util::future::BoxFuture;

use super::check::AsyncSchema;
use super::{AsyncKeyCheck, AsyncRows};
use crate::backend::KeysetBackend;
use crate::builder::{Chunked, PlanInner};
use crate::checkpoint::AsyncCheckpointConnection;
use crate::error::Error;
use crate::explain::{DryRun, DryRunSteps, Explain, ExplainSteps};
use crate::health::Outcome;
use crate::key::Key;
use crate::key::KeySql;
use crate::plan::sample::{
    sample_error, sample_query, size_query, SampleFilter, SampleQuery, SampleRow, SampleStatements,
    SampledInner, TableSize,
};
use crate::plan::PreparePlan;
use crate::plan::{self, CountQuery, KeyColumns, Partition, PartitionQuery, PartitionRow};
use crate::query::Batch;
use crate::query::{PrepareKeys, SeekQuery};
use crate::rows::KeyRows;
use crate::stored::StoredKey;
use crate::write::debug_sql;
use diesel::query_builder::SqlQuery;
use diesel::query_dsl::methods::FilterDsl;

impl<Q, K: Key> Chunked<Q, K> {
    /// [`partitions`](Self::partitions) on an async connection: the same
    /// statement and slices.
    ///
    /// ```
    /// # include!("../../tests/doc/setup.rs");
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel_async::AsyncConnection;
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let rt = tokio::runtime::Runtime::new()?;
    /// # rt.block_on(async {
    /// # let path = std::env::temp_dir().join(format!("doc-parts-{}.db", std::process::id()));
    /// # let url = path.to_string_lossy().into_owned();
    /// # { let mut c = SqliteConnection::establish(&url)?; fill(&mut c); }
    /// let mut conn = SyncConnectionWrapper::<SqliteConnection>::establish(&url).await?;
    /// let parts = posts::table.chunked_by(posts::id).partitions_async(2, &mut conn).await?;
    /// assert_eq!((parts[0].end_at, parts[1].start_after), (Some(3), Some(3)));
    /// assert_eq!(posts::table.chunked_by(posts::id).estimate_total_async(&mut conn).await?, 5);
    /// # drop(conn); std::fs::remove_file(&path)?;
    /// # Ok::<_, Box<dyn std::error::Error>>(()) })?;
    /// # Ok(()) }
    /// ```
    pub fn partitions_async<'a, 'c, C>(
        self,
        n: usize,
        conn: &'c mut C,
    ) -> impl Future<Output = Result<Vec<Partition<K::Value>>, Error>> + Send + use<'a, 'c, Q, K, C>
    where
        'a: 'c,
        C: AsyncConnection,
        C::Backend: KeysetBackend,
        K: Send + 'c,
        K::Value: Send,
        Q: PreparePlan<'a, K, KeyColumns<K>, C::Backend>,
        PartitionQuery<PlanInner<'a, Q, K, KeyColumns<K>, C::Backend>, K>:
            LoadQuery<'a, C, PartitionRow<K>> + Send + 'a,
    {
        let prepared = self.partition_statement::<C::Backend>(n);
        async move {
            let (statement, slicing) = prepared?;
            slicing.slices(statement.load(conn).await)
        }
    }

    /// [`partitions_sampled`](Self::partitions_sampled) on an async
    /// connection: the same statements, the same (seeded) draws, the same
    /// slices.
    ///
    /// ```
    /// # include!("../../tests/doc/setup.rs");
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel_async::AsyncConnection;
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let rt = tokio::runtime::Runtime::new()?;
    /// # rt.block_on(async {
    /// # let path = std::env::temp_dir().join(format!("doc-sampled-{}.db", std::process::id()));
    /// # let url = path.to_string_lossy().into_owned();
    /// # { let mut c = SqliteConnection::establish(&url)?; fill(&mut c); }
    /// let mut conn = SyncConnectionWrapper::<SqliteConnection>::establish(&url).await?;
    /// let parts = posts::table.chunked_by(posts::id).partitions_sampled_async(2, &mut conn).await?;
    /// let blocking = posts::table.chunked_by(posts::id)
    ///     .partitions_sampled(2, &mut SqliteConnection::establish(&url)?)?;
    /// assert_eq!(parts, blocking);
    /// # drop(conn); std::fs::remove_file(&path)?;
    /// # Ok::<_, Box<dyn std::error::Error>>(()) })?;
    /// # Ok(()) }
    /// ```
    pub fn partitions_sampled_async<'a, 'c, C>(
        self,
        n: usize,
        conn: &'c mut C,
    ) -> impl Future<Output = Result<Vec<Partition<K::Value>>, Error>> + Send + use<'a, 'c, Q, K, C>
    where
        'a: 'c,
        C: AsyncConnection,
        C::Backend: KeysetBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        K: KeySql<C::Backend> + Send + 'c,
        K::Value: Send,
        Q: Clone + Send + 'c,
        Q: PreparePlan<'a, K, KeyColumns<K>, C::Backend>,
        PlanInner<'a, Q, K, KeyColumns<K>, C::Backend>: FilterDsl<SampleFilter>,
        SampleQuery<SampledInner<'a, Q, K, C::Backend>, K>:
            LoadQuery<'a, C, SampleRow<K>> + Send + 'a,
        SqlQuery: LoadQuery<'a, C, TableSize>,
    {
        let filter = SampleFilter::default();
        let setup = self
            .clone()
            .sampled::<C::Backend>(n, &filter)
            .map(|(s, _)| s);
        async move {
            let setup = setup?;
            let mut run = AsyncSampler {
                chunked: self,
                n,
                filter,
                conn,
                _prepared: std::marker::PhantomData,
            };
            let sample = setup.sample(&mut run).await?;
            setup.slices(sample)
        }
    }

    /// [`estimate_total`](Self::estimate_total) on an async connection: the
    /// planner's estimate on PostgreSQL, an exact count elsewhere (see
    /// [`partitions_async`](Self::partitions_async) for an example).
    pub fn estimate_total_async<'a, 'c, C>(
        self,
        conn: &'c mut C,
    ) -> impl Future<Output = Result<u64, Error>> + Send + use<'a, 'c, Q, K, C>
    where
        'a: 'c,
        C: AsyncConnection,
        C::Backend: KeysetBackend,
        Q: PreparePlan<'a, K, KeyColumns<K>, C::Backend>,
        CountQuery<PlanInner<'a, Q, K, KeyColumns<K>, C::Backend>>:
            LoadQuery<'a, C, String> + Send + 'a,
    {
        let prepared = self.count_statement::<C::Backend>();
        async move {
            let (statement, cap) = prepared?;
            plan::estimate::<C::Backend>(statement.get_result(conn).await, cap)
        }
    }

    /// [`verify_unique`](Self::verify_unique) on an async connection: the
    /// same schema reads and verdicts.
    ///
    /// ```
    /// # include!("../../tests/doc/setup.rs");
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel_async::AsyncConnection;
    /// use diesel_chunked_iterator::{prelude::*, Error, Verdict};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let rt = tokio::runtime::Runtime::new()?;
    /// # rt.block_on(async {
    /// # let path = std::env::temp_dir().join(format!("doc-verify-{}.db", std::process::id()));
    /// # let url = path.to_string_lossy().into_owned();
    /// # { let mut c = SqliteConnection::establish(&url)?; fill(&mut c); }
    /// let mut conn = SyncConnectionWrapper::<SqliteConnection>::establish(&url).await?;
    /// posts::table.chunked_by(posts::id).verify_unique_async(&mut conn).await?;
    /// let err = posts::table.chunked_by(posts::title).verify_unique_async(&mut conn).await;
    /// assert!(matches!(err, Err(Error::NotUnique { .. })));
    ///
    /// let plan = posts::table.chunked_by(posts::id).explain_async(&mut conn).await?;
    /// assert_eq!(plan.verdict, Verdict::IndexRangeInKeyOrder);
    /// # drop(conn); std::fs::remove_file(&path)?;
    /// # Ok::<_, Box<dyn std::error::Error>>(()) })?;
    /// # Ok(()) }
    /// ```
    pub fn verify_unique_async<'c, C>(
        &self,
        conn: &'c mut C,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'c
    where
        C: AsyncConnection + AsyncKeyCheck,
        C::Backend: Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: QueryFragment<C::Backend>,
        K::Selection: QueryFragment<C::Backend>,
    {
        let (key_sql, query_sql) = self.unique_sql::<C::Backend>();
        let (names, describe) = (self.key.names(), self.key.describe());
        async move {
            let mut schema = AsyncSchema(conn);
            crate::unique::verify_with(&mut schema, &names, &describe, key_sql, query_sql).await
        }
    }

    /// [`explain`](Self::explain) on an async connection: the same statement,
    /// plan and verdict (see [`verify_unique_async`](Self::verify_unique_async)
    /// for an example).
    pub fn explain_async<'a, 'c, C>(self, conn: &'c mut C) -> BoxFuture<'c, Result<Explain, Error>>
    where
        'a: 'c,
        C: AsyncConnection + AsyncKeyCheck,
        C::Backend: KeysetBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        K: Send + 'c,
        K::Value: Send,
        K::Selection: QueryFragment<C::Backend>,
        Q: PrepareKeys<'a, K, C::Backend>,
        <Q as PrepareKeys<'a, K, C::Backend>>::Base: Send + 'c,
        KeyRows: AsyncRows<C, <Q as PrepareKeys<'a, K, C::Backend>>::Base, K>,
    {
        match self.explain_parts::<C::Backend>() {
            Ok((query, steps)) => explain_on(query, steps, conn),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    /// [`dry_run`](Self::dry_run) on an async connection: the same reads
    /// and findings; signals read on replicas or of your own are read on
    /// tokio's blocking pool.
    ///
    /// ```
    /// # include!("../../tests/doc/setup.rs");
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel_async::AsyncConnection;
    /// use diesel_chunked_iterator::prelude::*;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let rt = tokio::runtime::Runtime::new()?;
    /// # rt.block_on(async {
    /// # let path = std::env::temp_dir().join(format!("doc-dry-{}.db", std::process::id()));
    /// # let url = path.to_string_lossy().into_owned();
    /// # { let mut c = SqliteConnection::establish(&url)?; fill(&mut c); }
    /// let mut conn = SyncConnectionWrapper::<SqliteConnection>::establish(&url).await?;
    /// let dry = posts::table.chunked_by(posts::id).batch_size(2).dry_run_async(&mut conn).await?;
    /// assert_eq!(dry.first_keys, Some(("1".into(), "2".into())));
    /// assert_eq!((dry.estimated_rows, dry.estimated_batches), (5, 3));
    /// # drop(conn); std::fs::remove_file(&path)?;
    /// # Ok::<_, Box<dyn std::error::Error>>(()) })?;
    /// # Ok(()) }
    /// ```
    pub fn dry_run_async<'a, 'c, C>(self, conn: &'c mut C) -> BoxFuture<'c, Result<DryRun, Error>>
    where
        'a: 'c,
        Q: Clone + Send + 'c,
        C: AsyncCheckpointConnection + AsyncKeyCheck,
        C::Backend: KeysetBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        K: Send + Sync + 'c,
        K::Value: Send + Sync + serde::de::DeserializeOwned,
        K::Selection: QueryFragment<C::Backend>,
        Q: PrepareKeys<'a, K, C::Backend>,
        <Q as PrepareKeys<'a, K, C::Backend>>::Base: Send + 'c,
        KeyRows: AsyncRows<C, <Q as PrepareKeys<'a, K, C::Backend>>::Base, K>,
        for<'q> Batch<'q, <Q as PrepareKeys<'a, K, C::Backend>>::Base, K>:
            QueryFragment<C::Backend>,
        Q: PreparePlan<'a, K, KeyColumns<K>, C::Backend>,
        CountQuery<PlanInner<'a, Q, K, KeyColumns<K>, C::Backend>>:
            LoadQuery<'c, C, String> + Send + 'c,
    {
        let name = self.write.checkpoint.clone();
        let (dry, signals) = DryRunSteps::new(&self, None);
        let explained = self.clone().explain_parts::<C::Backend>();
        let counted = self.clone().count_statement::<C::Backend>();
        let parts = self.explain_parts::<C::Backend>();
        match (explained, counted, parts) {
            (Ok(explained), Ok(counted), Ok(parts)) => {
                let job = DryJob { dry, signals, name };
                dry_run_on(job, explained, counted, parts, conn)
            }
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                Box::pin(std::future::ready(Err(e)))
            }
        }
    }
}

/// What [`Chunked::dry_run_async`] knows before its first statement.
struct DryJob {
    dry: DryRunSteps,
    signals: crate::health::Signals,
    name: Option<String>,
}

/// The statements of [`Chunked::dry_run_async`]: the plan, the count, the
/// checkpoint row, the first batch's keys, the signals.
fn dry_run_on<'c, C, B, K, S>(
    job: DryJob,
    (explained, steps): (SeekQuery<B, K>, ExplainSteps),
    (count, cap): (S, Option<u64>),
    (mut query, mut steps2): (SeekQuery<B, K>, ExplainSteps),
    conn: &'c mut C,
) -> BoxFuture<'c, Result<DryRun, Error>>
where
    C: AsyncCheckpointConnection + AsyncKeyCheck,
    C::Backend: KeysetBackend + Default,
    <C::Backend as Backend>::QueryBuilder: Default,
    B: Send + 'c,
    K: Key + Send + 'c,
    K::Value: Send + Sync + serde::de::DeserializeOwned,
    KeyRows: AsyncRows<C, B, K>,
    for<'q> Batch<'q, B, K>: QueryFragment<C::Backend>,
    S: LoadQuery<'c, C, String> + Send + 'c,
{
    Box::pin(async move {
        let DryJob {
            mut dry,
            signals,
            name,
        } = job;
        dry.explain = explain_on(explained, steps, &mut *conn).await?;
        let counted = RunQueryDsl::get_result(count, &mut *conn).await;
        dry.set_estimate(plan::estimate::<C::Backend>(counted, cap)?);
        if let Some(name) = name {
            crate::checkpoint::check_name(&name)?;
            match conn.read_checkpoint(&name).await {
                Ok(row) => dry.set_checkpoint(row),
                Err(e) => match crate::checkpoint::statement_error("reading a checkpoint", e) {
                    Error::CheckpointTableMissing { .. } => {}
                    e => return Err(e),
                },
            }
        }
        let sets = match steps2.prefix_table::<C::Backend>() {
            Some((schema, t)) => Some(conn.unique_column_sets_in(schema, t).await),
            None => None,
        };
        if let Some(sets) = sets {
            steps2.order_by_prefix(&mut query, sets)?;
        }
        let limit = steps2.limit();
        dry.resume(&mut query)?;
        dry.first_batch = debug_sql::<C::Backend, _>(&query.batch(limit));
        let keys = KeyRows.load_async(&mut query, &mut *conn, limit).await;
        if dry.keys(&mut query, keys)? {
            dry.later_batch = Some(debug_sql::<C::Backend, _>(&query.batch(limit)));
        }
        for h in &signals.list {
            let read = match h.on_job_source() {
                Some(kind) => conn.read_health(kind, h.limit, &signals.table).await,
                None => h.read_elsewhere_async().await,
            };
            dry.signal(Outcome {
                signal: h.name(),
                read,
            });
        }
        Ok(dry.finish())
    })
}

/// The statements of [`Chunked::explain_async`] on a prepared key query.
fn explain_on<'c, C, B, K>(
    mut query: SeekQuery<B, K>,
    mut steps: ExplainSteps,
    conn: &'c mut C,
) -> BoxFuture<'c, Result<Explain, Error>>
where
    C: AsyncConnection + AsyncKeyCheck,
    C::Backend: KeysetBackend,
    B: Send + 'c,
    K: Key + Send + 'c,
    K::Value: Send,
    KeyRows: AsyncRows<C, B, K>,
{
    Box::pin(async move {
        let sets = match steps.prefix_table::<C::Backend>() {
            Some((schema, table)) => Some(conn.unique_column_sets_in(schema, table).await),
            None => None,
        };
        if let Some(sets) = sets {
            steps.order_by_prefix(&mut query, sets)?;
        }
        let mut rows = KeyRows;
        if query.bounds().after.is_none() {
            let first = rows.load_async(&mut query, conn, 1).await;
            steps.start_after_first(&mut query, first)?;
        }
        let lines = rows.explain_async(&mut query, conn, steps.limit()).await;
        steps.finish::<C::Backend, _>(&query, lines)
    })
}

/// The statements of a sample on an async connection: each prepares the
/// sample's query anew (a boxed query is `Send` but cannot be shared across
/// an await).
struct AsyncSampler<'a, 'c, Q, K: Key, C> {
    chunked: Chunked<Q, K>,
    n: usize,
    filter: SampleFilter,
    conn: &'c mut C,
    _prepared: std::marker::PhantomData<&'a ()>,
}

impl<'a, Q, K, C> SampleStatements<K::Value> for AsyncSampler<'a, '_, Q, K, C>
where
    C: AsyncConnection,
    C::Backend: KeysetBackend + Default,
    <C::Backend as Backend>::QueryBuilder: Default,
    K: KeySql<C::Backend> + Send,
    K::Value: Send,
    Q: Clone + Send,
    Q: PreparePlan<'a, K, KeyColumns<K>, C::Backend>,
    PlanInner<'a, Q, K, KeyColumns<K>, C::Backend>: FilterDsl<SampleFilter>,
    SampleQuery<SampledInner<'a, Q, K, C::Backend>, K>: LoadQuery<'a, C, SampleRow<K>> + Send + 'a,
    SqlQuery: LoadQuery<'a, C, TableSize>,
{
    fn keys(
        &mut self,
        condition: String,
    ) -> BoxFuture<'_, Result<Vec<StoredKey<K::Value>>, Error>> {
        self.filter.set(&condition);
        SampleStatements::load(self, Vec::new())
    }

    fn load(
        &mut self,
        probes: Vec<(String, bool)>,
    ) -> BoxFuture<'_, Result<Vec<StoredKey<K::Value>>, Error>> {
        use futures_util::FutureExt;
        let prepared = self
            .chunked
            .clone()
            .sampled::<C::Backend>(self.n, &self.filter);
        let query = match prepared {
            Ok((_, inner)) => sample_query::<_, K>(inner, &self.filter, probes),
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        // A future built here, not an async block: the boxed query's type
        // names the query's lifetime, which an async block's `Send` check
        // cannot see through.
        let loading = RunQueryDsl::load::<SampleRow<K>>(query, self.conn);
        Box::pin(loading.map(|rows| {
            let rows = rows.map_err(sample_error("sampling the keys for the partitions"))?;
            Ok(rows.into_iter().map(|r| r.into_key()).collect())
        }))
    }

    fn size(&mut self, table: String) -> BoxFuture<'_, Result<TableSize, Error>> {
        Box::pin(async move {
            RunQueryDsl::get_result::<TableSize>(size_query(&table), self.conn)
                .await
                .map_err(sample_error("reading the size of the sampled table"))
        })
    }
}
