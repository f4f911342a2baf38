//! Checking the schema for what makes a key safe: a primary key or unique index
//! whose columns are all part of the key (as Rails 8 does before `in_batches`).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;

use diesel::connection::LoadConnection;
#[cfg(feature = "mysql")]
use diesel::sql_types::BigInt;
use diesel::sql_types::{Nullable, Text};
use diesel::{QueryResult, QueryableByName, RunQueryDsl};

use crate::error::Error;

pub(crate) mod sql;

use sql::{Operand, TableName};

/// Connections that can list a table's unique column sets: its primary key and
/// its unique indexes (partial and expression indexes excluded, and on MySQL
/// prefix indexes, none of which makes a column unique); and that can tell
/// whether the database orders and compares a key column consistently.
///
/// Implemented for the connections of the three backends.
///
/// ```
/// # include!("../tests/doc/setup.rs");
/// use diesel_chunked_iterator::UniqueIndexes;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let conn = &mut doc_connection();
/// assert_eq!(conn.unique_column_sets("posts")?, [vec!["id".to_string()]]);
/// assert_eq!(conn.unique_column_sets_in(Some("main"), "posts")?, [vec!["id".to_string()]]);
/// assert_eq!(conn.key_column_problem(None, "posts", "title")?, None);
/// # Ok(()) }
/// ```
pub trait UniqueIndexes: LoadConnection {
    /// The column sets of the primary key and unique indexes of `table`, found
    /// as the connection finds an unqualified table name (PostgreSQL's
    /// `search_path`, MySQL's current database, SQLite's `main` then attached
    /// databases), each sorted by name. A table that does not exist has none.
    fn unique_column_sets(&mut self, table: &str) -> QueryResult<Vec<Vec<String>>>;

    /// The same for `table` in `schema` (a PostgreSQL schema, a MySQL database,
    /// an attached SQLite database); `None` is [`unique_column_sets`](Self::unique_column_sets).
    ///
    /// The default implementation finds no unique set in a named schema, so a
    /// connection that does not override it never vouches for such a table.
    fn unique_column_sets_in(
        &mut self,
        schema: Option<&str>,
        table: &str,
    ) -> QueryResult<Vec<Vec<String>>> {
        match schema {
            None => self.unique_column_sets(table),
            Some(_) => Ok(Vec::new()),
        }
    }

    /// Why the database cannot order and compare `column` of `table` (in
    /// `schema`, or the connection's default) consistently enough for a keyset
    /// scan, or `None` when nothing is known against it.
    ///
    /// On MySQL/MariaDB: a `CHAR` column with a `NO PAD` collation, and a
    /// string or binary column whose values can be longer than
    /// `@@max_sort_length` bytes (a sort compares only that prefix). PostgreSQL
    /// and SQLite have no such case; the default is `Ok(None)`.
    fn key_column_problem(
        &mut self,
        schema: Option<&str>,
        table: &str,
        column: &str,
    ) -> QueryResult<Option<String>> {
        let _ = (schema, table, column);
        Ok(None)
    }

    /// The primary key and unique indexes of `table` (as
    /// [`unique_column_sets_in`](Self::unique_column_sets_in) finds them),
    /// each with the columns it holds unique in another collation than the
    /// column is compared in. The default reads the column sets and knows of
    /// no such column.
    #[doc(hidden)]
    fn unique_sets_in(&mut self, schema: Option<&str>, table: &str) -> QueryResult<Vec<UniqueSet>> {
        let sets = self.unique_column_sets_in(schema, table)?;
        Ok(sets.into_iter().map(UniqueSet::plain).collect())
    }

    /// Whether a unique index may hold a column unique in another collation
    /// than the column is compared in (SQLite, PostgreSQL), so that a scan by
    /// a text key reads [`unique_sets_in`](Self::unique_sets_in) before its
    /// first batch. MySQL/MariaDB index a column in its own collation.
    #[doc(hidden)]
    fn index_collations_may_differ(&self) -> bool {
        false
    }

    /// Whether an index of `table` gives the order of `columns` (its leading
    /// columns are these, in this order; on MySQL/MariaDB, a secondary index
    /// that is not unique also ends with the primary key). The default answers
    /// `true`: nothing is known against it.
    #[doc(hidden)]
    fn has_index_in_order(
        &mut self,
        schema: Option<&str>,
        table: &str,
        columns: &[&str],
    ) -> QueryResult<bool> {
        let _ = (schema, table, columns);
        Ok(true)
    }

    /// What in the schema of `table` can change the key `columns` of the rows
    /// an `UPDATE` writes although its `SET` list does not name them:
    /// generated key columns and `UPDATE` triggers (see `update_all`). The
    /// default finds nothing.
    #[doc(hidden)]
    fn key_move_causes(
        &mut self,
        schema: Option<&str>,
        table: &str,
        columns: &[&str],
    ) -> QueryResult<Vec<crate::moved::MoveCause>> {
        let _ = (schema, table, columns);
        Ok(Vec::new())
    }
}

#[derive(QueryableByName)]
struct ColumnSet {
    #[diesel(sql_type = Nullable<Text>)]
    cols: Option<String>,
}

fn split(rows: Vec<ColumnSet>) -> Vec<Vec<String>> {
    let mut sets: Vec<Vec<String>> = rows
        .into_iter()
        .filter_map(|r| r.cols)
        .map(|c| {
            let mut v: Vec<String> = c.split(',').map(str::to_owned).collect();
            v.sort();
            v
        })
        .collect();
    sets.sort();
    sets.dedup();
    sets
}

