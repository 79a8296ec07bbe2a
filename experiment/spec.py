"""The experiment file: arms (a recipe with overrides, an existing build, or a trained GGUF), the base model, one
training config, the suites, the policy, where to write, and which arm is the control.

Paths in the file are taken from the experiment file's own folder (the way a recipe's ``include:`` and
``knowledge:`` are), so it runs from any working directory; ``out`` is taken from the working directory, like every
``--out`` of the ``forma`` command. Overrides name any field by dotted path (``dedupe.semantic_threshold: null``)
and replace the value there whole (``behaviours: {answer: 100}`` is the new mapping, not merged into the old one).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.errors import FormaError
from common.hashing import sha256_file
from common.yaml_io import load_yaml_model, read_yaml

BASE_ARM = "base"
STEPS = ("build", "train", "export", "eval", "compare")
#: Recipe fields whose paths are relative to the recipe file: rebased when the recipe is written elsewhere.
RECIPE_PATH_LISTS = ("knowledge", "behaviour_knowledge")


class ArmSpec(BaseModel):
    """One arm: where its data comes from and, optionally, a model already trained elsewhere (a GPU machine)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Folder name of the arm under `out`; 'base' is the untrained model.")
    recipe: str | None = Field(default=None, description="A recipe YAML (relative to the experiment file).")
    build: str | None = Field(default=None, description="An existing `forma build` folder, used as it is.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Recipe fields by dotted path.")
    gguf: str | None = Field(default=None, description="A trained GGUF: skip train and export, evaluate this.")
    train_report: str | None = Field(default=None, description="train_report.json of that GGUF's run (loss plot).")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError("an arm name is a folder name: letters, digits, '.', '_' and '-'")
        if value == BASE_ARM:
            raise ValueError("'base' is the untrained model's arm; give this arm another name")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ArmSpec:
        if self.recipe is not None and self.build is not None:
            raise ValueError("give recipe or build, not both")
        if self.recipe is None and self.build is None and self.gguf is None:
            raise ValueError("give a recipe, a build folder or a gguf")
        if self.overrides and self.recipe is None:
            raise ValueError("overrides apply to a recipe; this arm has none")
        return self


class TrainSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: str = Field(description="A `forma train` config YAML (relative to the experiment file).")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Config fields by dotted path.")


class ExperimentSpec(BaseModel):
    """What ``forma experiment`` reads; see the module docstring for paths and overrides."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    base_model: str = Field(description="builtin:smollm2-135m-instruct or a local HF folder; every arm starts here.")
    train: TrainSpec
    quant: str = Field(default="q4_k_m", description="The one GGUF quantization every arm is exported to.")
    suites: str | None = Field(default=None, description="Suite folder (default: eval/suites).")
    policy: str = Field(description="Release policy YAML: which suites run, max_tokens, and the gate's verdict.")
    out: str = Field(description="Where the arms and the comparison are written (from the working directory).")
    control: str = Field(description="The arm every other arm is compared against (besides the base).")
    alpha: float = Field(default=0.05, gt=0, lt=1, description="Significance level of the paired tests.")
    system_prompt: str | None = Field(
        default=None, description="The system prompt every arm, the base included, is evaluated under (default: "
        "the control arm's recipe's, which its Modelfile ships). One prompt for all keeps the contrast the data's.")
    arms: list[ArmSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _arms(self) -> ExperimentSpec:
        names = [a.name for a in self.arms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"arm names must be unique ({', '.join(dupes)} repeated)")
        if self.control not in names:
            raise ValueError(f"control {self.control!r} is not an arm (arms: {', '.join(names)})")
        return self


class Experiment:
    """A validated experiment file with its paths resolved."""

    def __init__(self, spec: ExperimentSpec, path: Path, out: Path | None = None) -> None:
        self.spec, self.path = spec, path
        self.folder = path.parent.resolve()
        self.out = (out or Path(spec.out)).resolve()
        from schemas.eval_suite import SUITES_DIR

        self.suites = self.resolve(spec.suites) if spec.suites else SUITES_DIR
        self.policy = self.resolve(spec.policy)
        self.train_config = self.resolve(spec.train.config)

    @property
    def base_model(self) -> str:
        """``builtin:...`` as written; a folder made absolute from the experiment file's folder."""
        name = self.spec.base_model
        return name if name.startswith("builtin:") else str(self.resolve(name))

    def resolve(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.folder / p).resolve()

    def arm(self, name: str) -> ArmSpec:
        return next(a for a in self.spec.arms if a.name == name)

    def arm_dir(self, name: str) -> Path:
        return self.out / name


def load_experiment(path: str | Path, out: Path | None = None) -> Experiment:
    """Read and validate an experiment file; every problem is one line naming the file, field and line."""
    path = Path(path)
    spec = load_yaml_model(ExperimentSpec, path, "experiment file")
    exp = Experiment(spec, path, out)
    for field, target in (("policy", exp.policy), ("train.config", exp.train_config)):
        if not target.is_file():
            raise FormaError(f"{target} not found", path=path, where=field)
    if not exp.suites.is_dir():
        raise FormaError(f"suite folder {exp.suites} not found", path=path, where="suites")
    for i, arm in enumerate(spec.arms):
        for field in ("recipe", "build", "gguf", "train_report"):
            value = getattr(arm, field)
            if value is not None and not exp.resolve(value).exists():
                raise FormaError(f"{exp.resolve(value)} not found", path=path, where=f"arms[{i}].{field}")
    return exp


