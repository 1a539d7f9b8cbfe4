"""Composing a training config from the command line's overrides, and checking them first.

`python -m swa_repro.train key=value ...` composes conf/config.yaml with the overrides. Before
Hydra sees them, every override's key is checked against the keys the composed config has: a
key that does not exist is one line naming the nearest valid keys ("did you mean
optim.lr_init?"), never Hydra's advice to append it with "+", since nothing would read it. An
appended `+key` is refused the same way, except below `model.`, whose keys are the network's
arguments (the model's `_target_` is checked to take them).
"""

from __future__ import annotations

import difflib
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig, OmegaConf

from swa_repro import REPO_ROOT
from swa_repro.cli import first_line
from swa_repro.config_check import ConfigError

CONF_DIR = str(REPO_ROOT / "conf")
OPEN_NODES = ("model.",)  # their keys are arguments of the `_target_`, not a fixed schema


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The config `python -m swa_repro.train *overrides` runs with (outside a Hydra job)."""
    import swa_repro.run_files  # noqa: F401  (registers the ${run_name:...} resolver)

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def groups() -> set[str]:
    """The config groups (conf/<group>/), selected by `group=option` overrides."""
    return {path.name for path in Path(CONF_DIR).iterdir() if path.is_dir()}


def split_override(override: str) -> tuple[str, str, str]:
    """("+" / "++" / "~" / "", key, value) of "prefix key=value"."""
    key, _, value = override.partition("=")
    prefix = key[: len(key) - len(key.lstrip("+~"))]
    return prefix, key[len(prefix) :], value


def check_override_keys(overrides: list[str]) -> None:
    """ConfigError (one line, with the nearest valid keys) for an override of a key the config
    does not have, or an appended +key that nothing reads. Sweeps (a=1,2) are checked by key."""
    parts = [split_override(o) for o in overrides if not o.startswith("hydra")]
    selections = [f"{k}={v.split(',')[0]}" for p, k, v in parts if not p and k in groups()]
    leaves, nodes = flat_keys(OmegaConf.to_container(compose_config(selections)))
    for prefix, key, value in parts:
        if prefix == "~" or key in groups() or key in leaves or key in nodes:
            continue
        if prefix.startswith("+") and key.startswith(OPEN_NODES):
            continue
        raise ConfigError(unknown_key_message(prefix, key, value, leaves))


def unknown_key_message(prefix: str, key: str, value: str, known: set[str]) -> str:
    """One line: the key is unknown (or, appended, read by nothing), and the nearest valid keys."""
    near = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(near)}?" if near else "docs/config.md lists every key"
    if prefix:
        return f"{prefix}{key}={value} adds the key {key}, which nothing reads; {hint}"
    return f"unknown config key {key} (in {key}={value}); {hint}"


def flat_keys(node, prefix: str = "") -> tuple[set[str], set[str]]:
    """The dotted keys of a nested mapping: (keys of values, keys of mappings)."""
    leaves, nodes = set(), set()
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            nodes.add(path)
            sub_leaves, sub_nodes = flat_keys(value, f"{path}.")
            leaves |= sub_leaves
            nodes |= sub_nodes
        else:
            leaves.add(path)
    return leaves, nodes


def check_overrides(overrides: list[str]) -> None:
    """Compose a single run's overrides as Hydra will, so that an unknown config group option or
    key is a ConfigError of one line (Hydra itself reports it over several lines, exit code 1)."""
    try:
        check_override_keys(overrides)
        compose_config(overrides)
    except MissingConfigException as exc:
        options = exc.options or nested_options(exc.missing_cfg_file)
        raise ConfigError(f"{first_line(exc)}; valid options: {', '.join(options)}") from None
    except ConfigCompositionException as exc:
        raise ConfigError(" ".join(line.strip() for line in str(exc).splitlines())) from None


def nested_options(missing: str) -> list[str]:
    """The options of a group kept in subfolders (experiment=synthetic/small_cnn_swa) below the
    deepest existing folder of the missing config `missing` (e.g. "experiment/synthetic/nope")."""
    group = Path(CONF_DIR) / missing.split("/")[0]
    folder = Path(CONF_DIR) / missing
    while not folder.is_dir():
        folder = folder.parent
    return sorted(str(path.relative_to(group).with_suffix("")) for path in folder.rglob("*.yaml"))
