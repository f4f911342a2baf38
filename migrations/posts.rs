// The `posts` table these migrations create, and the model of its rows: shared
// by the tests, the examples and the benchmarks, each of which pulls it in with
// `include!` (and has `diesel::prelude::*` in scope).

diesel::table! {
    posts (id) {
        id -> Integer,
        user_id -> Integer,
        title -> Text,
        slug -> Varchar,
        published -> Bool,
        score -> Nullable<Integer>,
        created_at -> Timestamp,
        body -> Text,
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = posts, treat_none_as_default_value = false)]
pub struct Post {
    pub id: i32,
    pub user_id: i32,
    pub title: String,
    pub slug: String,
    pub published: bool,
    pub score: Option<i32>,
    pub created_at: chrono::NaiveDateTime,
    pub body: String,
}
