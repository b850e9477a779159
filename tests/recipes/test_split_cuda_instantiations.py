"""tools/split_cuda_instantiations.py, which tools/build_kernels.sh runs on causal-conv1d's
sources so that its kernels compile side by side: the split files together hold every explicit
instantiation once, setup.py lists them instead of the original, and a source it cannot split
safely is refused by name.  The split is compiled and linked (as C++, the CUDA keywords
defined away) to show that no instantiation goes missing or is defined twice."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "split_cuda_instantiations.py"

KERNELS = """\
#define __global__
#define __launch_bounds__(n)
#include <cstdio>

template<typename input_t, typename weight_t>
__global__ __launch_bounds__(128)
void scale_kernel(input_t *x, weight_t w) {
    *x = *x * w;
}

template<typename input_t, typename weight_t>
void scale_cuda(input_t *x, weight_t w) {
    scale_kernel<input_t, weight_t>(x, w);
}

template<typename input_t, typename weight_t>
void shift_cuda(input_t *x, weight_t w) {
    *x = *x + w;
}

template void scale_cuda<float, float>(float *x, float w);
template void scale_cuda<double, float>(double *x, float w);
template void scale_cuda<double, double>(double *x, double w);

template void shift_cuda<float, float>(float *x, float w);
template void shift_cuda<double, float>(double *x, float w);
template void shift_cuda<double, double>(double *x, double w);
"""

MAIN = """\
#include <cstdio>
template<typename input_t, typename weight_t> void scale_cuda(input_t *x, weight_t w);
template<typename input_t, typename weight_t> void shift_cuda(input_t *x, weight_t w);
int main() {
    float a = 2; double b = 3, c = 5;
    scale_cuda<float, float>(&a, 2.0f); shift_cuda<float, float>(&a, 1.0f);
    scale_cuda<double, float>(&b, 2.0f); shift_cuda<double, float>(&b, 1.0f);
    scale_cuda<double, double>(&c, 2.0); shift_cuda<double, double>(&c, 1.0);
    std::printf("%g %g %g\\n", a, b, c);
    return 0;
}
"""

SETUP = """\
from setuptools import setup
sources = [
    "csrc/ops.cpp",
    "csrc/kernels.cu",
    "csrc/other.cu",
]
setup(name="demo")
"""


def make_tree(root: Path, kernels: str = KERNELS) -> Path:
    (root / "csrc").mkdir(parents=True)
    (root / "csrc" / "kernels.cu").write_text(kernels)
    (root / "setup.py").write_text(SETUP)
    return root


def split(root: Path, *files: str):
    return subprocess.run([sys.executable, str(SCRIPT), str(root), *files],
                          capture_output=True, text=True, timeout=60)


def instantiations(paths):
    return sorted(line for p in paths for line in p.read_text().splitlines()
                  if line.startswith("template void"))


def test_split_per_argument_list_and_setup_sources(tmp_path):
    root = make_tree(tmp_path / "pkg")
    original = root / "csrc" / "kernels.cu"
    before = instantiations([original])
    r = split(root, "csrc/kernels.cu")
    assert r.returncode == 0, r.stderr
    parts = sorted((root / "csrc").glob("kernels_split*.cu"))
    assert [p.name for p in parts] == [f"kernels_split{k}.cu" for k in range(3)]
    assert not original.exists()
    # every instantiation once, each file one argument list (both functions of it)
    assert instantiations(parts) == before
    for p in parts:
        args = {line.split("<", 1)[1].split(">", 1)[0]
                for line in p.read_text().splitlines() if line.startswith("template void")}
        assert len(args) == 1, (p.name, args)
        assert "void scale_kernel" in p.read_text() and "void shift_cuda" in p.read_text()
    setup = (root / "setup.py").read_text()
    assert '"csrc/kernels.cu"' not in setup
    listed = [line.strip().strip('",') for line in setup.splitlines() if "csrc/" in line]
    assert listed == ["csrc/ops.cpp", *(f"csrc/kernels_split{k}.cu" for k in range(3)),
                      "csrc/other.cu"]
    assert "3 files" in r.stdout


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs a C++ compiler")
def test_split_files_link_into_one_program(tmp_path):
    root = make_tree(tmp_path / "pkg")
    assert split(root, "csrc/kernels.cu").returncode == 0
    (tmp_path / "main.cpp").write_text(MAIN)
    objs = []
    for src in [*sorted((root / "csrc").glob("kernels_split*.cu")), tmp_path / "main.cpp"]:
        obj = tmp_path / (src.stem + ".o")
        subprocess.run(["g++", "-x", "c++", "-c", str(src), "-o", str(obj)], check=True)
        objs.append(str(obj))
    exe = tmp_path / "demo"
    link = subprocess.run(["g++", *objs, "-o", str(exe)], capture_output=True, text=True)
    assert link.returncode == 0, link.stderr  # no instantiation missing or defined twice
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["5", "7", "11"]


@pytest.mark.parametrize("kernels,files,message", [
    ("template<typename T> void f(T x) {}\n", ["csrc/kernels.cu"],
     "no explicit instantiations"),
    (KERNELS + "\nvoid reset_value(float *x) {\n    *x = 0;\n}\n", ["csrc/kernels.cu"],
     "kernels.cu:29: a function that is not a template would be defined in every split file: "
     "void reset_value"),
    (KERNELS, ["csrc/missing.cu"], "missing.cu: no such file"),
])
def test_refuses_what_it_cannot_split(tmp_path, kernels, files, message):
    root = make_tree(tmp_path / "pkg", kernels)
    r = split(root, *files)
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert (root / "csrc" / "kernels.cu").exists()  # nothing removed


def test_refuses_a_file_setup_does_not_list(tmp_path):
    root = make_tree(tmp_path / "pkg")
    (root / "csrc" / "unlisted.cu").write_text(KERNELS)
    r = split(root, "csrc/unlisted.cu")
    assert r.returncode != 0 and 'expected one sources entry "csrc/unlisted.cu", found 0' in r.stderr
    assert (root / "csrc" / "unlisted.cu").exists()


def test_build_kernels_dry_run_splits_causal_conv1d(tmp_path):
    """tools/build_kernels.sh --dry-run on a causal-conv1d sdist of the real one's layout: the
    -gencode lines are patched and both kernel files split (the dry run prints what it did)."""
    import tarfile

    src = tmp_path / "causal_conv1d-9.9.9"
    (src / "csrc").mkdir(parents=True)
    for direction in ("fwd", "bwd"):
        (src / "csrc" / f"causal_conv1d_{direction}.cu").write_text(KERNELS)
    (src / "setup.py").write_text(
        "cc_flag = []\n"
        'cc_flag.append("-gencode")\n'
        'cc_flag.append("arch=compute_80,code=sm_80")\n'
        'cc_flag.append("-gencode")\n'
        'cc_flag.append("arch=compute_90,code=sm_90")\n'
        "sources=[\n"
        '    "csrc/causal_conv1d.cpp",\n'
        '    "csrc/causal_conv1d_fwd.cu",\n'
        '    "csrc/causal_conv1d_bwd.cu",\n'
        "]\n")
    sdist = tmp_path / "sdist"
    sdist.mkdir()
    with tarfile.open(sdist / "causal_conv1d-9.9.9.tar.gz", "w:gz") as tar:
        tar.add(src, arcname=src.name)
    env = dict(__import__("os").environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "tools" / "build_kernels.sh"), "--dry-run",
                           "--arch", "90", "--skip", "mamba_ssm", "--sdist-dir", str(sdist),
                           "--wheel-dir", str(tmp_path / "wheels")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for direction in ("fwd", "bwd"):
        assert f"causal_conv1d: csrc/causal_conv1d_{direction}.cu: 3 files" in proc.stdout, proc.stdout
    assert 'cc_flag += ["-gencode", "arch=compute_90,code=sm_90"]' in proc.stdout
