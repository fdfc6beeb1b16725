"""Run discovery in every layout, lazy tensor access, LoRA factors vs PEFT's own merge, and every bad input."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rlcast.io.lora import LowRankDelta
from rlcast.io.reader import RunReader
from rlcast.io.checkpoints import load_run
from rlcast.io.selections import layer_of, select_names
from rlcast.io.tensors import TensorReader
from rlcast.errors import RlcastError
from rlcast.io.synthetic import planted_run, tiny_llama

pytestmark = pytest.mark.usefixtures("torch_single_thread")

UP = "model.layers.0.mlp.up_proj.weight"
Q = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def trl_run(tmp_path_factory):
    return planted_run(tmp_path_factory.mktemp("trl") / "run", steps=[20, 100, 40], hidden=32, layers=1)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_trl_layout_sorted_and_deltas_planted(trl_run):
    run = load_run(trl_run)
    assert run.steps == [20, 40, 100]
    assert run.base == (trl_run / "base").resolve()
    assert all(c.kind == "full" for c in run.checkpoints)
    reader = RunReader(run)
    delta = reader.delta(40, UP)
    s = torch.linalg.svdvals(delta)
    assert s[0].item() == pytest.approx(0.05 * 0.4, rel=1e-4)  # planted: c(t) * 0.05, rank one
    assert s[1].item() < 1e-5
    assert torch.allclose(reader.weight(40, UP), reader.base(UP) + delta)
    assert torch.equal(reader.weight(0, UP), reader.base(UP))
    assert reader.changed_names() == reader.names()
    assert run.window(40).steps == [20, 40]
    with pytest.raises(RlcastError, match="step 30"):
        run.checkpoint(30)


def test_trl_extra_files_ignored(trl_run, tmp_path):
    root = _copy(trl_run, tmp_path / "run")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        torch.save({"junk": torch.ones(2)}, root / "checkpoint-20" / name)
    (root / "checkpoint-20" / "trainer_state.json").write_text("{}")
    reader = TensorReader(root / "checkpoint-20")
    assert [f.name for f in reader.files] == ["model.safetensors"]
    assert RunReader(load_run(root)).delta(20, UP).abs().max() > 0


@pytest.mark.parametrize("layout", ["verl", "openrlhf"])
def test_verl_and_openrlhf_layouts(tmp_path, layout):
    root = planted_run(tmp_path / "run", steps=[5, 10], hidden=32, layers=1, layout=layout)
    run = load_run(root)
    assert run.steps == [5, 10]
    assert run.base == (root / "base").resolve()
    s = torch.linalg.svdvals(RunReader(run).delta(10, Q))
    assert s[0].item() == pytest.approx(0.05, rel=1e-4)


def test_explicit_checkpoints_and_base(trl_run):
    run = load_run(checkpoints={"200": trl_run / "checkpoint-100", 50: trl_run / "checkpoint-20"},
                   base=trl_run / "base")
    assert run.steps == [50, 200] and run.root is None
    with pytest.raises(RlcastError, match="'last' is not a number"):
        load_run(checkpoints={"last": trl_run / "checkpoint-100"}, base=trl_run / "base")


def test_duplicate_and_non_numeric_steps(trl_run, tmp_path):
    root = _copy(trl_run, tmp_path / "dup")
    _copy(root / "checkpoint-20", root / "global_step20_hf")
    with pytest.raises(RlcastError, match="duplicate steps.*step 20: checkpoint-20, global_step20_hf"):
        load_run(root)
    root = _copy(trl_run, tmp_path / "bad")
    _copy(root / "checkpoint-20", root / "checkpoint-best")
    with pytest.raises(RlcastError, match="non-numeric step folder names: checkpoint-best"):
        load_run(root)


def test_base_from_step0_and_missing_base(trl_run, tmp_path):
    root = _copy(trl_run, tmp_path / "run")
    (root / "base").rename(root / "checkpoint-0")
    run = load_run(root)
    assert run.base == (root / "checkpoint-0").resolve() and run.steps == [20, 40, 100]
    shutil.rmtree(root / "checkpoint-0")
    with pytest.raises(RlcastError, match="base model not found; pass --base"):
        load_run(root)
    with pytest.raises(RlcastError, match="nowhere: base model folder not found"):
        load_run(root, base=tmp_path / "nowhere")


def test_manifest(trl_run, tmp_path):
    root = _copy(trl_run, tmp_path / "run")
    (root / "run.json").write_text(json.dumps({
        "base": "base", "base_accuracy": 0.1,
        "checkpoints": [{"step": 40, "path": "checkpoint-40", "accuracy": 0.3},
                        {"step": 20, "path": "checkpoint-20", "accuracy": 0.2}]}))
    run = load_run(root)
    assert run.steps == [20, 40]  # the manifest lists the run, checkpoint-100 is not part of it
    assert run.accuracy == {0: 0.1, 20: 0.2, 40: 0.3}
    assert run.manifest.base_accuracy == 0.1 and run.manifest.format == 1


def test_sharded_half_precision_and_bin(tmp_path):
    base = tiny_llama(tmp_path / "base", hidden=32, layers=1, dtype=torch.bfloat16)
    state = load_file(base / "model.safetensors")
    names = list(state)
    # sharded safetensors checkpoint (bf16) with an index
    ckpt = tmp_path / "run" / "checkpoint-10"
    ckpt.mkdir(parents=True)
    new = {n: (t.float() + 0.01).to(torch.bfloat16) for n, t in state.items()}
    half = len(names) // 2
    save_file({n: new[n] for n in names[:half]}, ckpt / "model-00001-of-00002.safetensors")
    save_file({n: new[n] for n in names[half:]}, ckpt / "model-00002-of-00002.safetensors")
    index = {"weight_map": {n: f"model-0000{1 + (i >= half)}-of-00002.safetensors" for i, n in enumerate(names)}}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    # a pickled checkpoint in fp32 (more precise than the bf16 base: allowed)
    ckpt2 = tmp_path / "run" / "checkpoint-20"
    ckpt2.mkdir()
    torch.save({n: t.float() + 0.02 for n, t in state.items()}, ckpt2 / "pytorch_model.bin")
    reader = TensorReader(ckpt)
    assert len(reader.files) == 2 and reader.dtype(UP) == torch.bfloat16 and reader.shape(UP) == (64, 32)
    assert torch.equal(reader.get(UP), new[UP])
    run_reader = RunReader(load_run(tmp_path / "run", base=base))
    d10 = run_reader.delta(10, UP)
    assert d10.dtype == torch.float32
    assert torch.equal(d10, new[UP].float() - state[UP].float())
    assert torch.allclose(run_reader.delta(20, UP), torch.full((64, 32), 0.02))


def test_sharded_fp16_bin(tmp_path):
    base = tiny_llama(tmp_path / "base", hidden=32, layers=1, dtype=torch.float16)
    state = load_file(base / "model.safetensors")
    names = list(state)
    ckpt = tmp_path / "run" / "global_step_3" / "actor" / "huggingface"
    ckpt.mkdir(parents=True)
    torch.save({n: state[n] + 1 for n in names[:4]}, ckpt / "pytorch_model-00001-of-00002.bin")
    torch.save({n: state[n] + 1 for n in names[4:]}, ckpt / "pytorch_model-00002-of-00002.bin")
    index = {"weight_map": {n: f"pytorch_model-0000{1 + (i >= 4)}-of-00002.bin" for i, n in enumerate(names)}}
    (ckpt / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    reader = RunReader(load_run(tmp_path / "run", base=base))
    assert reader.base_reader.dtype(UP) == torch.float16
    for name in (names[0], UP):
        assert torch.equal(reader.delta(3, name), (state[name] + 1).float() - state[name].float())


def _peft_adapter(base: Path, out: Path, **lora_kwargs) -> dict[str, torch.Tensor]:
    """Save a PEFT adapter with random B factors; return the weights of PEFT's own merged model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(**lora_kwargs))
    for name, p in model.named_parameters():
        if "lora_B" in name or "modules_to_save" in name:
            torch.nn.init.normal_(p, std=0.1)
    model.save_pretrained(out)
    return {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}


