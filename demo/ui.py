"""The page: a gr.Blocks layout and its events. Everything it shows comes from
:mod:`demo.service` (running a request) and :mod:`demo.rendering` (figures and tables).

Events:
- upload / clear of either view: read the upload (the file is deleted as soon as it is read; its
  bytes stay in the session), show the X-ray as read (or why it cannot be read) and clear the
  previous study's results, so a report is never shown beside an image it was not made from;
- Generate: first a validator checks the views and options, so a file that cannot be read or an
  option out of range is refused with its sentence on its own input before the queue; then
  report, findings, references, downloads; then the image as the model saw it and the maps;
- the public API endpoint ``/generate`` (same inputs and outputs, on a hidden trigger): its
  validator takes the uploads off the disk, its run takes their bytes; it keeps no session state;
- choosing a map; editing the report (the downloads follow the edited text); closing the tab
  drops the session's state at once.

Generation runs one request at a time in one queue of ``QUEUE_SIZE``: a burst of 100 studies
waits its turn; beyond that a request is refused at once with "busy, retry in about N s" and a
Retry-After header (:mod:`demo.guard`), never dropped silently.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from starlette.middleware import Middleware

from rrg_core.hub import ASSETS
from rrg_core.xray_io import UnreadableImage

from . import guard, memory, rendering, service, storage

EXAMPLES_DIR = ASSETS / "examples"
# The upload boxes take any file: DICOM from a PACS often has no extension (read_xray tells the
# formats apart by content and explains any file it cannot read), so Gradio must not filter by name.
EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
CONCURRENCY_LIMIT = 1  # one generation at a time: a second would only halve the speed of both on a CPU
QUEUE_SIZE = 128  # a burst of 100 studies (and the page's small events) waits; waiting costs no memory
SESSION_TTL_S = 600  # a session's uploads and result are dropped 10 minutes after they were made
SESSION_CAP = 200  # sessions held at most (the oldest is dropped first): a few MB each
CACHE_AGE_S = 600  # rendered images and downloads are deleted from Gradio's cache after this
GALLERY_SIZE = 4
MAX_UPLOAD = "200mb"  # a 50-megapixel 16-bit DICOM (read_xray's limit) is 100 MB
VALID = gr.validate(True, "")
LOADING = "Loading the model (torch, transformers and the weights) …"
CSS = """
#notice {background: #fff4e5; border: 1px solid #f0a030; border-radius: 6px; padding: 4px 12px;}
#notice p {margin: 4px 0; color: #5a3600; font-weight: 600;}
#gate-banner {background: #fdecea; border: 2px solid #c62828; border-radius: 6px; padding: 4px 12px;}
#gate-banner p {margin: 4px 0; color: #7f1010; font-weight: 700;}
.ood-draft textarea {color: #777 !important; background: #f3f3f3 !important;}
"""


def build(loading: service.Loading, files: storage.RunFolder, queue_size: int = QUEUE_SIZE
          ) -> tuple[gr.Blocks, Callable[[bytes], tuple[int, int]]]:
    """The whole page for one model, and what to do with a request the full queue refuses: (its
    body) -> (requests waiting, seconds to wait). The page is served at once and usable once
    ``loading`` has the model (it says so meanwhile, and requests wait for it)."""
    outbox = service.Outbox(files.outbox)
    uploads = storage.Uploads(files.uploads, keep=_example_files())
    pace = service.Pace()
    config = loading.config

    with gr.Blocks(title="REVTAF chest X-ray report draft", delete_cache=(60, CACHE_AGE_S)) as page:
        held = gr.State({}, time_to_live=SESSION_TTL_S)  # this session's uploads: path -> bytes
        result = gr.State(None, time_to_live=SESSION_TTL_S, delete_callback=_released)  # service.Evidence
        gr.Markdown("# Chest X-ray report draft (REVTAF)")
        gr.Markdown(
            f"⚠️ {service.DISCLAIMER} The draft is machine-generated and must be checked by a radiologist; "
            "uploads are deleted from the server as soon as they are read.",
            elem_id="notice",
        )
        gr.Markdown(f"**Weights:** `{loading.weights_id}` — {loading.card}", elem_id="weights")
        gr.Markdown(loading.headline + (f"\n\n*{loading.gate_note}*" if loading.gate_note else ""), elem_id="card-headline")
        status = gr.Markdown(f"⏳ {LOADING}", elem_id="model-status")

        with gr.Row():
            with gr.Column(scale=2):
                frontal = gr.File(label="Frontal view (PA/AP): PNG, JPEG or DICOM", height=120, elem_id="frontal")
                lateral = gr.File(label="Lateral view (optional)", height=120, elem_id="lateral")
                with gr.Accordion("Decoding options", open=False):
                    beams = gr.Slider(*service.BEAMS, value=config.generation.num_beams, step=1, label="Beam size")
                    max_length = gr.Slider(*service.MAX_LENGTHS, value=config.generation.max_new_tokens, step=5,
                                           label="Maximum length (tokens)")
                generate_button = gr.Button(LOADING, variant="primary", interactive=False)
                api_trigger = gr.Button(visible=False)  # the API endpoint's own event
                _examples(frontal)
                seen = gr.Image(label="The X-ray as the model saw it (after windowing)", type="numpy",
                                image_mode="L", format="png", interactive=False, height=360)
                seen_info = gr.Markdown(elem_id="xray-info")
            with gr.Column(scale=3):
                banner = gr.Markdown(elem_id="gate-banner", visible=False)
                report_box = gr.Textbox(label="Draft report (editable)", lines=7, buttons=["copy"], elem_id="report")
                with gr.Row():
                    txt_button = gr.DownloadButton("Download .txt", interactive=False, size="md")
                    json_button = gr.DownloadButton("Download .json", interactive=False, size="md")
                findings = gr.Dataframe(headers=rendering.FINDINGS_HEADERS, label="Per-finding probabilities",
                                        interactive=True, type="array", max_height=640, wrap=True, elem_id="findings",
                                        column_widths=rendering.column_widths(rendering.FINDINGS_HEADERS),
                                        static_columns=[i for i in range(len(rendering.FINDINGS_HEADERS))
                                                        if i != rendering.STATE_COLUMN])
                gr.Markdown("The draft states every positive finding and no finding the table does not call positive "
                            "or uncertain, on the side its map shows. To overrule a finding, type *positive*, "
                            "*negative*, *uncertain* or *blank* in its state cell and press **Redraft**.",
                            elem_id="findings-help")
                with gr.Row():
                    redraft_button = gr.Button("Redraft with these findings", size="md", elem_id="redraft")
                    reset_button = gr.Button("Back to the model's findings", size="md", elem_id="reset-findings")

        gr.Markdown("## Retrieved reference reports\n*Closer than*: the share of typical matches (the nearest "
                    "reference of held-out studies like the training images) that lie farther away than this one.")
        texts_note = gr.Markdown(visible=False)
        references = gr.Dataframe(headers=rendering.reference_headers(config.search_metric),
                                  label="Nearest training studies", interactive=False, wrap=True,
                                  column_widths=["5%", "9%", "11%", "10%", "18%", "35%", "12%"], elem_id="references")

        gr.Markdown("## MPSA attention maps\nWhere each prompt was read on the image; predicted-positive findings first. "
                    + loading.maps_note)
        with gr.Row():
            with gr.Column(scale=3):
                map_choice = gr.Dropdown(label="Prompt", choices=[], interactive=True)
                heatmap = gr.Image(label="Attention map", type="numpy", format="png", interactive=False, height=560,
                                   elem_id="heatmap")
                map_note = gr.Markdown(elem_id="map-note")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="Top maps", columns=2, height=520, object_fit="contain")
        gr.Markdown(f"*{service.DISCLAIMER}* Not a medical device.")

        # File inputs arrive unprocessed (preprocess=False): Gradio's own step would re-read a file
        # already deleted and leave an empty temp file behind per input.
        def preview(frontal, lateral, held):
            names = (_path(frontal), _path(lateral))
            held = {name: held.get(name) or uploads.claim(name) for name in names if name}
            if not held:
                return None, "", held
            try:
                views = service.read_views(*names, held.get)
            except UnreadableImage as err:
                return None, f"⚠️ **{err}**", held
            return service.display_copy(views[0].pixels), rendering.xray_info(views), held

        def clear():
            return (gr.Textbox(value="", elem_classes=[]), [], [], gr.DownloadButton(value=None, interactive=False),
                    gr.DownloadButton(value=None, interactive=False), gr.Dropdown(choices=[], value=None), None, [], None,
                    gr.Markdown(value="", visible=False), "")

        def draft(frontal, lateral, fetch, beams, max_length, overrides=None) -> tuple:
            """Report, findings, references, downloads and the session's Evidence, drafted from the
            reader's ``overrides`` where given. The decoded film and the full-size maps are dropped,
            and their memory handed back, before this returns."""
            started = time.monotonic()
            try:
                views = service.read_views(_path(frontal), _path(lateral), fetch)
                done = service.generate(loading.result(), views, beams=beams, max_length=max_length,
                                        overrides=overrides)
            except ValueError as err:  # an unreadable or expired upload, or overrides that contradict
                raise gr.Error(str(err), print_exception=False) from None
            pace.record(time.monotonic() - started)
            shown = service.evidence(done)
            del views, done
            memory.release()
            if service.withheld(shown.report):  # not a chest radiograph: nothing to draft from it
                txt, js = outbox.export(shown, "")
                return "", [], [], txt, js, shown
            report = shown.report
            txt, js = outbox.export(shown, report.text)
            return report.text, rendering.findings_table(report), rendering.references_table(report), txt, js, shown

        def generate_on_page(frontal, lateral, beams, max_length, held, progress=gr.Progress()):
            progress(0.1, desc="Generating the report")
            return draft(frontal, lateral, held_or_taken(held, uploads), beams, max_length)

        def generate(frontal, lateral, beams, max_length):
            """Draft a report for one chest X-ray (frontal view, optional lateral view)."""
            return draft(frontal, lateral, uploads.claim, beams, max_length)[:-1]

        def redraft(frontal, lateral, held, shown, table, beams, max_length, reset: bool = False):
            """The same study drafted again from the reader's findings; image, maps and references stay."""
            if shown is None or service.withheld(shown.report):
                raise gr.Error("There is no draft to redraft: generate one for a chest radiograph first.",
                               print_exception=False)
            rows = table.get("data", []) if isinstance(table, dict) else table  # unprocessed: Gradio's payload
            try:
                overrides = {} if reset else rendering.edited_states(shown.report, rows)
            except ValueError as err:  # a cell that names no state
                raise gr.Error(str(err), print_exception=False) from None
            text, findings_rows, _, txt, js, again = draft(frontal, lateral, held.get, beams, max_length, overrides)
            return text, findings_rows, txt, js, again

        def check_page(frontal, lateral, beams, max_length, held):
            return [*_view_checks(frontal, lateral, held_or_taken(held, uploads)), *_option_checks(beams, max_length),
                    VALID]

        def check_api(frontal, lateral, beams, max_length):
            checks = [*_view_checks(frontal, lateral, uploads.take), *_option_checks(beams, max_length)]
            if not all(check["is_valid"] for check in checks):
                for name in (_path(frontal), _path(lateral)):  # the request will not run: drop its uploads
                    if name:
                        uploads.claim(name)
            return checks

        def show_evidence(shown: service.Evidence):
            banner_text = service.gate_banner(shown.report) or ""
            greyed = gr.Textbox(elem_classes=["ood-draft"] if banner_text else [])
            info = "\n\n".join([shown.info, *(f"*{note}*" for note in shown.notes)])
            choices = [] if service.withheld(shown.report) else rendering.heatmap_choices(shown.report)
            maps = [(_render(shown, index), label) for label, index in choices[:GALLERY_SIZE]]
            first_map, first_index = (maps[0][0], choices[0][1]) if maps else (None, None)
            return (shown.displays[0], info, gr.Dropdown(choices=choices, value=first_index), first_map, maps,
                    gr.DownloadButton(interactive=True), gr.DownloadButton(interactive=True),
                    gr.Markdown(value=banner_text, visible=bool(banner_text)), greyed,
                    _map_note(shown, first_index))

        def show_map(shown: service.Evidence | None, index: int | None):
            if shown is None or index is None:
                return None, ""
            return _render(shown, int(index)), _map_note(shown, int(index))

        def refresh_downloads(shown: service.Evidence | None, text: str):
            if shown is None:
                return gr.DownloadButton(), gr.DownloadButton()
            txt, js = outbox.export(shown, text)
            return gr.DownloadButton(value=txt), gr.DownloadButton(value=js)

        def forget(request: gr.Request):
            """The tab was closed: drop its state now rather than after Gradio's hour for closed sessions."""
            page.state_holder.delete_state(request.session_hash)
            memory.release()

        def model_ready():
            loaded = loading.result()
            return (gr.Markdown(visible=False), gr.Markdown(loaded.texts_note or "", visible=bool(loaded.texts_note)),
                    gr.Button("Generate report", interactive=True))

        page.load(model_ready, None, [status, texts_note, generate_button], api_visibility="private",
                  concurrency_limit=None, show_progress="hidden")
        results = [report_box, findings, references, txt_button, json_button, map_choice, heatmap, gallery, result,
                   banner, map_note]
        outputs = [report_box, findings, references, txt_button, json_button]
        for view in (frontal, lateral):
            view.change(preview, [frontal, lateral, held], [seen, seen_info, held], api_visibility="private",
                        preprocess=False)
            view.change(clear, None, results, api_visibility="private")
        generate_button.click(
            generate_on_page, [frontal, lateral, beams, max_length, held], [*outputs, result], api_visibility="private",
            validator=check_page, preprocess=False, concurrency_id="generate",
        ).success(show_evidence, result, [seen, seen_info, map_choice, heatmap, gallery, txt_button, json_button,
                                          banner, report_box, map_note], api_visibility="private")
        api_trigger.click(generate, [frontal, lateral, beams, max_length], outputs, api_name="generate",
                          validator=check_api, preprocess=False, concurrency_id="generate")
        redraft_inputs = [frontal, lateral, held, result, findings, beams, max_length]
        redrafted = [report_box, findings, txt_button, json_button, result]
        redraft_button.click(redraft, redraft_inputs, redrafted, api_visibility="private", preprocess=False,
                             concurrency_id="generate")
        reset_button.click(lambda *args: redraft(*args, reset=True), redraft_inputs, redrafted,
                           api_visibility="private", preprocess=False, concurrency_id="generate")
        map_choice.input(show_map, [result, map_choice], [heatmap, map_note], api_visibility="private")
        report_box.input(refresh_downloads, [result, report_box], [txt_button, json_button],
                         api_visibility="private", trigger_mode="always_last")
        page.unload(forget)

    page.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=queue_size)

    def refused(body: bytes) -> tuple[int, int]:
        """A request the full queue refuses: its uploads go (they will never be read)."""
        for name in guard.upload_paths(body):
            uploads.claim(name)
        return queue_size, max(1, math.ceil(queue_size * pace.seconds / CONCURRENCY_LIMIT))

    return page, refused


