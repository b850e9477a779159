"""egs2/librispeech_100/asr1 and egs2/librispeech/asr1 with ESPnet's real asr.sh.

ESPnet's recipe scripts come from its source distribution (tools/fetch_espnet_recipes.sh; the test
fails if that cannot fetch them).  Each recipe is copied under pytest's tmp dir with the shared
egs2/ scripts, and the README's "Quick check" commands run there exactly as written (read from
the README): a tiny synthetic corpus in LibriSpeech's layout with only train-clean-100,
dev-clean and test-clean, then run.sh through asr.sh's stages 1-14.  Checked: the data dirs of
the parts present, RESULTS.md (WER table, the ESPnet and espnet-mamba lines that replace the
"Git hash"), the packed zip (config, model, that RESULTS.md); then the README's pack command and
its upload command up to asr.sh's git-lfs check (a `git` without lfs on PATH: no network).
Stage-1 errors (no corpus, no train or dev part, a file without transcript) and the LM text
(used only when the user put it there) run through run.sh and asr.sh too; results_versions.py
is checked in git trees (ESPnet's commit, the recipe's commit, ESPnet inside another git tree).

The 960 h recipe is marked `librispeech_960` (CI runs it; -m "not librispeech_960" skips it): it runs
the same machinery, plus an LM trained on the transcripts.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
INSTALL_HINT = "run 'bash tools/install_recipe_deps.sh' from the repository root"
TIMEOUT = 900
RECIPES = {
    "librispeech_100": dict(train_set="train_clean_100"),
    "librispeech": dict(train_set="train_960"),
}
PRESENT = ("train-clean-100", "dev-clean", "test-clean")  # what make_tiny_corpus.py makes
LINKS = ("asr.sh", "utils", "steps", "pyscripts", "scripts", "db.sh", "cmd.sh")
PACK_PREFIX = "./run.sh --espnet_root /path/to/espnet <your options>"


# --------------------------------------------------------------------------------------------
# the README's commands

def readme_block(recipe: str, marker: str) -> str:
    """The fenced code block right after `<!-- marker -->` in the recipe's README."""
    text = (REPO / "egs2" / recipe / "asr1" / "README.md").read_text()
    m = re.search(rf"<!-- {re.escape(marker)} -->\n```bash\n(.*?)\n```", text, re.S)
    assert m, f"egs2/{recipe}/asr1/README.md has no '<!-- {marker} -->' bash block"
    return m.group(1)


def shell_commands(block: str) -> list[str]:
    """Commands of a block, backslash-continued lines joined, comments and blanks left out."""
    joined = re.sub(r"\\\n\s*", "", block)
    return [c.strip() for c in joined.split("\n") if c.strip() and not c.startswith("#")]


def quick_check(recipe: str) -> tuple[str, str]:
    """(corpus command, run.sh command) of the README's quick check."""
    cmds = shell_commands(readme_block(recipe, "quick-check"))
    assert len(cmds) == 2 and cmds[1].startswith("./run.sh "), cmds
    assert "make_tiny_corpus.py" in cmds[0], cmds
    return cmds[0], cmds[1]


def pack_commands(recipe: str, run_cmd: str) -> list[str]:
    """The README's pack and upload commands, with the quick check's options as '<your
    options>' (so that they work on its experiment)."""
    out = []
    for cmd in shell_commands(readme_block(recipe, "pack-commands")):
        assert cmd.startswith(PACK_PREFIX), cmd
        out.append(run_cmd + cmd[len(PACK_PREFIX):].replace("<hf-user>/<model-name>",
                                                            "someone/quick-check"))
    return out


# --------------------------------------------------------------------------------------------
# set-up: tools, ESPnet's scripts, a copy of the recipes

def missing_tools() -> list[str]:
    missing = [b for b in ("espeak-ng", "flite", "sox") if shutil.which(b) is None]
    if shutil.which("sclite") is None and not os.access("/usr/lib/sctk/bin/sclite", os.X_OK):
        missing.append("sclite (Debian sctk)")
    try:
        import py_nanotts  # noqa: F401
    except ImportError:
        missing.append("py-nanotts (pip package)")
    return missing


