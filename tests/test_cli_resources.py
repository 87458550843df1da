"""`agl resources`: publish a bundle whole or not at all; list and show them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runner import agl, assert_one_line_error, on_a_terminal, write
from daemon import Daemon

LLM = {"resource_type": "llm", "endpoint": "http://llm:8000/v1", "model": "m", "api_key": "sk-secret"}
PROMPT = {"resource_type": "prompt_template", "template": "Q: {q}", "engine": "f-string"}


def resources_count(daemon: Daemon) -> int:
    count: int = daemon.status()["resources"]
    return count


def test_push_publishes_the_bundle_and_prints_its_id(daemon: Daemon, tmp_path: Path) -> None:
    file = write(tmp_path / "r.json", json.dumps({"main_llm": LLM, "prompt": PROMPT}))
    result = agl("resources", "push", file, daemon=daemon)
    assert result.returncode == 0, result.stderr
    resources_id = result.stdout.strip()
    assert resources_id.startswith("res-")
    latest = daemon.get("/resources/latest").json()
    assert latest["resources_id"] == resources_id
    assert latest["resources"]["main_llm"]["api_key"] == "sk-secret"  # workers get the real key


def test_push_under_a_name_twice_makes_a_second_version(daemon: Daemon, tmp_path: Path) -> None:
    file = write(tmp_path / "r.json", json.dumps({"prompt": PROMPT}))
    agl("resources", "push", file, "--id", "prompts", daemon=daemon)
    result = agl("resources", "push", file, "--id", "prompts", "--json", daemon=daemon)
    assert result.returncode == 0, result.stderr
    update = json.loads(result.stdout)
    assert (update["resources_id"], update["version"]) == ("prompts", 2)


@pytest.mark.parametrize(
    ("bundle", "expected"),
    [
        (
            {"tool": {"resource_type": "tool", "name": "x"}},
            "Resource 'tool' has unknown resource_type 'tool'",
        ),
        ({"main_llm": {"resource_type": "llm", "model": "m"}}, "main_llm.endpoint"),
    ],
    ids=["unknown-type", "missing-field"],
)
def test_a_bad_resource_is_refused_in_one_line_and_nothing_is_published(
    daemon: Daemon, tmp_path: Path, bundle: dict[str, object], expected: str
) -> None:
    file = write(tmp_path / "r.json", json.dumps({"prompt": PROMPT, **bundle}))
    assert_one_line_error(agl("resources", "push", file, daemon=daemon), expected)
    assert resources_count(daemon) == 0


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            '{\n  "prompt": {"resource_type": "prompt_template",\n  }\n}',
            "r.json:2: invalid JSON: trailing comma",
        ),
        ('[{"resource_type": "llm"}]', "r.json: expected a JSON object of name -> resource, not an array."),
        ("null", "r.json: expected a JSON object of name -> resource, not null."),
        ("{}", "r.json: the bundle has no resources."),
        (b'{"prompt":\n  "caf\xe9"}', "r.json:2: not UTF-8 text (invalid continuation byte)."),
        (b"\xff\xd8\xff\xe0 a picture", "r.json:1: not UTF-8 text (invalid start byte)."),
    ],
)
def test_a_bad_file_is_refused_before_it_reaches_the_daemon(
    tmp_path: Path, content: str | bytes, expected: str
) -> None:
    file = tmp_path / "r.json"
    file.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert_one_line_error(agl("resources", "push", str(file), state_dir=tmp_path), f"{tmp_path}/{expected}")


def test_a_bundle_saved_with_a_byte_order_mark_and_crlf_is_published(daemon: Daemon, tmp_path: Path) -> None:
    """As an editor on Windows saves it, and as `agl queue` takes a task file."""
    file = tmp_path / "r.json"
    file.write_bytes(
        b"\xef\xbb\xbf" + json.dumps({"prompt": PROMPT}, indent=2).replace("\n", "\r\n").encode()
    )
    result = agl("resources", "push", str(file), daemon=daemon)
    assert result.returncode == 0, result.stderr
    assert resources_count(daemon) == 1


def test_list_marks_the_latest_and_hides_api_keys(daemon: Daemon) -> None:
    first = daemon.publish({"llm": LLM})
    second = daemon.publish({"prompt": PROMPT}, resources_id="prompts")
    table = agl("resources", "list", daemon=daemon)
    assert table.returncode == 0, table.stderr
    assert first["resources_id"] in table.stdout and "prompts" in table.stdout
    latest_row = next(line for line in table.stdout.splitlines() if "prompts" in line)
    assert latest_row.lstrip().startswith("*")
    listing = json.loads(agl("resources", "list", "--json", daemon=daemon).stdout)
    assert [u["resources_id"] for u in listing] == [first["resources_id"], second["resources_id"]]
    assert listing[0]["resources"]["llm"]["api_key"] == "***"


def test_list_shows_the_hundred_published_last_unless_asked_for_more_or_fewer(daemon: Daemon) -> None:
    published = [daemon.publish({"prompt": PROMPT})["resources_id"] for _ in range(101)]

    def listed(*options: str) -> list[str]:
        result = agl("resources", "list", "--json", *options, daemon=daemon)
        assert result.returncode == 0, result.stderr
        return [bundle["resources_id"] for bundle in json.loads(result.stdout)]

    assert listed() == published[1:]
    assert listed("--last", "3") == published[-3:]
    assert listed("--all") == published
    table = agl("resources", "list", "--last", "1", daemon=daemon)
    assert published[-1] in table.stdout and published[-2] not in table.stdout
    assert table.stderr == ""  # what was left out is said only on a terminal:

    def shown(*options: str) -> list[str]:
        return on_a_terminal("resources", "list", *options, daemon=daemon, columns=200, stderr_too=True)

    assert shown()[-1] == "The last 100 of 101 bundles shown; --last N or --all shows more."
    every = shown("--all")
    assert published[0] in every[1] and "shown;" not in every[-1]


def test_list_takes_a_count_or_all_not_both(tmp_path: Path) -> None:
    result = agl("resources", "list", "--last", "5", "--all", state_dir=tmp_path)
    assert_one_line_error(result, "Give --last or --all, not both: --all lists every bundle.", code=2)


def test_show_gives_the_latest_by_default_and_reveals_keys_only_when_asked(daemon: Daemon) -> None:
    published = daemon.publish({"llm": LLM})
    hidden = json.loads(agl("resources", "show", "--json", daemon=daemon).stdout)
    assert hidden["resources_id"] == published["resources_id"]
    assert hidden["resources"]["llm"]["api_key"] == "***"
    shown = agl("resources", "show", published["resources_id"], "--reveal", "--json", daemon=daemon)
    assert json.loads(shown.stdout)["resources"]["llm"]["api_key"] == "sk-secret"
    human = agl("resources", "show", daemon=daemon)
    assert human.returncode == 0 and published["resources_id"] in human.stdout


def test_show_of_an_unknown_id_is_one_line(daemon: Daemon) -> None:
    for unknown in ("nope", "", "a/b", "latest/"):  # as tasks and rollouts say it, whatever the id holds
        assert_one_line_error(
            agl("resources", "show", unknown, daemon=daemon), f"No resources with id '{unknown}'."
        )
    assert_one_line_error(agl("resources", "show", daemon=daemon), "No resources have been published yet.")
