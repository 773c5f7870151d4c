"""Change or noise: the verdict of one metric of one scenario between two runs, from the raw repeats.

A timed metric (`total_s`, `ttft_s`, `decode_step_s`, `energy_per_token_j`) is compared on its repeats, as asv does:
it is a "regression" or an "improvement" only when the Mann-Whitney U test (two-sided, `scipy.stats.mannwhitneyu`)
gives p < `ALPHA` (0.002, asv's cut-off) *and* the ratio of the medians new / base lies beyond the threshold. It is
"no change" when the ratio lies within the threshold, or when the test finds no difference (p >= `SUGGESTIVE`, 0.05)
and the ratio's 95% interval holds 1. Otherwise it is "can't tell", with the reason: contention recorded on either
side (a busy machine moves timings more than most changes), the machine itself running at another speed (below), too
few repeats for the test to ever reach the cut-off (with n and m repeats, the smallest two-sided p is
2 / C(n + m, n): 7 repeats each are needed for 0.002), or a likely change not yet significant (0.002 <= p < 0.05, or
an interval without 1), with the repeats that would resolve a change of this size, from the repeats' spread.
The ratio's 95% interval is a percentile bootstrap of the ratio of medians (`results.stats.ratio_interval`).

Repeats within a run share the machine's state of that moment, so two runs of one code differ by more than their
repeats' spread says. With at least `WOBBLE_ROWS` matched scenarios, compare measures that run-to-run wobble on the
comparison itself (`run_wobble`: the robust spread of log(new / base) over the scenarios, about their median, so a
change common to all does not widen it), and a change must lie beyond it too: its p-value against a normal of that
spread is below the cut-off for a regression or an improvement, at or above 0.05 for "no change".

The machine's own speed: every record carries its reference workload's time, taken just before the scenario: a fixed
matrix product (`machine_reference_s`), which depends on the machine alone. (The record's other reference, one
forward of the loaded model, moves with the model's code as well: dividing by it would hide a regression in that
code, so it normalises nothing.) Over the matched scenarios, the median of new / base is how much slower the machine
ran for the new run; the new timings are divided by it. Beyond the threshold, a
reference workload cannot stand in for the model's own speed (on this project's 2-core machine, two identical runs
with the machine 1.1x to 2.0x slower gave divided ratios from 0.90 to 1.44: results/noise/drift), so every timed verdict
is "can't tell" and compare says why. One scenario whose reference moved away from the run's, beyond the threshold
and beyond the reference's own spread within a run (`Z_MACHINE` standard deviations), is "can't tell" alone.

An exact metric (cache bytes, memory peaks: one figure per scenario, no repeats) is a regression or an improvement
when its ratio lies beyond the threshold, and "no change" otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from ..results.stats import clean, ratio_interval
from ..units import missing

ALPHA = 0.002
SUGGESTIVE = 0.05  # p at or above it, with an interval that holds 1: the repeats show no difference
TEST = "Mann-Whitney U, two-sided"
POWER = 0.8  # the chance of seeing a change of the observed size that `repeats_to_resolve` aims at
REGRESSION, IMPROVEMENT, NO_CHANGE, CANT_TELL = "regression", "improvement", "no change", "can't tell"
# The timed metrics and the record field holding their repeats.
TIMED = {"total_s": "total_s_repeats", "ttft_s": "ttft_s_repeats", "decode_step_s": "decode_step_s_repeats",
         "energy_per_token_j": "energy_j_repeats"}  # joules per generate: the same tokens every repeat


def smallest_p(n: int, m: int) -> float:
    """The smallest two-sided p-value the exact Mann-Whitney U test can give with n and m repeats (no ties)."""
    return min(1.0, 2 / math.comb(n + m, n)) if n and m else 1.0


def repeats_for_test(alpha: float = ALPHA) -> int:
    """The fewest repeats per side (equal sides) whose smallest p-value is below `alpha`."""
    n = 1
    while smallest_p(n, n) >= alpha:
        n += 1
    return n


def repeats_to_resolve(base: np.ndarray, new: np.ndarray, alpha: float = ALPHA) -> int:
    """Repeats per side that would resolve a change of the observed size with chance `POWER`: the normal
    approximation on log times, n = 2 (z_(1-alpha/2) + z_power)^2 s^2 / d^2, over the Mann-Whitney test's
    efficiency 3/pi; at least `repeats_for_test(alpha)`."""
    from scipy.stats import norm

    floor = repeats_for_test(alpha)
    logs = [np.log(v[v > 0]) for v in (base, new)]
    d = abs(float(np.median(logs[1]) - np.median(logs[0])))
    variances = [x.var(ddof=1) for x in logs if len(x) > 1]
    if d == 0 or not variances:
        return floor
    s2 = float(np.mean(variances))
    n = 2 * (norm.ppf(1 - alpha / 2) + norm.ppf(POWER)) ** 2 * s2 / d**2 / (3 / math.pi)
    return max(floor, math.ceil(n))


def timed_verdict(base, new, threshold: float, alpha: float = ALPHA, contention: str | None = None,
                  scale: float = 1.0, wobble: float = 0.0) -> dict:
    """The verdict on two lists of repeats: {ratio, ci_low, ci_high, p, verdict, reason}.

    `contention`: why either side was measured on a busy machine (None: neither was). `scale`: how much slower the
    machine itself ran for `new` than for `base` (its reference workload); new's repeats are divided by it.
    `wobble`: the standard deviation of log(new / base) from one scenario to the next between these two runs (see
    `run_wobble`; 0: unknown): a change must lie beyond it as well as beyond the repeats' spread."""
    b, n = clean(base), clean(new) / scale
    if not len(b) or not len(n) or np.median(b) <= 0:
        return {"ratio": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan, "verdict": CANT_TELL,
                "reason": "no repeats recorded"}
    from scipy.stats import mannwhitneyu

    ratio = float(np.median(n) / np.median(b))
    low, high = ratio_interval(b, n)
    same = np.all(b == b[0]) and np.all(n == b[0])
    p = 1.0 if same else float(mannwhitneyu(b, n, alternative="two-sided").pvalue)
    out = {"ratio": ratio, "ci_low": low, "ci_high": high, "p": p}
    beyond = abs(ratio - 1) > threshold
    if contention:
        return out | {"verdict": CANT_TELL, "reason": f"contention: {contention}"}
    if not beyond:
        return out | {"verdict": NO_CHANGE, "reason": f"ratio within ±{threshold:.0%}"}
    need = repeats_to_resolve(b, n, alpha)
    if smallest_p(len(b), len(n)) >= alpha:
        return out | {"verdict": CANT_TELL, "reason": (
            f"too few repeats ({len(b)} and {len(n)}): {TEST} cannot reach p < {alpha:g}; "
            f"{need} each would resolve it")}
    between = ""
    if wobble > 0 and p < SUGGESTIVE:
        from scipy.stats import norm

        p_runs = float(2 * norm.sf(abs(math.log(ratio)) / wobble))
        between = f"; p = {p_runs:.2g} against the run-to-run wobble of ±{wobble:.1%}"
        if p_runs >= SUGGESTIVE:
            return out | {"verdict": NO_CHANGE, "reason": (
                f"within the run-to-run wobble: the scenarios' new / base spread by ±{wobble:.1%} (one standard "
                f"deviation) between these runs, so {ratio:.3f} is no change (p = {p_runs:.2g} >= {SUGGESTIVE:g}), "
                f"though the repeats alone differ (p = {p:.2g}, {TEST})")}
        if p_runs >= alpha:
            return out | {"verdict": CANT_TELL, "reason": (
                f"a likely change, beyond the repeats' spread (p = {p:.2g}, {TEST}) but not beyond the scenarios' "
                f"run-to-run wobble of ±{wobble:.1%} (p = {p_runs:.2g}, cut-off {alpha:g}): rerun both")}
    if p < alpha:
        return out | {"verdict": REGRESSION if ratio > 1 else IMPROVEMENT,
                      "reason": f"p = {p:.2g} < {alpha:g} ({TEST}){between}"}
    if p >= SUGGESTIVE and low <= 1 <= high:
        return out | {"verdict": NO_CHANGE, "reason": (
            f"no significant difference (p = {p:.2g} >= {SUGGESTIVE:g}, {TEST}; the ratio's 95% interval "
            f"{low:.3g}-{high:.3g} holds 1)")}
    more = f"about {need} repeats each would resolve it" if need > min(len(b), len(n)) else \
        "rerun both with more repeats"
    return out | {"verdict": CANT_TELL, "reason": (
        f"a likely change, not yet significant (p = {p:.2g}, cut-off {alpha:g}, {TEST}; the ratio's 95% interval "
        f"{low:.3g}-{high:.3g}); {more}")}


