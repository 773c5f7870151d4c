"""Every figure says what it shows: the report's figures carry a caption naming the model, device, dtype and run
they come from (each run's, where there are several), and the energy figure stands beside tokens per second where
the records have energy, or one line says why it is left out."""

from __future__ import annotations

import re

from synthetic_runs import ENV, record, write_run

import kvbench
from kvbench.plan.figure import longest_context_figure
from kvbench.report.report import write_report

PAIRS = [(p, b, c) for p in (16, 64) for b in (1, 2) for c in (True, False)]


def figures_and_captions(html: str) -> dict[str, str]:
    """{figure name: its caption} of every figure embedded in report.html."""
    found = re.findall(r'<figure><img [^>]*data-figure="([^"]+)">(?:<figcaption>(.*?)</figcaption>)?</figure>', html)
    return {name: caption for name, caption in found}


def with_energy(p, b, c, **kw):
    # joules per token by hand: 0.5 J with the cache, 2 J without, at P=16; 4x at P=64
    return record(p, 8, b, c, energy_per_token_j=(0.5 if c else 2.0) * p / 16, mean_power_w=20.0,
                  energy_source="rapl", energy_unavailable=None, **kw)


def without_energy(p, b, c, **kw):
    return record(p, 8, b, c, energy_per_token_j=None, mean_power_w=None, energy_source=None,
                  energy_unavailable="RAPL not readable (no /sys/class/powercap)", **kw)


def test_energy_is_drawn_beside_tokens_per_second(tmp_path):
    write_run(tmp_path / "hot", [with_energy(*pair) for pair in PAIRS])
    write_report([tmp_path / "hot"], tmp_path / "out")
    html = (tmp_path / "out" / "report.html").read_text()
    assert "energy" in figures_and_captions(html)
    assert (tmp_path / "out" / "figures" / "energy.png").is_file()
    table = (tmp_path / "out" / "tables" / "energy.csv").read_text().splitlines()
    assert "energy_per_token_j" in table[0] and "tokens_per_s" in table[0] and len(table) == 1 + len(PAIRS)


def test_without_energy_the_figure_is_left_out_and_one_line_says_why(tmp_path):
    write_run(tmp_path / "cold", [without_energy(*pair) for pair in PAIRS])
    write_report([tmp_path / "cold"], tmp_path / "out")
    html = (tmp_path / "out" / "report.html").read_text()
    assert "energy" not in figures_and_captions(html) and not (tmp_path / "out" / "figures" / "energy.png").exists()
    (line,) = [n for n in re.findall(r'<div class="note">(.*?)</div>', html, re.S) if "joules" in n]
    assert "no scenario has an energy reading" in line and "RAPL not readable (no /sys/class/powercap)" in line
    assert "\n" not in line.strip()


def test_every_figure_names_model_device_dtype_and_run(tmp_path):
    write_run(tmp_path / "alpha", [with_energy(*pair) for pair in PAIRS])
    write_run(tmp_path / "beta", [with_energy(*pair, model="tiny-gpt", dtype="bfloat16") for pair in PAIRS])
    write_report([tmp_path / "alpha"], tmp_path / "one")
    write_report([tmp_path / "alpha", tmp_path / "beta"], tmp_path / "two")
    one = figures_and_captions((tmp_path / "one" / "report.html").read_text())
    two = figures_and_captions((tmp_path / "two" / "report.html").read_text())
    assert len(one) >= 8 and set(one) == set(two), (one, two)
    for name, caption in one.items():
        for value in ["alpha", "model tiny-llama", f"device {ENV['env_device']}", "dtype float32"]:
            assert value in caption, (name, value, caption)
    for name, caption in two.items():
        for value in ["alpha", "beta", "tiny-llama", "tiny-gpt", "float32", "bfloat16", ENV["env_device"]]:
            assert value in caption, (name, value, caption)


def test_the_plan_figure_names_every_gpu_and_model():
    import pandas as pd

    plan = pd.concat([kvbench.plan_capacity("tiny", gpu=gpu, dtype="float16") for gpu in ("t4", "l4")])
    title = longest_context_figure(plan).axes[0].get_title()
    assert title == ("tiny: longest context that fits in memory on NVIDIA T4, NVIDIA L4 "
                     "(float16 weights, float16 KV cache)")
