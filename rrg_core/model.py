"""REVTAF: the whole model, one tensor-level ``nn.Module``.

    image(s) -> VisualEncoder -> patch tokens, pooled vector                          encode()
    region/entity prompts -> TextEncoder -> FVTAF.align_regions (MPSA) -> entity scores
    entity scores -> LRE (Poincare ball) -> retrieve top-k from the ReferenceIndex    retrieve()
    pooled + top-k references -> DiagnosisHead -> 14 x 4 state logits                 diagnose()
    top-1 reference's sentences -> FVTAF.align_global (MPSA) -> fused memory          decode()
    state prompt tokens + memory -> ReportDecoder (BERT) -> candidate reports

Tensors in, tensors (and the decoder's candidate texts) out: turning X-rays into inputs and
outputs into a :class:`~rrg_core.outputs.Report` is :class:`rrg_core.pipeline.ReportPipeline`'s job.

Loss (``forward``) = LM + 4 cls + beta align + alpha rank + entity (+ grounding on data with
masks; each term also returned on its own). Switches: ``lre.enabled`` (off: retrieval by cosine
on the pooled image vector, no ranking loss), ``fvtaf.enabled`` (off: the decoder reads the plain
patch tokens), ``fvtaf.mpsa`` (off: softmax cross-attention). All off is the PromptMRG-like baseline.

Persistence follows huggingface_hub's ``PyTorchModelHubMixin``: ``save_pretrained`` /
``from_pretrained`` / ``push_to_hub`` over a folder holding ``config.json``, ``model.safetensors``,
the tokenizer files and the reference index.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from . import checkpoint
from .config import REVTAFConfig
from .decoder import ReportDecoder
from .diagnosis import DiagnosisHead
from .fvtaf import FVTAF, consistency_loss
from .grounding import grounding_loss
from .hub import push_folder, resolve_weights
from .lre import EntityScores, LearnableRetrievalEnhancer, entity_loss
from .mpsa import MPSAOutput
from .reference_index import ReferenceIndex
from .report_text import split_sentences
from .retriever import Retriever
from .text_encoder import TextEncoder
from .tokenizer import load_tokenizer
from .visual_encoder import VisualEncoder, VisualFeatures

CONFIG_NAME = "config.json"
# Where a saved model keeps the config of each part that started from Hub weights (and the text
# encoder's own tokenizer), by config section.
HUB_PARTS = {"vision": "backbone", "text": "text_encoder", "decoder": "decoder"}
# The card a plain save_pretrained writes when the folder has none; a release writes the full one
# (train.model_card: data, metrics, limitations).
MODEL_CARD = """---
{{ card_data }}
---

# REVTAF weights

