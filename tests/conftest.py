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
                "test_kill_resume", "test_divergence", "test_scaling", "test_data_parallel", "test_hybrid"},
    # what a user touches: CLI, data, docs, examples, notebooks, packaging, benchmarks
    "project": {"test_cli", "test_cli_config", "test_datasets", "test_docs", "test_examples", "test_notebooks",
                "test_release", "test_benchmarks", "test_api", "test_bad_input", "test_plotting", "test_load"},
}
_GROUP_OF = {name: group for group, names in GROUPS.items() for name in names}


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
    if missing:
        raise pytest.UsageError(f"test files without a group: {sorted(missing)}; add them to GROUPS in "
                                "tests/conftest.py")

# The suite's models are tiny: one thread avoids oversubscribing CI's 2 cores and is several times faster here.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
