"""Offline datasets (D4RL, Minari) and device-resident replay buffers."""

from rlreg.data.buffers import Batch, MixedSampler, OfflineBuffer, ReplayBuffer
from rlreg.data.d4rl import (
    OFFICIAL_FILES,
    REF_SCORES,
    d4rl_filename,
    dataset_dir,
    find_d4rl_file,
    load_d4rl,
    load_d4rl_package,
    official_file_info,
    qlearning_transitions,
    read_d4rl_hdf5,
    reference_scores,
    verify_d4rl_file,
    write_d4rl_hdf5,
)
from rlreg.data.dataset import REWARD_TRANSFORMS, TransitionDataset, make_reward_fn
from rlreg.data.errors import DatasetError
from rlreg.data.minari_io import create_minari_dataset, load_minari

__all__ = [
    "Batch",
    "DatasetError",
    "MixedSampler",
    "OFFICIAL_FILES",
    "OfflineBuffer",
    "REF_SCORES",
    "REWARD_TRANSFORMS",
    "ReplayBuffer",
    "TransitionDataset",
    "create_minari_dataset",
    "d4rl_filename",
    "dataset_dir",
    "find_d4rl_file",
    "load_d4rl",
    "load_d4rl_package",
    "load_minari",
    "make_reward_fn",
    "official_file_info",
    "qlearning_transitions",
    "read_d4rl_hdf5",
    "reference_scores",
    "verify_d4rl_file",
    "write_d4rl_hdf5",
]
