// A query with its own LIMIT cannot be scanned: the scan pages with LIMIT (use .limit_total(n)).
include!("common/schema.rs");

fn main() {
    let conn = &mut SqliteConnection::establish(":memory:").unwrap();
    let _rows = posts::table
        .limit(10)
        .chunked_by(posts::id)
        .load_iter::<Post>(conn);
}
