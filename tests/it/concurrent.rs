//! Scans while other connections insert, update and delete rows.
//!
//! Writers run on their own connections (threads) with a seeded random mix of
//! statements while the scan pauses between batches. The seed is fixed
//! (`CHUNKED_SEED` overrides it) and printed in every failure message, so a failing
//! interleaving of statements can be replayed (thread timing aside).
//!
//! What must hold, whatever the writers do: keys come out strictly increasing (no
//! row twice), every row that existed for the whole scan with an unchanged key
//! comes out exactly once, nothing comes out that never existed, and the scan ends.

use crate::common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use diesel::prelude::*;
use diesel_chunked_iterator::prelude::*;

/// SplitMix64: a small, seedable generator, enough to pick statements.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn seed() -> u64 {
    std::env::var("CHUNKED_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00C0_FFEE)
}

/// Rows 1..=INITIAL at even ids; writers insert odd ids (in gaps and past the end),
/// update non-key columns of any row, and delete rows whose id is a multiple of 6.
const INITIAL: i32 = 2_400;

/// What the writers did, for the checks.
#[derive(Default)]
struct Log {
    inserted: BTreeSet<i32>,
    deleted: BTreeSet<i32>,
    statements: u64,
}

backend_tests! {
    fn concurrent_writers_never_duplicate_or_skip_stable_rows(db) {
        let seed = seed();
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, (1..=INITIAL).map(|i| i * 2));
        let done = AtomicBool::new(false);
        let log = Mutex::new(Log::default());
        let deadline = Instant::now() + Duration::from_secs(60);

        let yielded: Vec<i32> = std::thread::scope(|s| {
            for w in 0..2u64 {
                let (done, log, db) = (&done, &log, &db);
                s.spawn(move || {
                    let mut rng = Rng(seed ^ (w + 1).wrapping_mul(0xA076_1D64_78BD_642F));
                    let mut conn = connect::<B>(db);
                    let mut n = 0u32;
                    // bounded in count and time
                    while !done.load(Ordering::Relaxed) && n < 5_000 && Instant::now() < deadline {
                        n += 1;
                        let id = i32::try_from(rng.below(u64::try_from(INITIAL).unwrap() * 2 + 400)).unwrap() + 1;
                        match rng.below(3) {
                            0 if id % 2 == 1 => {
                                // a new row, in a gap or past the end; odd ids belong to
                                // one writer each, so inserts never collide
                                if id % 4 == (if w == 0 { 1 } else { 3 })
                                    && diesel::insert_into(posts::table).values(&post(id)).execute(&mut conn).is_ok()
                                {
                                    log.lock().unwrap().inserted.insert(id);
                                }
                            }
                            1 if id % 6 == 0 && id <= INITIAL * 2 => {
                                let gone = diesel::delete(posts::table.find(id)).execute(&mut conn)
                                    .unwrap_or_else(|e| panic!("seed {seed}: delete {id}: {e}"));
                                if gone == 1 {
                                    log.lock().unwrap().deleted.insert(id);
                                }
                            }
                            _ => {
                                diesel::update(posts::table.find(id))
                                    .set((posts::title.eq(format!("edited {n}")), posts::score.eq(Some(n as i32))))
                                    .execute(&mut conn)
                                    .unwrap_or_else(|e| panic!("seed {seed}: update {id}: {e}"));
                            }
                        }
                        log.lock().unwrap().statements += 1;
                        if n % 8 == 0 {
                            std::thread::sleep(Duration::from_micros(300));
                        }
                    }
                });
            }
            let mut yielded = Vec::new();
            let mut batches = 0u32;
            for batch in posts::table.chunked_by(posts::id).batch_size(50).load_batches::<Post>(&mut conn) {
                let batch = batch.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                yielded.extend(batch.iter().map(|p| p.id));
                batches += 1;
                assert!(batches < 1_000, "seed {seed}: the scan does not end");
                std::thread::sleep(Duration::from_millis(4));
            }
            done.store(true, Ordering::Relaxed);
            yielded
        });

        let log = log.into_inner().unwrap();
        let ctx = format!(
            "seed {seed} (set CHUNKED_SEED to replay): {} statements, {} inserted, {} deleted",
            log.statements, log.inserted.len(), log.deleted.len()
        );
        eprintln!("{}: {ctx}, {} rows yielded", B::NAME, yielded.len());
        assert!(
            !log.inserted.is_empty() && !log.deleted.is_empty(),
            "{ctx}: the writers must both insert and delete during the scan"
        );
        assert!(yielded.windows(2).all(|w| w[0] < w[1]), "{ctx}: keys not strictly increasing");
        let yielded_set: BTreeSet<i32> = yielded.iter().copied().collect();
        for id in (1..=INITIAL).map(|i| i * 2).filter(|id| !log.deleted.contains(id)) {
            assert!(yielded_set.contains(&id), "{ctx}: stable row {id} was skipped");
        }
        for id in &yielded {
            assert!(
                (id % 2 == 0 && *id <= INITIAL * 2) || log.inserted.contains(id),
                "{ctx}: row {id} never existed"
            );
        }
    }
}
