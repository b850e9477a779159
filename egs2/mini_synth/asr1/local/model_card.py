#!/usr/bin/env python3
"""Write the model card (README.md) that the pack stage puts into the model zip.

    python local/model_card.py --exp exp/asr_X --model_file valid.acc.ave.pth \
        --asr_config conf/train_asr.yaml --inference_config conf/decode_asr.yaml \
        --recipe egs2/mini_synth/asr1 --out exp/asr_X/README.md

The card says first that the model needs the espnet-mamba plugin (``pip install espnet-mamba``)
for ESPnet's ``Speech2Text`` / ``Speech2Text.from_pretrained`` to build it, then names the
encoder/decoder classes (from ``<exp>/config.yaml``), the training and decoding configs, the
parameter count (from the checkpoint) and ``<exp>/RESULTS.md`` when it exists.  Nothing here is
specific to mini_synth: a corpus recipe can call it the same way before its pack stage.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
from pathlib import Path

import yaml

PLUGIN = "espnet-mamba"


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def class_path(kind: str, name: str | None) -> str:
    """'samba_asr' -> 'espnet_mamba.encoders.samba_asr:SambaASREncoder (espnet-mamba)', or the
    name alone for ESPnet's own classes."""
    if not name:
        return "none"
    from espnet_mamba.integration import names

    target = (names.ENCODERS if kind == "encoder" else names.DECODERS).get(name)
    return f"`{name}` = `{target}` ({PLUGIN})" if target else f"`{name}` (ESPnet)"


def count_params(model_file: Path) -> str:
    try:
        import torch

        state = torch.load(model_file, map_location="cpu", weights_only=True)
        n = sum(v.numel() for v in state.values() if hasattr(v, "numel"))
        return f"{n / 1e6:.2f} M"
    except Exception as exc:  # the card must not fail the pack stage
        return f"unknown ({type(exc).__name__})"


def conf_line(conf) -> str:
    if not conf:
        return ""
    return " " + ", ".join(f"{k}={v}" for k, v in conf.items())


def card(exp: Path, model_file: str, asr_config: str | None, inference_config: str | None,
         recipe: str, tag: str | None) -> str:
    config = yaml.safe_load((exp / "config.yaml").read_text())
    tag = tag or exp.name
    uses_plugin = any(config.get(kind) in _names(kind) for kind in ("encoder", "decoder"))
    token_list = config.get("token_list") or []
    lines = [
        f"# ESPnet ASR model `{tag}` ({PLUGIN})",
        "",
        f"Trained with the recipe `{recipe}` of {PLUGIN}, an ESPnet plugin that adds Mamba "
        "encoders/decoders, on "
        f"{datetime.date.today().isoformat()}.",
        "",
        "## Requirements: the espnet-mamba plugin",
        "",
    ]
    if uses_plugin:
        lines += [
            f"This model uses classes of the ESPnet plugin **{PLUGIN}**; ESPnet alone cannot "
            "build it (`--encoder must be one of ...`).  Install the plugin next to ESPnet:",
        ]
    else:
        lines += [f"This model uses only ESPnet's own classes; {PLUGIN} is not needed to load it."]
    lines += [
        "",
        "```bash",
        *([f"git clone <the {PLUGIN} repository> {PLUGIN}  # not on a package index",
           f"pip install -c {PLUGIN}/constraints.txt espnet_model_zoo ./{PLUGIN}"]
          if uses_plugin else ['pip install "espnet==202611" espnet_model_zoo']),
        "```",
        "",
        "Its import hook registers the classes when ESPnet loads its ASR task: no import in your "
        "code.  No GPU, CUDA or mamba-ssm is needed (on a CPU the plugin runs its PyTorch path "
        f'with the same weights; `pip install "./{PLUGIN}[cuda]"` adds the CUDA kernels).',
        "",
        "```python",
        "from espnet2.bin.asr_inference import Speech2Text",
        "s2t = Speech2Text.from_pretrained(\"<this model's zip or hub name>\", device=\"cpu\")",
        "text, *_ = s2t(speech)[0]      # speech: 16 kHz mono float waveform",
        "```",
        "Or unpack the zip (`espnet2.main_funcs.pack_funcs.unpack`) and pass `asr_train_config` / "
        "`asr_model_file` to `Speech2Text`.  A checkpoint whose keys do not match the config is "
        f"refused by {PLUGIN} with the keys named.",
        "",
        "## Model",
        "",
        f"- encoder: {class_path('encoder', config.get('encoder'))}"
        f"{conf_line(config.get('encoder_conf'))}",
        f"- decoder: {class_path('decoder', config.get('decoder'))}"
        f"{conf_line(config.get('decoder_conf'))}",
        f"- frontend: `{config.get('frontend')}`{conf_line(config.get('frontend_conf'))}; "
        f"normalize: `{config.get('normalize')}`",
        f"- model: {conf_line(config.get('model_conf')).strip() or 'defaults'}",
        f"- tokens: {config.get('token_type')}, {len(token_list)} entries",
        f"- parameters: {count_params(exp / model_file)} (`{model_file}`)",
        "",
        "## Configs",
        "",
        f"- training: `{asr_config or 'config.yaml'}` (the full resolved config is the "
        "`config.yaml` in this archive)",
        f"- decoding: `{inference_config or 'ESPnet defaults'}`",
    ]
    for title, path in (("training config", asr_config), ("decoding config", inference_config)):
        if path and Path(path).is_file():
            lines += ["", f"<details><summary>{title} {path}</summary>", "", "```yaml",
                      Path(path).read_text().rstrip(), "```", "", "</details>"]
    lines += ["", "## Results", ""]
    results = exp / "RESULTS.md"
    if results.is_file():
        for line in results.read_text().strip().splitlines():
            if line.startswith("<!--") or line.strip() == "# RESULTS":
                continue
            lines.append("#" + line if line.startswith("#") else line)  # under "## Results"
    else:
        lines.append("not scored (no RESULTS.md when the model was packed).")
    lines += ["", "## Environment", "",
              f"- espnet {version('espnet')}, {PLUGIN} {version(PLUGIN)}, "
              f"torch {version('torch')}", ""]
    return "\n".join(lines)


def _names(kind: str) -> set[str]:
    from espnet_mamba.integration import names

    return set(names.ENCODERS if kind == "encoder" else names.DECODERS)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--exp", required=True, type=Path, help="experiment dir with config.yaml")
    p.add_argument("--model_file", required=True, help="checkpoint name inside --exp")
    p.add_argument("--asr_config", help="training config the run was started with")
    p.add_argument("--inference_config", help="decoding config of the results")
    p.add_argument("--recipe", default="egs2/mini_synth/asr1")
    p.add_argument("--tag", help="model name (default: the experiment dir's name)")
    p.add_argument("--out", type=Path, help="default: <exp>/README.md")
    a = p.parse_args(argv)
    out = a.out or a.exp / "README.md"
    out.write_text(card(a.exp, a.model_file, a.asr_config, a.inference_config, a.recipe, a.tag))
    print(f"model card: {out}")


if __name__ == "__main__":
    main()
