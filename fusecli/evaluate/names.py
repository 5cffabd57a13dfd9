"""The names of the models `evaluate` scores, as keys of eval/metrics.json (read back by `report`)."""

from __future__ import annotations

MERGED = "merged"  # the default merge method's scores again, so `dvc metrics diff` reads one key
FUSELM = "fuselm"  # the FuseLLM-style row: one student distilled from every source at once (fuse_all)
IMF_SFT = "imf_sft"  # implicit fusion (FuseChat-3.0): the pivot trained on the best sampled response (imf_sft)
IMF = "imf"  # and then on same-source preference pairs (imf_dpo)


def model_names(slugs: list[str], methods: list[str]) -> list[str]:
    """Every model name of eval/metrics.json for these sources and merge.methods, in evaluate's order."""
    return [
        "pivot",
        *(f"source:{s}" for s in slugs),
        "sft_baseline",
        *(f"fused:{s}" for s in slugs),
        FUSELM,
        IMF_SFT,
        IMF,
        *(f"{MERGED}:{m}" for m in methods),
        MERGED,
    ]


def merged_name(method: str) -> str:
    return f"{MERGED}:{method}"
