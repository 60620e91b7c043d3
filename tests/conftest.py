"""Settings for the whole suite: never reach the network for model files."""

from __future__ import annotations

import os

# open_clip and huggingface_hub read this at call time; the bundled model needs no download, and
# a test that would try one must fail fast instead of hanging on a machine without network.
os.environ["HF_HUB_OFFLINE"] = "1"
