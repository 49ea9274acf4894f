"""Pretraining of the visual encoder without downloads (supervised, SimCLR, phantoms), measured by a linear probe.

    python -m train.pretrain_encoder --data ../shared/data/iu_xray --out runs/pretrain/sup128 --epochs 12
    python -m train.pretrain_encoder --data ../shared/data/iu_xray --out runs/pretrain/random128 --epochs 0
    python -m train.pretrain_encoder --data ../shared/data/iu_xray --out runs/pretrain/iu --encoder iu-xray-small --epochs 0
    python -m train.pretrain_encoder --data ../shared/data/iu_xray --out runs/pretrain/simclr128 --objective simclr
    python -m train.pretrain_encoder --data ../shared/data/iu_xray --out runs/pretrain/phantom128 --objective phantom

Nothing pretrained can be downloaded here (issue 15), so the encoder learns the IU X-Ray training
films from our labeler's labels: a linear multi-label head on its pooled vector (the vector the
diagnosis head reads), one output per observation, positive vs not, class-balanced, with
augmentations that real films vary by (exposure, gamma, blur, noise, small rotations and crops;
no horizontal flips, which swap the patient's sides). The epoch kept is the one with the best
validation AUROC; the test split is only ever scored, never trained or selected on.

Two other objectives give the same encoder other teachers. ``simclr`` learns the same training
films without labels: two augmented copies of a study must find each other in the batch (NT-Xent,
:mod:`train.ssl`); it selects nothing and keeps the last epoch. ``phantom`` trains as the
supervised objective does, on SynthCXR phantoms and their labels instead of the real films (sim
to real); the real validation split still picks the epoch (``--keep last``: the last one).
``--init`` starts the encoder from a saved one, so a phantom-pretrained encoder can then be
fine-tuned on the real films.

Every encoder, trained or not (``--epochs 0``: a frozen random one, or a released model's), is
then measured the same way: a fresh linear probe on its frozen pooled features, fitted on the
training split and selected on the validation split. The run folder holds ``visual.safetensors``
(the ``visual.*`` weights, for ``TrainConfig.init_visual``) and ``pretrain.json`` (per-epoch
validation AUROC, the probe's validation and test AUROC, the config and the wall time).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from rrg_core.checkpoint import check_complete, check_shapes, read_header, read_tensors, stored_shapes, unique_tensors
from rrg_core.config import REVTAFConfig
from rrg_core.datasets import Study, load_annotation
from rrg_core.evaluation import AUROC_MIN_POSITIVES, auroc, diagnosis_auroc
from rrg_core.labeler import label_report
from rrg_core.model import load_model
from rrg_core.observations import OBSERVATIONS, State, labels_to_states
from rrg_core.phantoms import PhantomConfig, make_phantom
from rrg_core.preprocessing import prepare_study
from rrg_core.study_dataset import augment
from rrg_core.threads import set_threads
from rrg_core.visual_encoder import VisualEncoder
from rrg_core.xray_io import read_xray

from .config import TrainConfig
from .fit import lr_lambda
from .ssl import nt_xent, projection_head

PREFIX = "visual."
WEIGHTS_NAME = "visual.safetensors"
PROBE_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)  # L2 strengths the probe is selected over on validation
PROBE_STEPS, PROBE_EVERY = 400, 20
OBJECTIVES = ("supervised", "simclr", "phantom")


@dataclass
class Films:
    """One split held in memory: normalised views and each study's states from two labelers."""

    images: Tensor  # [N, V, 1, S, S] float16, as prepare_study makes them
    states: np.ndarray  # [N, 14] our labeler's states (what is trained and selected on)
    shipped: np.ndarray  # [N, 14] the annotation's states (the CheXpert labeler), where it has them

    @property
    def positive(self) -> Tensor:
        return torch.from_numpy(self.states == State.POSITIVE).float()


