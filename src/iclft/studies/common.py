"""What every study's spec shares: common fields, YAML loading, presets and overrides."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from yaml import YAMLError

from iclft import UserError
from iclft.yamlfile import loads, read_yaml


class RunSpec(BaseModel):
    """Fields every study has."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("builtin", description="'builtin', a hub id or a local model directory")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="dtype of the weights")
    device: str = Field("cpu", pattern=r"^(cpu|mps|cuda(:\d+)?)$", description="torch device: cpu, mps, cuda[:N]")
    attn_implementation: Literal["sdpa", "eager"] = Field("sdpa", description="attention kernel")
    pad_token: str | None = Field(None, description="pad token if the tokenizer has none ('eos' = EOS)")
    batch_size: int = Field(16, ge=1, description="prompts per forward pass")
    seeds: int = Field(30, ge=1, description="number of seeds (trials are repeated per seed)")
    seed_offset: int = Field(0, ge=0, description="first seed")
    preset: Literal["default", "quick", "paper"] = Field(
        "default", description="the preset these fields started from, shown on every report")
    sesoi_difference: float = Field(
        0.02, ge=0, description="smallest effect of interest of a difference of cosines, accuracies or proportions "
        "(and of a value above a stated level): a smaller effect, however consistent, is 'inconclusive'")
    sesoi_correlation: float = Field(
        0.1, ge=0, le=1, description="smallest effect of interest of a correlation (per-seed r, Kendall τ)")

    def sesoi(self, metric: str) -> float:
        """The smallest effect of interest of a headline whose test is on `metric` (iclft.metrics.stats)."""
        import math

        from iclft.metrics.stats import sesoi_kind

        if metric == "fisher_z":  # a correlation tested on the z scale: the same SESOI, on that scale
            return math.atanh(self.sesoi_correlation)
        return self.sesoi_correlation if sesoi_kind(metric) == "correlation" else self.sesoi_difference

    def sesoi_record(self) -> dict:
        """The spec's SESOIs as a summary keeps them (`summary["sesoi"]`), so headlines can be judged from it."""
        return {"difference": self.sesoi_difference, "correlation": self.sesoi_correlation}

    def seed_list(self) -> list[int]:
        return list(range(self.seed_offset, self.seed_offset + self.seeds))


def summary_sesoi(summary: dict, metric: str) -> float:
    """`RunSpec.sesoi(metric)` with the SESOIs a summary recorded (`RunSpec.sesoi_record`; defaults if none)."""
    s = summary.get("sesoi") or {}
    return RunSpec(**{f"sesoi_{k}": v for k, v in s.items() if k in ("difference", "correlation")}).sesoi(metric)


def load_spec(
    cls: type[BaseModel], path: Path | None, overrides: dict, preset: dict | None = None, section: str | None = None,
    sections: Collection[str] = (),
) -> BaseModel:
    """Precedence: class defaults < preset (e.g. --quick) < YAML file < command-line overrides.

    Layers merge deeply: a mapping (a nested spec such as `lora`) is merged key by key, anything else (numbers,
    lists) replaces. A model instance in a preset stands for all of its fields. With `section` (used by `iclft run
    all`), the file may hold one mapping per study name in `sections` (every study's name); its other top-level
    keys are shared fields (model, dtype, seeds, ...) that every study gets.
    """
    data: dict = {}
    if path is not None:
        data = read_yaml(path, "spec file")
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise UserError(f"spec file {str(path)!r} must hold a mapping of fields, not {type(data).__name__}")
        if section is not None:
            data = study_section(data, section, sections, f"spec file {str(path)!r}")
    data = merge(merge(merge(cls().model_dump(), preset or {}), data), overrides)
    check_fields(cls, data)
    try:
        return cls(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "spec"
        got = f", not {err['input']!r}" if isinstance(err["input"], str | int | float) else ""
        raise UserError(f"invalid spec field {loc!r}: {err['msg']}{got}") from None


def study_section(data: dict, study: str, studies: Collection[str], where: str) -> dict:
    """What a file holding several studies' fields gives `study`: its shared top-level fields (any key that is not
    a study's name) merged with its own section, which must be a mapping (`where` names the file in the error)."""
    own = data.get(study)
    if own is not None and not isinstance(own, dict):
        raise UserError(f"{where}: section {study!r} must be a mapping of fields, not {type(own).__name__}")
    return merge({k: v for k, v in data.items() if k not in {study, *studies}}, own or {})


def merge(base: dict, top: dict) -> dict:
    """`top` over `base`; mappings merge key by key, other values (and model instances, as all their fields)
    replace."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, BaseModel):
            value = value.model_dump()
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def check_fields(cls: type[BaseModel], data: dict, prefix: str = "") -> None:
    """Unknown keys, at any depth of nested specs, are one error naming the field and the known ones."""
    for key, value in data.items():
        field = cls.model_fields.get(key)
        if field is None:
            raise UserError(f"unknown spec field {prefix + str(key)!r}; known: {', '.join(cls.model_fields)}")
        if isinstance(value, bool) and bool not in _types(field.annotation) and _types(field.annotation) & {int, float}:
            # pydantic reads true as 1: `seeds=true` would silently run one seed
            raise UserError(f"invalid spec field {prefix + str(key)!r}: a number is needed, not {value!r}")
        nested = [t for t in (field.annotation, *get_args(field.annotation))
                  if isinstance(t, type) and get_origin(t) is None and issubclass(t, BaseModel)]  # list[int]: 3.10
        if nested and isinstance(value, dict):
            check_fields(nested[0], value, f"{prefix}{key}.")


def _types(annotation) -> set:
    """The plain types an annotation admits: int | None -> {int, NoneType}."""
    args = get_args(annotation) if get_origin(annotation) is not Literal else ()
    return {t for t in (args or (annotation,)) if isinstance(t, type)}


def parse_sets(items: list[str]) -> dict:
    """`--set a.b=v` overrides as a nested mapping; values are YAML (5 -> int, [1, 2] -> list, null -> None)."""
    out: dict = {}
    for item in items:
        key, eq, text = item.partition("=")
        path = key.strip().split(".")
        if not eq or not all(path):
            raise UserError(f"--set expects FIELD=VALUE (nested fields with dots: lora.steps=5), not {item!r}")
        try:
            value = loads(text)
        except YAMLError:
            raise UserError(f"--set {key}: {text!r} is not a valid YAML value") from None
        node = out
        for part in path[:-1]:
            if not isinstance(node.get(part, {}), dict):
                raise UserError(f"--set {key}: {part!r} was already set to a value")
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out
