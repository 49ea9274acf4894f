"""Fit a weights folder's input gate and calibration, and write them beside its model.safetensors
(``gate.json``, ``gate.safetensors``, ``calibration.json``; the model itself is not rewritten).

    python -m train.fit_gate --weights assets/weights/synthcxr --trained-on "synthetic phantoms" \\
        --phantoms 600 --seed 11 --radiographs ../shared/data/iu_xray --test-phantoms 300 --test-seed 7
    python -m train.fit_gate --weights assets/weights/iu-xray-small --trained-on "real chest radiographs (IU X-Ray)" \\
        --data ../shared/data/iu_xray --test-data ../shared/data/iu_xray

In-distribution data: fresh SynthCXR phantoms of two seeds (the feature distribution, then the
held-out studies for the threshold, the distance scale and the calibration), or a dataset's
train split and its val split (never its test split). Weights that read two views are observed
both with their two views and with the frontal view alone (the demo's usual upload). The
radiograph check is fitted against synthetic non-radiographs (``rrg_core.negatives``) and the
in-distribution films turned by 90 degrees; ``--radiographs DIR`` adds the frontal films of
another dataset's train split as radiographs it must accept. With test data, the held-out ECE
and the flagged share are measured, the model card gets a section on them, and ``--figure``
draws the reliability diagram.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rrg_core.calibration import BINS, Calibration, expected_calibration_error, reliability
from rrg_core.datasets import Study, load_split
from rrg_core.gate import Gate, Observation, image_statistics, observe
from rrg_core.model import REVTAF
from rrg_core.negatives import negatives
from rrg_core.observations import State
from rrg_core.phantoms import write_dataset
from rrg_core.preprocessing import prepare_study
from rrg_core.study_dataset import study_loader
from rrg_core.xray_io import read_xray

from .model_card import set_section

CARD_SECTION = "Input gate and calibration (measured)"


@dataclass
class Studies:
    """A set of studies observed as the model reads them (native) and frontal view only."""

    native: Observation
    frontal: Observation | None  # None for one-view weights
    positive: np.ndarray  # [N, 14] truth: the observation is positive

    def both(self) -> Observation:
        return self.native if self.frontal is None else _concat([self.native, self.frontal])


def _concat(parts: list[Observation]) -> Observation:
    return Observation(*(torch.cat([getattr(p, f) for p in parts]) for f in ("stats", "features", "distances", "p_positive")))


def observe_studies(model: REVTAF, studies: list[Study], batch_size: int = 32) -> Studies:
    """Observe ``studies`` batch by batch (images read as the training loader reads them)."""
    model.eval()
    native, frontal, truth = [], [], []
    for batch in study_loader(studies, model.config, model.tokenizer, batch_size=batch_size):
        images = batch["images"]
        native.append(observe(model, images))
        if images.shape[1] > 1:
            frontal.append(observe(model, images[:, :1].expand_as(images).contiguous()))
        truth.append((batch["states"] == State.POSITIVE).numpy())
    return Studies(_concat(native), _concat(frontal) if frontal else None, np.concatenate(truth))


def statistics_of(model: REVTAF, pixels: list[np.ndarray]) -> torch.Tensor:
    """Gate statistics of grayscale images as the model would read them (frontal view)."""
    c = model.config
    prepared = torch.stack([prepare_study([p], model.config)[0, 0] for p in pixels])
    return image_statistics((prepared * c.vision.image_std + c.vision.image_mean).clamp(0, 1))


def frontal_pixels(studies: list[Study]) -> list[np.ndarray]:
    return [read_xray(s.image_paths[0]).pixels for s in studies]


def non_radiograph_stats(model: REVTAF, films: list[np.ndarray], n: int, seed: int) -> torch.Tensor:
    """Statistics of ``n`` synthetic non-radiographs and of ``films`` turned 90 degrees either way."""
    pictures = [x.pixels for _, x in negatives(n, seed)]
    turned = [np.rot90(f, 1 if i % 2 else -1) for i, f in enumerate(films)]
    return statistics_of(model, pictures + turned)


def flagged_share(gate: Gate, observation: Observation) -> float:
    """Share of studies the gate flags (out of distribution) or refuses."""
    flagged = [c.out_of_distribution for c in gate.check(observation.stats, observation.features)]
    return float(np.mean(flagged))


def ece_pair(calibration: Calibration, observation: Observation, positive: np.ndarray) -> tuple[float, float]:
    raw = observation.p_positive.numpy()
    return expected_calibration_error(raw, positive), expected_calibration_error(calibration.calibrate_all(raw), positive)


def draw_reliability(path: Path, title: str, raw: np.ndarray, calibrated: np.ndarray, positive: np.ndarray) -> None:
    """A reliability diagram (observed frequency against mean prediction per bin), raw and calibrated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.8, 4.6), dpi=110)
    axis.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
    for p, name, marker in ((raw, "raw", "o"), (calibrated, "calibrated", "s")):
        mean_p, frequency, counts = reliability(p, positive, BINS)
        used = counts > 0
        ece = expected_calibration_error(p, positive)
        axis.plot(mean_p[used], frequency[used], marker=marker, label=f"{name} (ECE {ece:.3f})")
    axis.set(xlabel="predicted P(positive)", ylabel="observed frequency of positive", xlim=(0, 1), ylim=(0, 1),
             title=title)
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def in_distribution(args: argparse.Namespace, tmp: Path) -> tuple[list[Study], list[Study], str]:
    """(studies for the feature distribution, held-out studies, where they came from)."""
    if args.phantoms:
        fit = load_split(write_dataset(tmp / "fit", n=args.phantoms, seed=args.seed), "all")
        held = load_split(write_dataset(tmp / "held", n=args.phantoms, seed=args.seed + 1), "all")
        return fit, held, f"{args.phantoms} + {args.phantoms} fresh SynthCXR phantoms (seeds {args.seed}, {args.seed + 1})"
    fit = load_split(args.data, "train")[: args.fit_limit]
    held = load_split(args.data, "val")
    return fit, held, f"{Path(args.data).name} train ({len(fit)} studies) and val ({len(held)} studies)"


