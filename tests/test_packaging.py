"""Packaging: environment.yml (conda/Binder) lists pyproject's runtime and lab dependencies; the extras are
split so that `make lab` installs only what the chapters need; a broken C compiler does not break the install."""

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
    specs = list(data["dependencies"]) + list(data["optional-dependencies"]["lab"])
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


def test_lab_extra_has_no_test_tools_and_dev_builds_on_it():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    lab = {_req(s)[0] for s in extras["lab"]}
    assert {"jupyterlab", "ipykernel"} <= lab
    assert not lab & {"pytest", "hypothesis", "nbval", "ruff", "playwright", "jupytext", "pycuda"}
    assert "chordlab[lab]" in extras["dev"]
    assert "pycuda" not in (ROOT / "environment.yml").read_text()


def test_binder_files_follow_repo2docker():
    assert (ROOT / "postBuild").stat().st_mode & 0o111, "postBuild must be executable"
    assert "pip install" in (ROOT / "postBuild").read_text()
    env = (ROOT / "environment.yml").read_text()
    assert "-e ." not in env  # repo2docker installs environment.yml before the repository is copied in
    assert "mesa-vulkan-drivers" in (ROOT / "apt.txt").read_text()


def test_install_without_a_working_c_compiler_succeeds_and_simd_says_why(tmp_path):
    """CC=/bin/false: the build step still exits 0, and chordlab imports with 'simd' unavailable."""
    import shutil
    import subprocess
    import sys
    import sysconfig

    work = tmp_path / "chordlab-src"
    work.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, work / name)
    shutil.copytree(ROOT / "csrc", work / "csrc", ignore=shutil.ignore_patterns("__pycache__"))
    (work / "chordlab").mkdir()
    for f in (ROOT / "chordlab").glob("*.py"):
        shutil.copy(f, work / "chordlab" / f.name)
    env = {**__import__("os").environ, "CC": "/bin/false"}
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "the C extension (chapter 4's SIMD kernels) was not built" in r.stderr
    assert not list((work / "chordlab").glob("_simd*.so"))
    # -S: no .pth files, so the editable install of this checkout cannot lend its built extension
    env = {**env, "PYTHONPATH": f"{work}{__import__('os').pathsep}{sysconfig.get_paths()['purelib']}"}
    code = ("import numpy as np, chordlab; a = chordlab.get_backend('simd').available(); "
            "q = np.ones((1, 2, 16, 8), np.float32); out = chordlab.attention(q, q, q); "
            "print(chordlab.__file__); print(a.ok); print(a.reason)")
    r = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)  # not the checkout: "-c" puts the working folder first on sys.path
    assert r.returncode == 0, r.stderr[-2000:]
    where, ok, reason = r.stdout.splitlines()[:3]
    assert where.startswith(str(work)) and ok == "False"
    assert "its build failed" in reason and "/bin/false" in reason and "install a C compiler" in reason
