"""Prompt files: the shipped ones load; every kind of template mistake is a ConfigError naming the file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from distill.prompts import VARIABLES, load_prompt
from fusionlog.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, body: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


GOOD = """
    name: p
    variables: [system, session]
    messages:
      - role: system
        content: "Data is fenced. Literal braces: {{not a slot}}"
      - role: user
        content: "System {system}:\\n{session}"
"""


@pytest.mark.parametrize("name", ["label_session", "recheck_disagreement"])
def test_shipped_prompts_load_and_declare_known_variables(name):
    p = load_prompt(name)
    assert "session" in p.variables and set(p.variables) <= set(VARIABLES)
    assert len(p.sha256) == 64


def test_prompt_readme_documents_every_variable():
    readme = (REPO / "prompts" / "README.md").read_text(encoding="utf-8")
    for var in VARIABLES:
        assert f"`{var}`" in readme, var


def test_render_fills_slots_verbatim(tmp_path):
    p = load_prompt(str(write(tmp_path, GOOD)))
    msgs = p.render({"system": "hdfs", "session": "{evil} {{x}}", "unused": 1})
    assert msgs[0] == {"role": "system", "content": "Data is fenced. Literal braces: {not a slot}"}
    assert msgs[1]["role"] == "user"
    assert msgs[1]["content"] == "System hdfs:\n{evil} {{x}}"  # values are never re-parsed


def test_render_missing_value_names_file(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(ConfigError, match=str(path)):
        load_prompt(str(path)).render({"system": "x"})


@pytest.mark.parametrize(
    "body, message",
    [
        (GOOD.replace("{session}", "{sesion}").replace("[system, session]", "[system, sesion]"), "unknown variable"),
        (GOOD.replace("[system, session]", "[system]"), "not declared"),
        (GOOD.replace("[system, session]", "[system, session, examples]"), "never used"),
        (GOOD.replace("{session}", "no slot").replace("[system, session]", "[system]"), "missing required"),
        (GOOD + "    template_format: jinja2\n", "refused"),
        (GOOD + "    colour: red\n", "unknown key"),
        (GOOD.replace("{session}", "{session.__class__}"), "bare variable"),
        (GOOD.replace("{session}", "{session"), "braces"),
        (GOOD.replace("role: user", "role: tool"), "role"),
        ("messages: [oops\n", "not valid YAML"),
        (GOOD.replace("- role: user", "- role: assistant"), "user message"),
    ],
)
def test_validation_errors_name_the_file(tmp_path, body, message):
    path = write(tmp_path, body)
    with pytest.raises(ConfigError, match=message) as err:
        load_prompt(str(path))
    assert str(path) in str(err.value)


def test_unknown_prompt_name_lists_known(tmp_path):
    write(tmp_path, GOOD, "mine.yaml")
    with pytest.raises(ConfigError, match="known: \\['mine'\\]"):
        load_prompt("nope", prompts_dir=tmp_path)
    assert load_prompt("mine", prompts_dir=tmp_path).name == "p"
