"""Old home of the alignment stage's functions, kept only for tests/test_cuda.py (not yet moved to the modules):
the rows are in data.py, the losses in losses.py, the training loop in train.py, the registry in registry.py.
Import from those; delete this file once tests/test_cuda.py does."""

from assets.alignment.data import split_prompt
from assets.alignment.train import LoraTrainSettings, train_lora

__all__ = ["LoraTrainSettings", "split_prompt", "train_lora"]
