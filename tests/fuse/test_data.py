"""Fused targets: the teacher choice over any number of sources, the competence gate and the two controls
(reference, pivot), each against a plain dense recomputation from the stored records."""

import numpy as np
import polars as pl
import pytest
import torch

from fusecli.config import from_dict
from fusecli.errors import FusecliError
from fusecli.fuse.data import build_examples, collate
from fusecli.fuse.loss import combine, sparse_losses
from fusecli.fuse.train import FuseParams
from fusecli.store import StoreWriter, iter_records

VOCAB, K, N = 40, 4, 18
DOMAINS = ["capital", "currency", "region"]


def write_store(path, records):
    w = StoreWriter.open(path, {"test": 1})
    w.write_all(records)
    w.close()
    return path


def topk(rng, rows):
    ids = np.stack([rng.choice(VOCAB, K, replace=False) for _ in range(rows)]).astype(np.int64)
    lp = np.sort(rng.normal(size=(rows, K)), axis=1)[:, ::-1].astype(np.float32)
    return ids, np.ascontiguousarray(lp)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A pivot store and two aligned sources with CEs spread around 1 nat; source b lacks sequence 3 and has
    unmapped rows (-1 ids), as align writes them."""
    d = tmp_path_factory.mktemp("fusedata")
    rng = np.random.default_rng(0)
    pl.DataFrame({"domain": [DOMAINS[i % 3] for i in range(N)]}).write_parquet(d / "train.parquet")
    pivot, sources = [], {"a": [], "b": []}
    for i in range(N):
        t = int(rng.integers(6, 12))
        mask = np.zeros(t, np.uint8)
        mask[t // 2:] = 1
        r = int(mask.sum())
        ids, lp = topk(rng, r)
        ce = 0.3 if i == 0 else float(rng.uniform(0.2, 2.5))  # sequence 0: pivot and source a tie
        pivot.append({"seq_index": i, "input_ids": rng.integers(0, VOCAB, t).astype(np.int64), "label_mask": mask,
                      "topk_ids": ids, "topk_logprobs": lp, "seq_ce": ce})
        for slug, recs in sources.items():
            if slug == "b" and i == 3:
                continue
            ids, lp = topk(rng, r)
            if slug == "b":
                ids[0] = -1
                lp[0] = -np.inf
            ce = 0.3 if (i == 0 and slug == "a") else float(rng.uniform(0.2, 2.5))
            recs.append({"seq_index": i, "topk_ids": ids, "topk_logprobs": lp, "seq_ce": ce})
    write_store(d / "extract", pivot)
    for slug, recs in sources.items():
        write_store(d / "align" / slug, recs)
    return d


def dense(ids, probs):
    q = np.zeros((len(ids), VOCAB))
    for r in range(len(ids)):
        for j in range(ids.shape[1]):
            if ids[r, j] >= 0:
                q[r, ids[r, j]] += probs[r, j]
    return q


def softmax_rows(lp, temperature):
    out = np.zeros(lp.shape)
    for r in range(len(lp)):
        finite = np.isfinite(lp[r])
        if finite.any():
            e = np.exp((lp[r][finite] - lp[r][finite].max()) / temperature)
            out[r, finite] = e / e.sum()
    return out


def plain_reference(world, slugs, fn, gate, teacher, temperature=1.0):
    """Dense targets and statistics, one sequence at a time, straight from the definitions."""
    domains = pl.read_parquet(world / "train.parquet")["domain"].to_list()
    stores = [{r["seq_index"]: r for r in iter_records(world / "align" / s)} for s in slugs]
    targets, weights, gated = [], {}, {}
    for rec in iter_records(world / "extract"):
        i = int(rec["seq_index"])
        gold = rec["input_ids"][np.nonzero(rec["label_mask"])[0]]
        qs = [dense(rec["topk_ids"], softmax_rows(rec["topk_logprobs"], temperature))]
        ces = [float(rec["seq_ce"])]
        for store in stores:
            src = store.get(i)
            qs.append(np.zeros_like(qs[0]) if src is None else dense(src["topk_ids"],
                                                                       softmax_rows(src["topk_logprobs"], temperature)))
            ces.append(float("inf") if src is None else float(src["seq_ce"]))
        alive = [k for k, c in enumerate(ces) if np.isfinite(c) and (gate is None or c <= gate)]
        w = np.zeros(len(ces))
        if alive and fn == "mince":
            w[min(alive, key=lambda k: (ces[k], k))] = 1.0
        elif alive:
            r = {k: np.exp(-ces[k]) for k in alive}
            z = sum(np.exp(v) for v in r.values())
            for k, v in r.items():
                w[k] = np.exp(v) / z
        pivot_alive = 0 in alive
        if not alive or teacher == "reference" or (teacher == "pivot" and not pivot_alive):
            q = np.eye(VOCAB)[gold]
        elif teacher == "pivot":
            q = qs[0]
        else:
            q = sum(w[k] * qs[k] for k in range(len(ces)))
        targets.append(q)
        weights.setdefault(domains[i], []).append(w)
        gated.setdefault(domains[i], []).append(not alive)
    return targets, weights, gated


def build(world, slugs, fn="mince", gate=None, teacher="model"):
    return build_examples(world / "extract", [world / "align" / s for s in slugs], world / "train.parquet", fn, 1.0,
                          VOCAB, teacher, gate)


CASES = [(slugs, fn, gate) for slugs in (["a"], ["a", "b"]) for fn in ("mince", "avgce") for gate in (None, 1.0, 0.6)]


@pytest.mark.parametrize(("slugs", "fn", "gate"), CASES)
def test_targets_and_statistics_match_a_plain_recomputation(world, slugs, fn, gate):
    examples, stats = build(world, slugs, fn, gate)
    targets, weights, gated = plain_reference(world, slugs, fn, gate, "model")
    for e, q in zip(examples, targets, strict=True):
        np.testing.assert_allclose(dense(e.target_ids, e.target_probs), q, atol=1e-6)
    names = ["pivot", *slugs]
    for d in DOMAINS:
        mean_w = np.mean(weights[d], axis=0)
        assert stats["source_share"][d] == pytest.approx(mean_w[1:].sum())
        for k, name in enumerate(names):
            assert stats["teacher_share"][name][d] == pytest.approx(mean_w[k])
        assert stats["gated_share"][d] == pytest.approx(np.mean(gated[d]))
        assert stats["sequences"][d] == N // 3
    assert stats["gate"] == gate and stats["teacher"] == "model"
    if gate is None:
        assert all(v == 0.0 for v in stats["gated_share"].values())
    if gate == 0.6:
        assert any(v > 0.0 for v in stats["gated_share"].values()), "the fixture's CEs must trip the gate"


@pytest.mark.parametrize(("slugs", "fn", "gate"), CASES)
def test_each_example_carries_the_sources_share_of_its_target(world, slugs, fn, gate):
    examples, _ = build(world, slugs, fn, gate)
    _, weights, _ = plain_reference(world, slugs, fn, gate, "model")
    domains = pl.read_parquet(world / "train.parquet")["domain"].to_list()
    seen: dict[str, int] = {}
    for rec, e in zip(iter_records(world / "extract"), examples, strict=True):
        d = domains[int(rec["seq_index"])]
        w = weights[d][seen.setdefault(d, 0)]
        seen[d] += 1
        assert e.source_weight == pytest.approx(w[1:].sum())


def test_min_ce_ties_go_to_the_pivot_and_a_missing_source_never_teaches(world):
    examples, _ = build(world, ["a", "b"])
    rec = next(iter_records(world / "extract"))
    np.testing.assert_array_equal(examples[0].target_ids, rec["topk_ids"])  # sequence 0: pivot CE == source a CE
    _, weights, _ = plain_reference(world, ["a", "b"], "mince", None, "model")
    assert weights["capital"][1][2] == 0.0  # sequence 3 (capital, 2nd) has no record in b


@pytest.mark.parametrize("gate", [None, 0.6])
def test_reference_teacher_gives_gold_one_hots_and_the_same_selection(world, gate):
    examples, stats = build(world, ["a", "b"], gate=gate, teacher="reference")
    for e in examples:
        assert e.target_ids.shape[1] == 1
        np.testing.assert_array_equal(e.target_ids[:, 0], e.input_ids[e.positions])
        np.testing.assert_array_equal(e.target_probs, np.ones_like(e.target_probs))
    _, model_stats = build(world, ["a", "b"], gate=gate)
    assert stats == {**model_stats, "teacher": "reference"}


@pytest.mark.parametrize(("slugs", "gate"), [(["a"], None), (["a", "b"], None), (["a", "b"], 0.6)])
def test_pivot_teacher_is_the_pivots_own_row_and_the_same_selection(world, slugs, gate):
    """fuse.teacher: pivot, the self-distillation control: every target is the pivot's own top-K row, or the
    reference one-hot where the gate drops the pivot (as in a run with no source), whoever MinCE chose."""
    examples, stats = build(world, slugs, gate=gate, teacher="pivot")
    targets, _, _ = plain_reference(world, slugs, "mince", gate, "pivot")
    pivot = list(iter_records(world / "extract"))
    for e, q, rec in zip(examples, targets, pivot, strict=True):
        np.testing.assert_allclose(dense(e.target_ids, e.target_probs), q, atol=1e-6)
        if gate is None:  # the stored row itself: the pivot's ids, its softmax, nothing of a source
            np.testing.assert_array_equal(e.target_ids, rec["topk_ids"])
            np.testing.assert_allclose(e.target_probs, softmax_rows(rec["topk_logprobs"], 1.0), atol=1e-6)
    _, model_stats = build(world, slugs, gate=gate)
    assert stats == {**model_stats, "teacher": "pivot"}
    assert any(v > 0 for v in stats["source_share"].values()), "the sources would have taught: the control drops them"
    if gate is not None:
        gated_pivot = [e for e, rec in zip(examples, pivot, strict=True) if rec["seq_ce"] > gate]
        assert gated_pivot, "the fixture's CEs must trip the gate on the pivot"
        for e in gated_pivot:
            np.testing.assert_array_equal(e.target_ids[:, 0], e.input_ids[e.positions])


def test_reference_loss_equals_plain_sft(world):
    examples, _ = build(world, ["a", "b"], teacher="reference")
    model_examples, _ = build(world, ["a", "b"])
    torch.manual_seed(0)
    head = torch.nn.Linear(8, VOCAB, bias=False)

    def loss_of(batch_examples, lam):
        b = collate([{"input_ids": e.input_ids, "positions": e.positions, "ids": e.target_ids,
                      "probs": e.target_probs} for e in batch_examples])
        hidden = torch.randn(len(b["row_batch"]), 8, generator=torch.Generator().manual_seed(1))
        gold = b["input_ids"][b["row_batch"], b["row_pos"]]
        sft, fuse = sparse_losses(hidden, head, gold, b["target_ids"], b["target_probs"], chunk=7)
        plain = torch.nn.functional.cross_entropy(head(hidden), gold)
        return combine(sft, fuse, lam), plain

    torch.set_grad_enabled(False)
    for lam in (0.0, 0.7):
        loss, plain = loss_of(examples, lam)
        assert float(loss) == pytest.approx(float(plain), rel=1e-5)
    fused, plain = loss_of(model_examples, 0.7)
    torch.set_grad_enabled(True)
    assert abs(float(fused) - float(plain)) > 1e-3  # the model teachers do change the loss


def test_teacher_and_gate_are_validated_with_one_line():
    unknown = r"fuse.teacher = 'oracle' is unknown: use one of \['model', 'reference', 'pivot'\]"
    with pytest.raises(FusecliError, match=unknown):
        from_dict(FuseParams, {"teacher": "oracle"}, "fuse")
    with pytest.raises(FusecliError, match="fuse.gate = -1.0 must be > 0 nats, or null") as err:
        from_dict(FuseParams, {"gate": -1.0}, "fuse")
    assert "\n" not in str(err.value)
    assert from_dict(FuseParams, {"gate": 1, "teacher": "reference"}, "fuse").gate == 1.0
    assert from_dict(FuseParams, {"gate": None}, "fuse").gate is None