def copy_tree(work: Path, espnet_root: Path) -> Path:
    """tmp/egs2/{librispeech,librispeech_100}/asr1 with the shared scripts; tools/, mini_synth
    (make_tiny_corpus.py imports its synthesis) and .cache/espnet-<version> (where the README's
    `fetch_espnet_recipes.sh` finds ESPnet's scripts) are links into the repository."""
    egs2 = work / "egs2"
    egs2.mkdir(parents=True)
    for f in [*(REPO / "egs2").glob("*.sh"), *(REPO / "egs2").glob("*.py")]:
        shutil.copy(f, egs2 / f.name)
    ignore = shutil.ignore_patterns(*LINKS, "data", "dump*", "exp*", "tiny_librispeech")
    for recipe in RECIPES:
        shutil.copytree(REPO / "egs2" / recipe, egs2 / recipe, symlinks=True, ignore=ignore)
    (egs2 / "mini_synth").symlink_to(REPO / "egs2" / "mini_synth")
    (work / "tools").symlink_to(REPO / "tools")
    (work / ".cache").mkdir()
    (work / ".cache" / espnet_root.name).symlink_to(espnet_root)
    return egs2


def recipe_env(extra_path: Path | None = None) -> dict:
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("ESPNET_ROOT", None)
    path = [str(Path(sys.executable).parent), env.get("PATH", "")]
    if extra_path is not None:
        path.insert(0, str(extra_path))
    env["PATH"] = os.pathsep.join(path)
    return env


def bash(cmd: str, cwd: Path, log: Path, env: dict | None = None) -> tuple[int, float]:
    t0 = time.time()
    with log.open("a") as f:
        f.write(f"\n$ {cmd}\n")
        f.flush()
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], cwd=cwd,
                              env=env or recipe_env(), stdout=f, stderr=subprocess.STDOUT,
                              timeout=TIMEOUT)
    return proc.returncode, time.time() - t0


def tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


# --------------------------------------------------------------------------------------------
# the quick check, end to end

@pytest.fixture(scope="module", params=[
    "librispeech_100",
    pytest.param("librispeech", marks=pytest.mark.librispeech_960),
])
def quick_run(request, espnet_root, tmp_path_factory):
    missing = missing_tools()
    assert not missing, f"the LibriSpeech recipes need {', '.join(missing)}: {INSTALL_HINT}"
    recipe = request.param
    egs2 = copy_tree(tmp_path_factory.mktemp(recipe), espnet_root)
    rdir = egs2 / recipe / "asr1"
    log = rdir.parent / "quick_check.log"
    corpus_cmd, run_cmd = quick_check(recipe)
    rc, t_corpus = bash(corpus_cmd, rdir, log)
    assert rc == 0, f"{corpus_cmd} failed:\n{tail(log)}"
    rc, t_run = bash(run_cmd, rdir, log)
    print(f"\n[{recipe}] quick check: corpus {t_corpus:.0f} s, run.sh {t_run:.0f} s")
    return dict(recipe=recipe, rdir=rdir, log=log, rc=rc, run_cmd=run_cmd,
                espnet_root=espnet_root)


def experiment(rdir: Path) -> Path:
    exps = [p for p in (rdir / "exp").glob("asr_*") if not p.name.startswith("asr_stats")]
    assert len(exps) == 1, exps
    return exps[0]


