"""The task: a small Qwen2-architecture causal LM with random base weights, its LoRA
adapters (the only weights that train and travel), synthetic per-silo text and a
word-level tokenizer built here.  Nothing is downloaded: the model is built from a
:class:`transformers.Qwen2Config` with a fixed seed, so every silo and the server hold the
same frozen base weights.

Synthetic text: one shared grammar (``the <adj> <noun> <verb> the <noun> <prep> the
<place> .``) over eight topics, each with its own nouns, verbs, adjectives and places.
Silo ``i`` writes mostly about topic ``i`` (and a little about the others), so every silo
sees the grammar but a skewed vocabulary: a silo alone learns its own topic, the
federation learns all of them.  The validation set mixes every silo's distribution.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub: the model is built from a config
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import numpy.typing as npt

# ------------------------------------------------------------------------------- vocabulary

FUNCTION_WORDS = ("the", "a", "in", "at", "with", "near", "and", ".")
TOPICS: tuple[dict[str, tuple[str, ...]], ...] = (
    {"noun": ("nurse", "doctor", "patient", "surgeon", "pharmacist", "medic"),
     "verb": ("treats", "examines", "heals", "monitors"), "adj": ("sick", "calm", "tired", "careful"),
     "place": ("ward", "clinic", "hospital", "theatre")},
    {"noun": ("banker", "trader", "auditor", "client", "broker", "teller"),
     "verb": ("pays", "audits", "lends", "invests"), "adj": ("rich", "cautious", "busy", "shrewd"),
     "place": ("bank", "market", "exchange", "office")},
    {"noun": ("judge", "lawyer", "witness", "clerk", "juror", "bailiff"),
     "verb": ("questions", "sentences", "defends", "hears"), "adj": ("fair", "stern", "honest", "nervous"),
     "place": ("court", "chamber", "registry", "tribunal")},
    {"noun": ("farmer", "shepherd", "miller", "gardener", "beekeeper", "ranger"),
     "verb": ("plants", "harvests", "feeds", "waters"), "adj": ("muddy", "early", "patient", "strong"),
     "place": ("field", "barn", "orchard", "meadow")},
    {"noun": ("sailor", "captain", "pilot", "navigator", "diver", "fisher"),
     "verb": ("steers", "anchors", "rescues", "signals"), "adj": ("salty", "brave", "soaked", "alert"),
     "place": ("harbour", "ship", "dock", "lighthouse")},
    {"noun": ("chef", "baker", "waiter", "cook", "butcher", "sommelier"),
     "verb": ("bakes", "serves", "seasons", "tastes"), "adj": ("hungry", "hot", "quick", "picky"),
     "place": ("kitchen", "bakery", "restaurant", "pantry")},
    {"noun": ("teacher", "student", "tutor", "dean", "pupil", "librarian"),
     "verb": ("teaches", "grades", "reads", "explains"), "adj": ("curious", "bright", "strict", "young"),
     "place": ("school", "library", "classroom", "campus")},
    {"noun": ("engineer", "welder", "mechanic", "architect", "builder", "surveyor"),
     "verb": ("builds", "repairs", "measures", "welds"), "adj": ("skilled", "dusty", "precise", "tall"),
     "place": ("workshop", "site", "factory", "garage")},
)
SPECIALS = ("<pad>", "<bos>")


class WordTokenizer:
    """A word-level tokenizer over the example's fixed vocabulary (no download)."""

    def __init__(self) -> None:
        words: list[str] = [*SPECIALS, *FUNCTION_WORDS]
        for topic in TOPICS:
            for part in ("noun", "verb", "adj", "place"):
                words += [w for w in topic[part] if w not in words]
        self.words = tuple(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.pad_id = self.index["<pad>"]
        self.bos_id = self.index["<bos>"]

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        return [self.index[w] for w in text.split()]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.words[i] for i in ids)


TOKENIZER = WordTokenizer()

# ----------------------------------------------------------------------------------- text


def _sentence(rng: random.Random, home: int, skew: float) -> str:
    """One sentence of the shared grammar; words come from topic ``home`` with probability
    ``skew``, else from a topic drawn at random."""

    def pick(part: str) -> str:
        topic = TOPICS[home] if rng.random() < skew else TOPICS[rng.randrange(len(TOPICS))]
        return rng.choice(topic[part])

    det = rng.choice(("the", "a"))
    return (f"{det} {pick('adj')} {pick('noun')} {pick('verb')} the {pick('noun')} "
            f"{rng.choice(('in', 'at', 'near'))} the {pick('place')} .")  # fmt: skip


