"""Split a CUDA source file's explicit template instantiations over several files, so that a
parallel build compiles them at once.

    python tools/split_cuda_instantiations.py SRC_DIR csrc/causal_conv1d_bwd.cu [more.cu ...]

causal-conv1d compiles each of its kernels for every (input, weight) dtype pair inside one file
per direction (`csrc/causal_conv1d_bwd.cu`: 18 explicit instantiations), so its build waits for
one compiler process however many cores there are (428 s of a 16-core H100 machine, against
192 s for mamba-ssm, whose sources are already one file per dtype).  For each FILE this writes
FILE's text once per distinct template-argument list of its `template void f<...>(...);` lines,
each copy keeping only the instantiations with that argument list (`<stem>_split<k>.cu`, beside
FILE), and replaces FILE's entry in SRC_DIR/setup.py's sources with the copies.  Every
function in such a file is a template, so each kernel is still compiled exactly once, now in
the copy that instantiates it; the code itself is not changed.

Exits non-zero, naming the file, when a file has no explicit instantiations, holds a function
that is not a template (it would be defined once per copy), or setup.py does not list it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

INSTANTIATION = re.compile(r"^template\s+void\s+\w+\s*<(?P<args>[^>]*)>\s*\(.*\)\s*;\s*$")
# a top-level function definition: a line at column 0 that opens a parameter list and is not a
# declaration; `template<...>` on the line before makes it a template
DEFINITION = re.compile(r"^(?!template\b|#|//|\s|\}|namespace\b|struct\b|class\b|using\b)"
                        r"[\w:<>,\s\*&]+\s+\**\w+\s*\(")


def fail(msg: str):
    sys.exit(f"split_cuda_instantiations: {msg}")


def is_template(lines: list[str], i: int) -> bool:
    """Whether the declaration that line i belongs to began with `template<...>`: the lines
    above it back to the end of the previous statement or block (`__global__
    __launch_bounds__(...)` may stand between the two)."""
    j = i
    while j >= 0:
        head = lines[j].strip()
        if head.startswith("template"):
            return True
        if j < i and (not head or head.startswith("#") or head.endswith((";", "}", "{"))):
            return False
        j -= 1
    return False


def split_text(text: str, name: str) -> list[str]:
    """FILE's text once per template-argument list, each with only that list's instantiations."""
    lines = text.split("\n")
    groups: dict[str, list[int]] = {}  # argument list -> its lines, in order of appearance
    for i, line in enumerate(lines):
        m = INSTANTIATION.match(line)
        if m:
            groups.setdefault(" ".join(m.group("args").split()), []).append(i)
    if not groups:
        fail(f"{name}: no explicit instantiations (`template void f<...>(...);`) to split")
    for i, line in enumerate(lines):
        if DEFINITION.match(line) and not INSTANTIATION.match(line) and not is_template(lines, i):
            fail(f"{name}:{i + 1}: a function that is not a template would be defined in "
                 f"every split file: {line.strip()}")
    every = {i for idx in groups.values() for i in idx}
    parts = []
    for idx in groups.values():
        keep = set(idx)
        parts.append("\n".join(l for i, l in enumerate(lines) if i not in every or i in keep))
    return parts


def patched_setup(setup: Path, rel: str, names: list[str]) -> str:
    """setup.py's text with the sources entry of rel replaced by names."""
    text = setup.read_text()
    entry = re.compile(r'^(?P<indent>\s*)"' + re.escape(rel) + r'",\s*$', re.M)
    hits = entry.findall(text)
    if len(hits) != 1:
        fail(f"{setup}: expected one sources entry \"{rel}\", found {len(hits)}")
    text = entry.sub(lambda m: "\n".join(f'{m.group("indent")}"{n}",' for n in names), text)
    compile(text, str(setup), "exec")
    return text


def split_file(src_dir: Path, rel: str) -> list[str]:
    """Everything checked first; then the split files written, setup.py patched, rel removed."""
    path, setup = src_dir / rel, src_dir / "setup.py"
    if not path.is_file():
        fail(f"{path}: no such file")
    parts = split_text(path.read_text(), str(path))
    outs = [path.with_name(f"{path.stem}_split{k}{path.suffix}") for k in range(len(parts))]
    names = [str(Path(rel).with_name(out.name)) for out in outs]
    new_setup = patched_setup(setup, rel, names)
    for out, text in zip(outs, parts):
        out.write_text(text)
    setup.write_text(new_setup)
    path.unlink()
    return names


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.split("\n\n")[1])
        return 2
    src_dir = Path(argv[0])
    for rel in argv[1:]:
        names = split_file(src_dir, rel)
        print(f"{rel}: {len(names)} files ({', '.join(Path(n).name for n in names)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
