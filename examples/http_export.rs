//! Streams a table as NDJSON over HTTP with fixed memory: each response pulls
//! one batch at a time from the database (`load_batches_stream`), writes it as
//! one HTTP chunk, and holds no connection while the client reads. Runs on
//! tokio with diesel-async; SQLite here, the same code on `AsyncPgConnection`
//! or a deadpool/bb8 pool.
//!
//! ```sh
//! cargo run --example http_export --features async            # serves 127.0.0.1:3000/posts.ndjson
//! cargo run --example http_export --features async -- --once  # fetches it once itself and exits
//! ```
//!
//! The HTTP/1.1 is the least that shows the point (a chunked body written as
//! the stream yields); a service would use its web framework's streaming body
//! (axum's `Body::from_stream`, for instance) over the same stream.

use std::error::Error;

use diesel::SqliteConnection;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::AsyncConnection;
use diesel_chunked_iterator::prelude::*;
use futures_util::TryStreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::{posts, Post};

const ROWS: i32 = 50_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let once = std::env::args().any(|a| a == "--once");
    let url = common::temp_db("http-export");
    drop(common::create(&url, 1..=ROWS)?);

    let listener = TcpListener::bind(if once {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:3000"
    })
    .await?;
    let addr = listener.local_addr()?;
    if once {
        let server = tokio::spawn(serve_one(listener, url.clone()));
        let (lines, bytes) = fetch(&addr.to_string()).await?;
        server.await?.map_err(|e| e.to_string())?;
        println!("fetched {lines} posts ({bytes} bytes of NDJSON) from http://{addr}/posts.ndjson");
        assert_eq!(lines, ROWS as usize, "every post exactly once");
    } else {
        println!("serving http://{addr}/posts.ndjson ({ROWS} posts); Ctrl-C to stop");
        loop {
            let (socket, _) = listener.accept().await?;
            let url = url.clone();
            tokio::spawn(async move {
                if let Err(e) = respond(socket, &url).await {
                    eprintln!("request failed: {e}");
                }
            });
        }
    }
    let _ = std::fs::remove_file(&url);
    Ok(())
}

async fn serve_one(listener: TcpListener, url: String) -> Result<(), Box<dyn Error + Send + Sync>> {
    let (socket, _) = listener.accept().await?;
    respond(socket, &url).await
}

/// Answers one request with the posts table as NDJSON, one HTTP chunk a batch.
async fn respond(socket: TcpStream, url: &str) -> Result<(), Box<dyn Error + Send + Sync>> {
    let mut socket = BufReader::new(socket);
    // the request line and headers; every path gets the export
    let mut line = String::new();
    while socket.read_line(&mut line).await? > 2 {
        line.clear();
    }
    let socket = socket.get_mut();
    socket
        .write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\
              transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        )
        .await?;

    let mut conn = SyncConnectionWrapper::<SqliteConnection>::establish(url).await?;
    let mut batches = posts::table
        .chunked_by(posts::id)
        .batch_size(1_000)
        .load_batches_stream::<Post>(&mut conn);
    let mut body = Vec::new();
    while let Some(batch) = batches.try_next().await? {
        body.clear();
        for p in &batch {
            body.extend_from_slice(
                format!(
                    "{{\"id\":{},\"user_id\":{},\"title\":{:?},\"published\":{}}}\n",
                    p.id, p.user_id, p.title, p.published
                )
                .as_bytes(),
            );
        }
        socket
            .write_all(format!("{:x}\r\n", body.len()).as_bytes())
            .await?;
        socket.write_all(&body).await?;
        socket.write_all(b"\r\n").await?;
    }
    socket.write_all(b"0\r\n\r\n").await?;
    socket.shutdown().await?;
    Ok(())
}

/// Fetches the export: the number of NDJSON lines and bytes in the body.
async fn fetch(addr: &str) -> Result<(usize, usize), Box<dyn Error>> {
    let mut socket = TcpStream::connect(addr).await?;
    socket
        .write_all(b"GET /posts.ndjson HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    socket.read_to_end(&mut response).await?;
    let text = String::from_utf8(response)?;
    let (head, chunked) = text.split_once("\r\n\r\n").ok_or("no header end")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("unexpected response: {head}").into());
    }
    // undo the chunked encoding
    let mut body = String::new();
    let mut rest = chunked;
    loop {
        let (size, after) = rest.split_once("\r\n").ok_or("bad chunk")?;
        let size = usize::from_str_radix(size, 16)?;
        if size == 0 {
            break;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    Ok((body.lines().count(), body.len()))
}
