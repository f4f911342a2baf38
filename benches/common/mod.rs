//! What the benchmarks (`scan`, `write`) share: the backends they can reach, a namespace
//! of their own on each server, the report folder, and small statistics.

// Each bench uses its own part of this module.
#![allow(dead_code)]

use std::error::Error as StdError;
use std::path::{Path, PathBuf};

#[cfg(any(feature = "postgres", feature = "mysql"))]
use diesel::{connection::SimpleConnection, Connection};
use serde_json::Value;

pub type Res<T> = Result<T, Box<dyn StdError>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    #[cfg(feature = "sqlite")]
    Sqlite,
    #[cfg(feature = "postgres")]
    Pg,
    #[cfg(feature = "mysql")]
    Mysql,
}

pub const ALL_BACKENDS: [&str; 3] = ["sqlite", "pg", "mysql"];

impl Backend {
    pub fn parse(name: &str) -> Result<Backend, String> {
        #[allow(unreachable_patterns)]
        match name {
            #[cfg(feature = "sqlite")]
            "sqlite" => Ok(Backend::Sqlite),
            #[cfg(feature = "postgres")]
            "pg" | "postgres" | "postgresql" => Ok(Backend::Pg),
            #[cfg(feature = "mysql")]
            "mysql" | "mariadb" => Ok(Backend::Mysql),
            "sqlite" => Err("not compiled in: build with the `sqlite` feature".into()),
            "pg" | "postgres" | "postgresql" => {
                Err("not compiled in: build with `--features postgres` (or --all-features)".into())
            }
            "mysql" | "mariadb" => {
                Err("not compiled in: build with `--features mysql` (or --all-features)".into())
            }
            other => Err(format!("unknown backend `{other}` (sqlite, pg, mysql)")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            #[cfg(feature = "sqlite")]
            Backend::Sqlite => "sqlite",
            #[cfg(feature = "postgres")]
            Backend::Pg => "pg",
            #[cfg(feature = "mysql")]
            Backend::Mysql => "mysql",
        }
    }
}

/// Runs `$body` with `$conn: &mut <the backend's connection>` opened on `$url`, after
/// running `$setup` (SQL statements; `""` for none) on it.
macro_rules! with_conn {
    ($backend:expr, $url:expr, $setup:expr, |$conn:ident| $body:block) => {{
        let setup: &str = $setup;
        match $backend {
            #[cfg(feature = "sqlite")]
            Backend::Sqlite => {
                let mut c = <diesel::SqliteConnection as diesel::Connection>::establish($url)?;
                if !setup.is_empty() {
                    diesel::connection::SimpleConnection::batch_execute(&mut c, setup)?;
                }
                let $conn = &mut c;
                $body
            }
            #[cfg(feature = "postgres")]
            Backend::Pg => {
                let mut c = <diesel::PgConnection as diesel::Connection>::establish($url)?;
                if !setup.is_empty() {
                    diesel::connection::SimpleConnection::batch_execute(&mut c, setup)?;
                }
                let $conn = &mut c;
                $body
            }
            #[cfg(feature = "mysql")]
            Backend::Mysql => {
                let mut c = <diesel::MysqlConnection as diesel::Connection>::establish($url)?;
                if !setup.is_empty() {
                    diesel::connection::SimpleConnection::batch_execute(&mut c, setup)?;
                }
                let $conn = &mut c;
                $body
            }
        }
    }};
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
pub fn env_url(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// The server's URL (PostgreSQL, MySQL/MariaDB) from the test environment.
#[cfg(feature = "postgres")]
pub fn pg_server() -> String {
    env_url("PG_DATABASE_URL", "postgres://root@127.0.0.1/test")
}

#[cfg(feature = "mysql")]
pub fn mysql_server() -> String {
    env_url("MYSQL_DATABASE_URL", "mysql://root@127.0.0.1/test")
}

/// Checks that the server is reachable and creates an empty namespace `name` for the
/// benchmark (a PostgreSQL schema, a MySQL database, an SQLite file in the temporary
/// directory), dropped first if a previous run left it: returns its URL.
pub fn prepare_namespace(backend: Backend, name: &str) -> Res<String> {
    match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => {
            let path = std::env::temp_dir().join(format!("{name}_{}.sqlite3", std::process::id()));
            remove_sqlite(&path);
            Ok(path.to_string_lossy().into_owned())
        }
        #[cfg(feature = "postgres")]
        Backend::Pg => {
            let server = pg_server();
            let mut admin = diesel::PgConnection::establish(&server)
                .map_err(|e| format!("PostgreSQL at {server} is unreachable: {e}"))?;
            admin.batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
            ))?;
            let sep = if server.contains('?') { '&' } else { '?' };
            Ok(format!("{server}{sep}options=-csearch_path%3D{name}"))
        }
        #[cfg(feature = "mysql")]
        Backend::Mysql => {
            let server = mysql_server();
            let mut admin = diesel::MysqlConnection::establish(&server)
                .map_err(|e| format!("MySQL/MariaDB at {server} is unreachable: {e}"))?;
            admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))?;
            admin.batch_execute(&format!("CREATE DATABASE {name}"))?;
            let base = server.rsplit_once('/').map(|(b, _)| b).unwrap_or(&server);
            Ok(format!("{base}/{name}"))
        }
    }
}

