"""Smoke check of the compose stack through nginx: /model, /predict (both shapes), /explain, and
that the requests were spread over the expected number of replicas (their X-Served-By headers).

Standard library only, so it runs with any Python 3.11 on the host:
    python3 deploy/smoke_check.py --url http://localhost:8080 --replicas 2
Exit status 0 when every check passed; one line per check on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from email.message import Message
from typing import Any


def call(url: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Message, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, headers, raw = error.code, error.headers, error.read()
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = raw.decode(errors="replace")
    return status, headers, payload


def example_row(model: dict[str, Any]) -> dict[str, Any]:
    """One request row built from the example values GET /model lists for each field."""
    row: dict[str, Any] = {}
    for field in model["fields"]:
        examples = field.get("examples") or []
        if examples:
            row[field["name"]] = examples[0]
        else:
            row[field["name"]] = 0.0 if field.get("kind") == "numeric" else "unknown"
    return row


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://localhost:8080")
    parser.add_argument(
        "--replicas", type=int, default=2, help="distinct X-Served-By values expected"
    )
    parser.add_argument(
        "--requests", type=int, default=40, help="requests used to see the replicas"
    )
    args = parser.parse_args()
    base = args.url.rstrip("/")
    failures: list[str] = []
    served: Counter[str] = Counter()

    def check(name: str, ok: bool, detail: str = "") -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
        if not ok:
            failures.append(name)

    def note(headers: Message) -> None:
        served[headers.get("X-Served-By", "<none>")] += 1

    status, headers, model = call(f"{base}/model")
    note(headers)
    check("GET /model", status == 200 and isinstance(model, dict) and "fields" in model,
          f"{status} {model.get('name') if isinstance(model, dict) else model!r} "
          f"v{model.get('version') if isinstance(model, dict) else '?'}")  # fmt: skip
    if failures:
        return 1
    row = example_row(model)
    names = [f["name"] for f in model["fields"]]

    status, headers, answer = call(f"{base}/predict", {"instances": [row, row]})
    note(headers)
    scores = answer.get("scores") if isinstance(answer, dict) else None
    check("POST /predict instances", status == 200 and isinstance(scores, list) and len(scores) == 2
          and all(isinstance(s, (int, float)) and math.isfinite(s) for s in scores), f"{status} {scores}")  # fmt: skip

    item_fields = [n for n in ("item", "price") if n in names] or names[-1:]
    context = {n: v for n, v in row.items() if n not in item_fields}
    candidates = [{n: row[n] for n in item_fields} for _ in range(3)]
    body = {"context": context, "candidates": candidates, "explain": True, "top_k": 2}
    status, headers, answer = call(f"{base}/predict", body)
    note(headers)
    scores = answer.get("scores") if isinstance(answer, dict) else None
    explanations = answer.get("explanations") if isinstance(answer, dict) else None
    check("POST /predict context+candidates, explain", status == 200 and isinstance(scores, list)
          and len(scores) == 3 and isinstance(explanations, list) and len(explanations) == 3,
          f"{status} {scores if status == 200 else answer}")  # fmt: skip

    query = urllib.parse.urlencode({**{k: str(v) for k, v in row.items()}, "top_k": 3})
    status, headers, answer = call(f"{base}/explain?{query}")
    note(headers)
    ok = status == 200 and isinstance(answer, dict) and "pairs" in answer and "raw" in answer
    detail = f"{status}"
    if ok:
        total = answer.get("bias", 0.0) + sum(x["contribution"] for x in answer.get("linear", []))
        total += sum(p["contribution"] for p in answer["pairs"])
        detail += f" score {answer.get('score'):.4f}, raw {answer['raw']:.4f} = parts {total:.4f}"
        ok = abs(total - answer["raw"]) < 1e-3
    else:
        detail += f" {answer}"
    check("GET /explain", ok, detail)

    status, headers, answer = call(f"{base}/predict", {"instances": [{**row, "no_such_field": 1}]})
    note(headers)
    check("client error is a 4xx with the error shape", 400 <= status < 500 and isinstance(answer, dict)
          and "error" in answer, f"{status}")  # fmt: skip

    started = time.perf_counter()
    for i in range(args.requests):
        status, headers, _ = (
            call(f"{base}/predict", {"instances": [row]})
            if i % 2
            else call(f"{base}/explain?{query}")
        )
        note(headers)
        if status != 200:
            check(f"request {i}", False, str(status))
    elapsed = time.perf_counter() - started
    replicas = {name for name in served if name not in ("<none>", "nginx")}
    check(f"replicas seen through nginx >= {args.replicas}", len(replicas) >= args.replicas,
          ", ".join(f"{name}: {count}" for name, count in served.most_common()))  # fmt: skip
    print(f"     {args.requests} requests in {elapsed:.2f}s through nginx", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
