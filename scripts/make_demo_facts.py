"""Write fusecli/demo/data/countries.jsonl, the demo world's facts, from the PyPI package `countryinfo`.

Run once by a maintainer; the output is committed so the demo needs neither the package nor a network:

    python3 -m venv /tmp/ci-venv && /tmp/ci-venv/bin/pip install countryinfo
    /tmp/ci-venv/bin/python scripts/make_demo_facts.py

Only countries with every field, a single currency and a single capital are kept; strings are folded
to ASCII so every demo tokenizer sees the same plain alphabet.
"""

from __future__ import annotations

import argparse
import json
import re
import unicodedata
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "fusecli" / "demo" / "data" / "countries.jsonl"

# Names written as "X, qualifier" or with a parenthetical, rewritten the way a question would say them.
RENAMES = {
    "Virgin Islands, British": "British Virgin Islands",
    "Virgin Islands, U.S.": "United States Virgin Islands",
    "Palestine, State of": "Palestine",
    "Holy See (Vatican City State)": "Vatican City",
    "Cocos (Keeling) Islands": "Cocos Islands",
    "Saint Martin (French part)": "Saint Martin",
    "Sint Maarten (Dutch part)": "Sint Maarten",
}
# Older names whose facts repeat another row's (Burma is Myanmar).
DROP = {"Burma"}
# The source spells one UN M49 subregion two ways.
SUBREGIONS = {"South-Eastern Asia": "South-eastern Asia"}
CLEAN = re.compile(r"^[A-Za-z][A-Za-z .'-]*[A-Za-z.]$")


def ascii_fold(text: str) -> str:
    """Drop accents (Bogotá -> Bogota) and collapse whitespace."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return " ".join(folded.split())


def single(value: object) -> str:
    """A field's one value; lists (a few capitals are stored as one-element lists) must have one."""
    if isinstance(value, list):
        return value[0] if len(value) == 1 and isinstance(value[0], str) else ""
    return value if isinstance(value, str) else ""


def clean_row(info: dict) -> dict[str, str] | None:
    name = single(info.get("name"))
    if name in DROP:
        return None
    subregion = single(info.get("subregion"))
    row = {
        "country": ascii_fold(RENAMES.get(name, name)),
        "capital": ascii_fold(single(info.get("capital"))),
        "currency": ascii_fold(single(info.get("currencies"))),
        "region": ascii_fold(single(info.get("region"))),
        "subregion": ascii_fold(SUBREGIONS.get(subregion, subregion)),
        "demonym": ascii_fold(single(info.get("demonym"))),
    }
    if not re.fullmatch(r"[A-Z]{3}", row["currency"]):
        return None
    if not all(CLEAN.fullmatch(v) for k, v in row.items() if k != "currency"):
        return None
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    from countryinfo import all_countries  # a maintainer-only dependency, never a project one

    rows: dict[str, dict[str, str]] = {}
    for country in all_countries():
        row = clean_row(country.info())
        if row is not None:
            rows.setdefault(row["country"], row)
    lines = [json.dumps(rows[name], sort_keys=False) for name in sorted(rows)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} countries to {args.out}")


if __name__ == "__main__":
    main()
