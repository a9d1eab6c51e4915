"""Option bookkeeping: what --resume may change is one explicit list, everything else is fixed."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest

from compressor.jobs.config import RESUME_FIXED, RESUME_FREE, PruneConfig


def test_every_option_is_resume_fixed_unless_declared_free() -> None:
    names = {f.name for f in fields(PruneConfig)}
    assert set(RESUME_FREE) <= names, set(RESUME_FREE) - names  # no stale names
    assert set(RESUME_FIXED) == names - set(RESUME_FREE)
    for new in ("distill", "materialize_early", "psap_variant", "aster_variant", "prune_at", "allocation_from"):
        assert new in RESUME_FIXED, new


def test_method_options_are_the_methods_defaults() -> None:
    """A psap_*/aster_* field of PruneConfig is the method's own option field (one default, one help); a method
    built with no options holds those defaults."""
    from compressor.methods import psap as psap_module
    from compressor.methods.options import METHOD_OPTIONS
    from compressor.methods.registry import build_method, method_parameters

    config = {f.name: f for f in fields(PruneConfig)}
    for method, cls in METHOD_OPTIONS.items():
        for f in fields(cls):
            mine = config[f"{method}_{f.name}"]
            assert (mine.default, mine.metadata) == (f.default, f.metadata), f.name
            assert f.name in method_parameters(method), f.name
    psap, aster = build_method("psap"), build_method("aster")
    o = METHOD_OPTIONS["psap"]()
    assert (psap.beta, psap.pulse_iters, psap.variant) == (o.beta, o.pulse_iters, o.variant)
    assert o.gamma is None and psap.gamma == psap_module.VARIANTS[o.variant]["gamma"]  # None: from the variant
    a = METHOD_OPTIONS["aster"]()
    assert (aster.tau, aster.x, aster.variant, aster.eta0_fixed) == (a.tau0, a.x, a.variant, a.eta0)


def test_variant_choices_are_the_variants() -> None:
    from compressor.methods import aster, psap
    from compressor.methods.options import ASTEROptions, PSAPOptions

    for cls, module in ((PSAPOptions, psap), (ASTEROptions, aster)):
        variant = next(f for f in fields(cls) if f.name == "variant")
        assert set(variant.metadata["choices"]) == set(module.VARIANTS)
        assert variant.default in module.VARIANTS


def test_unknown_or_invalid_method_options_raise() -> None:
    from compressor.errors import BadInput
    from compressor.methods.options import PSAPOptions
    from compressor.methods.registry import build_method

    with pytest.raises(BadInput, match="method 'psap' has no option 'gama'"):
        build_method("psap", gama=2.0)
    with pytest.raises(BadInput, match="method 'l1' has no option 'gama'"):
        build_method("l1", gama=2.0)
    with pytest.raises(BadInput, match="method 'l1' has no option 'variant'"):  # PSAP's, not l1's
        build_method("l1", variant="v2")
    with pytest.raises(ValueError, match="psap has no option 'gama'"):
        PSAPOptions.of({"gama": 2.0})
    with pytest.raises(BadInput, match="psap mode must be one of gate, filter"):
        build_method("psap", mode="soft")
    with pytest.raises(BadInput, match="aster reduce must be one of"):
        build_method("aster", reduce="median")


def test_cli_recipe_and_api_defaults_are_one_object() -> None:
    """Every click option of prune/export/bench/info is generated from a dataclass field with the same default;
    the recipe sections take exactly those fields."""
    from compressor.cli import main
    from compressor.config import (
        BenchFiles,
        BenchOptions,
        ExportFiles,
        ExportOptions,
        InfoOptions,
        LaunchOptions,
        PruneOptions,  # fmt: skip
        QuantizeInputs,
        QuantizeOptions,
        defaults,
    )
    from compressor.jobs.bench import BENCH_DEFAULTS
    from compressor.jobs.run import EXPORT_KEYS

    # every option but --config, --json, --trust-code and the arguments comes from a dataclass field
    shared = ({"trust_code"}, {"run_dir"}, {"models"}, {"source"}, {"model"})
    for command, classes, extra in (("prune", (PruneConfig, LaunchOptions), set()),
                                    ("export", (ExportOptions, ExportFiles), {"trust_code", "run_dir"}),
                                    ("quantize", (QuantizeOptions, QuantizeInputs), {"trust_code", "source"}),
                                    ("bench", (BenchOptions, BenchFiles), {"models", "trust_code"}),
                                    ("info", (InfoOptions,), {"model", "list_models", "list_methods", "trust_code",
                                                              "weights_head", "round_to", "max_layer_ratio", "ignore",
                                                              "ignore_stem", "group_max_ratio"})):  # fmt: skip
        assert extra <= set().union(*shared) | {
            "list_models",
            "list_methods",
            "weights_head",
            "round_to",
            "max_layer_ratio",
            "ignore",
            "ignore_stem",
            "group_max_ratio",
        }
        every = [f for cls in classes for f in fields(cls)]
        want = {k: v for cls in classes for k, v in defaults(cls).items()}
        params = {p.name: p for p in main.commands[command].params if p.name not in ("config", "as_json")}
        assert set(params) - extra == {f.name for f in every}, command
        for name, p in params.items():
            if name in want and not p.multiple:
                plain = p.is_flag and not p.secondary_opts and not isinstance(p.default, bool)
                default = False if plain else p.default  # a plain flag left out is False
                assert default == want[name], (command, name, default, want[name])
                assert p.help == (next(f for f in every if f.name == name).metadata["help"] or None)
    assert BENCH_DEFAULTS == defaults(BenchOptions)
    assert set(EXPORT_KEYS) == set(defaults(ExportOptions))
    info = {p.name: p.default for p in main.commands["info"].params}
    assert info["round_to"] == defaults(PruneOptions)["round_to"]
    assert info["max_layer_ratio"] == defaults(PruneOptions)["max_layer_ratio"]


def test_provider_names_agree_with_the_harness() -> None:
    from benchmarks.backends import ORT_PROVIDERS
    from compressor.config import PROVIDERS

    assert tuple(ORT_PROVIDERS) == PROVIDERS


def test_null_is_refused_where_an_option_has_no_none() -> None:
    """A recipe's ``null`` for an option without a None meaning is bad input, not a silent other reading."""
    from compressor.errors import BadInput
    from compressor.methods.options import PSAPOptions

    for key in ("psap_pulse", "aster_reduce", "aster_sensitivity", "lr"):
        with pytest.raises(BadInput, match="got null"):
            PruneConfig(model="m", out="o", **{key: None})
    assert PruneConfig(model="m", out="o", psap_mode=None, finetune_lr=None).psap_mode is None  # "from the variant"
    with pytest.raises(ValueError, match="psap pulse must be given"):
        PSAPOptions(pulse=None)