/// A primary key or unique index: its columns, and those it holds unique in
/// another collation than the column is compared in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UniqueSet {
    /// The index's (or constraint's) name; empty where the backend does not say.
    pub index: String,
    /// Its columns, sorted by name.
    pub columns: Vec<String>,
    /// Its columns that it holds unique in another collation than the column
    /// is compared in: `(column, the column's collation, the index's)`. Two
    /// values the column's collation calls equal may then both exist (`a` and
    /// `A` under a case-insensitive collation, unique byte for byte).
    pub collations: Vec<(String, String, String)>,
}

impl UniqueSet {
    /// A set no collation undermines.
    fn plain(columns: Vec<String>) -> Self {
        Self {
            index: String::new(),
            columns,
            collations: Vec::new(),
        }
    }

    /// Whether the set makes its columns unique as the scan compares them.
    fn holds(&self) -> bool {
        self.collations.is_empty()
    }

    /// Why the set does not make `table`'s key unique as it is compared.
    fn refusal(&self, table: &TableName) -> Option<String> {
        let (column, own, index) = self.collations.first()?;
        let name = match self.index.as_str() {
            "" => "a unique index".to_string(),
            i => format!("its unique index {i}"),
        };
        Some(format!(
            "{table}.{column} is compared in collation {own}, but {name} holds it unique \
             only in collation {index}: two values equal in {own} (such as 'a' and 'A' \
             when {own} ignores case) can both exist, the scan's comparison sees them as \
             one key value and skips rows; give the column the index's collation, create \
             a unique index on the column in its own collation, or add a column unique in \
             any collation (such as the primary key) to the key"
        ))
    }
}

/// Sorts and deduplicates sets read from the schema.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn sorted(mut sets: Vec<UniqueSet>) -> Vec<UniqueSet> {
    for s in &mut sets {
        s.columns.sort();
    }
    sets.sort_by(|a, b| (&a.columns, &a.index).cmp(&(&b.columns, &b.index)));
    sets.dedup();
    sets
}

/// Why a scan by `key` cannot rely on the unique sets `sets` of its tables:
/// the key covers unique sets only of indexes that hold a text column unique
/// in another collation than it is compared in. A key that covers a set
/// holding in the column's own collation, or none at all, has no such problem.
pub(crate) fn collation_problem(
    key: &[sql::KeyColumn],
    sets: &HashMap<TableName, Vec<UniqueSet>>,
) -> Option<String> {
    let mut refusal = None;
    for table in key_tables(key) {
        let Some(table_sets) = sets.get(table) else {
            continue;
        };
        let own: Vec<&str> = key
            .iter()
            .filter(|k| &k.table == table)
            .map(|k| k.column.as_str())
            .collect();
        for set in table_sets {
            if set.columns.is_empty() || !set.columns.iter().all(|c| own.contains(&c.as_str())) {
                continue;
            }
            if set.holds() {
                return None;
            }
            refusal = refusal.or_else(|| set.refusal(table));
        }
    }
    refusal
}

/// The distinct tables of `key`'s columns, in key order.
fn key_tables(key: &[sql::KeyColumn]) -> Vec<&TableName> {
    let mut tables: Vec<&TableName> = Vec::new();
    for k in key {
        if !tables.contains(&&k.table) {
            tables.push(&k.table);
        }
    }
    tables
}

/// `diesel::sql_query($sql)` with the schema (`NULL`: the connection's
/// default) and the table bound to its first two parameters, as the server
/// backends' schema queries take them.
#[cfg(any(feature = "postgres", feature = "mysql"))]
macro_rules! in_table {
    ($sql:expr, $schema:expr, $table:expr) => {
        diesel::sql_query($sql)
            .bind::<Nullable<Text>, _>($schema)
            .bind::<Text, _>($table)
    };
}

#[cfg(feature = "sqlite")]
impl UniqueIndexes for diesel::SqliteConnection {
    fn unique_column_sets(&mut self, table: &str) -> QueryResult<Vec<Vec<String>>> {
        self.unique_column_sets_in(None, table)
    }

    fn unique_column_sets_in(
        &mut self,
        schema: Option<&str>,
        table: &str,
    ) -> QueryResult<Vec<Vec<String>>> {
        // The table-valued pragmas take the schema as a second argument; without
        // one they search `temp`, `main` and the attached databases in turn.
        let rows = match schema {
            None => diesel::sql_query(
                "SELECT group_concat(ii.name, ',') AS cols \
                 FROM pragma_index_list(?1) AS il JOIN pragma_index_info(il.name) AS ii \
                 WHERE il.\"unique\" = 1 AND il.partial = 0 \
                 GROUP BY il.name HAVING count(*) = count(ii.name) \
                 UNION ALL \
                 SELECT group_concat(name, ',') AS cols FROM pragma_table_info(?1) WHERE pk > 0",
            )
            .bind::<Text, _>(table)
            .load::<ColumnSet>(self)?,
            Some(schema) => diesel::sql_query(
                "SELECT group_concat(ii.name, ',') AS cols \
                 FROM pragma_index_list(?1, ?2) AS il \
                 JOIN pragma_index_info(il.name, ?2) AS ii \
                 WHERE il.\"unique\" = 1 AND il.partial = 0 \
                 GROUP BY il.name HAVING count(*) = count(ii.name) \
                 UNION ALL \
                 SELECT group_concat(name, ',') AS cols FROM pragma_table_info(?1, ?2) \
                 WHERE pk > 0",
            )
            .bind::<Text, _>(table)
            .bind::<Text, _>(schema)
            .load::<ColumnSet>(self)?,
        };
        Ok(split(rows))
    }

