"""Math grader: hand-written cases (none taken from MATH), adversarial inputs, cache and batching."""
import time

import pytest

from exit_jax.envs import math as math_env
from exit_jax.envs.math.answers import normalize
from exit_jax.envs.math.grader import Grader, GraderConfig, fast_path

# (response, gold, expected reward). Hand-written; none comes from MATH.
CASES = [
    # plain numbers and fractions
    ("The answer is \\boxed{5}.", "5", 1.0),
    ("\\boxed{6}", "5", 0.0),
    ("So we get \\boxed{\\frac{1}{2}}.", "\\frac12", 1.0),
    ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),
    ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", 1.0),
    ("\\boxed{\\tfrac34}", "\\frac{3}{4}", 1.0),
    ("\\boxed{6/8}", "\\frac{3}{4}", 1.0),
    ("\\boxed{\\frac{2}{3}}", "\\frac{3}{4}", 0.0),
    ("\\boxed{-\\frac{1}{2}}", "-\\frac12", 1.0),
    ("\\boxed{\\frac{-1}{2}}", "-\\frac{1}{2}", 1.0),
    ("\\boxed{3.0}", "3", 1.0),
    ("\\boxed{.5}", "\\frac{1}{2}", 1.0),
    ("\\boxed{{5}}", "5", 1.0),
    ("\\boxed{5}", "$5$", 1.0),
    ("\\boxed{10^{100}}", "10^{100}", 1.0),
    # radicals
    ("\\boxed{2\\sqrt{3}}", "\\sqrt{12}", 1.0),
    ("\\boxed{\\sqrt3}", "\\sqrt{3}", 1.0),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", 1.0),
    ("\\boxed{\\sqrt2/2}", "\\frac{\\sqrt{2}}{2}", 1.0),
    ("\\boxed{\\sqrt{2}}", "\\sqrt{3}", 0.0),
    # intervals
    ("\\boxed{[1, 2)}", "[1,2)", 1.0),
    ("\\boxed{(1, 2]}", "[1,2)", 0.0),
    ("\\boxed{(-\\infty, 3]}", "(-\\infty,3]", 1.0),
    ("\\boxed{(-\\infty, 0) \\cup (1, \\infty)}", "(-\\infty,0)\\cup(1,\\infty)", 1.0),
    # tuples and sets
    ("\\boxed{(3, -2)}", "(3,-2)", 1.0),
    ("\\boxed{(-2, 3)}", "(3, -2)", 0.0),
    ("\\boxed{\\left( 1, 2 \\right)}", "(1,2)", 1.0),
    ("\\boxed{(\\frac{1}{2}, 4)}", "(0.5, 4)", 1.0),
    ("\\boxed{\\{1,2,3\\}}", "3,2,1", 1.0),
    # units, currency, degrees, percent
    ("\\boxed{10\\text{ cm}}", "10", 1.0),
    ("\\boxed{12 \\text{ dollars}}", "12", 1.0),
    ("\\boxed{\\$15}", "15", 1.0),
    ("\\boxed{45^\\circ}", "45", 1.0),
    ("\\boxed{90^{\\circ}}", "90", 1.0),
    ("\\boxed{25\\%}", "25", 1.0),
    ("\\boxed{30\\%}", "25", 0.0),
    # equations, expressions, text answers
    ("\\boxed{x = 3}", "3", 1.0),
    ("\\boxed{(x+1)^2}", "x^2+2x+1", 1.0),
    ("\\boxed{\\text{(B)}}", "B", 1.0),
    # nested braces
    ("\\boxed{\\frac{\\sqrt{\\frac{1}{2}}}{2}}", "\\frac{\\sqrt{2}}{4}", 1.0),
    ("\\boxed{\\frac{1}{\\frac{1}{3}}}", "3", 1.0),
    # box syntax variants
    ("Thus \\boxed 5", "5", 1.0),
    ("\\fbox{7}", "7", 1.0),
    # multiple boxes: math-verify reads all the boxes of a reply as one answer (here {3, 4})
    ("First \\boxed{3}, no wait, \\boxed{4}.", "4", 0.0),
    ("First \\boxed{3}, no wait, \\boxed{4}.", "\\{3, 4\\}", 1.0),
    ("\\boxed{1}, \\boxed{2}, \\boxed{3}", "\\{1,2,3\\}", 1.0),
    ("\\boxed{1}, \\boxed{2}, \\boxed{3}", "3", 0.0),
    # "Final Answer" phrasings, also after an intermediate box
    ("Working... Final Answer: 42", "42", 1.0),
    ("The final answer is $\\frac{2}{7}$.", "\\frac{2}{7}", 1.0),
    ("Final Answer: The final answer is 7.78.", "7.78", 1.0),
    ("First \\boxed{3}. That was wrong. Final Answer: The final answer is 4. I hope it is correct.", "4", 1.0),
    ("First \\boxed{3}. That was wrong. Final Answer: The final answer is 4. I hope it is correct.", "3", 0.0),
    # no anchor: a reply that is only its answer counts; a number that merely ends the text does not
    ("I think it is 17", "17", 1.0),
    ("It is 3, or maybe 4", "3", 0.0),
    ("In total there are 1,234 apples.", "1234", 1.0),
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", 1.0),
    ("We add 3 and 5 to get 8, and then we multiply it by 2", "2", 0.0),
    ("The golden ratio is $\\frac{1+\\sqrt{5}}{2}$", "2", 0.0),
    # malformed and garbage: reward 0, never an exception
    ("\\boxed{3", "3", 0.0),
    ("\\boxed{}", "1", 0.0),
    ("", "3", 0.0),
    ("no numbers here", "3", 0.0),
    ("\\boxed{\\frac{}{}}", "1", 0.0),
    ("\\boxed{∞∞ \\undefinedmacro{{}}}", "1", 0.0),
]