def read_films(studies: Sequence[Study], config: REVTAFConfig) -> Films:
    """Every study's views read once at the encoder's size (a short film set fits in memory; re-reading
    the PNGs each epoch would cost more than the encoder on this CPU)."""
    images = torch.stack([prepare_study([read_xray(p) for p in s.image_paths], config) for s in studies])
    states = np.array([labels_to_states(label_report(s.report)) for s in studies])
    shipped = np.array([labels_to_states(s.labels) for s in studies])
    return Films(images.half(), states, shipped)


def film_augment(images: Tensor, config: REVTAFConfig, generator: torch.Generator) -> Tensor:
    """[B, V, 1, S, S] -> the same studies as other films might show them: each view gets its own
    gamma (exposure curve), :func:`rrg_core.study_dataset.augment`'s small rotation, scale, shift,
    contrast and brightness, a slight blur (focus, scatter) and detector noise. No flips."""
    mean, std = config.vision.image_mean, config.vision.image_std
    size = images.shape[-1]
    out = torch.empty_like(images)
    for b in range(images.shape[0]):
        for v in range(images.shape[1]):
            rand = torch.rand(4, generator=generator).tolist()
            pixels = (images[b, v] * std + mean).clamp(0, 1) ** (0.7 + 0.6 * rand[0])
            view = augment((pixels - mean) / std, generator)[0]
            sigma = rand[1] * size / 128  # up to 1 px at 128 px
            if sigma > 0.2:
                view = gaussian_blur(view, sigma)
            out[b, v] = view + torch.randn(view.shape, generator=generator) * (0.03 * rand[2] / std)
    return out


def gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    """[1, H, W] blurred by a separable Gaussian of ``sigma`` pixels (reflected at the border)."""
    radius = max(1, math.ceil(2.5 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    padded = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(rows, kernel.view(1, 1, -1, 1))[0]


def balanced_loss(positive: Tensor) -> nn.BCEWithLogitsLoss:
    """BCE with each observation's positives weighted by negatives / positives (capped at 50), so a
    rare finding counts as much as a common one; observations with no positive weigh 1."""
    n_pos = positive.sum(0)
    weight = ((len(positive) - n_pos) / n_pos.clamp(min=1)).clamp(1, 50)
    return nn.BCEWithLogitsLoss(pos_weight=weight)


def mean_auroc(scores: Tensor, films: Films, min_positives: int) -> tuple[float, dict]:
    """The mean AUROC over observations with ``min_positives`` (``diagnosis_auroc``), and its details."""
    result = diagnosis_auroc(scores.float().numpy(), films.states, min_positives)
    if result["mean"] is None:
        raise SystemExit(f"no observation has {min_positives} positives in this split: there is nothing to select by")
    return result["mean"], result


@torch.no_grad()
def pooled_features(encoder: VisualEncoder, images: Tensor, batch_size: int = 64) -> Tensor:
    """[N, d_model] pooled vectors of the frozen encoder (eval mode: BatchNorm's running statistics)."""
    encoder.eval()
    return torch.cat([encoder(images[i : i + batch_size].float()).pooled for i in range(0, len(images), batch_size)])


def linear_probe(features: dict[str, Tensor], films: dict[str, Films], min_positives: int) -> dict:
    """A logistic-regression probe per L2 strength on standardised frozen features, full batch; the
    strength and step kept are those with the best validation mean AUROC, then test is scored once."""
    mu, sigma = features["train"].mean(0), features["train"].std(0).clamp(min=1e-6)
    x = {split: (f - mu) / sigma for split, f in features.items()}
    target = films["train"].positive
    loss_fn = balanced_loss(target)
    best = {"val_auroc": -1.0}
    for decay in PROBE_DECAYS:
        torch.manual_seed(0)
        head = nn.Linear(x["train"].shape[1], target.shape[1])
        optimizer = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=decay)
        for step in range(1, PROBE_STEPS + 1):
            optimizer.zero_grad()
            loss_fn(head(x["train"]), target).backward()
            optimizer.step()
            if step % PROBE_EVERY == 0:
                with torch.no_grad():
                    val, _ = mean_auroc(head(x["val"]), films["val"], min_positives)
                if val > best["val_auroc"]:
                    best = {"val_auroc": val, "weight_decay": decay, "step": step,
                            "state": {k: v.clone() for k, v in head.state_dict().items()}}
    head.load_state_dict(best.pop("state"))
    with torch.no_grad():
        return {**best, **scores(head(x["test"]), films["test"], min_positives)}


def scores(logits: Tensor, films: Films, min_positives: int) -> dict:
    """Test AUROC against our labeler's states and against the annotation's (shipped) ones, with a
    bootstrap 95 % interval of the mean (a few dozen positives per observation make it wide)."""
    _, ours = mean_auroc(logits, films, min_positives)
    shipped = diagnosis_auroc(logits.float().numpy(), films.shipped, min_positives)
    return {"test_auroc": ours["mean"], "test_auroc_ci95": bootstrap_interval(logits, films, ours["mean_over"]),
            "test_per_class": ours["per_class"], "test_positives": ours["positives"],
            "test_auroc_shipped_labels": shipped["mean"], "test_per_class_shipped_labels": shipped["per_class"],
            "test_positives_shipped_labels": shipped["positives"]}


def bootstrap_interval(logits: Tensor, films: Films, observations: Sequence[str], n: int = 500) -> list[float]:
    """2.5 and 97.5 percentiles of the mean AUROC over ``observations`` on studies resampled with
    replacement (seeded, so two runs' intervals come from the same resamples)."""
    columns = [OBSERVATIONS.index(name) for name in observations]
    values, positive = logits.float().numpy()[:, columns], films.states[:, columns] == State.POSITIVE
    rng = np.random.default_rng(0)
    means = []
    for _ in range(n):
        rows = rng.integers(0, len(values), len(values))
        aurocs = [a for j in range(len(columns)) if (a := auroc(values[rows, j], positive[rows, j])) is not None]
        if aurocs:  # a tiny split's resample may lack every positive
            means.append(np.mean(aurocs))
    return np.percentile(means, [2.5, 97.5]).round(4).tolist()


class Optimiser:
    """AdamW with ``train.fit``'s schedule (one epoch of linear warm-up, then cosine down to lr/20)
    and gradient clipping at 1; calling it with a loss takes one step and returns the loss."""

    def __init__(self, params: list[nn.Parameter], args: argparse.Namespace, steps_per_epoch: int) -> None:
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
        schedule = TrainConfig(lr=args.lr, min_lr=args.lr / 20, warmup_steps=steps_per_epoch, warmup_start_lr=args.lr / 100)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(schedule, args.epochs * steps_per_epoch))

    def __call__(self, loss: Tensor) -> float:
        self.optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        return loss.item()