def exact_verdict(base: float, new: float, threshold: float, floor: float = 0) -> dict:
    """The verdict on one figure per side (bytes): beyond the threshold (and changed by at least `floor`) or not."""
    if base is None or new is None or not (base > 0) or math.isnan(new):
        return {"ratio": math.nan, "verdict": "", "reason": ""}
    ratio = new / base
    if abs(ratio - 1) <= threshold or abs(new - base) < floor:
        return {"ratio": ratio, "verdict": NO_CHANGE, "reason": f"ratio within ±{threshold:.0%}"
                if abs(ratio - 1) <= threshold else f"changed by less than {floor:,.0f} bytes"}
    return {"ratio": ratio, "verdict": REGRESSION if ratio > 1 else IMPROVEMENT,
            "reason": f"ratio beyond ±{threshold:.0%} (an exact figure)"}


def contention_of(row: dict, side: str, run: str) -> str | None:
    """Why `run` (the `side` "base" or "new" of a merged row) was measured under contention, or None."""
    flag = row.get(f"contention_{side}")
    if flag is True or (isinstance(flag, (bool, np.bool_)) and bool(flag)):
        return f"{run}: {row.get(f'contention_reason_{side}') or 'recorded'}"
    return None


# ------------------------------------------------------------------ rows of `compare_table`
VERDICT_FIELDS = ("ratio", "ci_low", "ci_high", "p", "verdict", "reason")
REFERENCE = "machine_reference_s"  # the machine's speed: its fixed reference workload, timed before each scenario


