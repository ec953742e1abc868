"""``dnnbrain-captum atlas``: the command writes the atlas, resumes it, refuses a clash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dnnbrain_captum.cli import main

ARGS = [
    "atlas",
    "--digits",
    "6",
    "--layer",
    "conv3",
    "--layer",
    "conv5",
    "--channels",
    "0-1",
    "--top-k",
    "2",
    "--syntheses",
    "1",
    "--synthesis-steps",
    "1",
    "--quiet",
]


def test_atlas_command_writes_resumes_and_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "atlas"
    assert main([*ARGS, "--out", str(out)]) == 0
    atlas = json.loads((out / "atlas.json").read_text())
    assert [layer["layer"] for layer in atlas["layers"]] == ["conv3", "conv5"]
    record = atlas["layers"][1]["channels"][1]
    assert record["channel"] == 1 and record["page"] == "conv5/1.html"
    assert all(i.startswith("digits:test[") for i in record["top_ids"] + record["bottom_ids"])
    assert (out / "index.html").is_file() and (out / "conv3" / "0.html").is_file()
    before = {p: p.read_bytes() for p in out.rglob("*.html")}

    assert main([*ARGS, "--out", str(out)]) == 0  # the same command: resumed, same pages
    assert {p: p.read_bytes() for p in out.rglob("*.html")} == before

    with pytest.raises(SystemExit) as stop:
        main([*ARGS[:-1], "--top-k", "3", "--out", str(out)])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("dnnbrain-captum atlas: error: atlas folder")
    assert "different settings (top_k)" in error and "--overwrite" in error
    assert {p: p.read_bytes() for p in out.rglob("*.html")} == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layer", "conv9"], "unknown layer 'conv9'"),
        (["--layer", "conv5", "--channels", "70"], "channel 70 is out of range for layer 'conv5'"),
        (["--layer", "conv5", "--top-k", "0"], "--top-k must be >= 1"),
        ([], "atlas needs --layer"),
        (["--layer", "conv5", "--diversity", "-1"], "--diversity must be a finite number >= 0"),
    ],
)
def test_atlas_command_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = tmp_path / "atlas"
    with pytest.raises(SystemExit) as stop:
        main(["atlas", "--digits", "4", *extra, "--out", str(out)])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
