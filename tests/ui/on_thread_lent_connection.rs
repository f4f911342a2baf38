// `on_thread()` moves the scan to a thread of its own, so the scan must own its
// source: a connection lent as `&mut conn` cannot go (an r2d2 pool by value can).
include!("common/schema.rs");

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    let rows = posts::table
        .chunked_by(posts::id)
        .prefetch(1)
        .load_iter::<Post>(&mut conn)
        .on_thread();
    drop(rows);
}