def silo_tokens(silo: int, num_sequences: int, seq_len: int, *, skew: float = 0.85, seed: int = 0) -> Any:
    """``num_sequences`` packed token sequences (``<bos>`` + ``seq_len - 1`` words) of silo
    ``silo`` (its home topic is ``silo % 8``), as a torch LongTensor."""
    import torch

    rng = random.Random(f"{seed}-{silo}-{num_sequences}-{seq_len}")
    home = silo % len(TOPICS)
    rows: list[list[int]] = []
    for _ in range(num_sequences):
        ids = [TOKENIZER.bos_id]
        while len(ids) < seq_len:
            ids += TOKENIZER.encode(_sentence(rng, home, skew))
        rows.append(ids[:seq_len])
    return torch.tensor(rows, dtype=torch.long)


def validation_tokens(num_silos: int, per_silo: int, seq_len: int, *, seed: int = 0) -> Any:
    """Held-out sequences from every silo's distribution (a different seed stream)."""
    import torch

    return torch.cat([silo_tokens(s, per_silo, seq_len, seed=seed + 7919) for s in range(num_silos)])


# ---------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ModelSize:
    """Sizes of the base model and its adapters."""

    hidden: int = 128
    intermediate: int = 256
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    lora_r: int = 8
    lora_alpha: int = 16
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    seed: int = 1234

    @classmethod
    def from_config(cls, rc: Mapping[str, Any]) -> ModelSize:
        return cls(
            hidden=int(rc["hidden"]),
            intermediate=int(rc["intermediate"]),
            layers=int(rc["layers"]),
            heads=int(rc["heads"]),
            kv_heads=int(rc["kv-heads"]),
            lora_r=int(rc["lora-r"]),
            lora_alpha=int(rc["lora-alpha"]),
            targets=tuple(t.strip() for t in str(rc["lora-targets"]).split(",") if t.strip()),
            seed=int(rc["model-seed"]),
        )


_CACHE: dict[ModelSize, Any] = {}


def build_model(size: ModelSize) -> Any:
    """The LoRA-wrapped model (peft ``PeftModel``), base weights from ``size.seed``; only
    the adapters require grad.  Cached per process (a simulation actor keeps it)."""
    if size in _CACHE:
        return _CACHE[size]
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=len(TOKENIZER),
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        max_position_embeddings=512,
        # wider than the 0.02 default, so the frozen lm_head can express peaked next-token distributions
        initializer_range=0.1,
        pad_token_id=TOKENIZER.pad_id,
        bos_token_id=TOKENIZER.bos_id,
        eos_token_id=TOKENIZER.index["."],
    )
    with torch.random.fork_rng():
        torch.manual_seed(size.seed)
        base = Qwen2ForCausalLM(cfg)
        lora = LoraConfig(r=size.lora_r, lora_alpha=size.lora_alpha, lora_dropout=0.0,
                          target_modules=list(size.targets), task_type="CAUSAL_LM")  # fmt: skip
        model = get_peft_model(base, lora)
    _CACHE[size] = model
    return model


def adapter_arrays(model: Any) -> dict[str, npt.NDArray[np.float32]]:
    """The adapter weights (the only arrays that travel), name -> float32 array."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in get_peft_model_state_dict(model).items()}


def set_adapters(model: Any, arrays: Mapping[str, Any]) -> None:
    """Load adapter weights into ``model`` (exactly the adapter names, nothing else)."""
    import torch
    from peft import set_peft_model_state_dict

    expected = set(adapter_arrays(model))
    if set(arrays) != expected:
        raise ValueError(f"adapter names differ: {sorted(set(arrays) ^ expected)[:4]}")
    set_peft_model_state_dict(model, {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in arrays.items()})


def model_bytes(model: Any) -> tuple[int, int]:
    """(all parameters, adapter parameters) in bytes (float32)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    adapters = sum(int(a.nbytes) for a in adapter_arrays(model).values())
    return int(total), adapters


def train(model: Any, tokens: Any, *, steps: int, batch_size: int, lr: float, seed: int) -> float:
    """``steps`` AdamW steps on random batches of ``tokens``; returns the mean loss."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    losses: list[float] = []
    for _ in range(steps):
        idx = torch.randint(0, tokens.shape[0], (batch_size,), generator=gen)
        batch = tokens[idx]
        out = model(input_ids=batch, labels=batch)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    model.eval()
    return float(np.mean(losses)) if losses else math.nan


def evaluate(model: Any, tokens: Any, batch_size: int = 32) -> float:
    """Mean next-token cross-entropy (nats) on ``tokens``."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, tokens.shape[0], batch_size):
            batch = tokens[i : i + batch_size]
            out = model(input_ids=batch, labels=batch)
            n = batch.shape[0]
            total += float(out.loss) * n
            count += n
    return total / max(count, 1)
