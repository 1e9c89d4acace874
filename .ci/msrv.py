#!/usr/bin/env python3
"""The rust-version check (issue 23): Cargo.toml's `rust-version` must be at least every
locked package's own `rust-version`, for what this host builds (dependencies,
dev-dependencies and build-dependencies; other platforms' packages are left out).

CI has one toolchain and rustup cannot fetch another, so `cargo +MSRV check` cannot run
here; this reads what each crate declares instead. What csgate's own code needs is held
by clippy's `incompatible_msrv` lint (on by default), which refuses standard-library
items stabilised after Cargo.toml's `rust-version`. Prints the packages that set the
minimum; exits 1 when one of them needs a newer Rust than Cargo.toml says, or when
Cargo.toml says more than any package needs (the minimum is chosen on purpose).
"""
import json
import subprocess
import sys


def version(text):
    parts = [int(p) for p in text.split(".")]
    return tuple((parts + [0, 0])[:3])


def main():
    host = next(
        line.split(": ", 1)[1]
        for line in subprocess.run(
            ["rustc", "-vV"], check=True, capture_output=True, text=True
        ).stdout.splitlines()
        if line.startswith("host: ")
    )
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--locked", "--format-version", "1", "--filter-platform", host],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    used = {node["id"] for node in meta["resolve"]["nodes"]}
    members = set(meta["workspace_members"])
    ours = [p for p in meta["packages"] if p["id"] in members]
    deps = [p for p in meta["packages"] if p["id"] in used and p["id"] not in members]
    needed = max(
        (version(p["rust_version"]), p["rust_version"], p["name"], p["version"])
        for p in deps
        if p.get("rust_version")
    )
    status = 0
    for package in ours:
        declared = package.get("rust_version")
        if not declared:
            print(f"{package['name']}: no rust-version in Cargo.toml")
            status = 1
            continue
        over = sorted(
            (version(p["rust_version"]), p["name"], p["version"], p["rust_version"])
            for p in deps
            if p.get("rust_version") and version(p["rust_version"]) > version(declared)
        )
        at_max = sorted(
            f"{p['name']} {p['version']}"
            for p in deps
            if p.get("rust_version") and version(p["rust_version"]) == needed[0]
        )
        print(
            f"{package['name']}: rust-version {declared}; the locked packages need "
            f"{needed[1]} ({', '.join(at_max)})"
        )
        for _, name, ver, rv in over:
            print(f"  {name} {ver} needs Rust {rv}, newer than {declared}")
        if over:
            status = 1
        elif version(declared) > needed[0]:
            print(f"  rust-version {declared} is above what any package needs: lower it")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
