"""espnet-mamba: pip installs the package and a .pth hook that registers it into ESPnet."""

import os
import re
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HOOK = "espnet_mamba_hook.pth"


class BuildPyWithHook(build_py):
    """Put the .pth file at the top of the wheel, i.e. into site-packages, where the
    interpreter reads it at start-up (both for `pip install .` and `pip install -e .`)."""

    def run(self):
        super().run()
        self.copy_file(HOOK, os.path.join(self.build_lib, HOOK), preserve_mode=False)

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, HOOK)]

    def get_output_mapping(self):
        mapping = super().get_output_mapping()
        mapping[os.path.join(self.build_lib, HOOK)] = HOOK
        return mapping


class EditableWheelWithHook(editable_wheel):
    """`pip install -e .`: setuptools ignores extra build_py outputs in editable wheels, but
    writes whatever lies in the unpacked wheel folder (where it puts its own .pth files)."""

    def _install_namespaces(self, installation_dir, pth_prefix):
        super()._install_namespaces(installation_dir, pth_prefix)
        shutil.copy(HOOK, os.path.join(installation_dir, HOOK))


here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "README.md"), encoding="utf-8") as f:
    long_description = f.read()
# one place for the version: the package's __version__ (also what a training run records)
with open(os.path.join(here, "espnet_mamba", "__init__.py"), encoding="utf-8") as f:
    version = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)

setup(
    name="espnet-mamba",
    version=version,
    description="Mamba (selective state-space) ASR encoders and decoders for ESPnet "
                "(Samba-ASR, Speech-Mamba)",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.12",
    packages=find_packages(include=["espnet_mamba", "espnet_mamba.*"]),
    cmdclass={"build_py": BuildPyWithHook, "editable_wheel": EditableWheelWithHook},
    install_requires=[
        # the ranges the plugin is tested in; constraints.txt pins the exact versions.  The plugin
        # reaches into ESPnet internals, so a newer ESPnet release is a deliberate change.
        "torch>=2.11,<2.12",
        "torchaudio>=2.11,<2.12",
        "numpy",  # packed batches' index maps (espnet_mamba/modules/packing.py)
        "espnet>=202611,<=202611",
        "typeguard",
        # asr_train's defaults need these but espnet does not declare them
        "tensorboard",
        "matplotlib",
        "editdistance",
        "sentencepiece",
    ],
    extras_require={
        # CUDA kernels: sdists only, built against the installed torch (see README)
        "cuda": ["mamba-ssm==2.3.2.post1", "causal-conv1d==1.7.0"],
        "test": ["pytest", "hypothesis"],
    },
)
