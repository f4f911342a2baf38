CREATE TABLE users (
    id INTEGER PRIMARY KEY NOT NULL,
    name TEXT NOT NULL
);

CREATE TABLE posts (
    id INTEGER PRIMARY KEY NOT NULL,
    user_id INTEGER NOT NULL,
    title TEXT NOT NULL,
    slug VARCHAR(100) NOT NULL UNIQUE,
    published BOOLEAN NOT NULL,
    score INTEGER,
    created_at TIMESTAMP NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX posts_created_at_id ON posts (created_at, id);
CREATE INDEX posts_user_id ON posts (user_id);

CREATE TABLE events (
    id BIGINT PRIMARY KEY NOT NULL,
    code SMALLINT NOT NULL UNIQUE,
    kind VARCHAR(20) NOT NULL,
    seq INTEGER NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX events_kind_seq_id ON events (kind, seq, id);
