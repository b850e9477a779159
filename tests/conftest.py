import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: two threads per process on a 2-core machine
    shared with other work make every toy op several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def espnet_root() -> Path:
    """ESPnet's source distribution with its egs2/ recipes (tools/fetch_espnet_recipes.sh: from
    PyPI the first time, from .cache/ after); the test fails if it cannot be fetched."""
    env = dict(os.environ, PYTHON=sys.executable)
    script = Path(__file__).resolve().parents[1] / "tools" / "fetch_espnet_recipes.sh"
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, f"tools/fetch_espnet_recipes.sh failed:\n{proc.stderr}"
    root = Path(proc.stdout.strip().splitlines()[-1])
    assert (root / "egs2" / "TEMPLATE" / "asr1" / "asr.sh").is_file(), root
    return root