    fn key_move_causes(
        &mut self,
        schema: Option<&str>,
        table: &str,
        columns: &[&str],
    ) -> QueryResult<Vec<crate::moved::MoveCause>> {
        crate::moved::sqlite_causes(self, schema, table, columns)
    }
    fn unique_sets_in(&mut self, schema: Option<&str>, table: &str) -> QueryResult<Vec<UniqueSet>> {
        // One statement: each key column of each unique index with the
        // collation the index compares it in, the primary key's columns, and
        // the table's CREATE statement, which alone tells a column's collation.
        let master = match schema {
            None => "sqlite_temp_master WHERE type = 'table' AND name = ?1 COLLATE NOCASE \
                     UNION ALL SELECT 3, NULL, NULL, 0, sql, NULL FROM main.sqlite_master"
                .to_string(),
            Some(s) => format!("\"{}\".sqlite_master", s.replace('"', "\"\"")),
        };
        let on = match schema {
            None => "",
            Some(_) => ", ?2",
        };
        let query = format!(
            "SELECT 0 AS part, il.name AS idx, il.origin AS origin, ii.seqno AS seq, \
                    ii.name AS col, ii.coll AS coll \
             FROM pragma_index_list(?1{on}) AS il JOIN pragma_index_xinfo(il.name{on}) AS ii \
             WHERE il.\"unique\" = 1 AND il.partial = 0 AND ii.key = 1 \
             UNION ALL SELECT 1, NULL, NULL, pk, name, NULL FROM pragma_table_info(?1{on}) \
             WHERE pk > 0 \
             UNION ALL SELECT 2, NULL, NULL, 0, sql, NULL FROM {master} \
             WHERE type = 'table' AND name = ?1 COLLATE NOCASE \
             ORDER BY part, idx, seq"
        );
        let query = diesel::sql_query(query).bind::<Text, _>(table);
        let rows = match schema {
            None => query.load::<SqliteIndexPart>(self)?,
            Some(s) => query.bind::<Text, _>(s).load::<SqliteIndexPart>(self)?,
        };
        let mut create = rows
            .iter()
            .find(|r| r.part >= 2)
            .and_then(|r| r.col.clone());
        let needs_create = rows.iter().any(|r| r.part == 0);
        if create.is_none() && needs_create && schema.is_none() {
            create = sqlite_attached_create(self, table)?;
        }
        Ok(sqlite_sets(&rows, create.as_deref()))
    }

    fn index_collations_may_differ(&self) -> bool {
        true
    }
}

/// A row of [`UniqueIndexes::unique_sets_in`] on SQLite: a unique index's
/// key column (`part` 0), a primary key column (1), or the table's `CREATE`
/// statement in `col` (2 and 3).
#[cfg(feature = "sqlite")]
#[derive(QueryableByName)]
struct SqliteIndexPart {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    part: i32,
    #[diesel(sql_type = Nullable<Text>)]
    idx: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    origin: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    col: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    coll: Option<String>,
}

/// The `CREATE` statement of `table` in an attached database, where the
/// connection finds a table that is neither temporary nor in `main`.
#[cfg(feature = "sqlite")]
fn sqlite_attached_create(
    conn: &mut diesel::SqliteConnection,
    table: &str,
) -> QueryResult<Option<String>> {
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = Text)]
        name: String,
    }
    let databases = diesel::sql_query(
        "SELECT name FROM pragma_database_list WHERE name NOT IN ('main', 'temp') ORDER BY seq",
    )
    .load::<Name>(conn)?;
    for db in databases {
        let sql = format!(
            "SELECT sql AS cols FROM \"{}\".sqlite_master \
             WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
            db.name.replace('"', "\"\"")
        );
        let found = diesel::sql_query(sql)
            .bind::<Text, _>(table)
            .load::<ColumnSet>(conn)?;
        if let Some(sql) = found.into_iter().find_map(|r| r.cols) {
            return Ok(Some(sql));
        }
    }
    Ok(None)
}

/// The unique sets of [`SqliteIndexPart`] rows, given the table's `CREATE`
/// statement: an index holds a column unique in another collation than the
/// column's own unless the column's is `BINARY` (values equal byte for byte
/// are equal in every collation).
#[cfg(feature = "sqlite")]
fn sqlite_sets(rows: &[SqliteIndexPart], create: Option<&str>) -> Vec<UniqueSet> {
    let mut sets: Vec<UniqueSet> = Vec::new();
    let mut skip: Option<&str> = None;
    for (i, r) in rows.iter().enumerate().filter(|(_, r)| r.part == 0) {
        let Some(idx) = r.idx.as_deref() else {
            continue;
        };
        let first = i == 0 || rows[i - 1].idx.as_deref() != Some(idx);
        if first {
            skip = None;
            sets.push(UniqueSet {
                index: idx.to_string(),
                ..UniqueSet::plain(Vec::new())
            });
        }
        if skip == Some(idx) {
            continue;
        }
        let Some(col) = r.col.as_deref() else {
            // an expression: the index makes no column unique
            sets.pop();
            skip = Some(idx);
            continue;
        };
        let set = sets.last_mut().expect("pushed above");
        set.columns.push(col.to_string());
        let index_coll = r.coll.as_deref().unwrap_or("BINARY");
        let own = create.and_then(|sql| sql::sqlite_column_collation(sql, col));
        match own {
            Some(own) if own.eq_ignore_ascii_case("BINARY") => {}
            Some(own) if own.eq_ignore_ascii_case(index_coll) => {}
            Some(own) => set
                .collations
                .push((col.to_string(), own, index_coll.to_string())),
            None => set.collations.push((
                col.to_string(),
                "(unknown: its CREATE TABLE statement could not be read)".to_string(),
                index_coll.to_string(),
            )),
        }
    }
    // The primary key of a rowid table (`INTEGER PRIMARY KEY`) has no index;
    // any other primary key is one of the indexes above.
    if !rows.iter().any(|r| r.origin.as_deref() == Some("pk")) {
        let pk: Vec<String> = rows
            .iter()
            .filter(|r| r.part == 1)
            .filter_map(|r| r.col.clone())
            .collect();
        if !pk.is_empty() {
            sets.push(UniqueSet::plain(pk));
        }
    }
    sorted(sets)
}

