"""The verdict line on hand-made metrics: disjoint intervals either way, overlap, and missing
numbers each give their own line; the best expert is the one with the lowest FD_judge."""

from hetdiff.metrics.verdict import Estimate, compare, ensemble_verdict


def _entry(value, low, high, **more):
    return {"n": 64, "fd_judge": value, "fd_judge_ci": [low, high], **more}


def _metrics(top1, full, experts):
    return {
        "strategies": {"full": full, "top1": top1},  # metrics.json sorts its keys
        "experts": {f"expert-{k}": entry for k, entry in enumerate(experts)},
    }


EXPERTS = [_entry(25.0, 22.0, 27.5), _entry(18.4, 15.0, 21.1), _entry(40.0, 35.0, 45.0)]


def test_disjoint_lower_interval_beats_the_best_expert():
    verdict = ensemble_verdict(
        _metrics(_entry(12.3, 10.1, 14.2), _entry(19.0, 16.0, 22.0), EXPERTS)
    )
    assert verdict.line == (
        "verdict: the top-1 ensemble's FD_judge 12.3 [10.1, 14.2] beats its best expert's "
        "(expert-1) 18.4 [15, 21.1]: intervals do not overlap; the full ensemble's "
        "19 [16, 22] does not beat it (intervals overlap: no resolved difference)"
    )
    assert [c.outcome for c in verdict.comparisons] == ["beats", "overlap"]
    assert {c.expert.name for c in verdict.comparisons} == {"expert-1"}  # lowest point value
    assert "\n" not in verdict.line


def test_disjoint_higher_interval_is_worse_and_overlap_is_unresolved():
    verdict = ensemble_verdict(
        _metrics(_entry(30.0, 21.0, 33.0), _entry(26.0, 24.0, 28.0), EXPERTS)
    )
    assert [c.outcome for c in verdict.comparisons] == ["overlap", "worse"]
    assert "top-1 ensemble's FD_judge 30 [21, 33] does not beat its best expert's" in verdict.line
    assert "full ensemble's 26 [24, 28] is worse than it: intervals do not overlap" in verdict.line
    # touching intervals are not disjoint: no resolved difference
    assert compare(Estimate("a", 1.0, 0.5, 15.0), Estimate("b", 18.4, 15.0, 21.1)) == "overlap"
    assert compare(Estimate("a", 1.0, 0.5, 14.9), Estimate("b", 18.4, 15.0, 21.1)) == "beats"
    assert compare(Estimate("a", 30.0, 21.2, 33), Estimate("b", 18.4, 15.0, 21.1)) == "worse"


def test_missing_numbers_give_a_line_that_says_what_is_missing():
    no_experts = ensemble_verdict({"strategies": {"top1": _entry(12.3, 10.1, 14.2)}})
    assert no_experts.line.startswith("verdict: none: no single expert has FD_judge")
    assert no_experts.comparisons == ()
    # experts sampled but measured without the judge (per-expert FID only)
    fid_only = {"strategies": {"top1": _entry(12.3, 10.1, 14.2)},
                "experts": {"expert-0": {"n": 64, "fid": 99.0}}}  # fmt: skip
    assert ensemble_verdict(fid_only).line == no_experts.line
    judge_off = {"strategies": {"top1": {"n": 64, "fid": 80.0}}, "experts": {"expert-0": {}}}
    assert ensemble_verdict(judge_off).line.startswith("verdict: none: no strategy has FD_judge")
    assert ensemble_verdict({}).comparisons == ()


def test_only_the_strategies_sampled_are_named_and_others_stand_in_for_top1_and_full():
    only_full = ensemble_verdict(
        {"strategies": {"full": _entry(12.0, 10.0, 14.0)}, "experts": {"expert-0": EXPERTS[1]}}
    )
    assert only_full.line.startswith("verdict: the full ensemble's FD_judge 12 [10, 14] beats")
    assert "top-1" not in only_full.line
    other = ensemble_verdict(
        {"strategies": {"sample": _entry(30.0, 29.0, 31.0)}, "experts": {"expert-3": EXPERTS[1]}}
    )
    assert other.line.startswith("verdict: the sample ensemble's FD_judge 30 [29, 31] is worse")
    assert "(expert-3)" in other.line


def test_a_value_without_an_interval_counts_as_a_point():
    metrics = {
        "strategies": {"top1": {"fd_judge": 10.0}},
        "experts": {"expert-0": {"fd_judge": 11.0}},
    }
    (comparison,) = ensemble_verdict(metrics).comparisons
    assert (comparison.ensemble.low, comparison.ensemble.high) == (10.0, 10.0)
    assert comparison.outcome == "beats"


def test_large_distances_are_written_as_whole_numbers():
    metrics = {"strategies": {"top1": _entry(1107.4, 996.2, 1203.9)},
               "experts": {"expert-1": _entry(1069.0, 949.5, 1161.0)}}  # fmt: skip
    line = ensemble_verdict(metrics).line
    assert (
        "FD_judge 1107 [996, 1204] does not beat its best expert's (expert-1) 1069 [950, 1161]"
        in line
    )
    assert "e+" not in line
