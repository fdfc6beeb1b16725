"""verl FSDP checkpoints read in place: real FSDP1/FSDP2 shards (full and LoRA) against merged folders and adapters.

The shards are written by torch's own FSDP on the CPU (gloo, forked processes), in verl's file layout, once per
module; every analysis of a shard run must equal the analysis of the same weights as HF folders / PEFT adapters.
FSDP1 runs on the CPU only with an explicit `device_id=torch.device("cpu")` (without it, torch 2.13 refuses:
"FSDP needs a non-CPU accelerator device").
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, StateDictType, fully_shard
from transformers import AutoModelForCausalLM
from transformers.utils import logging

from rlcast.apps.analysis import analyze
from rlcast.errors import RlcastError
from rlcast.io.checkpoints import load_run
from rlcast.io.lora import LowRankDelta
from rlcast.io.reader import RunReader
from rlcast.io.synthetic import planted_run, tiny_llama
from rlcast.io.verl import VerlShards

pytestmark = pytest.mark.usefixtures("torch_single_thread")

STEPS = [10, 20, 30]
LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"])


def _peft(base: Path, seed: int):
    """A PEFT LoRA model on `base` with random factors (so that the update is not zero)."""
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(**LORA))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def _save_shards(model, fsdp: int, hsdp: bool, actor: Path, meta: dict | None, lora_only: bool) -> None:
    """Wrap `model` with FSDP1 or FSDP2 on verl's device mesh and save it as verl's FSDPCheckpointManager does."""
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = (init_device_mesh("cpu", (world, 1), mesh_dim_names=("ddp", "fsdp")) if hsdp
            else init_device_mesh("cpu", (world,), mesh_dim_names=("fsdp",)))
    if fsdp == 1:
        wrapped = FSDP(model, device_mesh=mesh, device_id=torch.device("cpu"), use_orig_params=True)
        with FSDP.state_dict_type(wrapped, StateDictType.SHARDED_STATE_DICT):
            state = wrapped.state_dict()
    else:
        for layer in model.get_decoder().layers:
            fully_shard(layer, mesh=mesh)
        state = fully_shard(model, mesh=mesh).state_dict()
    if lora_only:  # verl's checkpoint.save_lora_only filter
        state = {k: v for k, v in state.items() if "lora_" in k or ".adapter_" in k}
    actor.mkdir(parents=True, exist_ok=True)
    torch.save(state, actor / f"model_world_size_{world}_rank_{rank}.pt")
    if rank == 0:
        (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": fsdp, "world_size": world}))
        (actor / "huggingface").mkdir(exist_ok=True)
        model.config.save_pretrained(actor / "huggingface")
        if meta:
            (actor / "lora_train_meta.json").write_text(json.dumps(meta))
    dist.barrier()


def _worker(rank: int, world: int, store: str, jobs: list) -> None:
    """One FSDP rank: (kind "full" | "lora" | "lora-only", FSDP version, HSDP mesh, source, actor, seed) per job."""
    torch.set_num_threads(1)  # before any parallel op: a forked child must not enter the parent's OpenMP pool
    logging.disable_progress_bar()
    dist.init_process_group("gloo", rank=rank, world_size=world, store=dist.FileStore(store, world))
    for kind, fsdp, hsdp, src, actor, seed in jobs:
        model = AutoModelForCausalLM.from_pretrained(src) if kind == "full" else _peft(src, seed)
        meta = None if kind == "full" else {"r": LORA["r"], "lora_alpha": LORA["lora_alpha"], "task_type": "CAUSAL_LM"}
        _save_shards(model, fsdp, hsdp, actor, meta, lora_only=kind == "lora-only")
    dist.destroy_process_group()


def _fsdp(world: int, store: Path, jobs: list) -> None:
    """Run `jobs` on `world` forked gloo ranks (a file store: no TCP rendezvous, which takes seconds)."""
    mp.start_processes(_worker, args=(world, str(store), jobs), nprocs=world, start_method="fork")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: run root}: merged HF run, PEFT adapter run, and their verl shard twins.

    full1/full2, lora1/lora2: FSDP1/FSDP2 on 2 ranks; hsdp: FSDP2 on a ("ddp", "fsdp") = (2, 1) mesh (placements
    Replicate, Shard(0)); single: FSDP1 on 1 rank (plain tensors); lora_only: FSDP2 with verl's save_lora_only.
    """
    root = tmp_path_factory.mktemp("verl")
    base = tiny_llama(root / "base", hidden=32, layers=2, vocab=95)  # 95 rows: uneven 48/47 shards
    hf = planted_run(root / "hf", steps=STEPS, rank=2, base=base)
    jobs = []
    for step in STEPS:
        _peft(base, seed=step).save_pretrained(root / "adapters" / f"checkpoint-{step}")
        for fsdp in (1, 2):
            jobs.append(("full", fsdp, False, hf / f"checkpoint-{step}", root / f"full{fsdp}" / f"global_step_{step}"
                         / "actor", step))
            jobs.append(("lora", fsdp, False, base, root / f"lora{fsdp}" / f"global_step_{step}" / "actor", step))
        jobs.append(("full", 2, True, hf / f"checkpoint-{step}", root / "hsdp" / f"global_step_{step}" / "actor", step))
        jobs.append(("lora-only", 2, False, base, root / "lora_only" / f"global_step_{step}" / "actor", step))
    _fsdp(2, root / "store2", jobs)
    _fsdp(1, root / "store1", [("full", 1, False, hf / f"checkpoint-{step}", root / "single" / f"global_step_{step}"
                                / "actor", step) for step in STEPS])
    return {"base": base, "hf": hf, "adapters": root / "adapters", **{
        name: root / name for name in ("full1", "full2", "lora1", "lora2", "lora_only", "hsdp", "single")}}


