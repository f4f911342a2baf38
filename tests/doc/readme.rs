// The schema, model and connections of the README's examples: a `posts` table
// in an SQLite database, with a few rows.
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{self, ConnectionManager, CustomizeConnection, Pool};

diesel::table! {
    posts (id) {
        id -> Integer,
        tenant_id -> Integer,
        title -> Text,
        body -> Text,
        published -> Bool,
        archived -> Bool,
        created_at -> BigInt,
    }
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = posts)]
struct Post {
    id: i32,
    tenant_id: i32,
    title: String,
    body: String,
    published: bool,
    archived: bool,
    created_at: i64,
}

const SCHEMA: &str = "CREATE TABLE posts (id INTEGER PRIMARY KEY NOT NULL, \
    tenant_id INTEGER NOT NULL, title TEXT NOT NULL, body TEXT NOT NULL, \
    published BOOLEAN NOT NULL, archived BOOLEAN NOT NULL, created_at BIGINT NOT NULL); \
    INSERT INTO posts VALUES (1, 7, 'one', 'a', 1, 0, 100), (2, 7, 'two', 'b', 0, 0, 200), \
    (3, 8, 'three', 'c', 1, 0, 300), (4, 8, 'four', 'd', 0, 1, 400), (5, 9, 'five', 'e', 1, 0, 500);";

/// An in-memory database with the README's posts.
fn readme_connection() -> SqliteConnection {
    let mut conn = SqliteConnection::establish(":memory:").expect("in-memory SQLite");
    conn.batch_execute(SCHEMA).expect("the README's posts");
    conn
}

/// A pool of one in-memory database with the README's posts (one connection,
/// kept open while the pool lives: each in-memory connection is its own database).
fn readme_pool() -> Pool<ConnectionManager<SqliteConnection>> {
    #[derive(Debug)]
    struct ReadmePosts;
    impl CustomizeConnection<SqliteConnection, r2d2::Error> for ReadmePosts {
        fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), r2d2::Error> {
            conn.batch_execute(SCHEMA).map_err(r2d2::Error::QueryError)
        }
    }
    Pool::builder()
        .max_size(1)
        .connection_customizer(Box::new(ReadmePosts))
        .build(ConnectionManager::new(":memory:"))
        .expect("a pool")
}

/// The fix a write job applies to each post's body.
fn fix(body: &str) -> String {
    body.trim().to_owned()
}
