"""ReportPipeline: X-rays in, :class:`~rrg_core.outputs.Report` out.

    views -> prepare_study (square resize, normalise, one- or two-view layout)
          -> REVTAF.encode / diagnose                     (tensors)
          -> states: the decision rule, then the reader's overrides
          -> REVTAF.decode                                (candidate texts)
          -> faithful draft (rrg_core.faithful), maps at each view's size, references,
             input gate and calibrated probabilities    (Report)

The model is tensors only; everything a user sees is decided here, once, for the demo, the CLI
and the evaluation alike. The pipeline also owns the small files a release fits beside the
weights (``decision.json``, ``gate.json`` + ``gate.safetensors``, ``calibration.json``), so adding
them never rewrites ``model.safetensors``.

    import rrg_core
    reporter = rrg_core.load_pipeline()                      # embedded default weights
    report = reporter([rrg_core.read_xray("chest.dcm")])[0]
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .calibration import Calibration
from .decisions import DecisionRule, apply_overrides, coherent, parse_overrides, rule_text
from .faithful import make_consistent
from .gate import Gate, annotate, gate_features, n_gate_features, refuse_colour
from .hub import push_folder, resolve_weights
from .model import REVTAF, Decoding, Diagnosis, Encoding
from .observations import OBSERVATIONS, STATE_NAMES
from .outputs import AttentionMap, Reference, Report, right_share
from .preprocessing import prepare_study, upsample_maps
from .prompts import N_FINDING_PROMPTS
from .report_text import to_prose

Size = tuple[int, int]


class ReportPipeline:
    """A model plus its release-time sidecars, from studies to reports."""

    def __init__(
        self,
        model: REVTAF,
        *,
        decision: DecisionRule | None = None,
        gate: Gate | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        self.model = model
        # Per-observation thresholds tuned at release; None: the argmax rule of DiagnosisHead.decide.
        self.decision = decision
        self.gate = gate  # None: no input gate, every report says so (Report.input_check is None)
        self.calibration = calibration  # None: the table shows the model's own P(positive)

    @property
    def config(self):
        return self.model.config

    # ------------------------------------------------------------------ persistence
    @classmethod
    def from_pretrained(
        cls,
        weights: str | os.PathLike | None = None,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        force_download: bool = False,
        **kwargs,
    ) -> ReportPipeline:
        """The model (see :meth:`REVTAF.from_pretrained` for ``weights`` and ``kwargs``) with the
        folder's decision rule, gate and calibration, where it has them."""
        folder = resolve_weights(weights, revision=revision, cache_dir=cache_dir, token=token,
                                 force_download=force_download)
        model = REVTAF.from_pretrained(folder, **kwargs)
        return cls(model, decision=DecisionRule.load(folder), gate=Gate.load(folder, n_gate_features(model)),
                   calibration=Calibration.load(folder))

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """The model's folder plus the sidecars this pipeline has."""
        directory = Path(directory)
        self.model.save_pretrained(directory)
        for sidecar in (self.decision, self.gate, self.calibration):
            if sidecar is not None:
                sidecar.save(directory)
        return directory

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """As :meth:`REVTAF.push_to_hub`, with the sidecars."""
        with tempfile.TemporaryDirectory() as tmp:
            return push_folder(self.save_pretrained(tmp), repo_id, **kwargs)

    # ------------------------------------------------------------------ studies
    @torch.no_grad()
    def __call__(
        self, studies: Sequence[object | Sequence[object]], *, max_map_side: int | None = None, **options
    ) -> list[Report]:
        """Reports for studies given as XRay objects / arrays (one per study, or a list of views).
        Heatmaps come at each view's resolution, or, with ``max_map_side``, scaled down to at most
        that many pixels on the long side (a full-size radiograph's 35 maps take about a GB).
        ``options``: see :meth:`generate`."""
        studies = [s if isinstance(s, (list, tuple)) else [s] for s in studies]
        images = torch.stack([prepare_study(views, self.config) for views in studies]).to(self.model.device)
        sizes = [[_capped_size(getattr(v, "pixels", v).shape, max_map_side) for v in views] for views in studies]
        reports = self.generate(images, image_sizes=sizes, **options)
        refuse_colour(reports, [max(getattr(v, "colour", 0.0) for v in views) for views in studies])
        return reports

    @torch.no_grad()
    def generate(
        self,
        images: Tensor,
        *,
        image_sizes: Sequence[Size | Sequence[Size]] | None = None,
        states: Sequence[Mapping[str, str | int] | None] | None = None,
        consistent: bool = True,
        **options,
    ) -> list[Report]:
        """Reports for a prepared batch [B, V, 1, H, W]. Maps come at ``image_sizes``: per study
        one (H, W) for all views, or one per view (default: the input's size). ``states``: per
        study, the reader's overrides (observation -> "positive" | "negative" | "uncertain" |
        "blank"), which the draft is written from. ``consistent=False`` returns the decoder's best
        beam as it is (to measure what :mod:`rrg_core.faithful` changes); users always get the
        consistent draft. ``options``: decoding options of :meth:`REVTAF.decode`."""
        model = self.model
        encoding = model.encode(images)
        diagnosis = model.diagnose(encoding)
        overrides = [parse_overrides(o) for o in (states or [None] * len(images))]
        if len(overrides) != len(images):
            raise ValueError(f"states: one override mapping per study expected, got {len(overrides)} for {len(images)}")
        final = np.stack([apply_overrides(p, o) for p, o in zip(self.decide(diagnosis), overrides)])
        decoding = model.decode(encoding, diagnosis, torch.as_tensor(final), **options)

        sizes = list(image_sizes) if image_sizes is not None else [tuple(images.shape[-2:])] * len(images)
        shown = self.calibration.calibrate if self.calibration is not None else None  # the table's P scale
        reports = []
        for b, beams in enumerate(decoding.candidates):
            shares = self._finding_sides(encoding, b)
            consistency = None
            if consistent:
                choose = partial(self._likeliest, decoding, b)
                consistency = make_consistent(beams, final[b], shares, choose)
            reports.append(Report(
                text=to_prose(consistency.text if consistency else beams[0]),
                probabilities={o: diagnosis.probabilities[b, i].tolist() for i, o in enumerate(OBSERVATIONS)},
                states=final[b].tolist(),
                references=self._references(diagnosis, b),
                attention=self._attention_maps(encoding, decoding, b, sizes[b]),
                overrides={o: STATE_NAMES[s] for o, s in overrides[b].items()},
                decision_rules={o: rule_text(o, self.decision, self.config.diagnosis.decision_adjustment,
                                             o in overrides[b], shown) for o in OBSERVATIONS},
                consistency=consistency,
                map_right_shares=shares,
            ))
        self._check_inputs(reports, images, encoding)
        return reports

    def decide(self, diagnosis: Diagnosis) -> np.ndarray:
        """The predicted states [B, 14]: the release's thresholds where it has them, else the
        adjusted argmax; made coherent (No Finding follows the findings)."""
        probabilities = diagnosis.probabilities.cpu().numpy()
        predicted = self.decision.decide(probabilities) if self.decision else diagnosis.states.cpu().numpy()
        return coherent(predicted)

    # ------------------------------------------------------------------ evidence
    def _check_inputs(self, reports: list[Report], images: Tensor, encoding: Encoding) -> None:
        """The gate's verdict, reference percentiles and calibrated P(positive), from what the
        model computed anyway."""
        stats, features = gate_features(self.model, images, encoding) if self.gate is not None else (None, None)
        annotate(reports, self.gate, self.calibration, stats, features)

    def _finding_sides(self, encoding: Encoding, b: int) -> dict[str, float]:
        """Each finding's frontal map's share on the patient's right, at the model's input size:
        what the draft's sides follow, whatever size the shown maps have."""
        if encoding.region is None:
            return {}
        size = self.config.vision.image_size
        frontal = encoding.region.maps[b, :N_FINDING_PROMPTS, encoding.visual.view(0)]
        maps = upsample_maps(frontal, encoding.visual.grid, (size, size), size)
        return {OBSERVATIONS[k]: right_share(maps[k]) for k in range(N_FINDING_PROMPTS)}

    def _likeliest(self, decoding: Decoding, b: int, sentences: list[str]) -> int:
        """Index of the sentence the decoder finds most likely for study ``b``."""
        if len(sentences) == 1:
            return 0
        scores = self.model.sentence_scores(decoding.memory[b : b + 1], decoding.states[b : b + 1], sentences)
        return int(scores.argmax())

    def _references(self, diagnosis: Diagnosis, b: int) -> list[Reference]:
        index = self.model.index
        return [
            Reference(
                study_id=index.study_ids[i],
                distance=float(d),
                label_states=index.label_states[i].tolist(),
                text=index.texts[i] if index.texts is not None else None,
                is_global_prompt=(rank == 0 and self.model.fuses),
            )
            for rank, (d, i) in enumerate(zip(diagnosis.distances[b].tolist(), diagnosis.indices[b].tolist()))
        ]

    def _attention_maps(self, encoding: Encoding, decoding: Decoding, b: int, sizes: Size | Sequence[Size]
                        ) -> list[AttentionMap]:
        """Per view: one map per region/entity prompt and one for the global reference (the
        mask-weighted mean over its sentences), upsampled to that view's image size."""
        if encoding.region is None:
            return []
        visual, prompts = encoding.visual, self.config.text.prompts
        if isinstance(sizes[0], int):
            sizes = [sizes] * visual.n_views
        # The first prompts are the finding prompts, in OBSERVATIONS order (see rrg_core.prompts).
        names = [OBSERVATIONS[k] if k < N_FINDING_PROMPTS else None for k in range(len(prompts))]
        out = []
        for v in range(visual.n_views):
            size, span = tuple(sizes[min(v, len(sizes) - 1)]), visual.view(v)
            region = upsample_maps(encoding.region.maps[b, :, span], visual.grid, size, self.config.vision.image_size)
            out += [AttentionMap(p, "region", region[k], view=v, observation=names[k]) for k, p in enumerate(prompts)]
            if decoding.global_ is not None:
                # Masked sentences have all-zero maps, so a plain sum is the mask-weighted sum.
                merged = decoding.global_.maps[b, :, span].sum(0, keepdim=True)
                merged = upsample_maps(merged, visual.grid, size, self.config.vision.image_size)[0]
                out.append(AttentionMap("retrieved reference report", "global", merged, view=v))
        return out


def load_pipeline(weights: str | os.PathLike | None = None, **kwargs) -> ReportPipeline:
    """One call from weights to reports: a named model (default ``"synthcxr"``, embedded and
    offline), a local folder or ``ORG/REPO[@REVISION]`` on the Hub."""
    return ReportPipeline.from_pretrained(weights, **kwargs)


def _capped_size(shape: tuple[int, int], max_side: int | None) -> Size:
    """An image's (H, W), scaled down to ``max_side`` on its long side (aspect kept), if given."""
    scale = 1.0 if max_side is None else min(1.0, max_side / max(shape))
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))
