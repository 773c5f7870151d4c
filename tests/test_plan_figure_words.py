"""The planner's figure says what it shows: its title names the model, the GPU and the dtypes, and where nothing fits
the GPU it says so in words on the axes instead of a legend entry without a line."""

import kvbench
from kvbench.plan.figure import longest_context_figure


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].texts]


def test_nothing_fits_is_said_in_words_not_as_an_empty_legend_entry():
    # llama-3.1-8b's weights alone, 8.03 B parameters in bfloat16, are about 15 GiB: nothing fits in 4 GiB
    plan = kvbench.plan_capacity("llama-3.1-8b", memory="4GiB")
    fig = longest_context_figure(plan)
    ax = fig.axes[0]
    (said,) = texts(fig)
    assert said.startswith("llama-3.1-8b on 4.0 GiB: nothing fits, at any batch size (") and "4.0 GiB usable" in said
    assert ax.get_legend() is None  # no entry for a line that is not drawn
    assert ax.get_title().startswith("llama-3.1-8b: longest context that fits in memory on 4.0 GiB")
    assert "bfloat16" in ax.get_title()


def test_a_plan_that_fits_draws_its_line_and_says_nothing_more():
    plan = kvbench.plan_capacity("tiny", gpu="t4", dtype="float16")
    fig = longest_context_figure(plan)
    assert texts(fig) == []
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["tiny on NVIDIA T4 (plan)"]
    assert fig.axes[0].get_title() == ("tiny: longest context that fits in memory on NVIDIA T4 "
                                       "(float16 weights, float16 KV cache)")


def test_the_plan_explains_why_its_cache_exceeds_inspects_where_sliding_windows_hold_the_prompt(capsys):
    from kvbench.cli.app import main

    assert main(["plan", "--model", "gemma-2-9b", "--gpu", "h100", "--batch-sizes", "1"]) == 0
    assert "the whole prompt, held in every layer at the end of prefill" in " ".join(capsys.readouterr().out.split())
    assert main(["plan", "--model", "llama-3.1-8b", "--gpu", "h100", "--batch-sizes", "1"]) == 0  # no sliding layer
    assert "held in every layer" not in " ".join(capsys.readouterr().out.split())
