//! Test harness shared by the integration tests: the schema, the models, one fresh
//! database per test on each backend, query logging, and the `backend_tests!`
//! macro that runs one test body on SQLite, PostgreSQL and MariaDB/MySQL.
//!
//! Isolation: every test gets its own database namespace (an SQLite file, a
//! PostgreSQL schema, a MySQL database), created with the migrations and dropped
//! when the test ends, so tests run in parallel without sharing a table.
//!
//! PostgreSQL and MySQL tests are compiled only with the `postgres` / `mysql`
//! features. Their servers are `PG_DATABASE_URL` / `MYSQL_DATABASE_URL`, or the
//! local services (`postgres://root@127.0.0.1/test`, `mysql://root@127.0.0.1/test`).
//! An unreachable server fails the test: nothing is skipped.
#![allow(dead_code, unused_macros, unused_imports)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel::prelude::*;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};

pub mod schema {
    diesel::table! {
        users (id) {
            id -> Integer,
            name -> Text,
        }
    }

    diesel::table! {
        events (id) {
            id -> BigInt,
            code -> SmallInt,
            kind -> Varchar,
            seq -> Integer,
            payload -> Text,
        }
    }

    use super::posts;

    diesel::joinable!(posts -> users (user_id));
    diesel::allow_tables_to_appear_in_same_query!(users, posts, events);
}

pub use schema::{events, users};

// `posts` and its model `Post`.
include!("../../../migrations/posts.rs");

/// A model without the key column: the scan must still read the key itself.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = posts)]
pub struct PostTitle {
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = users)]
pub struct User {
    pub id: i32,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = events)]
pub struct Event {
    pub id: i64,
    pub code: i16,
    pub kind: String,
    pub seq: i32,
    pub payload: String,
}

/// `2026-01-01 00:00:00` plus `secs` seconds.
pub fn ts(secs: i64) -> chrono::NaiveDateTime {
    chrono::DateTime::from_timestamp(1_767_225_600 + secs, 0)
        .expect("valid timestamp")
        .naive_utc()
}

/// A post with the given id; other columns derived from it.
pub fn post(id: i32) -> Post {
    Post {
        id,
        user_id: id % 3 + 1,
        title: format!("post {id}"),
        slug: format!("slug-{id:06}"),
        published: id % 2 == 0,
        score: if id % 5 == 0 { None } else { Some(id % 7) },
        created_at: ts(i64::from(id) * 60),
        body: String::new(),
    }
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A name no other test of this process, or of another process, uses.
pub fn unique_name(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{n}_{nanos}", std::process::id())
}

/// Statements seen by a connection, recorded through Diesel's instrumentation.
#[derive(Clone, Default)]
pub struct QueryLog(Arc<Mutex<Vec<String>>>);

impl QueryLog {
    /// Installs the log on `conn`.
    pub fn install<C: Connection>(conn: &mut C) -> Self {
        let log = QueryLog::default();
        let sink = log.clone();
        conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
            if let InstrumentationEvent::StartQuery { query, .. } = event {
                sink.0.lock().unwrap().push(query.to_string());
            }
        });
        log
    }

    /// Every statement, with its binds.
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// The SELECT statements on the data: the scans' batches (and probes).
    /// Reads of the schema (the checks a scan makes of a string key:
    /// `information_schema` on MySQL/MariaDB, the unique indexes' collations
    /// on SQLite and PostgreSQL) are in [`schema_reads`](Self::schema_reads).
    pub fn selects(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|q| q.trim_start().to_uppercase().starts_with("SELECT"))
            .filter(|q| !is_schema_read(q))
            .collect()
    }

    /// The SELECT statements that read the schema.
    pub fn schema_reads(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|q| is_schema_read(q))
            .collect()
    }

    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

