"""`inspect`: topics, counts, rates, image encodings and label topics of a bag."""

from __future__ import annotations

from tl_perception.bag.inspect import inspect_bag
from tl_perception.bag.writer import write_bag
from tl_perception.cli import main

from support.bagutil import frames, label, pattern


def test_inspect_reports_image_and_label_topics(tmp_path, capsys):
    msgs = frames("/cam/raw", [pattern(i) for i in range(5)], encoding="bgr8")
    msgs += frames("/cam/jpeg", [pattern(i) for i in range(3)], kind="compressed", encoding="jpeg")
    msgs.append(label("/label", 0.0, "red"))
    bag = write_bag(tmp_path / "b.bag", "ros1", sorted(msgs, key=lambda m: m.t_ns))
    report = inspect_bag(bag)
    topics = {t.info.name: t for t in report.topics}
    assert topics["/cam/raw"].encoding == "bgr8" and topics["/cam/raw"].resolution == (32, 24)
    assert topics["/cam/raw"].info.count == 5 and round(topics["/cam/raw"].info.rate_hz) == 10
    assert topics["/cam/jpeg"].encoding == "compressed:jpeg"
    assert topics["/cam/jpeg"].resolution == (32, 24)
    assert report.image_topics == ("/cam/jpeg", "/cam/raw") and report.label_topics == ("/label",)
    assert main(["inspect", str(bag)]) == 0
    assert "label topics (--label-topic): /label" in capsys.readouterr().out


def test_inspect_of_a_non_bag_exits_2(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("hi")
    assert main(["inspect", str(tmp_path / "x.txt")]) == 2
    assert "not a bag" in capsys.readouterr().err
