import json

import pytest
import torch
from safetensors import safe_open

from rlcast.errors import RlcastError
from rlcast.io.synthetic import tiny_llama
from rlcast.io.writer import base_layout, write_model


def _tokenizer(folder):
    """A word-level tokenizer over single characters, saved next to the tiny model (no hub download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate("0123456789+-*= abcdefgh")}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    fast.save_pretrained(folder)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tiny_llama(tmp_path_factory.mktemp("base") / "base", hidden=32, layers=1, vocab=32)
    _tokenizer(folder)
    (folder / "generation_config.json").write_text(json.dumps({"do_sample": False, "max_new_tokens": 4}))
    return folder


def _stream(base, shift=0.0):
    layout = base_layout(base)
    with safe_open(str(base / "model.safetensors"), "pt") as f:
        for name in layout:
            yield name, f.get_tensor(name) + shift


def test_round_trip_sharded_loads_and_generates(base, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = write_model(base, tmp_path / "out", _stream(base, shift=0.01), metadata={"rlcast": {"method": "test"}},
                      shard_mb=0)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) == len(base_layout(base)) > 1  # shard_mb=0: one tensor per shard
    assert set(index["weight_map"]) == set(base_layout(base))
    with safe_open(str(out / files[0]), "pt") as f:
        assert json.loads(f.metadata()["rlcast"]) == {"method": "test"}
    for file in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / file).read_bytes() == (base / file).read_bytes()

    model = AutoModelForCausalLM.from_pretrained(out)
    with safe_open(str(base / "model.safetensors"), "pt") as f:
        for name, param in model.state_dict().items():
            assert torch.allclose(param, f.get_tensor(name) + 0.01), name
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template
    ids = tokenizer("1+2=", return_tensors="pt").input_ids
    generated = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, ids.shape[1] + 3)
    assert not list(tmp_path.glob(".out.rlcast-*"))


def test_single_shard_in_base_dtype_and_override(tmp_path):
    base = tiny_llama(tmp_path / "base", hidden=32, layers=1, vocab=32, dtype=torch.bfloat16)
    stream = ((name, t.float()) for name, t in _stream(base))
    out = write_model(base, tmp_path / "out", stream)
    assert (out / "model.safetensors").exists() and not (out / "model.safetensors.index.json").exists()
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in f.keys())
    out = write_model(base, tmp_path / "out", _stream(base), dtype=torch.float16)  # overwrites in place
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
    assert not list(tmp_path.glob(".out.*"))


def _bad(base, kind):
    items = list(_stream(base))
    if kind == "missing":
        return items[:-1], items[-1][0]
    if kind == "twice":
        return items + [items[0]], items[0][0]
    if kind == "unknown":
        return items + [("model.extra.weight", torch.zeros(2))], "model.extra.weight"
    name, t = items[1]
    return items[:1] + [(name, t[:1])] + items[2:], name


@pytest.mark.parametrize("kind", ["missing", "twice", "unknown", "shape"])
def test_bad_stream_names_the_tensor_and_leaves_nothing(base, tmp_path, kind):
    items, name = _bad(base, kind)
    with pytest.raises(RlcastError, match=name.replace(".", r"\.")):
        write_model(base, tmp_path / "out", iter(items))
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_base(base):
    with pytest.raises(RlcastError, match="base"):
        write_model(base, base, _stream(base))
