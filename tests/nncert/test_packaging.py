"""The installed distribution: one top-level package, nncert, holding the source folders and the demo data."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.paths import REPO


def test_the_wheel_installs_only_the_nncert_package(tmp_path: Path):
    source = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "runs", "__pycache__",
                                                                "benchmarks", "tests"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("nncert-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"nncert"}, top
    for module in ("nncert/__init__.py", "nncert/domains/deeppoly.py", "nncert/verifier/certify.py",
                   "nncert/training/methods.py", "nncert/cli/certify.py", "nncert/verifier/data/demo_mnist.onnx"):
        assert module in names, module
