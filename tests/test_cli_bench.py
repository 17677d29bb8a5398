"""`gan-fast bench` from a source checkout and from an installed wheel; what the wheel holds."""
import os
import shutil
import subprocess
import sys

import pytest

from gan_fast import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_runs_the_suite_of_a_source_checkout(tmp_path):
    # cwd elsewhere: the checkout is found above the gan_fast package (editable install)
    r = subprocess.run([sys.executable, "-m", "gan_fast.cli", "bench", "--help"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "usage: gan-fast bench" in r.stdout and "--quick" in r.stdout


def test_bench_from_a_wheel_says_how_to_run_the_suite(tmp_path):
    # a wheel's layout: gan_fast in site-packages with no benchmarks/ beside it, cwd not a checkout
    site = tmp_path / "site-packages"
    (site / "gan_fast").mkdir(parents=True)
    (site / "gan_fast" / "__init__.py").write_text("")
    shutil.copy(os.path.join(ROOT, "gan_fast", "cli.py"), site / "gan_fast" / "cli.py")
    work = tmp_path / "work"
    work.mkdir()
    code = f"import sys; sys.path.insert(0, {str(site)!r}); from gan_fast.cli import main; sys.exit(main())"
    r = subprocess.run([sys.executable, "-c", code, "bench", "--quick"], cwd=work,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == "" and r.stderr == cli.BENCH_HOWTO + "\n"
    assert "Clone the repository" in r.stderr and "`python -m benchmarks" in r.stderr and "from its root" in r.stderr


def test_wheel_holds_gan_fast_only_and_one_version():
    dist_mod = pytest.importorskip("setuptools.dist")
    from setuptools.config import pyprojecttoml

    import gan_fast
    dist = dist_mod.Distribution()
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        pyprojecttoml.apply_configuration(dist, "pyproject.toml")
    finally:
        os.chdir(cwd)
    assert dist.packages and all(p == "gan_fast" or p.startswith("gan_fast.") for p in dist.packages), dist.packages
    assert dist.metadata.version == gan_fast.__version__