def test_lora_factors_match_peft_merge(tmp_path):
    base = tiny_llama(tmp_path / "base", hidden=32, layers=1)
    merged = _peft_adapter(base, tmp_path / "run" / "checkpoint-10", r=4, lora_alpha=8, use_rslora=True,
                           target_modules=["q_proj", "up_proj", "v_proj"], modules_to_save=["lm_head"],
                           rank_pattern={"up_proj": 2}, alpha_pattern={"model.layers.0.self_attn.q_proj": 3})
    run = load_run(tmp_path / "run", base=base)
    assert run.checkpoints[0].kind == "lora"
    reader = RunReader(run)
    assert set(reader.changed_names()) == {Q, UP, "model.layers.0.self_attn.v_proj.weight", "lm_head.weight"}
    up = reader.delta(10, UP)
    assert isinstance(up, LowRankDelta) and up.B.shape == (64, 2) and up.scale == pytest.approx(8 / 2 ** 0.5)
    assert reader.delta(10, Q).scale == pytest.approx(3 / 2)
    for name in reader.changed_names():
        assert torch.allclose(reader.weight(10, name), merged[name], atol=1e-6), name
    assert torch.equal(reader.delta(10, "model.layers.0.mlp.down_proj.weight"), torch.zeros(32, 64))