def verdict_inputs(metrics) -> list[str]:
    """The record fields the verdicts read besides the metrics: repeats, contention, the machine's reference."""
    return [TIMED[m] for m in metrics if m in TIMED] + ["contention", "contention_reason", REFERENCE]


Z_MACHINE = 2.58  # a scenario's reference this many standard deviations from the run's: the machine moved


@dataclass(frozen=True)
class Machine:
    """The machine's own speed between two runs: `scale` (new / base of the reference workload, `REFERENCE`, the
    median over the matched scenarios; 1 without references) and `noise` (the standard deviation of log(reference)
    between the scenarios of one run, pooled over both runs; 0 when unknown)."""

    scale: float = 1.0
    noise: float = 0.0
    wobble: dict = field(default_factory=dict)  # per timed metric: `run_wobble`


def reference_ratio(row: dict, reference: str) -> float | None:
    """new / base of `reference` on one merged row; None where either side lacks it."""
    b, n = row.get(f"{reference}_base"), row.get(f"{reference}_new")
    if isinstance(b, (int, float)) and isinstance(n, (int, float)) and b > 0 and n > 0 \
            and math.isfinite(b) and math.isfinite(n):
        return n / b
    return None


def robust_sd(values) -> float:
    """The standard deviation of `values` from their median absolute deviation (1.4826 MAD), so that the one
    scenario the machine moved for does not widen it; 0 under three values."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(1.4826 * np.median(np.abs(values - np.median(values)))) if len(values) >= 3 else 0.0


WOBBLE_ROWS = 5  # the fewest matched scenarios the run-to-run wobble is estimated from


def run_wobble(merged, metric: str, scale: float) -> float:
    """How much new / base of `metric` wobbles from one scenario to the next between two runs: the robust standard
    deviation (1.4826 MAD, about the median, so a change common to every scenario does not widen it) of
    log(new / base) over the matched scenarios measured without contention; 0 under `WOBBLE_ROWS` of them.

    Repeats within a run share the machine's state of that moment, so two runs of one code differ by more than the
    repeats' spread says: on this project's 2-core machine two identical idle runs had two scenarios 8% apart at
    p < 0.001 (results/noise). The wobble is that excess, measured on the comparison itself."""
    if f"{metric}_base" not in merged or f"{metric}_new" not in merged:
        return 0.0
    quiet = np.ones(len(merged), dtype=bool)
    for side in ("base", "new"):
        if f"contention_{side}" in merged:
            quiet &= ~merged[f"contention_{side}"].fillna(False).astype(bool).to_numpy()
    ratio = (merged.loc[quiet, f"{metric}_new"].astype(float) / merged.loc[quiet, f"{metric}_base"].astype(float)
             / scale).to_numpy()
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    return robust_sd(np.log(ratio)) if len(ratio) >= WOBBLE_ROWS else 0.0


def machine_of(merged, metrics=()) -> Machine:
    """How much slower the machine itself ran for the new run than for the base (see the module's docstring), and
    each timed metric's run-to-run wobble."""
    ratios = [r for r in (reference_ratio(row, REFERENCE) for row in merged.to_dict("records")) if r is not None]
    machine = Machine()
    if ratios:
        spread = [robust_sd(np.log(merged[f"{REFERENCE}_{side}"].astype(float).clip(lower=1e-12)))
                  for side in ("base", "new")]
        machine = Machine(float(np.exp(np.median(np.log(ratios)))), math.sqrt(float(np.mean(np.square(spread)))))
    return replace(machine, wobble={m: run_wobble(merged, m, machine.scale) for m in metrics if m in TIMED})


def scenario_moved(row: dict, machine: Machine, threshold: float) -> float | None:
    """This scenario's own new / base of the reference where it moved away from the run's, beyond the threshold and
    `Z_MACHINE` standard deviations of a difference of two references; else None."""
    own = reference_ratio(row, REFERENCE)
    if own is None:
        return None
    far = abs(math.log(own / machine.scale)) > Z_MACHINE * machine.noise * math.sqrt(2)
    return own if far and abs(own / machine.scale - 1) > threshold else None


def slower(scale: float) -> str:
    """A time ratio new / base in words: 1.38 -> "1.38x slower", 0.72 -> "1.38x faster"."""
    return f"{scale:.2f}x slower" if scale >= 1 else f"{1 / scale:.2f}x faster"


def metric_verdict(row: dict, metric: str, base_run: str, new_run: str, threshold: float,
                   machine: Machine = Machine(), floor: float = 0) -> dict:
    """The verdict of `metric` on one merged row (fields suffixed `_base` and `_new`)."""
    if metric not in TIMED:
        return exact_verdict(row.get(f"{metric}_base"), row.get(f"{metric}_new"), threshold, floor)
    b, n = (row.get(f"{TIMED[metric]}_{side}") for side in ("base", "new"))
    if not isinstance(b, (list, tuple, np.ndarray)) or not isinstance(n, (list, tuple, np.ndarray)):
        b, n = [row.get(f"{metric}_base")], [row.get(f"{metric}_new")]  # medians only: one value a side
    if all(missing(v) for v in [*b, *n]):
        return {}
    contention = "; ".join(c for c in (contention_of(row, "base", base_run), contention_of(row, "new", new_run))
                           if c) or None
    out = timed_verdict(b, n, threshold, contention=contention, scale=machine.scale,
                        wobble=machine.wobble.get(metric, 0.0))
    if contention or not math.isfinite(out["ratio"]):
        return out
    if abs(machine.scale - 1) > threshold:
        return out | {"verdict": CANT_TELL, "reason": (
            f"the machine itself ran {slower(machine.scale)} for {new_run} than for {base_run} (its reference "
            "workload, over every scenario): rerun both on a steady machine")}
    own = scenario_moved(row, machine, threshold)
    if own is not None:
        return out | {"verdict": CANT_TELL, "reason": (
            f"the machine itself ran {slower(own)} for this scenario in {new_run} than in {base_run} (its "
            f"reference workload, timed just before it; {machine.scale:.2f}x over the run): rerun both on a steady "
            "machine")}
    return out


# ------------------------------------------------------------------ what compare prints
def cant_tell_line(table, gated) -> str | None:
    """How many scenarios a gated metric could not decide, and the commonest reason; None when all were decided."""
    reasons = [rec[f"{m}_reason"] for rec in table.to_dict("records") for m in gated
               if f"{m}_verdict" in table and rec[f"{m}_verdict"] == CANT_TELL]
    if not reasons:
        return None
    rows = int((table["verdict"] == CANT_TELL).sum())
    common = max(set(reasons), key=reasons.count)
    return f"can't tell in {rows} scenario(s) ({len(reasons)} gated figure(s)); the commonest reason: {common}"


def machine_line(table, threshold: float) -> str | None:
    """A line when the machine itself ran at another speed for a new run than for the base (its reference)."""
    lines = []
    for run, scale in table.groupby("new_run", sort=False)["machine_scale"].first().items():
        if abs(scale - 1) > threshold:
            lines.append(f"the machine ran {slower(scale)} for {run} than for the base (its reference workload, "
                         f"the median over the scenarios): timings divided by {scale:.2f} are shown, but a change "
                         "of the machine's speed beyond the threshold is not told from a change of the code "
                         "(can't tell); rerun both on a steady machine")
    return "; ".join(lines) or None


def trend_lines(table, metrics) -> list[str]:
    """With several new runs: per scenario and metric, the ratios run by run, and the first run where a
    significant change begins (every later run then differs significantly in the same direction)."""
    if table["new_run"].nunique() < 2:
        return []
    lines = []
    runs = list(dict.fromkeys(table["new_run"]))
    for scenario, rows in table.groupby("scenario", sort=False):
        rows = rows.set_index("new_run").reindex(runs)
        for metric in metrics:
            if f"{metric}_ratio" not in rows:
                continue
            verdicts = rows[f"{metric}_verdict"].fillna("").tolist()
            start = None
            for i, v in enumerate(verdicts):
                if v in (REGRESSION, IMPROVEMENT) and all(w == v for w in verdicts[i:]):
                    start = i
                    break
            ratios = " -> ".join("-" if r != r else f"{r:.3g}x" for r in rows[f"{metric}_ratio"])
            if start is not None:
                lines.append(f"{scenario} {metric}: {ratios}; a significant {verdicts[start]} begins at "
                             f"{runs[start]}")
    return lines


def table_json(table, metrics, threshold: float, alpha: float = ALPHA) -> dict:
    """`kvbench compare --format json`: every row's ratio, interval, p-value, verdict and reason, per metric."""
    def num(v):
        return None if missing(v) else (
            float(v) if isinstance(v, (float, np.floating)) else v)

    rows = []
    for rec in table.to_dict("records"):
        rows.append({
            "base_run": rec["base_run"], "new_run": rec["new_run"], "scenario": rec["scenario"],
            "verdict": rec["verdict"], "regressed": rec["regressed"] or None,
            "machine_scale": num(rec.get("machine_scale")),
            "metrics": {m: {f: num(rec.get(f"{m}_{f}")) for f in ("base", "new", *VERDICT_FIELDS)}
                        for m in metrics if f"{m}_verdict" in rec},
        })
    return {"test": TEST, "alpha": alpha, "threshold": threshold, "rows": rows,
            "regressions": sum(r["verdict"] == REGRESSION for r in rows)}


def noise_notes(table, threshold: float, gated) -> list[str]:
    """The machine's change of speed, what could not be told and why, and the trends: the notes under the table."""
    metrics = [m for m in TIMED if f"{m}_verdict" in table]
    return [*filter(None, [machine_line(table, threshold), cant_tell_line(table, gated)]),
            *trend_lines(table, metrics)]