def held_or_taken(held: dict[str, bytes], uploads: storage.Uploads) -> Callable[[str], bytes | None]:
    """The bytes of an upload for Generate: the session's, or, when Generate comes before the
    upload's preview has stored them (a loaded server), taken from the disk and parked, where the
    preview then claims them."""
    return lambda name: held.get(name) or uploads.take(name)


def _path(upload: dict | None) -> str | None:
    """The server-side path of an unprocessed File input (a FileData dict), or None."""
    return upload.get("path") if isinstance(upload, dict) else None


def _view_checks(frontal: dict | None, lateral: dict | None, fetch: Callable[[str], bytes | None]) -> list[dict]:
    return [_validity(_path(frontal), "Frontal", fetch, required=True), _validity(_path(lateral), "Lateral", fetch)]


def _option_checks(beams: Any, max_length: Any) -> list[dict]:
    return [VALID if error is None else gr.validate(False, error) for error in service.option_errors(beams, max_length)]


def _released(_: Any) -> None:
    memory.release()


def _validity(name: str | None, view: str, fetch: Callable[[str], bytes | None], required: bool = False) -> dict:
    """Whether one upload can be read; a refusal is shown on its input, and generation does not start."""
    if not name:
        return gr.validate(not required, service.NO_FRONTAL)
    try:
        service.read_view(fetch(name), view)
    except UnreadableImage as err:
        return gr.validate(False, str(err))
    return VALID


