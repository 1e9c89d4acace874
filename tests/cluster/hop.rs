//! A fault-injecting TCP hop between one replica and Redis (issue 21): forwards
//! 127.0.0.1:{ephemeral} to a target and, switched at run time, adds latency, stalls,
//! silently drops, or resets. Faults apply to the connections already open and to new
//! ones. One hop per replica, so a fault can hit the writer alone or every replica.
//!
//! - [`Hop::latency`]: every chunk, each way, is delivered that long after it was read,
//!   in order (a per-direction queue of (deadline, bytes)).
//! - [`Hop::stall`] / [`Hop::unstall`]: bytes are held, then all delivered in order.
//! - [`Hop::blackhole`]: every open connection keeps accepting bytes and drops them,
//!   never answering and never closing; new connections are accepted and treated the
//!   same. A blackholed connection stays dead after [`Hop::heal`] (as a connection
//!   whose NAT or conntrack entry vanished: bytes already dropped cannot come back, and
//!   a request/response protocol is out of step on it); only new connections work.
//! - [`Hop::reset`]: every current connection is closed with RST on both sides
//!   (`set_zero_linger`: `SO_LINGER` 0, then drop); new connections are normal.
//! - [`Hop::heal`]: no latency, no stall, no blackhole for new connections.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the hop does now; links watch it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Control {
    latency: Duration,
    stalled: bool,
    blackhole: bool,
    /// Advanced by every [`Hop::reset`]: a link opened before the change closes with RST.
    resets: u64,
}

pub struct Hop {
    addr: SocketAddr,
    control: Arc<watch::Sender<Control>>,
    accepted: Arc<AtomicUsize>,
    acceptor: JoinHandle<()>,
}

/// Bytes waiting in one direction, each with the instant it may be delivered.
type Queue = VecDeque<(Instant, Bytes)>;

/// Reads at most this much per chunk; a read is refused while this much is queued one
/// way (so a stalled hop holds a bounded amount and the sender feels backpressure).
const CHUNK: usize = 64 * 1024;
const QUEUED_MAX: usize = 64 * 1024 * 1024;

