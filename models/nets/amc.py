"""AMC rescorer (Chen et al., CVPR 2017) and the ablations of its text-search table.

Every module here shares one forward signature (ServedRescorer, at the end, puts it behind the
`amc_rescorer` Triton contract, which ships int8 regions and keyword ids instead):

    forward(query [B,384], regions [B,36,128], keywords [B,32,384], keyword_mask [B,32])
      -> (score [B,1], modality_weights [B,2] (visual, keyword),
          region_attention [B,36], keyword_attention [B,32])

AMCRescorer follows docs/METHODS.md ("AMC rescorer"): VAN (query-generated k x k
kernel convolved over the region grid, softmax over positions), LAN (query-keyword dot
attention over the keyword vectors), MTN (one joint softmax of the two cosines gives the
modality weights), score = cos(q^m, x^q). Choices where the spec is silent:
- LAN adds log(confidence) to the attention logits: the tagger's confidence is a prior, so a
  0.9 keyword needs less query evidence than a 0.1 one; slots with mask 0 are padding and get
  exactly zero attention.
- MTN multiplies the two cosines by a learnable temperature (initialised to 5) before the
  joint softmax; with the raw cosines in [-1, 1] the weights could never leave [0.12, 0.88].
- v^q and k^q are L2-normalised before fusion, so w_v and w_k weigh directions of equal length
  and report how much each modality counted, not which vector happened to be longer.
- The 1x1 convolution V -> V' is a Linear applied to every region (the same map, faster on CPU).
The per-sample convolution is computed as one batched matmul (kernel x features, per offset)
followed by a shift-and-sum over the k*k offsets: identical to conv2d(V', s_q, padding=k//2)
per sample, scriptable, and free of the memory cost of unfold.

forward() is three stages, also public so that training can run each at its own granularity
(the query side once per query, the keyword projection once per vocabulary word):
    score(encode_query(query), regions, project_keywords(keywords), keyword_mask)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

QUERY_DIM = 384
REGION_DIM = 128
KEYWORD_DIM = 384
GRID = 6
NUM_KEYWORDS = 32
JOINT_DIM = 64
KERNEL = 3
MODES = ("full", "img", "key")
LAYOUTS = ("none", "term", "prior", "both")
"""How the query's "where" (VisualAttention.where) enters the score: not at all (AMC as published), as the
placement term, as a prior on the VAN's attention logits, or both."""
LAYOUT = "term"
"""The default, chosen on the held-out TRAIN queries over the whole TRAIN gallery
(benchmarks/LAYOUT.md, `python -m models.eval.layout`)."""
PLACEMENT_FLOOR = 0.01
"""Keeps log(placement) finite where the content attention misses the queried cells entirely."""
WHERE_GATE = 0.35
"""Out of training, p_q counts only when the where head puts at least this much of its mass in
one cell of the 3 x 3 grid (a 2 x 2 block of regions); below it the query names no place and p_q
is uniform, so the placement term is exactly neutral. The head is never exactly uniform for
such queries (on held-out TRAIN queries their largest cell mass was 0.13-0.36 against
0.48-0.99 for position queries), and what it said there was noise in their scores. Chosen on
validation among 0 (off), 0.25, 0.35, 0.45 and 0.55 (benchmarks/LAYOUT.md)."""


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2.0, dim=-1, eps=1e-6)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (_normalize(a) * _normalize(b)).sum(dim=-1)


