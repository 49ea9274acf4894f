"""Model cards: the README.md of a weights folder, with Hugging Face front matter."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from rrg_core.config import REVTAFConfig

DISCLAIMER = "Research demo only. Not a medical device; not for clinical use or diagnosis."


def write_model_card(
    folder: str | Path,
    *,
    title: str,
    training_data: str,
    license: str,
    command: str,
    metrics: Mapping[str, float] | None = None,
    training_time: str | None = None,
    notes: str = "",
) -> Path:
    """Write ``folder/README.md``. ``training_data`` is one line: the demo shows it."""
    folder = Path(folder)
    config = REVTAFConfig.load(folder / "config.json")
    index_info = folder / "reference_index.json"
    n_refs = len(json.loads(index_info.read_text())["study_ids"]) if index_info.is_file() else 0
    switches = f"LRE {'on' if config.lre.enabled else 'off'}, FVTAF {'on' if config.fvtaf.enabled else 'off'}, " \
               f"attention {'MPSA (Sinkhorn)' if config.fvtaf.mpsa else 'softmax'}"
    lines = [
        "---",
        f"license: {license}",
        "library_name: rrg-core",
        "pipeline_tag: image-to-text",
        "tags: [radiology-report-generation, chest-x-ray, revtaf, research-only]",
        "---",
        "",
        f"# {title}",
        "",
        f"**Training data:** {training_data}",
        "",
        f"**{DISCLAIMER}**",
        "",
        "## Model",
        "",
        f"REVTAF ({switches}); images {config.vision.image_size} px, {config.vision.n_views} view(s); "
        f"d_model {config.d_model}; decoder {config.decoder.layers} layers x {config.decoder.hidden}; "
        f"hyperbolic dim {config.lre.dim}, curvature {config.lre.curvature}; top-k {config.retrieval.top_k}; "
        f"reference index of {n_refs} studies.",
        "",
        "## Reproduce",
        "",
        "```bash",
        command,
        "```",
    ]
    if training_time:
        lines += ["", f"Training time: {training_time}."]
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    if notes:
        lines += ["", "## Notes", "", notes]
    path = folder / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def set_section(folder: str | Path, heading: str, body: str) -> Path:
    """Put ``## heading`` with ``body`` into ``folder/README.md``, replacing that section if the
    card has it already (up to the next ``## `` heading), else appending it."""
    path = Path(folder) / "README.md"
    lines = path.read_text().rstrip("\n").split("\n") if path.is_file() else []
    title = f"## {heading}"
    if title in lines:
        start = lines.index(title)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = [title, "", body, ""] if end < len(lines) else [title, "", body]
    else:
        lines += ["", title, "", body]
    path.write_text("\n".join(lines).rstrip("\n") + "\n")
    return path
