//! Distributed jobs on NATS JetStream, on PostgreSQL and MariaDB, with the
//! processes of `examples/distributed.rs`: three workers, one killed with
//! SIGKILL in the middle of a slice after some of its batches committed; and
//! a slice whose work fails on every delivery.
//!
//! The tests use the example's binary that `cargo test` builds, or build it
//! with their own features when it is older than its sources. NATS (`NATS_URL`, default
//! `nats://127.0.0.1:4222`, JetStream on) must be reachable: the tests fail,
//! they do not skip, when it is not.
//!
//! `distributed_results` has `post_id` as its primary key and the example
//! writes it with a plain `INSERT`, so a post written twice fails its slice:
//! "exactly once" is checked by the job finishing with no failure and by
//! reading every row back.

use crate::common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{posts, TestDb};
use diesel::prelude::*;
use diesel_chunked_iterator::jetstream::{Job, JobStatus, SliceState};
use diesel_chunked_iterator::prelude::*;
use diesel_chunked_iterator::{checkpoint, Partition};

diesel::table! {
    distributed_results (post_id) {
        post_id -> Integer,
        worker -> Varchar,
    }
}

/// The newest modification time of the files under `path`.
fn newest(path: &std::path::Path) -> std::time::SystemTime {
    let meta = std::fs::metadata(path).expect("source file");
    let mut t = meta.modified().expect("mtime");
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).expect("source dir") {
            t = t.max(newest(&entry.expect("dir entry").path()));
        }
    }
    t
}

/// The example's binary, next to this test's (`target/<profile>/examples`):
/// used as it is when it is newer than every source it is built from
/// (`cargo test` builds it with the tests), else built once per test run with
/// this test's features (`cargo build --example distributed`).
fn example() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test binary path");
            let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
            let bin = profile_dir.join("examples").join("distributed");
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            let sources = [
                "src",
                "examples/distributed.rs",
                "migrations",
                "Cargo.toml",
                "Cargo.lock",
            ]
            .iter()
            .map(|p| newest(&root.join(p)))
            .max()
            .expect("sources");
            let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
            if built.is_some_and(|b| b >= sources) {
                return bin;
            }
            let features: Vec<&str> = [
                ("sqlite", cfg!(feature = "sqlite")),
                ("postgres", cfg!(feature = "postgres")),
                ("mysql", cfg!(feature = "mysql")),
                ("r2d2", cfg!(feature = "r2d2")),
                ("chrono", cfg!(feature = "chrono")),
                ("time", cfg!(feature = "time")),
                ("uuid", cfg!(feature = "uuid")),
                ("tracing", cfg!(feature = "tracing")),
                ("serde", cfg!(feature = "serde")),
                ("jetstream", cfg!(feature = "jetstream")),
                ("async", cfg!(feature = "async")),
                ("deadpool", cfg!(feature = "deadpool")),
                ("bb8", cfg!(feature = "bb8")),
            ]
            .into_iter()
            .filter_map(|(name, on)| on.then_some(name))
            .collect();
            let mut cargo = Command::new(option_env!("CARGO").unwrap_or("cargo"));
            cargo
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .args([
                    "build",
                    "--quiet",
                    "--example",
                    "distributed",
                    "--no-default-features",
                ])
                .args(["--features", &features.join(",")]);
            if profile_dir.ends_with("release") {
                cargo.arg("--release");
            }
            let status = cargo
                .status()
                .expect("run cargo build --example distributed");
            assert!(status.success(), "cargo build --example distributed failed");
            assert!(bin.exists(), "{} is missing", bin.display());
            bin
        })
        .clone()
}

fn nats_url() -> String {
    common::server_url("NATS_URL", "nats://127.0.0.1:4222")
}

fn command(db: &TestDb, args: &[&str], settings: &[(&str, &str)]) -> Command {
    let mut c = Command::new(example());
    c.args(args)
        .env("DATABASE_URL", &db.url)
        .env("NATS_URL", nats_url())
        .envs(settings.iter().copied());
    c
}

fn run(db: &TestDb, args: &[&str], settings: &[(&str, &str)]) -> Output {
    let out = command(db, args, settings)
        .output()
        .expect("run the example");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(
        out.status.code().is_some(),
        "{args:?} was killed: {}",
        text(&out.stderr)
    );
    out
}

