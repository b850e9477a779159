import mini_synth_smoke
import pytest


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """egs2/mini_synth/asr1's finished smoke run: (return code, recipe directory, log)."""
    return mini_synth_smoke.smoke_run(tmp_path_factory)
