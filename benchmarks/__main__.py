"""`make bench`: the training throughput benchmark, then the serving benchmark, then the traffic
benchmark (memory, overload and a soak against the service), then a team's own data against the
planted oracle and `predict`'s memory on 100k and 1M rows.

Each prints markdown to stdout; the combined report is also written to benchmarks/results/latest.md
(ignored by git). Each benchmark takes its own options when run alone:
`python -m benchmarks.training_throughput --help`, `python -m benchmarks.serving --help`,
`python -m benchmarks.traffic --help`, `python -m benchmarks.own_data --help`,
`python -m benchmarks.predict_memory --help`.
"""

from __future__ import annotations

import contextlib
import io
import sys
from typing import TextIO

from benchmarks import own_data, predict_memory, serving, traffic, training_throughput
from benchmarks.serving import RESULTS


class _Tee(io.StringIO):
    """Keeps what is printed and passes it on to the stream it replaces."""

    def __init__(self, passthrough: TextIO) -> None:
        super().__init__()
        self.passthrough = passthrough

    def write(self, text: str) -> int:
        self.passthrough.write(text)
        return super().write(text)


def main() -> None:
    captured = _Tee(sys.stdout)
    with contextlib.redirect_stdout(captured):
        print("## Training throughput\n")
        training_throughput.main([])
    training = captured.getvalue()
    print()
    table = serving.main([])
    print()
    abuse = traffic.main([]).markdown()
    print("\n## Own data against the planted oracle\n")
    own = "## Own data against the planted oracle\n\n" + own_data.main([])
    print("\n## predict's memory\n")
    memory = "## predict's memory\n\n" + predict_memory.main([])
    RESULTS.mkdir(parents=True, exist_ok=True)
    latest = RESULTS / "latest.md"
    latest.write_text(f"# Benchmarks\n\n{training}\n{table}\n{abuse}\n{own}\n\n{memory}\n")
    print(f"written to {latest}", file=sys.stderr)


if __name__ == "__main__":
    main()
