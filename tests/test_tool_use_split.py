"""The shipped 100 / 100 split of BFCL multi_turn_base (paper §5.1) and the wheel's data."""
import collections

import pytest

from exit_jax.envs.tool_use import bfcl, data, executor, split


def test_split_is_100_100_disjoint_and_covers_base():
    shipped = split.load_split()
    train, test = shipped["train"], shipped["test"]
    assert len(train) == len(set(train)) == 100 and len(test) == len(set(test)) == 100
    assert not set(train) & set(test)
    assert set(train) | set(test) == {t.id for t in bfcl.load_entries("multi_turn_base")}
    assert shipped["seed"] == split.SEED and data.PINNED_VERSION in shipped["source"]


def test_shipped_split_is_what_make_split_gives():
    regenerated = split.make_split(seed=split.SEED)
    shipped = split.load_split()
    assert regenerated["train"] == shipped["train"] and regenerated["test"] == shipped["test"]
    other = split.make_split(seed=split.SEED + 1)
    assert other["train"] != shipped["train"]  # the seed matters


def test_split_is_stratified():
    train, test = split.split_entries("train"), split.split_entries("test")
    per_stratum = collections.defaultdict(lambda: [0, 0])
    for side, tasks in enumerate((train, test)):
        for task in tasks:
            per_stratum[split.stratum(task)][side] += 1
    assert all(abs(a - b) <= 1 for a, b in per_stratum.values())
    turns_train = collections.Counter(split.stratum(t)[0] for t in train)
    turns_test = collections.Counter(split.stratum(t)[0] for t in test)
    assert all(abs(turns_train[k] - turns_test[k]) <= 2 for k in set(turns_train) | set(turns_test))
    for class_name in data.CLASS_MODULES:
        n_train = sum(class_name in t.data["entry"]["involved_classes"] for t in train)
        n_test = sum(class_name in t.data["entry"]["involved_classes"] for t in test)
        assert abs(n_train - n_test) <= 4, class_name


def test_split_entries_rejects_unknown_part():
    with pytest.raises(ValueError, match="'train' or 'test'"):
        split.split_entries("validation")


def test_wheel_data_is_consistent():
    for category in data.CATEGORIES:
        for entry, ground_truth in data.load_category(category):
            assert len(ground_truth) == len(entry["question"])
            owners = data.method_owners(tuple(entry["involved_classes"]))
            for turn in ground_truth:
                for call in executor.parse_ground_truth(turn):
                    assert call.name in owners, (entry["id"], call.name)
            for turn, names in entry.get("missed_function", {}).items():
                assert entry["question"][int(turn)] == [] and set(names) <= set(owners)
    for class_name in data.CLASS_MODULES:
        cls = data.tool_class(class_name)
        assert all(callable(getattr(cls, d["name"], None)) for d in data.function_docs(class_name))


def test_every_category_splits_by_entry_number_and_is_reachable_from_gin():
    """Entry N of each category varies multi_turn_base_N, so each half keeps its entry numbers across
    categories; domains.tool_use_domain(categories=...) trains and evaluates on their union."""
    number = lambda task: int(task.id.rsplit("_", 1)[1])  # noqa: E731
    base = {part: [number(t) for t in split.split_entries(part)] for part in ("train", "test")}
    for category in data.CATEGORIES:
        for part in ("train", "test"):
            tasks = split.split_entries(part, category)
            assert [number(t) for t in tasks] == base[part] and all(t.id.startswith(category) for t in tasks)
    from exit_jax.envs import domains
    dom = domains.tool_use_domain(categories=["multi_turn_miss_func", "multi_turn_long_context"], num_eval=150)
    assert len(dom.train_tasks) == 200 and len(dom.eval_tasks) == 150
    assert {t.data["category"] for t in dom.train_tasks} == {"multi_turn_miss_func", "multi_turn_long_context"}
    env = dom.make_env(dom.train_tasks[0])
    assert env.reset()  # the first user request of a miss_func entry, with its tool docs
    with pytest.raises(ValueError, match="Unknown BFCL category"):
        split.split_entries("train", "multi_turn_other")
    with pytest.raises(ValueError, match="non-empty list"):
        domains.tool_use_domain(categories="multi_turn_base")
