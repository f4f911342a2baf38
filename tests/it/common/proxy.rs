//! A TCP proxy between the tests' connections and a real PostgreSQL or
//! MySQL/MariaDB server that loses the answer to one `COMMIT`.
//!
//! It forwards bytes both ways and reads the client's side message by
//! message. When the client sends its `cut_at`-th `COMMIT` (over all the
//! connections through the proxy), the proxy forwards it, waits for the
//! server's answer (the server has committed by then), drops the answer and
//! closes both sockets: the client sees its connection break after sending
//! `COMMIT`, exactly as when a network fails at that instant.
//!
//! A `COMMIT` is PostgreSQL's simple-query message `Q` with the text `COMMIT`,
//! or MySQL's `COM_QUERY` packet whose text is exactly `COMMIT`; the word
//! inside other statements (`READ COMMITTED`) does not count.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// The wire protocol the proxy reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Protocol {
    Postgres,
    Mysql,
}

/// A running proxy; its threads live as long as the test process.
pub struct Proxy {
    pub port: u16,
    upstream: SocketAddr,
    protocol: Protocol,
    commits: Arc<AtomicUsize>,
    answers_dropped: Arc<AtomicUsize>,
}

struct Shared {
    upstream: SocketAddr,
    protocol: Protocol,
    /// The statement whose answer is lost: `COMMIT`, or `ROLLBACK`.
    word: &'static str,
    cut_at: usize,
    /// Drop the cut statement itself (the server never sees it).
    swallow: bool,
    commits: Arc<AtomicUsize>,
    answers_dropped: Arc<AtomicUsize>,
}

impl Proxy {
    /// A proxy to the server of `url` that loses the answer to the `cut_at`-th
    /// `COMMIT` (1-based; 0 never cuts).
    pub fn start(url: &str, cut_at: usize) -> Proxy {
        Self::start_cutting(url, "COMMIT", cut_at)
    }

    /// A proxy that loses the answer to the `cut_at`-th statement `word`
    /// (`COMMIT` or `ROLLBACK`, sent alone); [`commits`](Self::commits)
    /// counts those statements.
    pub fn start_cutting(url: &str, word: &'static str, cut_at: usize) -> Proxy {
        Self::start_with(url, word, cut_at, false)
    }

    /// A proxy that never forwards the `cut_at`-th `COMMIT`: it closes both
    /// sockets instead (the server rolls the transaction back).
    pub fn start_swallowing(url: &str, cut_at: usize) -> Proxy {
        Self::start_with(url, "COMMIT", cut_at, true)
    }

    fn start_with(url: &str, word: &'static str, cut_at: usize, swallow: bool) -> Proxy {
        let protocol = if url.starts_with("postgres") {
            Protocol::Postgres
        } else {
            Protocol::Mysql
        };
        let (host, _) = host_of(url);
        let default_port = match protocol {
            Protocol::Postgres => 5432,
            Protocol::Mysql => 3306,
        };
        let host_port = if host.contains(':') {
            host.to_string()
        } else {
            format!("{host}:{default_port}")
        };
        let host_port = host_port.replace("localhost", "127.0.0.1");
        let upstream: SocketAddr = host_port
            .parse()
            .unwrap_or_else(|e| panic!("server address {host_port}: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let commits = Arc::new(AtomicUsize::new(0));
        let answers_dropped = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Shared {
            upstream,
            protocol,
            word,
            cut_at,
            swallow,
            commits: commits.clone(),
            answers_dropped: answers_dropped.clone(),
        });
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let shared = shared.clone();
                std::thread::spawn(move || serve(client, &shared));
            }
        });
        Proxy {
            port,
            upstream,
            protocol,
            commits,
            answers_dropped,
        }
    }

    /// `url` with the proxy as its server (and, on PostgreSQL, no TLS, so
    /// that the proxy can read the messages).
    pub fn url(&self, url: &str) -> String {
        let (host, at) = host_of(url);
        let mut out = format!(
            "{}127.0.0.1:{}{}",
            &url[..at],
            self.port,
            &url[at + host.len()..]
        );
        if self.protocol == Protocol::Postgres {
            let sep = if out.contains('?') { '&' } else { '?' };
            out.push(sep);
            out.push_str("sslmode=disable&gssencmode=disable");
        }
        out
    }

    /// `COMMIT`s seen so far.
    pub fn commits(&self) -> usize {
        self.commits.load(Ordering::SeqCst)
    }

    /// How many `COMMIT` answers were dropped (0 or 1).
    pub fn answers_dropped(&self) -> usize {
        self.answers_dropped.load(Ordering::SeqCst)
    }
}

