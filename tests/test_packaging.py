"""environment.yml (conda/Binder) and pyproject.toml must list the same dependencies."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# conda names that differ from PyPI names, and conda-only entries (toolchains, python, pip itself)
CONDA_ONLY = {"python", "pip", "c-compiler"}


def _req(spec: str) -> tuple[str, str]:
    m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", spec)
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def pyproject_requirements() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(data["dependencies"])
    for extra in ("dev", "cuda"):
        specs += data["optional-dependencies"][extra]
    return dict(_req(s) for s in specs)


def environment_requirements() -> dict[str, str]:
    specs = []
    text = (ROOT / "environment.yml").read_text()
    for line in text[text.index("dependencies:"):].splitlines():
        m = re.match(r"^\s+- (?!pip:)(.+?)\s*(#.*)?$", line)
        if m and not m.group(1).startswith("-e"):
            specs.append(m.group(1))
    return {n: v for n, v in map(_req, specs) if n not in CONDA_ONLY}


def test_environment_yml_matches_pyproject():
    py, env = pyproject_requirements(), environment_requirements()
    assert set(py) == set(env), f"only in pyproject: {set(py) - set(env)}; only in env.yml: {set(env) - set(py)}"
    for name in py:
        assert py[name] == env[name], f"{name}: pyproject says {py[name]!r}, environment.yml {env[name]!r}"


def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
