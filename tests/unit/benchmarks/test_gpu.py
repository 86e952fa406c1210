"""benchmarks/gpu.py: its FLOP formula against torch's own counter, its smoke mode's record (raw measurements,
tables and ratios), its usage errors, and (on a CUDA machine) the full-size run against the issue's numbers."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from anima_probe.model.anima import build_transformer
from anima_probe.model.dit_file import ANIMA_DIT
from anima_probe.pipeline.benchmark_records import read_record
from anima_probe.pipeline.provenance import REPO_ROOT


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", REPO_ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


gpu = _load_script()


@pytest.mark.parametrize("rows, h, w", [(1, 8, 8), (2, 8, 12)])
def test_forward_flops_equal_torch_flop_counter_on_a_tiny_config(rows, h, w):
    anima = gpu.build(gpu.TINY, torch.device("cpu"), torch.float32)
    x, ctx = torch.randn(rows, 16, h, w), torch.randn(rows, 512, gpu.TINY.dit.text_dim)
    # The math backend runs attention as batched matmuls, which the counter sees (the fused CPU kernel is not in
    # its table): then every FLOP of the forward is a matmul the counter counts.
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        anima.velocity(x, torch.full((rows,), 0.5), ctx)
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    flops = gpu.forward_flops(gpu.TINY.dit, rows, h, w)
    assert flops["total"] == counter.get_total_flops()
    assert flops["attention"] == counts["aten.bmm"]  # scores and values: the only batched matmuls


def test_full_size_linear_flops_are_twice_tokens_times_each_weight():
    """Independent of the formula's algebra: every 2-D weight of the real (meta) module, times the rows it sees."""
    transformer = build_transformer(ANIMA_DIT)  # meta: shapes only
    image_tokens, text_rows = 64 * 64, 512
    expected = 0
    for name, p in transformer.named_parameters():
        if p.ndim != 2:
            continue
        per_image = name.startswith(("time_embed.", "norm_out.")) or ".norm" in name  # timestep MLP, AdaLN heads
        text = "attn2.to_k" in name or "attn2.to_v" in name
        expected += 2 * p.numel() * (text_rows if text else 1 if per_image else image_tokens)
    flops = gpu.forward_flops(ANIMA_DIT, 1, 128, 128)
    assert flops["total"] - flops["attention"] == expected
    assert flops["attention"] == 28 * 4 * image_tokens * 2048 * (image_tokens + text_rows)
    assert 17e12 < flops["total"] < 19e12  # ~18 TFLOP per 1024x1024 image


def test_peak_lookup_prefers_the_most_specific_name():
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.5
    assert gpu.peak_tflops("NVIDIA H100 PCIe") == 756.5
    assert gpu.peak_tflops("NVIDIA H200 NVL") == 835.5
    assert gpu.peak_tflops("some other card") is None


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("records")
    assert gpu.main(["--device", "cpu", "--tiny", "--records", str(out)]) == 0
    return out, json.loads((out / "gpu.json").read_text())["data"]


def test_smoke_record_holds_every_measurement(smoke):
    _, record = smoke
    assert set(record) >= {"benchmark", "command", "date", "git_hash", "env", "setup", "params", "forward",
                           "sampling", "distill", "total_seconds", "targets"}
    assert record["setup"]["name"] == "tiny" and record["setup"]["dtype"] == "bfloat16"
    f = record["forward"]
    assert f["flops"] == gpu.forward_flops(gpu.TINY.dit, 2, 16, 16)
    assert math.isclose(f["achieved_tflops"], f["flops"]["total"] / f["seconds"] / 1e12)
    assert f["peak_tflops"] is None and f["share_of_peak"] is None and f["peak_memory_gib"] is None  # CPU
    positive = [f["seconds"], record["sampling"]["guided_s"], record["sampling"]["unguided_s"],
                record["sampling"]["guided_over_unguided"], record["distill"]["step_s"],
                record["distill"]["step_over_forward"], record["distill"]["step_ckpt_over_forward"]]
    assert all(math.isfinite(v) and v > 0 for v in positive), positive
    assert record["params"] == {"dit": 179_776, "adapter": 31_936}
    # Targets are about the full size on a GPU: a smoke run states its values and judges none.
    assert {k: t["met"] for k, t in record["targets"].items()} == dict.fromkeys(gpu.TARGETS)


def test_smoke_record_states_its_ratios_with_their_command_and_judges_none(smoke):
    out, raw = smoke
    record = read_record(out / "gpu.json")
    ratios = {r.label: r for r in record.ratios}
    assert ratios["guided / unguided sampling, wall time"].value == raw["sampling"]["guided_over_unguided"]
    assert ratios["distillation step / forward"].value == raw["distill"]["step_over_forward"]
    assert record.command == raw["command"] == f".venv/bin/python benchmarks/gpu.py --device cpu --tiny --records {out}"
    assert all(r.met is None for r in record.ratios)  # a smoke run states its values and judges none
    assert "Tiny (smoke run)" in record.markdown() and "none is judged here" in record.markdown()


@pytest.mark.parametrize("argv, message", [
    (["--device", "cpu"], "needs CUDA"),
    (["--device", "cpu", "--tiny"], "--tiny needs --records"),
])
def test_usage_errors_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        gpu.main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.slow
def test_full_size_run_on_cuda_meets_the_issues_numbers(tmp_path):
    """Forward share of peak is reported, whatever it is; guided sampling and the time budget are targets."""
    assert gpu.main(["--records", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "gpu.json").read_text())["data"]
    assert record["setup"]["name"] == "full" and record["params"]["dit"] == 1_956_405_248
    assert record["forward"]["share_of_peak"] is not None, "unknown GPU: add its dense bf16 peak to PEAK_BF16_TFLOPS"
    assert record["targets"]["guided_over_unguided"]["met"], record["sampling"]
    assert record["targets"]["total_seconds"]["met"], record["total_seconds"]
