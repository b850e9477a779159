"""benchmarks/asr_train_throughput.py and benchmarks/asr_inference_rtf.py with --tiny on the CPU:
the JSON they write, the corpus they build, and that every ratio comes from the side-by-side
runs (recomputed here from ESPnet's own log lines).  No timing is asserted (shared CPUs)."""

import json
import re
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import asr_inference_rtf as rtf_bench  # noqa: E402
import asr_train_throughput as train_bench  # noqa: E402

MODELS = ["conformer", "samba_asr"]


@pytest.fixture(scope="module")
def train_run(tmp_path_factory, espnet_root):
    work = tmp_path_factory.mktemp("asr_speed")
    out = work / "train.json"
    returned = train_bench.main(["--tiny", "--models", "samba_asr", "--utts", "8",
                                 "--valid-utts", "2", "--epochs", "2", "--work", str(work),
                                 "--baseline-config", str(espnet_root / train_bench.BASELINE_REL),
                                 "--out", str(out)])
    return returned, json.loads(out.read_text()), work


@pytest.fixture(scope="module")
def rtf_run(train_run):
    work = train_run[2]
    out = work / "rtf.json"
    returned = rtf_bench.main(["--tiny", "--models", *MODELS, "--work", str(work),
                               "--sets", "librispeech", "--utts", "3",
                               "--batch-sizes", "1", "2", "--out", str(out)])
    return returned, json.loads(out.read_text()), work


def _epoch_seconds(log: str) -> dict:
    """Independent reading of ESPnet's ``Nepoch results: [train] ... time=X seconds`` lines."""
    found = re.findall(r"(\d+)epoch results: \[train\].*?\btime=([\d.]+) seconds", log)
    return {int(e): float(t) for e, t in found}


def test_train_json_structure(train_run):
    returned, result, _ = train_run
    assert result == json.loads(json.dumps(returned))
    assert result["benchmark"] == "asr_train_throughput" and result["finished"] is True
    assert result["failed"] == [] and "--tiny" in result["command"]
    for key in ("torch", "espnet", "espnet_mamba", "device_name"):
        assert key in result["environment"]
    s = result["settings"]
    assert s["tiny"] is True and s["ngpu"] == 0 and s["epochs"] == 2 and s["baseline"] == "conformer"
    # the baseline is added to the requested models: the ratios need it
    assert list(result["models"]) == MODELS
    for name, r in result["models"].items():
        assert r["exit_status"] == 0
        assert set(r["epoch_seconds"]) == {"1", "2"} and r["warm_epochs"] == 1
        assert Path(r["exp_dir"], "latest.pth").exists()


def test_train_numbers_come_from_the_logs(train_run):
    _, result, work = train_run
    utts = result["corpus"]["train_utts"]
    per_1k = {}
    for name, r in result["models"].items():
        times = _epoch_seconds(Path(r["train_log"]).read_text())
        assert {str(e): t for e, t in times.items()} == r["epoch_seconds"]
        expect = statistics.median(t / utts * 1000 for e, t in times.items() if e > 1)
        assert r["seconds_per_1k_utts"] == pytest.approx(expect)
        per_1k[name] = expect
    for name, r in result["models"].items():
        assert r["ratio_to_conformer"] == pytest.approx(per_1k[name] / per_1k["conformer"])


def test_train_runs_share_settings(train_run):
    _, result, work = train_run
    import yaml

    configs = {n: yaml.safe_load((work / f"{n}.yaml").read_text()) for n in result["models"]}
    shared = ("batch_bins", "batch_type", "accum_grad", "optim", "optim_conf", "scheduler",
              "scheduler_conf", "max_epoch", "num_workers")
    for key in shared:
        assert len({json.dumps(c[key], sort_keys=True) for c in configs.values()}) == 1, key
    assert configs["conformer"]["encoder"] == "conformer"
    assert configs["conformer"]["decoder"] == "transformer"
    assert configs["samba_asr"]["encoder"] == "samba_asr"


def test_corpus(train_run):
    import soundfile

    _, result, work = train_run
    c = result["corpus"]
    train = Path(c["root"]) / "train"
    shapes = dict(line.split() for line in (train / "speech_shape").read_text().splitlines())
    texts = dict(line.split(" ", 1) for line in (train / "text").read_text().splitlines())
    tshapes = dict(line.split() for line in (train / "text_shape").read_text().splitlines())
    assert len(shapes) == c["train_utts"] == 8
    for line in (train / "wav.scp").read_text().splitlines():
        utt, path = line.split(" ", 1)
        assert soundfile.info(path).frames == int(shapes[utt])
        assert tshapes[utt] == f"{len(texts[utt].split())},{c['vocabulary']}"
    tokens = (Path(c["root"]) / "tokens.txt").read_text().split()
    assert len(tokens) == c["vocabulary"] and tokens[0] == "<blank>" and tokens[-1] == "<sos/eos>"


