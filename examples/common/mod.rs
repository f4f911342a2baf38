//! The schema and data the examples share: a `posts` table created with the
//! crate's migrations in an SQLite database (bundled, no server), filled with
//! generated posts.
#![allow(dead_code)]

use diesel::prelude::*;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

// `posts` and its model `Post`.
include!("../../migrations/posts.rs");

/// Post `id` of the generated data set: every third one unpublished, every tenth
/// without a score.
pub fn post(id: i32) -> Post {
    let epoch = chrono::DateTime::from_timestamp(1_767_225_600, 0)
        .expect("valid epoch")
        .naive_utc();
    Post {
        id,
        user_id: id % 100,
        title: format!("post number {id}"),
        slug: format!("post-{id:06}"),
        published: id % 3 != 0,
        score: (id % 10 != 0).then_some(id % 50),
        created_at: epoch + chrono::Duration::seconds(i64::from(id)),
        body: "lorem ipsum ".repeat(10),
    }
}

/// Opens (creating it) the SQLite database at `url`, applies the migrations and
/// inserts posts with the given ids in one transaction.
pub fn create(
    url: &str,
    ids: impl IntoIterator<Item = i32>,
) -> Result<SqliteConnection, Box<dyn std::error::Error>> {
    let mut conn = SqliteConnection::establish(url)?;
    conn.run_pending_migrations(MIGRATIONS)
        .map_err(|e| format!("migrations: {e}"))?;
    let rows: Vec<Post> = ids.into_iter().map(post).collect();
    conn.transaction(|conn| {
        for chunk in rows.chunks(2_000) {
            diesel::insert_into(posts::table)
                .values(chunk)
                .execute(conn)?;
        }
        diesel::QueryResult::Ok(())
    })?;
    Ok(conn)
}

/// A fresh database file in the temporary directory (removed first if left over).
pub fn temp_db(name: &str) -> String {
    let path = std::env::temp_dir().join(format!("diesel-chunked-iterator-{name}.sqlite3"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path.to_string_lossy().into_owned()
}
