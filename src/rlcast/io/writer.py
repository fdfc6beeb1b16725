"""Write a Hugging Face model folder from a stream of (name, tensor) pairs, one tensor at a time.

Every model rlcast produces (rank-k models, extrapolated checkpoints) goes through `write_model`: the weights are
cast to the base's dtype and written as (sharded) safetensors next to copies of the base's config, tokenizer,
generation and chat-template files, so the result loads with `AutoModelForCausalLM.from_pretrained`.
The folder is built under a temporary name and renamed into place only when complete (`rlcast.io.atomic`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file

from rlcast.errors import RlcastError
from rlcast.io.atomic import atomic_folder
from rlcast.io.tensors import TensorReader

# Files copied verbatim from the base folder: everything a loader needs besides the weights.
COPY_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "vocab.json", "vocab.txt",
              "merges.txt", "chat_template.jinja", "chat_template.json")
INDEX = "model.safetensors.index.json"


def base_layout(base: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Names, shapes and dtypes of the base's tensors, in file order, without loading any tensor data."""
    reader = TensorReader(base)
    return {name: (tuple(reader.shape(name)), reader.dtype(name)) for name in reader.names()}


def write_model(base: Path, out: Path, tensors: Iterable[tuple[str, torch.Tensor]],
                dtype: torch.dtype | None = None, metadata: dict | None = None, shard_mb: int = 2000,
                record: dict | None = None, force: bool = False) -> Path:
    """Stream `tensors` into the HF folder `out`; every base tensor exactly once, cast to the base dtype.

    `dtype` overrides the dtype of floating-point tensors. `metadata` (str -> JSON-able) goes into every
    safetensors header. Shards hold at most `shard_mb` MB (a tensor larger than that gets its own shard).
    `record` and `force`: as in `atomic_folder`.
    """
    base, out = Path(base), Path(out)
    if out.resolve() == base.resolve():
        raise RlcastError(f"{out}: refusing to overwrite the base model folder")
    layout = base_layout(base)
    header = {"format": "pt"}
    for key, value in (metadata or {}).items():
        header[str(key)] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)

    with atomic_folder(out, record, force) as tmp:
        shards = _write_shards(tmp, tensors, layout, dtype, header, shard_mb * 2**20)
        _name_shards(tmp, shards)
        for file in COPY_FILES:
            if (base / file).is_file():
                shutil.copyfile(base / file, tmp / file)  # content only: the mode follows the umask
    return out


def _write_shards(tmp: Path, tensors, layout, dtype, header, limit: int) -> list[dict[str, int]]:
    """Write shards as tmp/shard-N.safetensors; return per shard {name: nbytes}. Checks names and shapes."""
    seen: set[str] = set()
    shards: list[dict[str, int]] = []
    buffer: dict[str, torch.Tensor] = {}
    size = 0

    def flush() -> None:
        nonlocal buffer, size
        if buffer:
            save_file(buffer, str(tmp / f"shard-{len(shards)}.safetensors"), metadata=header)
            shards.append({k: t.numel() * t.element_size() for k, t in buffer.items()})
        buffer, size = {}, 0

    for name, tensor in tensors:
        if name not in layout:
            raise RlcastError(f"tensor {name}: not a tensor of the base model")
        if name in seen:
            raise RlcastError(f"tensor {name}: written twice")
        shape, base_dtype = layout[name]
        if tuple(tensor.shape) != shape:
            raise RlcastError(f"tensor {name}: shape {tuple(tensor.shape)} differs from the base's {shape}")
        target = dtype if dtype is not None and base_dtype.is_floating_point else base_dtype
        tensor = tensor.detach().to("cpu", target).contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if buffer and size + nbytes > limit:
            flush()
        buffer[name] = tensor
        size += nbytes
        seen.add(name)
    flush()
    missing = [name for name in layout if name not in seen]
    if missing:
        raise RlcastError(f"tensor {missing[0]}: missing from the written model ({len(missing)} base tensors missing)")
    return shards


def _name_shards(tmp: Path, shards: list[dict[str, int]]) -> None:
    """Rename shards to the HF convention and write the index when there is more than one."""
    if len(shards) == 1:
        (tmp / "shard-0.safetensors").rename(tmp / "model.safetensors")
        return
    weight_map, total = {}, 0
    for i, sizes in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        (tmp / f"shard-{i}.safetensors").rename(tmp / file)
        weight_map.update({name: file for name in sizes})
        total += sum(sizes.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (tmp / INDEX).write_text(json.dumps(index, indent=2))
