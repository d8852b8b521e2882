"""Print the requirements of pyproject.toml (core dependencies plus the named extras), one a line.

Used by the Dockerfile so that the dependency layers depend on pyproject.toml alone and are reused
while the source changes:  python pyproject_deps.py pyproject.toml serve  >requirements.txt
"""

import sys
import tomllib


def main() -> None:
    path, *extras = sys.argv[1:]
    with open(path, "rb") as f:
        project = tomllib.load(f)["project"]
    requirements = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            sys.exit(
                f"pyproject_deps: no extra {extra!r} in {path} (extras: {', '.join(optional)})"
            )
        requirements += [r for r in optional[extra] if r not in requirements]
    print("\n".join(requirements))


if __name__ == "__main__":
    main()
