"""The README's compatibility table: every architecture × claim group, from a run of every claim.

    python -m benchmarks.compatibility            # prints the README block (paste it there)
    python -m benchmarks.compatibility gpt2 phi   # the rows of some architectures only

For each entry of the architecture table (``probes.models.adapters.ARCHITECTURES``) a tiny
random checkpoint is saved by transformers itself (:func:`tiny_checkpoint`: ``from_config`` +
``save_pretrained``, safetensors; 6 layers, hidden 32) and every claim of ``hypotheses/`` runs on
it (``benchmarks.claims.evaluate``, the fixtures' own code) with the phase map
:data:`PHASES` (phases C and E of 3 layers each: every claim has the layers it needs). A claim
group is the probe its claims read (weights: the Gram pass; head metric; gauge; activations: the
layer-streamed forward pass). A cell is ✔ when every claim of the group gave a verdict on the
architecture, and names the families whose records are N/A with their reason (a footnote) — an
N/A the architecture causes, never one of the tiny model's size. The GGUF column says whether
transformers' GGUF loader reads the architecture (``transformers.integrations.ggml``) and, where
``benchmarks.make_gguf`` writes one as llama.cpp does, opens the tiny model through a GGUF file
and checks its layout and weights.

``tests/test_architectures.py`` renders the table the same way and compares it with the README
block between the markers, so the table cannot drift from what the code does.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from probes.models.adapters import ARCHITECTURES, Architecture

BEGIN = "<!-- compatibility table: printed by `python -m benchmarks.compatibility`, checked by " \
        "tests/test_architectures.py -->"
END = "<!-- /compatibility table -->"
# vocabulary 256: benchmarks.make_gguf writes its byte-level tokenizer, so the GGUFs open
TINY = dict(num_layers=6, hidden=32, num_heads=4, num_kv_heads=2, head_dim=8, intermediate=48,
            vocab_size=256)
# real models of these have head_dim ≠ hidden / heads (Gemma 2B: 256 vs 2048/8; Qwen3-4B: 128 vs
# 2560/32): so do their tiny twins
TINY_OVERRIDES = {"gemma": dict(head_dim=16), "gemma2": dict(head_dim=16),
                  "gemma3": dict(head_dim=16), "qwen3": dict(head_dim=16),
                  "qwen3_moe": dict(head_dim=16)}
PHASES = {"C": [0, 1, 2], "E": [3, 4, 5]}
CALIB_TOKENS = 256
GROUPS = {"weight_gram": "weights", "head_metric_result": "head metric",
          "gauge_alignment": "gauge", "residual_stream": "activations"}


def tiny_arch(arch: Architecture) -> str:
    """The ``tiny_config`` name of an entry (gemma3's text model is ``gemma3``)."""
    return "gemma3" if arch.name == "gemma3_text" else arch.name


def tiny_checkpoint(arch: str, directory, *, fused_experts: bool = False, seed: int = 0,
                    **overrides) -> Path:
    """A tiny random checkpoint of ``arch`` (a ``tiny_config`` name) saved by transformers:
    ``AutoModelForCausalLM.from_config`` (its own init, seeded) and ``save_pretrained(...,
    safe_serialization=True)``; mixtures of experts per expert as on the hub, or fused as
    transformers 5 holds them (``fused_experts``: ``save_original_format=False``). Every 1-D
    parameter (norm gains, biases) is moved off its init value (1 or 0) by N(0, 0.1²) so that a
    mapping or ``1 + w`` mistake shows in the known answers."""
    from transformers import AutoModelForCausalLM

    from probes.models.random_init import hf_config
    from probes.synthetic.base import tiny_config
    cfg = tiny_config(arch, **{**TINY, **TINY_OVERRIDES.get(arch, {}), **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(cfg))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    out = Path(directory)
    model.save_pretrained(str(out), safe_serialization=True,
                          save_original_format=not fused_experts)
    return out


def evaluate_checkpoint(path: Path, cache=None) -> list[dict]:
    """Every claim's records on the checkpoint at ``path`` (phases :data:`PHASES`), each with
    its claim group (``group``)."""
    from benchmarks.claims import Session, discover, evaluate
    from probes.models import open_model
    model = open_model(str(path), cache)
    claims = discover()
    session = Session(cache, calib_tokens=CALIB_TOKENS)
    records = evaluate(model, claims, session, phases=PHASES)
    group = {ct.claim.id: GROUPS[ct.probes[0]] for ct in claims}
    return [{**r, "group": group[r["claim"]]} for r in records]


def gguf_cell(arch: Architecture, path: Path, cache=None) -> str:
    """Whether transformers' GGUF loader reads the architecture; where ``benchmarks.make_gguf``
    writes it as llama.cpp does (llama, mistral, qwen2, qwen3, gemma3), the tiny model goes
    through an F16 GGUF and back through Strata's GGUF path (``open_model`` on the file: the
    completed config, tensor-by-tensor conversion): same layout, and every family equal to the
    original (matrices rounded to F16; 1-D tensors, stored F32, to float32 rounding: gemma's
    gains are stored 1 + w)."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    from benchmarks.make_gguf import GGUF_LAYOUTS, write_gguf
    from probes.errors import StrataError
    from probes.models import open_model
    if not any(t in GGUF_CONFIG_MAPPING for t in (arch.name, arch.name.replace("_text", ""))):
        return f"N/A: transformers' GGUF loader does not read {arch.name}"
    if arch.name not in GGUF_LAYOUTS:
        return "transformers reads it; not tested here (benchmarks.make_gguf does not write it)"
    model = open_model(str(path), cache)
    with tempfile.TemporaryDirectory() as tmp:
        gguf = Path(tmp) / "tiny.gguf"
        write_gguf(model, gguf, "F16")
        try:
            converted = open_model(str(gguf), cache)
        except StrataError as exc:   # the reason's first sentence after "… dequantize): "
            why = str(exc).split("dequantize): ", 1)[-1].split(". ", 1)[0]
            return f"✗ an F16 GGUF of it does not open ({why})"
        if converted.layout != model.layout or converted.families != model.families:
            return f"✗ the GGUF opens as {converted.layout}, {converted.families}"
        for layer in range(model.layout.num_layers):
            for fam in model.families:
                want = model.weight(layer, fam)
                if want.ndim > 1:   # matrices written as F16, 1-D tensors as F32
                    want = want.to(torch.float16).to(torch.float32)
                if not torch.allclose(converted.weight(layer, fam), want, rtol=2 ** -21, atol=0):
                    return f"✗ {fam} of layer {layer} differs after the GGUF round trip"
    return "✔ (an F16 GGUF of it opens with the same layout and weights)"


def row(arch: Architecture, records: list[dict], gguf: str, notes: list[str]) -> dict:
    """One table row: per claim group ✔ (with N/A families and footnote numbers) or N/A."""
    cells = {}
    for group in GROUPS.values():
        recs = [r for r in records if r["group"] == group]
        decided = {r["claim"] for r in recs if r["verdict"] != "N/A"}
        claims = {r["claim"] for r in recs}
        na = {}
        for r in recs:
            if r["verdict"] == "N/A":
                na.setdefault(r["reason"], set()).add(r["family"] or "all")
        marks = []
        for reason, fams in sorted(na.items(), key=lambda kv: sorted(kv[1])):
            if reason not in notes:
                notes.append(reason)
            marks.append(f"{', '.join(sorted(fams))} N/A<sup>{notes.index(reason) + 1}</sup>")
        if claims and decided == claims:
            cells[group] = "✔" + (f" ({'; '.join(marks)})" if marks else "")
        else:
            cells[group] = "N/A: " + "; ".join(marks)
    return {"architecture": arch, "cells": cells, "gguf": gguf}


def layout_text(arch: Architecture) -> str:
    """What differs in the architecture's layout, from its table entry."""
    parts = []
    for fused in arch.fused:
        if fused.suffix.endswith(("c_attn.weight", "query_key_value.weight")) or fused.per_head:
            parts.append(f"fused `{fused.suffix.rsplit('.', 1)[0].rsplit('.', 1)[-1]}`"
                         + (" per head [heads, 3, head_dim]" if fused.per_head else ""))
    if arch.transposed:
        parts.append("Conv1D [in, out]")
    if arch.experts:
        parts.append("experts per expert or fused [E, 2·I, H]; router")
    parts.append(arch.norm + (" (1 + w)" if arch.plus_one else ""))
    if arch.qk_norm:
        parts.append(f"q/k norm {arch.qk_norm}")
    if not arch.gated:
        parts.append("MLP up/down (no gate)")
    if isinstance(arch.parallel, str):
        parts.append(f"parallel attention + MLP if {arch.parallel}")
    elif arch.parallel:
        parts.append("parallel attention + MLP")
    if arch.positions != "rotary":
        parts.append(arch.positions)
    if arch.biases != "none":
        parts.append(f"biases left out: {arch.biases}")
    if arch.notes:
        parts.append(arch.notes)
    return "; ".join(parts)


def render(rows: list[dict], notes: list[str]) -> str:
    """The README block (between :data:`BEGIN` and :data:`END`)."""
    head = ["architecture (model_type)", "layout", *GROUPS.values(), "GGUF"]
    lines = [BEGIN, "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        arch = r["architecture"]
        cells = [", ".join(f"`{t}`" for t in arch.model_types), r["layout"],
                 *(r["cells"][g] for g in GROUPS.values()), r["gguf"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"<sup>{i}</sup> {n}  " for i, n in enumerate(notes, 1)]
    lines[-1] = lines[-1].rstrip()
    lines.append(END)
    return "\n".join(lines)


def table_rows(archs=ARCHITECTURES, cache=None, workdir: Path | None = None,
               log=lambda msg: None) -> tuple[list[dict], list[str]]:
    """Build, evaluate and describe each architecture; returns (rows, footnotes)."""
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(workdir or tmp)
        for arch in archs:
            path = base / arch.name
            if not (path / "config.json").is_file():
                tiny_checkpoint(tiny_arch(arch), path)
            records = evaluate_checkpoint(path, cache)
            r = row(arch, records, gguf_cell(arch, path, cache), notes)
            r["layout"] = layout_text(arch)
            rows.append(r)
            log(f"{arch.name}: {r['cells']}")
    return rows, notes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("archs", nargs="*", help="model_types (default: every table entry)")
    args = ap.parse_args(argv)
    archs = [a for a in ARCHITECTURES if not args.archs or set(a.model_types) & set(args.archs)]
    rows, notes = table_rows(archs, log=lambda m: print(m, file=sys.stderr))
    print(render(rows, notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