Saved with rrg-core, an implementation of REVTAF ("Learnable Retrieval Enhanced Visual-Text
Alignment and Fusion for Radiology Report Generation", ICCV 2025). This card has no measured
results: a release (`python -m train.release`) writes them.

    import rrg_core
    reporter = rrg_core.load_pipeline("PATH_OR_ORG/REPO")
    report = reporter([rrg_core.read_xray("chest.dcm")])[0]
"""


@dataclass
class Encoding:
    """Everything the image side computes before retrieval and the decoder."""

    visual: VisualFeatures
    prompts: Tensor | None  # [B, K, D] region/entity prompt embeddings (None without LRE and FVTAF)
    region: MPSAOutput | None  # the prompts' MPSA over the patch tokens; maps [B, K, V * h * w]
    entity_logits: Tensor | None  # [B, K]
    query: Tensor | None  # [B, H] retrieval embedding (None when not asked for)


@dataclass
class Diagnosis:
    """The diagnosis branch's output for a batch, with the references it read."""

    logits: Tensor  # [B, 14, 4] raw state logits
    probabilities: Tensor  # [B, 14, 4] after the prior adjustment (DiagnosisHead.decide)
    states: Tensor  # [B, 14] the argmax state of ``probabilities``
    distances: Tensor  # [B, k] to the retrieved references, ascending
    indices: Tensor  # [B, k] their rows in the reference index


@dataclass
class Decoding:
    """What the decoder read and wrote for a batch."""

    memory: Tensor  # [B, N, D] cross-attention memory
    global_: MPSAOutput | None  # the top-1 reference's sentences over the patch tokens (FVTAF on)
    states: Tensor  # [B, 14] the states the decoder was prompted with
    candidates: list[list[str]]  # per study, every finished beam's text, best first


class REVTAF(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="rrg-core",
    pipeline_tag="image-to-text",
    tags=["radiology-report-generation", "chest-x-ray", "revtaf"],
    model_card_template=MODEL_CARD,
):
    def __init__(
        self,
        config: REVTAFConfig,
        tokenizer: PreTrainedTokenizerBase,
        index: ReferenceIndex | None = None,
        *,
        saved: Path | None = None,
    ) -> None:
        """``saved``: the folder of a saved model. Parts that start from Hub weights (the paper
        preset's backbone, text encoder and decoder) are then built from the configs saved there
        (HUB_PARTS), and nothing is downloaded: their weights come from model.safetensors."""
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        part = {name: saved / folder if saved is not None else None for name, folder in HUB_PARTS.items()}
        self.visual = VisualEncoder(config, part["vision"])
        self.text = TextEncoder(config, tokenizer, part["text"])
        self.fvtaf = FVTAF(config) if config.aligns else None
        self.entity_scores = None
        self.prompt_offsets = None
        if config.aligns:
            self.entity_scores = EntityScores(len(config.text.prompts), config.fvtaf.sinkhorn_epsilon)
            # A learned vector per prompt added to its text embedding (as CoOp's learned context): a
            # text encoder trained from scratch embeds short prompts almost alike at first.
            self.prompt_offsets = nn.Parameter(torch.randn(len(config.text.prompts), config.d_model))
        self.lre = LearnableRetrievalEnhancer(config) if config.lre.enabled else None
        self.diagnosis = DiagnosisHead(config)
        self.decoder = ReportDecoder(config, tokenizer, part["decoder"])
        self.retriever = Retriever(index, config.retrieval.top_k, config.search_metric)
        self._prompt_cache: tuple[tuple, Tensor] | None = None

    @property
    def device(self) -> torch.device:
        return self.diagnosis.query.device

    @property
    def index(self) -> ReferenceIndex | None:
        """The training studies retrieved from (saved beside the weights, not in them)."""
        return self.retriever.index

    @index.setter
    def index(self, index: ReferenceIndex | None) -> None:
        self.retriever.attach(index)

    @property
    def fuses(self) -> bool:
        """Whether the decoder reads FVTAF's fused tokens (else the plain patch tokens)."""
        return self.fvtaf is not None and self.fvtaf.fuses

    # ------------------------------------------------------------------ the image side
    def encode(self, images: Tensor, *, retrieval: bool = True) -> Encoding:
        """images [B, V, 1, H, W], normalised (:func:`rrg_core.preprocessing.prepare_study`). ``retrieval=False``
        skips the retrieval embedding (``query`` is then None)."""
        visual = self.visual(images)
        prompts = region = entity_logits = None
        if self.fvtaf is not None:
            prompts = self.prompt_embeddings().unsqueeze(0).expand(images.shape[0], -1, -1)
            region = self.fvtaf.align_regions(visual.tokens, prompts)
            entity_logits = self.entity_scores(region)
        query = None
        if retrieval:
            query = self.lre(entity_logits) if self.lre is not None else F.normalize(visual.pooled, dim=-1)
        return Encoding(visual, prompts, region, entity_logits, query)

    def prompt_embeddings(self) -> Tensor:
        """[K, D] the region/entity prompts embedded (plus their learned offsets). They depend on
        the weights only, so outside training they are computed once and kept until a weight of
        the text side changes (every in-place update bumps a tensor's version counter) or the
        model moves to another device or dtype (which keeps the counters)."""
        parts = [*self.text.parameters(), *([self.prompt_offsets] if self.prompt_offsets is not None else [])]
        key = (sum(p._version for p in parts), parts[0].device, parts[0].dtype)
        cacheable = not self.training and not torch.is_grad_enabled()
        if cacheable and self._prompt_cache is not None and self._prompt_cache[0] == key:
            return self._prompt_cache[1]
        prompts = self.text(self.config.text.prompts)
        if self.prompt_offsets is not None:
            prompts = prompts + self.prompt_offsets
        self._prompt_cache = (key, prompts.detach()) if cacheable else None
        return prompts

    def retrieve(self, query: Tensor, exclude_ids: Sequence[str] | None = None) -> tuple[Tensor, Tensor]:
        """The top-k references of each query: (distances [B, k], indices [B, k]). ``exclude_ids``
        (training) keeps each study from retrieving itself."""
        return self.retriever.search(query, exclude_ids)

    def diagnose(self, encoding: Encoding, exclude_ids: Sequence[str] | None = None) -> Diagnosis:
        """Retrieve, then read the image and its top-k references' reports and labels."""
        distances, indices = self.retrieve(encoding.query, exclude_ids)
        logits = self.diagnosis(encoding.visual.pooled, *self.retriever.reports(indices), encoding.entity_logits)
        probabilities, states = self.diagnosis.decide(logits, self.config.diagnosis.decision_adjustment)
        return Diagnosis(logits, probabilities, states, distances, indices)

    def read_references(self, encoding: Encoding, diagnosis: Diagnosis) -> tuple[Tensor, MPSAOutput | None]:
        """The decoder's cross-attention memory and the global MPSA over the top-1 reference.

        The memory is both fused token sets (FVTAF) or the plain patch tokens. With the feature
        pyramid each set is averaged over 2 x 2 tokens, back to the backbone's own stride: the
        fine grid is for the heatmaps, and the decoder attends to a quarter of the tokens."""
        global_ = self._global(encoding, diagnosis.indices[:, 0])[0] if self.fuses else None
        return self._memory(encoding, global_), global_

    def _memory(self, encoding: Encoding, global_: MPSAOutput | None) -> Tensor:
        parts = [encoding.visual.tokens] if global_ is None else [encoding.region.fused, global_.fused]
        return torch.cat([encoding.visual.coarsen(p) for p in parts], dim=1)

    def _global(self, encoding: Encoding, top1: Tensor) -> tuple[MPSAOutput, Tensor, Tensor]:
        sentences, mask = self.retriever.sentences_of(top1)
        return self.fvtaf.align_global(encoding.visual.tokens, sentences, mask), sentences, mask

    # ------------------------------------------------------------------ training
    def forward(self, batch: dict, *, image_only: bool = False) -> dict[str, Tensor]:
        """batch: images [B, V, 1, H, W], report_ids / report_mask [B, T] (report tokens without
        specials), states [B, 14] (State values), study_ids (list of B str, excluded from their
        own retrieval), and with ``grounding_weight`` masks [B, 13, H, W] (the frontal view's
        finding masks, :func:`rrg_core.study_dataset.finding_masks`). Returns the total ``loss``
        and each term.

        ``image_only``: the image-side warm-up objective, the label-supervised entity scores (and
        the grounding loss) alone (no retrieval, diagnosis or decoder; the other terms are
        returned as 0). A from-scratch image encoder learns the findings far faster per second this
        way than under the full objective, whose language and ranking terms dominate it at first."""
        if image_only and self.entity_scores is None:
            raise ValueError("image_only needs the entity scores (lre.enabled or fvtaf.enabled)")
        states = batch["states"].long()
        encoding = self.encode(batch["images"], retrieval=not image_only)
        zero = encoding.visual.pooled.sum() * 0.0
        losses = {"rank": zero, "entity": zero, "ground": zero, "align": zero, "cls": zero, "lm": zero}
        c = self.config
        if encoding.entity_logits is not None:
            losses["entity"] = entity_loss(encoding.entity_logits, states)
        if c.fvtaf.grounding_weight and "masks" in batch:
            frontal = encoding.region.maps[..., encoding.visual.view(0)]
            losses["ground"] = grounding_loss(frontal, batch["masks"], states, encoding.visual.grid)
        image_side = c.fvtaf.entity_weight * losses["entity"] + c.fvtaf.grounding_weight * losses["ground"]
        if image_only:
            losses["loss"] = image_side
            return losses
        if self.lre is not None:
            losses["rank"] = self.lre.ranking_loss(encoding.query, states)

        diagnosis = self.diagnose(encoding, batch.get("study_ids"))
        losses["cls"] = self.diagnosis.loss(diagnosis.logits, states)
        global_ = None
        if self.fuses:
            global_, sentences, mask = self._global(encoding, diagnosis.indices[:, 0])
            losses["align"] = consistency_loss(encoding.region.maps, global_.maps, encoding.prompts, sentences, mask)
        memory = self._memory(encoding, global_)  # the global alignment computed once per step
        # Teacher forcing: the true states are the prompt during training (PromptMRG).
        losses["lm"] = self.decoder.loss(memory, states, batch["report_ids"], batch["report_mask"])

        losses["loss"] = (
            losses["lm"] + c.diagnosis.cls_weight * losses["cls"] + c.fvtaf.consistency_weight * losses["align"]
            + c.lre.rank_weight * losses["rank"]
            + image_side
        )
        return losses

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def decode(
        self,
        encoding: Encoding,
        diagnosis: Diagnosis,
        states: Tensor | None = None,
        *,
        num_beams: int | None = None,
        max_new_tokens: int | None = None,
        min_new_tokens: int | None = None,
        repetition_penalty: float | None = None,
        no_repeat_ngram_size: int | None = None,
    ) -> Decoding:
        """Write the reports, prompted with ``states`` [B, 14] (default: the diagnosis's argmax);
        every decoding option defaults to the config's."""
        c = self.config
        states = diagnosis.states if states is None else states.to(self.device)
        memory, global_ = self.read_references(encoding, diagnosis)
        candidates = self.decoder.generate(
            memory,
            states,
            num_beams=num_beams or c.generation.num_beams,
            max_new_tokens=max_new_tokens or c.generation.max_new_tokens,
            min_new_tokens=c.generation.min_new_tokens if min_new_tokens is None else min_new_tokens,
            repetition_penalty=repetition_penalty or c.generation.repetition_penalty,
            no_repeat_ngram_size=c.generation.no_repeat_ngram_size if no_repeat_ngram_size is None else no_repeat_ngram_size,
        )
        return Decoding(memory, global_, states, candidates)

    @torch.no_grad()
    def generate(self, images: Tensor, states: Tensor | None = None, **options) -> tuple[Encoding, Diagnosis, Decoding]:
        """encode -> diagnose -> decode in one call (``options``: see :meth:`decode`)."""
        encoding = self.encode(images)
        diagnosis = self.diagnose(encoding)
        return encoding, diagnosis, self.decode(encoding, diagnosis, states, **options)

    @torch.no_grad()
    def sentence_scores(self, memory: Tensor, states: Tensor, sentences: list[str]) -> Tensor:
        """The decoder's mean log-likelihood per token of each sentence as a report opening, for
        one study (memory [1, N, D], states [1, 14])."""
        return self.decoder.sentence_scores(memory, states, sentences)

    # ------------------------------------------------------------------ the reference index
    def sentence_embeddings(self, reports: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Each report's sentences embedded by the text encoder: [N, S, D] and mask [N, S]."""
        limit = self.config.text.max_reference_sentences
        per_report = [(split_sentences(r) or [r])[:limit] for r in reports]
        flat = [s for sentences in per_report for s in sentences]
        vectors = self.text(flat)
        out = vectors.new_zeros(len(reports), limit, vectors.shape[-1])
        mask = torch.zeros(len(reports), limit, dtype=torch.bool, device=vectors.device)
        start = 0
        for i, sentences in enumerate(per_report):
            out[i, : len(sentences)] = vectors[start : start + len(sentences)]
            mask[i, : len(sentences)] = True
            start += len(sentences)
        return out, mask

    @torch.no_grad()
    def reference_entries(self, images: Tensor, reports: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        """What the index stores for a batch of training studies: retrieval embeddings [B, H],
        sentence embeddings [B, S, D] and their mask [B, S]."""
        query = self.encode(images).query
        sentences, mask = self.sentence_embeddings(reports)
        return query.float().cpu(), sentences.cpu(), mask.cpu()

    # ------------------------------------------------------------------ persistence (PyTorchModelHubMixin)
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None = None,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        force_download: bool = False,
        texts_from: dict[str, str] | None = None,
        load_index: bool = True,
        device: str | torch.device = "cpu",
    ) -> REVTAF:
        """Load a weights folder: a name (``"synthcxr"``, the default, or ``"iu-xray-small"``), a
        local folder, or ``ORG/REPO[@REVISION]`` on the Hub (only the folder's own files are
        fetched; nothing else is downloaded). ``texts_from`` attaches report texts (id -> text)
        to an index shipped without them; ``load_index=False`` skips the folder's index.

        Everything is checked before a weight is copied (config, tokenizer, index, every tensor's
        name and shape, finite values): a bad folder fails with one sentence."""
        folder = resolve_weights(pretrained_model_name_or_path, revision=revision, cache_dir=cache_dir, token=token,
                                 force_download=force_download)
        for name in (CONFIG_NAME, checkpoint.WEIGHTS_NAME):
            if not (folder / name).is_file():
                raise ValueError(f"{folder} is not a REVTAF model folder: {name} is missing")
        return super().from_pretrained(folder, config=REVTAFConfig.load(folder / CONFIG_NAME), texts_from=texts_from,
                                       load_index=load_index, device=device)

    @classmethod
    def _from_pretrained(
        cls, *, model_id: str, config: REVTAFConfig, texts_from: dict[str, str] | None, load_index: bool,
        device: str | torch.device, **_: object,
    ) -> REVTAF:
        folder = Path(model_id)
        try:
            tokenizer = load_tokenizer(folder)
        except Exception as err:  # tokenizers raise many types for a broken tokenizer.json
            raise ValueError(f"cannot load the tokenizer in {folder}: {err}") from err
        if config.decoder.vocab_size and len(tokenizer) != config.decoder.vocab_size:
            raise ValueError(f"the tokenizer in {folder} has {len(tokenizer)} tokens, "
                             f"config.json says {config.decoder.vocab_size}")
        path = folder / checkpoint.WEIGHTS_NAME
        try:
            with torch.device("meta"):
                expected = {k: tuple(t.shape) for k, t in cls(config, tokenizer, saved=folder).state_dict().items()}
        except (RuntimeError, ValueError, TypeError, AssertionError) as err:
            raise ValueError(f"config.json describes a model that cannot be built ({err})") from err
        header = checkpoint.read_header(path)
        checkpoint.check_shapes(path, checkpoint.stored_shapes(header), expected)
        tensors = checkpoint.read_tensors(path, header)
        has_index = load_index and (folder / "reference_index.json").is_file()
        index = ReferenceIndex.load(folder, texts_from=texts_from) if has_index else None
        model = cls(config, tokenizer, index, saved=folder)
        checkpoint.check_complete(path, model, tensors)
        model.load_state_dict(tensors, strict=False)
        model.decoder.bert.tie_weights()
        return model.to(device).eval()

    def _save_pretrained(self, save_directory: Path) -> None:
        """config.json (with the tokenizer's size), the weights in their dtype (``model.half()``
        first halves the file; loading always restores float32), the tokenizer(s), the configs
        of the parts that started from Hub weights, and the index."""
        self.config.replace(decoder={"vocab_size": len(self.tokenizer)}).save(save_directory / CONFIG_NAME)
        save_file(checkpoint.unique_tensors(self), str(save_directory / checkpoint.WEIGHTS_NAME))
        self.tokenizer.save_pretrained(save_directory)
        parts = {"vision": self.visual.backbone, "text": self.text.bert, "decoder": self.decoder.bert}
        for section, folder in HUB_PARTS.items():
            if getattr(self.config, section).hub_id:
                parts[section].config.save_pretrained(save_directory / folder)
        if self.config.text.hub_id:
            self.text.tokenizer.save_pretrained(save_directory / HUB_PARTS["text"])
        if self.index is not None:
            self.index.save(save_directory)

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Save to a temporary folder and upload it with :func:`rrg_core.hub.push_folder` (only the
        folder's safe file types; ``revision`` creates a branch). Returns the commit URL."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return push_folder(tmp, repo_id, **kwargs)


def load_model(weights: str | os.PathLike | None = None, **kwargs) -> REVTAF:
    """One call to a ready tensor-level model: a named one (default ``"synthcxr"``), a local
    folder or a Hub repo. For reports from X-rays use :func:`rrg_core.pipeline.load_pipeline`."""
    return REVTAF.from_pretrained(weights, **kwargs)
