"""Start the REVTAF demo (also the Hugging Face Spaces entry point).

    python app.py [--weights ORG/REPO[@REVISION] | FOLDER] [--reference-data DIR]
                  [--host 127.0.0.1] [--port 7860] [--share] [--auth USER:PASS]
                  [--allowed-hosts NAME,...] [--queue-size N]
                  [--review STUDY_FOLDER|DATASET_DIR [--split test] [--reviewer NAME] [--review-db PATH] ...]

Each option has an environment equivalent (RRG_WEIGHTS, RRG_REFERENCE_DATA, GRADIO_SERVER_NAME,
GRADIO_SERVER_PORT, RRG_AUTH, RRG_ALLOWED_HOSTS, RRG_QUEUE_SIZE); Spaces sets the server name and
port, and its SPACE_HOST is an allowed host. Weights that cannot be had stop the start with one
sentence on stderr and exit code 2: serving other weights than the ones asked for would be worse.
Whatever can be checked without torch (config.json, the safetensors header, the shapes config.json
implies, finite values: rrg_core.checkpoint.check_weights) is, before gradio and torch are imported.
The page answers as soon as Gradio serves it and says "Loading the model" until torch,
transformers and the weights, whose loading starts before gradio is imported, are ready
(requests wait for them).

All files live in a private folder of this run (demo.storage): leftovers of earlier runs are
deleted first, and this run's folder on exit, SIGTERM (a container stop) and SIGINT alike.
"""
from __future__ import annotations

import argparse
import atexit
import os
import signal
import sys

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported anywhere


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog=prog, description="REVTAF chest X-ray report draft: the web demo.")
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
    parser.add_argument("--auth", default=env("RRG_AUTH"), metavar="USER:PASS", type=_credentials,
                        help="ask for this user name and password (env RRG_AUTH); use it whenever --host is not "
                             "127.0.0.1")
    parser.add_argument("--allowed-hosts", default=env("RRG_ALLOWED_HOSTS", ""), metavar="NAME,...",
                        help="host names clients may use besides the bound host, e.g. a proxy's name "
                             "(env RRG_ALLOWED_HOSTS)")
    parser.add_argument("--queue-size", type=int, default=env("RRG_QUEUE_SIZE", "128"),
                        help="requests that may wait; more are told to retry later (env RRG_QUEUE_SIZE; default 128)")
    from demo import review_setup  # the reader-study options (no gradio, no torch)

    review_setup.add_arguments(parser)
    return parser.parse_args(argv)


def _credentials(value: str) -> tuple[str, str]:
    user, colon, password = value.partition(":")
    if not (user and colon and password):
        raise argparse.ArgumentTypeError("give USER:PASS, both non-empty")
    return user, password


def _cannot_start(err: Exception) -> int:
    print(f"app.py: cannot start: {err}", file=sys.stderr)
    return 2


def _stop(signum: int, frame) -> None:
    raise KeyboardInterrupt  # Gradio closes its server on it; main's finally deletes the files


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    from demo import memory

    memory.tune()  # before any thread or large array
    from demo import review_setup, service, storage

    try:
        # Locates and checks the weights without torch: a broken folder is refused before torch and gradio load.
        loading = service.Loading(args.weights, args.reference_data)
        review = review_setup.prepare(args)  # None without --review
    except service.STARTUP_ERRORS as err:
        return _cannot_start(err)
    files = storage.RunFolder()  # deletes what earlier runs left
    os.environ["GRADIO_TEMP_DIR"] = str(files.uploads)  # before gradio is imported
    atexit.register(files.purge)  # again at exit: a worker thread may still have written a file
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop)
    loading.start()  # torch, transformers and the weights load while gradio imports: broken weights fail sooner
    from demo import guard, ui

    if args.auth is None and not guard.is_loopback(args.host):
        print(f"app.py: warning: serving on {args.host} without --auth: anyone who can reach it may use it",
              file=sys.stderr)
    try:
        page, refused = ui.build(loading, files, queue_size=args.queue_size)
        if review is not None:  # the Review page at /review
            from demo.review import add_page

            add_page(page, review, loading.result)
        extra = [*args.allowed_hosts.split(","), os.environ.get("SPACE_HOST", "")]
        ui.launch(page, refused, host=args.host, port=args.port, share=args.share, auth=args.auth,
                  allowed_hosts=extra, served=loading.result)  # the page answers first
    except service.STARTUP_ERRORS as err:  # the weights failed to load behind the page
        return _cannot_start(err)
    except KeyboardInterrupt:
        pass
    finally:
        files.purge()
    return 0


if __name__ == "__main__":
    sys.exit(main())