def test_quick_check_data_results_and_pack(quick_run):
    rdir, log = quick_run["rdir"], quick_run["log"]
    assert quick_run["rc"] == 0, f"the README's quick check failed:\n{tail(log)}"
    text = log.read_text()

    # data: the parts on disk, the train and dev sets, the absent parts named
    train_set = RECIPES[quick_run["recipe"]]["train_set"]
    n_utts = {d: len((rdir / "data" / d / "wav.scp").read_text().splitlines())
              for d in ("train_clean_100", "dev_clean", "test_clean", train_set, "dev")}
    assert n_utts == {"train_clean_100": 120, "dev_clean": 12, "test_clean": 12,
                      train_set: 120, "dev": 12}, n_utts
    for absent in ("dev_other", "test_other", "train_clean_360"):
        assert not (rdir / "data" / absent).exists(), absent
    assert "skipped: " in text and "dev-other, test-other" in text, tail(log)
    if train_set == "train_960":
        assert "missing: train-clean-360, train-other-500" in text
    assert "not decoded: test_other dev_other" in text

    # RESULTS.md: WER of the test sets present; ESPnet's and the plugin's versions, no git hash
    exp = experiment(rdir)
    results = (exp / "RESULTS.md").read_text()
    wer = results.split("### WER", 1)[1].split("###", 1)[0]
    for dset in ("test_clean", "dev_clean"):
        row = re.search(rf"^\|[^|]*/{dset}\|12\|(\d+)\|", wer, re.M)
        assert row and int(row.group(1)) > 0, f"no WER row for {dset}:\n{results}"
    assert "test_other" not in results and "dev_other" not in results
    espnet_version = importlib.metadata.version("espnet")
    sdist_version = (quick_run["espnet_root"] / "version.txt").read_text().strip()
    assert f"- espnet2 version: `espnet2 {espnet_version}`" in results, results
    espnet_line = (f"- ESPnet recipe scripts: `{quick_run['espnet_root']}`, "
                   f"ESPnet {sdist_version}, not a git checkout")
    assert espnet_line in results, results
    plugin = importlib.metadata.version("espnet-mamba")
    assert f"- espnet-mamba version: `espnet-mamba {plugin}`" in results, results
    assert "Git hash" not in results and "Commit date" not in results, results

    # the packed model: config, weights, statistics, BPE model, that RESULTS.md
    zips = list(exp.glob("*.zip"))
    assert len(zips) == 1, f"no packed model in {exp}:\n{tail(log)}"
    with zipfile.ZipFile(zips[0]) as z:
        names = z.namelist()
        packed_results = next(n for n in names if n.endswith("RESULTS.md"))
        assert espnet_line in z.read(packed_results).decode()
    for suffix in ("config.yaml", ".pth", "feats_stats.npz", "bpe.model"):
        assert any(n.endswith(suffix) for n in names), (suffix, names)


def test_readme_pack_and_upload_commands(quick_run, tmp_path):
    rdir, log = quick_run["rdir"], quick_run["log"]
    assert quick_run["rc"] == 0, f"the README's quick check failed:\n{tail(log)}"
    pack, upload = pack_commands(quick_run["recipe"], quick_run["run_cmd"])
    zip_file = next(experiment(rdir).glob("*.zip"))
    before = zip_file.stat().st_mtime_ns
    rc, _ = bash(pack, rdir, log)
    assert rc == 0, f"{pack} failed:\n{tail(log)}"
    assert zip_file.stat().st_mtime_ns > before, "the pack command did not write the zip again"
    assert "Stage 14: Pack model" in tail(log, 80)

    # upload: asr.sh's stage 15 checks hf_repo, then the zip, then git-lfs, before any network
    # access; a `git` without lfs stops it there
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    git = bin_dir / "git"
    git.write_text(f'#!/bin/sh\n[ "$1" = lfs ] && exit 1\nexec {shutil.which("git") or "false"}'
                   ' "$@"\n')
    git.chmod(0o755)
    start = len(log.read_text())
    rc, _ = bash(upload, rdir, log, env=recipe_env(bin_dir))
    out = log.read_text()[start:]
    assert rc != 0, out[-3000:]
    assert "Stage 15: Upload model to HuggingFace: someone/quick-check" in out, out[-3000:]
    assert "install git-lfs" in out, out[-3000:]