def _spectra(analysis) -> dict:
    """{(tensor, step): (sigma..., ||dW||_F, rank-1 energy, cos to the last)} of an analysis."""
    return {(name, step): (*e["sigma"], e["fro"], e["rank1_energy"], e["cos_last"])
            for name, m in analysis.modules.items() for step, e in m["steps"].items()}


def _assert_same_spectra(a, b) -> None:
    sa, sb = _spectra(a), _spectra(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key] == pytest.approx(sb[key], rel=1e-5, abs=1e-7), key


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["full1", "full2", "hsdp", "single"])
def test_full_shards_equal_merged_folders(runs, layout, tmp_path):
    run = load_run(runs[layout], base=runs["base"])
    assert run.steps == STEPS and {c.kind for c in run.checkpoints} == {"full"}
    assert run.checkpoints[0].path == (runs[layout] / "global_step_10" / "actor").resolve()
    merged = RunReader(load_run(runs["hf"], base=runs["base"]))
    reader = RunReader(run)
    for name in ("model.embed_tokens.weight", "model.layers.1.mlp.up_proj.weight", "model.norm.weight"):
        assert torch.equal(reader.delta(20, name), merged.delta(20, name)), name  # uneven 48/47 rows included
    _assert_same_spectra(analyze(run, rank=2, selection="all", cache_dir=tmp_path / "a", progress=False),
                         analyze(merged.run, rank=2, selection="all", cache_dir=tmp_path / "b", progress=False))


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["lora1", "lora2", "lora_only"])
def test_lora_shards_equal_peft_adapters(runs, layout, tmp_path):
    run = load_run(runs[layout], base=runs["base"])
    assert {c.kind for c in run.checkpoints} == {"lora"}
    saved = VerlShards(run.checkpoints[0].path).names()
    assert any(".base_layer." in n for n in saved) == (layout != "lora_only") and len(saved) >= 12
    adapters = RunReader(load_run(runs["adapters"], base=runs["base"]))
    reader = RunReader(run)
    assert reader.changed_names() == adapters.changed_names() and len(reader.changed_names()) == 6
    for name in reader.changed_names():
        delta, expected = reader.delta(30, name), adapters.delta(30, name)
        assert isinstance(delta, LowRankDelta) and delta.scale == expected.scale == 2.0
        assert torch.equal(delta.A, expected.A) and torch.equal(delta.B, expected.B)
    _assert_same_spectra(analyze(run, cache_dir=tmp_path / "a", progress=False),
                         analyze(adapters.run, cache_dir=tmp_path / "b", progress=False))