impl Hop {
    /// Forwards 127.0.0.1:{ephemeral} to `target`, healthy.
    pub async fn start(target: SocketAddr) -> Hop {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("address");
        let control = Arc::new(watch::Sender::new(Control::default()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let acceptor = tokio::spawn({
            let (control, accepted) = (Arc::clone(&control), Arc::clone(&accepted));
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let _ = client.set_nodelay(true);
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let watch = control.subscribe();
                    tokio::spawn(link(client, target, watch));
                }
            }
        });
        Hop {
            addr,
            control,
            accepted,
            acceptor,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Connections accepted so far (a replica that reconnects opens new ones).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Every chunk, each way, delivered `each_way` after it was read.
    pub fn latency(&self, each_way: Duration) {
        self.control.send_modify(|c| c.latency = each_way);
    }

    /// Holds every byte, each way, until [`Hop::unstall`] (or [`Hop::heal`]).
    pub fn stall(&self) {
        self.control.send_modify(|c| c.stalled = true);
    }

    pub fn unstall(&self) {
        self.control.send_modify(|c| c.stalled = false);
    }

    /// Open connections and new ones silently drop every byte, never close.
    pub fn blackhole(&self) {
        self.control.send_modify(|c| c.blackhole = true);
    }

    /// Closes every current connection with RST on both sides.
    pub fn reset(&self) {
        self.control.send_modify(|c| c.resets += 1);
    }

    /// Back to forwarding as is for new connections (and for open ones that were only
    /// delayed or stalled: they deliver what they hold).
    pub fn heal(&self) {
        self.control.send_modify(|c| {
            c.latency = Duration::ZERO;
            c.stalled = false;
            c.blackhole = false;
        });
    }
}

impl Drop for Hop {
    fn drop(&mut self) {
        self.acceptor.abort();
        // Every link closes (with RST) on the next control change it sees.
        self.control.send_modify(|c| c.resets += 1);
    }
}

/// One connection through the hop, until either side closes, a reset, or the hop is
/// dropped.
async fn link(mut client: TcpStream, target: SocketAddr, mut control: watch::Receiver<Control>) {
    let start = *control.borrow_and_update();
    if start.blackhole {
        return sink(client, control, start.resets).await;
    }
    let Ok(mut server) = TcpStream::connect(target).await else {
        return; // the target is down: the client sees its connection close
    };
    let _ = server.set_nodelay(true);
    let resets = start.resets;
    let mut now = start;
    // Client → server and server → client.
    let (mut up, mut down): (Queue, Queue) = (VecDeque::new(), VecDeque::new());
    let (mut up_bytes, mut down_bytes) = (0usize, 0usize);
    let (mut client_eof, mut server_eof) = (false, false);
    let mut dead = false;
    let mut client_buf = BytesMut::with_capacity(CHUNK);
    let mut server_buf = BytesMut::with_capacity(CHUNK);
    loop {
        if now.resets != resets {
            return rst(client, server);
        }
        if now.blackhole {
            dead = true;
        }
        if dead {
            // Accept and drop, both ways, until the hop is dropped or reset.
            drop(server);
            return sink(client, control, resets).await;
        }
        // Deliver what is due (all of it, in order, unless stalled).
        if !now.stalled {
            let at = Instant::now();
            while up.front().is_some_and(|(due, _)| *due <= at) {
                let (_, bytes) = up.pop_front().expect("front");
                up_bytes -= bytes.len();
                if server.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            while down.front().is_some_and(|(due, _)| *due <= at) {
                let (_, bytes) = down.pop_front().expect("front");
                down_bytes -= bytes.len();
                if client.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        }
        if (client_eof && up.is_empty()) || (server_eof && down.is_empty()) {
            return; // one side closed and everything it sent was delivered
        }
        let next_due = if now.stalled {
            None
        } else {
            [up.front(), down.front()]
                .into_iter()
                .flatten()
                .map(|(due, _)| *due)
                .min()
        };
        let delay = now.latency;
        tokio::select! {
            read = client.read_buf(&mut client_buf), if !client_eof && up_bytes < QUEUED_MAX => {
                match read {
                    Ok(0) | Err(_) => client_eof = true,
                    Ok(_) => {
                        let bytes = client_buf.split().freeze();
                        up_bytes += bytes.len();
                        up.push_back((Instant::now() + delay, bytes));
                        client_buf.reserve(CHUNK);
                    }
                }
            }
            read = server.read_buf(&mut server_buf), if !server_eof && down_bytes < QUEUED_MAX => {
                match read {
                    Ok(0) | Err(_) => server_eof = true,
                    Ok(_) => {
                        let bytes = server_buf.split().freeze();
                        down_bytes += bytes.len();
                        down.push_back((Instant::now() + delay, bytes));
                        server_buf.reserve(CHUNK);
                    }
                }
            }
            () = sleep_until(next_due) => {}
            changed = control.changed() => {
                if changed.is_err() {
                    return rst(client, server); // the hop is gone
                }
                now = *control.borrow_and_update();
            }
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// A blackholed connection: reads and drops everything, answers nothing, never closes
/// (until the peer closes, a reset, or the hop is dropped).
async fn sink(mut client: TcpStream, mut control: watch::Receiver<Control>, resets: u64) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        tokio::select! {
            read = client.read(&mut buf) => {
                if matches!(read, Ok(0) | Err(_)) {
                    return;
                }
            }
            changed = control.changed() => {
                if changed.is_err() || control.borrow_and_update().resets != resets {
                    let _ = client.set_zero_linger();
                    return;
                }
            }
        }
    }
}

/// Closes both sides with RST: `SO_LINGER` 0, then drop.
fn rst(client: TcpStream, server: TcpStream) {
    let _ = client.set_zero_linger();
    let _ = server.set_zero_linger();
}
