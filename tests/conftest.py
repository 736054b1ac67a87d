"""Tests run offline: no hub look-ups, no downloads, whatever the machine's network."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LRM_OFFLINE", "1")
