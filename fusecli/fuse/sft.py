"""The SFT baseline's fixed keys: lambda 1 leaves no fusion term, so what shapes only the fusion targets
is fixed, and the baseline's model and logs depend on none of these keys (its dvc.yaml entry hashes none).

Without fixing them, the logged fusion_loss and selection.json would still follow `fuse.temperature` and
the rest, and a stage whose output follows a key must hash it. Kept free of torch: the stage table reads it.
"""

from __future__ import annotations

FIXED = {"lam": 1.0, "temperature": 1.0, "fusion_fn": "mince", "teacher": "model", "gate": None}
