from collections import defaultdict

from fusecli.demo.qa import DOMAINS, RELATIONS, dataset_rows, load_facts, slug, teacher_rows, world_facts


def test_facts_are_clean_and_complete():
    facts = load_facts()
    assert len(facts) > 200
    assert len({f["country"] for f in facts}) == len(facts)
    for fact in facts:
        assert all(isinstance(v, str) and v and v.isascii() for v in fact.values())


def test_pools_differ_in_first_letter():
    for rel in RELATIONS.values():
        assert len({m[0] for m in rel.pool}) == len(rel.pool) >= 10


def test_rows_are_deterministic_and_well_formed():
    rows = dataset_rows(0, 3, 110)
    assert rows == dataset_rows(0, 3, 110)
    assert rows != dataset_rows(1, 3, 110)  # the seed draws another world
    assert len({r["id"] for r in rows}) == len(rows)
    assert {r["domain"] for r in rows} == set(DOMAINS)
    for r in rows:
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        assert r["messages"][1]["content"] == r["answer"] and r["answer"] in r["answers"]


def test_evaluation_asks_only_for_members_no_reference_names():
    """The design's point: what is evaluated is known to the teachers and stated by no training row."""
    rows = dataset_rows(3, 4, 220)
    named: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in rows:
        if r["split"] == "train":
            named[r["domain"], r["id"].rsplit("-", 1)[0]].add(r["answer"])  # ids end in -t<i> / -o<i>
    facts = {f"{f.domain}-{slug(f.country)}": f for f in world_facts(3, 4, 220)}
    evals = [r for r in rows if r["split"] == "eval"]
    assert len(evals) > 100 * len(DOMAINS)
    assert all(r["exclude"] and r["exclude"][0] not in r["answers"] for r in evals)
    for r in evals:
        key = r["id"].removesuffix("-eval")
        assert named[r["domain"], key] and not named[r["domain"], key] & set(r["answers"])
        fact = facts[key]
        assert set(r["answers"]) == set(fact.members) - {fact.named} and r["exclude"] == [fact.named]


def test_teachers_see_every_member_of_their_facts():
    fact = world_facts(0, 3, 110)[5]
    rows = teacher_rows(fact)
    assert {r["answer"] for r in rows} == set(fact.members)
    assert all(set(r["answers"]) <= set(fact.members) for r in rows)