def test_lora_fan_in_fan_out_gpt2(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=96, n_positions=64)).save_pretrained(
        tmp_path / "base")
    merged = _peft_adapter(tmp_path / "base", tmp_path / "run" / "checkpoint-3", r=4, lora_alpha=4,
                           target_modules=["c_attn"], fan_in_fan_out=True)
    reader = RunReader(load_run(tmp_path / "run"))  # base from the adapter's local base_model_name_or_path
    (name,) = reader.changed_names()
    assert name.endswith("h.0.attn.c_attn.weight") and reader.shape(name) == (32, 96)
    assert reader.delta(3, name).shape == (32, 96)
    assert torch.allclose(reader.weight(3, name), merged[name], atol=1e-6)
    assert layer_of(name) == 0


def test_lora_default_style_keys_and_base_from_adapter(tmp_path):
    base = tiny_llama(tmp_path / "base", hidden=32, layers=1)
    folder = tmp_path / "run" / "global_step_7" / "actor" / "lora_adapter"
    folder.mkdir(parents=True)
    A, B = torch.randn(2, 32), torch.randn(64, 2)
    save_file({f"base_model.model.{UP[:-7]}.lora_A.default.weight": A,
               f"base_model.model.{UP[:-7]}.lora_B.default.weight": B}, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "base_model_name_or_path": str(base)}))
    reader = RunReader(load_run(tmp_path / "run"))
    assert reader.changed_names() == [UP]
    assert torch.allclose(reader.delta(7, UP).dense(), 2 * B @ A)


def test_bad_adapters(tmp_path):
    base = tiny_llama(tmp_path / "base", hidden=32, layers=1)
    folder = tmp_path / "run" / "checkpoint-1"
    folder.mkdir(parents=True)
    save_file({f"base_model.model.{UP[:-7]}.lora_A.weight": torch.ones(2, 32)}, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text("{not json")
    with pytest.raises(RlcastError, match="adapter_config.json: unreadable adapter config"):
        load_run(tmp_path / "run", base=base)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 2, "use_dora": True}))
    with pytest.raises(RlcastError, match="DoRA adapters are not supported"):
        load_run(tmp_path / "run", base=base)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 2}))
    with pytest.raises(RlcastError, match="lacks its B factor"):
        RunReader(load_run(tmp_path / "run", base=base)).delta(1, UP)


@pytest.fixture()
def one_ckpt(tmp_path):
    base = tiny_llama(tmp_path / "base", hidden=32, layers=1)
    ckpt = tmp_path / "run" / "checkpoint-10"
    ckpt.mkdir(parents=True)
    return base, ckpt, load_file(base / "model.safetensors")


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update({UP: torch.zeros(32, 64)}), f"tensor {UP} has shape \\[32, 64\\] at step 10 but \\[64, 32\\]"),
    (lambda s: s.update({UP: s[UP].to(torch.bfloat16)}), f"tensor {UP} is torch.bfloat16 at step 10 but torch.float32"),
    (lambda s: s.pop(UP), f"tensor {UP} is in the base but not in the checkpoint \\(step 10\\)"),
    (lambda s: s.update({"extra.weight": torch.ones(3)}), "tensor extra.weight is in the checkpoint \\(step 10\\)"),
])
def test_mismatches(one_ckpt, edit, message):
    base, ckpt, state = one_ckpt
    edit(state)
    save_file(state, ckpt / "model.safetensors")
    with pytest.raises(RlcastError, match=message):
        RunReader(load_run(ckpt.parent, base=base)).delta(10, Q)


def test_nan_delta(one_ckpt):
    base, ckpt, state = one_ckpt
    state[UP][3, 4] = float("nan")
    save_file(state, ckpt / "model.safetensors")
    reader = RunReader(load_run(ckpt.parent, base=base))
    reader.delta(10, Q)  # other tensors are fine
    with pytest.raises(RlcastError, match=f"checkpoint-10/model.safetensors: NaN/Inf in tensor {UP} at step 10"):
        reader.delta(10, UP)


