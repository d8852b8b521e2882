"""Print the requirements of pyproject.toml (core dependencies plus the named extras, with the
extras they name in turn), one a line.

Used by the Dockerfile so that the dependency layers depend on pyproject.toml alone and are reused
while the source changes:  python pyproject_deps.py pyproject.toml serve  >requirements.txt
"""

import re
import sys
import tomllib


def main() -> None:
    path, *extras = sys.argv[1:]
    with open(path, "rb") as f:
        project = tomllib.load(f)["project"]
    requirements = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    self_reference = re.compile(rf"^{re.escape(project['name'])}\[([^\]]+)\]$")

    def add(extra: str) -> None:
        if extra not in optional:
            sys.exit(
                f"pyproject_deps: no extra {extra!r} in {path} (extras: {', '.join(optional)})"
            )
        for requirement in optional[extra]:
            if match := self_reference.match(requirement):  # e.g. afm[contract]
                for named in match.group(1).split(","):
                    add(named.strip())
            elif requirement not in requirements:
                requirements.append(requirement)

    for extra in extras:
        add(extra)
    print("\n".join(requirements))


if __name__ == "__main__":
    main()
