//! One job over many processes and machines, on NATS JetStream: a planner
//! publishes the slices of `posts`, any number of workers write one row per
//! post into `distributed_results`, and anyone can watch or wait.
//!
//! ```sh
//! export DATABASE_URL=postgres://root@127.0.0.1/test     # or mysql://root@127.0.0.1/test
//! export NATS_URL=nats://127.0.0.1:4222                  # the default
//! cargo run --example distributed --features jetstream,postgres,mysql -- plan --job demo --slices 8 --seed-rows 100000
//! cargo run --example distributed --features jetstream,postgres,mysql -- work --job demo --batch-size 500   # as many as you like
//! cargo run --example distributed --features jetstream,postgres,mysql -- status --job demo
//! cargo run --example distributed --features jetstream,postgres,mysql -- wait --job demo   # exit 0 only if no slice failed
//! ```
//!
//! - `plan --job NAME --slices N [--seed-rows R]`: with `--seed-rows`, drops
//!   and creates the `posts` table of the crate's migrations with R generated
//!   rows. For a job not published yet it (re)creates `distributed_results
//!   (post_id PRIMARY KEY, worker, processed_at)`, clears the checkpoints of
//!   the job's slices, computes N slices of `posts` and publishes them. For a
//!   published job it touches no table and publishes nothing twice.
//! - `work --job NAME [--batch-size B] [--pause-ms P]`: one worker. For every
//!   post of a slice it inserts one row into `distributed_results` with a
//!   plain `INSERT`, in the batch's transaction (a post processed twice is a
//!   key violation, never hidden), pausing P ms after each batch. It returns
//!   when every slice of the job is done or failed.
//! - `status --job NAME`: the job's status, one line of JSON (`done`,
//!   `running`, `waiting`, `failed`, `rows`, and every slice).
//! - `wait --job NAME`: waits until every slice is done or failed, prints the
//!   status; exit code 0 only if none failed.
//!
//! Settings of a new job, read by `plan`: `ACK_WAIT_MS` (30000),
//! `MAX_DELIVERIES` (5), `RETRY_DELAY_MS` (2000). A worker's name in the
//! results and the status: `WORKER_NAME` (default: host and process id).

use std::collections::HashMap;
use std::error::Error;
use std::time::Duration;

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel_chunked_iterator::checkpoint;
use diesel_chunked_iterator::jetstream::{Job, JobOptions, Worker};
use diesel_chunked_iterator::prelude::*;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

// `posts` and its model `Post`.
include!("../migrations/posts.rs");

diesel::table! {
    distributed_results (post_id) {
        post_id -> Integer,
        worker -> Varchar,
        processed_at -> Timestamp,
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = posts)]
struct PostId {
    id: i32,
}

#[derive(Insertable)]
#[diesel(table_name = distributed_results)]
struct Processed<'a> {
    post_id: i32,
    worker: &'a str,
    processed_at: chrono::NaiveDateTime,
}

const USAGE: &str = "usage: distributed plan --job NAME --slices N [--seed-rows R]
       distributed work --job NAME [--batch-size B] [--pause-ms P]
       distributed status --job NAME
       distributed wait --job NAME
environment: DATABASE_URL (postgres:// or mysql://), NATS_URL (default nats://127.0.0.1:4222)";

/// The command and its `--flag value` pairs.
fn parse(args: &[String]) -> Res<(String, HashMap<String, String>)> {
    let (command, rest) = args.split_first().ok_or(USAGE)?;
    let allowed: &[&str] = match command.as_str() {
        "plan" => &["job", "slices", "seed-rows"],
        "work" => &["job", "batch-size", "pause-ms"],
        "status" | "wait" => &["job"],
        _ => return Err(USAGE.into()),
    };
    let mut flags = HashMap::new();
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let name = flag.strip_prefix("--").filter(|n| allowed.contains(n));
        let (Some(name), Some(value)) = (name, it.next()) else {
            return Err(format!("unexpected {flag:?}\n{USAGE}").into());
        };
        flags.insert(name.to_string(), value.clone());
    }
    if !flags.contains_key("job") {
        return Err(format!("--job is required\n{USAGE}").into());
    }
    Ok((command.clone(), flags))
}