def test_truncated_and_corrupt_safetensors(one_ckpt):
    base, ckpt, state = one_ckpt
    save_file(state, ckpt / "model.safetensors")
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(RlcastError, match="model.safetensors: tensor .* is truncated"):
        TensorReader(ckpt)
    (ckpt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(RlcastError, match="model.safetensors: corrupt or truncated safetensors file"):
        RunReader(load_run(ckpt.parent, base=base)).delta(10, Q)
    (ckpt / "model.safetensors").unlink()
    (ckpt / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(RlcastError, match="pytorch_model.bin: cannot load with torch.load"):
        TensorReader(ckpt)


def test_tied_embeddings_either_way(one_ckpt):
    base, ckpt, state = one_ckpt
    # checkpoint saved with tied embeddings: no lm_head, config says tied -> lm_head reads the embedding
    tied = {n: t + 0.01 for n, t in state.items() if n != "lm_head.weight"}
    save_file(tied, ckpt / "model.safetensors")
    config = json.loads((base / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    reader = RunReader(load_run(ckpt.parent, base=base))
    emb = "model.embed_tokens.weight"
    assert torch.allclose(reader.weight(10, "lm_head.weight"), reader.weight(10, emb))
    # base saved tied (no lm_head), checkpoint untied: the extra lm_head is not an error, names follow the base
    tied_base = base.parent / "tied_base"
    tied_base.mkdir()
    save_file({n: t for n, t in state.items() if n != "lm_head.weight"}, tied_base / "model.safetensors")
    (tied_base / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    save_file({n: t + 0.01 for n, t in state.items()}, ckpt / "model.safetensors")
    reader = RunReader(load_run(ckpt.parent, base=tied_base))
    assert "lm_head.weight" not in reader.names()
    assert torch.allclose(reader.delta(10, emb), torch.full(state[emb].shape, 0.01), atol=1e-6)


def test_select_names():
    names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
             "model.layers.0.input_layernorm.weight", "model.layers.1.mlp.down_proj.weight", "model.norm.weight",
             "lm_head.weight", "transformer.h.3.attn.c_attn.weight"]
    shapes = [(96, 32), (32, 32), (32,), (32, 64), (32,), (96, 32), (32, 96)]
    assert select_names(names, shapes, "blocks") == [names[1], names[3], names[6]]
    assert select_names(names, dict(zip(names, shapes)), "all-2d") == [names[0], names[1], names[3], names[5],
                                                                       names[6]]
    assert select_names(names, shapes, "all") == names
    with pytest.raises(RlcastError, match="unknown module selection 'attn'"):
        select_names(names, shapes, "attn")


def _header(path: Path, header, data: bytes = b"", length: int | None = None) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes((len(raw) if length is None else length).to_bytes(8, "little") + raw + data)


@pytest.mark.parametrize("header, data, message", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(12),
     "the header describes 8 bytes of data, the file holds 12"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8), "overlapping or corrupt header"),
    ({"a": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}}, bytes(8),
     "corrupt safetensors header entry for tensor a"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [8, 0]}}, b"", "corrupt safetensors header entry"),
    ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), "corrupt safetensors header entry"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8),
     "tensor a is corrupt (8 bytes for shape [3] F32, which needs 12)"),
    ({"a": [1]}, b"", "corrupt safetensors header entry for tensor a"),
])
def test_safetensors_headers_must_tile_the_file(tmp_path, header, data, message):
    """What the safetensors library refuses, rlcast refuses first, naming the file (and the tensor)."""
    path = tmp_path / "model.safetensors"
    _header(path, header, data)
    with pytest.raises(RlcastError) as err:
        TensorReader(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_a_header_above_the_safetensors_limit_is_not_read(tmp_path):
    path = tmp_path / "model.safetensors"
    with open(path, "wb") as f:  # sparse: 300 MB on paper, nothing on disk
        f.write((200_000_000).to_bytes(8, "little"))
        f.truncate(300_000_000)
    with pytest.raises(RlcastError, match="header length 200000000 is above the safetensors limit"):
        TensorReader(path)


def test_bad_shard_index_and_pickles(one_ckpt):
    base, ckpt, state = one_ckpt
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["model.safetensors"]}))
    with pytest.raises(RlcastError, match="index.json: unreadable shard index .weight_map is not an object"):
        TensorReader(ckpt)
    (ckpt / "model.safetensors.index.json").unlink()
    torch.save({1: torch.ones(2)}, ckpt / "pytorch_model.bin")
    with pytest.raises(RlcastError, match="pytorch_model.bin: not a state dict of tensors"):
        TensorReader(ckpt)


def test_check_reads_every_tensor_and_names_the_culprit(one_ckpt):
    base, ckpt, state = one_ckpt
    save_file(state, ckpt / "model.safetensors")
    RunReader(load_run(ckpt.parent, base=base)).check([10])  # finite: no error
    bad = dict(state)
    bad["model.norm.weight"] = state["model.norm.weight"].clone()
    bad["model.norm.weight"][0] = float("-inf")
    save_file(bad, ckpt / "model.safetensors")
    with pytest.raises(RlcastError, match="checkpoint-10/model.safetensors: NaN/Inf in tensor model.norm.weight at "
                                          "step 10"):
        RunReader(load_run(ckpt.parent, base=base)).check([10])
