"""One report as the demo makes it, stage by stage, end to end, and the demo's cold start.

    python -m benchmarks.bench_pipeline [--baseline ../main] [--repeats 7] [--data ../shared/data/iu_xray]

1. Stages (this process, this tree): per-stage ms of one request for the default weights on one
   frontal film and for the IU X-Ray weights on a frontal + lateral study: reading, the model's
   visual encoder, text encoder, retrieval, decoder and map upsampling (timed by hooks on those
   parts, so the model's code is untouched), the rest of the model, the tables and the 4
   overlays the page draws first. Medians of ``--repeats`` after a warm-up.
2. End to end (read -> draft, references, maps -> the rendered outputs), each configuration in a
   fresh process that runs the demo's own calls: this tree and ``--baseline`` (another checkout,
   e.g. main) with 1 torch thread, and this tree with 1 and 2 threads, with and without
   ``--load`` extra busy processes (the machine is shared: its load average is printed).
3. Cold start of ``python app.py`` (default weights): seconds to HTTP 200 and to the first report
   through the API, for this tree and the baseline, alternated.

Ratios compare figures measured in the same run; absolute times depend on the machine's load.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IU_WEIGHTS = REPO / "assets" / "weights" / "iu-xray-small"
IU_STUDY = "CXR1000_IM-0003"  # a frontal (0.png) + lateral (1.png) study of the IU X-Ray test split
GALLERY = 4  # overlays the page renders after each report (demo.ui.GALLERY_SIZE)

# Run in a fresh process by section 2, in this tree or the baseline's (the demo's calls exist in both).
END_TO_END = r"""
import json, os, statistics, sys, time
from pathlib import Path
sys.path.insert(0, os.getcwd())
import torch
from demo import rendering, service, ui
cases, repeats, threads = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
out = {}
for name, weights, paths in cases:
    loaded = service.load(weights)
    torch.set_num_threads(threads)
    try:
        import faiss
        faiss.omp_set_num_threads(threads)
    except ImportError:
        pass
    frontal, lateral = (paths + [None])[:2]
    # The model's own decoding defaults, in this tree's config layout or an older tree's (flat).
    config = (loaded.reporter if hasattr(loaded, "reporter") else loaded.model).config
    decoding = getattr(config, "generation", config)
    def once():
        start = time.perf_counter()
        views = service.read_views(frontal, lateral, lambda path: Path(path).read_bytes())
        done = service.generate(loaded, views, beams=decoding.num_beams, max_length=decoding.max_new_tokens)
        shown = service.evidence(done)
        rendering.findings_table(done.report), rendering.references_table(done.report)
        drawn = time.perf_counter()
        for _, index in rendering.heatmap_choices(shown.report)[:GALLERY]:
            ui._render(shown, index)
        return time.perf_counter() - start, time.perf_counter() - drawn
    once()
    runs = [once() for _ in range(repeats)]
    out[name] = [1000 * statistics.median(r[i] for r in runs) for i in (0, 1)]
print(json.dumps(out))
""".replace("GALLERY", str(GALLERY))


def studies(data: Path) -> dict[str, tuple[str | None, list[str]]]:
    """name -> (weights folder or None for the default, [frontal, lateral?] files)."""
    folder = data / "images" / IU_STUDY
    if not folder.is_dir():
        example = str(REPO / "assets" / "examples" / "normal.png")
        print(f"({folder} not found: a SynthCXR example stands in for the IU X-Ray study)")
        return {"default weights, 1 view": (None, [example]), "IU weights, 2 views": (str(IU_WEIGHTS), [example] * 2)}
    return {"default weights, 1 view": (None, [str(folder / "0.png")]),
            "IU weights, 2 views": (str(IU_WEIGHTS), [str(folder / "0.png"), str(folder / "1.png")])}


class Stopwatch:
    """Seconds spent in named parts of the code, accumulated per request."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def part(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def wrap(self, owner: object, attribute: str, name: str) -> None:
        """Time every call of ``owner.attribute`` (a function or bound method) as ``name``."""
        inner = getattr(owner, attribute)

        def timed(*args, **kwargs):
            with self.part(name):
                return inner(*args, **kwargs)

        setattr(owner, attribute, timed)

    def hook(self, module, name: str) -> None:
        """Time every forward of a torch module as ``name``."""
        starts = []
        module.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))
        module.register_forward_hook(lambda *_: self.seconds.__setitem__(
            name, self.seconds[name] + time.perf_counter() - starts.pop()))


