// `load_iter::<M>` selects `(key, M::as_select())` itself, so a query with its own
// `.select(..)` must use `load_iter_keyed` instead.
include!("common/schema.rs");

fn main() {
    let conn = &mut SqliteConnection::establish(":memory:").unwrap();
    let _rows = posts::table
        .select((posts::id, posts::title))
        .chunked_by(posts::id)
        .load_iter::<Post>(conn);
}