#[cfg(feature = "postgres")]
impl UniqueIndexes for diesel::PgConnection {
    fn unique_column_sets(&mut self, table: &str) -> QueryResult<Vec<Vec<String>>> {
        self.unique_column_sets_in(None, table)
    }

    fn unique_column_sets_in(
        &mut self,
        schema: Option<&str>,
        table: &str,
    ) -> QueryResult<Vec<Vec<String>>> {
        let rows = in_table!(PG_UNIQUE_SETS, schema, table).load::<ColumnSet>(self)?;
        Ok(split(rows))
    }

    fn key_move_causes(
        &mut self,
        schema: Option<&str>,
        table: &str,
        columns: &[&str],
    ) -> QueryResult<Vec<crate::moved::MoveCause>> {
        crate::moved::pg_causes(self, schema, table, columns)
    }
    fn unique_sets_in(&mut self, schema: Option<&str>, table: &str) -> QueryResult<Vec<UniqueSet>> {
        let rows = in_table!(PG_UNIQUE_COLLATIONS, schema, table).load::<PgUniqueSet>(self)?;
        Ok(pg_sets(rows))
    }

    fn index_collations_may_differ(&self) -> bool {
        true
    }
}

/// The unique indexes of a PostgreSQL table (see
/// [`UniqueIndexes::unique_sets_in`]): each with its columns and, in `bad`,
/// `column US own collation US index's collation` (joined by RS) for each
/// column that has a nondeterministic collation and is indexed in another.
/// A deterministic collation calls two values equal only when they are equal
/// byte for byte, so an index in any collation holds such a column unique as
/// it is compared.
#[cfg(feature = "postgres")]
const PG_UNIQUE_COLLATIONS: &str = "SELECT c.relname::text AS idx, \
            string_agg(a.attname::text, ',') AS cols, \
            string_agg(CASE WHEN a.attcollation <> 0 AND ix.indcollation[k.i] <> a.attcollation \
                            AND NOT own.collisdeterministic \
                       THEN a.attname::text || chr(31) || own.collname::text || chr(31) || \
                            COALESCE(inx.collname::text, '?') END, chr(30)) AS bad \
     FROM pg_index ix \
     JOIN pg_class c ON c.oid = ix.indexrelid \
     CROSS JOIN LATERAL generate_series(0, ix.indnatts - 1) AS k(i) \
     JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = ix.indkey[k.i] \
     LEFT JOIN pg_collation own ON own.oid = a.attcollation \
     LEFT JOIN pg_collation inx ON inx.oid = ix.indcollation[k.i] \
     WHERE ix.indrelid = to_regclass(CASE WHEN $1::text IS NULL THEN quote_ident($2) \
           ELSE quote_ident($1) || '.' || quote_ident($2) END) \
       AND ix.indisunique AND ix.indpred IS NULL AND ix.indexprs IS NULL \
     GROUP BY ix.indexrelid, c.relname";

/// One row of [`PG_UNIQUE_COLLATIONS`].
#[cfg(feature = "postgres")]
#[derive(QueryableByName)]
pub(crate) struct PgUniqueSet {
    #[diesel(sql_type = Text)]
    idx: String,
    #[diesel(sql_type = Text)]
    cols: String,
    #[diesel(sql_type = Nullable<Text>)]
    bad: Option<String>,
}

#[cfg(feature = "postgres")]
fn pg_sets(rows: Vec<PgUniqueSet>) -> Vec<UniqueSet> {
    let sets = rows
        .into_iter()
        .map(|r| UniqueSet {
            index: r.idx,
            columns: r.cols.split(',').map(str::to_owned).collect(),
            collations: r
                .bad
                .iter()
                .flat_map(|b| b.split('\u{1e}'))
                .filter_map(|c| {
                    let mut parts = c.split('\u{1f}').map(str::to_owned);
                    Some((parts.next()?, parts.next()?, parts.next()?))
                })
                .collect(),
        })
        .collect();
    sorted(sets)
}

/// [`UniqueIndexes::unique_sets_in`] on an async PostgreSQL connection.
#[cfg(all(feature = "postgres", feature = "async"))]
pub(crate) async fn pg_unique_sets_async(
    conn: &mut diesel_async::AsyncPgConnection,
    schema: Option<&str>,
    table: &str,
) -> QueryResult<Vec<UniqueSet>> {
    let query = in_table!(PG_UNIQUE_COLLATIONS, schema, table);
    let rows = diesel_async::RunQueryDsl::load::<PgUniqueSet>(query, conn).await?;
    Ok(pg_sets(rows))
}

/// [`key_problem`] on an async PostgreSQL connection: the same query and
/// verdict.
#[cfg(all(feature = "postgres", feature = "async"))]
pub(crate) async fn pg_key_problem_async(
    conn: &mut diesel_async::AsyncPgConnection,
    key_sql: &str,
) -> QueryResult<Option<String>> {
    let Ok(key) = sql::key_columns(key_sql) else {
        return Ok(None);
    };
    let mut sets = HashMap::new();
    for table in key_tables(&key) {
        let read = pg_unique_sets_async(conn, table.schema.as_deref(), &table.table).await?;
        sets.insert(table.clone(), read);
    }
    Ok(collation_problem(&key, &sets))
}

/// The unique column sets of a PostgreSQL table (see
/// [`UniqueIndexes::unique_column_sets_in`]).
#[cfg(feature = "postgres")]
const PG_UNIQUE_SETS: &str = "SELECT string_agg(a.attname::text, ',') AS cols \
     FROM pg_index ix \
     JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = ANY(ix.indkey) \
     WHERE ix.indrelid = to_regclass(CASE WHEN $1::text IS NULL THEN quote_ident($2) \
           ELSE quote_ident($1) || '.' || quote_ident($2) END) \
       AND ix.indisunique AND ix.indpred IS NULL AND ix.indexprs IS NULL \
     GROUP BY ix.indexrelid";

