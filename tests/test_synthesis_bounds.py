"""Certified upper bounds of a convolution over the input box (``optim/_bounds.py``).

Soundness is checked against brute force (every vertex of a tiny box), sampled images and
gradient ascent; exactness where the relaxation has nothing to relax (a linear map, stable
ReLUs). The digits model's numbers (benchmarks/README.md): the bound is far above what any
search reaches, so it proves no data-silent channel dead.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from dnnbrain_captum import digits_cnn, digits_images
from dnnbrain_captum.optim._bounds import conv_upper_bounds


def _tiny(seed: int, pool: bool) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(2, 3, 3, padding=1), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.Conv2d(3, 2, 3, padding=1)]
    return nn.Sequential(*layers).double().eval()


def test_a_linear_map_is_bounded_exactly() -> None:
    conv = nn.Conv2d(1, 1, 2).double()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, -2.0], [0.5, 3.0]]]]))
        conv.bias.fill_(-1.0)
    # max of x1 - 2 x2 + 0.5 x3 + 3 x4 - 1 on [0, 1]^4: 1 + 0.5 + 3 - 1 = 3.5
    bound = conv_upper_bounds([conv], (1, 2, 2))
    assert bound.shape == (1, 1, 1)
    assert float(bound) == 3.5
    # on [-1, 2]: 2 + 2 + 1 + 6 - 1 = 10
    assert float(conv_upper_bounds([conv], (1, 2, 2), (-1.0, 2.0))) == 10.0


def test_stable_relus_are_exact() -> None:
    first, second = nn.Conv2d(1, 1, 1).double(), nn.Conv2d(1, 1, 1).double()
    with torch.no_grad():
        first.weight.fill_(2.0), first.bias.fill_(1.0)  # 1 + 2x in [1, 3]: always on
        second.weight.fill_(-1.0), second.bias.fill_(0.5)  # 0.5 - relu(...): at most -0.5
    assert float(conv_upper_bounds([first, nn.ReLU(), second], (1, 1, 1))) == -0.5


def _one_by_one(weight: float, bias: float) -> nn.Conv2d:
    conv = nn.Conv2d(1, 1, 1).double()
    with torch.no_grad():
        conv.weight.fill_(weight), conv.bias.fill_(bias)
    return conv


def test_an_unstable_relu_is_bounded_by_its_chord() -> None:
    # z = 2x - 1 in [-1, 1]; relu(z) <= (z + 1) / 2 = x: the bound is the true maximum 1
    chain = [_one_by_one(2.0, -1.0), nn.ReLU(), _one_by_one(1.0, 0.0)]
    assert float(conv_upper_bounds(chain, (1, 1, 1))) == 1.0
    # and -relu(z) <= 0 (lower relaxation 0 or z; here u = -l, so 0)
    chain = [_one_by_one(2.0, -1.0), nn.ReLU(), _one_by_one(-1.0, 0.0)]
    assert float(conv_upper_bounds(chain, (1, 1, 1))) == 0.0


def test_a_max_pool_window_is_bounded_by_its_chord() -> None:
    # max of four pixels in [0, 1], then +1: at most 2 (the chord max(z) <= U' + 0 (z_j - l_j))
    chain = [_one_by_one(1.0, 0.0), nn.ReLU(), nn.MaxPool2d(2), _one_by_one(1.0, 1.0)]
    assert float(conv_upper_bounds(chain, (1, 2, 2))) == 2.0
    chain[-1] = _one_by_one(-1.0, 0.0)  # -max(x) <= -x_j for the best lower bound: 0
    assert float(conv_upper_bounds(chain, (1, 2, 2))) == 0.0


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_the_bound_holds_at_every_vertex_of_a_small_box(seed: int, pool: bool) -> None:
    net = _tiny(seed, pool)
    bound = conv_upper_bounds(net, (2, 2, 4))
    vertices = torch.tensor(list(itertools.product([0.0, 1.0], repeat=16)), dtype=torch.float64)
    with torch.no_grad():
        values = net(vertices.view(-1, 2, 2, 4))
    assert bool((values <= bound + 1e-9).all())
    # not trivially loose either: within 3x of the brute-force range on these nets
    reach = values.amax(0)
    assert bool(((bound - reach) <= 3 * (reach - values.amin(0)) + 1e-9).all())


@pytest.mark.parametrize("seed", range(3))
def test_the_bound_holds_against_gradient_ascent(seed: int) -> None:
    net = _tiny(seed, pool=True)
    bound = conv_upper_bounds(net, (2, 8, 8))
    x = torch.rand(64, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    x.requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=0.05)
    for _ in range(100):
        optimizer.zero_grad()
        (-net(x)[:, 0].amax((1, 2)).sum()).backward()
        optimizer.step()
        with torch.no_grad():
            x.clamp_(0, 1)
    with torch.no_grad():
        assert bool((net(x) <= bound + 1e-9).all())


def test_unsupported_modules_are_refused() -> None:
    with pytest.raises(ValueError, match="end with an nn.Conv2d"):
        conv_upper_bounds([nn.Conv2d(1, 1, 1), nn.ReLU()], (1, 2, 2))
    with pytest.raises(ValueError, match="Sigmoid"):
        conv_upper_bounds([nn.Conv2d(1, 1, 1), nn.Sigmoid(), nn.Conv2d(1, 1, 1)], (1, 2, 2))
    with pytest.raises(ValueError, match="max-pool"):
        conv_upper_bounds([nn.Conv2d(1, 1, 1), nn.MaxPool2d(3), nn.Conv2d(1, 1, 1)], (1, 6, 6))
    with pytest.raises(ValueError, match="convolution"):
        conv_upper_bounds([nn.Conv2d(2, 2, 1, groups=2)], (2, 2, 2))


@pytest.mark.slow
def test_digits_conv3_bound_holds_and_proves_no_silent_channel_dead() -> None:
    model = digits_cnn()
    chain = model.features[:7]  # conv1 ... conv3 (pre-activation)
    bound = conv_upper_bounds(chain, (3, 32, 32))
    images = torch.cat([digits_images("test")[0], torch.rand(64, 3, 32, 32)])
    with torch.no_grad():
        values = chain(images).double()
    assert bool((values <= bound).all())
    silent = values[:359].clamp(min=0).mean((2, 3)).amax(0) == 0
    assert int(silent.sum()) == 12
    # The bound of every data-silent channel is positive (about 19 to 24, while the best
    # image any search found reaches 0.1 to 1.2): the relaxation proves none of them dead.
    assert bool((bound.amax((1, 2))[silent] > 10).all())