/// The `host[:port]` of `url` and where it starts.
fn host_of(url: &str) -> (&str, usize) {
    let start = url.find("://").expect("a URL") + 3;
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    let at = url[start..end].rfind('@').map_or(start, |i| start + i + 1);
    (&url[at..end], at)
}

fn serve(client: TcpStream, shared: &Shared) {
    let Ok(server) = TcpStream::connect(shared.upstream) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let cut = Arc::new(AtomicBool::new(false));
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    // server -> client: forwarded until this connection's cut; then the answer
    // is dropped and both sockets closed.
    let back = {
        let cut = cut.clone();
        let answers_dropped = shared.answers_dropped.clone();
        let (mut client, mut server) = (c2, s2);
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                let n = match server.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if cut.load(Ordering::SeqCst) {
                    answers_dropped.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                if client.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        })
    };
    forward_client(client, server, shared, &cut);
    let _ = back.join();
}

/// client -> server, message by message.
fn forward_client(mut client: TcpStream, mut server: TcpStream, shared: &Shared, cut: &AtomicBool) {
    let mut pending: Vec<u8> = Vec::new();
    let mut startup = shared.protocol == Protocol::Postgres;
    let mut buf = [0u8; 16 * 1024];
    'read: loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some((len, is_commit)) =
            next_message(shared.protocol, shared.word, &pending, &mut startup)
        {
            let message: Vec<u8> = pending.drain(..len).collect();
            if is_commit {
                let nth = shared.commits.fetch_add(1, Ordering::SeqCst) + 1;
                if nth == shared.cut_at && shared.swallow {
                    shared.answers_dropped.fetch_add(1, Ordering::SeqCst);
                    cut.store(true, Ordering::SeqCst);
                    break 'read;
                }
                if nth == shared.cut_at {
                    // Set before the server can answer: the next bytes from
                    // the server are the answer to this COMMIT.
                    cut.store(true, Ordering::SeqCst);
                }
            }
            if server.write_all(&message).is_err() {
                break 'read;
            }
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

/// The length of the first complete message of `pending`, and whether it is
/// the statement `word` alone; `None` while it is incomplete.
fn next_message(
    protocol: Protocol,
    word: &str,
    pending: &[u8],
    startup: &mut bool,
) -> Option<(usize, bool)> {
    match protocol {
        Protocol::Postgres if *startup => {
            // Untyped: length (itself included), then a request code.
            let len = u32::from_be_bytes(pending.get(..4)?.try_into().unwrap()) as usize;
            if pending.len() < len.max(8) {
                return None;
            }
            let code = u32::from_be_bytes(pending[4..8].try_into().unwrap());
            // SSLRequest and GSSENCRequest come before the startup message.
            if code != 80_877_103 && code != 80_877_104 {
                *startup = false;
            }
            Some((len.max(8), false))
        }
        Protocol::Postgres => {
            let len = u32::from_be_bytes(pending.get(1..5)?.try_into().unwrap()) as usize + 1;
            if pending.len() < len {
                return None;
            }
            let text = &pending[5..len];
            let is = pending[0] == b'Q'
                && text.len() == word.len() + 1
                && text.starts_with(word.as_bytes())
                && text.ends_with(b"\0");
            Some((len, is))
        }
        Protocol::Mysql => {
            let header = pending.get(..4)?;
            let len =
                (header[0] as usize | (header[1] as usize) << 8 | (header[2] as usize) << 16) + 4;
            if pending.len() < len {
                return None;
            }
            // COM_QUERY (3) of the text `COMMIT`, after the query attributes'
            // counts when the client sends them (mysql_async, at most 2 bytes).
            let payload = &pending[4..len];
            let commit = payload.first() == Some(&3)
                && payload.len() <= 1 + 2 + word.len()
                && payload.ends_with(word.as_bytes());
            Some((len, commit))
        }
    }
}
