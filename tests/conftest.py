"""Fixtures shared by the test modules (their helpers are in ``tests/helpers.py``).

Tests run on the CPU with one intra-op thread per test process: on a machine whose cores other
jobs also use, torch's worker threads would spin waiting for each other (a test that measures
threading sets its own)."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import yaml  # noqa: E402

from tests.helpers import REVIEW_PROMPTS, prompts_file, save_tiny_dlm, save_tiny_rm  # noqa: E402

torch.set_num_threads(1)
transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()


@pytest.fixture(scope="session")
def tiny_dlm_path(tmp_path_factory):
    return save_tiny_dlm(tmp_path_factory.mktemp("dlm"))


@pytest.fixture(scope="session")
def tiny_rm_path(tmp_path_factory):
    return save_tiny_rm(tmp_path_factory.mktemp("rm"))


@pytest.fixture(scope="session")
def dlm(tiny_dlm_path):
    from entrgi_core.models import MaskedLM

    return MaskedLM.from_pretrained(str(tiny_dlm_path))


@pytest.fixture(scope="session")
def rm(tiny_rm_path):
    from rewards.hf import HFRewardModel

    return HFRewardModel.from_pretrained(str(tiny_rm_path))


@pytest.fixture(scope="session")
def world():
    """The shipped tiny world: its trained masked LM and exact reward model."""
    from entrgi_core import MaskedLM, tinyworld
    from rewards import HFRewardModel

    return MaskedLM(str(tinyworld.dlm_path())), HFRewardModel(str(tinyworld.rm_path()))


@pytest.fixture
def cli_config(tmp_path, tiny_dlm_path, tiny_rm_path):
    """A config file for the random tiny models: EntRGi M=1, T=4, L=8, K=2, 7 prompts in batches of 2."""
    cfg = {
        "dlm": {"class_path": "entrgi_core.models.MaskedLM", "init_args": {"path": str(tiny_dlm_path)}},
        "reward": {"class_path": "rewards.hf.HFRewardModel", "init_args": {"path": str(tiny_rm_path)}},
        "guidance": {"class_path": "guidance.EntRGi", "init_args": {"steps": 1}},
        "sampling": {"steps": 4, "max_new_tokens": 8, "num_samples": 2},
        "data": {"path": str(prompts_file(tmp_path / "prompts.jsonl", REVIEW_PROMPTS)), "id_field": "id",
                 "batch_size": 2},
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
        "output_dir": str(tmp_path / "out"),
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
