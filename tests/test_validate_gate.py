"""The gate knows its sample size: confidence intervals, `--gate`, decided or not."""

import json
import math
import subprocess

import numpy as np
import pytest
from scipy import stats as sps
from tiny_models import digits_classifier, write_onnx

from edgecnn.errors import EdgecnnError
from edgecnn.runtime.stats import (
    images_to_decide,
    paired_difference_interval,
    tango_statistic,
    wilson_interval,
    z_value,
)
from edgecnn.runtime.validate import (
    Bounds,
    PairedComparison,
    decide,
    judge,
    paired_comparison,
)


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (96, 100), (390, 400),
                                 (1197, 1300), (49_000, 50_000)])
def test_wilson_interval_equals_scipy(k, n):
    expected = sps.binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((expected.low, expected.high), abs=1e-12)


def test_tango_interval_reproduces_the_published_example():
    # Fagerland, Lydersen & Laake (2014), Table II: AHR before/after stem cell
    # transplantation (Bentur et al. 2009), n11=1, n12=1, n21=7, n22=12: Tango's
    # asymptotic score interval for p1+ - p+1 = -0.286 is (-0.517, -0.026).
    lo, hi = paired_difference_interval(1, 7, 21)
    assert (round(lo, 3), round(hi, 3)) == (-0.517, -0.026)


@pytest.mark.parametrize("b,c,n", [(35, 10, 359), (5, 0, 1000), (0, 0, 400), (3, 9, 50),
                                   (120, 118, 50_000)])
def test_tango_interval_by_hand(b, c, n):
    lo, hi = paired_difference_interval(b, c, n)
    z = z_value()
    assert z == pytest.approx(sps.norm.ppf(0.975), abs=1e-12)
    assert lo <= (b - c) / n <= hi
    # at delta 0 the score statistic is McNemar's (b - c) / sqrt(b + c)
    if b + c:
        assert tango_statistic(0.0, b, c, n) == pytest.approx((b - c) / math.sqrt(b + c))
    # the ends are where the statistic reaches -+z, computed by hand from Tango's eq. 3
    for delta, target in ((lo, z), (hi, -z)):
        if abs(delta) < 1.0:
            a_, b_ = 2 * n, -b - c + (2 * n - b + c) * delta
            c_ = -c * delta * (1 - delta)
            q = (math.sqrt(b_ * b_ - 4 * a_ * c_) - b_) / (2 * a_)
            score = (b - c - n * delta) / math.sqrt(n * (2 * q + delta * (1 - delta)))
            assert score == pytest.approx(target, abs=1e-6)
    # and a brute-force inversion over a grid gives the same interval
    grid = np.linspace(-1, 1, 40_001)[1:-1]
    inside = grid[[abs(tango_statistic(d, b, c, n)) <= z for d in grid]] \
        if n < 1000 else None
    if inside is not None:
        assert inside.min() == pytest.approx(lo, abs=1e-4)
        assert inside.max() == pytest.approx(hi, abs=1e-4)


def test_no_discordant_pair_still_leaves_a_width():
    # 1000 images, the two models right and wrong on the same ones: the drop is 0 but
    # the sample cannot rule out a drop of about 3.84/n (the rule of three's territory)
    lo, hi = paired_difference_interval(0, 0, 1000)
    z2 = z_value() ** 2
    assert hi == pytest.approx(z2 / (1000 + z2), rel=1e-6) and lo == pytest.approx(-hi)


def test_tango_interval_covers_the_true_difference_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    n, p_b, p_c = 400, 0.03, 0.01  # a candidate 2 points worse, 4% of images discordant
    cells = rng.multinomial(n, [p_b, p_c, 1 - p_b - p_c], size=2000)
    covered = [lo <= p_b - p_c <= hi for lo, hi in
               (paired_difference_interval(int(b), int(c), n) for b, c, _ in cells)]
    assert 0.93 <= np.mean(covered) <= 0.97


def test_paired_comparison_of_constructed_predictions():
    labels = np.arange(200) % 10
    ref = labels.copy()
    ref[:20] = (labels[:20] + 1) % 10  # reference wrong on 20 images
    cand = ref.copy()
    cand[20:32] = (labels[20:32] + 2) % 10  # candidate also wrong on 12 more (b = 12)
    cand[:3] = labels[:3]  # and right on 3 the reference got wrong (c = 3)
    row = paired_comparison(ref, cand, labels)
    assert row.discordant == {"reference_only_correct": 12, "candidate_only_correct": 3}
    assert row.drop == pytest.approx(9 / 200 * 100)
    assert row.drop_ci == pytest.approx([v * 100 for v in
                                         paired_difference_interval(12, 3, 200)])
    assert row.agreement == 185 / 200
    expected = sps.binomtest(185, 200).proportion_ci(0.95, method="wilson")
    assert row.agreement_ci == pytest.approx([expected.low, expected.high])


