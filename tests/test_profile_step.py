"""profile_step.py: where a step's time goes. The per-step arithmetic on hand-made profiler events, and a CPU
run end to end (host time only: no device there)."""

import gzip
import json
from types import SimpleNamespace

import pytest

from fastcifar.bench import profile_step


def event(key, count, self_cpu_us, self_device_us=0.0, cpu_total_us=None):
    return SimpleNamespace(key=key, count=count, self_cpu_time_total=self_cpu_us,
                           self_device_time_total=self_device_us, cpu_time_total=cpu_total_us or self_cpu_us)


class FakeProfile:
    def __init__(self, events):
        self.events = events

    def key_averages(self):
        return self.events


def test_per_step_figures_by_hand():
    """4 steps in 0.1 s of wall time: 25 ms a step. Device: conv 40 ms + relu 20 ms over 4 steps = 15 ms a step
    busy, so idle 1 - 15/25 = 40%; 8 + 4 kernels = 3 a step. The ProfilerStep marker is not an operator."""
    events = [event("aten::relu", 4, 2000, 20_000), event("conv_kernel", 8, 1000, 40_000),
              event("next batch", 4, 500, cpu_total_us=12_000), event("ProfilerStep#1", 1, 99_000, 99_000)]
    s = profile_step.summary(FakeProfile(events), steps=4, wall_seconds=0.1, cuda=True)
    assert s["wall_ms_per_step"] == pytest.approx(25.0) and s["device_busy_ms_per_step"] == pytest.approx(15.0)
    assert s["device_idle_fraction"] == pytest.approx(0.4) and s["device_ops_per_step"] == pytest.approx(3.0)
    assert s["waiting_for_data_ms_per_step"] == pytest.approx(3.0)  # 12 ms in all, 4 steps
    assert [(t["op"], t["ms_per_step"], t["share"]) for t in s["top_device"]] == [
        ("conv_kernel", pytest.approx(10.0), pytest.approx(2 / 3)), ("aten::relu", pytest.approx(5.0), pytest.approx(1 / 3))]
    assert [t["op"] for t in s["top_host"]] == ["aten::relu", "conv_kernel", "next batch"]  # by self host time
    cpu = profile_step.summary(FakeProfile(events[:2]), steps=4, wall_seconds=0.1, cuda=False)
    assert (cpu["device_busy_ms_per_step"], cpu["device_idle_fraction"], cpu["top_device"]) == (None, None, [])
    assert cpu["waiting_for_data_ms_per_step"] is None  # the model alone waits for no batch


@pytest.mark.slow
def test_a_cpu_profile_of_both_parts(tmp_path, capsys):
    out, trace = tmp_path / "profile.json", tmp_path / "trace.json.gz"
    assert profile_step.main(["--device", "cpu", "--depth", "8", "--batch-size", "32", "--synthetic-size", "256",
                              "--steps", "3", "--warmup", "3", "--loader", "torchvision", "--loader.workers=0",
                              "--trace", str(trace), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["kind"] == "profile_step" and list(data["parts"]) == ["model alone", "end to end"]
    alone, e2e = data["parts"]["model alone"], data["parts"]["end to end"]
    for part in (alone, e2e):
        assert part["steps"] == 3 and part["wall_ms_per_step"] > 0 and part["device_busy_ms_per_step"] is None
        ms = [t["ms_per_step"] for t in part["top_host"]]
        assert ms == sorted(ms, reverse=True) and any(t["op"].startswith("aten::convolution") for t in part["top_host"])
    assert alone["waiting_for_data_ms_per_step"] is None and e2e["waiting_for_data_ms_per_step"] > 0
    assert data["first_step_seconds"] > 0 and data["trace"]["file"] == "trace.json.gz"
    assert "traceEvents" in json.loads(gzip.decompress(trace.read_bytes()))
    assert "| model alone |" in capsys.readouterr().out

    from conftest import readme_section, tables

    section = readme_section(tmp_path, "profile", {out.name: data})
    assert "ResNet-8, batch 32, torchvision on synthetic data" in section
    assert [r["part"] for r in tables(section)[0]] == ["model alone", "end to end"]


def test_bad_options_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        profile_step.main(["--depth", "9", "--out", "x.json"])
    assert exc.value.code == 2 and "depth 9 is not 6n+2" in capsys.readouterr().err.strip().splitlines()[-1]
    with pytest.raises(SystemExit):
        profile_step.main(["--batch-size", "512", "--synthetic-size", "100", "--out", "x.json"])
    assert "--batch-size 512 is larger than --synthetic-size 100" in capsys.readouterr().err
