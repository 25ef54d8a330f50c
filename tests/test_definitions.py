"""The definitions load; every asset has a group and a description; every job resolves."""

import subprocess
import sys

import dagster as dg
import pytest

from pipelines.definitions import defs
from pipelines.jobs import STAGES

EXPECTED_ASSETS = {
    "raw_transactions",
    "products",
    "customers",
    "quarantined_rows",
    "synthetic_market",
    "decision_episodes",
    "option_features",
    "episode_splits",
    "customer_style_params",
    "sft_prompt_dataset",
    "lora_adapter",
    "retail_decisions",
    "eval_report",
    "baseline_report",
}


def _asset_specs():
    graph = defs.resolve_asset_graph()
    return {key.to_user_string(): graph.get(key) for key in graph.get_all_asset_keys()}


def test_expected_assets_present():
    assert EXPECTED_ASSETS <= set(_asset_specs())


def test_every_asset_has_group_and_description():
    for name, node in _asset_specs().items():
        assert node.group_name in set(STAGES), f"{name} has group {node.group_name!r}"
        desc = node.description or ""
        assert len(desc.strip()) > 20, f"{name} has no real description"


def test_every_job_resolves():
    jobs = {job.name: job for job in defs.resolve_all_job_defs()}
    assert {"ingest_job", "features_job", "prompts_job", "evaluation_job", "main_job"} <= set(jobs)
    main_nodes = {n for n in jobs["main_job"].graph.node_dict}
    assert "synthetic_market" not in main_nodes
    assert {"ingest", "baseline_report", "lora_adapter", "retail_decisions", "eval_report"} <= main_nodes
    assert {"lora_adapter", "retail_decisions", "eval_report"} <= set(jobs["agents_job"].graph.node_dict)


def test_asset_checks_present():
    keys = {k.name for k in defs.resolve_asset_graph().asset_check_keys}
    assert {
        "txn_ids_unique",
        "ingest_counts_add_up",
        "every_choice_set_holds_its_actual_product",
        "splits_disjoint",
        "prices_non_negative",
    } <= keys


def test_importing_definitions_stays_light():
    code = (
        "import sys; import pipelines.definitions; "
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'vllm', 'lightgbm') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_bad_pipeline_env_is_one_line_error(monkeypatch):
    from pipelines.definitions import build_resources

    try:
        build_resources("cloud")
    except ValueError as e:
        assert "PIPELINE_ENV" in str(e) and "\n" not in str(e)
    else:  # pragma: no cover
        raise AssertionError("expected a ValueError")


def test_dagster_definitions_validate():
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert isinstance(defs, dg.Definitions)


def test_resource_sets_per_environment():
    from pipelines.definitions import build_resources

    local, gpu = build_resources("local"), build_resources("gpu")
    assert {"duckdb", "mlflow", "llm"} <= set(local) and set(local) == set(gpu)
    assert local["llm"].backend == "hf" and gpu["llm"].backend == "vllm"


@pytest.mark.parametrize("profile", ["quick", "full"])
def test_profiles_are_valid_run_configs_of_main_job(profile):
    from pipelines.profiles import profile_run_config

    job = defs.resolve_job_def("main_job")
    ops = {n for n in job.graph.node_dict}
    cfg = profile_run_config(profile, ops)
    cfg["ops"]["ingest"] = {"config": {"sources": ["completejourney"]}}
    assert dg.validate_run_config(job, cfg)
    if profile == "full":
        assert cfg["ops"]["retail_decisions"]["config"]["n_per_split"] == 2000
        assert cfg["ops"]["whatif"]["config"]["engine"] == "hybrid"
    else:  # main_job runs a small market and the what-if on the fast path
        assert cfg["ops"]["market_simulation"]["config"]["categories"] == 2
        assert cfg["ops"]["whatif"]["config"]["engine"] == "clogit"


def test_the_quick_profile_keeps_the_market_jobs_at_their_defaults():
    from pipelines.profiles import profile_run_config

    assert profile_run_config("quick", {"market_simulation"}, job="market_job") == {"ops": {}}
    assert profile_run_config("quick", {"whatif"}, job="whatif_job") == {"ops": {}}


def test_unknown_profile_is_a_clear_error():
    from pipelines.profiles import profile_run_config

    with pytest.raises(ValueError, match="use one of quick, full"):
        profile_run_config("huge", set())


def test_code_version_is_read_once_per_process(monkeypatch):
    import subprocess

    from assets._metadata import code_version

    first = code_version()  # read when the definitions were imported

    def no_git(*a, **kw):
        raise AssertionError("git was asked again")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert code_version() == first and first
