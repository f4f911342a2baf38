//! Checking the schema for what makes a key safe: a primary key or unique index
//! whose columns are all part of the key (as Rails 8 does before `in_batches`).

use diesel::connection::LoadConnection;
use diesel::sql_types::{Nullable, Text};
use diesel::{QueryResult, QueryableByName, RunQueryDsl};

/// Connections that can list a table's unique column sets: its primary key and
/// its unique indexes (partial and expression indexes excluded, and on MySQL
/// prefix indexes, none of which makes a column unique).
///
/// Implemented for the connections of the three backends.
///
/// ```
/// # include!("../tests/doc/setup.rs");
/// use diesel_chunked_iterator::UniqueIndexes;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let conn = &mut doc_connection();
/// assert_eq!(conn.unique_column_sets("posts")?, [vec!["id".to_string()]]);
/// # Ok(()) }
/// ```
pub trait UniqueIndexes: LoadConnection {
    /// The column sets of the primary key and unique indexes of `table`, each
    /// sorted by name. A table that does not exist has none.
    fn unique_column_sets(&mut self, table: &str) -> QueryResult<Vec<Vec<String>>>;
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

#[cfg(feature = "sqlite")]
impl UniqueIndexes for diesel::SqliteConnection {
    fn unique_column_sets(&mut self, table: &str) -> QueryResult<Vec<Vec<String>>> {
        let rows = diesel::sql_query(
            "SELECT group_concat(ii.name, ',') AS cols \
             FROM pragma_index_list(?1) AS il JOIN pragma_index_info(il.name) AS ii \
             WHERE il.\"unique\" = 1 AND il.partial = 0 \
             GROUP BY il.name HAVING count(*) = count(ii.name) \
             UNION ALL \
             SELECT group_concat(name, ',') AS cols FROM pragma_table_info(?1) WHERE pk > 0",
        )
        .bind::<Text, _>(table)
        .load::<ColumnSet>(self)?;
        Ok(split(rows))
    }
}

#[cfg(feature = "postgres")]
impl UniqueIndexes for diesel::PgConnection {
    fn unique_column_sets(&mut self, table: &str) -> QueryResult<Vec<Vec<String>>> {
        let rows = diesel::sql_query(
            "SELECT string_agg(a.attname::text, ',') AS cols \
             FROM pg_index ix \
             JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = ANY(ix.indkey) \
             WHERE ix.indrelid = to_regclass(quote_ident($1)) \
               AND ix.indisunique AND ix.indpred IS NULL AND ix.indexprs IS NULL \
             GROUP BY ix.indexrelid",
        )
        .bind::<Text, _>(table)
        .load::<ColumnSet>(self)?;
        Ok(split(rows))
    }
}

#[cfg(feature = "mysql")]
impl UniqueIndexes for diesel::MysqlConnection {
    fn unique_column_sets(&mut self, table: &str) -> QueryResult<Vec<Vec<String>>> {
        let rows = diesel::sql_query(
            "SELECT CAST(GROUP_CONCAT(COLUMN_NAME SEPARATOR ',') AS CHAR) AS cols \
             FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND NON_UNIQUE = 0 \
             GROUP BY INDEX_NAME HAVING SUM(SUB_PART IS NOT NULL) = 0",
        )
        .bind::<Text, _>(table)
        .load::<ColumnSet>(self)?;
        Ok(split(rows))
    }
}