class VisualAttention(nn.Module):
    """VAN: v^q = sum_ij softmax(conv(V', s_q))_ij V'_ij with s_q = ReLU(W_qs q + b).

    The convolution is translation-equivariant: the same object gives the same logits wherever it
    sits, so v^q, and AMC's score with it, cannot tell "red circle top-left" from a red circle
    anywhere else (QUALITY.md's layout diagnostics measure it). The `where` head maps the query
    to a distribution over the grid cells, p_q = softmax(W_w q + b_w); with weights and bias zero
    (their initial value) it is uniform, and neither of its uses below changes anything:
    - placement = log(G^2 sum_ij a_ij p_q,ij + floor), a_ij the content attention: how much of what
      the query describes lies where the query puts it (0 for a uniform p_q, whatever the image);
    - prior: the logits get log p_q added before the softmax, so v^q pools the queried cells.
    """

    def __init__(self, query_dim: int, region_dim: int, dim: int, kernel: int, grid: int, prior: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.kernel = kernel
        self.grid = grid
        self.prior = prior
        self.placement_floor = PLACEMENT_FLOOR
        self.where_gate = WHERE_GATE
        self.project = nn.Linear(region_dim, dim)  # the 1x1 convolution V -> V'
        self.query_kernel = nn.Linear(query_dim, dim * kernel * kernel)
        self.where = nn.Linear(query_dim, grid * grid)
        nn.init.zeros_(self.where.weight)
        nn.init.zeros_(self.where.bias)
        self.where_input_scale = math.sqrt(query_dim)

    def where_logits(self, query: torch.Tensor) -> torch.Tensor:
        """log p_q [B, G*G] (log-softmax of the where head), uniform out of training for a query
        that names no place (WHERE_GATE). The query is a unit vector whose components are about
        1/sqrt(D): scaled to about 1 first, so that the head's weights can reach peaked logits
        within a few epochs."""
        log_p = torch.log_softmax(self.where(query * self.where_input_scale), dim=1)
        if self.training or self.where_gate <= 0:
            return log_p  # training: the where loss and the ranking loss see the head itself
        g = self.grid
        block = g // 3
        cells = F.avg_pool2d(log_p.exp().view(-1, 1, g, g), block, block).flatten(1) * (block * block)
        named = cells.max(dim=1).values >= self.where_gate
        return torch.where(named.unsqueeze(1), log_p, torch.full_like(log_p, -math.log(g * g)))

    def kernels(self, query: torch.Tensor) -> torch.Tensor:
        """s_q flattened [B, d*k*k] in (channel, row, column) order."""
        return F.relu(self.query_kernel(query))

    def forward(
        self, kernels: torch.Tensor, regions: torch.Tensor, where: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(v^q [B, d], the attention that pooled it [B, G*G], placement [B]); where = log p_q."""
        batch = regions.shape[0]
        g = self.grid
        k = self.kernel
        features = self.project(regions)  # V' [B, g*g, d]
        kernel = kernels.view(batch, self.dim, k * k)
        # responses[b, o, p] = sum_c kernel[b, c, o] * V'[b, p, c] for each kernel offset o
        responses = torch.bmm(features, kernel).transpose(1, 2).reshape(batch, k * k, g, g)
        pad = k // 2
        responses = F.pad(responses, [pad, pad, pad, pad])
        logits = torch.zeros(batch, g, g, dtype=regions.dtype, device=regions.device)
        for dy in range(k):
            for dx in range(k):
                logits = logits + responses[:, dy * k + dx, dy : dy + g, dx : dx + g]
        logits = logits.reshape(batch, g * g)
        content = torch.softmax(logits, dim=1)
        placement = torch.log((content * where.exp()).sum(dim=1) * (g * g) + self.placement_floor)
        attention = torch.softmax(logits + where, dim=1) if self.prior else content
        attended = torch.bmm(attention.unsqueeze(1), features).squeeze(1)
        return attended, attention, placement


class KeywordAttention(nn.Module):
    """LAN: k^q = sum_i softmax_i(u^T e_i + log c_i) e_i, e_i = W_kl k_i, u = W_ql q."""

    def __init__(self, query_dim: int, keyword_dim: int, dim: int) -> None:
        super().__init__()
        self.project_keywords = nn.Linear(keyword_dim, dim)
        self.project_query = nn.Linear(query_dim, dim)

    def forward(
        self, guide: torch.Tensor, embedded: torch.Tensor, keyword_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """guide u [B, d]; embedded e [B, K, d] (already projected); mask [B, K]."""
        logits = torch.bmm(embedded, guide.unsqueeze(2)).squeeze(2)
        valid = keyword_mask > 0
        logits = logits + torch.log(keyword_mask.clamp(min=1e-6))
        logits = logits.masked_fill(~valid, -1e4)
        attention = torch.softmax(logits, dim=1) * valid.to(logits.dtype)
        attention = attention / attention.sum(dim=1, keepdim=True).clamp(min=1e-6)
        attended = torch.bmm(attention.unsqueeze(1), embedded).squeeze(1)
        return attended, attention


class AMCRescorer(nn.Module):
    """AMC Full (mode "full") and its attention ablations ImgATT ("img") and KeyATT ("key")."""

    def __init__(
        self,
        mode: str = "full",
        dim: int = JOINT_DIM,
        kernel: int = KERNEL,
        query_dim: int = QUERY_DIM,
        region_dim: int = REGION_DIM,
        keyword_dim: int = KEYWORD_DIM,
        grid: int = GRID,
        temperature: float = 5.0,
        layout: str = LAYOUT,
        placement_weight: float = 0.1,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode is {mode!r}, allowed: {', '.join(MODES)}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout is {layout!r}, allowed: {', '.join(LAYOUTS)}")
        self.mode = mode
        self.layout = layout
        self.placement_term = layout in ("term", "both")
        self.uses_regions = mode != "key"
        self.uses_keywords = mode != "img"
        self.dim = dim
        self.grid = grid
        self.kernel_size = dim * kernel * kernel
        self.van = VisualAttention(query_dim, region_dim, dim, kernel, grid, prior=layout in ("prior", "both"))
        self.lan = KeywordAttention(query_dim, keyword_dim, dim)
        self.query_match = nn.Linear(query_dim, dim)  # q^m = ReLU(W_qm q + b)
        self.query_gate = nn.Linear(query_dim, dim)  # q' = ReLU(W'_qm q + b')
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        self.log_placement_weight = nn.Parameter(torch.tensor(math.log(placement_weight)))

    def forward(
        self,
        query: torch.Tensor,
        regions: torch.Tensor,
        keywords: torch.Tensor,
        keyword_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.score(self.encode_query(query), regions, self.project_keywords(keywords), keyword_mask)

    def encode_query(self, query: torch.Tensor) -> torch.Tensor:
        """Every query-side projection, concatenated: [s_q (d*k*k), u, q^m, q', log p_q (G*G)]
        -> [B, d*(k*k+3) + G*G]."""
        return torch.cat(
            [
                self.van.kernels(query),
                self.lan.project_query(query),
                F.relu(self.query_match(query)),
                F.relu(self.query_gate(query)),
                self.van.where_logits(query),
            ],
            dim=1,
        )

    def where_of(self, encoded_query: torch.Tensor) -> torch.Tensor:
        """log p_q [B, G*G], the last columns of encode_query's output."""
        return encoded_query[:, self.kernel_size + 3 * self.dim :]

    def placement_score(self, placement: torch.Tensor) -> torch.Tensor:
        """The layout term added to the score [B, 1]: zero unless the placement term is on."""
        if not self.placement_term:
            return torch.zeros_like(placement).unsqueeze(1)
        return (self.log_placement_weight.exp() * placement).unsqueeze(1)

    def project_keywords(self, keywords: torch.Tensor) -> torch.Tensor:
        """e_i = W_kl k_i. Linear, so training may project the vocabulary once and gather."""
        if self.mode == "img":
            return keywords
        return self.lan.project_keywords(keywords)

    def score(
        self,
        encoded_query: torch.Tensor,
        regions: torch.Tensor,
        keywords: torch.Tensor,
        keyword_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """forward() from encode_query(query) and project_keywords(keywords)."""
        batch = encoded_query.shape[0]
        d = self.dim
        start = self.kernel_size
        kernels = encoded_query[:, :start]
        guide = encoded_query[:, start : start + d]
        q_match = encoded_query[:, start + d : start + 2 * d]
        dtype, device = encoded_query.dtype, encoded_query.device
        ones = torch.ones(batch, 1, dtype=dtype, device=device)
        zeros = torch.zeros(batch, 1, dtype=dtype, device=device)
        if self.mode == "img":
            visual, region_attention, placement = self.van(kernels, regions, self.where_of(encoded_query))
            score = _cosine(q_match, visual).unsqueeze(1) + self.placement_score(placement)
            keyword_attention = torch.zeros_like(keyword_mask)
            return score, torch.cat([ones, zeros], dim=1), region_attention, keyword_attention
        if self.mode == "key":
            textual, keyword_attention = self.lan(guide, keywords, keyword_mask)
            score = _cosine(q_match, textual).unsqueeze(1)
            region_attention = torch.zeros(batch, self.grid * self.grid, dtype=dtype, device=device)
            return score, torch.cat([zeros, ones], dim=1), region_attention, keyword_attention
        visual, textual, q_match, weights, region_attention, keyword_attention, placement = self.parts(
            encoded_query, regions, keywords, keyword_mask
        )
        score = self.fuse(q_match, visual, textual, weights) + self.placement_score(placement)
        return score, weights, region_attention, keyword_attention

    def parts(
        self,
        encoded_query: torch.Tensor,
        regions: torch.Tensor,
        keywords: torch.Tensor,
        keyword_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """AMC Full before fusion: v^q, k^q (both L2-normalised), q^m, the MTN weights, both
        attentions and the VAN's placement. score() fuses them and adds placement_score;
        ServedRescorer does the same with the caller's modality bias."""
        d = self.dim
        start = self.kernel_size
        kernels = encoded_query[:, :start]
        guide = encoded_query[:, start : start + d]
        q_match = encoded_query[:, start + d : start + 2 * d]
        q_gate = encoded_query[:, start + 2 * d : start + 3 * d]
        visual, region_attention, placement = self.van(kernels, regions, self.where_of(encoded_query))
        textual, keyword_attention = self.lan(guide, keywords, keyword_mask)
        visual = _normalize(visual)
        textual = _normalize(textual)
        agreement = torch.stack([_cosine(q_gate, visual), _cosine(q_gate, textual)], dim=1)
        weights = torch.softmax(agreement * self.log_temperature.exp(), dim=1)
        return visual, textual, q_match, weights, region_attention, keyword_attention, placement

    def fuse(
        self, q_match: torch.Tensor, visual: torch.Tensor, textual: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """score = cos(q^m, w_v v^q + w_k k^q)."""
        fused = weights[:, 0:1] * visual + weights[:, 1:2] * textual
        return _cosine(q_match, fused).unsqueeze(1)


class DSSMRescorer(nn.Module):
    """DSSM baselines: a query tower against a pooled image tower, no attention.

    modality "img" pools the region grid by its mean (DSSM-Img); "key" takes the mean of the
    valid keyword vectors (DSSM-Key). The reported attentions are the uniform pooling weights.
    """

    def __init__(
        self,
        modality: str = "img",
        dim: int = JOINT_DIM,
        hidden: int = 256,
        query_dim: int = QUERY_DIM,
        region_dim: int = REGION_DIM,
        keyword_dim: int = KEYWORD_DIM,
    ) -> None:
        super().__init__()
        if modality not in ("img", "key"):
            raise ValueError(f"modality is {modality!r}, allowed: img, key")
        self.modality = modality
        self.uses_regions = modality == "img"
        self.uses_keywords = modality == "key"
        input_dim = region_dim if modality == "img" else keyword_dim
        self.query_tower = nn.Sequential(nn.Linear(query_dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))
        self.item_tower = nn.Sequential(nn.Linear(input_dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))

    def forward(
        self,
        query: torch.Tensor,
        regions: torch.Tensor,
        keywords: torch.Tensor,
        keyword_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.score(self.encode_query(query), regions, self.project_keywords(keywords), keyword_mask)

    def encode_query(self, query: torch.Tensor) -> torch.Tensor:
        return self.query_tower(query)

    def project_keywords(self, keywords: torch.Tensor) -> torch.Tensor:
        """The identity: DSSM pools the raw keyword vectors (kept for AMCRescorer's interface)."""
        return keywords

    def score(
        self,
        encoded_query: torch.Tensor,
        regions: torch.Tensor,
        keywords: torch.Tensor,
        keyword_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = encoded_query.shape[0]
        num_regions = regions.shape[1]
        dtype, device = encoded_query.dtype, encoded_query.device
        ones = torch.ones(batch, 1, dtype=dtype, device=device)
        zeros = torch.zeros(batch, 1, dtype=dtype, device=device)
        if self.modality == "img":
            region_attention = torch.full((batch, num_regions), 1.0 / num_regions, dtype=dtype, device=device)
            keyword_attention = torch.zeros_like(keyword_mask)
            pooled = regions.mean(dim=1)
            weights = torch.cat([ones, zeros], dim=1)
        else:
            valid = (keyword_mask > 0).to(dtype)
            keyword_attention = valid / valid.sum(dim=1, keepdim=True).clamp(min=1.0)
            region_attention = torch.zeros(batch, num_regions, dtype=dtype, device=device)
            pooled = torch.bmm(keyword_attention.unsqueeze(1), keywords).squeeze(1)
            weights = torch.cat([zeros, ones], dim=1)
        score = _cosine(encoded_query, self.item_tower(pooled)).unsqueeze(1)
        return score, weights, region_attention, keyword_attention


TEXT_SEARCH_MODELS = ("amc_full", "img_att", "key_att", "dssm_img", "dssm_key")


def build_text_search_models() -> dict[str, nn.Module]:
    """The five rescorers with the default constructors that training and evaluation share."""
    return {
        "amc_full": AMCRescorer("full"),
        "img_att": AMCRescorer("img"),
        "key_att": AMCRescorer("key"),
        "dssm_img": DSSMRescorer("img"),
        "dssm_key": DSSMRescorer("key"),
    }


class ServedRescorer(nn.Module):
    """The `amc_rescorer` Triton model: AMC Full behind the wire-lean serving contract.

        forward(query [Q,384], query_index [N] int32, regions [N,36,128] int8, region_scales [N,36],
                keyword_table [U,384] fp16, keyword_index [N,32] int32, keyword_mask [N,32],
                modality_bias [Q,3])
          -> (score [N,1], modality_weights [N,2] (applied), region_attention [N,36],
              keyword_attention [N,32], learned_weights [N,2])

    - The query is sent once and broadcast here: query_index gives each candidate its query's
      row, so one request can also score the candidates of several queries (BatchSearch).
    - Regions arrive as int8 with one scale per region (runtime/quantize.py) and are
      dequantized here.
    - Keyword vectors of the tagger's vocabulary live inside this file (`vocabulary`, embedded
      with the text_encoder at export); an index below V selects one of them, an index V + i row
      i of keyword_table (the request's keywords outside the vocabulary). The keyword projection
      runs once per distinct vector, then is gathered per slot.
    - modality_bias per query: (keyword_scale s, min, max). The learned keyword weight w_k
      becomes clamp(s w_k / (w_v + s w_k), min, max), w_v = 1 - w_k, and the score is computed
      with the applied weights; (1, 0, 1) changes nothing, (1, 0, 0) is visual only, (1, 1, 1)
      keywords only.
    """

    def __init__(self, rescorer: AMCRescorer, vocabulary: torch.Tensor) -> None:
        super().__init__()
        if rescorer.mode != "full":
            raise ValueError("ServedRescorer serves AMC Full (mode 'full')")
        self.rescorer = rescorer
        self.register_buffer("vocabulary", vocabulary.float().clone())

    def forward(
        self,
        query: torch.Tensor,
        query_index: torch.Tensor,
        regions: torch.Tensor,
        region_scales: torch.Tensor,
        keyword_table: torch.Tensor,
        keyword_index: torch.Tensor,
        keyword_mask: torch.Tensor,
        modality_bias: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        dtype = self.vocabulary.dtype
        rows = query_index.long()
        encoded = self.rescorer.encode_query(query.to(dtype)).index_select(0, rows)
        grid = regions.to(dtype) * region_scales.to(dtype).unsqueeze(-1)
        table = torch.cat([self.vocabulary, keyword_table.to(dtype)], dim=0)
        projected = self.rescorer.project_keywords(table)
        slots = keyword_index.shape[1]
        keywords = projected.index_select(0, keyword_index.reshape(-1).long()).view(-1, slots, projected.shape[1])
        visual, textual, q_match, learned, region_attention, keyword_attention, placement = self.rescorer.parts(
            encoded, grid, keywords, keyword_mask.to(dtype)
        )
        bias = modality_bias.to(dtype).index_select(0, rows)
        scaled = bias[:, 0] * learned[:, 1]
        keyword_weight = scaled / (learned[:, 0] + scaled).clamp(min=1e-6)
        keyword_weight = torch.minimum(torch.maximum(keyword_weight, bias[:, 1]), bias[:, 2])
        applied = torch.stack([1.0 - keyword_weight, keyword_weight], dim=1)
        score = self.rescorer.fuse(q_match, visual, textual, applied) + self.rescorer.placement_score(placement)
        return score, applied, region_attention, keyword_attention, learned
