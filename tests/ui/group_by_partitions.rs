// `partitions` (and `estimate_total`) number the rows by their key, which a grouped query does
// not select; scanning the same query compiles.
include!("common/schema.rs");

fn main() {
    let conn = &mut SqliteConnection::establish(":memory:").unwrap();
    let grouped = || posts::table.group_by(posts::id).select((posts::id, diesel::dsl::count_star()));
    let _rows = grouped()
        .chunked_by(posts::id)
        .load_iter_keyed(conn, |r: &(i32, i64)| r.0);
    let _parts = grouped().chunked_by(posts::id).partitions(4, conn);
    let _total = grouped().chunked_by(posts::id).estimate_total(conn);
}