@pytest.mark.librispeech_960
def test_960_lm_on_transcripts(espnet_root, tmp_path):
    """--use_lm true (the 960 h recipe's default) without the LM corpus: the LM trains on the
    training transcripts (asr.sh stages 6-8 after the quick check's stages 1-5)."""
    assert not missing_tools(), INSTALL_HINT
    egs2 = copy_tree(tmp_path, espnet_root)
    rdir = egs2 / "librispeech" / "asr1"
    log = tmp_path / "lm.log"
    corpus_cmd, run_cmd = quick_check("librispeech")
    assert bash(corpus_cmd, rdir, log)[0] == 0, tail(log)
    lm_opts = " --use_lm true --lm_config conf/tuning/train_lm_quick_check.yaml --stop_stage 8"
    rc, seconds = bash(run_cmd + lm_opts, rdir, log)
    assert rc == 0, tail(log)
    print(f"\nstages 1-8 with the LM: {seconds:.0f} s")
    text = log.read_text()
    assert "--lm_train_text data/train_960/text --bpe_train_text" in text
    assert "Stage 7: LM Training" in text and "Stage 8: Calc perplexity" in text, tail(log)
    lm_exp = next(p for p in (rdir / "exp").glob("lm_*") if not p.name.startswith("lm_stats"))
    assert (lm_exp / "valid.loss.ave.pth").exists(), sorted(p.name for p in lm_exp.iterdir())
    assert (lm_exp / "perplexity_test" / "ppl").read_text().strip()


# --------------------------------------------------------------------------------------------
# stage 1 alone: errors and the LM text

def fake_corpus(root: Path, parts, transcribe_all: bool = True) -> Path:
    """LibriSpeech's layout with empty .flac files (stage 1 reads no audio)."""
    for k, part in enumerate(parts):
        chapter_dir = root / "LibriSpeech" / part / str(10 + k) / str(100 + k)
        chapter_dir.mkdir(parents=True)
        lines = []
        for n in range(3):
            utt = f"{10 + k}-{100 + k}-{n:04d}"
            (chapter_dir / f"{utt}.flac").write_bytes(b"")
            if transcribe_all or n < 2:
                lines.append(f"{utt} HELLO WORLD {n}\n")
        (chapter_dir / f"{10 + k}-{100 + k}.trans.txt").write_text("".join(lines))
    return root


def stage1(egs2: Path, recipe: str, corpus: Path, log: Path) -> tuple[int, str]:
    root = next((egs2.parent / ".cache").iterdir())
    cmd = (f"./run.sh --espnet_root {shlex.quote(str(root))} "
           f"--librispeech {shlex.quote(str(corpus))} --stage 1 --stop_stage 1")
    rc, _ = bash(cmd, egs2 / recipe / "asr1", log)
    return rc, log.read_text()


@pytest.fixture
def tree(espnet_root, tmp_path):
    return copy_tree(tmp_path / "work", espnet_root)


@pytest.mark.parametrize("parts,message", [
    ((), "none of the LibriSpeech parts train-clean-100,"),
    (("dev-clean", "test-clean"), "train_clean_100 needs at least one of train-clean-100;"),
    (("train-clean-100", "test-other"), "dev needs at least one of dev-clean, dev-other;"),
])
def test_stage1_names_what_is_missing(tree, tmp_path, parts, message):
    corpus = fake_corpus(tmp_path / "corpus", parts)
    (corpus / "LibriSpeech").mkdir(parents=True, exist_ok=True)
    rc, out = stage1(tree, "librispeech_100", corpus, tmp_path / "log")
    assert rc != 0, out
    assert message in out and str(corpus / "LibriSpeech") in out, out[-2000:]


def test_stage1_flac_without_transcript(tree, tmp_path):
    corpus = fake_corpus(tmp_path / "corpus", PRESENT, transcribe_all=False)
    rc, out = stage1(tree, "librispeech_100", corpus, tmp_path / "log")
    assert rc != 0
    flac = corpus / "LibriSpeech" / "train-clean-100" / "10" / "100" / "10-100-0002.flac"
    assert f"{flac}: no transcript in" in out, out[-2000:]


def test_stage1_lm_text_only_when_the_user_has_it(tree, tmp_path):
    corpus = fake_corpus(tmp_path / "corpus", PRESENT)
    rdir = tree / "librispeech" / "asr1"
    rc, out = stage1(tree, "librispeech", corpus, tmp_path / "log1")
    assert rc == 0, out[-3000:]
    assert "--lm_train_text data/train_960/text --bpe_train_text" in out
    assert "wget" not in out and not (rdir / "data" / "local" / "other_text").exists()

    other = rdir / "data" / "local" / "other_text"
    other.mkdir(parents=True)
    with gzip.open(other / "librispeech-lm-norm.txt.gz", "wt") as f:
        f.write("A BANK CHECK\nTHE LM TEXT\n")
    rc, out = stage1(tree, "librispeech", corpus, tmp_path / "log2")
    assert rc == 0, out[-3000:]
    assert "--lm_train_text data/train_960/text data/local/other_text/text" in out
    assert (other / "text").read_text().splitlines() == [
        "librispeech_lm_00000001 A BANK CHECK", "librispeech_lm_00000002 THE LM TEXT"]


