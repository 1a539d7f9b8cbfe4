"""Help of `python -m swa_repro.analysis`, read from the analyses' config files.

Each conf/analysis/NAME.yaml starts with a comment block: its usage line, a one-line summary
(what `--help` lists), then the details. A key's meaning is its end-of-line comment, or else
the comment lines right above it. The help shows every key of NAME.yaml, then the keys it
shares from base.yaml, each with its default as written and, for a default that refers to
other keys, the value it has with the overrides given.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass

from swa_repro import REPO_ROOT

CONF_DIR = REPO_ROOT / "conf" / "analysis"
USAGE = "python -m swa_repro.analysis NAME [key=value ...]"
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_]\w*):(?P<rest>.*)$")
COMMENT = re.compile(r"\s+#\s?")


@dataclass(frozen=True)
class Key:
    name: str  # dotted for nested keys: origins.SWA
    default: str  # as written in the file
    meaning: str


def header(name: str) -> list[str]:
    """The comment block at the top of conf/analysis/NAME.yaml, without the "# "."""
    lines = []
    for line in (CONF_DIR / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    return lines


def summary(name: str) -> str:
    """The one line under the usage line of NAME.yaml's header."""
    return header(name)[1]


def keys(name: str) -> list[Key]:
    """The keys of conf/analysis/NAME.yaml (without `defaults`) in file order."""
    found, parents, above = [], [], []
    for line in (CONF_DIR / f"{name}.yaml").read_text().splitlines()[len(header(name)) :]:
        if line.startswith("#"):
            above.append(line.lstrip("# "))
            continue
        match = KEY_LINE.match(line)
        if match:
            parents = [*parents[: len(match["indent"]) // 2], match["key"]]
            value, meaning = split_comment(match["rest"])
            if parents[0] != "defaults":
                found.append(Key(".".join(parents), value, meaning or " ".join(above)))
        above = []
    return found


def split_comment(rest: str) -> tuple[str, str]:
    """(value, end-of-line comment) of the text after "key:"."""
    value, *comment = COMMENT.split(" " + rest.strip(), maxsplit=1)
    return value.strip(), comment[0].strip() if comment else ""


def listing(names) -> str:
    """The usage line and one line per analysis (`--help`, or no analysis named)."""
    width = max(map(len, names))
    lines = [f"usage: {USAGE}", "", "analyses (NAME --help lists the keys of one):"]
    lines += [f"  {name:<{width}}  {summary(name)}" for name in names]
    lines += ["", "Each writes one .npz (fge also a samples file) and prints its path."]
    return "\n".join(lines)


def analysis_help(name: str, resolved: dict[str, str] | None = None) -> str:
    """NAME's header, then its keys and base.yaml's with defaults and meanings; `resolved`:
    dotted key -> value with the overrides given (shown where the default refers to others)."""
    usage, _, *details = header(name)
    lines = [f"usage: {usage}", "", summary(name), *details]
    for title, file in ((f"keys of {name}", name), ("keys shared by every analysis", "base")):
        lines += ["", f"{title} (conf/analysis/{file}.yaml):"]
        for key in keys(file):
            value = (resolved or {}).get(key.name)
            shown = f"{key.default}  (= {value})" if "${" in key.default and value else key.default
            lines.append(f"  {key.name} = {shown}")
            lines += textwrap.wrap(
                key.meaning, 96, initial_indent=" " * 6, subsequent_indent=" " * 6
            )
    return "\n".join(lines)
