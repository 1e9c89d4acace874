//! Build script: the git commit for `csgate_build_info` (src/metrics.rs), as
//! `CSGATE_GIT_COMMIT`: the `CSGATE_GIT_COMMIT` environment variable when set (a
//! container build has no `.git`: pass it as a build argument), else `git rev-parse`,
//! else `unknown`.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=CSGATE_GIT_COMMIT");
    let commit = match std::env::var("CSGATE_GIT_COMMIT") {
        Ok(commit) if !commit.trim().is_empty() => commit.trim().to_owned(),
        _ => {
            // Rebuild when HEAD moves: HEAD itself, and the branch it names.
            if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
                println!(
                    "cargo:rerun-if-changed={}",
                    PathBuf::from(&dir).join("HEAD").display()
                );
            }
            if let Some(reference) = git(&["rev-parse", "--symbolic-full-name", "HEAD"]) {
                if let Some(path) = git(&["rev-parse", "--git-path", &reference]) {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    println!("cargo:rustc-env=CSGATE_GIT_COMMIT={commit}");
}
