"""The ResNets against values found without fastcifar/models.py: the paper's network written out
plainly below (section 4.2: conv 16 -> 3 stages of n basic blocks -> pool -> fc; option A
subsample + zero channels, option B 1x1 conv + BN), its logits stored once in
tests/data/model_reference.json, and the initialisation's variance measured layer by layer."""

import pytest
import torch
import torch.nn.functional as F
from conftest import stored_reference

from fastcifar.models import PadShortcut, build_model

# (name, shortcut) pairs whose fixed-seed logits are stored; resnet20 has 3 blocks a stage
STORED = [("resnet8", "A"), ("resnet8", "B"), ("resnet20", "A")]


def reference_forward(w: dict, x: torch.Tensor, depth: int, shortcut: str, train: bool) -> torch.Tensor:
    """He et al. 2016's CIFAR network from a state dict, in plain functional torch."""
    def bn(t, prefix):  # copies of the running statistics: the model's own are left alone
        return F.batch_norm(t, w[prefix + ".running_mean"].clone(), w[prefix + ".running_var"].clone(),
                            w[prefix + ".weight"], w[prefix + ".bias"], training=train, eps=1e-5)

    n = (depth - 2) // 6
    out = F.relu(bn(F.conv2d(x, w["conv1.weight"], padding=1), "bn1"))
    in_planes = 16
    for stage, (planes, first_stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
        for i in range(n):
            p, stride = f"layer{stage}.{i}.", first_stride if i == 0 else 1
            y = F.relu(bn(F.conv2d(out, w[p + "conv1.weight"], stride=stride, padding=1), p + "bn1"))
            y = bn(F.conv2d(y, w[p + "conv2.weight"], padding=1), p + "bn2")
            if stride == 1 and in_planes == planes:
                short = out
            elif shortcut == "A":  # every other pixel, (planes - in_planes) / 2 zero channels each side
                sub = out[:, :, ::2, ::2]
                zeros = sub.new_zeros(sub.shape[0], (planes - in_planes) // 2, *sub.shape[2:])
                short = torch.cat([zeros, sub, zeros], dim=1)
            else:
                short = bn(F.conv2d(out, w[p + "shortcut.0.weight"], stride=stride), p + "shortcut.1")
            out = F.relu(y + short)
            in_planes = planes
    return out.mean(dim=(2, 3)) @ w["fc.weight"].T + w["fc.bias"]


def seeded(name: str, shortcut: str):
    torch.manual_seed(0)
    return build_model(name, shortcut=shortcut)


def fixed_input(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def depth_of(name: str) -> int:
    return int(name.removeprefix("resnet"))


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name,shortcut", STORED)
def test_forward_is_the_papers_network(name, shortcut, train):
    model = seeded(name, shortcut).train(train)
    x = fixed_input(4)
    expected = reference_forward(dict(model.state_dict()), x, depth_of(name), shortcut, train)
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5,
                               msg=lambda m: f"{name} option {shortcut} ({'train' if train else 'eval'}) "
                                             f"is not the paper's network: {m}")


def test_fixed_seed_logits_match_the_stored_reference():
    """Initialisation and forward together: seed 0, eval mode, the stored logits (written from
    reference_forward, not from the model). A changed init or block changes them."""
    computed = {}
    for name, shortcut in STORED:
        model = seeded(name, shortcut).eval()
        computed[f"{name}-{shortcut}"] = reference_forward(
            dict(model.state_dict()), fixed_input(), depth_of(name), shortcut, train=False).tolist()
    stored = stored_reference("model_reference", computed)
    for name, shortcut in STORED:
        model = seeded(name, shortcut).eval()
        with torch.no_grad():
            got = model(fixed_input())
        torch.testing.assert_close(got, torch.tensor(stored[f"{name}-{shortcut}"]), rtol=1e-4, atol=1e-5,
                                   msg=lambda m: f"{name} option {shortcut}: logits differ from the stored reference "
                                                 f"(initialisation or forward changed): {m}")


def test_option_a_subsamples_and_pads_zero_channels_on_both_sides():
    x = torch.randn(2, 16, 8, 8)
    out = PadShortcut(16)(x)
    assert out.shape == (2, 32, 4, 4)
    for c in range(32):
        want = x[:, c - 8, 0::2, 0::2] if 8 <= c < 24 else torch.zeros(2, 4, 4)
        assert torch.equal(out[:, c], want), f"option A channel {c}: expected {'x[{}, ::2, ::2]'.format(c - 8) if 8 <= c < 24 else 'zeros'}"
    assert not list(PadShortcut(16).parameters())


def test_shortcuts_sit_where_the_paper_puts_them():
    """Identity inside a stage; at the first block of stages 2 and 3, A: PadShortcut, B: 1x1 conv
    stride 2 without bias + BN."""
    for shortcut in "AB":
        model = build_model("resnet20", shortcut=shortcut)
        for stage, planes in ((1, 16), (2, 32), (3, 64)):
            for i, block in enumerate(getattr(model, f"layer{stage}")):
                kind = type(block.shortcut).__name__
                if i > 0 or stage == 1:
                    assert kind == "Identity", f"layer{stage}.{i}: {kind} where the paper has the identity"
                elif shortcut == "A":
                    assert isinstance(block.shortcut, PadShortcut) and block.shortcut.pad == planes // 4
                else:
                    conv, norm = block.shortcut
                    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.bias) == \
                        (planes // 2, planes, (1, 1), (2, 2), None)
                    assert isinstance(norm, torch.nn.BatchNorm2d) and norm.num_features == planes


def test_init_variance_is_kaiming_fan_in_where_fan_in_differs_from_fan_out():
    """kaiming_normal_ (fan_in, ReLU gain): Var(w) = 2 / fan_in. Measured on the layers where
    fan_in != fan_out (so fan_out mode would show), on one seed: deterministic."""
    torch.manual_seed(0)
    model = build_model("resnet110", shortcut="B")
    layers = {"conv1": model.conv1, "layer2.0.conv1": model.layer2[0].conv1,
              "layer3.0.conv1": model.layer3[0].conv1, "layer2.0.shortcut.0": model.layer2[0].shortcut[0],
              "fc": model.fc, "layer3.5.conv2": model.layer3[5].conv2}
    for name, layer in layers.items():
        weight = layer.weight.detach()
        fan_in = weight[0].numel()
        assert weight.var().item() == pytest.approx(2 / fan_in, rel=0.15), \
            f"{name}: weight variance {weight.var().item():.3g}, expected 2/fan_in = {2 / fan_in:.3g}"
        assert abs(weight.mean().item()) < 3 * (2 / fan_in / weight.numel()) ** 0.5, f"{name}: mean not 0"
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any(), f"{name}: BN not 1/0"
