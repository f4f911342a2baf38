//! What a scan costs the server in statements and plans:
//!
//! - a whole scan prepares at most two statements (the first batch, whose seek
//!   predicate is `1 = 1`, and every later batch, which differ only in binds;
//!   on PostgreSQL a third for a shorter last batch under `limit_total`),
//!   counted by Diesel's statement cache and by the server itself
//!   (`pg_prepared_statements` on PostgreSQL, `Com_stmt_prepare` on MariaDB);
//! - on PostgreSQL the regular batch statement writes its `LIMIT` as a literal
//!   and runs on a generic plan after its fifth execution;
//! - on PostgreSQL every batch, shallow or deep, is an index scan of the key with
//!   no sort, by `EXPLAIN` of the statement the scan really ran.

use crate::common;

use std::sync::{Arc, Mutex};

use common::*;
use diesel::connection::InstrumentationEvent;
use diesel::prelude::*;

use diesel_chunked_iterator::prelude::*;

/// The statements Diesel put in its prepared statement cache, and every query run.
#[derive(Clone, Default)]
struct Cached {
    cached: Arc<Mutex<Vec<String>>>,
    started: Arc<Mutex<Vec<String>>>,
}

impl Cached {
    fn install<C: Connection>(conn: &mut C) -> Self {
        let log = Cached::default();
        let sink = log.clone();
        conn.set_instrumentation(move |event: InstrumentationEvent<'_>| match event {
            InstrumentationEvent::CacheQuery { sql, .. } => {
                sink.cached.lock().unwrap().push(sql.to_string())
            }
            InstrumentationEvent::StartQuery { query, .. } => {
                sink.started.lock().unwrap().push(query.to_string())
            }
            _ => {}
        });
        log
    }

    fn cached(&self) -> Vec<String> {
        self.cached.lock().unwrap().clone()
    }

    fn started(&self) -> usize {
        self.started.lock().unwrap().len()
    }

    fn clear(&self) {
        self.cached.lock().unwrap().clear();
        self.started.lock().unwrap().clear();
    }
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Statements the server has prepared for this connection so far, as the server
/// counts them, or `None` where it keeps no count (SQLite).
fn server_prepared<C: Connection + diesel::connection::LoadConnection + 'static>(
    conn: &mut C,
) -> Option<i64> {
    let any: &mut dyn std::any::Any = conn;
    #[cfg(feature = "postgres")]
    if let Some(pg) = any.downcast_mut::<diesel::PgConnection>() {
        let c: Count = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_prepared_statements WHERE name LIKE '__diesel_stmt_%'",
        )
        .get_result(pg)
        .unwrap();
        return Some(c.n);
    }
    #[cfg(feature = "mysql")]
    if let Some(my) = any.downcast_mut::<diesel::MysqlConnection>() {
        let c: Count = diesel::sql_query(
            "SELECT CAST(VARIABLE_VALUE AS SIGNED) AS n FROM information_schema.SESSION_STATUS \
             WHERE VARIABLE_NAME = 'COM_STMT_PREPARE'",
        )
        .get_result(my)
        .unwrap();
        return Some(c.n);
    }
    let _ = any;
    None
}

backend_tests! {
    fn a_scan_prepares_at_most_two_statements(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=2_500);
        let overhead = |conn: &mut Conn| {
            // what reading the server's counter costs by itself
            let c0 = server_prepared(conn);
            let c1 = server_prepared(conn);
            c1.zip(c0).map(|(a, b)| a - b)
        };

        // each case on a fresh connection, whose statement cache is empty
        for (name, desc, start) in [("asc", false, None), ("desc", true, None), ("resumed", false, Some(700))] {
            let mut conn = connect::<B>(&db);
            let log = Cached::install(&mut conn);
            let overhead = overhead(&mut conn);
            log.clear();
            let before = server_prepared(&mut conn);
            let q = posts::table.filter(posts::published.eq(true)).chunked_by(posts::id).batch_size(100).limit_total(1_150);
            let q = if desc { q.desc() } else { q };
            let q = match start { Some(k) => q.start_after(k), None => q };
            let n = q.load_iter::<Post>(&mut conn).collect::<Result<Vec<_>, _>>().unwrap().len();
            // 1,250 published posts; 900 of them after id 700
            assert_eq!(n, if start.is_some() { 900 } else { 1_150 }, "{name}");
            let after = server_prepared(&mut conn);
            let queries = log.started() - usize::from(after.is_some()) - usize::from(before.is_some());
            // 11 full batches and one of the 50 rows left to the cap; resumed: 9
            // full batches, the 9th without a look-ahead row (nothing after it)
            assert_eq!(queries, if start.is_some() { 9 } else { 12 }, "{name}: batch queries");
            // the first batch (`1 = 1`) and the rest (`id > ?`); a resumed scan has
            // a bound from its first batch on. PostgreSQL writes the regular
            // batches' LIMIT as a literal, so the last batch of 50 rows under
            // `limit_total`, which binds its LIMIT, is one more statement.
            let expected = match (start.is_some(), B::NAME == "postgres") {
                (true, _) => 1,
                (false, false) => 2,
                (false, true) => 3,
            };
            let cached = log.cached();
            assert_eq!(
                cached.iter().filter(|sql| sql.contains("ORDER BY")).count(),
                expected,
                "{name}: statements prepared: {cached:#?}"
            );
            if let (Some(b), Some(a), Some(o)) = (before, after, overhead) {
                assert_eq!(a - b - o, expected as i64, "{name}: the server's count");
            }
        }

        let log = Cached::install(&mut conn);
        let overhead = overhead(&mut conn);
        // every batch a fresh statement: nothing kept on the server
        log.clear();
        let before = server_prepared(&mut conn);
        let n = posts::table
            .chunked_by(posts::id)
            .batch_size(500)
            .cache_statements(false)
            .load_iter::<Post>(&mut conn)
            .count();
        assert_eq!(n, 2_500);
        let after = server_prepared(&mut conn);
        assert!(log.cached().iter().all(|sql| !sql.contains("ORDER BY")), "{:#?}", log.cached());
        if B::NAME == "postgres" {
            assert_eq!(after.unwrap() - before.unwrap() - overhead.unwrap(), 0);
        }
    }
}