@pytest.fixture(scope="module")
def grader():
    with Grader(GraderConfig(soft_timeout_s=1.0, hard_timeout_s=4.0)) as g:
        yield g


def test_hand_written_cases(grader):
    assert len(CASES) >= 40
    results = grader.check_batch([c[0] for c in CASES], [c[1] for c in CASES])
    wrong = [(c, r) for c, r in zip(CASES, results) if r.reward != c[2]]
    assert not wrong, wrong
    for response, gold, expected in CASES[:8]:  # the single-pair path agrees with the batch path
        assert grader.check(response, gold).reward == expected


def test_parallel_workers_agree():
    with Grader(GraderConfig(num_workers=2)) as g:
        results = g.check_batch([c[0] for c in CASES], [c[1] for c in CASES])
        assert [r.reward for r in results] == [c[2] for c in CASES]
        assert g.worker_restarts == 0
    with pytest.raises(ValueError, match="num_workers"):
        Grader(GraderConfig(num_workers=0))


def test_reasons_and_extraction(grader):
    r = grader.check("\\boxed{3", "3")  # an unclosed box (a cut-off reply) is not an answer
    assert (r.reward, r.reason, r.graded) == (0.0, "no_answer", True)
    r = grader.check("no numbers here", "3")
    assert (r.reward, r.reason, r.extracted) == (0.0, "no_answer", None)
    r = grader.check("\\boxed{\\frac12}", "0.5")
    assert (r.reward, r.reason, r.extracted, r.extraction) == (1.0, "exact_match", "\\frac12", "fast_box")
    r = grader.check("\\boxed{3.50}", "\\frac{7}{2}")
    assert (r.reward, r.reason) == (1.0, "fraction_match")
    r = grader.check("\\boxed{\\sqrt{12}}", "2\\sqrt{3}")
    assert (r.reward, r.reason, r.extraction) == (1.0, "math_verify", "math_verify")
    r = grader.check("so $x = 7$. Final Answer: The final answer is $9$.", "8")
    assert (r.reward, r.reason, r.extracted) == (0.0, "mismatch", "9")
    assert grader.check(None, "3").reason == "empty_response"  # type: ignore[arg-type]


def test_fast_path_only_where_math_verify_agrees(grader):
    """The fast path answers "equal" for one box of a plain number and nothing else; every response it
    declines goes to math-verify, whose verdict it must never contradict."""
    assert fast_path("so \\boxed{0.75}", "\\frac34").reason == "fraction_match"
    for response in ("\\boxed{3} then \\boxed{0.75}", "\\boxed{0.75}. Final answer: 2", "\\boxed{3/4", "0.75"):
        assert fast_path(response, "\\frac34") is None, response
    assert fast_path("\\boxed{0.7}", "\\frac34") is None  # unequal: only math-verify may say 0
    fast = [(r, g) for r, g, _ in CASES if r and fast_path(r, g) is not None]
    assert len(fast) >= 10
    for (response, gold), verdict in zip(fast, grader._slow_path(fast)):
        assert verdict[0], (response, gold, verdict)


def test_math_verify_suite_counts(grader):
    """math-verify's own test cases (tests/fixtures/math_verify_cases.json, 261 of them): at most 5
    labels missed (math-verify's default misses 2), never a false positive (it has 2). The misses are
    answers stated in prose without an anchor, which the training default does not reward."""
    import json
    import os
    with open(os.path.join(os.path.dirname(__file__), "fixtures", "math_verify_cases.json")) as f:
        cases = json.load(f)["cases"]
    got = [r.reward for r in grader.check_batch([c["pred"] for c in cases], [c["gold"] for c in cases])]
    wrong = [c for c, r in zip(cases, got) if r != c["expected"]]
    assert not [c for c in wrong if c["expected"] == 0], wrong
    assert len(cases) == 261 and len(wrong) <= 5, wrong


