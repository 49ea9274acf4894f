"""The Gradio web demo: ``rendering`` (pure figures and tables), ``service`` (loading weights,
running a request, what a session keeps), ``ui`` (the page and its events), ``storage`` (the
run's private folder, uploads deleted once read), ``guard`` (Host check, busy answer, random
upload names), ``memory`` (the allocator settings that let the server shrink after a burst), and
``review`` / ``review_setup`` (the reader-study page, ``app.py --review``).

Model logic lives in :mod:`rrg_core`; this package only presents it.
"""
