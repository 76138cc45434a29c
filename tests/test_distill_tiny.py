"""The transformers backend, LoRA tuning and the `label` CLI on a tiny random Qwen2 built offline.

A random model answers nonsense, which is the point: these tests check mechanics (constrained-choice
probabilities, KV-cache reuse, adapter save/load, cache reuse across CLI runs), not quality.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from distill.backends.base import LABEL_WORDS  # noqa: E402
from distill.config import LabelConfig, TuneConfig  # noqa: E402
from distill.labeller import render_messages  # noqa: E402
from distill.prompts import load_prompt  # noqa: E402
from fusionlog.data import load_dataset  # noqa: E402
from fusionlog.errors import ArtifactError, ConfigError  # noqa: E402

CHAT = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<assistant> {% endif %}")


def build_tiny(folder: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    corpus = [Path(p).read_text() for p in sorted(Path(load_prompt().path).parent.glob("*.yaml"))]
    for name in ("openstack", "hdfs"):
        corpus += load_dataset(name, progress=False).templates
    corpus += ["<system> <user> <assistant> x0123456789 Anomalous Normal anomalous normal LOGDATA_ABCDEF"]
    # byte-level BPE, as Qwen2's own tokenizer (transformers 5 rebuilds a qwen2 folder's tokenizer
    # as Qwen2Tokenizer, so a word-level one would be misread)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<eos>")
    fast.chat_template = CHAT
    vocab = fast.get_vocab()
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                      tie_word_embeddings=False, eos_token_id=0, pad_token_id=0, bos_token_id=0)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # a sharper random model so the two answers differ clearly
        model.lm_head.weight.mul_(20)
    model.save_pretrained(str(folder), safe_serialization=True)
    fast.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="module")
def backend(tiny):
    from distill.backends.transformers_local import TransformersBackend

    return TransformersBackend(str(tiny))


@pytest.fixture(scope="module")
def ostack():
    return load_dataset("openstack", progress=False)


def messages_for(ds, i=0, cfg=None):
    return render_messages(load_prompt(), cfg or LabelConfig(k_examples=0), ds.sessions[i], ds.templates, ds.system)


def full_logprob(model, ids: list[int], cont: list[int]) -> float:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids + cont])).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    return float(sum(logp[len(ids) - 1 + j, t] for j, t in enumerate(cont)))


def test_constrained_choice_matches_full_forward(backend, ostack):
    msgs = messages_for(ostack)
    r = backend.score([msgs])[0]
    assert r.ok and 0.0 < r.p_anomalous < 1.0 and r.label == int(r.p_anomalous >= 0.5)
    ids = backend.encode(msgs)
    assert r.prompt_tokens == len(ids)
    lp = []
    for spellings in backend._options:
        xs = [full_logprob(backend.model, ids, t) for t in spellings]
        m = max(xs)
        lp.append(m + math.log(sum(math.exp(x - m) for x in xs)))
    assert r.extra["lp_normal"] == pytest.approx(lp[0], abs=1e-4)
    assert r.p_anomalous == pytest.approx(1 / (1 + math.exp(lp[0] - lp[1])), abs=1e-5)
    # deterministic up to float rounding (the repeat reuses the first call's prompt KV)
    assert backend.score([msgs])[0].p_anomalous == pytest.approx(r.p_anomalous, abs=1e-6)


def test_multi_token_option_reuses_kv_cache_correctly(backend, ostack):
    from distill.backends.transformers_local import _cache_of

    ids = backend.encode(messages_for(ostack, 3))
    cont = backend.tokenizer.encode("anomalous block Normal", add_special_tokens=False)
    assert len(cont) >= 3
    with torch.inference_mode():
        out = backend.model(input_ids=torch.tensor([ids]), use_cache=True)
        first = torch.log_softmax(out.logits[0, -1].float(), -1)
        got, n = backend._continuation_logprob(first, _cache_of(out), cont)
        again, _ = backend._continuation_logprob(first, _cache_of(out), cont)  # cache was not consumed
    assert n == len(cont) and got == pytest.approx(full_logprob(backend.model, ids, cont), abs=1e-4) and again == got


def test_a_shared_prompt_head_is_computed_once_and_answers_stay_the_same(tiny, ostack):
    from distill.backends.transformers_local import TransformersBackend

    msgs = [messages_for(ostack, i) for i in range(4)]
    plain = TransformersBackend(str(tiny), reuse_prefix=False)
    reusing = TransformersBackend(str(tiny))
    want = [r.p_anomalous for r in plain.score(msgs)]
    got = reusing.score(msgs)
    assert plain.reused_tokens == 0 and reusing.reused_tokens > 0  # the system message's KV was reused
    assert [r.p_anomalous for r in got] == pytest.approx(want, abs=1e-5)
    assert [r.prompt_tokens for r in got] == [len(reusing.encode(m)) for m in msgs]  # counts whole prompts
    # the same prompt again: all but its last token come from the cache, the answer is unchanged
    assert reusing.score([msgs[3]])[0].p_anomalous == pytest.approx(want[3], abs=1e-5)
    # a swapped model (what a LoRA round does) never reads a cache made by the old one
    before = reusing.reused_tokens
    reusing.model = plain.model
    assert reusing.score([msgs[0]])[0].p_anomalous == pytest.approx(want[0], abs=1e-5)
    assert reusing.reused_tokens == before


def test_the_llm_benchmark_times_both_modes_from_a_cold_start(tiny):
    from distill.backends.transformers_local import TransformersBackend
    from eval.bench_llm import template_prompts, timed_pass

    prompts = template_prompts("openstack", 3)
    backend = TransformersBackend(str(tiny))
    tokens = [len(backend.encode(m)) for m in prompts]
    _, full, none_reused = timed_pass(backend, prompts, False)
    _, reused_p, reused = timed_pass(backend, prompts, True)
    assert none_reused == 0 and 0 < reused < sum(tokens[1:])  # the first prompt of a pass always runs in full
    assert reused_p == pytest.approx(full, abs=1e-5)


def test_reason_generation_is_short_text(backend, ostack):
    from distill.backends.base import ScoreParams

    r = backend.score([messages_for(ostack)], ScoreParams(reason_tokens=5))[0]
    assert r.ok and isinstance(r.reason, str) and r.completion_tokens >= 2


def test_a_thread_count_holds_for_the_calls_only(tiny, ostack):
    import torch

    from distill.backends.transformers_local import TransformersBackend
    from fusionlog.threads import torch_threads

    with torch_threads(2):
        one = TransformersBackend(str(tiny), threads=1)
        assert torch.get_num_threads() == 2  # loading sets nothing for the process
        assert one.score([messages_for(ostack)])[0].ok
        assert torch.get_num_threads() == 2  # nor does a call, after it


@pytest.mark.slow
def test_lora_tune_save_load_round_trip(tiny, tmp_path, ostack):
    from distill.backends.transformers_local import TransformersBackend
    from distill.lora import ADAPTER_META_NAME, source_split, tune

    hdfs = load_dataset("hdfs", progress=False)
    cfg = TuneConfig(train_per_class=6, calib_per_class=3, max_session_tokens=48, lr=5e-2, grad_accum=2)
    out = tmp_path / "adapter"
    meta = tune(str(tiny), load_prompt(), [ostack, hdfs], out, cfg, progress=False)
    names = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", ADAPTER_META_NAME, "calibration.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl", ".pth"))]
    assert meta["train_sequences"] == {"normal": 6, "anomalous": 6} and meta["sources"] == ["hdfs", "openstack"]
    assert meta["calibration"]["fit_on"] == "source"

    _, held = source_split([ostack, hdfs], cfg)
    label_cfg = LabelConfig(k_examples=0, max_session_tokens=48)
    msgs = [render_messages(load_prompt(), label_cfg, s, ds.templates, ds.system) for ds, s in held]
    base = TransformersBackend(str(tiny))
    tuned = TransformersBackend(str(tiny), adapter=out)
    p_base = np.array([r.p_anomalous for r in base.score(msgs)])
    p_tuned = np.array([r.p_anomalous for r in tuned.score(msgs)])
    assert not np.allclose(p_base, p_tuned), "the adapter changed nothing"
    assert round(float(p_tuned.mean()), 4) == meta["heldout_source_quality"]["lora"]["mean_p"]
    assert tuned.model_id != base.model_id and "+lora:" in tuned.model_id

    m = json.loads((out / ADAPTER_META_NAME).read_text())
    m["base_identity"] = "some-other-model"
    (out / ADAPTER_META_NAME).write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="trained on"):
        TransformersBackend(str(tiny), adapter=out)


def test_train_adapter_lowers_the_loss_on_its_examples(tiny, ostack):
    """The one LoRA loop (llm-tune and the rounds' --llm-lora) on given (prompt, label) pairs."""
    from distill.backends.transformers_local import TransformersBackend
    from distill.config import RoundLoraConfig
    from distill.lora import train_adapter

    backend = TransformersBackend(str(tiny))
    cfg = LabelConfig(k_examples=0, max_session_tokens=48)
    examples = [(messages_for(ostack, i, cfg), i % 2) for i in range(4)]
    before = [r.p_anomalous for r in backend.score([m for m, _ in examples])]
    _, run = train_adapter(backend, examples, RoundLoraConfig(rank=4, alpha=8, epochs=3, grad_accum=2, lr=5e-2))
    assert (run.examples, run.passes, run.steps, len(run.losses)) == (4, 12, 6, 12)
    assert run.loss_after < run.loss_before
    after = [r.p_anomalous for r in backend.score([m for m, _ in examples])]  # the adapter stays on
    assert not np.allclose(before, after)
    capped = TransformersBackend(str(tiny))
    _, short = train_adapter(capped, examples, RoundLoraConfig(epochs=3, grad_accum=2, max_steps=1))
    assert (short.passes, short.steps) == (2, 1)
    with pytest.raises(ConfigError, match="no examples"):
        train_adapter(TransformersBackend(str(tiny)), [], RoundLoraConfig())


def run_cli(*argv) -> int:
    from fusionlog.cli import main

    return main(list(argv))


def test_label_cli_writes_verdicts_and_rerun_hits_cache(tiny, tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "c.sqlite"
    argv = ["label", "--target", "openstack", "--llm", str(tiny), "--k", "0", "--budget", "3", "--order", "seeded",
            "--out", str(out), "--cache", str(cache), "-q"]
    assert run_cli(*argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    verdicts = [json.loads(x) for x in (out / "verdicts.jsonl").read_text().splitlines()]
    st = summary["stats"]
    assert st["selected_sequences"] == 3 and st["calls"] == 3 and len(verdicts) == st["labelled_sessions"]
    assert summary["split"]["part"] == "adaptation pool" and summary["quality"]["sessions_scored"] == len(verdicts)
    assert {"key", "label", "prob", "confidence", "reason", "abstained"} <= set(verdicts[0])
    assert run_cli(*argv) == 0
    st2 = json.loads((out / "summary.json").read_text())["stats"]
    assert st2["calls"] == 0 and st2["cache_hits"] == 3
    assert [json.loads(x)["prob"] for x in (out / "verdicts.jsonl").read_text().splitlines()] == \
        [v["prob"] for v in verdicts]


def test_label_cli_errors_are_one_line(tmp_path, capsys):
    assert run_cli("label", "--target", "openstack", "--llm", "qwen2.5-7b", "--k", "0", "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vllm serve" in err[0]
    bad = tmp_path / "bad.yaml"
    bad.write_text("variables: [session]\nmessages:\n  - role: user\n    content: '{sesion}'\n")
    assert run_cli("label", "--target", "openstack", "--prompt", str(bad), "--out", str(tmp_path)) == 2
    assert str(bad) in capsys.readouterr().err
    assert LABEL_WORDS == ("normal", "anomalous")


def test_label_cli_reads_a_directory_of_raw_logs(tiny, tmp_path, capsys, data_dir):
    """A user's own rotated logs, as `fuse` and `detect` take them: a directory, a format, a session rule."""
    import gzip

    lines = (data_dir / "loghub2k/Zookeeper/Zookeeper_2k.log").read_bytes().splitlines(keepends=True)
    logs = tmp_path / "zk"
    logs.mkdir()
    with gzip.open(logs / "zk.log.1.gz", "wb") as fh:
        fh.write(b"".join(lines[:1000]))
    (logs / "zk.log").write_bytes(b"".join(lines[1000:]))
    fmt = r"<Date> <Time> - <Level>  \[<Node>:<Component>@<Id>\] - <Content>"
    out = tmp_path / "out"
    assert run_cli("label", "--target", str(logs), "--log-format", fmt, "--window", "50", "--llm", str(tiny),
                   "--k", "0", "--budget", "2", "--out", str(out), "--cache", str(tmp_path / "c.sqlite"), "-q") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stats"]["calls"] == 2 and summary["split"]["method"].startswith("none (unlabelled")
    assert [f["path"] for f in summary["job"]["spec"]["files"]] == [str(logs / "zk.log.1.gz"), str(logs / "zk.log")]
    capsys.readouterr()
    assert run_cli("label", "--target", str(logs / "none*.log"), "--log-format", fmt, "--out", str(out)) == 2
    assert "matches no log file" in capsys.readouterr().err
