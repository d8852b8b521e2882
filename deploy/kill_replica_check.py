"""Kill test: a steady stream of requests through nginx while one api replica is killed.

Sends --requests requests (POST /predict and GET /explain, alternating) at about --rate per second
from --concurrency threads; once a quarter of them have completed it runs --kill (e.g.
`docker kill <container>`). Every request must succeed: nginx retries a request that meets a dead
replica on another one. Prints the counts (per replica before and after the kill, retried by
nginx, failed) and exits 1 on any failed request. Standard library only:

    python3 deploy/kill_replica_check.py --url http://localhost:8080 \
        --kill "docker kill <id>" --victim <hostname of that container>
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from email.message import Message
from collections import Counter
from dataclasses import dataclass
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


def fetch(url: str, body: bytes | None, timeout: float) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://localhost:8080")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second, all threads together")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--kill", required=True, help="command that kills one replica")
    parser.add_argument("--victim", default="", help="X-Served-By of the replica the command kills")
    parser.add_argument("--kill-after", type=float, default=0.25, help="fraction of requests done before the kill")
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
    kill_time: list[float] = []

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
            try:
                if index % 2:
                    status, headers, _ = fetch(f"{base}/predict", predict_body, args.timeout)
                else:
                    status, headers, _ = fetch(explain_url, None, args.timeout)
                result = Result(index, started - begin, time.perf_counter() - started, status,
                                headers.get("X-Served-By", ""), headers.get("X-Upstream", ""))  # fmt: skip
            except Exception as error:  # a reset or a timeout of the connection to nginx
                result = Result(index, started - begin, time.perf_counter() - started, 0, "", "", repr(error))
            with lock:
                results.append(result)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    while len(results) < kill_at and any(t.is_alive() for t in threads):
        time.sleep(0.01)
    kill_started = time.perf_counter() - begin
    completed = subprocess.run(shlex.split(args.kill), capture_output=True, text=True, timeout=60)
    kill_time.append(time.perf_counter() - begin)
    print(f"kill at {kill_started:.2f}s after {len(results)} requests: {args.kill} -> rc {completed.returncode} "
          f"{completed.stdout.strip()[:40]} {completed.stderr.strip()[:200]}", flush=True)  # fmt: skip
    for thread in threads:
        thread.join(timeout=max(1.0, args.deadline - (time.perf_counter() - begin)) + args.timeout)
    elapsed = time.perf_counter() - begin

    killed_at = kill_time[0]
    ok = [r for r in results if r.status == 200]
    failed = [r for r in results if r.status != 200]
    before = Counter(r.served_by for r in ok if r.started + r.seconds < kill_started)
    after = Counter(r.served_by for r in ok if r.started > killed_at)
    around = [r for r in results if r.started <= killed_at and r.started + r.seconds >= kill_started]
    retried = [r for r in ok if "," in r.upstream]
    slowest = max((r.seconds for r in results), default=0.0)
    print(f"requests: {len(results)} of {args.requests} sent in {elapsed:.1f}s, ok {len(ok)}, failed {len(failed)}, "
          f"retried by nginx {len(retried)}, in flight during the kill {len(around)}, slowest {slowest:.2f}s")  # fmt: skip
    print("served before the kill: " + ", ".join(f"{k}: {v}" for k, v in before.most_common()))
    print("served after the kill:  " + ", ".join(f"{k}: {v}" for k, v in after.most_common()))
    for r in retried[:5]:
        print(f"  retried #{r.index} at {r.started:.2f}s via {r.upstream} -> {r.served_by} ({r.seconds:.2f}s)")
    for r in failed[:10]:
        print(f"  FAILED #{r.index} at {r.started:.2f}s: status {r.status} via {r.upstream or '-'} {r.error}")

    problems = []
    if completed.returncode != 0:
        problems.append("the kill command failed")
    if len(results) < args.requests:
        problems.append(f"only {len(results)} of {args.requests} requests finished within the deadline")
    if failed:
        problems.append(f"{len(failed)} requests failed")
    if len(before) < 2:
        problems.append("fewer than two replicas served before the kill")
    if not after:
        problems.append("no request was served after the kill")
    if args.victim and after.get(args.victim):
        print(f"note: the killed replica {args.victim} served {after[args.victim]} requests after the kill (restarted?)")
    if problems:
        print("FAIL kill test: " + "; ".join(problems))
        return 1
    print(f"ok   kill test: all {len(ok)} requests succeeded while a replica was killed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
