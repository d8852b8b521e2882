"""Kill test: a steady stream of requests through nginx while one api replica is killed.

Sends --requests requests (POST /predict and GET /explain, alternating) at about --rate per second
from --concurrency threads; once a quarter of them have completed it runs --kill (e.g.
`docker kill <container>`). Every request must succeed: nginx retries a request that meets a dead
replica on another one. Prints the counts (per replica before and after the kill, retried by
nginx, failed) and exits 1 on any failed request. Standard library only.

One case no proxy can retry: a response the killed replica was writing at the instant of the kill
(headers already passed on to the client, body cut short). The client sees a truncated response
(a transport error, never a wrong answer); it retries those once, as a client of any replicated
service must, and they are counted apart ("truncated"). There can be at most one per request in
flight on the killed replica, so more than --concurrency of them fails the test too.


    python3 deploy/kill_replica_check.py --url http://localhost:8080 \
        --kill "docker kill <id>" --victim <hostname of that container>
"""

from __future__ import annotations

import argparse
import http.client
import json
import shlex
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass
from email.message import Message
from typing import Any


@dataclass
class Result:
    index: int
    started: float
    seconds: float
    status: int  # 0: no HTTP answer at all
    served_by: str
    upstream: str
    error: str = ""
    truncated: str = ""  # the first answer was cut short by the kill; this result is the retry


class Truncated(Exception):
    """The status line and headers came, the body did not (the replica died while writing it)."""


def fetch(url: str, body: bytes | None, timeout: float) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            try:
                body = response.read()
                json.loads(body)
            except (http.client.IncompleteRead, ConnectionError, ValueError) as error:
                served_by = response.headers.get("X-Served-By", "?")
                raise Truncated(f"{response.status} from {served_by}: {error!r}") from error
            return response.status, response.headers, body
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://localhost:8080")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument(
        "--rate", type=float, default=40.0, help="requests per second, all threads together"
    )
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--kill", required=True, help="command that kills one replica")
    parser.add_argument("--victim", default="", help="X-Served-By of the replica the command kills")
    parser.add_argument(
        "--kill-after", type=float, default=0.25, help="fraction of requests done before the kill"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds for the whole test")
    args = parser.parse_args()
    base = args.url.rstrip("/")

    status, _, raw = fetch(f"{base}/model", None, args.timeout)
    if status != 200:
        print(f"FAIL GET /model answered {status}: {raw[:200]!r}")
        return 1
    model = json.loads(raw)
    row: dict[str, Any] = {f["name"]: (f.get("examples") or ["0"])[0] for f in model["fields"]}
    predict_body = json.dumps({"instances": [row] * 8}).encode()
    explain_url = f"{base}/explain?" + urllib.parse.urlencode({k: str(v) for k, v in row.items()})

    results: list[Result] = []
    lock = threading.Lock()
    next_index = 0
    begin = time.perf_counter()
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    kill_at = max(1, int(args.requests * args.kill_after))

    def worker() -> None:
        nonlocal next_index
        while True:
            with lock:
                index = next_index
                next_index += 1
            if index >= args.requests or time.perf_counter() - begin > args.deadline:
                return
            due = begin + index * interval  # a steady stream, not a burst
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            started = time.perf_counter()
            truncated = ""
            for _attempt in range(2):
                try:
                    if index % 2:
                        status, headers, _ = fetch(f"{base}/predict", predict_body, args.timeout)
                    else:
                        status, headers, _ = fetch(explain_url, None, args.timeout)
                    result = Result(index, started - begin, time.perf_counter() - started, status,
                                    headers.get("X-Served-By", ""), headers.get("X-Upstream", ""),
                                    truncated=truncated)  # fmt: skip
                except Truncated as error:
                    if truncated:  # the retry was cut short too: a failure
                        result = Result(index, started - begin, time.perf_counter() - started, 0,
                                        "", "", f"truncated twice: {error}", truncated)  # fmt: skip
                        break
                    truncated = str(error)
                    continue
                except Exception as error:  # nginx refused, reset or timed out: a failure
                    result = Result(index, started - begin, time.perf_counter() - started, 0,
                                    "", "", repr(error), truncated)  # fmt: skip
                break
            with lock:
                results.append(result)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    while len(results) < kill_at and any(t.is_alive() for t in threads):
        time.sleep(0.01)
    kill_started = time.perf_counter() - begin
    done_before_kill = len(results)
    completed = subprocess.run(shlex.split(args.kill), capture_output=True, text=True, timeout=120)
    killed_at = time.perf_counter() - begin
    print(f"kill at {kill_started:.2f}s, after {done_before_kill} requests, done at {killed_at:.2f}s: "
          f"{args.kill} -> rc {completed.returncode} {completed.stderr.strip()[:200]}", flush=True)  # fmt: skip
    for thread in threads:
        thread.join(timeout=max(1.0, args.deadline - (time.perf_counter() - begin)) + args.timeout)
    elapsed = time.perf_counter() - begin

    ok = [r for r in results if r.status == 200]
    failed = [r for r in results if r.status != 200]
    before = Counter(r.served_by for r in ok if r.started + r.seconds < kill_started)
    after = Counter(r.served_by for r in ok if r.started > killed_at)
    around = [
        r for r in results if r.started <= killed_at and r.started + r.seconds >= kill_started
    ]
    retried = [r for r in ok if "," in r.upstream]
    truncated = [r for r in results if r.truncated]
    slowest = max((r.seconds for r in results), default=0.0)
    print(f"requests: {len(results)} of {args.requests} sent in {elapsed:.1f}s, ok {len(ok)}, failed {len(failed)}, "
          f"retried by nginx {len(retried)}, truncated by the kill and retried by the client {len(truncated)}, "
          f"in flight during the kill {len(around)}, slowest {slowest:.2f}s")  # fmt: skip
    print("served before the kill: " + ", ".join(f"{k}: {v}" for k, v in before.most_common()))
    print("served after the kill:  " + ", ".join(f"{k}: {v}" for k, v in after.most_common()))
    for r in retried[:5]:
        print(
            f"  retried #{r.index} at {r.started:.2f}s via {r.upstream} -> {r.served_by} ({r.seconds:.2f}s)"
        )
    for r in truncated[:5]:
        print(
            f"  truncated #{r.index} at {r.started:.2f}s: {r.truncated}; retried -> {r.status} {r.served_by}"
        )
    for r in failed[:10]:
        print(
            f"  FAILED #{r.index} at {r.started:.2f}s: status {r.status} via {r.upstream or '-'} {r.error}"
        )

    problems = []
    if completed.returncode != 0:
        problems.append("the kill command failed")
    if len(results) < args.requests:
        problems.append(
            f"only {len(results)} of {args.requests} requests finished within the deadline"
        )
    if failed:
        problems.append(f"{len(failed)} requests failed")
    if len(truncated) > args.concurrency:
        problems.append(f"{len(truncated)} responses truncated, more than one kill can cut short")
    if len(before) < 2:
        problems.append("fewer than two replicas served before the kill")
    if not after:
        problems.append("no request was served after the kill")
    if args.victim and after.get(args.victim):
        print(
            f"note: the killed replica {args.victim} served {after[args.victim]} requests after the kill (restarted?)"
        )
    if problems:
        print("FAIL kill test: " + "; ".join(problems))
        return 1
    print(f"ok   kill test: all {len(ok)} requests succeeded while a replica was killed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