REST = "rest of the model (MPSA, LRE, diagnosis, faithful drafts)"
INNER = ("visual encoder", "text encoder", "retrieval search", "decoder generate", "map upsampling")


def stages(cases: dict, repeats: int) -> None:
    from demo import service

    print(f"\n## Stages of one request (ms, medians of {repeats}; this tree, {service.REQUEST_THREADS} thread)\n")
    rows = {name: stage_medians(weights, paths, repeats) for name, (weights, paths) in cases.items()}
    order = ["read", "visual encoder", "text encoder", "retrieval search", REST, "decoder generate", "map upsampling",
             "session copy and tables", f"{GALLERY} overlays", "end to end"]
    print("| stage | " + " | ".join(rows) + " |\n| --- |" + " --- |" * len(rows))
    for part in order:
        print(f"| {part} | " + " | ".join(f"{r.get(part, 0):.0f}" for r in rows.values()) + " |")


def stage_medians(weights: str, paths: list[str], repeats: int) -> dict[str, float]:
    """Milliseconds per stage of one case's request, medians of ``repeats`` after a warm-up."""
    import rrg_core.pipeline
    from demo import rendering, service, ui

    loaded = service.load(weights)
    model, watch = loaded.reporter.model, Stopwatch()
    frontal, lateral = (paths + [None])[:2]
    watch.hook(model.visual, "visual encoder")
    watch.hook(model.text, "text encoder")
    watch.wrap(model.index, "search", "retrieval search")
    watch.wrap(model.decoder, "generate", "decoder generate")
    watch.wrap(rrg_core.pipeline, "upsample_maps", "map upsampling")

    def request() -> dict[str, float]:
        watch.seconds.clear()
        with watch.part("end to end"):
            with watch.part("read"):
                views = service.read_views(frontal, lateral, lambda path: Path(path).read_bytes())
            with watch.part("model"):
                done = service.generate(loaded, views, beams=model.config.generation.num_beams,
                                        max_length=model.config.generation.max_new_tokens)
            with watch.part("session copy and tables"):
                shown = service.evidence(done)
                rendering.findings_table(done.report), rendering.references_table(done.report)
                choices = rendering.heatmap_choices(shown.report)
            with watch.part(f"{GALLERY} overlays"):
                for _, index in choices[:GALLERY]:
                    ui._render(shown, index)
        return dict(watch.seconds)

    request()
    runs = [request() for _ in range(repeats)]
    medians = {part: 1000 * statistics.median(run[part] for run in runs) for part in runs[0]}
    medians[REST] = medians["model"] - sum(medians.get(p, 0) for p in INNER)
    return medians