# --------------------------------------------------------------------------------------------
# egs2/results_versions.py in git trees (the quick check above runs outside any)

SHOW_ASR_RESULT = """<!-- Generated by scripts/utils/show_asr_result.sh -->
# RESULTS
## Environments
- date: `Sun Dec  6 18:57:38 UTC 2026`
- espnet2 version: `espnet2 202611`
- Git hash: `0123456789abcdef0123456789abcdef01234567`
  - Commit date: `Sun Dec 6 18:00:00 2026 +0000`

## exp/asr_x
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_results_versions_in_git_trees(tmp_path):
    # an ESPnet git checkout (only what the script looks at) ...
    espnet = tmp_path / "espnet"
    (espnet / "egs2" / "TEMPLATE" / "asr1").mkdir(parents=True)
    (espnet / "egs2" / "TEMPLATE" / "asr1" / "asr.sh").write_text("")
    (espnet / "version.txt").write_text("202611\n")
    git(espnet, "init", "-q")
    git(espnet, "add", ".")
    git(espnet, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x")
    espnet_hash = git(espnet, "rev-parse", "HEAD")
    # ... and this repository's recipe directory, whose commit is the plugin's
    rdir = REPO / "egs2" / "librispeech_100" / "asr1"
    top = subprocess.run(["git", "-C", str(rdir), "rev-parse", "--show-toplevel"],
                         capture_output=True, text=True)
    in_git = top.returncode == 0 and Path(top.stdout.strip()) == REPO
    results = tmp_path / "RESULTS.md"
    results.write_text(SHOW_ASR_RESULT)
    for _ in range(2):  # a second pass replaces its own lines
        proc = subprocess.run([sys.executable, str(REPO / "egs2" / "results_versions.py"),
                               str(results)], cwd=rdir, capture_output=True, text=True,
                              env=dict(os.environ, ESPNET_ROOT=str(espnet)))
        assert proc.returncode == 0, proc.stderr
    text = results.read_text()
    assert "Git hash" not in text and "Commit date" not in text, text
    assert f"- ESPnet recipe scripts: `{espnet}`, ESPnet 202611, git `{espnet_hash}`" in text
    recipe_line = next(x for x in text.splitlines() if x.startswith("- espnet-mamba recipe: "))
    if in_git:
        assert f"git `{git(REPO, 'rev-parse', 'HEAD')}`" in recipe_line, recipe_line
    else:
        assert recipe_line.endswith("not in a git checkout"), recipe_line
    assert text.count("- espnet-mamba version: ") == 1 and "- espnet2 version:" in text, text

    # ESPnet's scripts inside another git tree (e.g. the source distribution unpacked into
    # this repository's .cache/): not reported as that tree's commit
    inner = espnet / "sub" / "espnet-202611"
    (inner / "egs2" / "TEMPLATE" / "asr1").mkdir(parents=True)
    (inner / "version.txt").write_text("202611\n")
    results.write_text(SHOW_ASR_RESULT)
    proc = subprocess.run([sys.executable, str(REPO / "egs2" / "results_versions.py"),
                           str(results)], cwd=rdir, capture_output=True, text=True,
                          env=dict(os.environ, ESPNET_ROOT=str(inner)))
    assert proc.returncode == 0, proc.stderr
    assert f"`{inner}`, ESPnet 202611, not a git checkout" in results.read_text()
    # not a RESULTS.md of asr.sh: an error naming the file
    other = tmp_path / "other.md"
    other.write_text("# something else\n")
    proc = subprocess.run([sys.executable, str(REPO / "egs2" / "results_versions.py"),
                           str(other)], cwd=rdir, capture_output=True, text=True,
                          env=dict(os.environ, ESPNET_ROOT=str(espnet)))
    assert proc.returncode != 0 and str(other) in proc.stderr and "Git hash" in proc.stderr
