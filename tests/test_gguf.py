"""GGUF sources and pivots (issue 25): `add-source FILE.gguf` converts into models/<slug> and pins both.

The GGUF here is written from a tiny Hugging Face model the way llama.cpp's converter writes one (llama
tensor names, q/k rows permuted for its rotary layout, a byte-level BPE vocabulary with its merges), so the
conversion is checked against the model it came from: same logits, same token ids.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from fusecli import hashing
from fusecli.cli import app
from fusecli.errors import FusecliError
from fusecli.lock import GgufPin, ModelEntry, dump_lock, parse_lock, read_lock

TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
         "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
         "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
       "lm_head.weight": "output.weight"}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (convert_hf_to_gguf.py `permute`); transformers undoes it on load."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(folder: Path, path: Path, template: str | None = TEMPLATE) -> Path:
    """The tiny Llama model in `folder` as a float32 GGUF file."""
    from gguf import GGUFWriter, TokenType
    from safetensors.torch import load_file

    cfg = json.loads((folder / "config.json").read_text())
    tok = json.loads((folder / "tokenizer.json").read_text())
    tokens = {i: t for t, i in tok["model"]["vocab"].items()} | {a["id"]: a["content"] for a in tok["added_tokens"]}
    special = {a["id"] for a in tok["added_tokens"]}
    w = GGUFWriter(str(path), "llama")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(float(cfg["rope_parameters"]["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([tokens[i] for i in range(cfg["vocab_size"])])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_token_types([TokenType.CONTROL if i in special else TokenType.NORMAL for i in range(cfg["vocab_size"])])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_bos_token_id(cfg["eos_token_id"])
    if template is not None:
        w.add_chat_template(template)
    for name, tensor in load_file(folder / "model.safetensors").items():
        array = tensor.float().numpy()
        if name not in TOP:
            _, _, layer, *rest, _ = name.split(".")
            part = ".".join(rest)
            heads = {"self_attn.q_proj": cfg["num_attention_heads"], "self_attn.k_proj": cfg["num_key_value_heads"]}
            if part in heads:
                array = _permute(array, heads[part])
            w.add_tensor(f"blk.{layer}.{LAYER[part]}.weight", np.ascontiguousarray(array))
        else:
            w.add_tensor(TOP[name], np.ascontiguousarray(array))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def ggufs(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf")
    return {"chat": write_gguf(tiny_models["llama"], root / "Tiny-Chat.F32.gguf"),
            "base": write_gguf(tiny_models["llama"], root / "tiny-base.gguf", template=None)}


@pytest.fixture
def pinned(ws: Path) -> Path:
    assert cli("set-pivot", "local/qwen").exit_code == 0
    return ws


def cli(*args: str):  # noqa: ANN201
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def error_line(result) -> str:  # noqa: ANN001
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def logits(folder: Path, ids: list[int]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_add_source_converts_and_pins_file_and_folder(pinned: Path, ggufs: dict[str, Path],
                                                      tiny_models: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    result = cli("add-source", str(ggufs["chat"]))
    assert result.exit_code == 0, result.stderr
    entry = read_lock("models.lock").sources["tiny-chat-f32"]
    assert (entry.origin, entry.path, entry.dtype, entry.architecture) == (
        "gguf", "models/tiny-chat-f32", "float32", "LlamaForCausalLM")
    digest = "sha256:" + hashlib.sha256(ggufs["chat"].read_bytes()).hexdigest()
    assert entry.gguf == GgufPin(file=ggufs["chat"].as_posix(), sha256=digest, chat_template=None)
    folder = pinned / entry.path
    assert entry.content_hash == hashing.content_hash(folder)
    assert entry.chat_template_hash == "sha256:" + hashlib.sha256(TEMPLATE.encode()).hexdigest()
    assert not list(folder.glob("*.bin")) and (folder / "model.safetensors").is_file()
    text = "What is the capital of France? Paris"
    original = AutoTokenizer.from_pretrained(tiny_models["llama"])
    ids = original(text)["input_ids"]
    assert AutoTokenizer.from_pretrained(folder)(text)["input_ids"] == ids
    assert torch.equal(logits(folder, ids), logits(tiny_models["llama"], ids))  # float32: exactly the model
    assert "models/tiny-chat-f32" in yaml.safe_load(Path("models.lock").read_text())["sources"]["tiny-chat-f32"][
        "path"]

    again = cli("add-source", str(ggufs["chat"]), "--replace")  # the conversion reproduces the pinned folder
    assert again.exit_code == 0, again.stderr
    assert read_lock("models.lock").sources["tiny-chat-f32"] == entry
    assert sorted(p.name for p in folder.parent.iterdir()) == [".gitignore", ".tiny-chat-f32.download.lock",
                                                               "tiny-chat-f32"]  # fmt: skip
    assert "/tiny-chat-f32" in (folder.parent / ".gitignore").read_text().split()  # the pinned folder: ignored


def test_dtype_option(pinned: Path, ggufs: dict[str, Path]) -> None:
    from safetensors import safe_open

    assert cli("add-source", str(ggufs["chat"]), "--name", "half", "--dtype", "bfloat16").exit_code == 0
    entry = read_lock("models.lock").sources["half"]
    assert entry.dtype == "bfloat16"
    with safe_open(pinned / entry.path / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    before = Path("models.lock").read_bytes()
    assert "--dtype 'int8' is not one of float32, bfloat16, float16" in error_line(
        cli("add-source", str(ggufs["chat"]), "--name", "q", "--dtype", "int8"))
    assert "--dtype applies to GGUF files, but local/llama is not one: drop --dtype" in error_line(
        cli("add-source", "local/llama", "--dtype", "float32"))
    assert "--chat-template applies to GGUF files" in error_line(
        cli("add-source", "local/llama", "--chat-template", str(ggufs["chat"])))
    assert "drop --revision" in error_line(cli("add-source", str(ggufs["chat"]), "--revision", "main"))
    assert Path("models.lock").read_bytes() == before


def test_a_gguf_without_template_is_refused_before_conversion(pinned: Path, ggufs: dict[str, Path],
                                                              tmp_path: Path) -> None:
    before = Path("models.lock").read_bytes()
    line = error_line(cli("add-source", str(ggufs["base"])))
    assert line == (f"error: source tiny-base {ggufs['base']} has no chat template: pass --chat-template FILE "
                    "(a Jinja chat template) to add-source or set-pivot with the GGUF file")
    assert "has no chat template: pass --chat-template FILE" in error_line(cli("set-pivot", str(ggufs["base"])))
    assert Path("models.lock").read_bytes() == before and not (pinned / "models").exists()

    template = tmp_path / "chatml.jinja"
    template.write_text(TEMPLATE + "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    result = cli("add-source", str(ggufs["base"]), "--chat-template", str(template))
    assert result.exit_code == 0, result.stderr
    entry = read_lock("models.lock").sources["tiny-base"]
    assert entry.gguf is not None and entry.gguf.chat_template == template.as_posix()
    assert entry.chat_template_hash == hashing.chat_template_hash(pinned / entry.path)
    assert (pinned / entry.path / "chat_template.jinja").read_text() == template.read_text()


def test_a_changed_gguf_is_caught_like_any_pin(pinned: Path, ggufs: dict[str, Path], tmp_path: Path) -> None:
    copy = pinned / "tiny.gguf"  # inside the workspace: pinned by its relative path
    copy.write_bytes(ggufs["chat"].read_bytes())
    assert cli("set-pivot", "tiny.gguf", "--dtype", "bfloat16").exit_code == 0
    lock = read_lock("models.lock")
    assert lock.pivot.gguf is not None and lock.pivot.gguf.file == "tiny.gguf"
    status = cli("status")
    assert "pinned files: unchanged" in status.stdout, status.stdout + status.stderr
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1  # a weight's last byte
    copy.write_bytes(bytes(data))
    line = error_line(cli("status"))
    assert "pivot: tiny.gguf changed on disk after it was converted" in line
    assert "fusecli set-pivot tiny.gguf --dtype bfloat16 --name tiny" in line
    copy.unlink()  # the GGUF gone: the folder is what the stages read, and it is still checked
    assert "pinned files: unchanged" in cli("status").stdout
    (pinned / "models/tiny/config.json").write_text("{}")
    assert "weights changed on disk after pinning (models/tiny)" in error_line(cli("status"))
    shutil.rmtree(pinned / "models/tiny")
    shutil.copy(Path(__file__).resolve().parents[1] / "params.yaml", pinned / "params.yaml")
    assert ("pivot: model folder models/tiny is missing: convert it again with fusecli set-pivot tiny.gguf "
            "--dtype bfloat16 --name tiny") in error_line(cli("check"))


def test_a_file_that_is_not_gguf_is_refused(ws: Path) -> None:
    fake = ws / "model.gguf"
    fake.write_text("not a model")
    assert "model.gguf is a file, not a model folder or a GGUF file" in error_line(cli("set-pivot", "model.gguf"))


def test_a_gguf_transformers_cannot_read_is_one_line(pinned: Path, tmp_path: Path) -> None:
    from gguf import GGUFWriter

    w = GGUFWriter(str(tmp_path / "odd.gguf"), "odd-arch")  # an architecture transformers has no loader for
    w.add_chat_template(TEMPLATE)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    before = Path("models.lock").read_bytes()
    line = error_line(cli("add-source", str(tmp_path / "odd.gguf")))
    assert "transformers cannot load" in line and "odd-arch" in line
    assert "pass the same model as a Hugging Face folder or hub repo instead" in line
    assert Path("models.lock").read_bytes() == before and not list((pinned / "models").glob("odd*"))


H = "sha256:" + "ab" * 32


def _entry(**over: object) -> ModelEntry:
    fields = dict(name="p", origin="gguf", path="models/p", repo=None, revision=None, content_hash=H,
                  architecture="LlamaForCausalLM", vocab_size=320, dtype="float32", chat_template_hash=H,
                  trust_remote_code=False, allow_pickle=False, gguf=GgufPin("p.gguf", H, None))
    return ModelEntry(**{**fields, **over})  # type: ignore[arg-type]


def test_lock_field() -> None:
    from fusecli.lock import Lock

    lock = Lock(pivot=_entry(), sources={"s": _entry(name="s", origin="local", path="local/s", gguf=None)})
    text = dump_lock(lock)
    assert parse_lock(text) == lock
    data = yaml.safe_load(text)
    assert data["pivot"]["gguf"] == {"file": "p.gguf", "sha256": H, "chat_template": None}
    assert "gguf" not in data["sources"]["s"]  # the other origins' entries are written as before
    for bad, words in [(_entry(gguf=None), "pivot.gguf must be set for origin gguf only"),
                       (_entry(origin="local"), "pivot.gguf must be set for origin gguf only"),
                       (_entry(gguf=GgufPin("p.gguf", "md5:1", None)), "pivot.gguf must be a mapping whose sha256"),
                       (_entry(path="/abs/p"), "pivot.path must be workspace-relative for origin gguf")]:
        with pytest.raises(FusecliError, match=words):
            parse_lock(dump_lock(Lock(pivot=bad, sources={})))
