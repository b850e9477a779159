"""The lazy import hook: ESPnet's task modules get our classes the moment ESPnet imports them.

ESPnet picks encoders/decoders from ``ClassChoices`` objects that live in each task module
(``espnet2.tasks.asr.encoder_choices`` ...); they are plain dicts with no entry points.  The
``espnet_mamba_hook.pth`` file that pip installs calls :func:`install_import_hook` at interpreter
start (unless ``ESPNET_MAMBA_DISABLE_HOOK`` is set, when it imports nothing at all): it puts a
finder on ``sys.meta_path``.  When a task module (or a module with a fix, ``names.POST_IMPORT``)
is imported, the finder lets it execute and then registers into it, so the stock
``python -m espnet2.bin.asr_train`` sees ``encoder: samba_asr`` with no wrapper command.

Runs in every interpreter: imports nothing beyond ``names`` until ESPnet imports a task module,
and the finder answers any other import with one dict lookup.
"""


import os
import sys

from espnet_mamba.integration.names import DISABLE_ENV, POST_IMPORT, REGISTRY


def disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").lower() not in ("", "0", "false", "no")


class _RegisteringLoader:
    """Wraps a task module's real loader: execute it, then register into it."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        from espnet_mamba.integration import registration

        # before ESPnet's task module runs: a torchaudio that cannot load fails there in words
        # that name neither torch nor torchaudio
        registration.check_install_once()
        self._loader.exec_module(module)
        registration.after_import(module)

    def __getattr__(self, name):  # get_source, get_code, is_package... of the real loader
        return getattr(self._loader, name)


class _PostImportFinder:
    def __init__(self):
        self._resolving: set[str] = set()

    def find_spec(self, fullname, path=None, target=None):
        if (fullname not in REGISTRY and fullname not in POST_IMPORT) or (
                fullname in self._resolving):
            return None
        import importlib.util

        self._resolving.add(fullname)  # let the other finders locate the real module
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._resolving.discard(fullname)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _RegisteringLoader(spec.loader)
        return spec


def installed_finder():
    return next((f for f in sys.meta_path if isinstance(f, _PostImportFinder)), None)


def install_import_hook(force: bool = False) -> bool:
    """Put the finder on sys.meta_path (idempotent) and register into the task modules imported
    before it.  Returns False, doing nothing, if ESPNET_MAMBA_DISABLE_HOOK is set (unless
    ``force``)."""
    if not force and disabled():
        return False
    if installed_finder() is None:
        sys.meta_path.insert(0, _PostImportFinder())
    already = [sys.modules[name] for name in REGISTRY if name in sys.modules]
    if already:
        from espnet_mamba.integration import registration

        for module in already:
            registration.register_into(module)
    return True
