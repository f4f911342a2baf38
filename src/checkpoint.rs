//! Checkpoints (stub replaced by the real module).
#![allow(missing_docs, dead_code, unused_variables)]
use diesel::QueryResult;

pub const TABLE: &str = "chunked_checkpoints";

#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Checkpoint {
    pub name: String,
    pub key_type: String,
    pub last_key: Option<String>,
    pub rows: u64,
    pub batches: u64,
    pub done: bool,
    pub updated_at: String,
}

#[doc(hidden)]
pub trait CheckpointConnection: diesel::Connection {
    fn create_checkpoint_table(&mut self) -> QueryResult<()>;
    fn read_checkpoint(&mut self, name: &str) -> QueryResult<Option<Checkpoint>>;
    fn start_checkpoint(&mut self, name: &str, key_type: &str) -> QueryResult<Checkpoint>;
    fn lock_checkpoint(&mut self, name: &str) -> QueryResult<Option<Checkpoint>>;
    fn advance_checkpoint(
        &mut self,
        name: &str,
        last_key: Option<&str>,
        rows: u64,
        batches: u64,
        done: bool,
    ) -> QueryResult<()>;
    fn delete_checkpoint(&mut self, name: &str) -> QueryResult<bool>;
    fn batch_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<diesel::result::Error>;
}

pub(crate) fn is_lock_conflict(e: &diesel::result::Error) -> bool {
    false
}

macro_rules! stub {
    ($c:ty) => {
        impl CheckpointConnection for $c {
            fn create_checkpoint_table(&mut self) -> QueryResult<()> {
                Ok(())
            }
            fn read_checkpoint(&mut self, name: &str) -> QueryResult<Option<Checkpoint>> {
                Ok(None)
            }
            fn start_checkpoint(&mut self, name: &str, key_type: &str) -> QueryResult<Checkpoint> {
                unimplemented!()
            }
            fn lock_checkpoint(&mut self, name: &str) -> QueryResult<Option<Checkpoint>> {
                Ok(None)
            }
            fn advance_checkpoint(
                &mut self,
                name: &str,
                last_key: Option<&str>,
                rows: u64,
                batches: u64,
                done: bool,
            ) -> QueryResult<()> {
                Ok(())
            }
            fn delete_checkpoint(&mut self, name: &str) -> QueryResult<bool> {
                Ok(false)
            }
            fn batch_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
            where
                F: FnOnce(&mut Self) -> Result<T, E>,
                E: From<diesel::result::Error>,
            {
                diesel::Connection::transaction(self, f)
            }
        }
    };
}
#[cfg(feature = "sqlite")]
stub!(diesel::SqliteConnection);
#[cfg(feature = "postgres")]
stub!(diesel::PgConnection);
#[cfg(feature = "mysql")]
stub!(diesel::MysqlConnection);
