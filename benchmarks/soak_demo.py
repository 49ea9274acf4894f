"""Load and soak test of the demo server, loopback only and bounded in count and time.

    python -m benchmarks.soak_demo [--data ../shared/data/iu_xray] [--requests 100] [--bad 10]
                                   [--settle-s 120] [--queue-size 128] [--weights FOLDER] [--json OUT]

Three phases, each against a fresh `python app.py` on 127.0.0.1:

1. burst: ``--requests`` concurrent API requests (real films as PNG, the same films as large
   16-bit DICOMs with a patient name in them, and ``--bad`` unreadable files), each upload ->
   /generate -> answer. Every request must end answered, refused with a sentence (a bad file), or
   refused as busy with a Retry-After; one that ends otherwise is "lost". Prints p50/p95 latency,
   the server's RSS after start, at its peak and ``--settle-s`` after the burst, and the files
   left in its folder.
2. SIGTERM in the middle of a burst: the files left on disk afterwards (should be none).
3. bad weight folders (a wrong-typed config value, a config that does not match the weights,
   all-NaN weights, a corrupt weights file): for the CLI and app.py, the exit code, the stderr
   lines, the peak RSS and the time until exit.

With no ``--data`` the films are the SynthCXR examples in assets/examples.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "assets" / "examples"
DEFAULT_WEIGHTS = REPO / "assets" / "weights" / "synthcxr"
START_TIMEOUT_S = 180
REQUEST_TIMEOUT_S = 1800  # the whole burst is bounded by this too
DICOM_SIDE = 2500  # films are upscaled to a full-size radiograph's side for the DICOMs
BAD_FILES = {
    "notes.txt": b"Findings: none. This is a text file.\n" * 20,
    "scan.pdf": b"%PDF-1.4\n" + b"\0" * 2000,
    "truncated.png": None,  # the first half of a real film, made below
    "empty.dcm": b"",
}


@dataclass
class Outcome:
    kind: str  # "answered", "refused" (a sentence on the input), "busy" (503 + Retry-After), "lost"
    seconds: float
    detail: str = ""


@dataclass
class Figures:
    requests: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    p50_s: float | None = None
    p95_s: float | None = None
    rss_start_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_settled_mb: float = 0.0
    settle_s: float = 0.0
    files_left_after_burst: dict[str, int] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)
    busy_answers: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    files_left_after_sigterm: int = -1
    sigterm_exit_code: int | None = None
    bad_weights: list[dict] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_folders() -> set[Path]:
    parent = Path(tempfile.gettempdir()) / f"rrg-demo-{os.getuid()}"
    return set(parent.glob("run-*")) if parent.is_dir() else set()


class Server:
    """`python app.py` on a free loopback port; stopped with SIGTERM on exit."""

    def __init__(self, weights: Path, queue_size: int, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        before = _run_folders()
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
        self._log = open(log, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "app.py", "--weights", str(weights), "--port", str(self.port), "--host", "127.0.0.1",
             "--queue-size", str(queue_size)], cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        started = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.proc.returncode}: {log.read_text()[-2000:]}")
            if time.monotonic() - started > START_TIMEOUT_S:
                self.stop()
                raise RuntimeError(f"app.py did not answer within {START_TIMEOUT_S} s")
            try:
                httpx.get(self.url, timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.25)
        self.folders = _run_folders() - before

    def rss_mb(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def files(self) -> list[Path]:
        return [p for folder in self.folders for p in folder.rglob("*") if p.is_file() and p.name != ".lock"]

    def leftovers(self) -> dict[str, int]:
        """The files in the server's folder: uploads, downloads and copies of the (synthetic) examples,
        which the server keeps whatever their name."""
        examples = {p.read_bytes() for p in EXAMPLES.iterdir()}
        kinds = ["download" if p.name.startswith("rrg-report-") else "example" if p.read_bytes() in examples
                 else "upload" for p in self.files()]
        return {kind: kinds.count(kind) for kind in ("upload", "download", "example")}

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class RssSampler(threading.Thread):
    """The server's peak RSS, sampled every 0.2 s."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server, self.peak, self._done = server, 0.0, threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.2):
            try:
                self.peak = max(self.peak, self.server.rss_mb())
            except psutil.Error:
                return

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak


