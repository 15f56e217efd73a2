"""Progress where stderr is not a terminal: plain lines every ``period`` items and at the last, never
a carriage return; a tqdm bar on a terminal (``fpn.progress``), for training and the jobs alike."""

from __future__ import annotations

import io
import re
import sys

from PIL import Image
from tqdm import tqdm

from fpn.cli import main
from fpn.progress import PlainProgress, progress
from tests.conftest import make_untrained_run
from tests.test_api import photo


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_every_period_and_at_the_last_item():
    stream = io.StringIO()
    lines = PlainProgress(range(5), desc="work", period=2, stream=stream)
    for i in lines:
        lines.set_postfix(item=i)
    text = stream.getvalue()
    assert "\r" not in text
    # after items 2 and 4 (period 2) and after the fifth, the last; each shows the last postfix
    reported = [re.match(r"work (\d)/5  item (\d)  [\d.]+ it/s  ETA ", line).groups()
                for line in text.splitlines()]
    assert reported == [("2", "1"), ("4", "3"), ("5", "4")]


def test_close_reports_what_no_line_showed_yet_and_an_unknown_total_counts_alone():
    stream = io.StringIO()
    lines = PlainProgress(total=None, desc="frames", period=10, stream=stream)
    lines.update(3)
    assert stream.getvalue() == ""  # 3 of a period of 10: nothing yet
    lines.close()
    assert re.fullmatch(r"frames 3  [\d.]+ it/s  ETA \?\n", stream.getvalue())
    lines.close()
    assert len(stream.getvalue().splitlines()) == 1  # nothing new to report


def test_a_resumed_count_starts_at_initial():
    stream = io.StringIO()
    lines = PlainProgress(total=10, initial=6, desc="train step", period=4, stream=stream)
    lines.update(2)  # 8: a multiple of 4
    assert stream.getvalue().startswith("train step 8/10  ")


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(progress(range(3), desc="x"), PlainProgress)
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = progress(range(3), desc="x")
    assert isinstance(bar, tqdm)
    bar.close()


def test_disabled_progress_prints_nothing(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    for _ in progress(range(4), desc="quiet", enabled=False, period=1):
        pass
    assert stream.getvalue() == ""


def test_fpn_predict_writes_plain_lines_into_a_log(tmp_path, capsys):
    """stderr captured (not a terminal), as a log file or a job scheduler has it."""
    run = make_untrained_run(tmp_path / "run")
    inputs = []
    for seed in range(3):
        inputs.append(tmp_path / f"{seed}.png")
        Image.fromarray(photo(seed)).save(inputs[-1])
    assert main(["predict", str(run), *map(str, inputs), "--output", str(tmp_path / "out")]) == 0
    stderr = capsys.readouterr().err
    assert "\r" not in stderr
    counts = [line.split()[1] for line in stderr.splitlines() if line.startswith("predict ")]
    assert counts == ["1/3", "2/3", "3/3"]  # 3 images: a line for each (a twentieth of 3 rounds to 1)
