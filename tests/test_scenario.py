import pytest

from kvbench import Scenario, UserError, grid


def test_ids_are_stable_and_readable():
    assert Scenario(16, 32, 4).id == "P16-N32-B4-cache-dynamic-greedy"
    assert Scenario(16, 32, use_cache=False, cache_implementation="static").id == "P16-N32-B1-nocache-greedy"
    assert Scenario(8, 4, decoding="beam", num_beams=3).id == "P8-N4-B1-cache-dynamic-beam3"


def test_no_cache_ignores_the_implementation():
    assert Scenario(8, 4, use_cache=False).cache_implementation is None


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        (dict(prompt_len=0, new_tokens=4), "prompt_len"),
        (dict(prompt_len=8, new_tokens=-1), "new_tokens"),
        (dict(prompt_len=8, new_tokens=4, batch_size=0), "batch_size"),
        (dict(prompt_len=8.5, new_tokens=4), "prompt_len"),
        (dict(prompt_len=8, new_tokens=4, decoding="nucleus"), "nucleus"),
        (dict(prompt_len=8, new_tokens=4, decoding="beam"), "num_beams"),
        (dict(prompt_len=8, new_tokens=4, num_beams=2), "num_beams"),
        (dict(prompt_len=8, new_tokens=4, cache_implementation="pagedd"), "pagedd"),
    ],
)
def test_bad_values_are_named(kwargs, bad):
    with pytest.raises(UserError, match=bad):
        Scenario(**kwargs)


def test_generate_kwargs_force_exactly_n_tokens():
    kw = Scenario(8, 5, decoding="sample").generate_kwargs()
    assert kw["max_new_tokens"] == kw["min_new_tokens"] == 5 and kw["do_sample"] is True


def test_grid_dedupes_uncached_rows():
    scenarios = grid([8, 16], [4], [1, 2], cache_implementations=("dynamic", "static"))
    assert len(scenarios) == 2 * 2 * 3  # dynamic, static, and one uncached row each
    assert len({s.id for s in scenarios}) == len(scenarios)
