/*
 * The MariaDB per-batch cost without Diesel and without this crate: libmariadb's
 * prepared-statement API, the statements the scan bench runs on its `posts` table.
 *
 *   cc -O2 -o keyset_loop benches/mariadb/keyset_loop.c $(mariadb_config --cflags --libs)
 *   ./keyset_loop 127.0.0.1 3306 root DATABASE 1000 3   # HOST PORT USER DATABASE BATCH [ROUNDS]
 *
 * Per round, alternating: one `SELECT ... ORDER BY id` of the whole table (what
 * `load()` runs), then the keyset loop `WHERE id > ? ORDER BY id LIMIT BATCH + 1`
 * (what `chunked_by(id).batch_size(BATCH)` runs; the look-ahead row is read and the
 * next batch starts after the last row of this one). Both prepare their statement
 * once, bind every column to fixed buffers, `mysql_stmt_store_result` the result
 * (as Diesel does) and fetch every row. Prints rows/s of each, their ratio and the
 * time per batch that the loop spends over the single query.
 */
#include <mysql.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define COLS "id, user_id, title, slug, published, score, created_at, body"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(MYSQL_STMT *s, const char *what) {
    fprintf(stderr, "%s: %s\n", what, s ? mysql_stmt_error(s) : "?");
    exit(1);
}

/* Output buffers for the 8 columns. */
static int id, user_id, published, score;
static char title[256], slug[256], body[1024];
static MYSQL_TIME created;
static unsigned long lens[8];
static my_bool nulls[8];

static void bind_out(MYSQL_STMT *s) {
    MYSQL_BIND b[8];
    memset(b, 0, sizeof b);
    enum enum_field_types t[8] = {MYSQL_TYPE_LONG,   MYSQL_TYPE_LONG,   MYSQL_TYPE_STRING,
                                  MYSQL_TYPE_STRING, MYSQL_TYPE_LONG,   MYSQL_TYPE_LONG,
                                  MYSQL_TYPE_DATETIME, MYSQL_TYPE_STRING};
    void *p[8] = {&id, &user_id, title, slug, &published, &score, &created, body};
    unsigned long n[8] = {4, 4, sizeof title, sizeof slug, 4, 4, sizeof created, sizeof body};
    for (int i = 0; i < 8; i++) {
        b[i].buffer_type = t[i];
        b[i].buffer = p[i];
        b[i].buffer_length = n[i];
        b[i].length = &lens[i];
        b[i].is_null = &nulls[i];
    }
    if (mysql_stmt_bind_result(s, b)) die(s, "bind_result");
}

/* Executes `s`, stores and fetches every row: returns the rows, sets *last to the
 * id of row number `upto` (or of the last row if there are fewer). */
static long run(MYSQL_STMT *s, long upto, int *last, unsigned long long *sum) {
    if (mysql_stmt_execute(s)) die(s, "execute");
    bind_out(s);
    if (mysql_stmt_store_result(s)) die(s, "store_result");
    long n = 0;
    int r;
    while ((r = mysql_stmt_fetch(s)) == 0 || r == MYSQL_DATA_TRUNCATED) {
        n++;
        if (n <= upto) *last = id;
        *sum += (unsigned)id + lens[2] + lens[3] + lens[7] + (unsigned)score;
    }
    mysql_stmt_free_result(s);
    return n;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s HOST PORT USER DATABASE BATCH [ROUNDS]\n", argv[0]);
        return 2;
    }
    int batch = atoi(argv[5]);
    int rounds = argc > 6 ? atoi(argv[6]) : 3;
    MYSQL *c = mysql_init(NULL);
    if (!mysql_real_connect(c, argv[1], argv[3], NULL, argv[4], atoi(argv[2]), NULL, 0)) {
        fprintf(stderr, "connect: %s\n", mysql_error(c));
        return 1;
    }
    MYSQL_STMT *all = mysql_stmt_init(c), *page = mysql_stmt_init(c);
    const char *q_all = "SELECT " COLS " FROM posts ORDER BY id";
    const char *q_page = "SELECT " COLS " FROM posts WHERE id > ? ORDER BY id LIMIT ?";
    if (mysql_stmt_prepare(all, q_all, strlen(q_all))) die(all, "prepare");
    if (mysql_stmt_prepare(page, q_page, strlen(q_page))) die(page, "prepare");
    int after = 0, limit = batch + 1;
    MYSQL_BIND in[2];
    memset(in, 0, sizeof in);
    in[0].buffer_type = MYSQL_TYPE_LONG;
    in[0].buffer = &after;
    in[1].buffer_type = MYSQL_TYPE_LONG;
    in[1].buffer = &limit;
    if (mysql_stmt_bind_param(page, in)) die(page, "bind_param");
    unsigned long long sum = 0;
    /* The fixed cost of one statement: a prepared `SELECT ?` (round trip, no table)
     * and a one-row keyset batch (`LIMIT 2`: the optimizer's range analysis, one index
     * descent, two rows), each executed 2,000 times. */
    MYSQL_STMT *ping = mysql_stmt_init(c);
    const char *q_ping = "SELECT ?";
    if (mysql_stmt_prepare(ping, q_ping, strlen(q_ping))) die(ping, "prepare");
    if (mysql_stmt_bind_param(ping, in)) die(ping, "bind_param");
    for (int r = 1; r <= rounds; r++) {
        double t0 = now();
        for (int i = 0; i < 2000; i++) {
            if (mysql_stmt_execute(ping) || mysql_stmt_store_result(ping)) die(ping, "ping");
            while (mysql_stmt_fetch(ping) == 0) {
            }
            mysql_stmt_free_result(ping);
        }
        double t_ping = (now() - t0) / 2000;
        int saved = limit, last = 0;
        limit = 2;
        t0 = now();
        for (int i = 0; i < 2000; i++) {
            after = i; /* rows in cache: no page read */
            run(page, 1, &last, &sum);
        }
        double t_one = (now() - t0) / 2000;
        limit = saved;
        after = 0;
        printf("round %d: SELECT ? %.1f us, one-row keyset batch %.1f us\n", r, t_ping * 1e6,
               t_one * 1e6);
    }
    printf("round  load rows/s  keyset rows/s  ratio  queries  extra ms/batch\n");
    for (int r = 1; r <= rounds; r++) {
        int last = 0;
        double t0 = now();
        long rows_all = run(all, 0, &last, &sum);
        double t_all = now() - t0;
        long rows = 0, queries = 0;
        after = 0;
        t0 = now();
        for (;;) {
            long n = run(page, batch, &last, &sum);
            queries++;
            if (n <= batch) {
                rows += n;
                break;
            }
            rows += batch;
            after = last; /* the look-ahead row starts the next batch */
        }
        double t_keyset = now() - t0;
        if (rows != rows_all) {
            fprintf(stderr, "keyset loop read %ld rows, load %ld\n", rows, rows_all);
            return 1;
        }
        printf("%5d  %11.0f  %13.0f  %5.3f  %7ld  %14.3f\n", r, rows_all / t_all,
               rows / t_keyset, t_all / t_keyset, queries,
               (t_keyset - t_all) * 1e3 / queries);
    }
    fprintf(stderr, "checksum %llu\n", sum);
    mysql_close(c);
    return 0;
}
