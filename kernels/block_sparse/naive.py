"""Plain-torch reference of the block-sparse attention contract.

Contract (shared by ``op.py``'s Triton launcher):

* ``q [B, Hq, Nq, D]``, ``k, v [B, Hkv, Nk, D]``, ``Hq % Hkv == 0``; query head ``h`` reads KV head
  ``h // (Hq // Hkv)``.
* ``kv_counts`` int32 ``[B, Hq, nQb]`` and ``kv_indices`` int32 ``[B, Hq, nQb, max_k]``: q-block ``i``
  (rows ``[i*block_q, (i+1)*block_q)``) of head ``h`` attends to the kv-blocks
  ``kv_indices[b, h, i, :kv_counts[b, h, i]]`` (keys ``[j*block_k, (j+1)*block_k)``); entries past the
  count are padding and never read.
* Per-sequence lengths ``q_lens``/``k_lens`` (int ``[B]``, optional): sequence ``b`` holds valid rows
  ``[0, q_lens[b])`` and keys ``[0, k_lens[b])``; the rest is padding. Padded query rows produce 0.
* Causal masks are bottom-right aligned: query row ``r`` of sequence ``b`` sits at absolute position
  ``k_lens[b] - q_lens[b] + r`` and sees keys at positions ``<= `` that.
* A row that sees no key (padding, or nothing kept) outputs 0 and has log-sum-exp ``-inf``.
* Output has the dtype of ``q``; the log-sum-exp (natural log, of the scaled scores) is float32 ``[B, Hq, Nq]``.

The computation loops over q-blocks and gathers only the kept K/V blocks, so memory stays
``O(B * Hq * block_q * max_k * block_k)`` instead of ``O(Nq * Nk)``; K/V are gathered per query head
without repeating the whole KV cache.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _lengths(lens: Tensor | None, n: int, batch: int, device: torch.device) -> Tensor:
    if lens is None:
        return torch.full((batch,), n, dtype=torch.long, device=device)
    return lens.to(device=device, dtype=torch.long)


def block_sparse_attention_naive(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kv_counts: Tensor,
    kv_indices: Tensor,
    *,
    block_q: int,
    block_k: int,
    causal: bool = True,
    q_lens: Tensor | None = None,
    k_lens: Tensor | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    heads_per_chunk: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Block-sparse attention in plain torch (the twin of the Triton kernel).

    Accumulates in float32 (float64 when the inputs are float64). ``heads_per_chunk`` bounds the
    memory of one step (default: all heads at once).
    """
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    group = Hq // Hkv
    nQb = math.ceil(Nq / block_q)
    nKb = math.ceil(Nk / block_k)
    max_k = kv_indices.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    dev = q.device

    out = torch.zeros(B, Hq, Nq, v.shape[-1], dtype=q.dtype, device=dev)
    lse = torch.full((B, Hq, Nq), float("-inf"), dtype=torch.float32, device=dev)
    if max_k == 0 or Nq == 0:
        return (out, lse) if return_lse else out

    qlen = _lengths(q_lens, Nq, B, dev)
    klen = _lengths(k_lens, Nk, B, dev)
    pad = nKb * block_k - Nk
    # K/V as blocks: [B, Hkv, nKb, block_k, D]
    kb = torch.nn.functional.pad(k, (0, 0, 0, pad)).view(B, Hkv, nKb, block_k, -1)
    vb = torch.nn.functional.pad(v, (0, 0, 0, pad)).view(B, Hkv, nKb, block_k, -1)
    arange_k = torch.arange(block_k, device=dev)
    chunk = Hq if heads_per_chunk is None else max(1, heads_per_chunk)

    # per q-block, gather only up to that row's largest count (time follows the kept blocks; one host read
    # of the counts, this is the reference path)
    row_max = kv_counts.clamp(0, max_k).amax(dim=(0, 1)).tolist() if kv_counts.numel() else []
    for i in range(nQb):
        r0, r1 = i * block_q, min((i + 1) * block_q, Nq)
        rows = torch.arange(r0, r1, device=dev)  # [m]
        mk = int(row_max[i])
        if mk == 0:
            continue
        for h0 in range(0, Hq, chunk):
            h1 = min(h0 + chunk, Hq)
            heads = torch.arange(h0, h1, device=dev)
            cnt = kv_counts[:, h0:h1, i].long()  # [B, h]
            idx = kv_indices[:, h0:h1, i, :mk].long().clamp(0, nKb - 1)  # [B, h, mk]
            # gather the kept blocks of each head's KV group: [B, h, mk, block_k, D]
            bsel = torch.arange(B, device=dev)[:, None, None]
            hsel = (heads // group)[None, :, None]
            kg = kb[bsel, hsel, idx].reshape(B, h1 - h0, mk * block_k, -1).to(acc)
            vg = vb[bsel, hsel, idx].reshape(B, h1 - h0, mk * block_k, -1).to(acc)
            qi = q[:, h0:h1, r0:r1].to(acc)  # [B, h, m, D]
            s = torch.einsum("bhmd,bhnd->bhmn", qi, kg) * scale  # [B, h, m, mk*block_k]

            # which keys each row may see
            kpos = (idx[..., None] * block_k + arange_k).reshape(B, h1 - h0, -1)  # [B, h, n]
            slot_ok = (torch.arange(mk, device=dev)[None, None, :] < cnt[..., None])
            slot_ok = slot_ok[..., None].expand(-1, -1, -1, block_k).reshape(B, h1 - h0, -1)
            ok = (slot_ok & (kpos < klen[:, None, None]))[:, :, None, :]  # [B, h, 1, n]
            row_ok = (rows[None, :] < qlen[:, None])[:, None, :, None]  # [B, 1, m, 1]
            ok = ok & row_ok
            if causal:
                qpos = (klen - qlen)[:, None] + rows[None, :]  # [B, m]
                ok = ok & (kpos[:, :, None, :] <= qpos[:, None, :, None])
            s = s.masked_fill(~ok, float("-inf"))

            row_lse = torch.logsumexp(s, dim=-1)  # [B, h, m]
            p = torch.exp(s - row_lse[..., None].clamp_min(torch.finfo(acc).min))
            p = p.masked_fill(~ok, 0.0)
            o = torch.einsum("bhmn,bhnd->bhmd", p, vg)
            out[:, h0:h1, r0:r1] = o.to(q.dtype)
            lse[:, h0:h1, r0:r1] = row_lse.float()

    return (out, lse) if return_lse else out
