"""Record parameter names and shapes of mamba-ssm's own Mamba and Mamba2 modules.

Run where mamba-ssm imports (the GPU machine): it writes tests/data/mamba_ssm_params.json,
which the CPU tests compare espnet_mamba's mixers against (CI cannot import mamba-ssm).

    python tools/record_mamba_ssm_params.py [--out tests/data/mamba_ssm_params.json]
"""

import argparse
import datetime
import json
from pathlib import Path

import torch

# (module, constructor kwargs); each is also built with espnet_mamba's class by the test
CONFIGS = [
    ("Mamba", dict(d_model=64)),
    ("Mamba", dict(d_model=256, d_state=16, d_conv=4, expand=2)),
    ("Mamba", dict(d_model=512, d_state=256, d_conv=4, expand=2)),
    ("Mamba", dict(d_model=80, d_state=8, d_conv=3, expand=1.5, dt_rank=7, bias=True,
                   conv_bias=False)),
    ("Mamba2", dict(d_model=256, d_state=64, headdim=32)),
    ("Mamba2", dict(d_model=512, d_state=128, headdim=64, ngroups=2)),
    ("Mamba2", dict(d_model=64, d_state=16, headdim=16, d_conv=3, bias=True)),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="tests/data/mamba_ssm_params.json")
    args = parser.parse_args()
    import mamba_ssm
    from mamba_ssm.modules.mamba2 import Mamba2
    from mamba_ssm.modules.mamba_simple import Mamba

    classes = {"Mamba": Mamba, "Mamba2": Mamba2}
    records = []
    for name, kwargs in CONFIGS:
        module = classes[name](**kwargs, device="cuda" if name == "Mamba2" else None)
        records.append({
            "module": name, "kwargs": kwargs,
            "params": {k: list(v.shape) for k, v in module.state_dict().items()},
        })
    out = {"mamba_ssm": mamba_ssm.__version__, "torch": torch.__version__,
           "date": datetime.date.today().isoformat(),
           "command": "python tools/record_mamba_ssm_params.py", "configs": records}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}: {len(records)} configs")


if __name__ == "__main__":
    main()