/// [`UniqueIndexes::unique_column_sets_in`] on an async PostgreSQL connection.
#[cfg(all(feature = "postgres", feature = "async"))]
pub(crate) async fn pg_unique_column_sets_async(
    conn: &mut diesel_async::AsyncPgConnection,
    schema: Option<&str>,
    table: &str,
) -> QueryResult<Vec<Vec<String>>> {
    let query = in_table!(PG_UNIQUE_SETS, schema, table);
    let rows = diesel_async::RunQueryDsl::load::<ColumnSet>(query, conn).await?;
    Ok(split(rows))
}

#[cfg(feature = "mysql")]
impl UniqueIndexes for diesel::MysqlConnection {
    fn unique_column_sets(&mut self, table: &str) -> QueryResult<Vec<Vec<String>>> {
        self.unique_column_sets_in(None, table)
    }

    fn unique_column_sets_in(
        &mut self,
        schema: Option<&str>,
        table: &str,
    ) -> QueryResult<Vec<Vec<String>>> {
        let rows = in_table!(MYSQL_UNIQUE_SETS, schema, table).load::<ColumnSet>(self)?;
        Ok(split(rows))
    }

    fn has_index_in_order(
        &mut self,
        schema: Option<&str>,
        table: &str,
        columns: &[&str],
    ) -> QueryResult<bool> {
        let rows = in_table!(MYSQL_INDEX_COLUMNS, schema, table).load::<IndexColumns>(self)?;
        Ok(index_in_order(&rows, columns))
    }

    fn key_column_problem(
        &mut self,
        schema: Option<&str>,
        table: &str,
        column: &str,
    ) -> QueryResult<Option<String>> {
        let info = in_table!(MYSQL_COLUMN_INFO, schema, table)
            .bind::<Text, _>(column)
            .load::<MysqlColumnInfo>(self)?;
        let Some(info) = info.into_iter().next() else {
            return Ok(None);
        };
        let no_pad = match info.char_collation() {
            Some(c) if c.to_ascii_lowercase().contains("nopad") => true,
            Some(c) => pad_is_no_pad(
                diesel::sql_query(MYSQL_PAD)
                    .bind::<Text, _>(c)
                    .load::<MysqlPad>(self),
            ),
            None => false,
        };
        Ok(info.problem(table, column, no_pad))
    }

    fn key_move_causes(
        &mut self,
        schema: Option<&str>,
        table: &str,
        columns: &[&str],
    ) -> QueryResult<Vec<crate::moved::MoveCause>> {
        crate::moved::mysql_causes(self, schema, table, columns)
    }
}

/// The unique column sets of a MySQL/MariaDB table (see
/// [`UniqueIndexes::unique_column_sets_in`]).
#[cfg(feature = "mysql")]
const MYSQL_UNIQUE_SETS: &str =
    "SELECT CAST(GROUP_CONCAT(COLUMN_NAME SEPARATOR ',') AS CHAR) AS cols \
     FROM information_schema.STATISTICS \
     WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? AND NON_UNIQUE = 0 \
     GROUP BY INDEX_NAME HAVING SUM(SUB_PART IS NOT NULL) = 0";

/// The indexes of a MySQL/MariaDB table, each with its columns in order (a
/// prefix part as an empty name) (see [`UniqueIndexes::has_index_in_order`]).
#[cfg(feature = "mysql")]
const MYSQL_INDEX_COLUMNS: &str =
    "SELECT CAST(INDEX_NAME AS CHAR) AS name, CAST(MAX(NON_UNIQUE) AS SIGNED) AS non_unique, \
     CAST(GROUP_CONCAT(IF(SUB_PART IS NULL, COLUMN_NAME, '') ORDER BY SEQ_IN_INDEX SEPARATOR ',') AS CHAR) AS cols \
     FROM information_schema.STATISTICS \
     WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
     GROUP BY INDEX_NAME";

/// One index of [`MYSQL_INDEX_COLUMNS`].
#[cfg(feature = "mysql")]
#[derive(QueryableByName)]
struct IndexColumns {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = BigInt)]
    non_unique: i64,
    #[diesel(sql_type = Text)]
    cols: String,
}

/// Whether one of the indexes `rows` gives the order of `columns`.
#[cfg(feature = "mysql")]
fn index_in_order(rows: &[IndexColumns], columns: &[&str]) -> bool {
    let primary: Vec<&str> = rows
        .iter()
        .find(|r| r.name == "PRIMARY")
        .map(|r| r.cols.split(',').collect())
        .unwrap_or_default();
    rows.iter().any(|r| {
        let mut order: Vec<&str> = r.cols.split(',').collect();
        // a prefix index part ends the usable order
        if let Some(cut) = order.iter().position(|c| c.is_empty()) {
            order.truncate(cut);
        }
        // InnoDB ends every secondary index with the primary key; MariaDB
        // uses that order for a non-unique index only
        if r.name != "PRIMARY" && r.non_unique == 1 && order.len() == r.cols.split(',').count() {
            let rest: Vec<&str> = primary
                .iter()
                .copied()
                .filter(|p| !order.contains(p))
                .collect();
            order.extend(rest);
        }
        order.len() >= columns.len()
            && order
                .iter()
                .zip(columns)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
    })
}

/// [`UniqueIndexes::has_index_in_order`] on an async MySQL connection.
#[cfg(all(feature = "mysql", feature = "async"))]
pub(crate) async fn has_index_in_order_async(
    conn: &mut diesel_async::AsyncMysqlConnection,
    schema: Option<&str>,
    table: &str,
    columns: &[&str],
) -> QueryResult<bool> {
    let query = in_table!(MYSQL_INDEX_COLUMNS, schema, table);
    let rows = diesel_async::RunQueryDsl::load::<IndexColumns>(query, conn).await?;
    Ok(index_in_order(&rows, columns))
}