def pretrain(encoder: VisualEncoder, config: REVTAFConfig, films: dict[str, Films], args: argparse.Namespace,
             log: list[dict]) -> nn.Linear:
    """Encoder and linear head trained together on augmented training films; after every epoch the
    head is scored on validation, and the best epoch's weights (``--keep last``: the last one's) are
    put back. Returns the head."""
    head = nn.Linear(config.d_model, films["train"].positive.shape[1])
    steps_per_epoch = len(films["train"].images) // args.batch_size
    step = Optimiser([*encoder.parameters(), *head.parameters()], args, steps_per_epoch)
    loss_fn = balanced_loss(films["train"].positive)
    generator = torch.Generator().manual_seed(args.seed)
    best, best_state, started = -1.0, None, time.time()
    for epoch in range(1, args.epochs + 1):
        encoder.train()
        order = torch.randperm(len(films["train"].images), generator=generator)
        total = 0.0
        for i in range(steps_per_epoch):
            rows = order[i * args.batch_size : (i + 1) * args.batch_size]
            images = film_augment(films["train"].images[rows].float(), config, generator)
            total += step(loss_fn(head(encoder(images).pooled), films["train"].positive[rows]))
        with torch.no_grad():
            val, details = mean_auroc(head(pooled_features(encoder, films["val"].images)), films["val"], args.min_positives)
        log.append({"epoch": epoch, "train_loss": total / max(1, steps_per_epoch), "val_auroc": val,
                    "val_per_class": details["per_class"], "elapsed_s": round(time.time() - started, 1)})
        print(f"epoch {epoch}/{args.epochs}: loss {log[-1]['train_loss']:.3f}, val AUROC {val:.3f} "
              f"({log[-1]['elapsed_s']:.0f} s)", flush=True)
        if args.keep == "last" or val > best:
            best = val
            best_state = {k: v.clone() for k, v in {**prefixed(encoder), **prefixed(head, "head.")}.items()}
    encoder.load_state_dict({k[len(PREFIX):]: v for k, v in best_state.items() if k.startswith(PREFIX)})
    head.load_state_dict({k[len("head."):]: v for k, v in best_state.items() if k.startswith("head.")})
    return head


