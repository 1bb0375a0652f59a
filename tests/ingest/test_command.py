"""The CLI refuses bad options at start with a message that says what to give."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from streamml.cli import main
from streamml.ingest.command import parse_size


def test_help_lists_every_input_and_the_guarantees(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        main(["ingest", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for option in ("--dir", "--tail", "--http", "--key", "--spool-max", "--model", "--state"):
        assert option in text
    assert "Nothing is lost" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--key", "colour"], "unknown key spec 'colour'"),
        (["--spool-max", "lots"], "give a positive number like 256M"),
        (["--http", "host:port"], "give PORT or HOST:PORT"),
        (["--producer-config", "linger.ms"], "give NAME=VALUE"),
        (["--model", "no_colon"], "give MODULE:NAME of an EdgeModel"),
        (["--model", "json:dumps"], "it must be a streamml.ingest.EdgeModel"),
    ],
)
def test_bad_options_say_what_to_give(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["ingest", "--topic", "t", "--state", str(tmp_path), "--tail", "x.log", *args])
    assert done.value.code == 2
    assert message in capsys.readouterr().err


def test_no_input_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert (
        main(["ingest", "--brokers", "127.0.0.1:9", "--topic", "t", "--state", str(tmp_path)]) == 2
    )
    assert "give at least one input" in capsys.readouterr().err


def test_a_corrupt_state_file_stops_the_start_with_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "positions.json").write_text("{half")
    code = main(
        [
            "ingest",
            "--brokers",
            "127.0.0.1:9",
            "--topic",
            "t",
            "--state",
            str(tmp_path),
            "--tail",
            str(tmp_path / "x.log"),
        ]
    )
    assert code == 1
    assert "is not valid JSON" in capsys.readouterr().err


def test_sizes() -> None:
    assert [parse_size(s) for s in ("512M", "2g", "64Mi", "100")] == [
        512_000_000,
        2_000_000_000,
        64 << 20,
        100,
    ]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size("0")