/// Whether `q` reads the schema: `information_schema`, SQLite's pragmas,
/// PostgreSQL's catalog of indexes.
fn is_schema_read(q: &str) -> bool {
    q.contains("information_schema.") || q.contains("FROM pragma_") || q.contains("FROM pg_index ")
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A database of its own for one test; dropped with the value.
pub struct TestDb {
    pub url: String,
    drop_sql: Option<(String, String)>,
    file: Option<std::path::PathBuf>,
}

#[cfg(feature = "sqlite")]
pub const SQLITE_MIGRATIONS: EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/sqlite");
#[cfg(feature = "postgres")]
pub const PG_MIGRATIONS: EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/postgres");
#[cfg(feature = "mysql")]
pub const MYSQL_MIGRATIONS: EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/mysql");

/// A backend the suite runs on.
pub trait TestBackend {
    type Conn: Connection + diesel::connection::LoadConnection;
    const NAME: &'static str;
    /// Creates a fresh, migrated database for one test.
    fn create() -> TestDb;
    /// Opens a connection to the database at `url` (a [`TestDb`]'s).
    fn connect_url(url: &str) -> Self::Conn {
        <Self::Conn as Connection>::establish(url)
            .unwrap_or_else(|e| panic!("{}: cannot connect to the test database: {e}", Self::NAME))
    }
    /// Opens a connection to it.
    fn connect(db: &TestDb) -> Self::Conn {
        <Self::Conn as Connection>::establish(&db.url)
            .unwrap_or_else(|e| panic!("{}: cannot connect to the test database: {e}", Self::NAME))
    }
}

#[cfg(feature = "sqlite")]
pub struct Sqlite;
#[cfg(feature = "sqlite")]
impl TestBackend for Sqlite {
    type Conn = diesel::SqliteConnection;
    const NAME: &'static str = "sqlite";

    fn create() -> TestDb {
        let path = std::env::temp_dir().join(format!("{}.sqlite3", unique_name("chunked")));
        let url = path.to_string_lossy().into_owned();
        let mut conn = diesel::SqliteConnection::establish(&url).expect("create SQLite file");
        diesel::sql_query("PRAGMA journal_mode = WAL")
            .execute(&mut conn)
            .expect("WAL");
        conn.run_pending_migrations(SQLITE_MIGRATIONS)
            .expect("migrations (sqlite)");
        TestDb {
            url,
            drop_sql: None,
            file: Some(path),
        }
    }

    fn connect(db: &TestDb) -> Self::Conn {
        let mut conn = diesel::SqliteConnection::establish(&db.url).expect("open SQLite file");
        diesel::sql_query("PRAGMA busy_timeout = 10000")
            .execute(&mut conn)
            .expect("busy_timeout");
        conn
    }
}

/// The server URL for a backend: the environment variable, or the local service.
pub fn server_url(var: &str, default: &str) -> String {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => url,
        _ => {
            if !in_ci() {
                eprintln!("{var} is not set; using {default}");
            }
            default.to_string()
        }
    }
}

#[cfg(feature = "postgres")]
pub struct Pg;
#[cfg(feature = "postgres")]
impl TestBackend for Pg {
    type Conn = diesel::PgConnection;
    const NAME: &'static str = "postgres";

    fn create() -> TestDb {
        let server = server_url("PG_DATABASE_URL", "postgres://root@127.0.0.1/test");
        let mut admin = diesel::PgConnection::establish(&server).unwrap_or_else(|e| {
            panic!("PostgreSQL at {server} is unreachable: {e} (set PG_DATABASE_URL)")
        });
        let schema = unique_name("cit");
        diesel::sql_query(format!("CREATE SCHEMA {schema}"))
            .execute(&mut admin)
            .expect("create schema");
        let sep = if server.contains('?') { '&' } else { '?' };
        let url = format!("{server}{sep}options=-csearch_path%3D{schema}");
        let mut conn = diesel::PgConnection::establish(&url).expect("connect to test schema");
        conn.run_pending_migrations(PG_MIGRATIONS)
            .expect("migrations (postgres)");
        TestDb {
            url,
            drop_sql: Some((server, format!("DROP SCHEMA {schema} CASCADE"))),
            file: None,
        }
    }
}

#[cfg(feature = "mysql")]
pub struct Mysql;
#[cfg(feature = "mysql")]
impl TestBackend for Mysql {
    type Conn = diesel::MysqlConnection;
    const NAME: &'static str = "mysql";

