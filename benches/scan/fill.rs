//! The tables of the scan benchmark: `posts` (every method), and the three tables of
//! the composite-key schemas (`events_*`).

use std::time::Instant;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};

use crate::common::{Backend, Res};
use crate::{make_post, posts, Post};

#[cfg(feature = "sqlite")]
const SQLITE_MIGRATIONS: EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/sqlite");
#[cfg(feature = "postgres")]
const PG_MIGRATIONS: EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/postgres");
#[cfg(feature = "mysql")]
const MYSQL_MIGRATIONS: EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/mysql");

/// Rows per multi-row INSERT: 8 columns × 4000 = 32,000 binds, under SQLite's 32,766
/// and the 65,535 of PostgreSQL and MySQL.
const INSERT_CHUNK: usize = 4000;

/// Applies the migrations and fills `posts` with ids 1..=rows in one transaction.
pub fn create_and_fill(backend: Backend, url: &str, rows: u64) -> Res<()> {
    let started = Instant::now();
    macro_rules! fill {
        ($conn:ident, $migrations:expr, $before:expr, $after:expr) => {{
            for sql in $before {
                diesel::sql_query(sql).execute(&mut $conn)?;
            }
            $conn
                .run_pending_migrations($migrations)
                .map_err(|e| format!("migrations: {e}"))?;
            $conn.transaction(|conn| {
                let mut next = 1i32;
                let last = rows as i32;
                while next <= last {
                    let end = (next + INSERT_CHUNK as i32 - 1).min(last);
                    let chunk: Vec<Post> = (next..=end).map(make_post).collect();
                    diesel::insert_into(posts::table)
                        .values(&chunk)
                        .execute(conn)?;
                    next = end + 1;
                }
                diesel::QueryResult::Ok(())
            })?;
            for sql in $after {
                diesel::sql_query(sql).execute(&mut $conn)?;
            }
        }};
    }
    match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => {
            let mut conn = diesel::SqliteConnection::establish(url)?;
            fill!(
                conn,
                SQLITE_MIGRATIONS,
                ["PRAGMA journal_mode = WAL", "PRAGMA synchronous = OFF"],
                ["ANALYZE"]
            );
        }
        #[cfg(feature = "postgres")]
        Backend::Pg => {
            let mut conn = diesel::PgConnection::establish(url)?;
            fill!(
                conn,
                PG_MIGRATIONS,
                ["SET synchronous_commit = off"],
                ["VACUUM ANALYZE posts"]
            );
        }
        #[cfg(feature = "mysql")]
        Backend::Mysql => {
            let mut conn = diesel::MysqlConnection::establish(url)?;
            // InnoDB keeps its own statistics; ANALYZE TABLE returns a result set.
            fill!(conn, MYSQL_MIGRATIONS, [] as [&str; 0], [] as [&str; 0]);
        }
    }
    println!(
        "  {}: {rows} rows inserted in {:.1} s",
        backend.name(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The composite-key schemas, one table each, all scanned by `(created, id)`:
/// `(table, what its index is, the index)`.
pub const SCHEMAS: [(&str, &str, &str); 3] = [
    (
        "events_composite",
        "index on (created, id)",
        "CREATE INDEX events_composite_key ON events_composite (created, id)",
    ),
    (
        "events_first",
        "non-unique index on created",
        "CREATE INDEX events_first_created ON events_first (created)",
    ),
    (
        "events_unique",
        "UNIQUE index on created",
        "CREATE UNIQUE INDEX events_unique_created ON events_unique (created)",
    ),
];

/// Creates and fills the `events_*` tables of [`SCHEMAS`] in the server: ids
/// `1..=rows`, a 100-character `payload`, `created` = `ceil(id / 4)` (four rows per
/// value) where the index allows it and `id` in the table with the UNIQUE index.
pub fn create_schemas(backend: Backend, url: &str, rows: u64) -> Res<()> {
    let started = Instant::now();
    let mut statements = Vec::new();
    for (table, _, index) in SCHEMAS {
        let created = if table == "events_unique" {
            "i"
        } else {
            "(i + 3) / 4"
        };
        let (create, fill) = match backend {
            #[cfg(feature = "sqlite")]
            Backend::Sqlite => (
                format!(
                    "CREATE TABLE {table} (id INTEGER PRIMARY KEY NOT NULL, \
                     created BIGINT NOT NULL, payload TEXT NOT NULL)"
                ),
                format!(
                    "INSERT INTO {table} (id, created, payload) WITH RECURSIVE s(i) AS \
                     (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {rows}) \
                     SELECT i, {created}, printf('%0100d', i) FROM s"
                ),
            ),
            #[cfg(feature = "postgres")]
            Backend::Pg => (
                format!(
                    "CREATE TABLE {table} (id INTEGER PRIMARY KEY, created BIGINT NOT NULL, \
                     payload TEXT NOT NULL)"
                ),
                format!(
                    "INSERT INTO {table} (id, created, payload) SELECT i, {created}, \
                     lpad(i::text, 100, '0') FROM generate_series(1, {rows}) AS i"
                ),
            ),
            #[cfg(feature = "mysql")]
            Backend::Mysql => (
                format!(
                    "CREATE TABLE {table} (id INT PRIMARY KEY, created BIGINT NOT NULL, \
                     payload VARCHAR(100) NOT NULL) ENGINE = InnoDB"
                ),
                format!(
                    "INSERT INTO {table} (id, created, payload) SELECT i, {}, LPAD(i, 100, '0') \
                     FROM (SELECT seq AS i FROM seq_1_to_{rows}) AS s",
                    created.replace('/', "DIV")
                ),
            ),
        };
        statements.extend([create, fill, index.to_string()]);
    }
    // InnoDB keeps its own statistics (and ANALYZE TABLE returns a result set).
    #[allow(unreachable_patterns)]
    match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => statements.push("ANALYZE".to_string()),
        #[cfg(feature = "postgres")]
        Backend::Pg => statements
            .push("VACUUM ANALYZE events_composite, events_first, events_unique".to_string()),
        _ => {}
    }
    with_conn!(backend, url, "", |conn| {
        for sql in &statements {
            conn.batch_execute(sql).map_err(|e| format!("{sql}: {e}"))?;
        }
    });
    println!(
        "  {}: 3 × {rows} rows of the composite-key schemas in {:.1} s",
        backend.name(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
