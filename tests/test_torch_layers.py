"""sparsekit.torch.layers: the sparse-attention layer equals dense masked attention, and trains.

Every check compares with an independent dense computation written here: softmax over
``q k^T / sqrt(d)`` (plus the relative-position bias) with the boolean mask of ``pattern.dense(n)``,
using the layer's own weights. In float64 the layer's output and every parameter gradient must agree
within an absolute 1e-10 (float32: 1e-5 for the output). The maps are non-square (6 x 10) and square
(8 x 8), with 60 tokens not a multiple of the FlexAttention block size 16. Skipped without torch.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import sparsekit as sk

torch = pytest.importorskip("torch")  # the one optional dependency; sparsekit.torch must import

import sparsekit.torch as skt  # noqa: E402
from sparsekit.torch import backends, layers, training  # noqa: E402

F = torch.nn.functional

BLOCK = 16
TOL64 = 1e-10
TOL32 = 1e-5
SHAPES = ((6, 10), (8, 8))
# Options that keep every pattern sparse on these small maps.
PATTERNS = {
    "random": {"attention_ratio": 0.2, "seed": 3},
    "block": {"block": 20},
    "strided": {},
    "axial": {},
    "longformer": {"window": 6, "global_width": 2},
    "dense": {},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The machine's cores are shared: OpenMP threads spinning on busy cores make torch up to ten times
    # slower, so these tests run on one thread (restored afterwards).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex_attention warns that it is not compiled
        yield


def make_layer(pattern, bias=False, dtype=torch.float64, heads=3, seed=0, **options):
    torch.manual_seed(seed)
    layer = layers.SparseAttention2d(
        8,
        12,
        heads,
        pattern,
        block_size=BLOCK,
        relative_position_bias=bias,
        max_relative_position=4,
        **options,
    ).to(dtype)
    with torch.no_grad():
        layer.gate.copy_(torch.linspace(-1.0, 1.5, heads))  # distinct gates, one negative
        if bias:
            layer.relative_bias.normal_()  # large enough to change the weights visibly
    return layer


def reference(layer, x, mask: np.ndarray, heads=None):
    """Dense masked attention with the layer's weights; ``heads`` limits it to some heads."""
    b, _, height, width = x.shape
    n, d = height * width, layer.head_dim
    heads = list(range(layer.num_heads)) if heads is None else list(heads)
    qkv = F.conv2d(x, layer.qkv.weight, layer.qkv.bias).reshape(b, 3, layer.num_heads, d, n)
    q, k, v = (t.transpose(-2, -1)[:, heads] for t in qkv.unbind(1))
    scores = q @ k.transpose(-2, -1) / d**0.5
    if layer.relative_bias is not None:
        r = layer.max_relative_position
        rows, cols = np.divmod(np.arange(n), width)
        dy = np.clip(rows[:, None] - rows[None, :], -r, r) + r
        dx = np.clip(cols[:, None] - cols[None, :], -r, r) + r
        scores = scores + layer.relative_bias[heads][:, torch.from_numpy(dy), torch.from_numpy(dx)]
    scores = scores.masked_fill(~torch.from_numpy(mask), float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    out = weights @ v * layer.gate[heads].view(1, -1, 1, 1)
    full = torch.zeros(b, layer.num_heads, n, d, dtype=x.dtype)
    full[:, heads] = out
    full = full.transpose(-2, -1).reshape(b, layer.num_heads * d, height, width)
    return F.conv2d(full, layer.proj.weight, layer.proj.bias), weights


CASES = [(name, bias, shape) for name in PATTERNS for bias in (False, True) for shape in SHAPES]


@pytest.mark.parametrize(("name", "bias", "shape"), CASES)
def test_output_and_gradients_equal_dense_reference(name, bias, shape):
    height, width = shape
    layer = make_layer(name, bias, **PATTERNS[name])
    x = torch.randn(2, 8, height, width, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mask = layer.pattern_at(height, width).dense(height * width)
    assert 0 < mask.sum() and (name == "dense" or not mask.all())
    out = layer(x)
    expected, _ = reference(layer, x, mask)
    assert out.shape == (2, 12, height, width)
    torch.testing.assert_close(out, expected, rtol=0, atol=TOL64)
    upstream = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    params = list(layer.parameters())
    ours = torch.autograd.grad((out * upstream).sum(), params)
    theirs = torch.autograd.grad((expected * upstream).sum(), params)
    for (pname, _), a, b in zip(layer.named_parameters(), ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL64, msg=pname)


def test_rows_of_full_tiles_need_no_mask():
    # block_local(16) on an 8 x 8 map with 16-token tiles: every tile is full or empty, so every row of
    # tiles takes the path without a cell mask; output and gradients still equal dense attention.
    layer = make_layer("block", True, block=16)
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    pattern = layer.pattern_at(8, 8)
    layout = backends.tile_layout(pattern, 64, BLOCK, flex=False)
    assert layout.tiles and all(tile.mask is None for tile in layout.tiles)
    out = layer(x)
    expected, _ = reference(layer, x, pattern.dense(64))
    torch.testing.assert_close(out, expected, rtol=0, atol=TOL64)
    params = list(layer.parameters())
    ours = torch.autograd.grad(out.square().sum(), params)
    theirs = torch.autograd.grad(expected.square().sum(), params)
    for (pname, _), a, b in zip(layer.named_parameters(), ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL64, msg=pname)


@pytest.mark.parametrize("name", ["axial", "random"])
def test_float32_output_and_input_gradient(name):
    layer = make_layer(name, True, torch.float32, **PATTERNS[name])
    x = torch.randn(2, 8, 6, 10, generator=torch.Generator().manual_seed(4), requires_grad=True)
    out = layer(x)
    expected, _ = reference(layer, x, layer.pattern_at(6, 10).dense(60))
    torch.testing.assert_close(out, expected, rtol=0, atol=TOL32)
    (gx,) = torch.autograd.grad(out.square().sum(), x)
    (ex,) = torch.autograd.grad(expected.square().sum(), x)
    torch.testing.assert_close(gx, ex, rtol=1e-4, atol=1e-4)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = layers.SparseAttentionClassifier(
        pattern="longformer",
        channels=16,
        num_heads=4,
        feature_size=8,
        block_size=BLOCK,
        relative_position_bias=True,
    )
    images, labels = training.synthetic_images(8, seed=1)
    F.cross_entropy(model(images), labels).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_pruned_heads_contribute_zero_and_are_not_computed():
    layer = make_layer("axial", True, heads=4, **PATTERNS["axial"])
    x = torch.randn(2, 8, 6, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    mask = layer.pattern_at(6, 10).dense(60)
    active = layer.prune_heads([0, 2])
    assert active.tolist() == [True, False, True, False]
    out = layer(x)
    expected, _ = reference(layer, x, mask, heads=[0, 2])
    torch.testing.assert_close(out, expected, rtol=0, atol=TOL64)
    # Same as the unpruned layer with the pruned heads' gates at zero: they contribute exactly zero.
    full = make_layer("axial", True, heads=4, **PATTERNS["axial"])
    with torch.no_grad():
        full.gate[[1, 3]] = 0.0
    torch.testing.assert_close(out, full(x), rtol=0, atol=TOL64)
    assert layer.attention_stats()["heads"] == 2  # attention ran on two heads only
    out.sum().backward()
    d = layer.head_dim
    for head in (1, 3):  # no gradient reaches the pruned heads' channels
        for part in range(3):
            rows = slice(part * 12 + head * d, part * 12 + (head + 1) * d)
            assert layer.qkv.weight.grad[rows].abs().sum() == 0
        assert layer.relative_bias.grad[head].abs().sum() == 0
    importance = layer.head_importance()
    assert importance[1] == importance[3] == 0 and importance[0] > 0


def test_prune_heads_by_threshold():
    layer = make_layer("block", heads=4, block=20)
    with torch.no_grad():
        layer.gate.copy_(torch.tensor([0.1, -1.0, 0.05, 2.0]))
    torch.testing.assert_close(
        layer.head_importance(), torch.tensor([0.1, 1.0, 0.05, 2.0], dtype=torch.float64)
    )
    assert layer.prune_heads(threshold=0.5).tolist() == [False, True, False, True]
    assert layer.prune_heads(keep=torch.tensor([True, True, False, False])).tolist() == [
        True,
        True,
        False,
        False,
    ]
    with pytest.raises(ValueError, match="every head"):
        layer.prune_heads(threshold=10.0)


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_attention_stats_equal_dense_computation(name):
    layer = make_layer(name, True, **PATTERNS[name])
    x = torch.randn(3, 8, 6, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    pattern = layer.pattern_at(6, 10)
    mask = pattern.dense(60)
    with torch.no_grad():
        layer(x)
        _, weights = reference(layer, x, mask)
    stats = layer.attention_stats()
    allowed = torch.from_numpy(mask).expand_as(weights)
    entropy = -torch.special.xlogy(weights, weights).sum(-1)
    assert stats["sparsity"] == pattern.sparsity(60)
    assert stats["mean_weight"] == pytest.approx(float(weights[allowed].mean()), abs=1e-12)
    assert stats["mean_weight"] == pytest.approx(60 / pattern.nnz(60), abs=1e-12)
    assert stats["entropy"] == pytest.approx(float(entropy.mean()), abs=1e-12)
    assert stats["max_weight"] == pytest.approx(float(weights.amax(-1).mean()), abs=1e-12)
    torch.testing.assert_close(stats["head_entropy"], entropy.mean(dim=(0, 2)), rtol=0, atol=1e-12)
    assert 0 < stats["entropy"] <= np.log(pattern.row_counts(60).max())


def test_block_mask_is_sparsekits_and_cached():
    layer = make_layer("longformer", **PATTERNS["longformer"])
    bm = layer.block_mask_at(6, 10)
    assert layer.block_mask_at(6, 10) is bm
    expected = skt.block_mask(sk.longformer(6, 2), 60, block_size=BLOCK)
    torch.testing.assert_close(bm.to_dense(), expected.to_dense(), rtol=0, atol=0)
    assert layer.block_mask_at(8, 8).seq_lengths == (64, 64)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: layers.SparseAttention2d(8, 10, 3), "multiple of num_heads"),
        (lambda: layers.SparseAttention2d(8, 12, 0), "num_heads"),
        (lambda: layers.SparseAttention2d(8, 12, 3, block_size=0), "block_size"),
        (lambda: layers.SparseAttention2d(8, 12, 3, "strided", block=3), "options"),
        (lambda: layers.SparseAttention2d(8, 12, 3, head_gate=False).head_importance(), "head_gate"),
        (lambda: layers.SparseAttention2d(8, 12, 3).attention_stats(), "forward pass first"),
        (lambda: layers.SparseAttention2d(8, 12, 3).prune_heads(), "exactly one"),
        (lambda: layers.SparseAttention2d(8, 12, 3).prune_heads([3]), "keep"),
        (lambda: layers.SparseAttention2d(8, 12, 3).prune_heads([]), "every head"),
        (lambda: layers.SparseAttention2d(8, 12, 3)(torch.zeros(1, 7, 4, 4)), "B x 8 x H x W"),
        (lambda: layers.SparseAttention2d(8, 12, 3)(torch.zeros(8, 4, 4)), "B x 8 x H x W"),
        (lambda: layers.SparseAttention2d(8, 12, 3, "dense").block_mask_at(4, 4), "no BlockMask"),
        (lambda: layers.SparseAttentionClassifier(feature_size=4), "feature_size"),
        (lambda: training.synthetic_images(0), "num_samples"),
        (lambda: training.synthetic_images(4, num_classes=1), "num_classes"),
        (
            lambda: training.train_steps(torch.nn.Linear(2, 2), torch.zeros(4, 2), torch.zeros(3), 1),
            "same length",
        ),
        (
            lambda: training.train_steps(torch.nn.Linear(2, 2), torch.zeros(4, 2), torch.zeros(4), 1, lr=0),
            "lr",
        ),
    ],
)
def test_bad_inputs_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_synthetic_images_are_seeded_and_balanced():
    images, labels = training.synthetic_images(50, num_classes=5, seed=3)
    assert images.shape == (50, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and np.bincount(labels.numpy()).tolist() == [10] * 5
    again, again_labels = training.synthetic_images(50, num_classes=5, seed=3)
    assert torch.equal(images, again) and torch.equal(labels, again_labels)
    assert not torch.equal(images, training.synthetic_images(50, num_classes=5, seed=4)[0])


def test_classifier_loss_falls_and_training_is_deterministic():
    images, labels = training.synthetic_images(512, seed=0)

    def run(steps):
        torch.manual_seed(0)
        model = layers.SparseAttentionClassifier(
            pattern="axial", channels=16, num_heads=2, feature_size=8, block_size=32
        )
        return training.train_steps(model, images, labels, steps=steps, lr=1e-2, seed=0, batch_size=32)

    losses = run(30)
    assert np.isfinite(losses).all()
    assert losses[0] > 2.0  # about log(10): chance level at the start
    assert np.mean(losses[-5:]) < 0.5 * losses[0], losses  # measured: about 0.25 * losses[0]
    assert run(3) == losses[:3]
