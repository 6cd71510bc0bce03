"""Audit campaigns: YAML-described probe suites run against a lab, with resumable checkpoints."""
