import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fastcifar.errors import ConfigError
from fastcifar.models import MODELS, build_model, check_model_name

# option A, CIFAR-10: the counts of the paper's Table 6 models (akamaster's reproduction agrees)
PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}
MACS = {20: 40.55e6, 32: 68.86e6, 44: 97.17e6, 56: 125.49e6, 110: 252.89e6, 1202: 2.83e9}


@pytest.mark.parametrize("depth", sorted(PARAMS))
def test_parameter_count_option_a(depth):
    model = build_model(f"resnet{depth}")
    assert sum(p.numel() for p in model.parameters()) == PARAMS[depth]


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_forward_macs(depth):
    model = build_model(f"resnet{depth}").eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 32, 32))
    macs = counter.get_total_flops() / 2  # the counter counts 2 FLOPs per multiply-add
    assert macs == pytest.approx(MACS[depth], rel=0.01)


@pytest.mark.slow
def test_forward_macs_resnet1202():
    # counted on the meta device: no memory or compute for 19M parameters' activations
    with torch.device("meta"):
        model = build_model("resnet1202").eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, 32, 32))
    assert counter.get_total_flops() / 2 == pytest.approx(MACS[1202], rel=0.01)


@pytest.mark.parametrize("shortcut", ["A", "B"])
@pytest.mark.parametrize("classes", [10, 100])
def test_forward_shapes(shortcut, classes):
    model = build_model("resnet20", classes, shortcut)
    out = model(torch.randn(4, 3, 32, 32).to(memory_format=torch.channels_last))
    assert out.shape == (4, classes)
    assert torch.isfinite(out).all()


def test_option_b_has_projection_parameters():
    a = sum(p.numel() for p in build_model("resnet20", shortcut="A").parameters())
    b = sum(p.numel() for p in build_model("resnet20", shortcut="B").parameters())
    # two projections: 1x1 conv 16->32 and 32->64, each with a BN (weight + bias)
    assert b - a == 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64


def test_registry_and_any_6n_plus_2_depth():
    assert list(MODELS) == ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202"]
    assert check_model_name("resnet8") == 8
    assert check_model_name("resnet74") == 74
    assert build_model("resnet14").depth == 14


@pytest.mark.parametrize("name", ["resnet21", "resnet2", "resnet0", "resnet50x", "vgg16"])
def test_bad_model_names_are_clear_errors(name):
    with pytest.raises(ConfigError) as e:
        build_model(name)
    message = str(e.value)
    assert name in message and "\n" not in message
    assert "resnet20" in message  # lists valid values


def test_kaiming_init_and_zero_mean_output():
    torch.manual_seed(0)
    model = build_model("resnet20")
    w = model.layer1[0].conv1.weight
    # kaiming normal (fan_in, relu gain): std = sqrt(2 / (16*3*3))
    assert w.std().item() == pytest.approx((2 / 144) ** 0.5, rel=0.15)
