"""Specs: layered loading (deep merge), --set overrides, Literal choices as one-line input errors, `iclft spec`,
and the task registry. None of these load a model."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from iclft import UserError
from iclft.cli import app
from iclft.registry import STUDIES
from iclft.studies.common import load_spec, merge, parse_sets
from iclft.studies.convergence import ConvergenceSpec
from iclft.studies.dual_view import DualSpec
from iclft.studies.implicit_patterns import QUICK as IMPLICIT_QUICK
from iclft.studies.implicit_patterns import ImplicitSpec
from iclft.tasks import TASKS, get_task
from iclft.tuning import LoraConfigSpec

runner = CliRunner()


def _one_error(args: list[str], match: str) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and match in lines[0], res.output
    return lines[0]


def test_merge_is_deep_for_mappings_and_replaces_everything_else():
    base = {"a": 1, "lora": {"r": 8, "steps": 10}, "k": [1, 2, 3]}
    assert merge(base, {"lora": {"steps": 5}, "k": [4]}) == {"a": 1, "lora": {"r": 8, "steps": 5}, "k": [4]}
    assert base["lora"] == {"r": 8, "steps": 10}  # inputs are not modified
    # a model instance stands for all of its fields, defaults included
    defaults = {"lora": LoraConfigSpec(steps=10, lr=3e-3).model_dump()}
    assert merge(defaults, {"lora": LoraConfigSpec(steps=3)})["lora"] == LoraConfigSpec(steps=3).model_dump()


def test_yaml_nested_field_keeps_the_other_fields_of_the_class_default(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("lora: {steps: 5}\n")
    spec = load_spec(ConvergenceSpec, path, {})
    default = ConvergenceSpec().lora
    assert spec.lora.steps == 5 and spec.lora.lr == default.lr == 3e-3  # the spec's default, not LoraConfigSpec's
    assert spec.lora.model_dump(exclude={"steps"}) == default.model_dump(exclude={"steps"})


def test_precedence_defaults_preset_yaml_command_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("n_eval: 9\nfull: {steps: 7, lr: 0.01}\n")
    spec = load_spec(ImplicitSpec, path, parse_sets(["full.lr=0.5", "seeds=3"]), preset=IMPLICIT_QUICK)
    quick_full = IMPLICIT_QUICK["full"]
    assert spec.full.steps == 7 and spec.full.lr == 0.5  # YAML over preset, command line over YAML
    assert spec.full.warmup_steps == quick_full.warmup_steps == 1 and spec.full.eval_every == 2  # preset kept
    assert spec.n_eval == 9 and spec.seeds == 3 and spec.families == IMPLICIT_QUICK["families"]
    assert spec.lora == IMPLICIT_QUICK["lora"]  # untouched: the preset's
    assert spec.max_new_tokens == ImplicitSpec().max_new_tokens  # neither preset nor YAML: the class default


def test_run_all_sections_merge_over_shared_fields(tmp_path):
    path = tmp_path / "all.yaml"
    path.write_text("seeds: 3\nconvergence: {lora: {steps: 4}}\nimplicit: {seeds: 1}\n")
    conv = load_spec(ConvergenceSpec, path, {}, section="convergence", sections=STUDIES)
    assert conv.seeds == 3 and conv.lora.steps == 4 and conv.lora.lr == ConvergenceSpec().lora.lr
    assert load_spec(ImplicitSpec, path, {}, section="implicit", sections=STUDIES).seeds == 1
    assert load_spec(DualSpec, path, {}, section="dual", sections=STUDIES).seeds == 3


def test_parse_sets_values_are_yaml_and_keys_nest():
    got = parse_sets(["seeds=4", "k_values=[1, 2]", "instruction=false", "pad_token=null", "lora.steps=5",
                      "lora.lr=0.5", "task=implicit/parity", "model=a=b"])
    assert got == {"seeds": 4, "k_values": [1, 2], "instruction": False, "pad_token": None,
                   "lora": {"steps": 5, "lr": 0.5}, "task": "implicit/parity", "model": "a=b"}
    # YAML 1.1 reads 1e-3 as a string; the spec's float field takes it as the number
    assert load_spec(ConvergenceSpec, None, parse_sets(["lora.lr=1e-3"])).lora.lr == 1e-3
    for bad in ("seeds", "=3", "lora.=3", "a..b=1", "k=[1"):
        with pytest.raises(UserError):
            parse_sets([bad])
    with pytest.raises(UserError, match="already set"):
        parse_sets(["lora=1", "lora.steps=2"])


def test_unknown_fields_are_one_error_at_any_depth(tmp_path):
    with pytest.raises(UserError, match="unknown spec field 'lora.stepz'; known: .*steps"):
        load_spec(ConvergenceSpec, None, {"lora": {"stepz": 1}})
    _one_error(["spec", "dual", "--set", "lora.steps=3"], "unknown spec field 'lora'")
    _one_error(["spec", "convergence", "--set", "lora.stepz=3"], "unknown spec field 'lora.stepz'")
    _one_error(["spec", "convergence", "--set", "seeds"], "--set expects FIELD=VALUE")
    out = tmp_path / "run"
    _one_error(["run", "convergence", "--quick", "--out", str(out), "--set", "k_valuez=[1]"], "k_valuez")
    assert not out.exists()


@pytest.mark.parametrize("study,setting,choices", [
    ("implicit", "circuit_method=guess", "'exhaustive' or 'attribution', not 'guess'"),
    ("implicit", "circuit_ft=half", "'full' or 'lora'"),
    ("implicit", "ft_methods=[full, half]", "'full' or 'lora', not 'half'"),
    ("implicit", "families=[parity, nope]", "'relation', 'algebra' or 'parity', not 'nope'"),
    ("convergence", "selections=[random, best]", "'random', 'most_similar' or 'least_similar', not 'best'"),
    ("convergence", "label_modes=[gold, wrong]", "'gold', 'flipped' or 'random', not 'wrong'"),
    ("dual", "demo_sampling=stratified", "'balanced' or 'random'"),
    ("dual", "dtype=fp8", "'float32', 'bfloat16' or 'float16', not 'fp8'"),
    ("dual", "attn_implementation=flash", "'sdpa' or 'eager'"),
    ("dual", "device=gpu", "not 'gpu'"),
])
def test_bad_choices_are_one_error_line_listing_the_choices(study, setting, choices):
    field = setting.split("=")[0]
    line = _one_error(["spec", study, "--set", setting], f"invalid spec field '{field}")
    assert choices in line


def test_constraints_that_replaced_hand_checks():
    from pydantic import ValidationError

    for bad in (dict(lr_grid=[]), dict(lr_grid=[-1e-3]), dict(lr_grid=[float("nan")])):
        with pytest.raises(ValidationError):
            DualSpec(**bad)
    for bad in (dict(families=[]), dict(k_values=[-1]), dict(k_values=[]), dict(ft_sizes=[0])):
        with pytest.raises(ValidationError):
            ImplicitSpec(**bad)
    with pytest.raises(ValidationError):
        ConvergenceSpec(k_values=[0])


@pytest.mark.parametrize("study", list(STUDIES))
def test_spec_command_prints_what_loads_back_into_the_effective_spec(study, tmp_path):
    cls, presets = STUDIES[study].spec, STUDIES[study].presets
    sets = ["seeds=3", "seed_offset=2", "pad_token=eos"]
    res = runner.invoke(app, ["spec", study, "--quick", *sum((["--set", s] for s in sets), [])])
    assert res.exit_code == 0, res.output
    path = tmp_path / "spec.yaml"
    path.write_text(res.output)
    effective = load_spec(cls, None, parse_sets(sets), preset=presets["quick"])
    assert effective.preset == "quick" and effective.seeds == 3 and effective.pad_token == "eos"
    assert load_spec(cls, path, {}) == effective
    assert effective != cls()


def test_spec_all_is_a_run_all_spec_file(tmp_path):
    res = runner.invoke(app, ["spec", "all", "--preset", "paper", "--set", "seeds=2"])
    assert res.exit_code == 0, res.output
    path = tmp_path / "all.yaml"
    path.write_text(res.output)
    assert set(yaml.safe_load(res.output)) == set(STUDIES)
    for name, study in STUDIES.items():
        cls, presets = study.spec, study.presets
        spec = load_spec(cls, path, {}, section=name, sections=STUDIES)
        assert spec == load_spec(cls, None, {"seeds": 2}, preset=presets["paper"])
        assert spec.preset == "paper" and spec.seeds == 2


def test_task_registry_errors_and_listing():
    with pytest.raises(UserError) as exc:
        get_task("nope")
    msg = str(exc.value)
    assert msg.startswith("unknown task 'nope'") and all(e.shown in msg for e in TASKS.values())
    with pytest.raises(UserError, match="unknown implicit family 'nope'; choose one of expression"):
        get_task("implicit/nope")
    with pytest.raises(UserError, match="unknown Dai et al. dataset 'nope'"):
        get_task("dai/nope")
    with pytest.raises(UserError, match="does not exist"):
        get_task("no/such/file.jsonl")
    assert "parity" in get_task("implicit/parity").name
    res = runner.invoke(app, ["tasks"])
    assert res.exit_code == 0
    assert [ln.split()[0] for ln in res.output.strip().splitlines()] == [e.shown.split()[0] for e in TASKS.values()]


def test_unknown_task_in_a_spec_is_one_error_line(tmp_path):
    out = tmp_path / "run"
    _one_error(["run", "dual", "--quick", "--out", str(out), "--set", "task=nope"], "unknown task 'nope'")
    assert not out.exists()
