from fusecli.demo.qa import DOMAINS, RELATIONS, load_facts, qa_rows


def test_facts_are_clean_and_complete():
    facts = load_facts()
    assert len(facts) > 200
    assert len({f["country"] for f in facts}) == len(facts)
    for fact in facts:
        assert all(isinstance(v, str) and v and v.isascii() for v in fact.values())


def test_rows_are_deterministic_and_well_formed():
    rows = qa_rows()
    assert rows == qa_rows()
    assert len({r["id"] for r in rows}) == len(rows)
    assert {r["domain"] for r in rows} == set(DOMAINS)
    for r in rows[:50]:
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        assert r["messages"][1]["content"] == r["answer"]


def test_eval_template_is_unseen_in_train():
    rows = qa_rows()
    for domain in DOMAINS:
        train = {r["messages"][0]["content"] for r in rows if r["domain"] == domain and r["split"] == "train"}
        held = [r for r in rows if r["domain"] == domain and r["split"] == "eval"]
        assert len(held) == len(load_facts())
        assert not train & {r["messages"][0]["content"] for r in held}
        eval_words = set(RELATIONS[domain][2].replace("{country}", "").split())
        train_words = {w for t in RELATIONS[domain][1] for w in t.replace("{country}", "").split()}
        # every eval word is known from some training wording, modulo punctuation
        assert {w.strip(".?:") for w in eval_words} <= {w.strip(".?:") for w in train_words}
