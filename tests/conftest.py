import pytest
import torch

from serving.features import FeatureSpec, Field


@pytest.fixture(scope="session")
def dist_env():
    """A 1-rank gloo group shared by the tests that shard models in-process."""
    from trainer.distributed import init_distributed

    return init_distributed()


@pytest.fixture
def toy_spec() -> FeatureSpec:
    return FeatureSpec(
        "toy",
        "label",
        (
            Field("a", "categorical", tuple("abcdefg")),
            Field("n", "numerical", ("0", "1", "2", "3")),
            Field("g", "bag", ("x", "y", "z")),
            Field("c", "categorical", ("p", "q")),
        ),
    )


@pytest.fixture
def toy_batch():
    from torchrec import KeyedJaggedTensor
    from torchrec.datasets.utils import Batch

    torch.manual_seed(0)
    b = 8
    bag_lengths = torch.tensor([2, 1, 3, 0, 1, 1, 2, 1])
    values = torch.cat(
        [torch.randint(0, 8, (b,)), torch.randint(0, 5, (b,)), torch.randint(0, 4, (int(bag_lengths.sum()),)), torch.randint(0, 3, (b,))]
    )
    lengths = torch.cat([torch.ones(2 * b, dtype=torch.long), bag_lengths, torch.ones(b, dtype=torch.long)])
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a", "n", "g", "c"], values=values, lengths=lengths)
    return Batch(dense_features=torch.rand(b, 1), sparse_features=kjt, labels=(torch.rand(b) < 0.5).float())