/// [`UniqueIndexes::unique_column_sets_in`] on an async MySQL connection.
#[cfg(all(feature = "mysql", feature = "async"))]
pub(crate) async fn unique_column_sets_async(
    conn: &mut diesel_async::AsyncMysqlConnection,
    schema: Option<&str>,
    table: &str,
) -> QueryResult<Vec<Vec<String>>> {
    let query = in_table!(MYSQL_UNIQUE_SETS, schema, table);
    let rows = diesel_async::RunQueryDsl::load::<ColumnSet>(query, conn).await?;
    Ok(split(rows))
}

/// A key column's type, collation and length, and the server's sort prefix.
#[cfg(feature = "mysql")]
#[derive(QueryableByName)]
pub(crate) struct MysqlColumnInfo {
    #[diesel(sql_type = Text)]
    data_type: String,
    #[diesel(sql_type = Nullable<Text>)]
    collation: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    octets: Option<i64>,
    #[diesel(sql_type = BigInt)]
    max_sort: i64,
}

#[cfg(feature = "mysql")]
pub(crate) const MYSQL_COLUMN_INFO: &str = "SELECT CAST(LOWER(DATA_TYPE) AS CHAR) AS data_type, \
            CAST(COLLATION_NAME AS CHAR) AS collation, \
            CAST(CHARACTER_OCTET_LENGTH AS SIGNED) AS octets, \
            CAST(@@SESSION.max_sort_length AS SIGNED) AS max_sort \
     FROM information_schema.COLUMNS \
     WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? AND COLUMN_NAME = ?";

/// Whether a MySQL/MariaDB collation is `NO PAD`: MariaDB names them
/// `*_nopad_*`; MySQL 8 says so in `information_schema.COLLATIONS.PAD_ATTRIBUTE`,
/// a column MariaDB does not have (the query's error then means "no").
#[cfg(feature = "mysql")]
pub(crate) const MYSQL_PAD: &str = "SELECT CAST(PAD_ATTRIBUTE AS CHAR) AS pad \
     FROM information_schema.COLLATIONS WHERE COLLATION_NAME = ?";

#[cfg(feature = "mysql")]
#[derive(QueryableByName)]
pub(crate) struct MysqlPad {
    #[diesel(sql_type = Text)]
    pad: String,
}

#[cfg(feature = "mysql")]
pub(crate) fn pad_is_no_pad(rows: QueryResult<Vec<MysqlPad>>) -> bool {
    matches!(rows, Ok(rows) if rows.iter().any(|r| r.pad.eq_ignore_ascii_case("NO PAD")))
}

#[cfg(feature = "mysql")]
impl MysqlColumnInfo {
    /// The collation to ask about `NO PAD`, for a `CHAR` column.
    pub(crate) fn char_collation(&self) -> Option<&str> {
        (self.data_type == "char")
            .then_some(self.collation.as_deref())
            .flatten()
    }

    /// Why the column cannot be a key, given whether its collation is `NO PAD`.
    pub(crate) fn problem(&self, table: &str, column: &str, no_pad: bool) -> Option<String> {
        let info = self;
        let name = format!("{table}.{column}");
        if no_pad {
            if let Some(collation) = info.char_collation() {
                return Some(format!(
                    "{name} is CHAR with the NO PAD collation {collation}: the server \
                     pads CHAR values with spaces in some comparisons and strips them in \
                     others, so it cannot order and compare such a key consistently; use \
                     a VARCHAR column or a PAD SPACE collation, or scan by a unique id \
                     column"
                ));
            }
        }
        let sorted_prefix = matches!(
            info.data_type.as_str(),
            "char"
                | "varchar"
                | "binary"
                | "varbinary"
                | "tinytext"
                | "text"
                | "mediumtext"
                | "longtext"
                | "tinyblob"
                | "blob"
                | "mediumblob"
                | "longblob"
        );
        match info.octets {
            Some(octets) if sorted_prefix && octets > info.max_sort => Some(format!(
                "{name} is {} holding up to {octets} bytes, but the server sorts only the \
                 first @@max_sort_length = {} bytes of a value, so values that share that \
                 prefix come back in an arbitrary order and rows would be skipped or \
                 repeated; scan by a shorter column or a unique id column, or raise \
                 max_sort_length (globally) above {octets}",
                info.data_type.to_ascii_uppercase(),
                info.max_sort
            )),
            _ => None,
        }
    }
}

/// [`key_problem`] on an async MySQL connection: the same queries and verdict.
#[cfg(all(feature = "mysql", feature = "async"))]
pub(crate) async fn key_problem_async(
    conn: &mut diesel_async::AsyncMysqlConnection,
    key_sql: &str,
) -> QueryResult<Option<String>> {
    let Ok(key) = sql::key_columns(key_sql) else {
        return Ok(None);
    };
    for k in &key {
        let (schema, table, column) = (k.table.schema.as_deref(), &k.table.table, &k.column);
        if let Some(problem) = key_column_problem_async(conn, schema, table, column).await? {
            return Ok(Some(problem));
        }
    }
    Ok(None)
}