def test_explicit_checkpoint_paths_and_sft_layout(runs, tmp_path):
    actor = runs["full2"] / "global_step_10" / "actor"
    run = load_run(base=runs["base"], checkpoints={10: actor, 20: runs["full2"] / "global_step_20"})
    assert [c.path for c in run.checkpoints] == [actor.resolve(), (runs["full2"] / "global_step_20" / "actor").resolve()]
    sft = tmp_path / "sft"  # verl's SFT trainer saves the shards in the step folder itself
    shutil.copytree(actor, sft / "global_step_10")
    assert load_run(sft, base=runs["base"]).checkpoints[0].path == (sft / "global_step_10").resolve()


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="resident memory read from Linux's /proc")
def test_shards_open_without_reading_the_weights(tmp_path):
    """Opening maps the rank files (resident memory grows by far less than their size); `get` reads one tensor."""
    state = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(1024, 1024) for i in range(16)}  # 64 MiB
    torch.save(state, tmp_path / "model_world_size_1_rank_0.pt")
    rss = lambda: int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2 ** 20  # noqa: E731 - MiB
    before = rss()
    shards = VerlShards(tmp_path)
    assert rss() - before < 16
    assert torch.equal(shards.get("model.layers.3.mlp.up_proj.weight"), state["model.layers.3.mlp.up_proj.weight"])


