"""The quickstart notebook runs headless, top to bottom, on smoke settings."""
import os
import shutil
import subprocess
import sys
import sysconfig

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = os.path.join(os.path.dirname(os.path.dirname(__file__)), "notebooks", "exit_quickstart.ipynb")


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("EXIT_JAX_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                   ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "accuracy by self-improvement step k:" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the curves and the eval plot


@pytest.mark.slow
def test_install_cell_installs_from_the_repository_and_keeps_the_runtimes_jax(tmp_path):
    """The first cell, run as in a fresh Colab runtime: a Python that has jax and our other requirements
    but not exit_jax. It installs exit_jax from the repository and leaves jax where and what it was."""
    runtime = tmp_path / "runtime"
    subprocess.run([sys.executable, "-m", "venv", str(runtime)], check=True, timeout=120)
    python = str(runtime / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "runtime_packages.pth"), "w") as f:  # the runtime's preinstalled packages
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    probe = "import jax, os; print(jax.__version__, os.path.dirname(jax.__file__))"
    before = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert subprocess.run([python, "-c", "import exit_jax"], cwd=tmp_path, capture_output=True).returncode != 0
    cell = "".join(nbformat.read(NOTEBOOK, as_version=4).cells[1].source)
    # A copy of the repository's files, as a clone holds them (building writes build/ into the source).
    root = os.path.dirname(os.path.dirname(NOTEBOOK))
    repo = tmp_path / "repository"
    for name in subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True,
                               check=True).stdout.splitlines():
        os.makedirs((repo / name).parent, exist_ok=True)
        shutil.copy(os.path.join(root, name), repo / name)
    out = subprocess.run([python, "-c", cell], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, EXIT_JAX_REPO=str(repo)))
    assert out.returncode == 0, out.stderr[-3000:]
    installed = subprocess.run([python, "-c", "import exit_jax, os; print(os.path.dirname(exit_jax.__file__))"],
                               cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert installed.startswith(site)  # installed into the runtime, not found in the repository
    assert subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout == before
    missing = subprocess.run([python, "-c", cell], cwd=tmp_path, capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items() if k != "EXIT_JAX_REPO"})
    assert missing.returncode == 0  # installed now: the cell does nothing