/// [`UniqueIndexes::key_column_problem`] on an async MySQL connection.
#[cfg(all(feature = "mysql", feature = "async"))]
pub(crate) async fn key_column_problem_async(
    conn: &mut diesel_async::AsyncMysqlConnection,
    schema: Option<&str>,
    table: &str,
    column: &str,
) -> QueryResult<Option<String>> {
    use diesel_async::RunQueryDsl;
    let query = in_table!(MYSQL_COLUMN_INFO, schema, table).bind::<Text, _>(column);
    let info = RunQueryDsl::load::<MysqlColumnInfo>(query, conn).await?;
    let Some(info) = info.into_iter().next() else {
        return Ok(None);
    };
    let no_pad = match info.char_collation() {
        Some(c) if c.to_ascii_lowercase().contains("nopad") => true,
        Some(c) => {
            let query = diesel::sql_query(MYSQL_PAD).bind::<Text, _>(c);
            pad_is_no_pad(RunQueryDsl::load::<MysqlPad>(query, conn).await)
        }
        None => false,
    };
    Ok(info.problem(table, column, no_pad))
}

/// Why the database cannot scan by the key whose columns render as `key_sql`
/// ([`UniqueIndexes::key_column_problem`] of each column, and where an index
/// may hold a column unique in another collation than it is compared in, the
/// key's unique sets: see [`collation_problem`]), if it cannot.
pub(crate) fn key_problem<C: UniqueIndexes>(
    conn: &mut C,
    key_sql: &str,
) -> QueryResult<Option<String>> {
    let Ok(key) = sql::key_columns(key_sql) else {
        return Ok(None);
    };
    for k in &key {
        let problem =
            conn.key_column_problem(k.table.schema.as_deref(), &k.table.table, &k.column)?;
        if problem.is_some() {
            return Ok(problem);
        }
    }
    if !conn.index_collations_may_differ() {
        return Ok(None);
    }
    let mut sets = HashMap::new();
    for table in key_tables(&key) {
        let read = conn.unique_sets_in(table.schema.as_deref(), &table.table)?;
        sets.insert(table.clone(), read);
    }
    Ok(collation_problem(&key, &sets))
}

fn query_error(context: &'static str) -> impl FnOnce(diesel::result::Error) -> Error {
    move |source| Error::Query { context, source }
}

/// The uniqueness check of [`Chunked::verify_unique`](crate::Chunked::verify_unique),
/// on the SQL Diesel rendered for the key's columns and for the query.
///
/// The key is unique over the query when every table instance of its `FROM`
/// clause is pinned down by the key: an instance is, when the key covers one of
/// its unique column sets, or when each column of one of its unique sets is
/// equated, by a join condition that holds wherever the instance is not
/// null-extended, to a constant or to a column of an instance already pinned.
pub(crate) fn verify<C: UniqueIndexes>(
    conn: &mut C,
    names: &[(&'static str, &'static str)],
    describe: &str,
    key_sql: Result<String, String>,
    query_sql: Result<String, String>,
) -> Result<(), Error> {
    let mut reader = Blocking(conn);
    let check = verify_with(&mut reader, names, describe, key_sql, query_sql);
    let mut check = std::pin::pin!(check);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match check.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(result) => result,
        // every read of `Blocking` is done when its future is made
        std::task::Poll::Pending => unreachable!("a blocking schema read is never pending"),
    }
}

/// A future of a schema read.
pub(crate) type SchemaRead<'a, T> = Pin<Box<dyn Future<Output = QueryResult<T>> + Send + 'a>>;

/// What the uniqueness check reads of the schema, on a blocking or an async
/// connection.
pub(crate) trait SchemaReader {
    /// See [`UniqueIndexes::key_column_problem`].
    fn column_problem<'a>(
        &'a mut self,
        schema: Option<&'a str>,
        table: &'a str,
        column: &'a str,
    ) -> SchemaRead<'a, Option<String>>;

    /// See [`UniqueIndexes::unique_sets_in`].
    fn column_sets<'a>(
        &'a mut self,
        schema: Option<&'a str>,
        table: &'a str,
    ) -> SchemaRead<'a, Vec<UniqueSet>>;
}

/// A blocking connection as a [`SchemaReader`]: each read runs when its
/// future is made, which is then ready.
struct Blocking<'c, C>(&'c mut C);

impl<C: UniqueIndexes> SchemaReader for Blocking<'_, C> {
    fn column_problem<'a>(
        &'a mut self,
        schema: Option<&'a str>,
        table: &'a str,
        column: &'a str,
    ) -> SchemaRead<'a, Option<String>> {
        Box::pin(std::future::ready(
            self.0.key_column_problem(schema, table, column),
        ))
    }

    fn column_sets<'a>(
        &'a mut self,
        schema: Option<&'a str>,
        table: &'a str,
    ) -> SchemaRead<'a, Vec<UniqueSet>> {
        Box::pin(std::future::ready(self.0.unique_sets_in(schema, table)))
    }
}

