// A locking clause cannot be scanned: ORDER BY and LIMIT cannot follow FOR UPDATE, and the
// lock would not outlive one batch.
include!("common/schema.rs");

fn main() {
    let conn = &mut SqliteConnection::establish(":memory:").unwrap();
    let _rows = posts::table
        .for_update()
        .chunked_by(posts::id)
        .load_iter::<Post>(conn);
}
