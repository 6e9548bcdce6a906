"""Classify draws the first upload's result before the others are predicted (iter_classify_uploads)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from caltech_core.use.inference import Classifier, classify_uploads, iter_classify_uploads


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()


def test_the_first_readable_upload_is_predicted_alone_and_given_before_the_rest() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 3, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    classifier = Classifier(model=net, classes=["a", "b", "c"], arch="tiny", image_size=32, resize_size=36,
                            device=torch.device("cpu"))
    uploads = [("broken.jpg", b"not an image"), ("one.jpg", _jpeg(1)), ("two.jpg", _jpeg(2)),
               ("also-broken.png", b"\x89PNG nope"), ("three.jpg", _jpeg(3))]
    batches: list[int] = []
    predict = classifier.predict

    def counted(images: list[Image.Image], top: int = 5) -> list:
        if images:  # the sizes of the batches the model really ran
            batches.append(len(images))
        return predict(images, top)

    classifier.predict = counted  # type: ignore[method-assign]

    stream = iter_classify_uploads(classifier, uploads, top=3)
    broken, first = next(stream), next(stream)
    assert broken.error and broken.image is None
    assert first.name == "one.jpg" and len(first.predictions) == 3
    assert batches == [1]  # only the first image predicted so far: the page can draw it now
    rest = list(stream)
    assert batches == [1, 2]  # then the others in one batch
    streamed = [broken, first, *rest]

    at_once = classify_uploads(classifier, uploads, top=3)
    assert [o.name for o in streamed] == [name for name, _ in uploads] == [o.name for o in at_once]
    for got, want in zip(streamed, at_once, strict=True):
        assert (got.error is None) == (want.error is None)
        assert [c for c, _ in got.predictions] == [c for c, _ in want.predictions]
        assert [p for _, p in got.predictions] == pytest.approx([p for _, p in want.predictions], abs=1e-5)
