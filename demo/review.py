"""The Review page (``/review``, started by ``app.py --review``): a reader study over a fixed
worklist, kept in a :class:`rrg_core.reader_study.ReaderStudy` file.

Each study is drafted on the spot by the served weights with their default decoding options,
through the main page's queue (``concurrency_id="generate"``: one generation at a time), and
shown with the same draft, findings, references and maps as the main page. The reader then either

- records the ReXVal error counts, an overall acceptability, comments and a corrected report, or
- (``--blinded``) picks the better of "Report A" and "Report B": the draft and the dataset's
  report in a random order. Nothing on the page tells which is which: the findings, references
  and maps belong to the draft and are not shown, the order stays on the server, and both texts
  are shown alike (as prose, :func:`rrg_core.report_text.to_prose`; the dataset's "XXXX"
  de-identification marks and any the draft copied made the same "…"). Only the export unblinds.

Keys: Alt+N next, Alt+P previous, Ctrl+S save, Ctrl+Enter save and next. Opening the page (or
pressing Enter in the name box) goes to the reader's first study not yet reviewed.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import gradio as gr

from rrg_core.reader_study import ACCEPTABILITY, ERROR_COLUMNS, ERROR_TYPES, SIGNIFICANCE, Comparison, Draft, Judgment
from rrg_core.report_text import to_prose
from rrg_core.xray_io import UnreadableImage

from . import memory, rendering, service
from .review_setup import ReviewSetup
from .ui import GALLERY_SIZE, SESSION_TTL_S, _render

VIEWS = ("Frontal", "Lateral")
COMPARE_CHOICES = [("Report A is better", "left"), ("Report B is better", "right"), ("Equal", "equal")]
KEYS_HELP = ("<p id='review-keys'><b>Keys</b>: <kbd>Alt</kbd>+<kbd>N</kbd> next · <kbd>Alt</kbd>+<kbd>P</kbd> "
             "previous · <kbd>Ctrl</kbd>+<kbd>S</kbd> save · <kbd>Ctrl</kbd>+<kbd>Enter</kbd> save and next</p>")
# One listener per browser tab, on the document, so the keys work wherever the focus is.
KEYS_JS = """
if (!window.rrgReviewKeys) {
  window.rrgReviewKeys = true;
  document.addEventListener('keydown', (event) => {
    const ctrl = event.ctrlKey || event.metaKey;
    const id = ctrl && event.key === 'Enter' ? 'review-save-next'
      : ctrl && event.code === 'KeyS' ? 'review-save'
      : event.altKey && event.code === 'KeyN' ? 'review-next'
      : event.altKey && event.code === 'KeyP' ? 'review-previous' : null;
    const button = id && document.getElementById(id);
    if (button) { event.preventDefault(); button.click(); }
  }, true);
}
"""
_MASKED = re.compile(r"\bx{2,}\b", re.IGNORECASE)


@dataclass
class Shown:
    """The study on a reader's screen (a session's state): its draft is None when its images could
    not be read, and ``draft_side`` says where the draft is in a blinded comparison."""

    index: int
    draft: Draft | None = None
    evidence: service.Evidence | None = None
    draft_side: str | None = None


def blind_text(text: str) -> str:
    """A report as the blinded comparison shows it: both as prose (sentence case, the tokenizer's
    spacing undone), de-identification marks alike."""
    return _MASKED.sub("…", to_prose(text))


def add_page(page: gr.Blocks, setup: ReviewSetup, model: Callable[[], service.LoadedModel]) -> None:
    """Add the Review page to ``page`` (call after :func:`demo.ui.build`); ``model`` gives the loaded
    model (it may wait for it)."""
    items, study = setup.items, setup.study
    task = "comparisons" if setup.blinded else "judgments"
    with_reference = any(item.reference is not None for item in items)

    with page.route("Review", "review"):
        shown = gr.State(None, time_to_live=SESSION_TTL_S)
        gr.Markdown("# Reader study" + (": blinded comparison" if setup.blinded else ": error review"))
        gr.Markdown(f"⚠️ {service.DISCLAIMER} Worklist: {setup.source}, {len(items)} studies. Weights: "
                    f"`{setup.weights}` (revision `{setup.revision}`). Your judgments are saved to "
                    f"`{study.path.name}` on the server with each save; nothing else about the studies is kept.",
                    elem_id="review-notice")
        with gr.Row(equal_height=True):
            reviewer = gr.Textbox(setup.reviewer, label="Reviewer (your name; Enter to resume)", scale=1,
                                  elem_id="review-reviewer")
            progress = gr.Markdown(elem_id="review-progress")
        with gr.Row():
            previous_button = gr.Button("◀ Previous", size="md", elem_id="review-previous")
            next_button = gr.Button("Next ▶", size="md", elem_id="review-next")
            save_button = gr.Button("Save", size="md", elem_id="review-save")
            save_next_button = gr.Button("Save and next", variant="primary", size="md", elem_id="review-save-next")
        gr.HTML(KEYS_HELP, js_on_load=KEYS_JS)
        status = gr.Markdown(elem_id="review-status")
        title = gr.Markdown(elem_id="review-study")
        with gr.Row():
            with gr.Column(scale=2):
                image = gr.Image(label="The X-ray as the model saw it (after windowing)", type="numpy",
                                 image_mode="L", format="png", interactive=False, height=420)
                info = gr.Markdown(elem_id="review-xray-info")
            with gr.Column(scale=3):
                if setup.blinded:
                    with gr.Row():
                        left = gr.Textbox(label="Report A", lines=9, interactive=False, elem_id="review-left")
                        right = gr.Textbox(label="Report B", lines=9, interactive=False, elem_id="review-right")
                    choice = gr.Radio(COMPARE_CHOICES, label="Which report is better?", elem_id="review-choice")
                else:
                    draft_box = gr.Textbox(label="Draft report", lines=5, interactive=False, elem_id="review-draft")
                    reference_box = gr.Textbox(label="The dataset's report (reference)", lines=4, interactive=False,
                                               visible=with_reference, elem_id="review-reference")
                    headers = [h if i != rendering.STATE_COLUMN else "State" for i, h in enumerate(rendering.FINDINGS_HEADERS)]
                    findings = gr.Dataframe(headers=headers, label="Per-finding probabilities",
                                            interactive=False, max_height=300, wrap=True, elem_id="review-findings")
                comments = gr.Textbox(label="Comments", lines=2, elem_id="review-comments")

        if not setup.blinded:
            gr.Markdown("## Your review (ReXVal error counts, against the image and the dataset's report)")
            with gr.Row():
                with gr.Column(scale=3):
                    counts = {}
                    for kind, name in ERROR_TYPES.items():
                        with gr.Row(equal_height=True):
                            gr.Markdown(name)
                            for level in SIGNIFICANCE:
                                column = f"{kind}_{level}"
                                counts[column] = gr.Number(0, label=f"clinically {level}", minimum=0, precision=0,
                                                           step=1, min_width=90, elem_id=f"review-{column}")
                with gr.Column(scale=2):
                    acceptability = gr.Radio([(label, key) for key, label in ACCEPTABILITY.items()],
                                             label="Overall acceptability", elem_id="review-acceptability")
                    edited = gr.Textbox(label="Your corrected report", lines=6, elem_id="review-edited")
            gr.Markdown("## Retrieved reference reports")
            references = gr.Dataframe(headers=rendering.reference_headers("distance"), label="Nearest training studies",
                                      interactive=False, wrap=True, elem_id="review-references")
            gr.Markdown("## MPSA attention maps")
            with gr.Row():
                with gr.Column(scale=3):
                    map_choice = gr.Dropdown(label="Prompt", choices=[], interactive=True)
                    heatmap = gr.Image(label="Attention map", type="numpy", format="png", interactive=False,
                                       height=480, elem_id="review-heatmap")
                with gr.Column(scale=2):
                    gallery = gr.Gallery(label="Top maps", columns=2, height=440, object_fit="contain")

        def progress_line(name: str) -> str:
            done = len(study.reviewed(task, name, setup.weights, setup.revision) & {i.study_id for i in items})
            verb = "compared" if setup.blinded else "reviewed"
            return f"**{done} of {len(items)} {verb}**" + ("" if name else " · type your name to start")

        def open_study(name: str, index: int) -> dict:
            """Draft study ``index`` and fill the page with it and the reader's saved judgment."""
            item = items[index]
            now = Shown(index)
            out: dict = {shown: now, title: f"### Study {index + 1} of {len(items)}: `{item.study_id}`",
                         progress: progress_line(name), comments: ""}
            try:
                views = [service.read_view(path.read_bytes(), view) for path, view in zip(item.image_paths, VIEWS)]
            except (UnreadableImage, OSError) as err:
                return {**out, **empty_study(), info: f"⚠️ **{err}** This study cannot be reviewed: go on to the next."}
            loaded = model()
            config = loaded.reporter.config
            options = {"beams": config.generation.num_beams, "max_length": config.generation.max_new_tokens}
            now.evidence = service.evidence(service.generate(loaded, views, **options))
            del views
            memory.release()  # the decoded films and full-size maps
            now.draft = Draft(item.study_id, setup.weights, setup.revision, options, now.evidence.report.text)
            out.update({image: now.evidence.displays[0], info: now.evidence.info})
            if setup.blinded:
                now.draft_side = study.draft_side(name, item.study_id, setup.weights, setup.revision)
                texts = {now.draft_side: now.draft.text, ("right" if now.draft_side == "left" else "left"): item.reference}
                saved = study.comparison(now.draft, name)
                out.update({left: blind_text(texts["left"]), right: blind_text(texts["right"]),
                            choice: saved.choice if saved else None, comments: saved.comments if saved else ""})
                return out
            index = loaded.reporter.model.index
            metric = index.metric if index is not None else "distance"
            out.update(evidence_outputs(now.evidence, item.reference, metric))
            saved = study.judgment(now.draft, name)
            out.update({acceptability: saved.acceptability if saved else None, edited: saved.edited_report if saved
                        else now.draft.text, comments: saved.comments if saved else "",
                        **{counts[c]: saved.count(c) if saved else 0 for c in ERROR_COLUMNS}})
            return out

        def empty_study() -> dict:
            if setup.blinded:
                return {image: None, left: "", right: "", choice: None}
            return {image: None, draft_box: "", reference_box: "", findings: [], references: [], edited: "",
                    acceptability: None, map_choice: gr.Dropdown(choices=[], value=None), heatmap: None, gallery: [],
                    **{counts[c]: 0 for c in ERROR_COLUMNS}}

        if setup.blinded:
            shown_parts = [left, right, choice]
        else:
            shown_parts = [draft_box, reference_box, findings, references, edited, acceptability, map_choice, heatmap,
                           gallery, *counts.values()]

        def evidence_outputs(evidence: service.Evidence, reference: str | None, metric: str) -> dict:
            choices = rendering.heatmap_choices(evidence.report)
            maps = [(_render(evidence, index), label) for label, index in choices[:GALLERY_SIZE]]
            return {draft_box: evidence.report.text, reference_box: reference or "",
                    findings: rendering.findings_table(evidence.report),
                    references: gr.Dataframe(rendering.references_table(evidence.report),
                                             headers=rendering.reference_headers(metric)),
                    map_choice: gr.Dropdown(choices=choices, value=choices[0][1] if choices else None),
                    heatmap: maps[0][0] if maps else None, gallery: maps}

        def resume(name: str, request: gr.Request) -> dict:
            """The reader's first study not yet reviewed (the first study when all are)."""
            name = name.strip() or getattr(request, "username", None) or ""
            done = study.reviewed(task, name, setup.weights, setup.revision)
            index = next((i for i, item in enumerate(items) if item.study_id not in done), 0)
            return {**open_study(name, index), reviewer: name, status: ""}

        def step(name: str, now: Shown | None, delta: int) -> dict:
            index = (now.index if now else 0) + delta
            if not 0 <= index < len(items):
                edge = "last" if delta > 0 else "first"
                return {status: f"This is the {edge} study of the worklist.", progress: progress_line(name.strip())}
            return open_study(name.strip(), index)

        def saved_line(name: str, now: Shown) -> dict:
            stamp = datetime.now().strftime("%H:%M:%S")
            return {status: f"✓ Saved `{now.draft.study_id}` at {stamp}.", progress: progress_line(name)}

        def ready(name: str, now: Shown | None) -> str:
            """The reader's name, or a refusal that says what is missing."""
            if not name.strip():
                raise gr.Error("Type your name in the Reviewer box first: every judgment is saved under it.",
                               print_exception=False)
            if now is None or now.draft is None:
                raise gr.Error("This study has no draft to judge; go on to the next one.", print_exception=False)
            return name.strip()

        if setup.blinded:
            save_inputs = [reviewer, shown, choice, comments]

            def save(name, now, picked, remarks) -> dict:
                name = ready(name, now)
                if picked is None:
                    raise gr.Error("Choose the better report (or Equal) before saving.", print_exception=False)
                study.save_comparison(now.draft, Comparison(name, now.draft_side, picked, remarks or ""))
                return saved_line(name, now)
        else:
            save_inputs = [reviewer, shown, acceptability, comments, edited, *counts.values()]

            def save(name, now, accepted, remarks, corrected, *numbers) -> dict:
                name = ready(name, now)
                if accepted is None:
                    raise gr.Error("Choose an overall acceptability before saving.", print_exception=False)
                errors = {c: 0 if n is None else n for c, n in zip(ERROR_COLUMNS, numbers)}
                try:
                    judgment = Judgment(name, accepted, errors, remarks or "", corrected or "")
                except ValueError as err:
                    raise gr.Error(str(err), print_exception=False) from None
                study.save_judgment(now.draft, judgment)
                return saved_line(name, now)

            def show_map(now: Shown | None, index: Any):
                return None if now is None or now.evidence is None or index is None else _render(now.evidence, int(index))

            map_choice.input(show_map, [shown, map_choice], heatmap, api_visibility="private")

        study_outputs = {shown, progress, status, title, image, info, comments, reviewer, *shown_parts}
        queued = {"api_visibility": "private", "concurrency_id": "generate"}  # one generation at a time, page-wide
        page.load(resume, reviewer, study_outputs, **queued)
        reviewer.submit(resume, reviewer, study_outputs, **queued)
        next_button.click(lambda name, now: step(name, now, +1), [reviewer, shown], study_outputs, **queued)
        previous_button.click(lambda name, now: step(name, now, -1), [reviewer, shown], study_outputs, **queued)
        save_button.click(save, save_inputs, {status, progress}, api_visibility="private")
        save_next_button.click(save, save_inputs, {status, progress}, api_visibility="private").success(
            lambda name, now: step(name, now, +1), [reviewer, shown], study_outputs, **queued)
