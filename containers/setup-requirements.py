#!/usr/bin/env python3
"""Print the requirements declared in setup.py, one per line.

Usage: setup-requirements.py SETUP_PY [EXTRA ...]

Prints ``install_requires`` followed by the requirements of each named extra
(e.g. ``parquet``).  setup.py is parsed, not executed: it imports Cython and
numpy and cythonizes the sources, none of which exist yet when the container
build installs the dependencies in a layer of their own (a layer that depends
only on setup.py and requirements/constraints.txt, so that editing the
sources does not download every dependency again).
"""

import ast
import sys


def setup_keywords(path: str) -> dict:
    """Literal keyword arguments of the ``setup(...)`` call in ``path``."""
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            out = {}
            for kw in node.keywords:
                try:
                    out[kw.arg] = ast.literal_eval(kw.value)
                except ValueError:
                    pass  # computed values (version, ext_modules, ...) are not needed here
            return out
    raise SystemExit(f"{path}: no setup(...) call found")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    keywords = setup_keywords(argv[0])
    requirements = list(keywords.get("install_requires", []))
    extras = keywords.get("extras_require", {})
    for extra in argv[1:]:
        if extra not in extras:
            raise SystemExit(f"{argv[0]}: unknown extra {extra!r} (known: {', '.join(sorted(extras))})")
        requirements += extras[extra]
    print("\n".join(dict.fromkeys(requirements)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
