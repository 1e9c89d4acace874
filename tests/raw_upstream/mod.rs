//! A raw-socket upstream for framing cases hyper's server would never produce: it reads
//! each request head (and a `Content-Length` body), writes scripted bytes, then closes
//! the connection or holds it open.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What happens after the scripted bytes are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    Close,
    /// Keep the socket open and silent (until the peer goes away).
    Hold,
}

#[derive(Clone)]
pub struct RawUpstream {
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl RawUpstream {
    /// Answers every request with `bytes`, then `then`.
    pub async fn start(bytes: impl Into<Vec<u8>>, then: Then) -> RawUpstream {
        let bytes: Arc<Vec<u8>> = Arc::new(bytes.into());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let upstream = RawUpstream {
            addr: listener.local_addr().expect("addr"),
            requests: Arc::default(),
        };
        let requests = upstream.requests.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let bytes = bytes.clone();
                let requests = requests.clone();
                tokio::spawn(async move {
                    if !read_request(&mut stream).await {
                        return;
                    }
                    requests.fetch_add(1, Ordering::SeqCst);
                    if stream.write_all(&bytes).await.is_err() {
                        return;
                    }
                    let _ = stream.flush().await;
                    if then == Then::Hold {
                        // Read until the peer closes; never answer more.
                        let mut sink = [0u8; 1024];
                        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                    }
                });
            }
        });
        upstream
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Reads one request head and its `Content-Length` body; false if the peer went away.
async fn read_request(stream: &mut tokio::net::TcpStream) -> bool {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(n) if n > 0 => buffer.extend_from_slice(&chunk[..n]),
            _ => return false,
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(n) if n > 0 => buffer.extend_from_slice(&chunk[..n]),
            _ => return false,
        }
    }
    true
}
