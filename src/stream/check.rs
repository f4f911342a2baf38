//! What a scan and the planning calls read of the schema on an async
//! connection: the async twin of [`UniqueIndexes`](crate::UniqueIndexes).

use diesel::QueryResult;
use futures_util::future::BoxFuture;

#[cfg(feature = "sqlite")]
use diesel_async::AsyncConnection;

use crate::moved::MoveCause;
#[cfg(feature = "sqlite")]
use crate::unique::UniqueIndexes;
use crate::unique::{SchemaRead, SchemaReader, UniqueSet};

/// What a scan and the planning calls ask of an async connection's schema:
/// the async twin of [`UniqueIndexes`](crate::UniqueIndexes), with the same
/// statements. Before a scan by a string key, every backend reads what may
/// make it unsafe (MySQL/MariaDB: its columns' types; SQLite, PostgreSQL: the
/// collations its unique indexes hold it unique in), and MySQL/MariaDB the
/// unique column sets and indexes that decide how a composite key is ordered;
/// `verify_unique_async` reads the unique sets on every backend.
pub trait AsyncKeyCheck: Send {
    /// Why the database cannot scan by the key whose columns render as
    /// `key_sql`, if it cannot (checked before a scan's first batch).
    fn key_problem<'c>(
        &'c mut self,
        key_sql: &'c str,
    ) -> BoxFuture<'c, QueryResult<Option<String>>> {
        let _ = key_sql;
        Box::pin(async { Ok(None) })
    }

    /// Why the database cannot order or compare one key column consistently
    /// (see [`UniqueIndexes::key_column_problem`](crate::UniqueIndexes::key_column_problem)).
    fn key_column_problem<'c>(
        &'c mut self,
        schema: Option<&'c str>,
        table: &'c str,
        column: &'c str,
    ) -> BoxFuture<'c, QueryResult<Option<String>>> {
        let _ = (schema, table, column);
        Box::pin(async { Ok(None) })
    }

    /// The unique column sets of `table` in `schema` (see
    /// [`UniqueIndexes::unique_column_sets_in`](crate::UniqueIndexes::unique_column_sets_in)).
    fn unique_column_sets_in<'c>(
        &'c mut self,
        schema: Option<&'c str>,
        table: &'c str,
    ) -> BoxFuture<'c, QueryResult<Vec<Vec<String>>>>;

    /// The unique sets of `table` in `schema`, with the columns each holds
    /// unique in another collation than they are compared in (see
    /// [`UniqueIndexes::unique_sets_in`](crate::UniqueIndexes::unique_sets_in)).
    fn unique_sets_in<'c>(
        &'c mut self,
        schema: Option<&'c str>,
        table: &'c str,
    ) -> BoxFuture<'c, QueryResult<Vec<UniqueSet>>> {
        Box::pin(async move {
            let sets = self.unique_column_sets_in(schema, table).await?;
            Ok(sets
                .into_iter()
                .map(|columns| UniqueSet {
                    index: String::new(),
                    columns,
                    collations: Vec::new(),
                })
                .collect())
        })
    }

    /// What in the schema of `table` can move the key `columns` of the rows
    /// an `UPDATE` writes (see
    /// [`UniqueIndexes::key_move_causes`](crate::UniqueIndexes::key_move_causes)).
    fn key_move_causes<'c>(
        &'c mut self,
        schema: Option<&'c str>,
        table: &'c str,
        columns: &'c [&'c str],
    ) -> BoxFuture<'c, QueryResult<Vec<MoveCause>>> {
        let _ = (schema, table, columns);
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Whether an index gives the order of `columns` (see
    /// [`UniqueIndexes::has_index_in_order`](crate::UniqueIndexes::has_index_in_order)).
    fn has_index_in_order<'c>(
        &'c mut self,
        schema: Option<&'c str>,
        table: &'c str,
        columns: &'c [&'c str],
    ) -> BoxFuture<'c, QueryResult<bool>> {
        let _ = (schema, table, columns);
        Box::pin(async { Ok(true) })
    }
}

#[cfg(feature = "postgres")]
impl AsyncKeyCheck for diesel_async::AsyncPgConnection {
    fn unique_column_sets_in<'c>(
        &'c mut self,
        schema: Option<&'c str>,
        table: &'c str,
    ) -> BoxFuture<'c, QueryResult<Vec<Vec<String>>>> {
        Box::pin(crate::unique::pg_unique_column_sets_async(
            self, schema, table,
        ))
    }

    fn unique_sets_in<'c>(
        &'c mut self,
        schema: Option<&'c str>,
        table: &'c str,
    ) -> BoxFuture<'c, QueryResult<Vec<UniqueSet>>> {
        Box::pin(crate::unique::pg_unique_sets_async(self, schema, table))
    }

    fn key_problem<'c>(
        &'c mut self,
        key_sql: &'c str,
    ) -> BoxFuture<'c, QueryResult<Option<String>>> {
        Box::pin(crate::unique::pg_key_problem_async(self, key_sql))
    }

    fn key_move_causes<'c>(
        &'c mut self,
        schema: Option<&'c str>,
        table: &'c str,
        columns: &'c [&'c str],
    ) -> BoxFuture<'c, QueryResult<Vec<MoveCause>>> {
        use diesel::sql_types::{Array, Nullable, Text};
        Box::pin(diesel_async::RunQueryDsl::load(
            diesel::sql_query(crate::moved::PG_CAUSES)
                .bind::<Nullable<Text>, _>(schema)
                .bind::<Text, _>(table)
                .bind::<Array<Text>, _>(columns),
            self,
        ))
    }
}

