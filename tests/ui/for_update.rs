// A locking clause cannot be scanned: ORDER BY and LIMIT cannot follow FOR UPDATE, and the
// lock would not outlive one batch.
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;

diesel::table! {
    posts (id) {
        id -> Integer,
        title -> Text,
        score -> Nullable<Integer>,
    }
}

#[allow(dead_code)]
#[derive(Queryable, Selectable)]
#[diesel(table_name = posts)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
struct Post {
    id: i32,
    title: String,
    score: Option<i32>,
}

fn main() {
    let conn = &mut SqliteConnection::establish(":memory:").unwrap();
    let _rows = posts::table
        .for_update()
        .chunked_by(posts::id)
        .load_iter::<Post>(conn);
}
