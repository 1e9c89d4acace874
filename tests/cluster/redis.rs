//! A real `redis-server` per test, on an ephemeral port of 127.0.0.1, in a temp dir,
//! without persistence, so a test can kill and restart it. When `redis-server` is not
//! on `PATH`, [`RedisServer::start`] prints "skipped: redis-server not found" and
//! returns `None`, unless `CSGATE_REQUIRE_REDIS=1` (CI), where it panics.
//!
//! Blocking std sockets and sleeps are deliberate here: this harness manages a child
//! process (start, PING until it answers, kill) from synchronous code, outside the
//! gateway's runtime paths, and every wait is bounded.
#![allow(clippy::disallowed_methods)]
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// Extra `--name value` arguments (e.g. `maxmemory`), kept across restarts.
    options: Vec<(String, String)>,
}

fn available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl RedisServer {
    /// Starts one, or `None` (skip the test) when `redis-server` is missing.
    pub fn start(test: &str) -> Option<RedisServer> {
        RedisServer::start_with(test, &[])
    }

    /// [`RedisServer::start`] with extra configuration, e.g.
    /// `[("maxmemory", "32mb"), ("maxmemory-policy", "noeviction")]`.
    pub fn start_with(test: &str, options: &[(&str, &str)]) -> Option<RedisServer> {
        if !available() {
            assert!(
                std::env::var("CSGATE_REQUIRE_REDIS").as_deref() != Ok("1"),
                "{test}: redis-server not found and CSGATE_REQUIRE_REDIS=1"
            );
            // Straight to stderr: libtest captures eprintln!, and a skip must be seen.
            let _ = writeln!(std::io::stderr(), "{test}: skipped: redis-server not found");
            return None;
        }
        // The port is free when read; another process could take it before Redis binds
        // it, so a failed start tries another port.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("an ephemeral port")
                .port();
            let mut server = RedisServer {
                child: None,
                port,
                dir: tempfile::tempdir().expect("tempdir"),
                options: options
                    .iter()
                    .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                    .collect(),
            };
            if server.spawn() {
                return Some(server);
            }
        }
        panic!("{test}: redis-server did not start");
    }

    /// Starts the process on `self.port` and waits for PING; false if it exited.
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--enable-debug-command", "yes"])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(
                self.options
                    .iter()
                    .flat_map(|(name, value)| [format!("--{name}"), value.clone()]),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server spawns");
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if self.ping() {
                return true;
            }
            if let Some(child) = self.child.as_mut() {
                if child.try_wait().ok().flatten().is_some() {
                    self.child = None;
                    return false;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect_timeout(&self.addr(), Duration::from_millis(100))
        else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: connections drop as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused process dies of SIGKILL too; CONT is harmless either way.
            let _ = Command::new("kill")
                .args(["-CONT".to_owned(), child.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process freezes; connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("redis-server runs").id();
        let status = Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// One command's raw RESP answer (up to 64 KiB), e.g. `INFO memory`; `None` when
    /// Redis does not answer within a second.
    pub fn command(&self, command: &str) -> Option<String> {
        let mut stream =
            TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
        let mut answer = vec![0u8; 64 * 1024];
        let n = stream.read(&mut answer).ok()?;
        Some(String::from_utf8_lossy(&answer[..n]).into_owned())
    }

    /// `used_memory` from `INFO memory`, in bytes.
    pub fn used_memory(&self) -> Option<u64> {
        let info = self.command("INFO memory")?;
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Starts it again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.spawn(), "redis-server restarts on port {}", self.port);
    }

    /// Sends a raw command and does not wait for the answer (`DEBUG SLEEP`).
    pub fn send_and_forget(&self, command: &str) -> TcpStream {
        let mut stream = TcpStream::connect(self.addr()).expect("connects");
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .expect("writes");
        stream
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
