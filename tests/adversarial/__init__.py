"""Attacks a hostile auditor would run, against a real server and a model that memorized.

Each attack is shown to succeed with one defence switched off (``unsafe_server.py``) and to
fail with every defence on (the real ``auditor-server serve``). ``lab.py`` builds the lab,
``attacks.py`` holds the attacks (shared with ``bench/attack_figures.py``).
"""
