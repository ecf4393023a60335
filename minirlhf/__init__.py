"""minirlhf: RLHF from scratch, small enough to read — GPT-2, reward models, PPO on one set of ops."""
from .model import GPT, GPTConfig, RewardModel, ValueHead
from .sampling import GenerationOutput, generate
from .tokenizer import Tokenizer

__all__ = ["GPT", "GPTConfig", "RewardModel", "ValueHead", "Tokenizer", "generate", "GenerationOutput"]
__version__ = "0.1.0"
