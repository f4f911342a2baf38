// The schema and the model the compile-fail cases share, pulled in with
// `include!("common/schema.rs");` (this folder is not matched by `tests/ui/*.rs`).
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