/// Replaces `$1, $2, …` with the logged bind values, in order.
#[cfg(feature = "postgres")]
fn inline_binds(logged: &str) -> String {
    let (sql, binds) = logged.split_once(" -- binds: [").expect("binds in the log");
    let binds: Vec<&str> = binds.trim_end_matches(']').split(", ").collect();
    let mut out = sql.to_string();
    for (i, b) in binds.iter().enumerate().rev() {
        out = out.replace(&format!("${}", i + 1), b);
    }
    out
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_every_batch_is_an_index_scan() {
    let db = <Pg as TestBackend>::create();
    let mut conn = connect::<Pg>(&db);
    insert_posts(&mut conn, 1..=20_000);
    diesel::sql_query("ANALYZE posts")
        .execute(&mut conn)
        .unwrap();
    for desc in [false, true] {
        let log = QueryLog::install(&mut conn);
        let q = posts::table
            .filter(posts::published.eq(true))
            .chunked_by(posts::id)
            .batch_size(1_000);
        let q = if desc { q.desc() } else { q };
        assert_eq!(q.load_iter::<Post>(&mut conn).count(), 10_000);
        let batches = log.selects();
        // 10,000 rows in 10 full batches; the 10th finds no look-ahead row
        assert_eq!(batches.len(), 10, "{batches:#?}");
        for (i, logged) in batches.iter().enumerate() {
            let sql = inline_binds(logged);
            let plan = explain_pg(&mut conn, &sql);
            assert!(
                plan.contains("Index Scan") && plan.contains("posts_pkey"),
                "batch {i}: {sql}\n{plan}"
            );
            assert!(
                !plan.contains("Sort") && !plan.contains("Seq Scan"),
                "batch {i}: {sql}\n{plan}"
            );
            if i > 0 {
                let op = if desc {
                    "Index Cond: (id < "
                } else {
                    "Index Cond: (id > "
                };
                assert!(
                    plan.contains(op),
                    "batch {i}: the bound must be an index condition\n{plan}"
                );
            }
        }
    }
}

#[cfg(feature = "postgres")]
#[derive(QueryableByName, Debug)]
struct PlanCounts {
    #[diesel(sql_type = diesel::sql_types::Text)]
    statement: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    generic_plans: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    custom_plans: i64,
}

/// A bound `LIMIT` keeps PostgreSQL planning the cached statement at every
/// execution; the regular batches write it as a literal, and the server runs
/// them on one generic plan from the sixth execution on.
#[cfg(feature = "postgres")]
#[test]
fn postgres_regular_batches_run_on_a_generic_plan() {
    let db = <Pg as TestBackend>::create();
    let mut conn = connect::<Pg>(&db);
    insert_posts(&mut conn, 1..=2_000);
    diesel::sql_query("ANALYZE posts")
        .execute(&mut conn)
        .unwrap();
    let log = QueryLog::install(&mut conn);
    let n = posts::table
        .filter(posts::published.eq(true))
        .chunked_by(posts::id)
        .batch_size(50)
        .limit_total(990)
        .load_iter::<Post>(&mut conn)
        .count();
    assert_eq!(n, 990);
    let batches = log.selects();
    // 19 full batches of 50 and one of the 40 left to the total
    assert_eq!(batches.len(), 20, "{batches:#?}");
    for (i, q) in batches.iter().enumerate() {
        let (sql, binds) = q.split_once(" -- binds: ").expect("binds in the log");
        if i < 19 {
            assert!(
                sql.ends_with(r#"ORDER BY "posts"."id" LIMIT 51"#),
                "batch {i}: {q}"
            );
            // the filter, and after the first batch the bound: no LIMIT bind
            assert_eq!(
                binds.matches(", ").count(),
                usize::from(i > 0),
                "batch {i}: {q}"
            );
        } else {
            assert!(
                sql.ends_with(r#"ORDER BY "posts"."id" LIMIT $3"#),
                "last batch: {q}"
            );
            assert!(binds.ends_with(", 41]"), "last batch: {q}");
        }
    }
    let plans: Vec<PlanCounts> = diesel::sql_query(
        "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements \
         WHERE statement LIKE '%FROM \"posts\"%' ORDER BY statement",
    )
    .load(&mut conn)
    .unwrap();
    let later = plans
        .iter()
        .find(|p| p.statement.contains(r#""posts"."id" > $2"#) && p.statement.ends_with("LIMIT 51"))
        .unwrap_or_else(|| panic!("{plans:#?}"));
    // 18 executions after the first batch: five custom plans, then the generic one
    assert_eq!(
        (later.custom_plans, later.generic_plans),
        (5, 13),
        "{plans:#?}"
    );
    assert_eq!(plans.len(), 3, "{plans:#?}");
}
