"""The Gradio web demo: ``rendering`` (pure figures and tables), ``service`` (loading weights,
running a request, temporary files) and ``ui`` (the page and its events).

Model logic lives in :mod:`rrg_core`; this package only presents it.
"""
