"""Import the service and check what came with it: the contract package and nothing else of
training, none of the training-only libraries. Exit 1 with the offenders named.

Run by the no-torch tests (in the project's venv and in a fresh `pip install .[serve]` venv) and by
the serving image's build: python deploy/serving_imports.py
"""

from __future__ import annotations

import sys

TRAINING_ONLY = ("torch", "pyarrow", "sklearn", "matplotlib", "onnx", "onnxscript", "tqdm")
CONTRACT = "training.bundle"


def offenders(modules: list[str]) -> list[str]:
    """Loaded modules outside the allowlist: `training` itself, the contract package, and
    anything that is neither training's nor a training-only library."""

    def allowed_of_training(name: str) -> bool:
        return name in ("training", CONTRACT) or name.startswith(CONTRACT + ".")

    found = []
    for name in modules:
        top = name.split(".")[0]
        if top in TRAINING_ONLY or (top == "training" and not allowed_of_training(name)):
            found.append(name)
    return sorted(found)


def main() -> None:
    import service.api  # noqa: F401

    bad = offenders(list(sys.modules))
    if bad:
        sys.exit(f"importing service.api loaded {', '.join(bad)}")
    print("service.api imports only the contract package of training")


if __name__ == "__main__":
    main()
