"""Auditor side of auditor-sandbox: a thin client that never imports torch or faiss."""

__version__ = "0.1.0"
