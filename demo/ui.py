"""The page: a gr.Blocks layout and its events. Everything it shows comes from
:mod:`demo.service` (running a request) and :mod:`demo.rendering` (figures and tables).

Events:
- upload / clear of either view: show the X-ray as read (or why it cannot be read) and clear the
  previous study's results, so a report is never shown beside an image it was not made from;
- Generate (also the public API endpoint ``/generate``): first a validator reads the uploads, so a
  file that cannot be read is refused with its sentence on its own input (and to API clients as a
  ValidationError) before the queue; then report, findings, references, downloads; then, for the
  page only, the image as the model saw it and the attention maps;
- choosing a map; editing the report (the downloads follow the edited text).
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from rrg_core.xray_io import UnreadableImage, to_uint8

from . import rendering, service

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "examples"
# The upload boxes take any file: DICOM from a PACS often has no extension (read_xray tells the
# formats apart by content and explains any file it cannot read), so Gradio must not filter by name.
EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
CONCURRENCY_LIMIT = 1  # one generation at a time: a second would only halve the speed of both on a CPU
QUEUE_SIZE = 32
CACHE_AGE_S = 600  # uploads, rendered images and downloads are deleted from Gradio's cache after this
GALLERY_SIZE = 4
MAX_UPLOAD = "200mb"  # a 50-megapixel 16-bit DICOM (read_xray's limit) is 100 MB
VALID = gr.validate(True, "")
LOADING = "Loading the model (torch, transformers and the weights) …"
CSS = """
#notice {background: #fff4e5; border: 1px solid #f0a030; border-radius: 6px; padding: 4px 12px;}
#notice p {margin: 4px 0; color: #5a3600; font-weight: 600;}
"""


def build(loading: service.Loading) -> gr.Blocks:
    """The whole page for one model: served at once, usable once ``loading`` has the model (the page
    says so meanwhile, and requests wait for it)."""
    outbox = service.Outbox()
    config = loading.config

    with gr.Blocks(title="REVTAF chest X-ray report draft", delete_cache=(60, CACHE_AGE_S)) as page:
        result = gr.State(None, time_to_live=CACHE_AGE_S)
        gr.Markdown("# Chest X-ray report draft (REVTAF)")
        gr.Markdown(
            f"⚠️ {service.DISCLAIMER} The draft is machine-generated and must be checked by a radiologist; "
            f"uploads are deleted from the server within {CACHE_AGE_S // 60} minutes.",
            elem_id="notice",
        )
        gr.Markdown(f"**Weights:** `{loading.weights_id}` — {loading.card}", elem_id="weights")
        status = gr.Markdown(f"⏳ {LOADING}", elem_id="model-status")

        with gr.Row():
            with gr.Column(scale=2):
                frontal = gr.File(label="Frontal view (PA/AP): PNG, JPEG or DICOM", height=120, elem_id="frontal")
                lateral = gr.File(label="Lateral view (optional)", height=120, elem_id="lateral")
                with gr.Accordion("Decoding options", open=False):
                    beams = gr.Slider(1, 6, value=config.num_beams, step=1, label="Beam size")
                    max_length = gr.Slider(10, 200, value=config.max_new_tokens, step=5, label="Maximum length (tokens)")
                generate_button = gr.Button(LOADING, variant="primary", interactive=False)
                _examples(frontal)
                seen = gr.Image(label="The X-ray as the model saw it (after windowing)", type="numpy",
                                image_mode="L", format="png", interactive=False, height=360)
                seen_info = gr.Markdown(elem_id="xray-info")
            with gr.Column(scale=3):
                report_box = gr.Textbox(label="Draft report (editable)", lines=7, buttons=["copy"], elem_id="report")
                with gr.Row():
                    txt_button = gr.DownloadButton("Download .txt", interactive=False, size="md")
                    json_button = gr.DownloadButton("Download .json", interactive=False, size="md")
                findings = gr.Dataframe(headers=rendering.FINDINGS_HEADERS, label="Per-finding probabilities",
                                        interactive=False, max_height=420, wrap=True, elem_id="findings",
                                        column_widths=rendering.column_widths(rendering.FINDINGS_HEADERS))

        gr.Markdown("## Retrieved reference reports")
        texts_note = gr.Markdown(visible=False)
        references = gr.Dataframe(headers=rendering.reference_headers(config.search_metric),
                                  label="Nearest training studies", interactive=False, wrap=True,
                                  column_widths=["6%", "10%", "12%", "12%", "20%", "40%"], elem_id="references")

        gr.Markdown("## MPSA attention maps\nWhere each prompt was read on the image; predicted-positive findings first. "
                    + loading.maps_note)
        with gr.Row():
            with gr.Column(scale=3):
                map_choice = gr.Dropdown(label="Prompt", choices=[], interactive=True)
                heatmap = gr.Image(label="Attention map", type="numpy", format="png", interactive=False, height=560,
                                   elem_id="heatmap")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="Top maps", columns=2, height=520, object_fit="contain")
        gr.Markdown(f"*{service.DISCLAIMER}* Not a medical device.")

        def preview(frontal_path, lateral_path):
            if not (frontal_path or lateral_path):
                return None, ""
            try:
                views = service.read_views(frontal_path, lateral_path)
            except UnreadableImage as err:
                return None, f"⚠️ **{err}**"
            return to_uint8(views[0].pixels), rendering.xray_info(views)

        def clear():
            return ("", [], [], gr.DownloadButton(value=None, interactive=False),
                    gr.DownloadButton(value=None, interactive=False), gr.Dropdown(choices=[], value=None), None, [], None)

        def generate(frontal, lateral, beams, max_length, progress=gr.Progress()):
            """Draft a report for one chest X-ray (frontal view, optional lateral view)."""
            progress(0.05, desc="Reading the X-ray")
            try:
                views = service.read_views(frontal, lateral)
            except UnreadableImage as err:
                raise gr.Error(str(err), print_exception=False) from None
            progress(0.2, desc="Generating the report")
            done = service.generate(loading.result(), views, beams=beams, max_length=max_length)
            progress(0.9, desc="Preparing the evidence")
            txt, js = outbox.export(done, done.report.text)
            report = done.report
            return report.text, rendering.findings_table(report), rendering.references_table(report), txt, js, done

        def check_views(frontal, lateral, beams, max_length):
            return [_validity(frontal, "Frontal", required=True), _validity(lateral, "Lateral"), VALID, VALID]

        def show_evidence(done: service.Result):
            choices = rendering.heatmap_choices(done.report)
            maps = [(_render(done, index), label) for label, index in choices[:GALLERY_SIZE]]
            info = "\n\n".join([rendering.xray_info(done.views), *(f"*{note}*" for note in done.notes)])
            first_map, first_index = (maps[0][0], choices[0][1]) if maps else (None, None)
            return (to_uint8(done.views[0].pixels), info, gr.Dropdown(choices=choices, value=first_index), first_map, maps,
                    gr.DownloadButton(interactive=True), gr.DownloadButton(interactive=True))

        def show_map(done: service.Result | None, index: int | None):
            return None if done is None or index is None else _render(done, int(index))

        def refresh_downloads(done: service.Result | None, text: str):
            if done is None:
                return gr.DownloadButton(), gr.DownloadButton()
            txt, js = outbox.export(done, text)
            return gr.DownloadButton(value=txt), gr.DownloadButton(value=js)

        def model_ready():
            loaded = loading.result()
            return (gr.Markdown(visible=False), gr.Markdown(loaded.texts_note or "", visible=bool(loaded.texts_note)),
                    gr.Button("Generate report", interactive=True))

        page.load(model_ready, None, [status, texts_note, generate_button], api_visibility="private",
                  concurrency_limit=None, show_progress="hidden")
        results = [report_box, findings, references, txt_button, json_button, map_choice, heatmap, gallery, result]
        for view in (frontal, lateral):
            view.change(preview, [frontal, lateral], [seen, seen_info], api_visibility="private")
            view.change(clear, None, results, api_visibility="private")
        generate_button.click(
            generate, [frontal, lateral, beams, max_length],
            [report_box, findings, references, txt_button, json_button, result], api_name="generate",
            validator=check_views,
        ).success(show_evidence, result, [seen, seen_info, map_choice, heatmap, gallery, txt_button, json_button],
                  api_visibility="private")
        map_choice.input(show_map, [result, map_choice], heatmap, api_visibility="private")
        report_box.input(refresh_downloads, [result, report_box], [txt_button, json_button],
                         api_visibility="private", trigger_mode="always_last")

    page.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=QUEUE_SIZE)
    return page


def _validity(path: str | None, name: str, required: bool = False) -> dict:
    """Whether one upload can be read; a refusal is shown on its input, and generation does not start."""
    if not path:
        return gr.validate(not required, service.NO_FRONTAL)
    try:
        service.read_view(path, name)
    except UnreadableImage as err:
        return gr.validate(False, str(err))
    return VALID


def _examples(target: gr.File) -> None:
    """SynthCXR phantoms from assets/examples (label = file name), if any are there."""
    files = sorted(p for p in EXAMPLES_DIR.glob("*") if p.suffix.lower() in EXAMPLE_SUFFIXES)
    if files:
        labels = [p.stem.replace("_", " ") + (" (DICOM)" if p.suffix == ".dcm" else "") for p in files]
        gr.Examples([[str(p)] for p in files], inputs=target, example_labels=labels,
                    label="SynthCXR examples (synthetic)")


def _render(done: service.Result, index: int):
    """One attention map over the view it belongs to (a one-view study stands in for both views)."""
    amap = done.report.attention[index]
    drawn_on = min(amap.view, len(done.views) - 1)
    title = amap.prompt if amap.kind == "region" else f"global prompt: {amap.prompt}"
    if len(done.views) > 1:
        title += f" ({rendering.VIEW_NAMES[amap.view]} view)"
    return rendering.overlay(done.views[drawn_on].pixels, amap.heatmap, title, amap.kind, frontal=drawn_on == 0)


def launch(page: gr.Blocks, *, host: str, port: int, share: bool = False, **kwargs) -> None:
    """Serve the page (``share`` creates a public gradio.live link; off unless asked)."""
    page.launch(server_name=host, server_port=port, share=share, css=CSS, footer_links=["api"],
                max_file_size=MAX_UPLOAD, **kwargs)