def request(url: str, path: Path, beams: int = 1, max_length: int = 40) -> Outcome:
    """Upload one file and ask /generate for its report, as an API client does (Gradio's REST API)."""
    started = time.monotonic()
    api = url + "gradio_api/"
    try:
        with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
            upload = client.post(api + "upload", files=[("files", (path.name, path.read_bytes()))])
            upload.raise_for_status()
            filedata = {"path": upload.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}
            joined = client.post(api + "call/generate", json={"data": [filedata, None, beams, max_length]})
            if joined.status_code == 422:
                messages = [d["message"] for d in joined.json()["detail"] if not d.get("is_valid", True)]
                return Outcome("refused", time.monotonic() - started, "; ".join(messages))
            if joined.status_code == 503:
                detail = f"{joined.json().get('detail')} (Retry-After: {joined.headers.get('retry-after')})"
                kind = "busy" if joined.headers.get("retry-after") else "lost"
                return Outcome(kind, time.monotonic() - started, detail)
            joined.raise_for_status()
            event = joined.json()["event_id"]
            with client.stream("GET", api + f"call/generate/{event}") as stream:
                kind = None
                for line in stream.iter_lines():
                    if line.startswith("event: "):
                        kind = line[len("event: "):]
                    elif line.startswith("data: ") and kind in ("complete", "error"):
                        answered = kind == "complete" and json.loads(line[6:])[0]
                        return Outcome("answered" if answered else "lost", time.monotonic() - started, line[6:200])
        return Outcome("lost", time.monotonic() - started, "the stream ended without an answer")
    except (httpx.HTTPError, OSError, ValueError, KeyError) as err:
        return Outcome("lost", time.monotonic() - started, f"{type(err).__name__}: {err}")


def burst(url: str, files: list[Path]) -> list[Outcome]:
    with ThreadPoolExecutor(max_workers=len(files)) as pool:
        return list(pool.map(lambda p: request(url, p), files))


# ---------------------------------------------------------------- inputs


def films(data: Path | None, n: int) -> list[Path]:
    """n real films (IU X-Ray layout: images/<study>/<k>.png), else the SynthCXR examples, repeated."""
    found = sorted((data / "images").glob("*/0.png"))[:n] if data else sorted(EXAMPLES.glob("*.png"))
    if not found:
        raise SystemExit(f"no films found under {data}")
    return [found[i % len(found)] for i in range(n)]


