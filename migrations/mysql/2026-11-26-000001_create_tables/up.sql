CREATE TABLE users (
    id INTEGER AUTO_INCREMENT PRIMARY KEY,
    name TEXT NOT NULL
);

CREATE TABLE posts (
    id INTEGER AUTO_INCREMENT PRIMARY KEY,
    user_id INTEGER NOT NULL,
    title TEXT NOT NULL,
    slug VARCHAR(100) NOT NULL UNIQUE,
    published BOOLEAN NOT NULL,
    score INTEGER,
    created_at DATETIME(6) NOT NULL,
    body TEXT NOT NULL,
    INDEX posts_created_at_id (created_at, id),
    INDEX posts_user_id (user_id)
);

CREATE TABLE events (
    id BIGINT PRIMARY KEY,
    code SMALLINT NOT NULL UNIQUE,
    kind VARCHAR(20) NOT NULL,
    seq INTEGER NOT NULL,
    payload TEXT NOT NULL,
    INDEX events_kind_seq_id (kind, seq, id)
);
