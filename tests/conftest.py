import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)   # tiny models: one thread is as fast and never oversubscribes

from conftest_metrics import metric_assets, no_network  # noqa: E402,F401  (shared fixtures)
