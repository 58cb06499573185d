"""The MLE-bench adapter on small fake competitions laid out like `mlebench prepare` output."""
import os

import numpy as np
import pandas as pd
import pytest

from exit_jax.envs.mle import mlebench, sandbox

CID = "fake-pizza"


def _competition(root, cid=CID, grader="auc-roc", leaderboard=None, lfs=False):
    """An AUC competition: answers in prepared/private/test.csv, metadata in competitions/<id>/."""
    rng = np.random.default_rng(0)
    pub, priv = root / "data" / cid / "prepared" / "public", root / "data" / cid / "prepared" / "private"
    meta = root / "competitions" / cid
    for d in (pub, priv, meta):
        d.mkdir(parents=True, exist_ok=True)
    n = 40
    x = rng.normal(size=2 * n)
    y = (x + rng.normal(scale=0.5, size=2 * n) > 0).astype(bool)
    ids = [f"r{i}" for i in range(2 * n)]
    pd.DataFrame({"request_id": ids[:n], "x": x[:n], "got_pizza": y[:n]}).to_csv(pub / "train.csv", index=False)
    pd.DataFrame({"request_id": ids[n:], "x": x[n:]}).to_csv(pub / "test.csv", index=False)
    pd.DataFrame({"request_id": ids[n:], "got_pizza": 0.5}).to_csv(pub / "sample_submission.csv", index=False)
    pd.DataFrame({"request_id": ids[n:], "got_pizza": y[n:]}).to_csv(priv / "test.csv", index=False)
    (pub / "description.md").write_text("# Pizza\nPredict got_pizza.\n")
    (meta / "description_obfuscated.md").write_text("# Obfuscated pizza\nPredict the probability of got_pizza.\n")
    (meta / "config.yaml").write_text(f"id: {cid}\ngrader:\n  name: {grader}\n  grade_fn: x:grade\n"
                                      f"dataset:\n  answers: {cid}/prepared/private/test.csv\n")
    if lfs:
        (meta / "leaderboard.csv").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\n")
    else:
        scores = leaderboard if leaderboard is not None else np.linspace(0.95, 0.55, 30)
        pd.DataFrame({"teamName": [f"t{i}" for i in range(len(scores))], "score": scores}).to_csv(
            meta / "leaderboard.csv", index=False)
    os.chmod(root / "data", 0o755)
    return str(root / "data"), str(root / "competitions"), ids[n:], x[n:], y[n:]


def _csv(ids, p):
    return pd.DataFrame({"request_id": ids, "got_pizza": p}).to_csv(index=False).encode()


def test_grades_normalises_and_medals(tmp_path):
    data, comps, ids, x, y = _competition(tmp_path)
    t = mlebench.tasks(data, [CID], comps)[0]
    assert t.metric == "roc_auc" and not t.lower_is_better and t.description.startswith("# Obfuscated")
    perfect = t.grade(_csv(ids, y.astype(float)))
    assert perfect.valid and perfect.score == 1.0 and perfect.normalized == 1.0 and perfect.medal == "gold"
    chance = t.grade(_csv(ids, np.full(len(ids), 0.5)))
    assert chance.score == 0.5 and chance.normalized == 0.0 and chance.medal == ""  # below the worst team
    mid = t.grade(_csv(ids, x))
    expected = (mid.score - 0.55) / (0.95 - 0.55)
    assert mid.normalized == pytest.approx(min(1.0, max(0.0, expected)))
    assert np.isnan(mid.validation_score)
    assert not t.grade(_csv(ids[:-1], x[:-1])).valid
    assert "got_pizza" not in t.preview_contents().split("-> test.csv")[1].split("\n")[1]


def test_lower_is_better_comes_from_the_leaderboard(tmp_path):
    data, comps, ids, x, y = _competition(tmp_path, grader="rmse", leaderboard=np.linspace(0.1, 0.9, 20))
    t = mlebench.MLEBenchTask(CID, data, comps)
    assert t.metric == "rmse" and t.lower_is_better
    g = t.grade(_csv(ids, y.astype(float) * 0.0 + 0.5))  # rmse of a constant 0.5 on 0/1 labels = 0.5
    assert g.score == pytest.approx(0.5) and g.normalized == pytest.approx((0.9 - 0.5) / (0.9 - 0.1))


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="mlebench prepare"):
        mlebench.tasks(str(tmp_path / "nowhere"))
    data, comps, *_ = _competition(tmp_path)
    with pytest.raises(FileNotFoundError, match="mlebench prepare -c other"):
        mlebench.MLEBenchTask("other", data, comps)
    data2, comps2, *_ = _competition(tmp_path / "b", grader="bleu-score")
    with pytest.raises(ValueError, match="pass metric="):
        mlebench.MLEBenchTask(CID, data2, comps2)
    assert mlebench.MLEBenchTask(CID, data2, comps2, metric="roc_auc").metric == "roc_auc"
    data3, comps3, *_ = _competition(tmp_path / "c", lfs=True)
    with pytest.raises(ValueError, match="git lfs pull"):
        mlebench.MLEBenchTask(CID, data3, comps3)
    os.remove(os.path.join(comps3, CID, "leaderboard.csv"))
    with pytest.raises(FileNotFoundError, match="leaderboard.csv"):
        mlebench.MLEBenchTask(CID, data3, comps3)


def test_known_competition_without_metadata_uses_paper_ranges(tmp_path):
    """Only `mlebench prepare` output, no mle-bench checkout: metric from the built-in table, normalised
    with the paper's Table 3 range, no medals."""
    cid = "random-acts-of-pizza"
    data, comps, ids, x, y = _competition(tmp_path, cid=cid)
    (tmp_path / "competitions" / cid / "leaderboard.csv").unlink()
    t = mlebench.tasks(data)[0]  # every prepared competition under data_dir
    assert t.id == cid and t.metric == "roc_auc" and (t.worst, t.best) == (0.0, 1.0)
    assert t.description.startswith("# Pizza")  # the public description.md
    g = t.grade(_csv(ids, x))
    assert g.valid and g.normalized == pytest.approx(g.score) and g.medal == ""


@pytest.mark.skipif(not sandbox.bwrap_available(), reason="bwrap cannot create namespaces here")
def test_evaluate_end_to_end_without_mounting_answers(tmp_path):
    data, comps, *_ = _competition(tmp_path)
    t = mlebench.MLEBenchTask(CID, data, comps, time_limit_s=30)
    code = """
import os
import pandas as pd
from sklearn.linear_model import LogisticRegression
p = os.environ["PUBLIC_RESOURCE_PATH"]
tr, te = pd.read_csv(p + "/train.csv"), pd.read_csv(p + "/test.csv")
assert not os.path.exists(os.path.join(p, "..", "private"))  # the answers' dir is not mounted
m = LogisticRegression().fit(tr[["x"]], tr["got_pizza"])
pd.DataFrame({"request_id": te["request_id"], "got_pizza": m.predict_proba(te[["x"]])[:, 1]}).to_csv(
    "submission.csv", index=False)
"""
    g = t.evaluate(code, config=sandbox.SandboxConfig(memory_mb=1024))
    assert g.valid and g.score > 0.8 and g.normalized > 0.5, g.error