/// Drops the namespace `name` made by [`prepare_namespace`] (at `url`).
pub fn drop_namespace(backend: Backend, name: &str, url: &str) {
    let _ = (name, url);
    match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => remove_sqlite(Path::new(url)),
        #[cfg(feature = "postgres")]
        Backend::Pg => {
            if let Ok(mut c) = diesel::PgConnection::establish(&pg_server()) {
                let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"));
            }
        }
        #[cfg(feature = "mysql")]
        Backend::Mysql => {
            if let Ok(mut c) = diesel::MysqlConnection::establish(&mysql_server()) {
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name}"));
            }
        }
    }
}

pub fn remove_sqlite(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// The backends to run: `BENCH_BACKENDS` (comma list) or every compiled-in one.
pub fn wanted_backends() -> Vec<Backend> {
    let list = std::env::var("BENCH_BACKENDS")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let names: Vec<String> = match list {
        Some(v) => v
            .split(',')
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty())
            .collect(),
        None => ALL_BACKENDS.iter().map(|s| s.to_string()).collect(),
    };
    let mut out = Vec::new();
    for n in names {
        match Backend::parse(&n) {
            Ok(b) if !out.contains(&b) => out.push(b),
            Ok(_) => {}
            Err(why) => println!("skipping {n}: {why}"),
        }
    }
    out
}

/// The names of `backends`, comma-separated, for a bench's first line.
pub fn backend_names(backends: &[Backend]) -> String {
    backends
        .iter()
        .map(|b| b.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// [`prepare_namespace`], or `None` once it has said why `backend` is skipped.
pub fn namespace_or_skip(backend: Backend, name: &str) -> Option<String> {
    match prepare_namespace(backend, name) {
        Ok(url) => Some(url),
        Err(e) => {
            println!("skipping {}: {e}", backend.name());
            None
        }
    }
}

/// The end of a bench run: each of `failures` on stderr, and an error counting
/// them as `what` (`"measurement(s)"`) if there are any.
pub fn report_failures(failures: &[String], what: &str) -> Res<()> {
    if failures.is_empty() {
        return Ok(());
    }
    for f in failures {
        eprintln!("FAILED: {f}");
    }
    Err(format!("{} {what} failed", failures.len()).into())
}

pub fn backend_rank(b: &str) -> usize {
    ALL_BACKENDS.iter().position(|x| *x == b).unwrap_or(9)
}

/// `BENCH_REPORT_DIR`, else `$CARGO_TARGET_DIR/bench-report`, else `target/bench-report`.
pub fn report_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BENCH_REPORT_DIR") {
        return PathBuf::from(d);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench-report")
}

/// The results already in the report `path` (a JSON array), or none.
pub fn read_results(path: &Path, bench: &str) -> Vec<Value> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
            eprintln!(
                "{bench}: {} is not a JSON array ({e}); starting afresh",
                path.display()
            );
            Vec::new()
        }),
        Err(_) => Vec::new(),
    }
}

/// The report folder (created if missing), the path of `<bench>.json` in it,
/// and the results that file holds so far.
pub fn open_report(bench: &str) -> Res<(PathBuf, PathBuf, Vec<Value>)> {
    let dir = report_dir();
    std::fs::create_dir_all(&dir)?;
    let json_path = dir.join(format!("{bench}.json"));
    let results = read_results(&json_path, bench);
    Ok((dir, json_path, results))
}

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn plot_err<E: std::fmt::Debug>(e: E) -> Box<dyn StdError> {
    format!("{e:?}").into()
}