/// A blocking connection in diesel-async's wrapper (SQLite, or a PostgreSQL
/// or MySQL connection of Diesel's own) reads the schema as the blocking scans
/// do, on the wrapper's blocking thread.
#[cfg(feature = "sqlite")]
impl<C> AsyncKeyCheck for diesel_async::sync_connection_wrapper::SyncConnectionWrapper<C>
where
    C: UniqueIndexes + Send + 'static,
    Self: AsyncConnection,
{
    fn key_problem<'c>(
        &'c mut self,
        key_sql: &'c str,
    ) -> BoxFuture<'c, QueryResult<Option<String>>> {
        let key_sql = key_sql.to_owned();
        self.spawn_blocking(move |conn| crate::unique::key_problem(conn, &key_sql))
    }

    fn key_column_problem<'c>(
        &'c mut self,
        schema: Option<&'c str>,
        table: &'c str,
        column: &'c str,
    ) -> BoxFuture<'c, QueryResult<Option<String>>> {
        let (schema, table, column) = (
            schema.map(str::to_owned),
            table.to_owned(),
            column.to_owned(),
        );
        self.spawn_blocking(move |conn| conn.key_column_problem(schema.as_deref(), &table, &column))
    }

    fn unique_column_sets_in<'c>(
        &'c mut self,
        schema: Option<&'c str>,
        table: &'c str,
    ) -> BoxFuture<'c, QueryResult<Vec<Vec<String>>>> {
        let (schema, table) = (schema.map(str::to_owned), table.to_owned());
        self.spawn_blocking(move |conn| conn.unique_column_sets_in(schema.as_deref(), &table))
    }

    fn unique_sets_in<'c>(
        &'c mut self,
        schema: Option<&'c str>,
        table: &'c str,
    ) -> BoxFuture<'c, QueryResult<Vec<UniqueSet>>> {
        let (schema, table) = (schema.map(str::to_owned), table.to_owned());
        self.spawn_blocking(move |conn| conn.unique_sets_in(schema.as_deref(), &table))
    }

    fn has_index_in_order<'c>(
        &'c mut self,
        schema: Option<&'c str>,
        table: &'c str,
        columns: &'c [&'c str],
    ) -> BoxFuture<'c, QueryResult<bool>> {
        let (schema, table) = (schema.map(str::to_owned), table.to_owned());
        let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        self.spawn_blocking(move |conn| {
            let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
            conn.has_index_in_order(schema.as_deref(), &table, &columns)
        })
    }

    fn key_move_causes<'c>(
        &'c mut self,
        schema: Option<&'c str>,
        table: &'c str,
        columns: &'c [&'c str],
    ) -> BoxFuture<'c, QueryResult<Vec<MoveCause>>> {
        let (schema, table) = (schema.map(str::to_owned), table.to_owned());
        let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        self.spawn_blocking(move |conn| {
            let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
            conn.key_move_causes(schema.as_deref(), &table, &columns)
        })
    }
}

#[cfg(feature = "mysql")]
impl AsyncKeyCheck for diesel_async::AsyncMysqlConnection {
    fn key_problem<'c>(
        &'c mut self,
        key_sql: &'c str,
    ) -> BoxFuture<'c, QueryResult<Option<String>>> {
        Box::pin(crate::unique::key_problem_async(self, key_sql))
    }

    fn key_column_problem<'c>(
        &'c mut self,
        schema: Option<&'c str>,
        table: &'c str,
        column: &'c str,
    ) -> BoxFuture<'c, QueryResult<Option<String>>> {
        Box::pin(crate::unique::key_column_problem_async(
            self, schema, table, column,
        ))
    }

    fn unique_column_sets_in<'c>(
        &'c mut self,
        schema: Option<&'c str>,
        table: &'c str,
    ) -> BoxFuture<'c, QueryResult<Vec<Vec<String>>>> {
        Box::pin(crate::unique::unique_column_sets_async(self, schema, table))
    }

    fn has_index_in_order<'c>(
        &'c mut self,
        schema: Option<&'c str>,
        table: &'c str,
        columns: &'c [&'c str],
    ) -> BoxFuture<'c, QueryResult<bool>> {
        Box::pin(crate::unique::has_index_in_order_async(
            self, schema, table, columns,
        ))
    }

    fn key_move_causes<'c>(
        &'c mut self,
        schema: Option<&'c str>,
        table: &'c str,
        columns: &'c [&'c str],
    ) -> BoxFuture<'c, QueryResult<Vec<MoveCause>>> {
        use diesel::sql_types::{Nullable, Text};
        Box::pin(async move {
            let rows = diesel_async::RunQueryDsl::load(
                diesel::sql_query(crate::moved::MYSQL_CAUSES)
                    .bind::<Nullable<Text>, _>(schema)
                    .bind::<Text, _>(table)
                    .bind::<Nullable<Text>, _>(schema)
                    .bind::<Text, _>(table),
                self,
            )
            .await?;
            Ok(crate::moved::mysql_relevant(rows, columns))
        })
    }
}

/// An async connection as the uniqueness check's schema reader.
pub(crate) struct AsyncSchema<'c, C>(pub(crate) &'c mut C);

impl<C: AsyncKeyCheck> SchemaReader for AsyncSchema<'_, C> {
    fn column_problem<'a>(
        &'a mut self,
        schema: Option<&'a str>,
        table: &'a str,
        column: &'a str,
    ) -> SchemaRead<'a, Option<String>> {
        self.0.key_column_problem(schema, table, column)
    }

    fn column_sets<'a>(
        &'a mut self,
        schema: Option<&'a str>,
        table: &'a str,
    ) -> SchemaRead<'a, Vec<UniqueSet>> {
        self.0.unique_sets_in(schema, table)
    }
}
