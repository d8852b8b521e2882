"""SIGTERM check: one api replica stopped as compose and orchestrators stop it, at saturation
through nginx, then started again; no client request may fail.

Closed-loop clients (--clients, each with its own keep-alive connection to nginx) send POST
/predict and GET /explain, alternating, as fast as they are answered: far more requests at once
than the replicas compute at once, so they queue (saturation; the check requires on average at
least twice as many requests outstanding as the replicas have serving processes). After --warmup seconds the check
runs `docker stop --time GRACE <container>` (SIGTERM, then SIGKILL after GRACE seconds, as
compose's stop_grace_period does), keeps the load on until the container has exited, starts it
again with `docker start`, and keeps the load on until the restarted replica serves requests
again (plus --settle seconds).

Failed, and counted as such: every request that has no complete `200` JSON answer: a transport
error (refused, reset, timed out, a body cut short), any other status: a 502 or 504 from nginx,
a 503 from a replica (`not_ready` while it starts, `overloaded` from admission control). The
clients are fewer than one replica admits (AFM_MAX_IN_FLIGHT + AFM_MAX_QUEUED: 160 by default),
so the replica left alone holds every one of them: an `overloaded` answer that reaches a client
means nginx passed on a refusal that the other replica would have served. The replica must also
exit by itself (exit code 0) within GRACE, never be killed by the SIGKILL that ends it.

Prints the counts per phase (before the SIGTERM, stopping, stopped, restarted) and per replica,
the requests nginx retried on another replica, and every failure; exits 1 on any failure.
Standard library only.

    python3 deploy/sigterm_check.py --url http://localhost:8080 --container <id>
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from typing import Any

PHASES = ("before", "stopping", "stopped", "restarted")


@dataclass
class Answer:
    phase: str
    started: float  # seconds since the clients started
    status: int  # 0: no complete answer
    served_by: str
    upstream: str
    seconds: float
    error: str = ""


@dataclass
class Timeline:
    """What the check has done so far, read by the clients to label their answers."""

    phase: str = "before"
    victim_back: bool = False


def docker(*args: str, timeout: float = 120.0) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: rc {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip()


def serving_processes(container: str) -> int:
    """The processes that serve requests in one replica: its workers (one without workers)."""
    page = docker(
        "exec", container, "python", "-c",
        "import os, urllib.request; print(urllib.request.urlopen('http://127.0.0.1:%s/metrics'"
        " % os.environ.get('AFM_PORT', '8000'), timeout=10).read().decode())",
    )  # fmt: skip
    return max(1, len(set(re.findall(r'^afm_worker_requests{pid="(\d+)"}', page, re.MULTILINE))))


class Client(threading.Thread):
    """One closed-loop client on its own keep-alive connection to nginx."""

    def __init__(
        self,
        index: int,
        began: float,
        host: str,
        port: int,
        requests: list[tuple[str, str, bytes | None]],
        timeline: Timeline,
        stop: threading.Event,
        answers: list[Answer],
        lock: threading.Lock,
        timeout: float,
    ) -> None:
        super().__init__(daemon=True, name=f"client-{index}")
        self.index = index
        self.began = began
        self.host, self.port = host, port
        self.requests = requests
        self.timeline = timeline
        self.stop = stop
        self.answers = answers
        self.lock = lock
        self.timeout = timeout

    def run(self) -> None:
        connection: http.client.HTTPConnection | None = None
        sent = self.index
        while not self.stop.is_set():
            method, path, body = self.requests[sent % len(self.requests)]
            sent += 1
            phase = self.timeline.phase
            started = time.perf_counter()
            if connection is None:
                connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            current = connection
            try:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                current.request(method, path, body=body, headers=headers)
                response = current.getresponse()
                raw = response.read()
                answer = Answer(
                    phase,
                    started - self.began,
                    response.status,
                    response.getheader("X-Served-By", ""),
                    response.getheader("X-Upstream", ""),
                    time.perf_counter() - started,
                )
                if response.status == 200:
                    json.loads(raw)
                else:
                    answer.error = raw[:300].decode("utf-8", "replace")
                if response.getheader("Connection", "").lower() == "close":
                    current.close()
                    connection = None
            except (OSError, http.client.HTTPException, ValueError) as error:
                answer = Answer(
                    phase,
                    started - self.began,
                    0,
                    "",
                    "",
                    time.perf_counter() - started,
                    repr(error),
                )
                current.close()
                connection = None
            with self.lock:
                self.answers.append(answer)
        if connection is not None:
            connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://localhost:8080", help="nginx in front")
    parser.add_argument("--container", required=True, help="the api replica's container to stop")
    parser.add_argument("--clients", type=int, default=64, help="closed-loop clients")
    parser.add_argument("--rows", type=int, default=16, help="rows per POST /predict")
    parser.add_argument("--grace", type=int, default=20, help="docker stop --time (s)")
    parser.add_argument("--warmup", type=float, default=5.0, help="load before the SIGTERM (s)")
    parser.add_argument("--settle", type=float, default=3.0, help="load once it is back (s)")
    parser.add_argument("--restart-timeout", type=float, default=120.0, help="until it serves")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    args = parser.parse_args()
    target = urllib.parse.urlsplit(args.url)
    host, port = target.hostname or "localhost", target.port or 80

    victim = docker("inspect", "-f", "{{.Config.Hostname}}", args.container)
    processes = serving_processes(args.container)
    probe = http.client.HTTPConnection(host, port, timeout=args.timeout)
    probe.request("GET", "/model")
    model = json.loads(probe.getresponse().read())
    probe.close()
    row: dict[str, Any] = {f["name"]: (f.get("examples") or ["0"])[0] for f in model["fields"]}
    query = urllib.parse.urlencode({k: str(v) for k, v in row.items()})
    requests: list[tuple[str, str, bytes | None]] = [
        ("POST", "/predict", json.dumps({"instances": [row] * args.rows}).encode()),
        ("GET", f"/explain?{query}", None),
    ]

    timeline, stop, lock = Timeline(), threading.Event(), threading.Lock()
    answers: list[Answer] = []
    began = time.perf_counter()
    clients = [
        Client(i, began, host, port, requests, timeline, stop, answers, lock, args.timeout)
        for i in range(args.clients)
    ]
    for client in clients:
        client.start()

    time.sleep(args.warmup)

    problems: list[str] = []
    timeline.phase = "stopping"
    stop_started = time.perf_counter()
    stopping = threading.Thread(
        target=docker, args=("stop", "--time", str(args.grace), args.container), daemon=True
    )
    stopping.start()
    stopping.join(args.grace + 60)
    stopped_after = time.perf_counter() - stop_started
    state = json.loads(docker("inspect", "-f", "{{json .State}}", args.container))
    print(
        f"docker stop --time {args.grace}: {victim} exited in {stopped_after:.1f}s with code "
        f"{state['ExitCode']} (OOM killed: {state['OOMKilled']})",
        flush=True,
    )
    if state["Running"]:
        problems.append("the replica was still running after docker stop")
    if state["ExitCode"] != 0:
        problems.append(f"the replica exited with {state['ExitCode']}, not 0 (killed?)")
    if stopped_after >= args.grace:
        problems.append(f"the replica took {stopped_after:.1f}s, the grace period is {args.grace}s")

    timeline.phase = "stopped"
    time.sleep(2.0)  # load on the replica left alone, and on nginx's cached address of the other
    docker("start", args.container)
    restarted_at = time.perf_counter()
    timeline.phase = "restarted"
    back = False
    while time.perf_counter() - restarted_at < args.restart_timeout:
        with lock:
            back = any(a.phase == "restarted" and a.served_by == victim for a in answers)
        if back:
            break
        time.sleep(0.2)
    back_after = time.perf_counter() - restarted_at
    time.sleep(args.settle)
    stop.set()
    for client in clients:
        client.join(args.timeout + 5)
    elapsed = time.perf_counter() - began

    phases = {phase: [a for a in answers if a.phase == phase] for phase in PHASES}
    failed = [a for a in answers if a.status != 200]
    retried = [a for a in answers if a.status == 200 and "," in a.upstream]
    # The mean number of requests outstanding before the SIGTERM (each one's time within that
    # window, summed), against what the replicas compute at once.
    before = phases["before"]
    replicas = len({a.served_by for a in before if a.status == 200})
    window = sum(min(a.started + a.seconds, args.warmup) - a.started for a in before)
    outstanding = window / args.warmup
    print(
        f"{len(answers)} requests from {args.clients} clients in {elapsed:.1f}s "
        f"({len(answers) / elapsed:.0f}/s), failed {len(failed)}, retried by nginx "
        f"{len(retried)}, slowest {max((a.seconds for a in answers), default=0):.2f}s; before "
        f"the SIGTERM {outstanding:.1f} requests outstanding on average against "
        f"{replicas} replicas x {processes} serving processes"
    )
    for phase, done in phases.items():
        served = Counter(a.served_by for a in done if a.status == 200)
        print(
            f"  {phase:9} {len(done):6} requests, failed {sum(a.status != 200 for a in done)}, "
            + ", ".join(f"{k}: {v}" for k, v in served.most_common())
        )
    for a in retried[:5]:
        print(f"  retried via {a.upstream} -> {a.served_by} ({a.phase}, {a.seconds:.2f}s)")
    for a in failed[:10]:
        print(f"  FAILED ({a.phase}) status {a.status} via {a.upstream or '-'}: {a.error}")

    if failed:
        problems.append(f"{len(failed)} requests failed")
    if not back:
        problems.append(f"the restarted replica served nothing within {back_after:.0f}s")
    if len({a.served_by for a in phases["before"] if a.status == 200}) < 2:
        problems.append("fewer than two replicas served before the SIGTERM")
    if not phases["stopped"] or any(a.served_by == victim for a in phases["stopped"]):
        problems.append("no request was served while the replica was stopped, or it served one")
    if outstanding < 2 * replicas * processes:
        problems.append(
            f"{outstanding:.1f} requests outstanding on average: too few to saturate "
            f"{replicas} x {processes} serving processes (more --clients)"
        )
    if problems:
        print("FAIL sigterm check: " + "; ".join(problems))
        return 1
    print(
        f"ok   sigterm check: all {len(answers)} requests succeeded while {victim} drained, "
        f"exited ({stopped_after:.1f}s) and came back ({back_after:.1f}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
