"""The engine's training step against one written out by hand, as PyTorch tests its optimizers
against the plain per-parameter loop: the loss (label smoothing on and off) and the weights after
one and two SGD steps (momentum, Nesterov on and off, weight decay with no_wd_bn_bias on and off),
for every SGD implementation this torch has on the CPU."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastcifar.config import OptimConfig, TrainConfig
from fastcifar.training.engine import TrainStep, build_optimizer, resolve_runtime, sgd_implementation

LRS = (0.1, 0.05)  # the rate of step 1 and of step 2 (set_lr in between, as the trainer does)
MOMENTUM, WEIGHT_DECAY = 0.8, 0.05  # not the defaults (0.9, 1e-4): a hard-coded value would pass
EXEMPT = {"conv.bias", "bn.weight", "bn.bias", "fc.bias"}  # what no_wd_bn_bias leaves undecayed


class Tiny(nn.Module):
    """A conv with a bias, a BN and a linear layer: every kind of parameter the groups tell apart."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 3, 4, 4, generator=g), torch.tensor([0, 1, 2, 3, 4, 1])


def hand_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy against (1 - e) one-hot + e / K uniform, averaged over the batch."""
    logp = logits.log_softmax(dim=1)
    nll = -logp[torch.arange(len(labels)), labels]
    uniform = -logp.mean(dim=1)
    return ((1 - smoothing) * nll + smoothing * uniform).mean()


def hand_sgd(model: nn.Module, images, labels, smoothing: float, nesterov: bool, no_wd: bool) -> list:
    """Two steps of SGD written out per parameter; -> [(loss, weights)] after each step."""
    buffers, out = {}, []
    for lr in LRS:
        model.zero_grad()
        loss = hand_loss(model(images), labels, smoothing)
        loss.backward()
        with torch.no_grad():
            for name, p in model.named_parameters():
                decay = 0.0 if no_wd and name in EXEMPT else WEIGHT_DECAY
                d = p.grad + decay * p
                buffers[name] = d.clone() if name not in buffers else MOMENTUM * buffers[name] + d
                p -= lr * (d + MOMENTUM * buffers[name] if nesterov else buffers[name])
        out.append((loss.item(), {k: v.clone() for k, v in model.state_dict().items()}))
    return out


# every combination on the default implementation (auto: fused where torch has it on the CPU),
# and the other implementations on the combination with everything switched on
CASES = [(s, n, w, "auto") for s in (0.0, 0.1) for n in (False, True) for w in (False, True)]
CASES += [(0.1, True, True, impl) for impl in ("for-loop", "foreach", "fused")
          if impl != sgd_implementation("auto", torch.device("cpu"))]


@pytest.mark.parametrize("smoothing,nesterov,no_wd,implementation", CASES)
def test_two_steps_match_sgd_written_out(smoothing, nesterov, no_wd, implementation):
    torch.manual_seed(0)
    model = Tiny()
    expected = hand_sgd(copy.deepcopy(model), *batch(), smoothing, nesterov, no_wd)
    cfg = OptimConfig(lr=LRS[0], momentum=MOMENTUM, nesterov=nesterov, weight_decay=WEIGHT_DECAY,
                      no_wd_bn_bias=no_wd, label_smoothing=smoothing, implementation=implementation)
    train = TrainConfig(device="cpu", amp="none", compile="false", channels_last=False)
    step = TrainStep(model, build_optimizer(model, cfg), resolve_runtime(train, torch.device("cpu")), smoothing)
    what = f"smoothing {smoothing}, nesterov {nesterov}, no_wd_bn_bias {no_wd}, {implementation}"
    for i, (lr, (loss, weights)) in enumerate(zip(LRS, expected), start=1):
        step.set_lr(lr)
        got = step(*batch()).item()
        assert got == pytest.approx(loss, rel=1e-5), f"step {i} loss {got} != hand-computed {loss} ({what})"
        for name, value in model.state_dict().items():
            torch.testing.assert_close(value, weights[name], rtol=1e-5, atol=1e-6,
                                       msg=lambda m: f"step {i}: {name} differs from SGD by hand ({what}): {m}")


def test_the_smoothing_changes_the_loss():
    """Guards the test above: with these logits smoothing 0.1 gives another loss, so a dropped
    label_smoothing cannot pass by coincidence."""
    torch.manual_seed(0)
    logits = Tiny()(batch()[0])
    assert hand_loss(logits, batch()[1], 0.1).item() != pytest.approx(hand_loss(logits, batch()[1], 0.0).item(), rel=1e-3)
    assert hand_loss(logits, batch()[1], 0.1).item() == pytest.approx(
        F.cross_entropy(logits, batch()[1], label_smoothing=0.1).item(), rel=1e-6)


def test_the_trainer_builds_its_step_from_the_config(synthetic_root, tmp_path):
    """The optim keys reach the optimizer and the loss (the step itself is checked above)."""
    from conftest import tiny_config

    from fastcifar.training import Trainer

    cfg = tiny_config(synthetic_root, tmp_path / "run", optim__lr=0.3, optim__momentum=0.7, optim__nesterov=True,
                      optim__weight_decay=0.002, optim__no_wd_bn_bias=True, optim__label_smoothing=0.2)
    trainer = Trainer(cfg)
    groups = trainer.optimizer.param_groups
    assert [(g["momentum"], g["nesterov"], g["weight_decay"]) for g in groups] == [(0.7, True, 0.002), (0.7, True, 0.0)]
    assert trainer.step_fn.criterion.label_smoothing == 0.2
    assert trainer.schedule.peak == 0.3
