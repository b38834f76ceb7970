"""SparseAttention2d's backward on each device, and the classifier's no-attention baseline.

On the CPU the layer's gradients come from sparsekit's tile backward; on a GPU from FlexAttention's own
backward. Both are compared with plain dense autograd through the masked softmax (the reference), so a
wrong backward on either path fails here. The GPU test runs only where torch sees a CUDA device.
"""

from __future__ import annotations

import pytest
from marks import compiles

torch = pytest.importorskip("torch")

from sparsekit.torch import backends, layers, training  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def _reference_grads(layer, x):
    """Gradients of ``layer(x).sum()`` with attention done densely by autograd (the reference)."""
    height, width = x.shape[-2:]
    n = height * width
    mask = torch.as_tensor(layer.pattern_at(height, width).dense(n), device=x.device)
    reach = layer.max_relative_position
    rows = torch.arange(n, device=x.device)
    dy = torch.clamp(rows[:, None] // width - rows[None, :] // width, -reach, reach) + reach
    dx = torch.clamp(rows[:, None] % width - rows[None, :] % width, -reach, reach) + reach

    def dense_attend(q, k, v, table, layout, width):
        s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        if table is not None:
            s = s + table[:, dy, dx]
        s = s.masked_fill(~mask, float("-inf"))
        return torch.softmax(s, dim=-1) @ v

    original = layer._attend
    layer._attend = dense_attend
    try:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).sum().backward()
    finally:
        layer._attend = original
    return {name: p.grad.clone() for name, p in layer.named_parameters()}, x.grad.clone()


def _layer_grads(layer, x):
    layer.zero_grad(set_to_none=True)
    x.grad = None
    layer(x).sum().backward()
    return {name: p.grad.clone() for name, p in layer.named_parameters()}, x.grad.clone()


def _check_backward(device: str, compile: bool, channels: int, side: int, block_size: int) -> None:
    torch.manual_seed(0)
    layer = layers.SparseAttention2d(
        channels,
        channels,
        2,
        "longformer",
        block_size=block_size,
        relative_position_bias=True,
        window=5,
        global_width=1,
        compile=compile,
    ).to(device)
    x = torch.randn(2, channels, side - 2, side, device=device, requires_grad=True)
    want, want_x = _reference_grads(layer, x)
    got, got_x = _layer_grads(layer, x)
    assert set(got) == set(want)
    for name in want:
        assert torch.allclose(got[name], want[name], atol=2e-4, rtol=2e-4), name
    assert torch.allclose(got_x, want_x, atol=2e-4, rtol=2e-4)
    # Every parameter receives a gradient (the relative bias and the gates included).
    assert all(float(g.abs().sum()) > 0 for g in got.values())


def test_cpu_tile_backward_matches_dense_autograd():
    _check_backward("cpu", compile=False, channels=8, side=8, block_size=16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_uses_flex_attention_backward(compile, monkeypatch):
    # The tile backward must not run on the GPU: FlexAttention computes the gradients there.
    def refuse(*args, **kwargs):
        raise AssertionError("the CPU tile backward ran on a CUDA device")

    monkeypatch.setattr(backends._TileAttention, "apply", refuse)
    # Compiled GPU kernels want head dimensions of at least 16 and tiles of 128.
    _check_backward("cuda", compile=compile, channels=64, side=16, block_size=128)


def test_classifier_without_attention_is_the_stem_alone():
    torch.manual_seed(0)
    model = layers.SparseAttentionClassifier(pattern=None, channels=8, num_heads=2)
    assert model.attention is None
    images, _ = training.synthetic_images(4, seed=0)
    model.eval()
    with torch.no_grad():
        logits = model(images)
        # The same computation written out: stem, norm, pooling, head.
        features = model.norm(model.stem(images))
        expected = model.head(features.mean(dim=(2, 3)))
    assert logits.shape == (4, 10)
    assert torch.equal(logits, expected)


def test_classifier_without_attention_refuses_attention_options():
    with pytest.raises(ValueError, match="need a pattern"):
        layers.SparseAttentionClassifier(pattern=None, relative_position_bias=True)


@compiles("compiles one C++ kernel per input shape (seconds each)")
@pytest.mark.parametrize(
    "shapes",
    [[(1, 4), (1, 6), (1, 8)], [(1, 4), (2, 4), (3, 4)]],
    ids=["map-sizes", "batch-sizes"],
)
def test_compiled_layer_survives_more_shapes_than_the_recompile_limit(shapes):
    # Under a limit of 1 a single compiled flex_attention raises at the second map size, and a region
    # per pattern and map size alone raised at the second batch size: every input shape needs a
    # region of its own (batch, side) -> one compile each.
    torch.manual_seed(0)
    layer = layers.SparseAttention2d(16, 16, 1, "block", block_size=16, compile=True)
    torch.manual_seed(0)
    eager = layers.SparseAttention2d(16, 16, 1, "block", block_size=16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
            for batch, side in shapes:
                x = torch.randn(batch, 16, side, side)
                with torch.no_grad():
                    torch.testing.assert_close(layer(x), eager(x), rtol=1e-4, atol=1e-5)
    finally:
        torch.set_num_threads(threads)
