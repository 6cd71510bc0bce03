"""Local Hugging Face causal LMs: offline loading, scoring, generation and a demo trainer.

Import submodules directly (``auditor_server.model.loading``...); this package does not
re-export them, so importing the package does not pull in torch for callers that only need
the presets.
"""
