"""A tensorflow-datasets builder that stores a local math JSONL/Parquet file as array_record.

Imported lazily (only by datasets.py functions) so that `import exit_jax.envs.math` stays light.
Without TensorFlow, `download_and_prepare` with `file_format="array_record"` and `tfds.data_source` work;
`tfds.load` / `as_dataset` need TensorFlow and are not used (DESIGN.md).
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from exit_jax.envs.math.datasets import load_records

_TEXT_FIELDS = ("problem", "answer", "id", "level", "type", "unique_id", "subject")


class MathRecords(tfds.core.GeneratorBasedBuilder):
    """Math problems with gold answers, copied from one local file (the user supplies it)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "problem/answer records from a local JSONL or Parquet file."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds' default probes `importlib_resources`, a Python < 3.9 backport that is often absent and
        # then fails for builders defined inside a package; the file path is what it would compute.
        return epath.Path(__file__)

    def __init__(self, *, source_path: str | None = None, problem_field: str = "problem", **kwargs):
        # source_path is only needed to prepare; reading back through tfds.data_source passes none.
        self._source_path = source_path
        self._problem_field = problem_field
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = {k: tfds.features.Text() for k in _TEXT_FIELDS}
        features["index"] = tfds.features.Scalar(dtype=np.int64)
        return tfds.core.DatasetInfo(
            builder=self, description=self.__doc__, features=tfds.features.FeaturesDict(features),
            disable_shuffling=True)

    def _split_generators(self, dl_manager):
        if self._source_path is None:
            raise ValueError("MathRecords needs source_path=<local .jsonl/.parquet file> to prepare")
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for rec in load_records(self._source_path, self._problem_field):
            example = {k: str(rec.get(k, "")) for k in _TEXT_FIELDS}
            example["index"] = rec["index"]
            yield rec["index"], example
