import os

import transformers

import pytest
import torch

# Tests run on the CPU with a fixed, small thread count so they behave the same everywhere.
torch.set_num_threads(min(2, os.cpu_count() or 1))
transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="session")
def tiny_dlm_path(tmp_path_factory):
    from tests.tiny import save_tiny_dlm

    return save_tiny_dlm(tmp_path_factory.mktemp("dlm"))


@pytest.fixture(scope="session")
def tiny_rm_path(tmp_path_factory):
    from tests.tiny import save_tiny_rm

    return save_tiny_rm(tmp_path_factory.mktemp("rm"))


@pytest.fixture(scope="session")
def dlm(tiny_dlm_path):
    from entrgi_core.models import MaskedLM

    return MaskedLM.from_pretrained(str(tiny_dlm_path))


@pytest.fixture(scope="session")
def rm(tiny_rm_path):
    from rewards.hf import HFRewardModel

    return HFRewardModel.from_pretrained(str(tiny_rm_path))
