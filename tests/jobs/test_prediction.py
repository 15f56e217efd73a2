"""``fpn predict``: names that never collide, one threshold for JSON, CSV and drawings, video in and out."""

from __future__ import annotations

import csv
import json
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

from fpn.api import Detector
from fpn.cli import main
from fpn.visualize import PALETTE
from tests.conftest import make_untrained_run
from tests.test_api import photo

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_untrained_run(tmp_path_factory.mktemp("run"))


def _csv(path):
    return list(csv.DictReader(path.open()))


def _predict(run, inputs, out, thresh, capsys):
    capsys.readouterr()
    assert main(["--quiet", "predict", str(run), *map(str, inputs), "--output", str(out),
                 "--score-thresh", str(thresh)]) == 0
    return capsys.readouterr().out


def test_same_names_in_two_folders_and_two_formats_do_not_collide(run, tmp_path, capsys):
    inputs = [tmp_path / "in" / name for name in ("a/x.png", "a/x.jpg", "b/x.png")]
    for seed, path in enumerate(inputs):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo(seed)).save(path)
    out = tmp_path / "out"
    _predict(run, inputs, out, 0, capsys)
    for name in ("a/x.png", "a/x.jpg", "b/x.png"):
        assert Image.open(out / "drawn" / name).size == (120, 90), name
    assert not np.array_equal(np.asarray(Image.open(out / "drawn" / "a/x.png")),
                              np.asarray(Image.open(out / "drawn" / "b/x.png")))
    rows = _csv(out / "predictions.csv")
    assert {r["file"] for r in rows} == {str(p) for p in inputs}
    # a folder as the input: the drawn copies mirror the paths below it
    _predict(run, [tmp_path / "in"], tmp_path / "out2", 0, capsys)
    drawn = tmp_path / "out2" / "drawn"
    assert {str(p.relative_to(drawn)) for p in drawn.rglob("*.*")} == {"a/x.png", "a/x.jpg", "b/x.png"}


def test_one_threshold_decides_what_is_written_and_drawn(run, tmp_path, capsys):
    image = tmp_path / "photo.png"
    Image.fromarray(photo(7)).save(image)
    everything = Detector(run, "cpu")(image)
    cut = float(everything.scores.median())
    printed = _predict(run, [image], tmp_path / "out", cut, capsys)
    kept = int((everything.scores >= cut).sum())
    assert f"{kept} detection(s) scored >= {cut:g}" in printed
    rows = _csv(tmp_path / "out" / "predictions.csv")
    records = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert len(rows) == len(records) == kept > 0
    assert all(float(r["score"]) >= cut for r in rows) and all(r["score"] >= cut for r in records)
    for row, record in zip(rows, records, strict=True):  # the same detections: CSV xyxy, JSON xywh
        x, y, w, h = record["bbox"]
        xyxy = [float(row[k]) for k in ("x1", "y1", "x2", "y2")]
        assert xyxy == pytest.approx([x, y, x + w, y + h], abs=0.02)
        assert (row["name"], int(row["level"]), int(row["category_id"])) == (
            record["category_name"], record["level"], record["category_id"])
    # at the best score only the best is drawn: its outline at the middle of its bottom edge
    best = int(everything.scores.argmax())
    _predict(run, [image], tmp_path / "best", float(everything.scores[best]), capsys)
    drawn = Image.open(tmp_path / "best" / "drawn" / "photo.png")
    x1, _, x2, y2 = (int(v) for v in everything.boxes[best].tolist())
    assert drawn.getpixel(((x1 + x2) // 2, min(y2, 89))) == PALETTE[int(everything.labels[best])]
    assert np.array_equal(np.asarray(drawn),  # nothing else drawn: the same as the best alone
                          np.asarray(everything.plot(score_thresh=float(everything.scores[best]))))


def write_video(path, frames, fps=5):
    """A lossless video (PNG frames in QuickTime): decoding gives back exactly these pixels."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "rgb24"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


def read_video(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [f.to_ndarray(format="rgb24") for f in container.decode(stream)], Fraction(stream.average_rate)


def test_a_video_gives_detections_per_frame_and_an_annotated_video(run, tmp_path, capsys):
    frames = [photo(seed) for seed in (11, 12, 13)]
    write_video(tmp_path / "clip.mov", frames)
    printed = _predict(run, [tmp_path / "clip.mov"], tmp_path / "out", 0, capsys)
    assert "3 frame(s) of 1 video(s)" in printed
    rows = _csv(tmp_path / "out" / "predictions.csv")
    assert {int(r["frame"]) for r in rows} == {0, 1, 2}
    detector = Detector(run, "cpu")
    annotated, fps = read_video(tmp_path / "out" / "drawn" / "clip.mp4")
    assert len(annotated) == 3 and annotated[0].shape == (90, 120, 3) and fps == 5
    for index, (frame, drawn) in enumerate(zip(frames, annotated, strict=True)):
        want = detector(frame)  # the frame as an image: the video decoder changed no pixel
        mine = [r for r in rows if int(r["frame"]) == index]
        got = torch.tensor([[float(r[k]) for k in ("x1", "y1", "x2", "y2")] for r in mine])
        torch.testing.assert_close(got, want.boxes, rtol=0, atol=0.006)  # the CSV rounds to 0.01 px
        # the annotated frame is the drawing (H.264 blurs colours a little), far from the bare frame
        plotted = np.asarray(want.plot(score_thresh=0), dtype=np.float32)
        to_drawing = np.abs(drawn.astype(np.float32) - plotted).mean()
        to_bare = np.abs(frame.astype(np.float32) - plotted).mean()
        assert to_drawing < 0.3 * to_bare, (to_drawing, to_bare)


def test_odd_frame_sizes_are_padded_for_the_encoder(tmp_path):
    from fpn.data.video import VideoWriter

    with VideoWriter(tmp_path / "odd.mp4", Fraction(10)) as writer:
        for _ in range(2):
            writer.write(np.full((25, 33, 3), 200, np.uint8))
    frames, fps = read_video(tmp_path / "odd.mp4")
    assert len(frames) == 2 and frames[0].shape == (26, 34, 3) and fps == 10
    assert abs(int(frames[0][10, 10, 0]) - 200) < 4 and frames[0][25, 33].max() < 30  # the padding is black
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed into place


def test_video_without_pyav_is_one_line_naming_the_extra(run, tmp_path, capsys, monkeypatch):
    write_video(tmp_path / "clip.mov", [photo(1)])
    monkeypatch.setitem(sys.modules, "av", None)  # import av now fails
    assert main(["predict", str(run), str(tmp_path / "clip.mov"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'fpn[video]'" in err and err.count("\n") == 1
