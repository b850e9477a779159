"""Refuse a torch / torchaudio pair that cannot load together, with a message that says so.

pip pairs the newest torchaudio with whatever torch is installed (torchaudio declares only
``torch>=2.11``), and a torchaudio built against a newer torch fails inside ESPnet's imports
with ``OSError: Could not load this library: .../libtorchaudio.so`` (an undefined symbol), which
names neither package.  Reads only package metadata: no torch import, a few milliseconds.
"""

from __future__ import annotations

import importlib.metadata
import re

CONSTRAINTS_HINT = ("install the pair the project is tested with: "
                    "pip install -c constraints.txt torch torchaudio  (constraints.txt is in the "
                    "espnet-mamba repository; it pins torch==2.11.0 with torchaudio==2.11.0)")


class IncompatibleInstallError(ImportError):
    """Installed packages that cannot work together."""


def release(version: str) -> tuple[int, ...]:
    """(major, minor, micro) of a version string: '2.11.0+cu130' -> (2, 11, 0)."""
    m = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", version)
    if m is None:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(x or 0) for x in m.groups())


def torch_companion_problem(versions: dict[str, str]) -> str | None:
    """Why ``versions`` ({'torch': ..., 'torchaudio': ...}) cannot load together, or None.

    A torchaudio release newer than torch's is built against symbols that torch does not have.
    Absent packages are not a problem here (ESPnet's own import says what is missing)."""
    torch, audio = versions.get("torch"), versions.get("torchaudio")
    if torch is None or audio is None:
        return None
    if release(audio) > release(torch):
        return (f"torchaudio {audio} is newer than torch {torch}: its libtorchaudio.so is built "
                f"against a newer torch and does not load (ESPnet's task imports fail with "
                f"'Could not load this library'); {CONSTRAINTS_HINT}")
    return None


def installed_versions(names=("torch", "torchaudio")) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def check_torch_companions() -> None:
    """Raise IncompatibleInstallError if the installed torch and torchaudio cannot load together."""
    problem = torch_companion_problem(installed_versions())
    if problem:
        raise IncompatibleInstallError(problem)