def test_lengths_and_determinism(tmp_path):
    x = train_bench.librispeech_lengths(20000, np.random.default_rng(0))
    assert 1.0 <= x.min() and x.max() <= 35.0 and 11.8 < x.mean() < 12.8
    a = train_bench.make_corpus(tmp_path / "a", 3, 1, 50, scale=0.05)
    b = train_bench.make_corpus(tmp_path / "b", 3, 1, 50, scale=0.05)
    for f in ("train/text", "train/speech_shape", "valid/text"):
        assert (tmp_path / "a" / f).read_text() == (tmp_path / "b" / f).read_text()
    wa = sorted((tmp_path / "a/train/wav").iterdir())[0].read_bytes()
    wb = sorted((tmp_path / "b/train/wav").iterdir())[0].read_bytes()
    assert wa == wb and a["seconds"] == b["seconds"]


def test_rtf_json_structure(rtf_run):
    returned, result, _ = rtf_run
    assert result == json.loads(json.dumps(returned))
    assert result["benchmark"] == "asr_inference_rtf" and result["finished"] is True
    opts = result["settings"]["decode_options"]
    assert opts["beam_size"] == 10 and opts["ctc_weight"] == 0.3
    assert opts["minlenratio"] < opts["maxlenratio"]
    assert list(result["models"]) == MODELS
    # ESPNET_MAMBA_CTC_PREFIX=auto (unset): the plugin's scorer for its models only
    assert result["settings"]["ESPNET_MAMBA_CTC_PREFIX"] == "auto"
    for name, runs in result["models"].items():
        assert set(runs) == {"librispeech_b1", "librispeech_b2"}
        for key, r in runs.items():
            assert r["exit_status"] == 0 and r["retries"] == 0
            assert r["beam_search"] == "BatchBeamSearch"
            assert r["utterances"] == 3 and r["search_steps"] > 0
            assert r["ctc_prefix_scorer"] == ("espnet" if name == "conformer" else "espnet_mamba")


def test_rtf_with_the_same_scorer_for_the_baseline(train_run, tmp_path, monkeypatch):
    """ESPNET_MAMBA_CTC_PREFIX=all (benchmarks.sh espnet_decode_same_scorer): ESPnet's Conformer
    decodes with the plugin's CTC prefix scorer too, and the JSON says so."""
    monkeypatch.setenv("ESPNET_MAMBA_CTC_PREFIX", "all")
    work = tmp_path / "work"  # the trained models of train_run, decoded into a dir of its own
    work.mkdir()
    for name in ("exp", "corpus"):
        (work / name).symlink_to(train_run[2] / name)
    result = rtf_bench.main(["--tiny", "--models", "conformer", "--work", str(work),
                             "--sets", "librispeech", "--utts", "1", "--batch-sizes", "1",
                             "--out", str(tmp_path / "same.json")])
    assert result["settings"]["ESPNET_MAMBA_CTC_PREFIX"] == "all"
    assert result["models"]["conformer"]["librispeech_b1"]["ctc_prefix_scorer"] == "espnet_mamba"


def test_rtf_numbers_come_from_the_logs(rtf_run):
    import soundfile

    _, result, work = rtf_run
    for name, runs in result["models"].items():
        for key, r in runs.items():
            batch = int(key.rsplit("_b", 1)[1])
            log = Path(r["log"]).read_text()
            stamps = rtf_bench.log_seconds(log)
            assert len(stamps) == r["utterances_decoded"] == batch + r["utterances"]
            assert r["decode_seconds"] == pytest.approx(stamps[-1] - stamps[batch - 1])
            scp = (work / "decode_sets" / f"librispeech_w{batch}" / "wav.scp").read_text()
            paths = [line.split(" ", 1)[1] for line in scp.splitlines()][batch:]
            audio = sum(soundfile.info(p).duration for p in paths)
            assert r["audio_seconds"] == pytest.approx(audio, abs=1e-3)
            assert r["rtf"] == pytest.approx(r["decode_seconds"] / r["audio_seconds"])
            base = result["models"]["conformer"][key]["rtf"]
            assert r["ratio_to_conformer"] == pytest.approx(r["rtf"] / base)