def test_each_gate_holds_its_figure_against_the_bounds():
    row = PairedComparison(drop=2.0, drop_ci=(0.5, 3.5), agreement=0.97,
                           agreement_ci=(0.95, 0.985), reference_only_correct=10,
                           candidate_only_correct=2)

    def judge_c(bounds: Bounds) -> list[str]:
        return judge("c.onnx", row, bounds)

    assert judge_c(Bounds(max_drop=1.0, min_agreement=0.9, gate="point"))
    assert not judge_c(Bounds(max_drop=1.0, min_agreement=0.9, gate="confident-fail"))
    assert judge_c(Bounds(max_drop=3.0, min_agreement=0.9, gate="confident-pass"))[0] == (
        "c.onnx: top-1 drop 2.00 pp (its 95% CI upper end 3.50 pp, --gate confident-pass) "
        "exceeds --max-drop 3.00 pp by 0.50 pp")
    assert not judge_c(Bounds(max_drop=3.0, min_agreement=0.9, gate="point"))
    assert judge_c(Bounds(max_drop=5.0, min_agreement=0.96, gate="confident-pass"))
    assert not judge_c(Bounds(max_drop=5.0, min_agreement=0.96, gate="point"))
    assert not judge_c(Bounds(max_drop=5.0, min_agreement=0.98, gate="confident-fail"))
    assert judge_c(Bounds(max_drop=5.0, min_agreement=0.99, gate="confident-fail"))
    decided = decide(row, Bounds(max_drop=1.0, min_agreement=0.9), 400)
    assert decided["max_drop"] == "undecided" and decided["min_agreement"] == "within"
    # 0.5 pp below the point on that side -> (1.5 / 1.0)^2 times the images
    assert decided["images_to_decide"]["max_drop"] == 900
    assert decide(row, Bounds(max_drop=0.4, min_agreement=0.99), 400)["max_drop"] == "outside"
    assert images_to_decide(400, 2.0, (0.5, 3.5), 2.0) is None
    with pytest.raises(EdgecnnError, match="^gate must be one of point, confident-pass, "
                                          "confident-fail"):
        Bounds(gate="strict")


@pytest.fixture(scope="module")
def borderline(tmp_path_factory, tiny_artifacts):
    """A candidate 7 points worse than the reference on 359 digits images (35 images only
    the reference gets right, 10 only the candidate): 95% CI about [+3.5, +10.8] pp."""
    path = tmp_path_factory.mktemp("borderline") / "noisy.onnx"
    return tiny_artifacts["fp32.onnx"], write_onnx(digits_classifier().perturbed(0.5), path)


def test_gate_through_the_cli_on_a_borderline_candidate(borderline, digits_npz, edgecnn_cmd,
                                                        tmp_path):
    reference, candidate = borderline

    def validate(max_drop: str, gate: str, min_agreement: str = "0") -> tuple[int, dict]:
        out = tmp_path / f"{gate}_{max_drop}_{min_agreement}.json"
        result = subprocess.run([*edgecnn_cmd, "validate", "--reference", str(reference),
                                 "--candidate", str(candidate), "--data", f"npz:{digits_npz}",
                                 "--max-drop", max_drop, "--min-agreement", min_agreement,
                                 "--gate", gate, "--json", str(out)],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode in (0, 1), result.stderr
        assert "drop 95% CI" in result.stdout and "sample decides" in result.stdout
        return result.returncode, json.loads(out.read_text())

    code, report = validate("5", "point")
    row = report["candidates"][0]
    assert report["num_images"] == 359 and report["bounds"]["gate"] == "point"
    assert row["discordant"] == {"reference_only_correct": 35, "candidate_only_correct": 10}
    assert row["drop"] == pytest.approx(25 / 359 * 100)
    lo, hi = (v * 100 for v in paired_difference_interval(35, 10, 359))
    assert row["drop_ci"] == pytest.approx([lo, hi]) and 3 < lo < 5 < 8 < hi < 12
    assert row["decided"]["max_drop"] == "undecided" and row["notes"]
    # max drop 5: the measured 6.96 fails, the CI's lower end (3.46) passes
    assert code == 1 and "exceeds --max-drop 5.00 pp" in row["failures"][0]
    assert validate("5", "confident-fail")[0] == 0
    assert validate("5", "confident-pass")[0] == 1
    # max drop 8: the measured drop passes, the CI's upper end (10.8) fails
    assert validate("8", "point")[0] == 0
    assert validate("8", "confident-pass")[0] == 1
    assert validate("8", "confident-fail")[0] == 0
    # agreement 85.5%, Wilson [81.5, 88.8]%: min 0.87 fails on the point, not confident-fail
    code, report = validate("100", "point", "0.87")
    assert code == 1 and "agreement" in report["candidates"][0]["failures"][0]
    assert validate("100", "confident-fail", "0.87")[0] == 0
    # a bound the whole interval clears is decided either way
    code, report = validate("12", "confident-pass")
    assert code == 0 and report["candidates"][0]["decided"]["max_drop"] == "within"


def test_unknown_gate_is_one_line_exit_2(borderline, digits_npz, edgecnn_cmd):
    reference, candidate = borderline
    result = subprocess.run([*edgecnn_cmd, "validate", "--reference", str(reference),
                             "--candidate", str(candidate), "--data", f"npz:{digits_npz}",
                             "--gate", "lenient"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("error: --gate must be one of point, confident-pass, "
                                     "confident-fail, got 'lenient'")


def test_bench_validate_takes_the_gate(borderline, digits_npz, edgecnn_cmd, tmp_path):
    reference, candidate = borderline

    def bench(gate: str) -> int:
        return subprocess.run([*edgecnn_cmd, "bench", str(reference), str(candidate),
                               "--runs", "2", "--warmup", "0", "--validate", f"npz:{digits_npz}",
                               "--max-drop", "5", "--min-agreement", "0", "--gate", gate],
                              capture_output=True, text=True, timeout=300,
                              cwd=tmp_path).returncode

    assert bench("point") == 1 and bench("confident-fail") == 0
