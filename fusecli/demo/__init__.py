"""The embedded demo world: country facts, Q&A dialogues, tiny tokenizers and tiny chat models.

Everything is generated offline and deterministically from `data/countries.jsonl`, so `make demo`
needs no download (docs/architecture.md, "The embedded demo world").
"""
