"""What the input gate catches, what it lets through, how calibrated P(positive) is, and what
the gate costs: one table per weights folder.

    python -m benchmarks.bench_gate [--weights assets/weights/synthcxr assets/weights/iu-xray-small]
                                    [--iu ../shared/data/iu_xray] [--n 300] [--negatives 400]

Sets (none of them used to fit the gates, see train.fit_gate):
- non-radiographs: synthetic ones of another seed (``rrg_core.negatives``) and every picture of at
  least 64 px found in the installed Python packages at run time (sample data, test baselines,
  icons), each also in grayscale; never stored in the repository;
- fresh SynthCXR phantoms of an unseen seed (13), and the same turned by 90 degrees;
- IU X-Ray test films (two views, and the frontal view alone), and the frontal turned by 90 degrees.

"flagged" counts refused images too (a refused image is also out of distribution).
"""
from __future__ import annotations

import argparse
import io
import site
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rrg_core.calibration import expected_calibration_error
from rrg_core.datasets import load_split
from rrg_core.gate import COLOUR_LIMIT, annotate, gate_features, observe, refuse_colour
from rrg_core.negatives import negatives
from rrg_core.observations import OBSERVATIONS
from rrg_core.phantoms import write_dataset
from rrg_core.pipeline import ReportPipeline
from rrg_core.preprocessing import prepare_study
from rrg_core.xray_io import UnreadableImage, XRay, read_xray
from train.fit_gate import observe_studies

UNSEEN_PHANTOM_SEED = 13
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def package_pictures() -> list[XRay]:
    """Pictures shipped inside installed packages, read as uploads, plus grayscale copies."""
    found = []
    for root in map(Path, site.getsitepackages()):
        for path in sorted(root.rglob("*")):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(path) as img:
                    if min(img.size) < 64:
                        continue
                    gray = io.BytesIO()
                    img.convert("L").save(gray, format="PNG")
                found += [read_xray(path), read_xray(gray.getvalue())]
            except (UnreadableImage, OSError, ValueError):
                continue
    return found


def verdicts(reporter: ReportPipeline, studies: list[list[np.ndarray | XRay]]) -> tuple[np.ndarray, np.ndarray]:
    """(flagged, refused) per study, as the pipeline decides them (without the decoder)."""
    flagged, refused = [], []
    for start in range(0, len(studies), 32):
        chunk = studies[start : start + 32]
        images = torch.stack([prepare_study(views, reporter.config) for views in chunk])
        seen = observe(reporter.model, images)
        for views, check in zip(chunk, reporter.gate.check(seen.stats, seen.features)):
            colour = max(getattr(v, "colour", 0.0) for v in views)
            refused.append(not check.radiograph or colour > COLOUR_LIMIT)
            flagged.append(refused[-1] or check.out_of_distribution)
    return np.array(flagged), np.array(refused)


def share(values: np.ndarray) -> str:
    return f"{100 * values.mean():5.1f} % of {len(values)}"


def turned(pixels: list[np.ndarray]) -> list[list[np.ndarray]]:
    return [[np.ascontiguousarray(np.rot90(p, 1 if i % 2 else -1))] for i, p in enumerate(pixels)]


def latency_share(reporter: ReportPipeline, xray: XRay, repeats: int = 7) -> tuple[float, float]:
    """Median seconds of one whole report, and of the gate's and calibration's own work in it
    (timed apart: on a shared CPU the report's own spread is larger than the gate)."""
    images = torch.stack([prepare_study([xray], reporter.config)])
    encoded = reporter.model.encode(images)
    report = reporter([xray])
    whole, gate = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        reporter([xray])
        whole.append(time.perf_counter() - start)
        start = time.perf_counter()
        annotate(report, reporter.gate, reporter.calibration, *gate_features(reporter.model, images, encoded))
        refuse_colour(report, [xray.colour])
        gate.append(time.perf_counter() - start)
    return statistics.median(whole), statistics.median(gate)


def calibration_rows(reporter: ReportPipeline, observed) -> list[str]:
    raw = observed.native.p_positive.numpy()
    calibrated = reporter.calibration.calibrate_all(raw)
    per_raw = [expected_calibration_error(raw[:, i], observed.positive[:, i]) for i in range(len(OBSERVATIONS))]
    per_cal = [expected_calibration_error(calibrated[:, i], observed.positive[:, i]) for i in range(len(OBSERVATIONS))]
    return [
        f"  ECE of P(positive), all observations pooled: raw {expected_calibration_error(raw, observed.positive):.3f}, "
        f"calibrated {expected_calibration_error(calibrated, observed.positive):.3f}",
        f"  ECE per observation, mean (max): raw {np.mean(per_raw):.3f} ({max(per_raw):.3f}), "
        f"calibrated {np.mean(per_cal):.3f} ({max(per_cal):.3f})",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", nargs="+", default=["assets/weights/synthcxr", "assets/weights/iu-xray-small"])
    parser.add_argument("--iu", default="../shared/data/iu_xray", help="IU X-Ray folder (its test split)")
    parser.add_argument("--n", type=int, default=300, help="studies per in-distribution set")
    parser.add_argument("--negatives", type=int, default=400, help="synthetic non-radiographs (seed 2)")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)

    synthetic = [x for _, x in negatives(args.negatives, seed=2)]
    real = package_pictures()
    iu_test = load_split(args.iu, "test")[: args.n] if Path(args.iu, "annotation.json").is_file() else []
    iu_views = [[read_xray(p) for p in s.image_paths[:2]] for s in iu_test]
    with tempfile.TemporaryDirectory() as tmp:
        phantoms = load_split(write_dataset(Path(tmp) / "p", n=args.n, seed=UNSEEN_PHANTOM_SEED), "all")
        phantom_views = [[read_xray(s.image_paths[0])] for s in phantoms]
        for folder in args.weights:
            model = ReportPipeline.from_pretrained(folder)
            print(f"\n{folder} (trained on {model.gate.trained_on if model.gate else '?'})")
            if model.gate is None:
                print("  no gate for these weights: fit one with python -m train.fit_gate")
                continue
            print(f"  OOD threshold {model.gate.threshold:.2f}")
            rows = [
                ("synthetic non-radiographs (seed 2)", [[x] for x in synthetic]),
                ("pictures from installed packages (+ grayscale)", [[x] for x in real]),
                (f"SynthCXR phantoms, unseen seed {UNSEEN_PHANTOM_SEED}", phantom_views),
                ("SynthCXR phantoms turned 90 degrees", turned([v[0].pixels for v in phantom_views])),
            ]
            if iu_views:
                rows += [
                    ("IU X-Ray test, as read (two views where the weights read two)", iu_views),
                    ("IU X-Ray test, frontal view only", [v[:1] for v in iu_views]),
                    ("IU X-Ray test, frontal turned 90 degrees", turned([v[0].pixels for v in iu_views])),
                ]
            for name, studies in rows:
                flagged, refused = verdicts(model, studies)
                print(f"  {name:58s} flagged {share(flagged)}   refused {share(refused)}")
            own = phantoms if "phantom" in model.gate.trained_on else iu_test
            if model.calibration is not None and own:
                print(f"  calibration on {'unseen phantoms' if own is phantoms else 'IU X-Ray test'}:")
                print("\n".join(calibration_rows(model, observe_studies(model.model, own))))
            whole, gate = latency_share(model, phantom_views[0][0])
            print(f"  one report {1000 * whole:.0f} ms, of which the gate and calibration {1000 * gate:.1f} ms: "
                  f"the gate adds {100 * gate / (whole - gate):.2f} %")


if __name__ == "__main__":
    main()