def write_dicom(film: Path, out: Path) -> Path:
    """The film upscaled to DICOM_SIDE as a 12-bit MONOCHROME2 DX naming a (made-up) patient."""
    image = Image.open(film).convert("L")
    scale = DICOM_SIDE / max(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID, ds.SOPInstanceUID = DigitalXRayImageStorageForPresentation, generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "PID-424242", "19700101"
    ds.Modality, ds.ViewPosition, ds.StudyDate = "DX", "PA", "20240131"
    ds.set_pixel_data(np.asarray(image, np.uint16) * 16, "MONOCHROME2", 12)  # sets the file meta too
    ds.save_as(out, enforce_file_format=True)
    return out


def mixed_inputs(data: Path | None, n: int, bad: int, folder: Path) -> list[Path]:
    """n files: a third DICOMs, ``bad`` unreadable files, the rest PNG films, interleaved."""
    n_dicom = (n - bad) // 3
    pngs = films(data, n - bad)
    dicoms = [write_dicom(film, folder / f"Doe_Jane_{i}.dcm") for i, film in enumerate(pngs[:n_dicom])]
    contents = {**BAD_FILES, "truncated.png": pngs[0].read_bytes()[: pngs[0].stat().st_size // 2]}
    bad_files = []
    for i in range(bad):
        name = list(contents)[i % len(contents)]
        bad_files.append(folder / f"bad{i}_{name}")
        bad_files[-1].write_bytes(contents[name])
    files = dicoms + pngs[n_dicom:] + bad_files
    random.Random(0).shuffle(files)
    return files


def bad_weight_folders(weights: Path, folder: Path) -> dict[str, Path]:
    """Copies of ``weights`` broken as a hospital IT reviewer found them."""
    made = {}
    for name, change in [("config value of the wrong type", {"hyperbolic_dim": "big"}),
                         ("config that does not match the weights", {"decoder_hidden": 4096})]:
        target = Path(shutil.copytree(weights, folder / name.replace(" ", "_")))
        config = json.loads((target / "config.json").read_text())
        (target / "config.json").write_text(json.dumps({**config, **change}))
        made[name] = target
    target = Path(shutil.copytree(weights, folder / "nan"))
    tensors = load_file(target / "model.safetensors")
    save_file({k: t.fill_(float("nan")) if t.is_floating_point() else t for k, t in tensors.items()},
              str(target / "model.safetensors"))
    made["all-NaN weights"] = target
    target = Path(shutil.copytree(weights, folder / "corrupt"))
    (target / "model.safetensors").write_bytes(os.urandom(4096))
    made["corrupt weights file"] = target
    return made


# Runs a command and prints its peak RSS (KB) and CPU seconds: measured from a small process, since
# a child forked from this one (large after the burst) would count this one's pages as its own.
MEASURE = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL); "
           "u = resource.getrusage(resource.RUSAGE_CHILDREN); print(u.ru_maxrss, u.ru_utime + u.ru_stime); sys.exit(code)")


def run_measured(command: list[str]) -> dict:
    """Exit code, stderr, peak RSS (MB), wall and CPU time of one command."""
    started = time.monotonic()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    run = subprocess.run([sys.executable, "-c", MEASURE, *command], cwd=REPO, env=env, capture_output=True, text=True)
    peak_kb, cpu_s = run.stdout.split()
    stderr = run.stderr.strip()
    return {"exit": run.returncode, "stderr_lines": len(stderr.splitlines()), "stderr": stderr,
            "peak_rss_mb": round(int(peak_kb) / 1024), "seconds": round(time.monotonic() - started, 2),
            "cpu_seconds": round(float(cpu_s), 2)}


# ---------------------------------------------------------------- phases


def soak(args: argparse.Namespace, work: Path, figures: Figures) -> None:
    files = mixed_inputs(args.data, args.requests, args.bad, work)
    server = Server(args.weights, args.queue_size, work / "burst.log")
    try:
        request(server.url, films(args.data, 1)[0])  # warm-up: the first generation loads lazy parts
        figures.rss_start_mb = server.rss_mb()
        sampler = RssSampler(server)
        sampler.start()
        outcomes = burst(server.url, files)
        figures.rss_peak_mb = sampler.stop()
        time.sleep(args.settle_s)
        figures.settle_s = args.settle_s
        figures.rss_settled_mb = server.rss_mb()
        figures.files_left_after_burst = server.leftovers()
    finally:
        server.stop()
    figures.requests = len(outcomes)
    for outcome in outcomes:
        figures.outcomes[outcome.kind] = figures.outcomes.get(outcome.kind, 0) + 1
    answered = sorted(o.seconds for o in outcomes if o.kind == "answered")
    if answered:
        figures.p50_s = round(statistics.median(answered), 2)
        figures.p95_s = round(answered[min(len(answered) - 1, int(0.95 * len(answered)))], 2)
    figures.refusals = sorted({o.detail for o in outcomes if o.kind == "refused"})
    figures.busy_answers = sorted({o.detail for o in outcomes if o.kind == "busy"})[:3]
    figures.lost = [o.detail for o in outcomes if o.kind == "lost"][:5]


def sigterm_mid_burst(args: argparse.Namespace, work: Path, figures: Figures) -> None:
    files = mixed_inputs(args.data, max(4, args.requests // 3), min(args.bad, 2), work)
    server = Server(args.weights, args.queue_size, work / "sigterm.log")
    with ThreadPoolExecutor(max_workers=len(files)) as pool:
        pending = [pool.submit(request, server.url, p) for p in files]
        deadline = time.monotonic() + 60
        while sum(f.done() for f in pending) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)  # some answered, the others uploaded, queued or running
        figures.sigterm_exit_code = server.stop()
    figures.files_left_after_sigterm = len(server.files())


def bad_weights(args: argparse.Namespace, work: Path, figures: Figures) -> None:
    film = str(films(args.data, 1)[0])
    for name, folder in bad_weight_folders(args.weights, work / "bad_weights").items():
        commands = {"CLI": [sys.executable, "-m", "rrg_core", "report", film, "--weights", str(folder)],
                    "app.py": [sys.executable, "app.py", "--weights", str(folder), "--port", str(_free_port())]}
        for program in args.programs.split(","):
            figures.bad_weights.append({"folder": name, "program": program, **run_measured(commands[program])})


def main(argv: list[str] | None = None) -> Figures:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="an IU X-Ray folder (images/<study>/0.png)")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--bad", type=int, default=10)
    parser.add_argument("--settle-s", type=float, default=120)
    parser.add_argument("--queue-size", type=int, default=128)
    parser.add_argument("--phases", default="soak,sigterm,weights")
    parser.add_argument("--programs", default="CLI,app.py", help="what the bad weight folders are given to")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        for phase in args.phases.split(","):
            (Path(tmp) / phase).mkdir()
            {"soak": soak, "sigterm": sigterm_mid_burst, "weights": bad_weights}[phase](args, Path(tmp) / phase, figures)
    _print(figures)
    if args.json:
        args.json.write_text(json.dumps(asdict(figures), indent=2))
    return figures


def _print(f: Figures) -> None:
    print(f"burst: {f.requests} requests -> {f.outcomes}; latency p50 {f.p50_s} s, p95 {f.p95_s} s")
    print(f"server RSS: {f.rss_start_mb:.0f} MB after start, peak {f.rss_peak_mb:.0f} MB, "
          f"{f.rss_settled_mb:.0f} MB {f.settle_s:.0f} s after the burst; files left in its folder: {f.files_left_after_burst}")
    for text in f.refusals:
        print(f"  refused: {text}")
    for text in f.busy_answers:
        print(f"  busy: {text}")
    for text in f.lost:
        print(f"  LOST: {text}")
    print(f"SIGTERM mid-burst: exit code {f.sigterm_exit_code}, files left on disk: {f.files_left_after_sigterm}")
    for row in f.bad_weights:
        print(f"bad weights, {row['folder']}, {row['program']}: exit {row['exit']}, {row['stderr_lines']} stderr line(s), "
              f"peak RSS {row['peak_rss_mb']} MB, {row['seconds']} s ({row['cpu_seconds']} s CPU): {row['stderr'][:160]}")


if __name__ == "__main__":
    main()