def test_normalize():
    assert normalize("\\dfrac12") == "\\frac{1}{2}"
    assert normalize("x = \\sqrt3") == "\\sqrt{3}"
    assert normalize("5\\text{ inches}") == "5"
    assert normalize("3/4") == "\\frac{3}{4}"
    assert normalize("\\left(1, 2\\right)") == "(1,2)"


def test_adversarial_inputs_time_out_fast():
    with Grader(GraderConfig(soft_timeout_s=0.5, hard_timeout_s=3.0)) as g:
        g.check("\\boxed{1}", "2")  # start the worker outside the timed region
        bombs = ["\\boxed{9^{9^{9^{9}}}}", "\\boxed{10^{10^{10^{10}}}}", "\\boxed{2^{2^{2^{40}}}!}"]
        start = time.monotonic()
        results = g.check_batch(bombs, ["1"] * len(bombs))
        elapsed = time.monotonic() - start
        # A bomb times out, again with 4x the time, and is then ungraded (never a silent 0).
        assert [r.reward for r in results] == [0.0] * len(bombs)
        assert all(r.reason in ("ungraded: timeout", "mismatch") for r in results), results
        assert any(not r.graded for r in results) and all(r.graded == (r.reason == "mismatch") for r in results)
        assert elapsed < 3 * (3.0 + 12.0) + 2, elapsed
        # Huge and deeply nested strings: math-verify reads only the last 4,000 characters.
        start = time.monotonic()
        assert g.check("\\boxed{" + "1+" * 200_000 + "1}", "1").reason == "no_answer"
        assert g.check("\\boxed" + "{" * 50_000, "1").reason == "no_answer"
        assert g.check("\\boxed{1}" * 20_000, "1").reward == 1.0
        assert time.monotonic() - start < 10
        # The worker still answers afterwards.
        assert g.check("\\boxed{\\sqrt{8}}", "2\\sqrt{2}").reward == 1.0


def test_an_exact_answer_longer_than_1000_characters_is_graded():
    # With the default budgets: comparing 400 tuple members can take over a second on a busy machine.
    long_gold = "(" + ", ".join(str(i) for i in range(400)) + ")"  # 1,890 characters
    with Grader() as g:
        assert len(long_gold) > 1000 and g.check("\\boxed{" + long_gold + "}", long_gold).reward == 1.0


def test_hard_timeout_kills_retries_and_leaves_the_pair_ungraded():
    # Soft timer effectively off, so only the parent's hard timeout can stop the hang.
    with Grader(GraderConfig(soft_timeout_s=60.0, hard_timeout_s=1.0, retry_timeout_factor=2.0)) as g:
        assert g.check("\\boxed{\\sqrt{18}}", "3\\sqrt{2}").reward == 1.0
        start = time.monotonic()
        results = g.check_batch(["\\boxed{9^{9^{9^{9}}}}", "\\boxed{\\sqrt{27}}"], ["1", "3\\sqrt{3}"])
        assert time.monotonic() - start < 60
        assert (results[0].reward, results[0].reason, results[0].graded) == (0.0, "ungraded: timeout", False)
        assert results[1].reward == 1.0 and results[1].graded  # graded by the restarted worker
        assert g.worker_restarts == 2  # the hang, then its retry with 2x the time
        hits = g.cache_hits
        g.check("\\boxed{9^{9^{9^{9}}}}", "1")  # a hang is never cached: it is tried again
        assert g.cache_hits == hits and g.worker_restarts == 4


def test_cache_and_batch_match_single(grader):
    responses = [f"\\boxed{{\\sqrt{{{4 * k}}}}}" for k in range(1, 9)]
    golds = [f"2\\sqrt{{{k}}}" for k in range(1, 9)]
    batch = grader.check_batch(responses, golds)
    hits = grader.cache_hits
    again = [grader.check(r, g) for r, g in zip(responses, golds)]
    assert [b.reward for b in batch] == [a.reward for a in again] == [1.0] * 8
    assert grader.cache_hits - hits == 8
    with pytest.raises(ValueError, match="one answer per response"):
        grader.check_batch(["a"], [])


def test_module_level_grade_and_versions():
    assert math_env.grade("\\boxed{\\frac{6}{4}}", "\\frac{3}{2}") == 1.0
    assert math_env.grade_with_info("\\boxed{2}", "\\sqrt{5}") == (0.0, "mismatch")
    assert math_env.grade_batch(["\\boxed{1}", "2"], ["1", "3"]) == [1.0, 0.0]
    versions = math_env.default_grader().versions
    assert versions["math-verify"] == math_env.math_verify_version() != "missing"