# --------------------------------------------------------------------------- overrides

def apply_overrides(data: dict[str, Any], overrides: dict[str, Any], where: str = "overrides") -> dict[str, Any]:
    """A copy of ``data`` with each dotted path set to its value (the whole value at that path is replaced)."""
    out = copy.deepcopy(data)
    for dotted_key, value in overrides.items():
        parts = str(dotted_key).split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise FormaError(f"cannot set {dotted_key!r}: {'.'.join(parts[:i + 1])} is not a mapping",
                                 where=f"{where}.{dotted_key}")
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    return out


def rebase_recipe_paths(data: dict[str, Any], source_dir: Path, target_dir: Path | None) -> dict[str, Any]:
    """Paths a recipe takes from its own folder, rewritten so the recipe still finds them from ``target_dir``
    (made absolute when ``target_dir`` is None: how ``forma diff`` compares two recipes in different folders)."""
    out = copy.deepcopy(data)

    def rebase(entry: str) -> str:
        if Path(entry).is_absolute():
            return entry
        absolute = (source_dir / entry).resolve()
        if target_dir is None or os.path.commonpath([absolute, target_dir.resolve()]) == absolute.anchor:
            return str(absolute)  # relative only where the two share a folder: no ../../../../ to the root
        return os.path.relpath(absolute, target_dir.resolve())

    for key in RECIPE_PATH_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [rebase(str(e)) for e in out[key]]
    decont = out.get("decontamination")
    if isinstance(decont, dict) and isinstance(decont.get("eval_files"), list):
        decont["eval_files"] = [rebase(str(e)) for e in decont["eval_files"]]
    generator = out.get("generator")
    if isinstance(generator, dict) and generator.get("backend") == "llama_cpp" and generator.get("model"):
        generator["model"] = rebase(str(generator["model"]))
    return out


def recipe_data(exp: Experiment, arm: ArmSpec) -> dict[str, Any]:
    """The arm's recipe with its ``include:`` resolved and its overrides applied (paths still the recipe's own)."""
    from factory.recipe_loader import read_recipe_data

    assert arm.recipe is not None
    source = exp.resolve(arm.recipe)
    data, _ = read_recipe_data(source)
    if not isinstance(data, dict):
        raise FormaError("expected a recipe mapping", path=source)
    return apply_overrides(data, arm.overrides, where=f"arms.{arm.name}.overrides")


def train_config_data(exp: Experiment) -> dict[str, Any]:
    """The training config with the experiment's overrides and base model; data and output paths are set per arm."""
    raw, _ = read_yaml(exp.train_config, "config file")
    if not isinstance(raw, dict):
        raise FormaError("expected a mapping of settings at the top level", path=exp.train_config)
    data = apply_overrides(raw, exp.spec.train.overrides, where="train.overrides")
    data["base_model"] = exp.base_model
    for key in ("dataset", "output_dir", "reports_dir"):
        data.pop(key, None)
    return data


# --------------------------------------------------------------------------- hashing

def stable_hash(value: Any) -> str:
    """A short SHA-256 of a JSON-able value (sorted keys): the same content always gives the same hash."""
    payload = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def folder_hash(folder: Path, pattern: str = "*.yaml") -> str:
    return stable_hash({p.name: sha256_file(p) for p in sorted(folder.glob(pattern))})


def eval_definition(exp: Experiment) -> dict[str, str]:
    """What every arm's eval depends on: the suites' files, the policy's, and the system prompt."""
    return {"suites": folder_hash(exp.suites), "policy": sha256_file(exp.policy)[:16],
            "system": stable_hash({"system_prompt": eval_system_prompt(exp)})}


def eval_system_prompt(exp: Experiment) -> str:
    """The experiment's ``system_prompt``, else the control arm's recipe's (the product ships it as SYSTEM)."""
    from schemas.recipe import DEFAULT_SYSTEM_PROMPT

    if exp.spec.system_prompt:
        return exp.spec.system_prompt
    control = next(a for a in exp.spec.arms if a.name == exp.spec.control)
    if control.recipe is None:
        return DEFAULT_SYSTEM_PROMPT
    return str(recipe_data(exp, control).get("system_prompt") or DEFAULT_SYSTEM_PROMPT)


def arm_definition(exp: Experiment, arm: ArmSpec) -> dict[str, str]:
    """Per part, a hash of what the experiment file says this arm is; a finished arm records it in done.json."""
    parts: dict[str, str] = {}
    if arm.recipe is not None:
        parts["recipe"] = stable_hash(recipe_data(exp, arm))
    if arm.build is not None:
        parts["build"] = stable_hash(_manifest_hash(exp.resolve(arm.build)))
    if arm.gguf is not None:
        parts["gguf"] = sha256_file(exp.resolve(arm.gguf))[:16]
    else:
        parts["train"] = stable_hash(train_config_data(exp))
        parts["quant"] = exp.spec.quant
    return {**parts, **eval_definition(exp)}


def base_definition(exp: Experiment) -> dict[str, str]:
    parts = {"base_model": exp.base_model, "quant": exp.spec.quant}
    return {**parts, **eval_definition(exp)}


def _manifest_hash(build: Path) -> str:
    manifest = build / "manifest.json"
    if not manifest.is_file():
        raise FormaError("not a `forma build` folder (no manifest.json)", path=build)
    return str(json.loads(manifest.read_text(encoding="utf-8")).get("dataset_hash", ""))
