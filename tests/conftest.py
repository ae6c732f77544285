from pathlib import Path

import pytest
import torch

#: Every test file belongs to one group, a marker, so a developer can run a fast inner loop (``pytest -m unit``);
#: CI runs them all. A new test file must be added here (collection fails otherwise).
GROUPS: dict[str, set[str]] = {
    # formulas, parts and their errors: seconds, no data, no processes
    "unit": {"test_goodness", "test_losses", "test_layers", "test_encoders", "test_properties", "test_learning_rule",
             "test_defaults", "test_architecture", "test_evaluation", "test_synthetic", "test_profiling",
             "test_fast_step", "test_validation"},
    # the papers' networks: builders, recipes and reference equivalence with the released code
    "systems": {"test_models", "test_mlp", "test_trifecta", "test_dtg", "test_cwcomp", "test_mixing", "test_recipes",
                "test_ref_cwcomp", "test_ref_deeperforward", "test_ref_dtg", "test_ref_hinton", "test_ref_loewex",
                "test_ref_trifecta"},
    # training engines: steps, resume, divergence, pipelines and other processes
    "engines": {"test_trainer", "test_backprop", "test_chapters", "test_federated", "test_pipeline", "test_balance",
                "test_kill_resume", "test_divergence", "test_scaling", "test_data_parallel", "test_hybrid",
                "test_estimate", "test_step_metrics"},
    # what a user touches: CLI, data, docs, examples, notebooks, packaging, benchmarks
    "project": {"test_cli", "test_cli_config", "test_cli_fast", "test_datasets", "test_docs", "test_examples",
                "test_notebooks", "test_release", "test_benchmarks", "test_api", "test_bad_input", "test_plotting",
                "test_load"},
}
_GROUP_OF = {name: group for group, names in GROUPS.items() for name in names}

#: The ``slow`` tests (``python -m pytest -m "not slow"`` is the fast inner loop; the default run and CI run every
#: test): whole files of multi-process engines and end-to-end runs, and single tests that launch processes, train on
#: real data or build packages. Chosen from a run's ``--durations=0`` (every test of at least about 7 s under load,
#: with the tests that share its module-scoped fixture), not by a timing taken while the suite runs.
SLOW: dict[str, set[str] | None] = {
    "test_examples": None, "test_notebooks": None, "test_release": None, "test_kill_resume": None,
    "test_hybrid": None, "test_data_parallel": None, "test_chapters": None, "test_federated": None,
    "test_cli": {"test_torchrun_pipeline_variants", "test_short_run_learns_fashion_mnist",
                 "test_console_script_and_module_entry_point",
                 "test_torchrun_data_parallel_with_sharded_parameters_and_synchronised_batchnorm",
                 "test_torchrun_data_parallel_trains_and_resumes",
                 "test_data_on_device_trains_exactly_as_the_dataloader_path",
                 "test_train_test_and_resume_on_real_fashion_mnist",
                 "test_flip_test_time_augmentation_is_recorded_and_tested_again",
                 "test_only_deeperforward_holds_out_a_split_for_sip", "test_train_with_a_threads_pipeline",
                 "test_loewex_recipe_trains_and_tests_on_28x28_images"},
    "test_pipeline": {"test_a_failed_rank_ends_the_job_and_the_stage_checkpoints_resume",
                      "test_distributed_shared_layer_equals_local_trainer",
                      "test_distributed_resume_with_a_shared_layer",
                      "test_distributed_pipeline_equals_local_trainer", "test_distributed_stage_checkpoints_resume"},
    "test_benchmarks": {"test_fingerprint_hashes_a_run_and_checks_it",
                        "test_eval_cost_measures_both_and_writes_only_with_out",
                        "test_step_throughput_writes_only_with_out",
                        "test_hostile_cases_replays_a_case_and_says_it_was_handled"},
    "test_docs": {"test_page_python_blocks_run", "test_mkdocs_build_strict"},
    "test_ref_deeperforward": {"test_three_local_steps_match_release", "test_full_width_structure_is_the_release",
                               "test_forward_matches_release"},
    "test_recipes": {"test_cli_backprop_deepsup_on_an_ff_model", "test_every_recipe_runs_training_steps"},
    "test_divergence": {"test_checkpoints_inside_an_epoch_resume_to_the_uninterrupted_weights"},
}


def pytest_configure(config: pytest.Config) -> None:
    for group in GROUPS:
        config.addinivalue_line("markers", f"{group}: the {group} group of tests (tests/conftest.py GROUPS)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = set()
    for item in items:
        stem = Path(str(item.fspath)).stem
        group = _GROUP_OF.get(stem)
        if group is None:
            missing.add(stem)
        else:
            item.add_marker(group)
        slow = SLOW.get(stem, set())
        if slow is None or getattr(item, "originalname", item.name) in slow:
            item.add_marker(pytest.mark.slow)
    if missing:
        raise pytest.UsageError(f"test files without a group: {sorted(missing)}; add them to GROUPS in "
                                "tests/conftest.py")

# The suite's models are tiny: one thread avoids oversubscribing CI's 2 cores and is several times faster here.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
