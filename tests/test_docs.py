"""The documentation stands alone: configs cite sections of docs/protocol.md that exist, and
nothing refers to files outside the repository or to issues."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTIONS = re.findall(r"^## (.+)$", (REPO / "docs" / "protocol.md").read_text(), re.M)
CITING = sorted(
    [
        *REPO.glob("conf/**/*.yaml"),
        *REPO.glob("docs/*.md"),
        REPO / "experiments" / "paper_results.yaml",
    ]
)


def test_protocol_citations_name_existing_sections():
    cited = 0
    for path in CITING:
        for rest in re.findall(r"docs/protocol\.md[,:] ([^\n]+)", path.read_text()):
            assert any(rest.startswith(section) for section in SECTIONS), (path, rest)
            cited += 1
    assert cited >= 20  # every experiment config cites its recipe


def test_no_reference_outside_the_repository_or_to_issues():
    for path in CITING:
        text = path.read_text()
        for stale in ("paper-protocol", "protocol section", "shared with the project", "the issue"):
            assert stale not in text.lower(), (path, stale)


def test_every_protocol_fact_has_a_source_tag():
    """Each bullet of docs/protocol.md (a fact) says where it comes from."""
    text = (REPO / "docs" / "protocol.md").read_text()
    facts_part = text.split("## Data and augmentation", 1)[1].split("## Adaptations")[0]
    facts = [b for b in re.split(r"\n(?=- )", facts_part) if b.startswith("- ")]
    tags = ("[CODE", "[DOC", "[2ND", "[UNVERIFIED", "[this repository", "[estimate")
    untagged = [b.splitlines()[0] for b in facts if not any(t in b for t in tags)]
    assert not untagged, untagged


def readme_block(name: str) -> str:
    text = (REPO / "README.md").read_text()
    return text.split(f"<!-- {name} -->", 1)[1].split(f"<!-- /{name} -->", 1)[0]


def test_readme_layout_names_every_module_script_config_group_and_doc():
    """The README's layout map cannot drift from the tree: every module of src/swa_repro (and of
    its packages), every plot script, config group and doc is named in it."""
    layout = readme_block("layout")
    src = REPO / "src" / "swa_repro"
    names = [p.name for p in src.rglob("*.py") if not p.name.startswith("__")]
    names += [p.name for p in (REPO / "plots").glob("*.py")]
    names += [f"{p.name}/" for p in (REPO / "conf").iterdir() if p.is_dir()]
    names += [p.stem for p in (REPO / "docs").glob("*.md")]
    missing = [name for name in names if name.removesuffix(".py") not in layout]
    assert not missing, f"README layout does not name: {missing}"


def test_readme_names_every_file_and_metrics_key_of_a_real_run(trained_run):
    """The README's run-files table names every entry of a finished SWA run's directory, and its
    metrics-keys list every key of the run's metrics.jsonl (and nothing such a run lacks)."""
    from conftest import TINY_SWA

    run_dir = trained_run(TINY_SWA, "tiny_swa")
    files = set(re.findall(r"^\| `([^`]+)` \|", readme_block("run-files"), re.M))
    entries = {p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir()}
    assert entries - {".lock"} and entries <= files, entries - files

    listed = readme_block("metrics-keys")
    documented = set(re.findall(r"`([a-z_<>]+)`", listed))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = {re.sub(r"^ema_[0-9.]+_", "ema_<d>_", key) for record in records for key in record}
    for key in keys:
        plain = key.replace("_bnavg_", "_")
        assert plain in documented and (plain == key or "`ema_<d>_bnavg_`" in listed), key
    swa_run_keys = documented - {"ema_<d>_bnavg_", "eval_at_start"}  # (a config key it names)
    assert swa_run_keys <= {k.replace("_bnavg_", "_") for k in keys}, swa_run_keys - keys
