"""`fusionlog detect` on the inputs a fuzzing pass broke it with (stop 31): a pipe named as FILE, its own input
as --output, a file that cannot be read half-way, coloured lines, gzip and UTF-16 on stdin, a followed gzip file,
nonsense timings, a closed stdin (a full disk: test_served). Each gives the plain file's verdicts or one clear
line, never a traceback, and never loses the input or the verdicts already made."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fusionlog.commands.detect import output_among_inputs


def _detect(model: Path, *args: str, stdin: bytes | None = None, shell_prefix: str = "") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fusionlog.cli", "detect", "--model", str(model), *args]
    if shell_prefix:  # e.g. a closed stdin, which only a shell's redirection gives
        cmd = ["bash", "-c", " ".join(f"'{c}'" for c in cmd) + shell_prefix]
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=300)


def _scores(proc: subprocess.CompletedProcess) -> list[tuple[str, float]]:
    assert proc.returncode == 0, proc.stderr.decode()
    return [(v["key"], v["score"]) for v in map(json.loads, proc.stdout.decode().splitlines())]


@pytest.fixture(scope="module")
def bgl(bgl_artifact, data_dir):
    log = data_dir / "loghub2k/BGL/BGL_2k.log"
    return bgl_artifact, log, _scores(_detect(bgl_artifact, str(log)))


def test_a_pipe_named_as_file_reads_as_the_file(bgl):
    """`detect <(zcat app.log.gz)` / `/dev/stdin`: the progress bar asked the pipe its position ("Illegal seek")."""
    model, log, plain = bgl
    assert _scores(_detect(model, "/dev/stdin", stdin=log.read_bytes())) == plain


def test_gzip_and_utf16_on_stdin_read_as_the_file(bgl):
    """`cat app.log.gz | detect`, a PowerShell pipe's UTF-16: stdin once read their bytes as lines of garbage."""
    model, log, plain = bgl
    assert _scores(_detect(model, stdin=gzip.compress(log.read_bytes()))) == plain
    assert _scores(_detect(model, stdin=log.read_text(encoding="utf-8").encode("utf-16"))) == plain


def test_coloured_lines_in_a_file_read_as_the_plain_file(bgl, tmp_path):
    """The file reader's fast path skipped the escape stripping stdin and HTTP do: a template per colour."""
    model, log, plain = bgl
    coloured = tmp_path / "coloured.log"
    coloured.write_text("".join(f"\x1b[32m{line}\x1b[0m\n" for line in log.read_text(encoding="utf-8").splitlines()),
                        encoding="utf-8")
    assert _scores(_detect(model, str(coloured))) == plain


def test_its_own_input_as_output_is_refused_and_the_input_kept(bgl, tmp_path):
    model, log, _ = bgl
    victim = tmp_path / "app.log"
    victim.write_bytes(log.read_bytes())
    proc = _detect(model, "-o", str(victim), str(victim))
    assert proc.returncode == 2 and b"which detect reads" in proc.stderr
    assert victim.read_bytes() == log.read_bytes()  # opened for writing first, it was emptied (rc 0)
    # a verdicts file a followed folder or glob would read back as a log
    assert output_among_inputs(str(tmp_path / "v.jsonl"), [str(tmp_path)], []) == f"in the folder {tmp_path}"
    assert output_among_inputs(str(tmp_path / "v.log"), [str(tmp_path / "*.log")], []) is not None
    assert output_among_inputs(str(tmp_path / "out" / "v.jsonl"), [str(tmp_path)], [victim]) is None


def test_a_file_that_fails_half_way_is_skipped_and_counted_and_the_rest_scored(bgl):
    """A read error (here /proc/self/mem's EIO) ended the run with the verdicts still in their batch unwritten."""
    model, log, plain = bgl
    proc = _detect(model, str(log), "/proc/self/mem")
    assert proc.returncode == 1  # finished, but not every input was read
    err = proc.stderr.decode()
    assert "/proc/self/mem: cannot read it" in err and "1 not read to the end" in err
    assert [(v["key"], v["score"]) for v in map(json.loads, proc.stdout.decode().splitlines())] == plain


def test_bad_timings_and_counts_are_refused_under_the_options_name(bgl):
    model, log, _ = bgl
    for option, value in (("--poll-interval", "0"), ("--poll-interval", "nan"), ("--idle-seconds", "nan"),
                          ("--metrics-interval", "-1"), ("--max-events", "0")):
        proc = _detect(model, option, value, str(log))
        assert proc.returncode == 2 and f"argument {option}: {value}: must be".encode() in proc.stderr, option


def test_a_followed_gzip_file_and_a_closed_stdin_are_one_clear_line(bgl, tmp_path):
    model, log, _ = bgl
    packed = tmp_path / "app.log.gz"
    packed.write_bytes(gzip.compress(log.read_bytes()))
    proc = _detect(model, "--follow", str(packed))
    assert proc.returncode == 2 and b"gzip-compressed" in proc.stderr
    proc = _detect(model, shell_prefix=" <&-")
    assert proc.returncode == 2 and b"stdin is closed" in proc.stderr and b"Traceback" not in proc.stderr


def test_the_summary_says_what_was_repaired_and_names_many_files_once(bgl, tmp_path):
    model, log, _ = bgl
    lines = log.read_bytes().splitlines(keepends=True)
    latin = tmp_path / "latin.log"
    latin.write_bytes(b"".join(line.rstrip(b"\r\n") + b" caf\xe9\n" for line in lines[:30]))
    proc = _detect(model, "-v", str(latin))
    assert b"30 lines with bytes not UTF-8 (replaced)" in proc.stderr
    parts = tmp_path / "parts"
    parts.mkdir()
    for i in range(25):
        (parts / f"part-{i:02d}.log").write_bytes(b"".join(lines[i * 40:(i + 1) * 40]))
    proc = _detect(model, str(parts))
    err = proc.stderr.decode()
    assert proc.returncode == 0 and "reading 25 files" in err and "reading " + str(parts / "part-03.log") not in err