def test_studies(args: argparse.Namespace, tmp: Path) -> tuple[list[Study], str] | None:
    if args.test_phantoms:
        root = write_dataset(tmp / "test", n=args.test_phantoms, seed=args.test_seed)
        return load_split(root, "all"), f"{args.test_phantoms} fresh SynthCXR phantoms (seed {args.test_seed})"
    if args.test_data:
        return load_split(args.test_data, "test"), f"{Path(args.test_data).name} test split"
    return None


def fit_gate(model: REVTAF, folder: Path, args: argparse.Namespace) -> dict:
    """Fit, save and (with test data) measure; returns the measured numbers."""
    with tempfile.TemporaryDirectory() as tmp:
        fit_studies, held_studies, where = in_distribution(args, Path(tmp))
        fit, held = observe_studies(model, fit_studies), observe_studies(model, held_studies)
        films = frontal_pixels(fit_studies)
        negative = non_radiograph_stats(model, films, args.negatives, args.negative_seed)
        extra = None
        if args.radiographs:
            extra = statistics_of(model, frontal_pixels(load_split(args.radiographs, "train")[: args.fit_limit]))
        gate = Gate.fit(fit.both(), held.both(), negative, trained_on=args.trained_on, fitted_on=where,
                        extra_radiograph_stats=extra, quantile=args.quantile)
        calibration = Calibration.fit(held.native.p_positive.numpy(), held.positive, fitted_on=where)
        gate.save(folder)
        calibration.save(folder)
        measured = {"fitted on": where, "OOD threshold": gate.threshold,
                    "held-out flagged": flagged_share(gate, held.both())}
        test = test_studies(args, Path(tmp))
        if test is not None:
            observed = observe_studies(model, test[0])
            raw = observed.native.p_positive.numpy()
            calibrated = calibration.calibrate_all(raw)
            measured |= {"tested on": test[1], "test flagged": flagged_share(gate, observed.both()),
                         "ECE raw": expected_calibration_error(raw, observed.positive),
                         "ECE calibrated": expected_calibration_error(calibrated, observed.positive)}
            if args.figure:
                draw_reliability(Path(args.figure), f"{folder.name}: {test[1]}", raw, calibrated, observed.positive)
            set_section(folder, CARD_SECTION, card_text(measured, args.figure))
    return measured


def card_text(measured: dict, figure: str | None) -> str:
    lines = [
        f"Fitted with `python -m train.fit_gate` on {measured['fitted on']}; measured on {measured['tested on']}.",
        "",
        f"- **Out-of-distribution flag**: threshold {measured['OOD threshold']:.2f} on the gate's score "
        f"(Mahalanobis distance of image statistics, pooled visual features and entity scores); "
        f"{100 * measured['held-out flagged']:.1f} % of the held-out studies and "
        f"{100 * measured['test flagged']:.1f} % of the test studies are flagged or refused.",
        f"- **Calibration** (Platt scaling of each observation's P(positive), fitted on the held-out studies): "
        f"ECE of P(positive) on the test studies {measured['ECE raw']:.3f} raw, "
        f"**{measured['ECE calibrated']:.3f} calibrated** (15 equal-width bins, all observations pooled).",
        "- Non-radiographs and other test sets: `python -m benchmarks.bench_gate`, `docs/input-gate.md`.",
    ]
    if figure:
        lines.append(f"- Reliability diagram: `{figure}`.")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True, help="a weights folder (its model.safetensors is only read)")
    parser.add_argument("--trained-on", required=True, help='what the page says the weights saw, e.g. "synthetic phantoms"')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--phantoms", type=int, default=0, help="N fresh phantoms per in-distribution set")
    source.add_argument("--data", help="a dataset folder: its train split (fit) and val split (held out)")
    parser.add_argument("--seed", type=int, default=11, help="phantom seed of the fit set (held-out: seed + 1); "
                                                            "not the training seed (0) nor the evaluation seed (7)")
    parser.add_argument("--fit-limit", type=int, default=1000, help="at most this many train-split studies")
    parser.add_argument("--radiographs", help="a dataset folder whose train-split frontal films the check must accept")
    parser.add_argument("--negatives", type=int, default=400, help="synthetic non-radiographs to fit the check on")
    parser.add_argument("--negative-seed", type=int, default=1)
    parser.add_argument("--quantile", type=float, default=0.98, help="of held-out scores: the OOD threshold")
    parser.add_argument("--test-phantoms", type=int, default=0)
    parser.add_argument("--test-seed", type=int, default=7)
    parser.add_argument("--test-data", help="a dataset folder whose test split measures the result")
    parser.add_argument("--figure", help="write the reliability diagram here (PNG)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    folder = Path(args.weights)
    torch.manual_seed(0)
    measured = fit_gate(REVTAF.from_pretrained(folder), folder, args)
    print(json.dumps(measured, indent=2))
    return measured


if __name__ == "__main__":
    main()
