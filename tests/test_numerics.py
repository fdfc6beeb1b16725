"""The shared numerics: line and PLS fits, sign alignment, inner products and the streamed Gram matrix of deltas."""

import pytest
import torch
from safetensors.torch import save_file

from rlcast.core.numerics import align_signs, difference, gram, inner, line_fit, pls1, r2, row_chunks, rows
from rlcast.io.checkpoints import load_run
from rlcast.io.lora import LowRankDelta
from rlcast.io.reader import RunReader
from rlcast.io.synthetic import planted_run

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def dense(x):
    return x.dense() if isinstance(x, LowRankDelta) else x


def test_line_fit_recovers_a_line_per_coordinate():
    x = torch.tensor([1.0, 2.0, 4.0, 7.0])
    y = 3.0 + torch.outer(x, torch.tensor([0.5, -2.0]))
    a, b = line_fit(x, y)
    assert torch.allclose(a, torch.full((2,), 3.0, dtype=torch.float64)) and a.dtype == torch.float64
    assert torch.allclose(b, torch.tensor([0.5, -2.0], dtype=torch.float64))


def test_pls1_predicts_and_inverts():
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(6, dtype=torch.float64)
    direction = torch.randn(20, generator=gen, dtype=torch.float64)
    x = t[:, None] * direction[None] + 1.0
    y = 0.2 + 0.1 * t
    fit = pls1(x, y)
    assert torch.allclose(fit.predict(x), y)
    assert torch.allclose(fit.invert(0.2 + 0.1 * 9), 9 * direction + 1.0)  # the x of step 9, beyond the window
    flat = pls1(x, torch.full((6,), 0.5, dtype=torch.float64))
    assert flat.b == 0.0 and torch.allclose(flat.predict(x), torch.full((6,), 0.5, dtype=torch.float64))


def test_r2_definition():
    target = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert r2(target, target) == 1.0
    assert r2(target, target.mean(0, keepdim=True).expand_as(target)) == pytest.approx(0.0)


def test_align_signs():
    g = torch.Generator().manual_seed(8)
    base = torch.randn(50, generator=g)
    vecs = torch.stack([base + 0.1 * torch.randn(50, generator=g) for _ in range(6)])
    flips = torch.tensor([1, -1, -1, 1, -1, 1.0]).unsqueeze(1)
    aligned = align_signs(vecs * flips)
    assert torch.equal(aligned, vecs)
    assert ((aligned[1:] * aligned[:-1]).sum(1) >= 0).all()


def test_inner_products_of_low_rank_deltas_match_dense():
    gen = torch.Generator().manual_seed(0)
    a = LowRankDelta(torch.randn(12, 3, generator=gen), torch.randn(3, 9, generator=gen), 0.5)
    b = LowRankDelta(torch.randn(12, 2, generator=gen), torch.randn(2, 9, generator=gen), 2.0)
    d = torch.randn(12, 9, generator=gen)
    for x, y in [(a, b), (a, d), (d, b), (d, d), (difference(a, b), b)]:
        assert inner(x, y) == pytest.approx(float((dense(x).double() * dense(y).double()).sum()), rel=1e-5)


def test_rows_keep_factors_and_copy_dense_rows():
    gen = torch.Generator().manual_seed(1)
    lr = LowRankDelta(torch.randn(7, 2, generator=gen), torch.randn(2, 5, generator=gen), 0.3)
    piece = rows(lr, 2, 5)
    assert isinstance(piece, LowRankDelta) and torch.allclose(piece.dense(), lr.dense()[2:5])
    d = torch.randn(7, 5, generator=gen)
    assert torch.equal(rows(d, 2, 5), d[2:5]) and rows(d, 2, 5).data_ptr() != d[2:5].data_ptr()
    assert row_chunks((7, 5), 2, 0) == [(r, r + 1) for r in range(7)]
    assert row_chunks((7, 5), 2, 1) == [(0, 7)]


class _Deltas:
    """A minimal reader: `delta(step, name)` from a dict, counting the reads."""

    def __init__(self, deltas: dict[int, object]):
        self.deltas, self.reads = deltas, 0

    def shape(self, name):
        return dense(self.deltas[next(iter(self.deltas))]).shape

    def delta(self, step, name):
        self.reads += 1
        return self.deltas[step]


@pytest.mark.parametrize("kind", ["dense", "lora", "vector"])
@pytest.mark.parametrize("chunk_mb", [0, 5e-4, 3e-3, 256])  # one row, a few rows, whole tensor
def test_streamed_gram_equals_the_dense_one(kind, chunk_mb):
    gen = torch.Generator().manual_seed(2)
    steps = [10, 20, 30, 40]
    if kind == "lora":
        A = torch.randn(3, 40, generator=gen)
        deltas = {s: LowRankDelta(s / 40 * torch.randn(30, 3, generator=gen), A, 0.5) for s in steps}
    elif kind == "vector":
        deltas = {s: torch.randn(64, generator=gen) for s in steps}
    else:
        deltas = {s: torch.randn(30, 40, generator=gen) for s in steps}
    m = torch.stack([dense(deltas[s]).reshape(-1).double() for s in steps])
    reader = _Deltas(deltas)
    g = gram(reader, "w", steps, chunk_mb)
    assert g.dtype == torch.float64 and torch.allclose(g, m @ m.T, rtol=1e-5)
    n_chunks = len(row_chunks(tuple(reader.shape("w")), len(steps), chunk_mb))
    assert reader.reads == n_chunks * len(steps)  # each chunk reads each checkpoint's delta once, in turn
    if kind != "vector":  # 30 rows of 4 x 40 floats: 640 bytes per row
        assert n_chunks == {0: 30, 5e-4: 30, 3e-3: 8, 256: 1}[chunk_mb]


def test_gram_of_a_run_dense_and_lora(tmp_path, monkeypatch):
    """On real readers: a planted full run and a LoRA run, several chunk sizes, against the stacked dense deltas."""
    full = load_run(planted_run(tmp_path / "full", steps=[10, 20, 30], rank=2, noise=0.01, hidden=32, layers=1))
    base = full.base
    reader = RunReader(full)
    name = "model.layers.0.mlp.down_proj.weight"
    m, n = reader.shape(name)
    gen = torch.Generator().manual_seed(3)
    A, B = torch.randn(2, n, generator=gen), torch.randn(m, 2, generator=gen)
    for step in (10, 20, 30):
        folder = tmp_path / "lora" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        save_file({"base_model.model.model.layers.0.mlp.down_proj.lora_A.weight": (A * step / 30).contiguous(),
                   "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight": (B + step / 10).contiguous()},
                  str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(
            f'{{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "base_model_name_or_path": "{base}"}}')
    lora = RunReader(load_run(tmp_path / "lora", base=base))
    assert isinstance(lora.delta(10, name), LowRankDelta)
    expected = {}
    for r in (reader, lora):
        stacked = torch.stack([dense(r.delta(s, name)).reshape(-1).double() for s in (10, 20, 30)])
        expected[r] = stacked @ stacked.T
    monkeypatch.setattr(LowRankDelta, "dense", lambda self: pytest.fail("a LoRA delta was densified"))
    for r in (reader, lora):
        for chunk_mb in (0, 0.01, 256):
            assert torch.allclose(gram(r, name, [10, 20, 30], chunk_mb), expected[r], rtol=1e-5)
