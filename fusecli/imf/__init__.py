"""Implicit fusion (FuseChat-3.0, arXiv 2503.04222): sample from each source, score, SFT on the best, DPO.

No logits and no vocabulary alignment: the sources teach through the text they write. `sample@<slug>`
writes each source's responses, `score` rates them with a pluggable reward (rewards.py), `imf_sft` trains
the pivot on the best response per prompt and `imf_dpo` on best/worst pairs of the same source (pairs.py).
"""
