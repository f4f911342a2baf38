use crate::common;
use common::*;
use diesel_chunked_iterator::prelude::*;

backend_tests! {
    fn smoke(db) {
        let mut conn = connect::<B>(&db);
        insert_posts(&mut conn, 1..=25);
        let log = QueryLog::install(&mut conn);
        let ids: Vec<i32> = posts::table.chunked_by(posts::id).batch_size(10)
            .load_iter::<Post>(&mut conn).map(|p| p.unwrap().id).collect();
        assert_eq!(ids, (1..=25).collect::<Vec<_>>());
        assert_eq!(log.selects().len(), 3, "{:#?}", log.all());
        println!("{:#?}", log.all());
    }
}
