DROP TABLE events;
DROP TABLE posts;
DROP TABLE users;
