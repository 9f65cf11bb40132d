"""What every study shares: YAML specs, the run directory contract, the manifest."""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import iclft
from iclft import UserError
from iclft.sweep import atomic_write_json, atomic_write_text


class RunSpec(BaseModel):
    """Fields every study has."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("builtin", description="'builtin', a hub id or a local model directory")
    dtype: str = Field("float32", description="float32 | bfloat16 | float16")
    device: str = Field("cpu", description="torch device")
    attn_implementation: str = Field("sdpa", description="sdpa | eager")
    pad_token: str | None = Field(None, description="pad token if the tokenizer has none ('eos' = EOS)")
    batch_size: int = Field(16, ge=1, description="prompts per forward pass")
    seeds: int = Field(30, ge=1, description="number of seeds (trials are repeated per seed)")
    seed_offset: int = Field(0, ge=0, description="first seed")
    preset: str = Field("default", description="the preset these fields started from (default | quick), "
                        "shown on every report")

    def seed_list(self) -> list[int]:
        return list(range(self.seed_offset, self.seed_offset + self.seeds))


def load_spec(
    cls: type[BaseModel], path: Path | None, overrides: dict, preset: dict | None = None, section: str | None = None
) -> BaseModel:
    """Precedence: class defaults < preset (e.g. --quick) < YAML file < command-line overrides.

    With `section` (used by `iclft run all`), the file may hold one mapping per study name; its other top-level
    keys are shared fields (model, dtype, seeds, ...) that every study gets.
    """
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise UserError(f"spec file {str(path)!r} does not exist") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise UserError(f"malformed YAML in {str(path)!r}{where}: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(data, dict):
            raise UserError(f"spec file {str(path)!r} must hold a mapping of fields, not {type(data).__name__}")
        if section is not None:
            from iclft.studies import REGISTRY

            own = data.get(section) or {}
            data = {k: v for k, v in data.items() if k not in REGISTRY}
            data.update(own)
    data = {**(preset or {}), **data, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return cls(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "spec"
        raise UserError(f"invalid spec field {loc!r}: {err['msg']}") from None


def spec_yaml(spec: BaseModel) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


@contextmanager
def run_dir(out: Path, spec: BaseModel, identity: dict | None = None):
    """Create (or resume) OUT.

    Resuming needs the same spec and the same identity (iclft version, model hash): shards computed by other
    code or weights must not be mixed in. A fresh directory that fails with an input error before any unit
    finished is removed again; finished shards are never thrown away.
    """
    out = Path(out)
    text = spec_yaml(spec)
    ident = json.dumps(identity or {}, sort_keys=True)
    created = not out.exists()
    if not created:
        old = out / "spec.yaml"
        if old.is_file():
            if old.read_text(encoding="utf-8") != text:
                raise UserError(f"{str(out)!r} holds a run with a different spec; choose another --out")
            old_ident = out / "identity.json"
            if old_ident.is_file() and old_ident.read_text(encoding="utf-8").strip() != ident:
                raise UserError(f"{str(out)!r} was started by another iclft version or model weights; "
                                "choose another --out")
        elif any(out.iterdir()):
            raise UserError(f"{str(out)!r} exists and is not an iclft run directory")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "spec.yaml", text)
    atomic_write_text(out / "identity.json", ident + "\n")
    try:
        yield out
    except UserError:
        if created and not any((out / "shards").glob("*.parquet")):
            shutil.rmtree(out, ignore_errors=True)
        raise


def execute(study: str, spec, out: Path, loaded, units, unit_fn, summarise, write_report, started: float,
            manifest_extra=None, examples=None) -> Path:
    """The tail every study shares: units -> shards -> records -> summary -> report -> manifest.

    summarise(records) -> dict; write_report(out, records, summary, spec, model_info);
    manifest_extra(summary) -> dict of study-specific manifest fields; examples() -> {setting: [token ids, ...]},
    two prompts per setting, written as tokens to examples.json for the report's methods section.
    """
    from iclft.sweep import atomic_write_parquet, run_units

    identity = {"iclft_version": iclft.__version__, "model": loaded.info.get("model"),
                "model_sha256": loaded.info.get("model_sha256"), "stand_in": loaded.info.get("builtin_stand_in")}
    with run_dir(out, spec, identity) as out:
        if examples is not None:
            tok = loaded.tokenizer
            atomic_write_json(out / "examples.json",
                              {k: [tok.convert_ids_to_tokens(list(ids)) for ids in v] for k, v in examples().items()})
        records = run_units(units, unit_fn, out / "shards", desc=study)
        atomic_write_parquet(records, out / "records.parquet")
        summary = summarise(records)
        atomic_write_json(out / "summary.json", summary)
        write_report(out, records, summary, spec, loaded.info)
        extra = {"study": study, "units": len(units), **(manifest_extra(summary) if manifest_extra else {})}
        write_manifest(out, manifest(spec, loaded, started, extra))
    return out


def manifest(spec, loaded, started: float, extra: dict | None = None) -> dict:
    versions = {}
    for pkg in ("torch", "transformers", "peft", "numpy", "scipy", "pandas", "sentence-transformers"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "iclft_version": iclft.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "command": " ".join(sys.argv),
        "seeds": spec.seed_list(),
        "batch_size": spec.batch_size,
        "dtype": spec.dtype,
        "device": spec.device,
        "torch_threads": torch.get_num_threads(),
        "model": loaded.info,
        "wall_time_s": round(time.time() - started, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }


def write_manifest(out: Path, data: dict) -> None:
    atomic_write_json(Path(out) / "manifest.json", data)
