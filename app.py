"""Start the REVTAF demo (also the Hugging Face Spaces entry point).

    python app.py [--weights ORG/REPO[@REVISION] | FOLDER] [--reference-data DIR]
                  [--host 127.0.0.1] [--port 7860] [--share]

Each option has an environment equivalent (RRG_WEIGHTS, RRG_REFERENCE_DATA, GRADIO_SERVER_NAME,
GRADIO_SERVER_PORT); Spaces sets the last two. Weights that cannot be had stop the start with one
sentence on stderr and exit code 2: serving other weights than the ones asked for would be worse.
The page answers as soon as Gradio serves it and says "Loading the model" until torch,
transformers and the weights are loaded in the background (requests wait for them).
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported anywhere


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="REVTAF chest X-ray report draft: the web demo.")
    parser.add_argument("--weights", default=env("RRG_WEIGHTS"),
                        help="ORG/REPO[@REVISION] on the Hugging Face Hub or a local folder (default: the embedded "
                             "SynthCXR weights; env RRG_WEIGHTS)")
    parser.add_argument("--reference-data", default=env("RRG_REFERENCE_DATA"), metavar="DIR",
                        help="dataset folder whose report texts are shown for the retrieved references "
                             "(env RRG_REFERENCE_DATA)")
    parser.add_argument("--host", default=env("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="interface to listen on (env GRADIO_SERVER_NAME; default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=env("GRADIO_SERVER_PORT", "7860"),
                        help="port (env GRADIO_SERVER_PORT; default 7860)")
    parser.add_argument("--share", action="store_true", help="also create a public gradio.live link")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from demo import service, ui

    try:
        loading = service.Loading(args.weights, args.reference_data)  # locates the weights; no torch yet
    except service.STARTUP_ERRORS as err:
        print(f"app.py: cannot start: {err}", file=sys.stderr)
        return 2
    page = ui.build(loading)
    # The page answers first; torch, transformers and the weights load behind it (it says so).
    ui.launch(page, host=args.host, port=args.port, share=args.share, prevent_thread_lock=True)
    try:
        loading.start().result()
    except service.STARTUP_ERRORS as err:
        page.close()
        print(f"app.py: cannot start: {err}", file=sys.stderr)
        return 2
    page.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
