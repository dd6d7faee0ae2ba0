"""The scaling-law fitter recovers a law it did not see, from points generated from it."""

import math

import pytest

from moe_lm.eval.scaling_law import Law, fit

CHINCHILLA = Law(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28)  # Hoffmann et al. 2022, approach 3


def test_two_variable_fit_recovers_known_exponents_within_5_percent():
    ns = [10 ** (6 + 0.5 * i) for i in range(6)]
    ds = [10 ** (8 + 0.5 * j) for j in range(6)]
    points = [(n, d, CHINCHILLA.loss(n, d) * (1 + 0.002 * math.sin(7 * i))) for i, (n, d) in
              enumerate((n, d) for n in ns for d in ds)]  # with a little deterministic "noise"
    law = fit([p[0] for p in points], [p[2] for p in points], [p[1] for p in points])
    assert law.alpha == pytest.approx(0.34, rel=0.05) and law.beta == pytest.approx(0.28, rel=0.05)
    assert law.E == pytest.approx(1.69, rel=0.05)
    n_opt, d_opt = law.optimum(1e21)
    true_n, true_d = CHINCHILLA.optimum(1e21)
    assert 6 * n_opt * d_opt == pytest.approx(1e21)
    assert n_opt == pytest.approx(true_n, rel=0.25)  # the optimum is sensitive; the exponents are the test


def test_one_variable_fit_and_bootstrap_intervals_cover_the_truth():
    truth = Law(E=2.0, A=50.0, alpha=0.3)
    ns = [10 ** (5 + 0.4 * i) for i in range(8)]
    losses = [truth.loss(n) * (1 + 0.003 * (-1) ** i) for i, n in enumerate(ns)]
    law = fit(ns, losses, bootstrap=50)
    assert law.alpha == pytest.approx(0.3, rel=0.05) and law.B == 0.0
    lo, hi = law.intervals["alpha"]
    assert lo <= law.alpha <= hi and hi - lo < 0.2


def test_too_few_runs_is_an_error():
    with pytest.raises(ValueError, match="3 runs are too few to fit a two-variable law"):
        fit([1e6, 1e7, 1e8], [3.0, 2.5, 2.2], [1e8, 1e9, 1e10])


def test_the_command_fits_a_sweep_of_result_files_and_predicts(tmp_path, capsys):
    import json

    from moe_lm.scaling import cli

    truth = Law(E=2.0, A=80.0, alpha=0.35)
    for i, n in enumerate([2e5, 4e5, 8e5, 1.6e6, 3.2e6]):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "result.json").write_text(json.dumps(
            {"active_params": n, "params": 1.5 * n, "tokens": 2 * n, "val/loss": truth.loss(n)}))
    cli([f"dir={tmp_path}", "predict=[6.4e6]", "bootstrap=20"])
    out = json.loads((tmp_path / "scaling.json").read_text())
    assert out["law"]["alpha"] == pytest.approx(0.35, rel=0.05) and out["law"]["B"] == 0.0
    assert out["predictions"][0]["loss"] == pytest.approx(truth.loss(6.4e6), rel=0.01)
    assert out["predictions"][0]["D"] == pytest.approx(2 * 6.4e6)  # the sweep's tokens per parameter
    printed = capsys.readouterr().out
    assert (tmp_path / "scaling.png").stat().st_size > 1000 and "predicted loss at N = 6,400,000" in printed
    assert "fitted: one-variable law L(N): D moves with N (D = 2 N in every run)" in printed
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as done:
        cli([f"dir={tmp_path / 'empty'}"])
    assert done.value.code == 2 and "error: dir: no result.json below" in capsys.readouterr().err


def sweep(tmp_path, runs):
    import json

    for i, (n, d, loss) in enumerate(runs):
        (tmp_path / str(i)).mkdir(parents=True)
        (tmp_path / str(i) / "result.json").write_text(json.dumps(
            {"active_params": n, "params": n, "tokens": d, "val/loss": loss}))
    return tmp_path


def test_runs_of_one_size_are_refused(tmp_path, capsys):
    from moe_lm.scaling import cli

    d = sweep(tmp_path, [(1e6, 1e7, 3.1), (1e6, 2e7, 3.0), (1e6, 4e7, 2.95)])
    with pytest.raises(SystemExit) as done:
        cli([f"dir={d}"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "the runs have 1 distinct size N; the law E + A / N^alpha has three" in err


def test_varying_tokens_that_cannot_be_fitted_are_named_as_ignored(tmp_path, capsys):
    from moe_lm.scaling import cli

    truth = Law(E=2.0, A=80.0, alpha=0.35)
    d = sweep(tmp_path, [(n, t, truth.loss(n)) for n, t in ((2e5, 1e6), (4e5, 3e6), (8e5, 2e6), (1.6e6, 9e6))])
    cli([f"dir={d}", "bootstrap=20"])
    out = capsys.readouterr().out
    assert "fitted: one-variable law L(N), IGNORING D: D varies across the runs (1,000,000-9,000,000 tokens)" in out


def test_a_budget_that_buys_nothing_is_refused_and_resamples_never_collapse(tmp_path, capsys):
    from moe_lm.scaling import cli

    truth = Law(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28)
    runs = [(n, t, truth.loss(n, t)) for n in (1e6, 4e6, 1.6e7) for t in (2e7, 8e7)]
    d = sweep(tmp_path, runs)
    with pytest.raises(SystemExit) as done:
        cli([f"dir={d}", "budget=1", "bootstrap=20"])
    assert done.value.code == 2 and "budget: 1 FLOPs buys less than one parameter" in capsys.readouterr().err
    law = fit([r[0] for r in runs], [r[2] for r in runs], [r[1] for r in runs], bootstrap=30)
    for lo, hi in law.intervals.values():  # every resample had enough distinct points: no zero-width interval
        assert hi > lo