def test_shared_method_defaults_are_the_config_defaults() -> None:
    """Options every method reads from the shared config (steps, seed, ...) default the same in the constructors."""
    import inspect

    from compressor.config import PruneOptions, defaults
    from compressor.methods.aster import ASTER
    from compressor.methods.baselines import ImportanceBaseline
    from compressor.methods.psap import PSAP

    shared = defaults(PruneOptions)
    shared["schedule"] = shared.pop("prune_schedule")  # method_options() passes --prune-schedule as schedule
    for cls in (PSAP, ASTER, ImportanceBaseline):
        for name, p in inspect.signature(cls.__init__).parameters.items():
            if name in shared and p.default is not inspect.Parameter.empty:
                assert p.default == shared[name], (cls.__name__, name)


def test_a_built_method_takes_no_more_options() -> None:
    import torch

    from compressor.api import Pruner
    from compressor.errors import BadInput
    from compressor.methods.registry import build_method
    from compressor.models import build_model

    with pytest.raises(BadInput, match="go with a method name"):
        Pruner(build_model("cifar:resnet20"), torch.zeros(1, 3, 32, 32), method=build_method("psap"),
               target_flops=0.5, epochs=1, steps_per_epoch=1, gama=2.0)  # fmt: skip
    with pytest.raises(BadInput, match="method 'psap' has no option 'gama'"):  # nothing is silently dropped
        Pruner(build_model("cifar:resnet20"), torch.zeros(1, 3, 32, 32), method="psap", target_flops=0.5, epochs=1,
               steps_per_epoch=1, gama=2.0)  # fmt: skip