def test_ratio_functions_follow_their_inputs():
    train = {"models": {"conformer": {"seconds_per_1k_utts": 4.0},
                        "samba_asr": {"seconds_per_1k_utts": 6.0},
                        "speech_mamba": {"seconds_per_1k_utts": None}}}
    train_bench.add_ratios(train)
    assert [m["ratio_to_conformer"] for m in train["models"].values()] == [1.0, 1.5, None]
    train["models"]["conformer"]["seconds_per_1k_utts"] = None  # a failed baseline: no ratios
    train_bench.add_ratios(train)
    assert all(m["ratio_to_conformer"] is None for m in train["models"].values())
    rtf = {"models": {"conformer": {"long_b1": {"rtf": 0.2}},
                      "speech_mamba": {"long_b1": {"rtf": 0.1}, "long_b8": {"rtf": 0.05}}}}
    rtf_bench.add_ratios(rtf)
    assert rtf["models"]["speech_mamba"]["long_b1"]["ratio_to_conformer"] == pytest.approx(0.5)
    assert rtf["models"]["speech_mamba"]["long_b8"]["ratio_to_conformer"] is None


def test_long_set_and_warmup(tmp_path):
    sets = rtf_bench.make_sets(tmp_path, utts=2, long_utts=2, long_seconds=3.0, warmup=2,
                               vocab=50, scale=1.0)
    assert [len(sets[k]["counted"]) for k in ("librispeech", "long")] == [2, 2]
    assert all(sets["long"]["seconds"][u] == 3.0 for u in sets["long"]["counted"])
    assert min(sets["librispeech"]["seconds"].values()) >= 1.0
    one = rtf_bench._with_warmup(sets["long"], 1, tmp_path)
    keys = [line.split()[0] for line in Path(one["dir"], "wav.scp").read_text().splitlines()]
    assert keys == [sets["long"]["warmup"][0], *sets["long"]["counted"]]


def test_missing_training_is_named(tmp_path):
    with pytest.raises(SystemExit, match="exp/conformer/latest.pth"):
        rtf_bench.main(["--tiny", "--work", str(tmp_path), "--out", str(tmp_path / "r.json")])


@pytest.mark.slow
def test_benchmarks_sh_takes_the_baseline_config_from_the_environment(tmp_path, espnet_root):
    """tools/gpu/benchmarks.sh espnet_train with BASELINE_CONFIG: ESPnet's Conformer config read
    from that file (an offline machine can bring it alone, without ESPnet's source tree)."""
    import os
    import shutil
    import subprocess

    config = tmp_path / "conformer.yaml"
    shutil.copy(espnet_root / train_bench.BASELINE_REL, config)
    out = tmp_path / "out"
    env = dict(os.environ, EXTRA_ARGS="--tiny", OUT=str(out), SPEED_WORK=str(tmp_path / "work"),
               BASELINE_CONFIG=str(config),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu" / "benchmarks.sh"), "espnet_train"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "espnet_train.json").read_text())
    assert result["models"]["conformer"]["config"] == str(config)
    assert "--baseline-config" in result["command"]


def test_graphed_variant_and_skipped_epochs(tmp_path, espnet_root):
    """samba_asr_graphed is the shipped config with the encoder's CUDA graphs on (off CUDA it
    trains eagerly, so this only checks the config and the counting): the written config has
    them, the JSON says what changed, and --skip-epochs 2 counts the epochs after the second."""
    import yaml

    out = tmp_path / "train.json"
    result = train_bench.main(["--tiny", "--models", "samba_asr_graphed", "--utts", "8",
                               "--valid-utts", "2", "--epochs", "3", "--skip-epochs", "2",
                               "--work", str(tmp_path / "work"), "--out", str(out),
                               "--baseline-config",
                               str(espnet_root / train_bench.BASELINE_REL)])
    assert list(result["models"]) == ["conformer", "samba_asr_graphed"]
    assert result["settings"]["skip_epochs"] == 2
    r = result["models"]["samba_asr_graphed"]
    assert r["exit_status"] == 0 and r["warm_epochs"] == 1
    assert r["config"] == str(train_bench.MODELS["samba_asr"])
    assert r["config_changes"]["encoder_conf"]["cuda_graphs"] is True
    written = yaml.safe_load((tmp_path / "work" / "samba_asr_graphed.yaml").read_text())
    assert written["encoder_conf"]["cuda_graphs"] is True
    assert written["encoder_conf"]["cuda_graph_conf"] == {"batch_step": 8}
    assert written["encoder_conf"]["num_blocks"] == 1  # the toy size still applies
    third = float(r["epoch_seconds"]["3"])
    assert r["seconds_per_1k_utts"] == pytest.approx(third / 8 * 1000)
    with pytest.raises(SystemExit):
        train_bench.main(["--tiny", "--epochs", "2", "--skip-epochs", "2", "--out",
                          str(tmp_path / "x.json")])
