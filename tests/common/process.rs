//! The real `csgate` binary as a child process, with JSON logs captured line by line.
//! Started on port 0: the addresses come from its `--ready-file`, and it is ready when
//! the admin `/readyz` answers 200 (never from a log line).
#![allow(dead_code)]

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A config fragment that makes the binary log JSON at info level.
pub fn json_logs(extra: &str) -> String {
    format!("[log]\nformat = \"json\"\nlevel = \"info\"\n{extra}")
}

/// The binary, running with JSON logs, and every line it has printed.
pub struct Process {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub listen: String,
    pub admin: String,
    pub dir: tempfile::TempDir,
    pub config_path: std::path::PathBuf,
}

impl Process {
    /// Starts the binary and waits until `/readyz` answers 200.
    pub async fn start(config: &str, args: &[&str]) -> Process {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("csgate.toml");
        std::fs::write(&config_path, config).expect("write config");
        let ready_file = dir.path().join("ready.json");
        let mut child = Command::new(env!("CARGO_BIN_EXE_csgate"))
            .arg("--config")
            .arg(&config_path)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--ready-file")
            .arg(&ready_file)
            .args(args)
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn csgate");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().expect("stdout"))
                as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let lines = lines.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    lines.lock().expect("lines").push(line);
                }
            });
        }
        let mut process = Process {
            child,
            lines,
            listen: String::new(),
            admin: String::new(),
            dir,
            config_path,
        };
        let bound = process.read_ready_file(&ready_file).await;
        process.listen = bound.listen.to_string();
        process.admin = bound.admin.to_string();
        process.wait_for_readyz(200).await;
        process
    }

    /// The `--ready-file`, once the binary has written it (bounded; fails early if the
    /// process exits first).
    async fn read_ready_file(&mut self, path: &std::path::Path) -> csgate::app::ReadyFile {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            // Written to a temporary name and renamed: present means complete.
            if let Ok(text) = std::fs::read_to_string(path) {
                return serde_json::from_str(&text).expect("the ready file is JSON");
            }
            let exited = self.child.try_wait().expect("try_wait");
            assert!(
                exited.is_none() && tokio::time::Instant::now() < deadline,
                "no ready file (exit: {exited:?}); printed: {:#?}",
                self.lines.lock().expect("lines")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Polls the admin `/readyz` until it answers `status` (bounded).
    pub async fn wait_for_readyz(&self, status: u16) {
        let url = self.admin_url("/readyz");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if super::try_get(&url).await.map(|a| a.status) == Some(status) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz never answered {status}; printed: {:#?}",
                self.lines.lock().expect("lines")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// The first printed line matching `predicate`, waiting (bounded) for it.
    pub async fn wait_for_line(&self, predicate: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(line) = self
                .lines
                .lock()
                .expect("lines")
                .iter()
                .find(|l| predicate(l))
            {
                return line.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no such line; printed: {:#?}",
                self.lines.lock().expect("lines")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for exit, failing after `bound`.
    pub async fn exit_within(&mut self, bound: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(bound, self.child.wait())
            .await
            .expect("csgate did not exit in time")
            .expect("wait")
    }
}
