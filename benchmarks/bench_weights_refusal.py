"""How fast ``python app.py --weights BROKEN`` refuses broken weights, and what checking them costs
good weights.

    python -m benchmarks.bench_weights_refusal [--baseline ../main] [--repeats 3] [--http-repeats 10]

1. Refusals: the default weights broken five ways (a hidden size and a layer count in
   config.json that the file does not have, a report length it was not trained for, one NaN,
   the file cut in half), each started as `python app.py` in this tree and in ``--baseline``
   (another checkout, e.g. main), alternated: seconds to the exit, exit code, peak RSS and the
   sentence. The report length (the decoder's position table) is only seen by the full check on
   the meta device, after torch is imported.
2. Good weights: seconds from `python app.py` to HTTP 200 on / (the checks run before it),
   ``--http-repeats`` times per tree in a shuffled order.
3. This process: the torch-free checks on the default weights, and the NaN scan by numpy
   (rrg_core.checkpoint) against torch.isfinite over the same tensors.

Medians of ``--repeats``; absolute times depend on the machine's load (printed).
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request
from collections.abc import Callable
from pathlib import Path

from benchmarks.bench_pipeline import free_port

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = REPO / "assets" / "weights" / "synthcxr"


def _edit_config(folder: Path, **changes) -> None:
    from rrg_core.config import REVTAFConfig

    path = folder / "config.json"
    REVTAFConfig.load(path).replace(**changes).save(path)


def _one_nan(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    name = next(k for k, t in tensors.items() if t.is_floating_point())
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(folder / "model.safetensors"))


def _truncate(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


BREAKS: dict[str, Callable[[Path], None]] = {
    "hidden size (decoder.hidden 256 -> 512)": lambda f: _edit_config(f, decoder={"hidden": 512}),
    "layer count (decoder.layers 3 -> 4)": lambda f: _edit_config(f, decoder={"layers": 4}),
    "report length (decoder.max_report_tokens 100 -> 120)": lambda f: _edit_config(f, decoder={"max_report_tokens": 120}),
    "NaN in one tensor": _one_nan,
    "truncated file": _truncate,
}


def refusal(tree: Path, folder: Path) -> tuple[float, int, float, str]:
    """Seconds to exit, exit code, peak RSS (MB) and the last stderr line of `app.py --weights folder`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "app.py", "--weights", str(folder), "--port", str(free_port())],
                            cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - start
    lines = err.strip().splitlines()
    return seconds, os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024, lines[-1] if lines else ""


def to_http_200(tree: Path, folder: Path) -> float:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "app.py", "--weights", str(folder), "--port", str(port)], cwd=tree,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{tree}/app.py exited with {proc.returncode}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                return time.monotonic() - start
            except OSError:
                time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def app_table(trees: dict[str, Path], folders: dict[str, Path], good: Path, repeats: int, http_repeats: int) -> None:
    print(f"\n## `python app.py --weights BROKEN` (medians of {repeats}, trees alternated)\n")
    print("| weights | tree | s to exit | exit code | peak RSS MB | sentence |\n| --- | --- | --- | --- | --- | --- |")
    for case, folder in folders.items():
        runs: dict[str, list] = {label: [] for label in trees}
        for _ in range(repeats):
            for label, tree in trees.items():
                runs[label].append(refusal(tree, folder))
        for label, results in runs.items():
            seconds, code, rss, sentence = zip(*results, strict=True)
            print(f"| {case} | {label} | {statistics.median(seconds):.1f} | {set(code)} | "
                  f"{statistics.median(rss):.0f} | {sentence[-1][:150]} |")
    times: dict[str, list[float]] = {label: [] for label in trees}
    order = [label for label in trees for _ in range(http_repeats)]
    random.Random(0).shuffle(order)  # strict alternation let the machine's load drift favour one tree
    for label in order:
        times[label].append(to_http_200(trees[label], good))
    print(f"\n## Good (default) weights: s to HTTP 200 ({http_repeats} runs per tree, in a shuffled order)\n")
    print("| tree | median | mean | min | max |\n| --- | --- | --- | --- | --- |")
    for label, seconds in times.items():
        print(f"| {label} | {statistics.median(seconds):.2f} | {statistics.mean(seconds):.2f} | {min(seconds):.2f} | "
              f"{max(seconds):.2f} |")


def scan_table(repeats: int) -> None:
    import torch
    from safetensors.torch import load_file

    from rrg_core import checkpoint
    from rrg_core.config import REVTAFConfig

    path, config = DEFAULT_WEIGHTS / "model.safetensors", REVTAFConfig.load(DEFAULT_WEIGHTS / "config.json")
    stored = checkpoint.read_header(path)
    tensors = load_file(path)
    number = 10

    def best_ms(call: Callable[[], object]) -> float:
        return min(timeit.repeat(call, number=number, repeat=repeats)) / number * 1000

    print(f"\n## This process, default weights ({path.stat().st_size / 1e6:.1f} MB, {len(stored)} tensors; "
          f"best of {repeats} x {number})\n")
    print("| step | ms |\n| --- | --- |")
    print(f"| checkpoint.check_weights (header, implied shapes, NaN scan) | "
          f"{best_ms(lambda: checkpoint.check_weights(path, config)):.1f} |")
    print(f"| checkpoint.read_header | {best_ms(lambda: checkpoint.read_header(path)):.1f} |")
    print(f"| NaN scan, numpy exponent bits (checkpoint.non_finite) | "
          f"{best_ms(lambda: checkpoint.non_finite(path, stored)):.1f} |")
    print(f"| NaN scan, torch.isfinite over the loaded tensors | "
          f"{best_ms(lambda: [k for k, t in tensors.items() if not torch.isfinite(t).all()]):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="another checkout of this repository to compare with")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--http-repeats", type=int, default=10)
    args = parser.parse_args()
    trees = {"this tree": REPO, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        folders = {}
        for i, (case, breaks) in enumerate(BREAKS.items()):
            folders[case] = Path(shutil.copytree(DEFAULT_WEIGHTS, Path(tmp) / str(i)))
            breaks(folders[case])
        app_table(trees, folders, DEFAULT_WEIGHTS, args.repeats, args.http_repeats)
    scan_table(args.repeats)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