def test_openrlhf_zero3_lora_bin(runs, tmp_path):
    """OpenRLHF under ZeRO-3 saves the adapter as a torch pickle (adapter_model.bin, 16-bit) in global_stepN_hf."""
    adapter = runs["adapters"] / "checkpoint-10"
    folder = tmp_path / "run" / "global_step10_hf"
    folder.mkdir(parents=True)
    shutil.copy(adapter / "adapter_config.json", folder)
    shutil.copy(runs["base"] / "config.json", folder)
    factors = load_file(adapter / "adapter_model.safetensors")
    torch.save({k: v.bfloat16() for k, v in factors.items()}, folder / "adapter_model.bin")
    reader = RunReader(load_run(tmp_path / "run", base=runs["base"]))
    name = "model.layers.0.self_attn.q_proj.weight"
    delta = reader.delta(10, name)
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert isinstance(delta, LowRankDelta) and torch.equal(delta.A, factors[key].bfloat16().float())
    (folder / "adapter_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(RlcastError, match=r"adapter_model.bin: cannot load with torch.load\(weights_only=True\)"):
        RunReader(load_run(tmp_path / "run", base=runs["base"])).delta(10, name)


# ----------------------------------------------------------------------------------------------------------------------
# Bad input: one line naming the file or setting, raised by load_run (before any output is written)

class _Payload:
    """Unpickling this would create a file: weights_only must refuse it instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def _broken_copy(runs, tmp_path, layout: str = "full1") -> tuple[Path, Path]:
    """A copy of a shard run (root, actor folder of step 20) to break."""
    root = shutil.copytree(runs[layout], tmp_path / "run")
    return root, root / "global_step_20" / "actor"


def _resave_rank(actor: Path, rank: int, edit) -> None:
    path = actor / f"model_world_size_2_rank_{rank}.pt"
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


Q, UP = "model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight"
BAD_INPUTS = {
    "missing rank file": (lambda actor: (actor / "model_world_size_2_rank_1.pt").unlink(),
                          r"global_step_20/actor/model_world_size_2_rank_1.pt: missing \(world size 2 needs ranks 0..1\)"),
    "shape disagrees": (lambda actor: _resave_rank(actor, 1, lambda s: s.update({Q: s[UP]})),
                        rf"rank_1.pt: tensor {Q} has shape \[64, 32\] \[Shard\(dim=0\)\] but \[32, 32\] "
                        r"\[Shard\(dim=0\)\] on rank 0"),
    "tensor missing from a rank": (lambda actor: _resave_rank(actor, 1, lambda s: s.pop(UP)),
                                   rf"rank_1.pt: tensor {UP} is missing \(it is in model_world_size_2_rank_0.pt\)"),
    "parts that do not tile": (lambda actor: _resave_rank(actor, 1, lambda s: setattr(s[UP], "_local_tensor",
                                                                                   torch.zeros(16, 32))),
                               rf"tensor {UP} of shape \[64, 32\] is not tiled by its local parts "
                               r"\[\[32, 32\], \[16, 32\]\] on ranks \[0, 1\]"),
    "fsdp_config.json world size": (lambda actor: (actor / "fsdp_config.json").write_text('{"world_size": 4}'),
                                    r"fsdp_config.json: world_size 4 does not match the shard files "
                                    r"\(model_world_size_2_rank_\*.pt\)"),
    "world size in the file names": (lambda actor: [p.rename(p.with_name(p.name.replace("_2_", "_4_")))
                                                    for p in actor.glob("model_*.pt")],
                                     r"fsdp_config.json: world_size 2 does not match the shard files "
                                     r"\(model_world_size_4_rank_\*.pt\)"),
    "mixed world sizes": (lambda actor: (actor / "model_world_size_4_rank_0.pt").write_bytes(b""),
                          r"global_step_20/actor: shard files of different world sizes \(2, 4\)"),
    "mesh larger than the file names": (lambda actor: ((actor / "fsdp_config.json").unlink(),
                                                       (actor / "model_world_size_2_rank_1.pt").unlink(),
                                                       (actor / "model_world_size_2_rank_0.pt").rename(
                                                           actor / "model_world_size_1_rank_0.pt")),
                                        r"rank_0.pt: tensor model.embed_tokens.weight lives on a device mesh of "
                                        r"ranks \[0, 1\], not the 1 ranks of the file names"),
    "unreadable pickle": (lambda actor: (actor / "model_world_size_2_rank_1.pt").write_bytes(b"garbage"),
                          r"rank_1.pt: cannot load with torch.load\(weights_only=True\)"),
    "unsafe pickle": (lambda actor: torch.save({UP: _Payload(actor / "pwned")}, actor / "model_world_size_2_rank_1.pt"),
                      r"rank_1.pt: cannot load with torch.load\(weights_only=True\): Weights only load failed"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_shards(runs, tmp_path, case):
    break_, message = BAD_INPUTS[case]
    root, actor = _broken_copy(runs, tmp_path)
    break_(actor)
    with pytest.raises(RlcastError, match=message) as err:
        load_run(root, base=runs["base"])
    assert "\n" not in str(err.value)
    assert not (actor / "pwned").exists()


def test_lora_metadata_errors(runs, tmp_path):
    root, actor = _broken_copy(runs, tmp_path, "lora2")
    (actor / "lora_train_meta.json").write_text('{"r": 4, "lora_alpha": 0}')
    with pytest.raises(RlcastError, match=r"lora_train_meta.json: r=4, lora_alpha=0.0 \(both must be positive"):
        load_run(root, base=runs["base"])
    (actor / "lora_train_meta.json").unlink()
    with pytest.raises(RlcastError, match=r"global_step_20/actor/lora_train_meta.json: missing; verl LoRA shards "
                                          r"need it for the LoRA scale"):
        load_run(root, base=runs["base"])


def test_cli_bad_shards_write_nothing(runs, tmp_path, monkeypatch, capsys):
    from rlcast.apps.cli import main

    root, actor = _broken_copy(runs, tmp_path)
    (actor / "model_world_size_2_rank_0.pt").unlink()
    monkeypatch.setattr("sys.argv", ["rlcast", "analyze", str(root), "--base", str(runs["base"])])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_.value.code != 0 and len(err.splitlines()) == 1 and "model_world_size_2_rank_0.pt: missing" in err
    assert not (root / "rlcast").exists() and not (root / ".rlcast-cache").exists()
