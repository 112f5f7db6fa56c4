"""Batched inference as the node runs it: every crop of every camera in one call, padded to a
bucket whose interpreter is allocated once, the same scores as one image at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tl_perception.inference import Classifier
from tl_perception.inference.backends import BATCH_BUCKETS, bucket_for

from support.helpers import color_image


def _images(count: int) -> list[np.ndarray]:
    names = ("red", "green", "blue")
    return [color_image(names[i % 3], (20 + i % 7, 30 + i % 5), seed=i) for i in range(count)]


def test_buckets_are_powers_of_two_up_to_the_largest() -> None:
    assert [bucket_for(n) for n in (1, 2, 3, 5, 9, 17, 32, 33, 100)] == [
        1, 2, 4, 8, 16, 32, 32, 32, 32,
    ]  # fmt: skip
    assert BATCH_BUCKETS[-1] == 32


@pytest.mark.parametrize("backend", ["litert", "keras"])
def test_a_batch_scores_like_one_image_at_a_time(color_bundle: Path, backend: str) -> None:
    clf = Classifier(color_bundle, backend=backend)
    images = _images(45)  # 45 = a chunk of 32 and a bucket of 16 padded from 13
    one_by_one = np.concatenate([clf.predict_proba([image]) for image in images])
    for count in (1, 3, 8, 13, 45):
        np.testing.assert_allclose(clf.predict_proba(images[:count]), one_by_one[:count], atol=1e-5)


def test_litert_keeps_one_allocated_interpreter_per_bucket(color_bundle: Path) -> None:
    clf = Classifier(color_bundle, backend="litert")
    clf.warmup(max_batch=8)
    backend = clf._run
    slots = dict(backend._slots)
    assert sorted(slots) == [1, 2, 4, 8]
    buffers = dict(clf._buffers)
    for count in (3, 5, 8, 2, 7, 1):
        clf.predict_proba(_images(count))
    assert backend._slots == slots  # the same interpreters: nothing resized or re-allocated
    assert all(clf._buffers[k] is v for k, v in buffers.items())  # the same input buffers


def test_whole_frames_of_several_cameras_resize_in_parallel_to_the_same_pixels(
    color_bundle: Path,
) -> None:
    from tl_perception.inference.preprocess import fill_batch, make_batch, worth_parallel

    frames = [color_image(("red", "green", "blue")[i], (480, 640), seed=i) for i in range(3)]
    assert worth_parallel(frames) and not worth_parallel(_images(32))
    serial = make_batch(frames, (32, 32))
    parallel = np.zeros_like(serial)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        fill_batch(frames, parallel, pool)
    np.testing.assert_array_equal(parallel, serial)
    clf = Classifier(color_bundle, backend="litert")
    names = [row[0][0] for row in clf.classify(frames, top_k=1)]
    assert names == ["red", "green", "blue"]