    fn create() -> TestDb {
        let server = server_url("MYSQL_DATABASE_URL", "mysql://root@127.0.0.1/test");
        let mut admin = diesel::MysqlConnection::establish(&server).unwrap_or_else(|e| {
            panic!("MySQL/MariaDB at {server} is unreachable: {e} (set MYSQL_DATABASE_URL)")
        });
        let name = unique_name("cit");
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .expect("create database");
        let base = server.rsplit_once('/').map(|(b, _)| b).unwrap_or(&server);
        let url = format!("{base}/{name}");
        let mut conn = diesel::MysqlConnection::establish(&url).expect("connect to test database");
        conn.run_pending_migrations(MYSQL_MIGRATIONS)
            .expect("migrations (mysql)");
        TestDb {
            url,
            drop_sql: Some((server, format!("DROP DATABASE {name}"))),
            file: None,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(path) = &self.file {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
        }
        if let Some((server, sql)) = &self.drop_sql {
            drop_namespace(server, sql);
        }
    }
}

fn drop_namespace(server: &str, sql: &str) {
    #[cfg(feature = "postgres")]
    if server.starts_with("postgres") {
        if let Ok(mut c) = diesel::PgConnection::establish(server) {
            let _ = diesel::sql_query(sql).execute(&mut c);
        }
        return;
    }
    #[cfg(feature = "mysql")]
    if server.starts_with("mysql") {
        if let Ok(mut c) = diesel::MysqlConnection::establish(server) {
            let _ = diesel::sql_query(sql).execute(&mut c);
        }
    }
    let _ = (server, sql);
}

/// PostgreSQL's `EXPLAIN` of `sql` (binds inlined), its lines joined by newlines.
#[cfg(feature = "postgres")]
pub fn explain_pg(conn: &mut diesel::PgConnection, sql: &str) -> String {
    #[derive(QueryableByName)]
    struct PlanLine {
        #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
        plan: String,
    }
    diesel::sql_query(format!("EXPLAIN {sql}"))
        .load::<PlanLine>(conn)
        .unwrap_or_else(|e| panic!("EXPLAIN {sql}: {e}"))
        .into_iter()
        .map(|l| l.plan)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs each test body once per enabled backend, as `sqlite::name`, `pg::name`,
/// `mysql::name`. Inside a body, `B` is the backend, `Conn` its connection type,
/// `DB` its Diesel backend, and `db` the test's database. Attributes written before
/// a `fn` (such as `#[ignore = "..."]`) are put on each generated test.
#[macro_export]
macro_rules! backend_tests {
    ($($(#[$attr:meta])* fn $name:ident($db:ident) $body:block)*) => {
        #[cfg(feature = "sqlite")]
        mod sqlite {
            #[allow(unused_imports)]
            use super::*;
            #[allow(dead_code)]
            type B = $crate::common::Sqlite;
            #[allow(dead_code)]
            type Conn = diesel::SqliteConnection;
            #[allow(dead_code)]
            type DB = diesel::sqlite::Sqlite;
            $($(#[$attr])* #[test] fn $name() { let $db = <B as $crate::common::TestBackend>::create(); $body })*
        }
        #[cfg(feature = "postgres")]
        mod pg {
            #[allow(unused_imports)]
            use super::*;
            #[allow(dead_code)]
            type B = $crate::common::Pg;
            #[allow(dead_code)]
            type Conn = diesel::PgConnection;
            #[allow(dead_code)]
            type DB = diesel::pg::Pg;
            $($(#[$attr])* #[test] fn $name() { let $db = <B as $crate::common::TestBackend>::create(); $body })*
        }
        #[cfg(feature = "mysql")]
        mod mysql {
            #[allow(unused_imports)]
            use super::*;
            #[allow(dead_code)]
            type B = $crate::common::Mysql;
            #[allow(dead_code)]
            type Conn = diesel::MysqlConnection;
            #[allow(dead_code)]
            type DB = diesel::mysql::Mysql;
            $($(#[$attr])* #[test] fn $name() { let $db = <B as $crate::common::TestBackend>::create(); $body })*
        }
    };
}

/// Opens a connection to the test's database.
pub fn connect<B: TestBackend>(db: &TestDb) -> B::Conn {
    B::connect(db)
}

/// Inserts posts with the given ids (in chunks, to stay under bind limits).
pub fn insert_posts<C>(conn: &mut C, ids: impl IntoIterator<Item = i32>)
where
    C: Connection,
    Vec<Post>: diesel::Insertable<posts::table>,
    for<'a> diesel::query_builder::InsertStatement<
        posts::table,
        <&'a [Post] as diesel::Insertable<posts::table>>::Values,
    >: diesel::query_dsl::methods::ExecuteDsl<C>,
    for<'a> &'a [Post]: diesel::Insertable<posts::table>,
{
    let rows: Vec<Post> = ids.into_iter().map(post).collect();
    insert_post_rows(conn, &rows);
}

/// Inserts the given posts as they are (in chunks, to stay under bind limits).
pub fn insert_post_rows<C>(conn: &mut C, rows: &[Post])
where
    C: Connection,
    for<'a> diesel::query_builder::InsertStatement<
        posts::table,
        <&'a [Post] as diesel::Insertable<posts::table>>::Values,
    >: diesel::query_dsl::methods::ExecuteDsl<C>,
    for<'a> &'a [Post]: diesel::Insertable<posts::table>,
{
    for chunk in rows.chunks(500) {
        diesel::insert_into(posts::table)
            .values(chunk)
            .execute(conn)
            .expect("insert posts");
    }
}

/// A user with the given id, named after it.
pub fn user(id: i32) -> User {
    User {
        id,
        name: format!("user {id}"),
    }
}

/// Inserts the given users.
pub fn insert_users<C>(conn: &mut C, rows: &[User])
where
    C: Connection,
    for<'a> diesel::query_builder::InsertStatement<
        users::table,
        <&'a [User] as diesel::Insertable<users::table>>::Values,
    >: diesel::query_dsl::methods::ExecuteDsl<C>,
    for<'a> &'a [User]: diesel::Insertable<users::table>,
{
    for chunk in rows.chunks(500) {
        diesel::insert_into(users::table)
            .values(chunk)
            .execute(conn)
            .expect("insert users");
    }
}

/// An event with the given id and code; other columns derived from the id.
pub fn event(id: i64, code: i16) -> Event {
    Event {
        id,
        code,
        kind: ["alpha", "beta", "gamma"][id.rem_euclid(3) as usize].to_string(),
        seq: (id.rem_euclid(5)) as i32,
        payload: format!("payload {id}"),
    }
}

/// Inserts the given events.
pub fn insert_events<C>(conn: &mut C, rows: &[Event])
where
    C: Connection,
    for<'a> diesel::query_builder::InsertStatement<
        events::table,
        <&'a [Event] as diesel::Insertable<events::table>>::Values,
    >: diesel::query_dsl::methods::ExecuteDsl<C>,
    for<'a> &'a [Event]: diesel::Insertable<events::table>,
{
    for chunk in rows.chunks(500) {
        diesel::insert_into(events::table)
            .values(chunk)
            .execute(conn)
            .expect("insert events");
    }
}

/// Asserts that `seen` holds the ids of posts `1..=n`, each once, in order.
pub fn assert_every_row_once(seen: &[i32], n: i32) {
    assert_eq!(seen, (1..=n).collect::<Vec<_>>(), "every row exactly once");
}

/// Asserts that a scan whose connections were killed along the way (`kills`
/// times) really lost connections, and still yielded posts `1..=500` once each.
pub fn assert_survived_kills(seen: &[i32], kills: usize) {
    assert!(
        kills >= 4,
        "the test must really kill connections (killed {kills})"
    );
    assert_every_row_once(seen, 500);
}

/// Kills every other connection to the test's database, from a fresh connection.
#[cfg(feature = "postgres")]
pub fn kill_pg(url: &str) -> usize {
    #[derive(QueryableByName)]
    struct Killed {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        #[allow(dead_code)]
        killed: bool,
    }
    let mut admin = diesel::PgConnection::establish(url).unwrap();
    diesel::sql_query(
        "SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity \
         WHERE pid <> pg_backend_pid() AND application_name = current_setting('application_name')",
    )
    .load::<Killed>(&mut admin)
    .unwrap()
    .len()
}

#[cfg(feature = "mysql")]
/// Kills every other connection to the test's database, from a fresh connection.
pub fn kill_mysql(url: &str) -> usize {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
    }
    let mut admin = diesel::MysqlConnection::establish(url).unwrap();
    let ids = diesel::sql_query(
        "SELECT CAST(ID AS SIGNED) AS id FROM information_schema.PROCESSLIST \
         WHERE DB = DATABASE() AND ID <> CONNECTION_ID()",
    )
    .load::<Id>(&mut admin)
    .unwrap();
    for Id { id } in &ids {
        let _ = diesel::sql_query(format!("KILL CONNECTION {id}")).execute(&mut admin);
    }
    ids.len()
}