fn spawn_worker(db: &TestDb, job: &str, name: &str, batch: &str, pause: &str) -> Child {
    command(
        db,
        &[
            "work",
            "--job",
            job,
            "--batch-size",
            batch,
            "--pause-ms",
            pause,
        ],
        &[("WORKER_NAME", name)],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("start a worker")
}

/// The job's status through the library, as a test sees it. The jobs it
/// named are deleted from NATS when it is dropped, also after a failure.
struct Observer {
    rt: tokio::runtime::Runtime,
    js: async_nats::jetstream::Context,
    jobs: std::cell::RefCell<Vec<String>>,
}

impl Observer {
    fn new() -> Observer {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let url = nats_url();
        let js = rt
            .block_on(async {
                async_nats::connect(&url)
                    .await
                    .map(async_nats::jetstream::new)
            })
            .unwrap_or_else(|e| panic!("NATS at {url} is unreachable: {e} (set NATS_URL)"));
        Observer {
            js,
            rt,
            jobs: Default::default(),
        }
    }

    fn status(&self, job: &str) -> JobStatus {
        self.rt
            .block_on(async { Job::open(&self.js, job).await?.status().await })
            .expect("job status")
    }

    /// A job name of its own, deleted with the observer.
    fn job(&self, prefix: &str) -> String {
        let name = common::unique_name(prefix);
        self.jobs.borrow_mut().push(name.clone());
        name
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        for job in self.jobs.take() {
            let _ = self
                .rt
                .block_on(async { Job::open(&self.js, &job).await?.delete().await });
        }
    }
}

/// Waits for `child` to exit by itself, at most `limit`.
fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("a worker did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

macro_rules! distributed_tests {
    ($($module:ident, $backend:ty, $conn:ty, $feature:literal;)*) => {$(
        #[cfg(feature = $feature)]
        mod $module {
            use super::*;

            type Conn = $conn;

            /// post_id -> worker, every row of the results table.
            fn results(conn: &mut Conn) -> BTreeMap<i32, String> {
                distributed_results::table
                    .select((distributed_results::post_id, distributed_results::worker))
                    .load::<(i32, String)>(conn)
                    .unwrap()
                    .into_iter()
                    .collect()
            }

            fn slices(conn: &mut Conn, n: usize) -> Vec<Partition<i32>> {
                posts::table.chunked_by(posts::id).partitions(n, conn).unwrap()
            }

            #[test]
            fn a_killed_worker_s_slice_is_resumed_where_it_stopped() {
                let db = <$backend as common::TestBackend>::create();
                let obs = Observer::new();
                let job = obs.job("kill");
                let settings = [("ACK_WAIT_MS", "2000"), ("RETRY_DELAY_MS", "200")];
                let plan = run(&db, &["plan", "--job", &job, "--slices", "6", "--seed-rows", "600"], &settings);
                assert!(plan.status.success(), "plan: {}", String::from_utf8_lossy(&plan.stderr));
                let mut conn = <$backend as common::TestBackend>::connect(&db);
                let parts = slices(&mut conn, 6);
                assert_eq!(parts.iter().map(|p| p.rows).collect::<Vec<_>>(), vec![100; 6]);
                let s = obs.status(&job);
                assert_eq!((s.slices, s.waiting, s.done, s.rows), (6, 6, 0, 0));

                // 20 batches of 5 per slice, 60 ms apart.
                let mut workers: Vec<Child> = (0..3)
                    .map(|i| spawn_worker(&db, &job, &format!("w{i}"), "5", "60"))
                    .collect();
                // Kill w0 in the middle of a slice: 3 to 12 batches committed.
                let started = Instant::now();
                let k = loop {
                    assert!(started.elapsed() < Duration::from_secs(60), "w0 never got far enough into a slice");
                    let s = obs.status(&job);
                    let mid = s.slice.iter().find(|x| {
                        x.state == SliceState::Running
                            && x.worker.as_deref() == Some("w0")
                            && (3..=12).contains(&x.batches)
                    });
                    if let Some(x) = mid {
                        workers[0].kill().unwrap(); // SIGKILL
                        workers[0].wait().unwrap();
                        break x.index;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                };
                let part = &parts[k];
                let in_slice = |id: i32| part.contains(&id);
                let before: Vec<i32> = results(&mut conn)
                    .into_iter()
                    .filter(|(id, w)| in_slice(*id) && w == "w0")
                    .map(|(id, _)| id)
                    .collect();
                let committed = before.len() as u64;
                assert!((15..100).contains(&committed), "w0 committed {committed} rows of slice {k}");
                let last = *before.last().unwrap();
                let first = part.start_after.unwrap_or(0) + 1;
                assert_eq!(before, (first..=last).collect::<Vec<_>>(), "w0's rows are a prefix of its slice");
                let c = checkpoint::status(&mut conn, &format!("{job}/slice-{k}")).unwrap().unwrap();
                assert_eq!((c.rows, c.batches, c.done), (committed, committed / 5, false));

                // The job finishes; `wait` exits 0 (no slice failed).
                let wait = run(&db, &["wait", "--job", &job], &[]);
                assert_eq!(wait.status.code(), Some(0), "wait: {}", String::from_utf8_lossy(&wait.stdout));
                let end: serde_json::Value = serde_json::from_slice(&wait.stdout).unwrap();
                assert_eq!((end["done"].as_u64(), end["failed"].as_u64(), end["rows"].as_u64()), (Some(6), Some(0), Some(600)));
                for w in &mut workers[1..] {
                    assert!(wait_exit(w, Duration::from_secs(30)).success());
                }

                // Every post exactly once; the killed worker's rows kept.
                let rows = results(&mut conn);
                assert_eq!(rows.keys().copied().collect::<Vec<_>>(), (1..=600).collect::<Vec<_>>());
                for (id, w) in &rows {
                    if in_slice(*id) && *id <= last {
                        assert_eq!(w, "w0", "post {id}, committed by w0 before the kill");
                    } else if in_slice(*id) {
                        assert!(w == "w1" || w == "w2", "post {id} written by {w}");
                    }
                }
                // The slice continued: its checkpoint counts each batch once.
                let c = checkpoint::status(&mut conn, &format!("{job}/slice-{k}")).unwrap().unwrap();
                assert_eq!((c.rows, c.batches, c.done), (100, 20, true));
                // The status reports the takeover: a second delivery, another
                // worker, resumed after w0's last committed key.
                let s = obs.status(&job);
                assert_eq!((s.done, s.running, s.waiting, s.failed, s.rows), (6, 0, 0, 0, 600));
                let x = &s.slice[k];
                assert_eq!(x.state, SliceState::Done);
                assert!(x.deliveries >= 2, "{x:?}");
                assert_ne!(x.worker.as_deref(), Some("w0"));
                assert_eq!(x.resumed_after, Some(last.to_string()));
                assert_eq!((x.rows, x.batches), (100, 20));
                for other in s.slice.iter().filter(|x| x.index != k) {
                    assert_eq!((other.state, other.rows, other.resumed_after.as_deref()), (SliceState::Done, 100, None), "{other:?}");
                }
            }

            #[test]
            fn a_slice_that_always_fails_ends_failed_and_the_others_done() {
                let db = <$backend as common::TestBackend>::create();
                let obs = Observer::new();
                let job = obs.job("fail");
                // No worker dies here, so no slice waits for its ack deadline: a
                // long one costs nothing, and a batch stalled on a busy machine
                // (a slow commit, a starved process) is not taken for a dead
                // worker, whose slice would run twice at once.
                let settings = [("ACK_WAIT_MS", "120000"), ("MAX_DELIVERIES", "3"), ("RETRY_DELAY_MS", "200")];
                let plan = run(&db, &["plan", "--job", &job, "--slices", "4", "--seed-rows", "200"], &settings);
                assert!(plan.status.success(), "plan: {}", String::from_utf8_lossy(&plan.stderr));
                // Publishing again adds nothing.
                let again = run(&db, &["plan", "--job", &job, "--slices", "4"], &settings);
                assert!(again.status.success());
                assert!(String::from_utf8_lossy(&again.stdout).contains("0 added"));
                assert_eq!(obs.status(&job).slices, 4);
                let mut conn = <$backend as common::TestBackend>::connect(&db);
                let parts = slices(&mut conn, 4);
                assert!(parts[2].contains(&130));
                // Post 130 has a result already: its batch (121..=130) fails on every try.
                diesel::sql_query(
                    "INSERT INTO distributed_results (post_id, worker, processed_at) \
                     VALUES (130, 'earlier', CURRENT_TIMESTAMP)",
                )
                .execute(&mut conn)
                .unwrap();

                let mut workers: Vec<Child> = (0..2)
                    .map(|i| spawn_worker(&db, &job, &format!("w{i}"), "10", "0"))
                    .collect();
                let wait = run(&db, &["wait", "--job", &job], &[]);
                assert_eq!(wait.status.code(), Some(1), "wait: {}", String::from_utf8_lossy(&wait.stdout));
                for w in &mut workers {
                    assert!(wait_exit(w, Duration::from_secs(30)).success());
                }

                let s = obs.status(&job);
                assert_eq!((s.done, s.failed, s.running, s.waiting), (3, 1, 0, 0));
                // The example's `status`: one line of JSON with the same counts.
                let line = run(&db, &["status", "--job", &job], &[]);
                assert!(line.status.success());
                assert_eq!(line.stdout.iter().filter(|&&b| b == b'\n').count(), 1);
                let json: serde_json::Value = serde_json::from_slice(&line.stdout).unwrap();
                let counts: Vec<Option<u64>> = ["done", "running", "waiting", "failed", "rows"]
                    .iter()
                    .map(|k| json[k].as_u64())
                    .collect();
                assert_eq!(counts, [Some(3), Some(0), Some(0), Some(1), Some(170)].to_vec());
                assert!(json["slice"][2]["error"].as_str().unwrap_or_default().to_lowercase().contains("duplicate"));
                let bad = &s.slice[2];
                assert_eq!((bad.state, bad.deliveries, bad.rows, bad.batches), (SliceState::Failed, 3, 20, 2), "{bad:?}");
                let error = bad.error.clone().unwrap_or_default();
                assert!(error.to_lowercase().contains("duplicate"), "{error}");
                for x in s.slice.iter().filter(|x| x.index != 2) {
                    assert_eq!((x.state, x.deliveries, x.rows, x.batches), (SliceState::Done, 1, 50, 5), "{x:?}");
                }
                assert_eq!(s.rows, 170);

                // Slices 0, 1, 3 once each; slice 2 up to its last committed batch.
                let rows = results(&mut conn);
                let expected: Vec<i32> = (1..=120).chain(std::iter::once(130)).chain(151..=200).collect();
                assert_eq!(rows.keys().copied().collect::<Vec<_>>(), expected);
                assert_eq!(rows[&130], "earlier");
                let c = checkpoint::status(&mut conn, &format!("{job}/slice-2")).unwrap().unwrap();
                assert_eq!((c.rows, c.batches, c.done), (20, 2, false));
            }
        }
    )*};
}

distributed_tests! {
    pg, common::Pg, diesel::PgConnection, "postgres";
    mysql, common::Mysql, diesel::MysqlConnection, "mysql";
}

/// Six workers started with the wrong key type (`i32` keys on a job of `i64`
/// keys) are refused with [`Error::KeyType`](diesel_chunked_iterator::jetstream::Error::KeyType)
/// before they take a slice: no slice loses a delivery to them, and a correct
/// worker then runs every slice on its first delivery, each row once.
#[cfg(feature = "sqlite")]
#[test]
fn workers_of_the_wrong_key_type_take_no_delivery() {
    use common::{event, events, insert_events, Event};
    use diesel_chunked_iterator::jetstream::{Error as JobError, JobOptions, Worker};

    let db = <common::Sqlite as common::TestBackend>::create();
    let mut conn = <common::Sqlite as common::TestBackend>::connect(&db);
    let rows: Vec<Event> = (1..=1000).map(|id| event(id, id as i16)).collect();
    insert_events(&mut conn, &rows);
    checkpoint::create_table(&mut conn).unwrap();
    let parts: Vec<Partition<i64>> = events::table
        .chunked_by(events::id)
        .partitions(3, &mut conn)
        .unwrap();
    assert_eq!(parts.len(), 3);

    let obs = Observer::new();
    let name = obs.job("keytype");
    let options = JobOptions::default()
        .ack_wait(Duration::from_secs(10))
        .max_deliveries(5)
        .retry_delay(Duration::from_millis(100));
    let ran = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    obs.rt.block_on(async {
        Job::publish_with(&obs.js, &name, &parts, options)
            .await
            .unwrap();
        for i in 0..6 {
            let ran = ran.clone();
            let worker = Worker::new(&obs.js, &name)
                .name(format!("wrong-{i}"))
                .poll(Duration::from_millis(200))
                .run(
                    move |_slice: &diesel_chunked_iterator::jetstream::Slice<i32>| {
                        ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        Err::<diesel_chunked_iterator::WriteReport<i32>, _>("must not run")
                    },
                );
            match tokio::time::timeout(Duration::from_secs(10), worker).await {
                Ok(Err(e @ JobError::KeyType { .. })) => {
                    let text = e.to_string();
                    assert!(text.contains("i64") && text.contains("i32"), "{text}");
                    let JobError::KeyType {
                        job,
                        published,
                        expected,
                    } = e
                    else {
                        unreachable!()
                    };
                    assert_eq!(
                        (job.as_str(), published.as_str(), expected.as_str()),
                        (name.as_str(), "i64", "i32")
                    );
                }
                other => panic!("worker {i}: expected a key type error, got {other:?}"),
            }
        }
    });
    assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 0);

    let url = db.url.clone();
    let report = obs
        .rt
        .block_on(async {
            let worker = Worker::new(&obs.js, &name)
                .name("right")
                .poll(Duration::from_millis(200))
                .run(
                    move |slice: &diesel_chunked_iterator::jetstream::Slice<i64>| {
                        let mut conn = SqliteConnection::establish(&url).expect("open SQLite file");
                        diesel::sql_query("PRAGMA busy_timeout = 10000")
                            .execute(&mut conn)
                            .expect("busy_timeout");
                        events::table
                            .chunked_by(events::id)
                            .within(slice)
                            .batch_size(50)
                            .checkpoint(slice.checkpoint_name())
                            .observe(slice.observer())
                            .for_each_batch(&mut conn, |conn, batch: Vec<Event>| {
                                for e in &batch {
                                    diesel::update(events::table.find(e.id))
                                        .set(events::seq.eq(events::seq + 10))
                                        .execute(conn)?;
                                }
                                Ok::<_, diesel::result::Error>(())
                            })
                    },
                );
            tokio::time::timeout(Duration::from_secs(60), worker).await
        })
        .expect("the worker finished")
        .expect("the worker ran the job");
    assert_eq!(
        (report.done, report.failed, report.retried, report.rows),
        (3, 0, 0, 1000)
    );
    let s = obs.status(&name);
    assert_eq!(
        (s.done, s.failed, s.running, s.waiting, s.rows),
        (3, 0, 0, 0, 1000)
    );
    for x in &s.slice {
        assert_eq!(
            (x.state, x.deliveries, x.error.as_deref()),
            (SliceState::Done, 1, None),
            "{x:?}"
        );
    }
    // Every row once: each seq went up by 10, once.
    let seqs: Vec<(i64, i32)> = events::table
        .select((events::id, events::seq))
        .order(events::id)
        .load(&mut conn)
        .unwrap();
    assert_eq!(
        seqs,
        rows.iter().map(|e| (e.id, e.seq + 10)).collect::<Vec<_>>()
    );
}

/// A run that reports its committed batches and fails right after: the slice
/// is failed with the rows and batches of its last report, also when the run
/// ends before the worker has taken that report (eight slices, so that a
/// report left behind would show in one of them).
#[cfg(feature = "sqlite")]
#[test]
fn a_failed_slice_keeps_the_rows_its_last_report_gave() {
    use common::{event, events, insert_events, Event};
    use diesel_chunked_iterator::jetstream::{JobOptions, Slice, Worker};

    let db = <common::Sqlite as common::TestBackend>::create();
    let mut conn = <common::Sqlite as common::TestBackend>::connect(&db);
    let rows: Vec<Event> = (1..=800).map(|id| event(id, id as i16)).collect();
    insert_events(&mut conn, &rows);
    let parts: Vec<Partition<i64>> = events::table
        .chunked_by(events::id)
        .partitions(8, &mut conn)
        .unwrap();
    assert_eq!(parts.len(), 8);

    let obs = Observer::new();
    let name = obs.job("lastreport");
    let options = JobOptions::default()
        .ack_wait(Duration::from_secs(60))
        .max_deliveries(1);
    let report = obs
        .rt
        .block_on(async {
            Job::publish_with(&obs.js, &name, &parts, options)
                .await
                .unwrap();
            let worker = Worker::new(&obs.js, &name)
                .poll(Duration::from_millis(200))
                .run(|slice: &Slice<i64>| {
                    slice.committed(10, 1);
                    slice.committed(20, 2);
                    Err::<diesel_chunked_iterator::WriteReport<i64>, _>("batch 3 failed")
                });
            tokio::time::timeout(Duration::from_secs(60), worker).await
        })
        .expect("the worker finished")
        .expect("the worker ran the job");
    assert_eq!((report.done, report.failed), (0, 8));
    let s = obs.status(&name);
    assert_eq!((s.done, s.failed, s.rows), (0, 8, 160));
    for x in &s.slice {
        assert_eq!(
            (x.state, x.deliveries, x.rows, x.batches, x.error.as_deref()),
            (SliceState::Failed, 1, 20, 2, Some("batch 3 failed")),
            "{x:?}"
        );
    }
}
