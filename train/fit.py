"""Train REVTAF: ``python -m train.fit --config synthcxr-small [--set epochs=2 ...] [--resume]``.

One script for this CPU, one GPU, several GPUs (``accelerate launch -m train.fit ...``) and
mixed precision, through Hugging Face Accelerate. Every run folder holds the config, the git
commit, a CSV log (and TensorBoard events if installed), a resumable checkpoint, and the best
model (by validation loss) as a ready ``save_pretrained`` folder with its reference index.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from rrg_core.config import REVTAFConfig
from rrg_core.datasets import label_priors, load_annotation
from rrg_core.indexing import build_index
from rrg_core.model import REVTAF
from rrg_core.report_text import normalize_report
from rrg_core.study_dataset import study_loader
from rrg_core.tokenizer import load_tokenizer, train_tokenizer

from .config import TrainConfig

LOSS_TERMS = ("loss", "lm", "cls", "align", "rank", "entity", "ground")
REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_data(cfg: TrainConfig) -> Path:
    """The dataset folder; for ``synthcxr`` the phantoms are written once under runs/data/."""
    if cfg.data != "synthcxr":
        return Path(cfg.data)
    from rrg_core.phantoms import write_dataset

    folder = REPO_ROOT / "runs" / "data" / f"synthcxr-n{cfg.synth_n}-s{cfg.synth_seed}"
    if not (folder / "annotation.json").is_file():
        write_dataset(folder, n=cfg.synth_n, seed=cfg.synth_seed)
    return folder


def lr_lambda(cfg: TrainConfig, total_steps: int):
    """Linear warm-up from warmup_start_lr to lr, then cosine down to min_lr (as a factor of lr)."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            start = cfg.warmup_start_lr / cfg.lr
            return start + (1 - start) * step / max(1, cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        floor = cfg.min_lr / cfg.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


class RunLog:
    """CSV (always: train.csv and val.csv) and TensorBoard (when installed) scalars."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.out = out
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                pass

    def __call__(self, row: dict) -> None:
        if not self.enabled:
            return
        path = self.out / f"{row['phase']}.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        if self.writer is not None:
            for k, v in row.items():
                if isinstance(v, float):
                    self.writer.add_scalar(f"{row['phase']}/{k}", v, row["step"])


def make_model(cfg: TrainConfig, train_studies, out: Path, resume: bool) -> REVTAF:
    """Tokenizer and model config come from the run folder when resuming, else from the data."""
    if resume and (out / "model_config.json").is_file():
        return REVTAF(REVTAFConfig.load(out / "model_config.json"), load_tokenizer(out / "tokenizer"))
    config = cfg.model_config()
    if config.decoder.hub_id:
        tokenizer = load_tokenizer(config.decoder.hub_id)
    else:
        reports = (normalize_report(s.report, cfg.dataset) for s in train_studies)
        tokenizer = train_tokenizer(reports, cfg.wordpiece_vocab_size)
    config = config.replace(decoder={"vocab_size": len(tokenizer)},
                            diagnosis={"label_priors": label_priors(train_studies).tolist()})
    tokenizer.save_pretrained(out / "tokenizer")
    config.save(out / "model_config.json")
    model = REVTAF(config, tokenizer)
    if cfg.init_visual:
        from .pretrain_encoder import load_visual  # here: that module imports this one

        load_visual(model.visual, cfg.init_visual)
    return model


def loader(studies, model: REVTAF, cfg: TrainConfig, *, train: bool) -> DataLoader:
    return study_loader(studies, model.config, model.tokenizer, dataset=cfg.dataset, batch_size=cfg.batch_size,
                        train=train, seed=cfg.seed, num_workers=cfg.num_workers, abnormal_share=cfg.abnormal_share)


@torch.no_grad()
def validate(model: REVTAF, batches, accelerator: Accelerator) -> dict[str, float]:
    model.eval()
    sums = {k: 0.0 for k in LOSS_TERMS}
    n = 0
    for batch in batches:
        losses = model({**batch, "study_ids": None})  # validation studies are not in the index
        for k in LOSS_TERMS:
            sums[k] += accelerator.gather(losses[k].detach()[None]).mean().item()
        n += 1
    model.train()
    return {f"val_{k}": v / max(1, n) for k, v in sums.items()}


def fit(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train and return the folder of the best model."""
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    set_seed(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    main = accelerator.is_main_process
    if main:
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        (out / "git_commit.txt").write_text(git_commit() + "\n")

    splits = load_annotation(resolve_data(cfg))
    train_studies = splits["train"][: cfg.max_train_studies]
    val_studies = splits["val"][: cfg.max_val_studies]
    with accelerator.main_process_first():
        model = make_model(cfg, train_studies, out, resume)
    if model.config.fvtaf.grounding_weight and not any(s.mask_paths for s in train_studies):
        raise SystemExit(f"grounding_weight is set but no training study in {cfg.data} has finding masks")
    core = model  # the unwrapped model: index, saving, generation
    train_loader = loader(train_studies, core, cfg, train=True)
    index_loader = loader(train_studies, core, cfg, train=False)
    val_loader = loader(val_studies, core, cfg, train=False)

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler
    )
    state = {"epoch": 0, "step": 0, "best_val": float("inf")}
    checkpoint = out / "checkpoint"
    if resume and (checkpoint / "state.json").is_file():
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / "state.json").read_text())
        accelerator.print(f"resumed from {checkpoint} at epoch {state['epoch']}, step {state['step']}")

    log = RunLog(out, main)
    started = time.time()
    # The index is rebuilt with the current weights before the first full epoch and after every
    # full epoch, so training, validation and the saved best model always retrieve with the
    # embeddings they produce. Image warm-up epochs do not retrieve.
    for epoch in range(state["epoch"], cfg.epochs):
        image_only = epoch < cfg.image_warmup_epochs
        if core.index is None and not image_only:
            core.index = build_index(core, index_loader, keep_texts=cfg.keep_index_texts)
        train_loader.dataset.epoch = epoch
        running = {k: 0.0 for k in LOSS_TERMS}
        stage = " (image warm-up)" if image_only else ""
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}{stage}", disable=not main, dynamic_ncols=True)
        for i, batch in enumerate(bar, 1):
            losses = model(batch, image_only=image_only)
            accelerator.backward(losses["loss"])
            if cfg.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            state["step"] += 1
            for k in LOSS_TERMS:
                running[k] += losses[k].item()
            bar.set_postfix({k: f"{running[k] / i:.3f}" for k in LOSS_TERMS})
            if state["step"] % cfg.log_every == 0:
                log({"phase": "train", "epoch": epoch + 1, "step": state["step"], "lr": scheduler.get_last_lr()[0],
                     **{k: running[k] / i for k in LOSS_TERMS}, "elapsed_s": round(time.time() - started, 1)})

        if image_only:  # nothing to validate or keep yet: the decoder has not trained
            accelerator.print(f"epoch {epoch + 1} (image warm-up): entity {running['entity'] / i:.3f}, "
                              f"ground {running['ground'] / i:.3f}")
            state.update(epoch=epoch + 1)
        else:
            core.index = build_index(core, index_loader, keep_texts=cfg.keep_index_texts)
            val = validate(model, val_loader, accelerator) if len(val_studies) else {"val_loss": running["loss"] / i}
            log({"phase": "val", "epoch": epoch + 1, "step": state["step"], **val,
                 "elapsed_s": round(time.time() - started, 1)})
            accelerator.print(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in val.items()))
            improved = val["val_loss"] < state["best_val"]
            state.update(epoch=epoch + 1, best_val=min(state["best_val"], val["val_loss"]))
            accelerator.wait_for_everyone()
            if improved and main:
                core.save_pretrained(out / "best")
                (out / "best" / "val_metrics.json").write_text(json.dumps({"epoch": epoch + 1, **val}, indent=2))
        accelerator.save_state(str(checkpoint))
        if main:
            (checkpoint / "state.json").write_text(json.dumps(state))
    accelerator.print(f"done in {time.time() - started:.0f} s; best model in {out / 'best'}")
    return out / "best"


def parse_overrides(pairs: list[str]) -> dict:
    """``key=value`` pairs, values parsed as JSON where possible (numbers, booleans, objects)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="synthcxr-small", help="name in train/configs/ or a JSON path")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config fields")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    args = parser.parse_args(argv)
    fit(TrainConfig.load(args.config, **parse_overrides(args.set)), resume=args.resume)


if __name__ == "__main__":
    main()