def contrastive_pretrain(encoder: VisualEncoder, config: REVTAFConfig, images: Tensor, args: argparse.Namespace,
                         log: list[dict]) -> None:
    """SimCLR on the training films (:mod:`train.ssl`): each step takes ``batch_size`` studies, augments
    each twice (both views, as a study is read) and pulls the two pooled vectors together through a
    projection head with NT-Xent. An epoch runs ``len(images) / (2 * batch_size)`` steps, so it costs
    the encoder as many passes as a supervised epoch (each study is drawn in about every other
    epoch). No labels and no validation film are seen: the last epoch's encoder is kept."""
    head = projection_head(config.d_model)
    steps_per_epoch = max(1, len(images) // (2 * args.batch_size))
    step = Optimiser([*encoder.parameters(), *head.parameters()], args, steps_per_epoch)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.time()
    encoder.train()
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for i in range(steps_per_epoch):
            batch = images[order[i * args.batch_size : (i + 1) * args.batch_size]].float()
            pair = torch.cat([film_augment(batch, config, generator), film_augment(batch, config, generator)])
            first, second = head(encoder(pair).pooled).chunk(2)
            total += step(nt_xent(first, second, args.temperature))
        log.append({"epoch": epoch, "train_loss": total / steps_per_epoch, "elapsed_s": round(time.time() - started, 1)})
        print(f"epoch {epoch}/{args.epochs}: NT-Xent {log[-1]['train_loss']:.3f} ({log[-1]['elapsed_s']:.0f} s)", flush=True)


def phantom_films(n: int, seed: int, config: REVTAFConfig) -> Films:
    """``n`` SynthCXR phantoms as training films: rendered at 256 px (the IU films' size) and read
    with ``prepare_study`` at the encoder's size, as a real film is. The generator draws frontal
    views only, so a two-view encoder gets the frontal view twice (the film augmentations then
    differ per view). The targets are the phantom's own labels (what its report states)."""
    phantoms = [make_phantom(seed, i, PhantomConfig(size=256)) for i in range(n)]
    images = torch.stack([prepare_study([p.image], config) for p in phantoms])
    states = np.array([labels_to_states(p.labels) for p in phantoms])
    return Films(images.half(), states, states)


def prefixed(module: nn.Module, prefix: str = PREFIX) -> dict[str, Tensor]:
    return {prefix + k: v for k, v in unique_tensors(module).items()}


def save_visual(encoder: VisualEncoder, path: Path) -> None:
    """The encoder's weights under REVTAF's names (``visual.*``), safetensors only."""
    save_file(prefixed(encoder), str(path))


def load_visual(encoder: VisualEncoder, path: str | Path) -> None:
    """Copy ``visual.*`` weights from a safetensors file into ``encoder``, after checking every name,
    shape and value (an encoder pretrained at another image size or view count is refused with
    the first tensor that differs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"init_visual: no file {path}")
    header = read_header(path)
    stored = stored_shapes(header)
    foreign = sorted(k for k in stored if not k.startswith(PREFIX))
    if foreign or not stored:
        raise ValueError(f"init_visual: {path} must hold only visual.* tensors, found {foreign[:3] or 'none'}")
    expected = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    check_shapes(path, {k[len(PREFIX):]: v for k, v in stored.items()}, expected)
    tensors = {k[len(PREFIX):]: v for k, v in read_tensors(path, header).items()}
    check_complete(path, encoder, tensors)
    encoder.load_state_dict(tensors)


def start_encoder(name: str, image_size: int, views: int) -> tuple[VisualEncoder, REVTAFConfig]:
    """``random``: the small preset's encoder, freshly initialised, at ``image_size`` and ``views``;
    otherwise a released model's (a name or folder) encoder at its own size and views."""
    if name == "random":
        config = REVTAFConfig.preset("small", vision={"image_size": image_size, "n_views": views})
        return VisualEncoder(config), config
    model = load_model(name)
    return model.visual, model.config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a dataset folder in the R2Gen layout (IU X-Ray)")
    parser.add_argument("--out", required=True, help="the run folder")
    parser.add_argument("--encoder", default="random", help="'random' or released weights (a name or folder)")
    parser.add_argument("--image-size", type=int, default=128, help="input size of a random encoder")
    parser.add_argument("--views", type=int, choices=(1, 2), default=2, help="views of a random encoder")
    parser.add_argument("--init", default=None, help="a visual.safetensors to start a random encoder from")
    parser.add_argument("--objective", choices=OBJECTIVES, default="supervised",
                        help="supervised: IU labels; simclr: IU films, no labels; phantom: SynthCXR phantoms' labels")
    parser.add_argument("--epochs", type=int, default=12, help="pretraining epochs; 0 probes the frozen encoder")
    parser.add_argument("--keep", choices=("best", "last"), default="best",
                        help="the labelled objectives' epoch kept: best validation AUROC of their head, or the last")
    parser.add_argument("--phantoms", type=int, default=2000, help="phantoms generated for --objective phantom")
    parser.add_argument("--temperature", type=float, default=0.2, help="NT-Xent temperature for --objective simclr")
    parser.add_argument("--limit", type=int, default=None, help="train on at most this many training studies")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--min-positives", type=int, default=AUROC_MIN_POSITIVES,
                        help="observations with fewer validation/test positives stay out of the mean AUROC")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    encoder, config = start_encoder(args.encoder, args.image_size, args.views)
    if args.init:
        load_visual(encoder, args.init)
    splits = load_annotation(args.data)
    splits["train"] = splits["train"][: args.limit]
    films = {split: read_films(studies, config) for split, studies in splits.items()}
    print(f"read {', '.join(f'{len(f.images)} {s}' for s, f in films.items())} studies at "
          f"{config.vision.image_size} px, {config.vision.n_views} view(s) ({time.time() - started:.0f} s)", flush=True)
    log: list[dict] = []
    result: dict = {"args": vars(args), "vision": config.to_dict()["vision"], "d_model": config.d_model, "epochs": log}
    if args.epochs > 0 and args.objective == "simclr":
        contrastive_pretrain(encoder, config, films["train"].images, args, log)
        save_visual(encoder, out / WEIGHTS_NAME)
    elif args.epochs > 0:
        taught = films
        if args.objective == "phantom":  # the real films stay for selection (val) and the probe
            taught = {**films, "train": phantom_films(args.phantoms, args.seed, config)}
            print(f"rendered {args.phantoms} phantoms ({time.time() - started:.0f} s)", flush=True)
        head = pretrain(encoder, config, taught, args, log)
        save_visual(encoder, out / WEIGHTS_NAME)
        kept = log[-1] if args.keep == "last" else max(log, key=lambda row: row["val_auroc"])
        with torch.no_grad():
            joint = scores(head(pooled_features(encoder, films["test"].images)), films["test"], args.min_positives)
        result["joint_head"] = {"kept_epoch": kept["epoch"], "val_auroc": kept["val_auroc"], **joint}
    features = {split: pooled_features(encoder, f.images) for split, f in films.items()}
    result["probe"] = linear_probe(features, films, args.min_positives)
    result["wall_s"] = round(time.time() - started, 1)
    (out / "pretrain.json").write_text(json.dumps(result, indent=2))
    probe = result["probe"]
    summary = {k: probe[k] for k in ("val_auroc", "test_auroc", "test_auroc_shipped_labels")}
    print(f"linear probe: {json.dumps(summary)}; {result['wall_s']:.0f} s; {out}", flush=True)


if __name__ == "__main__":
    main()