/// [`verify`] on any [`SchemaReader`].
pub(crate) async fn verify_with<R: SchemaReader>(
    conn: &mut R,
    names: &[(&'static str, &'static str)],
    describe: &str,
    key_sql: Result<String, String>,
    query_sql: Result<String, String>,
) -> Result<(), Error> {
    let unreadable = |table: String, reason: String| Error::NotUniqueOverQuery {
        table,
        columns: describe.to_string(),
        reason: format!(
            "{reason}; verify_unique vouches only for tables and joins it can read, so \
             check the key by hand"
        ),
    };
    let first_table = names
        .first()
        .map(|(t, _)| t.to_string())
        .unwrap_or_default();
    let key = key_sql
        .and_then(|sql| sql::key_columns(&sql))
        .map_err(|reason| {
            unreadable(
                first_table.clone(),
                format!("the key cannot be read: {reason}"),
            )
        })?;

    for k in &key {
        if let Some(reason) = conn
            .column_problem(k.table.schema.as_deref(), &k.table.table, &k.column)
            .await
            .map_err(query_error("reading the key column's type"))?
        {
            return Err(Error::UnsupportedKey {
                columns: describe.to_string(),
                reason,
            });
        }
    }

    let from = query_sql
        .and_then(|sql| sql::from_clause(&sql))
        .map_err(|reason| {
            unreadable(
                key[0].table.to_string(),
                format!("the query's FROM clause cannot be read: {reason}"),
            )
        })?;
    // Each key column belongs to the instance of its table that has no alias.
    let mut key_of: Vec<Vec<&str>> = vec![Vec::new(); from.instances.len()];
    for k in &key {
        let found: Vec<usize> = from
            .instances
            .iter()
            .enumerate()
            .filter(|(_, i)| i.alias.is_none() && i.name == k.table)
            .map(|(n, _)| n)
            .collect();
        match found.as_slice() {
            [n] => key_of[*n].push(&k.column),
            _ => {
                return Err(unreadable(
                    k.table.to_string(),
                    format!(
                        "key column {}.{} does not name exactly one table of the query's \
                         FROM clause",
                        k.table, k.column
                    ),
                ))
            }
        }
    }

    let mut sets: HashMap<TableName, Vec<UniqueSet>> = HashMap::new();
    for i in &from.instances {
        if !sets.contains_key(&i.name) {
            let s = conn
                .column_sets(i.name.schema.as_deref(), &i.name.table)
                .await
                .map_err(query_error("reading the table's unique indexes"))?;
            sets.insert(i.name.clone(), s);
        }
    }

    // The key is unique as the scan compares it only through sets that hold
    // their columns unique in the collations they are compared in; when it
    // would be unique through the others too, the collation is what is wrong.
    let loose = match unpinned(&from, &key_of, &sets, true) {
        None => return Ok(()),
        Some(loose) => loose,
    };
    if unpinned(&from, &key_of, &sets, false).is_none() {
        let reason = collation_problem(&key, &sets)
            .or_else(|| {
                let mut all: Vec<(&TableName, &UniqueSet)> = sets
                    .iter()
                    .flat_map(|(t, s)| s.iter().map(move |s| (t, s)))
                    .collect();
                all.sort_by(|a, b| (a.0, &a.1.index).cmp(&(b.0, &b.1.index)));
                all.into_iter().find_map(|(t, s)| s.refusal(t))
            })
            .unwrap_or_default();
        return Err(Error::UnsupportedKey {
            columns: describe.to_string(),
            reason,
        });
    }
    // the sets to suggest: those that hold as the scan compares first
    let sets_of = |n: usize| -> Vec<&Vec<String>> {
        let mut of: Vec<&UniqueSet> = sets[&from.instances[n].name].iter().collect();
        of.sort_by_key(|s| !s.holds());
        of.into_iter().map(|s| &s.columns).collect()
    };
    let Some(loose) = loose else {
        let k = &key[0];
        return Err(Error::NotUnique {
            table: k.table.to_string(),
            columns: describe.to_string(),
        });
    };
    let inst = &from.instances[loose];
    let shown = match &inst.alias {
        Some(a) => format!("{} (as {a})", inst.name),
        None => inst.name.to_string(),
    };
    let advice = match sets_of(loose).first() {
        Some(set) => {
            let mut cols: Vec<String> = names.iter().map(|(t, c)| format!("{t}::{c}")).collect();
            cols.extend(set.iter().map(|c| format!("{}::{c}", inst.name.table)));
            format!(
                "add a unique key of {} to the scan key, e.g. chunked_by(({}))",
                inst.name,
                cols.join(", ")
            )
        }
        None => format!(
            "{} has no primary key or unique index, so no key over this query can be \
             verified",
            inst.name
        ),
    };
    Err(Error::NotUniqueOverQuery {
        table: inst.name.to_string(),
        columns: describe.to_string(),
        reason: format!(
            "several rows of {shown} can join one row of the other tables (neither the key \
             nor a join condition fixes a primary key or unique index of {shown}), so key \
             values repeat; {advice}"
        ),
    })
}

/// The first instance of `from` that the key does not pin down (see
/// [`verify`]), using only the unique sets that hold as the scan compares
/// (`holding`) or all of them: `None` when every instance is pinned,
/// `Some(None)` when the key covers no unique set of any instance.
fn unpinned(
    from: &sql::FromClause,
    key_of: &[Vec<&str>],
    sets: &HashMap<TableName, Vec<UniqueSet>>,
    holding: bool,
) -> Option<Option<usize>> {
    let sets_of = |n: usize| {
        sets[&from.instances[n].name]
            .iter()
            .filter(move |s| !holding || s.holds())
            .map(|s| &s.columns)
    };
    // Seeds: instances whose unique set the key covers.
    let mut pinned: HashSet<usize> = (0..from.instances.len())
        .filter(|&n| {
            sets_of(n)
                .any(|set| !set.is_empty() && set.iter().all(|c| key_of[n].contains(&c.as_str())))
        })
        .collect();
    if pinned.is_empty() {
        return Some(None);
    }
    loop {
        let before = pinned.len();
        for (n, own_key) in key_of.iter().enumerate() {
            if pinned.contains(&n) {
                continue;
            }
            // Columns of `n` whose value is fixed once the pinned instances are.
            let mut fixed: HashSet<&str> = own_key.iter().copied().collect();
            for e in &from.equalities {
                if !e.pinned.contains(&n) {
                    continue;
                }
                for (this, other) in [(&e.left, &e.right), (&e.right, &e.left)] {
                    if let Operand::Column(m, col) = this {
                        let other_fixed = match other {
                            Operand::Constant => true,
                            Operand::Column(o, _) => *o != n && pinned.contains(o),
                        };
                        if *m == n && other_fixed {
                            fixed.insert(col);
                        }
                    }
                }
            }
            if sets_of(n)
                .any(|set| !set.is_empty() && set.iter().all(|c| fixed.contains(c.as_str())))
            {
                pinned.insert(n);
            }
        }
        if pinned.len() == before {
            break;
        }
    }
    (0..from.instances.len())
        .find(|n| !pinned.contains(n))
        .map(Some)
}
