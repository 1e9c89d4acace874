"""Runs httplint over csgate's recorded answers (.ci/conformance.sh writes them).

Usage: lint_answers.py DIR. DIR/index.tsv has one line per answer: name, method, path,
and `query` for a Query Services answer; DIR/NAME.http is the answer as `curl -i` wrote
it. Each answer is linted together with its request (so a HEAD answer is read as one).

Fails (exit 1) on any WARN or BAD note, except the two notes httplint attaches to a
status code itself, whatever the headers: 400 ("didn't understand the request"), the
status GMS answers an unknown id or a bad parameter with, and 414 ("won't accept a URI
this long"), the contract's answer to a query over `max_query_bytes`. Every Query
Services answer must be one that caches can't store.
"""

import sys
from pathlib import Path

from httplint import HttpRequestLinter, HttpResponseLinter, levels

STATUS_NOTES = {"STATUS_BAD_REQUEST", "STATUS_URI_TOO_LONG"}
NOT_STORABLE = "STORE_NO_STORE"


def parse(raw: bytes):
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    version, status, *phrase = lines[0].split(b" ", 2)
    headers = [tuple(part.strip() for part in line.split(b":", 1)) for line in lines[1:]]
    return version, status, phrase[0] if phrase else b"", headers, body


def lint(method: str, path: str, raw: bytes):
    request = HttpRequestLinter()
    request.process_request_topline(method.encode(), path.encode(), b"HTTP/1.1")
    request.process_headers([(b"Host", b"127.0.0.1"), (b"User-Agent", b"csgate-conformance")])
    request.finish_content(True)
    version, status, phrase, headers, body = parse(raw)
    response = HttpResponseLinter(_related=request)
    response.is_head_response = method == "HEAD"
    response.process_response_topline(version, status, phrase)
    response.process_headers(headers)
    response.feed_content(body)
    response.finish_content(True)
    return [
        (type(note).__name__, note.level, note.summary)
        for top in response.notes
        for note in [top, *top.subnotes]
    ]


def main() -> int:
    folder = Path(sys.argv[1])
    failed = False
    count = 0
    for line in (folder / "index.tsv").read_text().splitlines():
        name, method, path, kind = (line.split("\t") + [""])[:4]
        raw = (folder / f"{name}.http").read_bytes()
        notes = lint(method, path, raw)
        count += 1
        status = raw.split(b"\r\n", 1)[0].decode()
        found = [
            f"  * [{level.name}] {summary} ({kind_name})"
            for kind_name, level, summary in notes
            if level in (levels.WARN, levels.BAD) and kind_name not in STATUS_NOTES
        ]
        if kind == "query" and NOT_STORABLE not in {n for n, _, _ in notes}:
            found.append("  * caches may store this Query Services answer")
        if found:
            failed = True
            print(f"httplint: {name}: {method} {path} -> {status}")
            print("\n".join(found))
    if failed:
        print(f"httplint found problems in csgate's answers (recorded in {folder})")
        return 1
    print(f"httplint: {count} answers, no WARN or BAD; Query Services answers can't be stored by caches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