def end_to_end(tree: Path, cases: dict, repeats: int, threads: int) -> dict[str, list[float]]:
    """Per case: [end-to-end ms, ms of the overlays alone], medians."""
    payload = json.dumps([[name, weights, paths] for name, (weights, paths) in cases.items()])
    done = subprocess.run([sys.executable, "-c", END_TO_END, payload, str(repeats), str(threads)], cwd=tree,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@contextmanager
def busy(n: int):
    """``n`` extra processes that each keep a core busy."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def end_to_end_table(trees: dict[str, Path], cases: dict, repeats: int, load: int) -> None:
    print(f"\n## End to end: read -> rendered outputs (ms, medians of {repeats}, fresh process each)\n")
    runs: list[tuple[str, Callable[[], dict[str, list[float]]]]] = []
    for label, tree in trees.items():
        runs.append((f"{label}, 1 thread", lambda tree=tree: end_to_end(tree, cases, repeats, 1)))
    runs.append(("this tree, 2 threads", lambda: end_to_end(REPO, cases, repeats, 2)))
    for threads in (1, 2):
        def loaded(threads=threads):
            with busy(load):
                return end_to_end(REPO, cases, repeats, threads)
        runs.append((f"this tree, {threads} thread{'s' * (threads > 1)}, +{load} busy processes", loaded))
    results = {}
    for label, run in runs:
        before = os.getloadavg()[0]
        results[label] = run()
        print(f"({label}: load average {before:.1f} before)", flush=True)
    print("\n| configuration | " + " | ".join(f"{n}: end to end | {n}: {GALLERY} overlays" for n in cases)
          + " |\n| --- |" + " --- | --- |" * len(cases))
    for label, ms in results.items():
        print(f"| {label} | " + " | ".join(f"{ms[n][0]:.0f} | {ms[n][1]:.0f}" for n in cases) + " |")

    def ratio(label: str, slow: str, fast: str) -> None:
        a, b = results[slow], results[fast]
        print(f"| {label} | " + " | ".join(f"{a[n][0] / b[n][0]:.2f}x | {a[n][1] / b[n][1]:.2f}x" for n in cases) + " |")

    if "baseline" in trees:
        ratio("baseline / this tree", "baseline, 1 thread", "this tree, 1 thread")
    ratio(f"2 threads / 1 thread, +{load} busy", f"this tree, 2 threads, +{load} busy processes",
          f"this tree, 1 thread, +{load} busy processes")
    ratio("2 threads / 1 thread", "this tree, 2 threads", "this tree, 1 thread")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cold_start(tree: Path, example: str) -> tuple[float, float]:
    """Seconds from `python app.py` to HTTP 200 on /, and to the first report through the API."""
    from gradio_client import Client, handle_file

    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1"}
    env.pop("RRG_WEIGHTS", None)
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=tree, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{tree}/app.py exited with {proc.returncode}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.05)
        answered = time.monotonic() - start
        Client(url, verbose=False).predict(handle_file(example), None, 3, 100, api_name="/generate")
        return answered, time.monotonic() - start
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def cold_start_table(trees: dict[str, Path], repeats: int) -> None:
    example = str(REPO / "assets" / "examples" / "normal.png")
    times: dict[str, list[tuple[float, float]]] = {label: [] for label in trees}
    for _ in range(repeats):
        for label, tree in trees.items():
            times[label].append(cold_start(tree, example))
    print(f"\n## Cold start of `python app.py`, default weights (s, medians of {repeats}, alternated)\n")
    print("| tree | to HTTP 200 | to the first report (API) |\n| --- | --- | --- |")
    medians = {label: [statistics.median(t[i] for t in runs) for i in (0, 1)] for label, runs in times.items()}
    for label, (answered, first) in medians.items():
        print(f"| {label} | {answered:.1f} | {first:.1f} |")
    if "baseline" in medians:
        (new_200, new_first), (old_200, old_first) = medians["this tree"], medians["baseline"]
        print(f"| baseline / this tree | {old_200 / new_200:.2f}x | {old_first / new_first:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="another checkout of this repository to compare with")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "iu_xray",
                        help="IU X-Ray in R2Gen layout (for the real study)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cold-repeats", type=int, default=3)
    parser.add_argument("--load", type=int, default=2, help="extra busy processes for the contention runs")
    args = parser.parse_args()
    trees = {"this tree": REPO, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    cases = studies(args.data)
    stages(cases, args.repeats)
    end_to_end_table(trees, cases, args.repeats, args.load)
    cold_start_table(trees, args.cold_repeats)


if __name__ == "__main__":
    main()