def _example_files() -> list[Path]:
    return sorted(p for p in EXAMPLES_DIR.glob("*") if p.suffix.lower() in EXAMPLE_SUFFIXES)


def _examples(target: gr.File) -> None:
    """SynthCXR phantoms from assets/examples (label = file name), if any are there."""
    files = _example_files()
    if files:
        labels = [p.stem.replace("_", " ") + (" (DICOM)" if p.suffix == ".dcm" else "") for p in files]
        gr.Examples([[str(p)] for p in files], inputs=target, example_labels=labels,
                    label="SynthCXR examples (synthetic)")


def _map_note(shown: service.Evidence, index: int | None) -> str:
    """Says so when the chosen map is nearly uniform (then drawn without colour)."""
    if index is None:
        return ""
    peak = shown.report.attention[index].peak_ratio()
    if peak >= rendering.NEAR_UNIFORM:
        return ""
    return (f"This map is nearly uniform (its peak is {peak:.1f} × its average): the model did not locate this "
            "prompt anywhere in particular, so no colour is drawn.")


def _render(shown: service.Evidence, index: int):
    """One attention map over the display copy of the view it belongs to (R / L marked on a frontal
    one); a nearly uniform map is drawn as exactly uniform, i.e. without colour (faint colour would
    look like weak evidence), and its title says so."""
    amap = shown.report.attention[index]
    title = amap.prompt if amap.kind == "region" else f"global prompt: {amap.prompt}"
    if len(shown.displays) > 1:
        title += f" ({rendering.VIEW_NAMES[amap.view]} view)"
    heatmap = amap.heatmap
    if amap.peak_ratio() < rendering.NEAR_UNIFORM:
        heatmap = np.full_like(heatmap, 1 / heatmap.size)
    frontal = min(amap.view, len(shown.displays) - 1) == 0  # a one-view study stands in for both views
    return rendering.overlay(service.display_pixels(shown, amap), heatmap, title, amap.kind, frontal=frontal)


def launch(page: gr.Blocks, refused: Callable[[bytes], tuple[int, int]], *, host: str, port: int, share: bool = False,
           auth: tuple[str, str] | None = None, allowed_hosts: Iterable[str] = (),
           served: Callable[[], object] = lambda: None, **kwargs) -> None:
    """Serve the page until SIGINT/SIGTERM (``share`` creates a public gradio.live link; off unless
    asked). Requests must name this host (see demo.guard), uploads get random names, and a refused
    request is told when to retry. ``served`` runs once the page answers (app.py loads the model
    there); what it raises closes the server."""
    middleware = [
        Middleware(guard.HostCheck, allowed=guard.allowed_hosts(host, allowed_hosts)),
        Middleware(guard.BusyAnswer, refused=refused),
        Middleware(guard.RandomUploadNames),
    ]
    try:
        page.launch(server_name=host, server_port=port, share=share, css=CSS, footer_links=["api"],
                    max_file_size=MAX_UPLOAD, auth=auth, state_session_capacity=SESSION_CAP,
                    app_kwargs={"middleware": middleware}, prevent_thread_lock=True, **kwargs)
        served()
        page.block_thread()
    finally:
        page.close()