fn number<T: std::str::FromStr>(flags: &HashMap<String, String>, name: &str) -> Res<Option<T>> {
    match flags.get(name) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("--{name} {v:?} is not a number").into()),
    }
}

fn env_number(name: &str, default: u64) -> Res<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a number").into()),
        Err(_) => Ok(default),
    }
}

/// Post `id` of the generated data.
fn post(id: i32) -> Post {
    let epoch = chrono::DateTime::from_timestamp(1_767_225_600, 0)
        .expect("valid epoch")
        .naive_utc();
    Post {
        id,
        user_id: id % 100,
        title: format!("post number {id}"),
        slug: format!("post-{id:08}"),
        published: id % 3 != 0,
        score: (id % 10 != 0).then_some(id % 50),
        created_at: epoch + chrono::Duration::seconds(i64::from(id)),
        body: "lorem ipsum ".repeat(4),
    }
}

/// The statements of the crate's migration that create `posts`.
fn posts_ddl(migration: &str) -> Vec<String> {
    migration
        .split(';')
        .map(str::trim)
        .filter(|s| s.starts_with("CREATE TABLE posts") || s.contains(" ON posts "))
        .map(String::from)
        .collect()
}

/// Runs `$body` with `Conn` the connection type of `DATABASE_URL`, and
/// `$ddl` the migration's statements and the results table's.
macro_rules! on_backend {
    ($url:expr, |$ddl:ident, $results:ident| $body:expr) => {{
        let url: &str = $url;
        #[cfg(feature = "postgres")]
        if url.starts_with("postgres") {
            #[allow(dead_code)]
            type Conn = diesel::PgConnection;
            let $ddl = include_str!("../migrations/postgres/2026-11-26-000001_create_tables/up.sql");
            let $results = "CREATE TABLE distributed_results (post_id INTEGER PRIMARY KEY, \
                            worker VARCHAR(200) NOT NULL, processed_at TIMESTAMP NOT NULL)";
            return $body;
        }
        #[cfg(feature = "mysql")]
        if url.starts_with("mysql") {
            #[allow(dead_code)]
            type Conn = diesel::MysqlConnection;
            let $ddl = include_str!("../migrations/mysql/2026-11-26-000001_create_tables/up.sql");
            let $results = "CREATE TABLE distributed_results (post_id INTEGER PRIMARY KEY, \
                            worker VARCHAR(200) NOT NULL, processed_at DATETIME(6) NOT NULL) \
                            ENGINE=InnoDB";
            return $body;
        }
        Err(format!(
            "DATABASE_URL must start with postgres:// or mysql:// (built with that feature), not {url:?}"
        )
        .into())
    }};
}