def _signature_defaults(fn: Any) -> dict[str, Any]:
    """A function's or dataclass's parameters that have a default, with it."""
    import dataclasses
    import inspect

    if dataclasses.is_dataclass(fn):
        return {f.name: f.default for f in dataclasses.fields(fn) if f.default is not dataclasses.MISSING}
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def _same(value: Any, option: Any) -> bool:
    """A library default that says what the option's default says: equal, or the same empty or listed values
    spelled another way (None for no patterns, a tuple for a list or a comma-separated string)."""
    if value is None and option in ([], {}, ()):
        return True
    if isinstance(value, (list, tuple)):
        return list(value) == (option.split(",") if isinstance(option, str) else list(option))
    return value == option


def test_library_signatures_take_the_option_defaults() -> None:
    """Every library function that takes an option defaults as the CLI does: its default is the option's."""
    from benchmarks import latency
    from compressor import api, artifacts, budget
    from compressor.config import BenchOptions, ExportOptions, PruneOptions, QuantizeOptions, defaults
    from compressor.data import load_data
    from compressor.graph import PruningGraph
    from compressor.jobs.info import model_info
    from compressor.methods.base import Context
    from compressor.models import build_model, checkpoints, pretrained
    from compressor.search import latency_alloc, latency_target
    from exporters import onnx, quantize

    ratio, head = {"max_ratio": "max_layer_ratio"}, {"head": "weights_head"}
    cases = [  # (function, its options, {parameter: option} where the names differ, parameters it means otherwise)
        (api.Pruner, PruneOptions, ratio, ("lr", "device")),  # None: the optimizer's, the model's
        (model_info, PruneOptions, ratio, ("num_classes",)),  # a number, not "the data's"
        (PruningGraph, PruneOptions, {}, ()),
        (budget.solve_counts, PruneOptions, ratio, ()),
        (latency_target.find_drop, PruneOptions, ratio, ()),
        (latency_alloc.latency_weights, PruneOptions, ratio, ("iters",)),
        (Context, PruneOptions, ratio, ("lr",)),
        (build_model, PruneOptions, head, ("num_classes", "in_channels")),
        (artifacts.build_from_spec, PruneOptions, head, ()),
        (pretrained.build_pretrained, PruneOptions, head, ()),
        (checkpoints.load_state, PruneOptions, head, ()),
        (checkpoints.load_weights, PruneOptions, head, ()),
        (load_data, PruneOptions, {}, ()),
        (onnx.export_onnx, ExportOptions, {}, ("rtol", "atol")),
        (onnx.check_options, ExportOptions, {}, ("rtol", "atol")),
        (quantize.quantize_onnx, QuantizeOptions, {}, ()),
        (latency.bench, BenchOptions, {}, ("trt_cache",)),  # None: no cache; the CLI's auto picks a directory
        (latency.check_options, BenchOptions, {}, ()),
    ]
    differ = []
    for fn, options, renamed, other in cases:
        want = defaults(options)
        shared = {n: v for n, v in _signature_defaults(fn).items() if renamed.get(n, n) in want and n not in other}
        assert shared, f"{fn.__qualname__} shares no option: the case checks nothing"
        for name, value in shared.items():
            option = want[renamed.get(name, name)]
            differ += [] if _same(value, option) else [(fn.__qualname__, name, value, option)]
    assert not differ, "\n".join(map(str, differ))
