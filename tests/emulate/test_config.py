"""EmulateConfig: validation with one-line errors, the environment round trip, the proxy's flags from a launch plan."""

import pytest

from adrenaline_sgl.emulate import config


def test_round_trip_through_the_environment():
    cfg = config.EmulateConfig(gpu="h100-sxm", model="llama2-7b", clock_scale=4, trace_dir="/tmp/x")
    assert config.from_env({config.ENV_VAR: cfg.to_json()}) == cfg
    assert config.from_env({}) is None


@pytest.mark.parametrize("bad, match", [
    ({"gpu": "tpu"}, "gpu must be one of"),
    ({"model": "gpt5"}, "model must be one of"),
    ({"tp": 2}, "tp=2 is not supported"),
    ({"clock_scale": 0.5}, "clock_scale"),
    ({"clock_scale": float("nan")}, "clock_scale"),
    ({"executor_sm_share": 1.0}, "executor_sm_share"),
    ({"mem_fraction": 0}, "mem_fraction"),
    ({"link": "carrier-pigeon"}, "link must be one of"),
    ({"predictor": "oracle"}, "predictor"),
    ({"predictor": "table"}, "needs emulate.profile"),
])  # fmt: skip
def test_bad_values_fail_in_one_line(bad, match):
    with pytest.raises(ValueError, match=match) as err:
        config.EmulateConfig(**bad)
    assert "\n" not in str(err.value)


def test_unknown_keys_and_non_mappings_are_refused():
    with pytest.raises(ValueError, match="unknown keys"):
        config.from_dict({"gpu": "a100-80g", "clock": 2})
    with pytest.raises(ValueError, match="must be a mapping"):
        config.from_dict(["a100-80g"])
    with pytest.raises(ValueError, match="is not JSON"):
        config.EmulateConfig.from_json("{gpu")


def test_proxy_gets_the_emulated_cost_model_unless_given():
    """Under `emulate` the adrenaline proxy's auto policy models the emulated GPU and model (not the stand-in's
    checkpoint); the proxy's own parser takes the command, and extra_args still override."""
    from pathlib import Path

    from adrenaline_sgl.configs import cluster
    from adrenaline_sgl.configs.commands import assign_ports, build_plan
    from adrenaline_sgl.proxy.config import build_parser, from_args

    cfg = cluster.load(Path(cluster.__file__).parent / "emulate_adrenaline.yaml")
    argv = list(build_plan(cfg, "/standin", assign_ports(cfg, pick_free=False), "py", None)[-1].argv)
    got = from_args(build_parser().parse_args(argv[3:]))
    assert (got.model, got.gpu, got.executor_sm_share) == (cfg.emulate.model, cfg.emulate.gpu,
                                                           cfg.emulate.executor_sm_share)
    assert got.model_path == "/standin"


@pytest.mark.parametrize("bad, match", [
    ({"executor_colocation": "share"}, "executor_colocation='share' is unknown; valid: partition, timeshare"),
    ({"prefill_gpu": "tpu"}, "gpu must be one of"),
    ({"model": "smollm2-135m", "predictor": "table", "profile": "x.csv", "prefill_gpu": "h100-sxm"},
     "no profile CSV for prefill_gpu='h100-sxm'"),
])  # fmt: skip
def test_colocation_and_prefill_device_fail_in_one_line(bad, match):
    with pytest.raises(ValueError, match=match) as err:
        config.EmulateConfig(**bad)
    assert "\n" not in str(err.value)


def test_prefill_device_and_colocation_reach_every_process():
    """The prefill device, its profile (the package's by default) and the colocation survive the environment."""
    cfg = config.EmulateConfig(gpu="cpu-epyc-1core-sgl", prefill_gpu="cpu-epyc-1core-sgl-exec", model="smollm2-135m",
                               predictor="table", profile="p.csv", executor_colocation="timeshare",
                               max_total_tokens=320)  # fmt: skip
    back = config.from_env({config.ENV_VAR: cfg.to_json()})
    assert back == cfg and back.executor_colocation == "timeshare"
    assert config.prefill_profile_path(cfg).endswith("cpu-epyc-1core-sgl-exec__smollm2-135m.csv")
    assert config.prefill_profile_path(config.EmulateConfig()) is None
    assert config.EmulateConfig().executor_colocation == "partition"
