import json

import pytest
import torch
from safetensors.torch import load_file

from rlcast.training.testbed import ASSET_DIR, base_model, build, char_tokenizer
from rlcast.training.testbed import TestbedConfig as Config


def test_char_tokenizer_round_trip():
    tok = char_tokenizer()
    ids = tok("23+45=68", add_special_tokens=False)["input_ids"]
    assert len(ids) == 8 and tok.decode(ids) == "23+45=68"
    assert tok.decode(tok("Any text: OK?")["input_ids"]) == "Any text: OK?"
    assert tok.unk_token_id not in tok("~{}")["input_ids"]
    assert not tok.chat_template


def test_base_model_is_the_partly_competent_asset(tmp_path):
    path = base_model(cache_dir=tmp_path)
    assert path.parent == tmp_path  # a cache copy: the package asset stays read-only
    for name in ("config.json", "model.safetensors", "tokenizer.json", "testbed.json"):
        assert (path / name).exists()
    info = json.loads((path / "testbed.json").read_text())
    assert info == json.loads((ASSET_DIR / "testbed.json").read_text())
    assert 0.4 <= info["greedy_accuracy"] <= 0.6
    assert 0.5e6 <= info["parameters"] <= 1.5e6
    assert info["fingerprint"] == Config().fingerprint()
    assert base_model(cache_dir=tmp_path) == path


@pytest.mark.slow
def test_build_is_deterministic(tmp_path):
    tiny = Config(hidden=32, layers=1, intermediate=64, steps=8, batch_size=16)
    a = build(tmp_path / "a", tiny, progress=False, eval_prompts=16)
    b = build(tmp_path / "b", tiny, progress=False, eval_prompts=16)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((a / "testbed.json").read_text())["greedy_accuracy"] == \
        json.loads((b / "testbed.json").read_text())["greedy_accuracy"]


def test_a_half_copied_cache_folder_is_replaced_whole(tmp_path):
    """An interrupted copy (no testbed.json) is not trusted: the asset is copied again, atomically, over it."""
    stale = tmp_path / f"testbed-{Config().fingerprint()}"
    stale.mkdir()
    (stale / "model.safetensors").write_text("truncated")
    path = base_model(cache_dir=tmp_path)
    assert path == stale and (path / "testbed.json").exists()
    assert load_file(path / "model.safetensors").keys() == load_file(ASSET_DIR / "model.safetensors").keys()
    assert [p.name for p in tmp_path.iterdir()] == [stale.name]  # no temp folder left behind