async fn plan(js: &async_nats::jetstream::Context, flags: &HashMap<String, String>) -> Res<i32> {
    let name = &flags["job"];
    let slices: usize = number(flags, "slices")?.ok_or("plan needs --slices N")?;
    let seed: Option<i32> = number(flags, "seed-rows")?;
    let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set")?;
    let existing = match Job::open(js, name).await {
        Ok(job) => Some(job),
        Err(diesel_chunked_iterator::jetstream::Error::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let options = JobOptions::default()
        .ack_wait(Duration::from_millis(env_number("ACK_WAIT_MS", 30_000)?))
        .max_deliveries(u32::try_from(env_number("MAX_DELIVERIES", 5)?)?)
        .retry_delay(Duration::from_millis(env_number("RETRY_DELAY_MS", 2_000)?));
    on_backend!(&url, |ddl, results| {
        let mut conn = Conn::establish(&url)?;
        if let Some(rows) = seed {
            if existing.is_some() {
                return Err(format!(
                    "job {name:?} is published: reseeding posts would change its slices' rows; \
                     use another job name"
                )
                .into());
            }
            diesel::sql_query("DROP TABLE IF EXISTS posts").execute(&mut conn)?;
            for statement in posts_ddl(ddl) {
                diesel::sql_query(statement).execute(&mut conn)?;
            }
            let all: Vec<Post> = (1..=rows).map(post).collect();
            conn.transaction(|conn| {
                for chunk in all.chunks(1_000) {
                    diesel::insert_into(posts::table)
                        .values(chunk)
                        .execute(conn)?;
                }
                QueryResult::Ok(())
            })?;
            println!("posts: {rows} rows");
        }
        if let Some(job) = existing {
            let again = Job::publish_with(
                js,
                name,
                &posts::table
                    .chunked_by(posts::id)
                    .partitions(job.slices(), &mut conn)?,
                options,
            )
            .await
            .map(|j| j.published());
            match again {
                Ok(n) => println!(
                    "job {name}: published before, {} slices; {n} added",
                    job.slices()
                ),
                Err(e) => println!(
                    "job {name}: published before, {} slices ({e})",
                    job.slices()
                ),
            }
            return Ok(0);
        }
        diesel::sql_query("DROP TABLE IF EXISTS distributed_results").execute(&mut conn)?;
        diesel::sql_query(results).execute(&mut conn)?;
        checkpoint::create_table(&mut conn)?;
        let parts = posts::table
            .chunked_by(posts::id)
            .partitions(slices, &mut conn)?;
        for p in &parts {
            checkpoint::reset(&mut conn, &format!("{name}/slice-{}", p.index))?;
        }
        let job = Job::publish_with(js, name, &parts, options).await?;
        println!(
            "job {name}: {} slices of {} posts published",
            job.published(),
            parts.iter().map(|p| p.rows).sum::<u64>()
        );
        Ok(0)
    })
}

async fn work(js: &async_nats::jetstream::Context, flags: &HashMap<String, String>) -> Res<i32> {
    let name = flags["job"].clone();
    let batch: u64 = number(flags, "batch-size")?.unwrap_or(1_000);
    let pause = Duration::from_millis(number(flags, "pause-ms")?.unwrap_or(0));
    let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set")?;
    let mut worker = Worker::new(js, &name);
    if let Ok(w) = std::env::var("WORKER_NAME") {
        worker = worker.name(w);
    }
    on_backend!(&url, |_ddl, _results| {
        let pool = Pool::builder()
            .max_size(2)
            .build(ConnectionManager::<Conn>::new(&url))?;
        let report = worker
            .run(move |slice| {
                eprintln!(
                    "{}: slice {} (delivery {})",
                    slice.worker(),
                    slice.index,
                    slice.delivery()
                );
                let me = slice.worker().to_string();
                posts::table
                    .chunked_by(posts::id)
                    .within(slice)
                    .batch_size(batch)
                    .pause(pause)
                    .checkpoint(slice.checkpoint_name())
                    .observe(slice.observer())
                    .for_each_batch(&pool, move |conn: &mut Conn, rows: Vec<PostId>| {
                        let now = chrono::Utc::now().naive_utc();
                        let results: Vec<Processed> = rows
                            .iter()
                            .map(|p| Processed {
                                post_id: p.id,
                                worker: &me,
                                processed_at: now,
                            })
                            .collect();
                        diesel::insert_into(distributed_results::table)
                            .values(&results)
                            .execute(conn)
                            .map(drop)
                    })
            })
            .await?;
        eprintln!(
            "worker finished: {} slices done, {} failed, {} retried, {} lost, {} rows",
            report.done, report.failed, report.retried, report.lost, report.rows
        );
        Ok(0)
    })
}

async fn run() -> Res<i32> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, flags) = parse(&args)?;
    let nats = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = async_nats::connect(&nats)
        .await
        .map_err(|e| format!("NATS at {nats}: {e}"))?;
    let js = async_nats::jetstream::new(client);
    match command.as_str() {
        "plan" => plan(&js, &flags).await,
        "work" => work(&js, &flags).await,
        "status" => {
            let status = Job::open(&js, &flags["job"]).await?.status().await?;
            println!("{}", serde_json::to_string(&status)?);
            Ok(0)
        }
        _ => {
            let job = Job::open(&js, &flags["job"]).await?;
            let end = job.wait(Duration::from_millis(500)).await?;
            println!("{}", serde_json::to_string(&end)?);
            Ok(i32::from(end.failed > 0))
        }
    }
}

#[tokio::main]
async fn main() {
    let code = match run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    };
    std::process::exit(code);
}
